using SharpNorm.Darknet;
using SharpNorm.Tests.Support;
using SharpNorm.Tools;
using TorchSharp;
using Xunit;
using Xunit.Abstractions;

namespace SharpNorm.Tests.Darknet;

/// <summary>
/// DarknetNetwork against libtorch, live: the published cfgs of Darknet/cfg (darknet19, yolov3-tiny, the darknet
/// reference model, tiny darknet, yolov2, yolov2-tiny, yolov1-tiny) and the fixtures of [reorg], [region], [local] and
/// [detection] (small-region, small-detection), batch 1 at each cfg's own size, random weights (DarknetWeightsFile.Random,
/// with a quarter of the batch-norm variances made tiny so that the two formulas differ),
/// both batch-norm formulas, folded and unfused, against tools/DarknetTorch/TorchDarknet.cs computing the same network
/// with libtorch ops. Tolerance: normwise ||SharpNorm - libtorch|| / ||libtorch|| &lt; 1e-4 for every layer's output.
/// libtorch runs with mkldnn (oneDNN) off, its own slow_conv2d: oneDNN 3.7's float32 forward convolution was seen to
/// be wrong on AVX-512 machines for some shapes (see TorchDarknet.MkldnnEnabled). Skipped where libtorch does not
/// load (see <see cref="LibTorch"/>).
/// </summary>
public class DarknetTorchParityTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-4;

    private static string Cfg(string name) => Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", name);

    /// <summary>libtorch's float32 outputs of one network, per batch-norm formula, computed once per process.</summary>
    private static readonly Dictionary<(string, DarknetBatchNormMode), (DarknetWeights Weights, float[] Input, float[][] Outputs)> References = [];

    private static (IReadOnlyList<DarknetSection> Sections, DarknetWeights Weights, float[] Input, float[][] Outputs) Reference(string cfg, DarknetBatchNormMode mode)
    {
        IReadOnlyList<DarknetSection> sections = DarknetConfig.ReadFile(Cfg(cfg));
        lock (References)
        {
            if (!References.TryGetValue((cfg, mode), out var reference))
            {
                IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
                DarknetWeights weights = TorchDarknet.SmallVariances(DarknetWeightsFile.Random(layers, seed: 11));
                DarknetSection net = sections[0];
                var random = new Random(12);
                float[] input = Enumerable.Range(0, net.Int("channels", 0) * net.Int("height", 0) * net.Int("width", 0)).Select(_ => (float)random.NextDouble()).ToArray();
                TorchDarknet.MkldnnEnabled = false;
                using var torchNetwork = new TorchDarknet(sections, layers, weights, darknetCpuBatchNorm: mode == DarknetBatchNormMode.DarknetCpu);
                reference = (weights, input, torchNetwork.Forward(input, 1));
                References[(cfg, mode)] = reference;
            }
            return (sections, reference.Weights, reference.Input, reference.Outputs);
        }
    }

    [LibTorchTheory]
    [InlineData("darknet19.cfg", DarknetBatchNormMode.PyTorch)]
    [InlineData("darknet19.cfg", DarknetBatchNormMode.DarknetCpu)]
    [InlineData("yolov3-tiny.cfg", DarknetBatchNormMode.PyTorch)]
    [InlineData("yolov3-tiny.cfg", DarknetBatchNormMode.DarknetCpu)]
    [InlineData("darknet.cfg", DarknetBatchNormMode.PyTorch)]
    [InlineData("darknet.cfg", DarknetBatchNormMode.DarknetCpu)]
    [InlineData("tiny.cfg", DarknetBatchNormMode.PyTorch)]
    [InlineData("tiny.cfg", DarknetBatchNormMode.DarknetCpu)]
    [InlineData("yolov2-tiny.cfg", DarknetBatchNormMode.PyTorch)]
    [InlineData("yolov2-tiny.cfg", DarknetBatchNormMode.DarknetCpu)]
    [InlineData("yolov2.cfg", DarknetBatchNormMode.PyTorch)]
    [InlineData("yolov1-tiny.cfg", DarknetBatchNormMode.PyTorch)]
    [InlineData("yolov1-tiny.cfg", DarknetBatchNormMode.DarknetCpu)]
    [InlineData("small-region.cfg", DarknetBatchNormMode.PyTorch)]
    [InlineData("small-region.cfg", DarknetBatchNormMode.DarknetCpu)]
    [InlineData("small-detection.cfg", DarknetBatchNormMode.PyTorch)]
    public void OutputsMatchLibTorch(string cfg, DarknetBatchNormMode mode)
    {
        var (sections, weights, input, expected) = Reference(cfg, mode);
        foreach (bool fold in new[] { true, false })
        {
            var network = DarknetNetwork.Build(sections, weights, new DarknetNetworkOptions { BatchNorm = mode, FoldBatchNorm = fold });
            network.Forward(input, 1);
            // Every layer, not only the outputs: a softmax over 1000 near-equal scores would hide errors before it.
            (double Error, int Layer) worst = (0, -1);
            foreach (DarknetLayerInfo layer in network.Layers)
            {
                double error = TorchDarknet.Normwise(actual: network.Output(layer.Index), expected: expected[layer.Index]);
                string what = $"{cfg} {mode} {(fold ? "folded" : "unfused")} layer {layer.Index} ({layer.Type})";
                if (network.OutputLayers.Contains(layer.Index)) output.WriteLine($"{what}: normwise difference {error:E2}");
                Assert.True(error < Tolerance, $"{what}: normwise difference {error:E2} >= {Tolerance:E0}");
                if (!(error <= worst.Error)) worst = (error, layer.Index);
            }
            output.WriteLine($"{cfg} {mode} {(fold ? "folded" : "unfused")}: largest over all {network.Layers.Count} layers {worst.Error:E2} (layer {worst.Layer})");
        }
    }

    /// <summary>The committed fixtures (Fixtures/darknet.json) are what the libtorch reference computes today.</summary>
    [LibTorchFact]
    public void FixturesAreTheReferencesOutputs()
    {
        TorchDarknet.MkldnnEnabled = false;
        foreach (DarknetFixtureCase c in DarknetFixtures.Load().Cases)
        {
            string directory = Path.Combine(AppContext.BaseDirectory, "Darknet");
            using var reference = TorchDarknet.Load(Path.Combine(directory, "cfg", c.Cfg), Path.Combine(directory, "weights", c.Weights),
                darknetCpuBatchNorm: c.BatchNorm == nameof(DarknetBatchNormMode.DarknetCpu));
            float[][] outputs = reference.Forward(c.X.Values<float>("float32"), (int)c.X.Shape[0]);
            foreach (DarknetFixtureOutput recorded in c.Outputs)
            {
                double error = TorchDarknet.Normwise(actual: outputs[recorded.Layer], expected: recorded.Y.Values<float>("float32"));
                output.WriteLine($"{c.Name} layer {recorded.Layer}: libtorch now vs fixture {error:E2}");
                Assert.True(error < 1e-6, $"{c.Name} layer {recorded.Layer}: libtorch now differs from the fixture by {error:E2}");
            }
        }
    }

    /// <summary>The loader patch finds TorchSharp's GLIBCXX_3.4.32 reference and leaves it weak (on a copy of the library).</summary>
    [Fact]
    public void TheLoaderPatchMarksTheGlibcxxVersionWeak()
    {
        string runtimes = Path.Combine(AppContext.BaseDirectory, "runtimes");
        string? library = Directory.Exists(runtimes) ? Directory.EnumerateFiles(runtimes, "libLibTorchSharp.so", SearchOption.AllDirectories).FirstOrDefault() : null;
        Assert.NotNull(library);
        string copy = Path.Combine(Path.GetTempPath(), $"libLibTorchSharp-{Environment.ProcessId}.so");
        try
        {
            File.Copy(library, copy, overwrite: true);
            Assert.NotNull(LibTorch.MarkVersionWeak(copy, "GLIBCXX_3.4.32")); // true, or false where the test run patched bin/ already
            Assert.False(LibTorch.MarkVersionWeak(copy, "GLIBCXX_3.4.32"));
            Assert.Null(LibTorch.MarkVersionWeak(copy, "GLIBCXX_9.9.9"));
            Assert.Equal(new FileInfo(library).Length, new FileInfo(copy).Length);
        }
        finally
        {
            File.Delete(copy);
        }
    }
}
