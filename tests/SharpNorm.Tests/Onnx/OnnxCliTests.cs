using System.Globalization;
using System.Numerics.Tensors;
using Microsoft.ML.OnnxRuntime;
using SharpNorm.Data;
using SharpNorm.Layers;
using SharpNorm.Models;
using SharpNorm.Serialization;
using SharpNorm.Tests.Distributed;
using SharpNorm.Tests.Support;
using SharpNorm.Tests.Training;
using Xunit;

namespace SharpNorm.Tests.Onnx;

/// <summary>
/// sharpnorm train, then sharpnorm export, then ONNX Runtime on the test images as pixels / 255: the logits of the
/// checkpoint evaluated by SharpNorm (through its data loader's normalization) within 1e-5 normwise, the same predictions.
/// </summary>
[Collection(OnnxRuntimeCollection.Name)]
public class OnnxCliTests
{
    [Theory]
    [InlineData("batch", new string[0])]
    [InlineData("batch", new[] { "--fold", "--opset", "21" })]
    [InlineData("group", new[] { "--opset", "18" })]
    public void ATrainedCheckpointExportsAndPredictsTheSameInOnnxRuntime(string norm, string[] exportOptions)
    {
        string data = MpirunTests.SyntheticData(192, 40);
        try
        {
            string run = Path.Combine(data, "run");
            var (code, _, error) = CliTests.Run("train", "--data", data, "--norm", norm, "--epochs", "1", "--batch-size", "64", "--threads", "1", "--out", run);
            Assert.True(code == 0, error);
            string checkpoint = Path.Combine(run, "model.safetensors"), onnx = Path.Combine(run, "model.onnx");
            var (exportCode, output, exportError) = CliTests.Run(["export", checkpoint, onnx, .. exportOptions]);
            Assert.True(exportCode == 0, exportError);
            Assert.Contains("wrote " + onnx, output);

            Dictionary<string, string> metadata = Safetensors.ReadMetadata(checkpoint);
            Sequential<float> model = DarkNetClassifier.Create<float>(norm == "batch" ? NormChoice.Batch : NormChoice.Group, 10);
            Checkpoint.Load(checkpoint, model);
            model.Training = false;
            ImageDataset test = FashionMnist.Load(data, train: false);
            var loader = new BatchLoader<float>(test, test.Count, shuffle: false, seed: 0,
                double.Parse(metadata["mean"], CultureInfo.InvariantCulture), double.Parse(metadata["std"], CultureInfo.InvariantCulture));
            loader.StartEpoch(0);
            var images = new float[test.Count * 784];
            loader.Fill(0, images, new int[test.Count]);
            float[] expected = model.Forward(Tensor.Create(images, [test.Count, 1, 28, 28])).ToArray();

            using var session = new InferenceSession(onnx);
            Assert.Equal("image", session.InputNames.Single());
            Assert.Equal("logits", session.OutputNames.Single());
            Assert.Equal(string.Join(",", FashionMnist.ClassNames), session.ModelMetadata.CustomMetadataMap["labels"]);
            float[] pixels = test.Pixels.Select(p => p / 255f).ToArray();
            using var input = OrtValue.CreateTensorValueFromMemory(pixels, [test.Count, 1, 28, 28]);
            using var runOptions = new RunOptions();   // disposed after the run: a RunOptions the GC finalizes during Run crashes ONNX Runtime
            using var outputs = session.Run(runOptions, ["image"], [input], ["logits"]);
            float[] actual = outputs[0].GetTensorDataAsSpan<float>().ToArray();

            double difference = 0, size = 0;
            for (int i = 0; i < expected.Length; i++)
            {
                difference += Math.Pow((double)actual[i] - expected[i], 2);
                size += Math.Pow(expected[i], 2);
            }
            Assert.True(Math.Sqrt(difference / size) <= 1e-5, $"ONNX Runtime's logits are {Math.Sqrt(difference / size):E2} from SharpNorm's normwise");
            for (int n = 0; n < test.Count; n++)
                Assert.Equal(ArgMax(expected.AsSpan(n * 10, 10)), ArgMax(actual.AsSpan(n * 10, 10)));
        }
        finally
        {
            Directory.Delete(data, recursive: true);
        }
    }

    [Fact]
    public void ExportsErrorsAreOneLine()
    {
        string folder = Directory.CreateTempSubdirectory("sharpnorm-export-").FullName;
        try
        {
            string bare = Path.Combine(folder, "bare.safetensors"), good = Path.Combine(folder, "good.safetensors");
            Checkpoint.Save(bare, DarkNetClassifier.Create<float>(NormChoice.Batch, 10));
            Checkpoint.Save(good, DarkNetClassifier.Create<float>(NormChoice.Batch, 10),
                new Dictionary<string, string> { ["norm"] = "batch", ["classes"] = "10", ["mean"] = "0.3", ["std"] = "0.35" });
            string other = Path.Combine(folder, "other.safetensors");
            Checkpoint.Save(other, DarkNetClassifier.Create<float>(NormChoice.Batch, 10),
                new Dictionary<string, string> { ["norm"] = "group", ["classes"] = "10", ["mean"] = "0.3", ["std"] = "0.35" });
            string onnx = Path.Combine(folder, "out.onnx");
            foreach (var (exit, message, args) in new (int, string, string[])[]
            {
                (2, "export takes CHECKPOINT.safetensors and OUT.onnx", ["export", good]),
                (2, "the output must be a .onnx file", ["export", good, Path.Combine(folder, "out.pb")]),
                (2, "option --opset: expected an opset from 17 to 23, got '16'", ["export", good, onnx, "--opset", "16"]),
                (2, "unknown option '--bogus'", ["export", good, onnx, "--bogus"]),
                (1, "no 'norm'", ["export", bare, onnx]),
                (1, "Checkpoint not found", ["export", Path.Combine(folder, "missing.safetensors"), onnx]),
                (1, "does not match the model", ["export", other, onnx]),   // a batch-norm checkpoint that says group: its tensors do not fit
            })
            {
                var (code, output, error) = CliTests.Run(args);
                Assert.Equal(exit, code);
                string line = Assert.Single(error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
                Assert.StartsWith("sharpnorm: error: ", line);
                Assert.True(line.Contains(message, StringComparison.Ordinal), $"expected '{message}' in: {line}");
                Assert.Equal("", output);
                Assert.False(File.Exists(onnx), $"{string.Join(' ', args)} wrote {onnx}");
            }
            var (rawCode, _, rawError) = CliTests.Run("export", bare, onnx, "--raw-input");
            Assert.Equal(1, rawCode);   // --raw-input needs no mean and std, but the model still needs its norm
            Assert.Contains("no 'norm'", rawError);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }
}
