using Microsoft.ML.OnnxRuntime;
using SharpNorm.Darknet;
using SharpNorm.Onnx;
using SharpNorm.Tests.Darknet;
using SharpNorm.Tests.Training;
using Xunit;

namespace SharpNorm.Tests.Onnx;

/// <summary>
/// Darknet networks (classifiers, and YOLOv1/v2/v3 detectors with their [local], [reorg], [region], [detection] and [yolo] layers) exported to ONNX: ONNX Runtime's probabilities against DarknetNetwork's (the inference network
/// checked against libtorch twins), within 1e-5 normwise, batches 1 and 4.
/// </summary>
[Collection(OnnxRuntimeCollection.Name)]
public class DarknetOnnxTests
{
    [Theory]
    [InlineData("darknet19.cfg", 64, false, 17, "PyTorch")]
    [InlineData("darknet19.cfg", 64, true, 21, "PyTorch")]
    [InlineData("darknet.cfg", 64, false, 17, "PyTorch")]
    [InlineData("tiny.cfg", 64, true, 17, "PyTorch")]
    [InlineData("yolov3-tiny.cfg", 128, false, 17, "PyTorch")]
    [InlineData("yolov3-tiny.cfg", 128, true, 18, "DarknetCpu")]
    [InlineData("small-detector.cfg", 0, false, 17, "PyTorch")]
    [InlineData("small-detector.cfg", 0, true, 23, "DarknetCpu")]
    [InlineData("small-detector-scaled.cfg", 0, false, 17, "PyTorch")]
    [InlineData("small-detector-scaled.cfg", 0, true, 21, "DarknetCpu")]
    [InlineData("small-classifier.cfg", 0, true, 17, "PyTorch")]
    [InlineData("small-region.cfg", 0, false, 17, "PyTorch")]
    [InlineData("small-region.cfg", 0, true, 23, "DarknetCpu")]
    [InlineData("small-detection.cfg", 0, false, 17, "PyTorch")]
    [InlineData("small-detection.cfg", 0, true, 21, "PyTorch")]
    [InlineData("yolov2-tiny.cfg", 96, true, 18, "PyTorch")]
    [InlineData("yolov2.cfg", 96, false, 17, "PyTorch")]
    [InlineData("yolov1-tiny.cfg", 0, true, 17, "PyTorch")]
    public void ADarknetNetworkGivesTheInferenceNetworksOutputs(string cfg, int size, bool fold, int opset, string mode)
    {
        string folder = Directory.CreateTempSubdirectory("sharpnorm-darknet-onnx-").FullName;
        try
        {
            var (cfgPath, weightsPath, sections, weights) = Files(folder, cfg, size);
            string onnx = Path.Combine(folder, "model.onnx");
            var batchNorm = Enum.Parse<DarknetBatchNormMode>(mode);
            DarknetOnnxExport.Save(cfgPath, weightsPath, onnx, fold, opset, batchNorm);
            var network = DarknetNetwork.Build(sections, weights, new DarknetNetworkOptions { FoldBatchNorm = false, BatchNorm = batchNorm });
            string[] names = network.OutputLayers.Select(l => network.OutputLayers.Count > 1 ? l.ToString(System.Globalization.CultureInfo.InvariantCulture)
                : network.Layers[l].Type == "softmax" ? "probabilities" : "output").ToArray();

            using var session = new InferenceSession(onnx);
            Assert.Equal(names, session.OutputNames);
            var random = new Random(4);
            int c = network.InputChannels, h = network.InputHeight, w = network.InputWidth;
            foreach (int batch in new[] { 1, 4 })
            {
                float[] input = Enumerable.Range(0, batch * c * h * w).Select(_ => (float)random.NextDouble()).ToArray();
                network.Forward(input, batch);
                using var value = OrtValue.CreateTensorValueFromMemory(input, [batch, c, h, w]);
                using var runOptions = new RunOptions();   // disposed after the run: a RunOptions the GC finalizes during Run crashes ONNX Runtime
                using var outputs = session.Run(runOptions, ["image"], [value], names);
                for (int k = 0; k < names.Length; k++)
                {
                    float[] expected = network.Output(network.OutputLayers[k]).ToArray(), actual = outputs[k].GetTensorDataAsSpan<float>().ToArray();
                    Assert.Equal(expected.Length, actual.Length);
                    double difference = 0, sum = 0;
                    for (int i = 0; i < expected.Length; i++)
                    {
                        difference += Math.Pow((double)actual[i] - expected[i], 2);
                        sum += Math.Pow(expected[i], 2);
                    }
                    Assert.True(Math.Sqrt(difference / sum) <= 1e-5, $"{cfg} batch {batch} output {names[k]}: {Math.Sqrt(difference / sum):E2} normwise");
                }
            }
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
                ("add --fold to fold it into the convolutions", [cfgPath, weightsPath, onnx, "--bn", "darknet-cpu"]),
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

    /// <summary>The test cfg at <paramref name="size"/> x <paramref name="size"/> (0: as it is) and random weights for it, as files.</summary>
    private static (string Cfg, string Weights, IReadOnlyList<DarknetSection> Sections, DarknetWeights Values) Files(string folder, string cfg, int size)
    {
        string cfgPath = Path.Combine(folder, cfg), weightsPath = Path.Combine(folder, Path.ChangeExtension(cfg, ".weights"));
        string original = Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", cfg);
        IReadOnlyList<DarknetSection> sections = size == 0 ? DarknetConfig.ReadFile(original) : DarknetNetworkTests.Scaled(cfg, size);
        File.WriteAllLines(cfgPath, File.ReadAllLines(original).Select(line => size == 0 ? line :
            line.Replace(" ", "").StartsWith("width=") ? $"width={size}" : line.Replace(" ", "").StartsWith("height=") ? $"height={size}" : line));
        DarknetWeights weights = DarknetWeightsFile.Random(DarknetSummary.Describe(sections), seed: 9);
        DarknetWeightsFile.Write(weightsPath, weights);
        return (cfgPath, weightsPath, sections, weights);
    }
}
