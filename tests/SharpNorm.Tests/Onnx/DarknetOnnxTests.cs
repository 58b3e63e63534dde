using Microsoft.ML.OnnxRuntime;
using SharpNorm.Darknet;
using SharpNorm.Onnx;
using SharpNorm.Tests.Darknet;
using SharpNorm.Tests.Training;
using Xunit;

namespace SharpNorm.Tests.Onnx;

/// <summary>
/// Darknet classifiers exported to ONNX: ONNX Runtime's probabilities against DarknetNetwork's (the inference network
/// checked against libtorch twins), within 1e-5 normwise, batches 1 and 4.
/// </summary>
public class DarknetOnnxTests
{
    [Theory]
    [InlineData("darknet19.cfg", false, 17)]
    [InlineData("darknet19.cfg", true, 21)]
    [InlineData("darknet.cfg", false, 17)]
    [InlineData("tiny.cfg", true, 17)]
    public void ADarknetClassifierGivesTheNetworksProbabilities(string cfg, bool fold, int opset)
    {
        string folder = Directory.CreateTempSubdirectory("sharpnorm-darknet-onnx-").FullName;
        try
        {
            var (cfgPath, weightsPath, sections, weights) = Files(folder, cfg, 64);
            string onnx = Path.Combine(folder, "model.onnx");
            DarknetOnnxExport.Save(cfgPath, weightsPath, onnx, fold, opset);
            var network = DarknetNetwork.Build(sections, weights, new DarknetNetworkOptions { FoldBatchNorm = false });

            using var session = new InferenceSession(onnx);
            Assert.Equal("probabilities", session.OutputNames.Single());
            var random = new Random(4);
            foreach (int batch in new[] { 1, 4 })
            {
                float[] input = Enumerable.Range(0, batch * 3 * 64 * 64).Select(_ => (float)random.NextDouble()).ToArray();
                network.Forward(input, batch);
                float[] expected = network.Output(network.OutputLayers[0]).ToArray();
                using var value = OrtValue.CreateTensorValueFromMemory(input, [batch, 3, 64, 64]);
                using var outputs = session.Run(new RunOptions(), ["image"], [value], ["probabilities"]);
                float[] actual = outputs[0].GetTensorDataAsSpan<float>().ToArray();
                Assert.Equal(expected.Length, actual.Length);
                double difference = 0, size = 0;
                for (int i = 0; i < expected.Length; i++)
                {
                    difference += Math.Pow((double)actual[i] - expected[i], 2);
                    size += Math.Pow(expected[i], 2);
                }
                Assert.True(Math.Sqrt(difference / size) <= 1e-5, $"batch {batch}: {Math.Sqrt(difference / size):E2} normwise");
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void AGraphNetworkIsRefusedNamingItsFirstGraphLayer()
    {
        string folder = Directory.CreateTempSubdirectory("sharpnorm-darknet-onnx-").FullName;
        try
        {
            var (cfgPath, weightsPath, _, _) = Files(folder, "yolov3-tiny.cfg", 64);
            string onnx = Path.Combine(folder, "model.onnx");
            var e = Assert.Throws<NotSupportedException>(() => DarknetOnnxExport.Save(cfgPath, weightsPath, onnx));
            Assert.Contains("layer 16 ([yolo], line ", e.Message);   // yolov3-tiny's first layer that is not a chain
            Assert.Contains("makes the network a graph", e.Message);
            Assert.False(File.Exists(onnx));

            var (code, output, error) = CliTests.Run("darknet", "export", cfgPath, weightsPath, onnx);
            Assert.Equal(1, code);
            Assert.StartsWith("sharpnorm: error: ONNX export: ", error);
            Assert.Equal("", output);
            Assert.False(File.Exists(onnx));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void TheCommandWritesOnnxByTheExtension()
    {
        string folder = Directory.CreateTempSubdirectory("sharpnorm-darknet-onnx-").FullName;
        try
        {
            var (cfgPath, weightsPath, _, _) = Files(folder, "tiny.cfg", 64);
            string onnx = Path.Combine(folder, "tiny.onnx");
            var (code, output, error) = CliTests.Run("darknet", "export", cfgPath, weightsPath, onnx, "--fold", "--opset", "19");
            Assert.True(code == 0, error);
            Assert.Contains("ONNX opset 19, batch norms folded", output);
            using var session = new InferenceSession(onnx);
            Assert.Equal("darknet", session.ModelMetadata.CustomMetadataMap["format"]);

            foreach (var (message, args) in new (string, string[])[]
            {
                ("--bn darknet-cpu has no ONNX BatchNormalization twin", [cfgPath, weightsPath, onnx, "--bn", "darknet-cpu"]),
                ("--opset is for ONNX export", [cfgPath, weightsPath, Path.Combine(folder, "x.safetensors"), "--opset", "17"]),
                ("OUT.safetensors or OUT.onnx", [cfgPath, weightsPath, Path.Combine(folder, "x.bin")]),
                ("option --opset: expected an opset from 17 to 23", [cfgPath, weightsPath, onnx, "--opset", "30"]),
            })
            {
                var (badCode, badOutput, badError) = CliTests.Run(["darknet", "export", .. args]);
                Assert.Equal(2, badCode);
                Assert.True(badError.Contains(message, StringComparison.Ordinal), badError);
                Assert.Equal("", badOutput);
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>The test cfg at <paramref name="size"/> x <paramref name="size"/> and random weights for it, as files.</summary>
    private static (string Cfg, string Weights, IReadOnlyList<DarknetSection> Sections, DarknetWeights Values) Files(string folder, string cfg, int size)
    {
        string cfgPath = Path.Combine(folder, cfg), weightsPath = Path.Combine(folder, Path.ChangeExtension(cfg, ".weights"));
        IReadOnlyList<DarknetSection> sections = DarknetNetworkTests.Scaled(cfg, size);
        File.WriteAllLines(cfgPath, File.ReadAllLines(Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", cfg)).Select(line =>
            line.Replace(" ", "").StartsWith("width=") ? $"width={size}" : line.Replace(" ", "").StartsWith("height=") ? $"height={size}" : line));
        DarknetWeights weights = DarknetWeightsFile.Random(DarknetSummary.Describe(sections), seed: 9);
        DarknetWeightsFile.Write(weightsPath, weights);
        return (cfgPath, weightsPath, sections, weights);
    }
}
