using SharpNorm.Darknet;
using SharpNorm.Tests.Support;
using SharpNorm.Tools;
using Xunit;
using Xunit.Abstractions;

namespace SharpNorm.Tests.Darknet;

/// <summary>
/// Whole darknet networks against libtorch: Fixtures/darknet.json, written by tools/FixtureGen (its darknet stem) with
/// tools/DarknetTorch/TorchDarknet.cs, holds for Darknet/cfg/small-detector.cfg and small-classifier.cfg, with the
/// random weights in Darknet/weights/, a batch of 2 inputs and the outputs of the [yolo] layers (or the last layer),
/// and for the detector a shortcut and a route of two layers, for each batch-norm formula. Every fourth batch-norm
/// channel of those weights has a tiny rolling variance, so that the two formulas differ by ~1e-3 normwise there.
/// Tolerance: normwise, ||SharpNorm - libtorch|| / ||libtorch|| &lt;= 1e-5 per recorded layer (the libtorch float32
/// results were checked against float64 to ~1e-7 when written).
/// </summary>
public class DarknetFixtureTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-5;

    public static TheoryData<string, bool> Cases()
    {
        var data = new TheoryData<string, bool>();
        foreach (DarknetFixtureCase c in DarknetFixtures.Load().Cases)
            foreach (bool fold in new[] { true, false })
                data.Add(c.Name, fold);
        return data;
    }

    private static DarknetNetwork Build(DarknetFixtureCase c, DarknetBatchNormMode mode, bool fold, int threads = -1)
    {
        string directory = Path.Combine(AppContext.BaseDirectory, "Darknet");
        return DarknetNetwork.Load(Path.Combine(directory, "cfg", c.Cfg), Path.Combine(directory, "weights", c.Weights),
            new DarknetNetworkOptions { BatchNorm = mode, FoldBatchNorm = fold, MaxDegreeOfParallelism = threads });
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void OutputsMatchLibTorch(string name, bool fold)
    {
        DarknetFixtureCase c = DarknetFixtures.Case(name);
        DarknetNetwork network = Build(c, Enum.Parse<DarknetBatchNormMode>(c.BatchNorm), fold);
        int batch = (int)c.X.Shape[0];
        Assert.Equal([batch, network.InputChannels, network.InputHeight, network.InputWidth], c.X.Shape);
        network.Forward(c.X.Values<float>("float32"), batch);

        int[] recorded = c.Outputs.Select(o => o.Layer).ToArray();
        Assert.True(network.OutputLayers.All(recorded.Contains), $"the fixture records layers {string.Join(", ", recorded)}; the outputs are {string.Join(", ", network.OutputLayers)}");
        foreach (DarknetFixtureOutput expected in c.Outputs)
        {
            DarknetLayerInfo layer = network.Layers[expected.Layer];
            Assert.Equal(expected.Type, layer.Type);
            Assert.Equal([batch, layer.Channels, layer.Height, layer.Width], expected.Y.Shape);
            double error = TorchDarknet.Normwise(actual: network.Output(expected.Layer), expected: expected.Y.Values<float>("float32"));
            output.WriteLine($"{name} (fold {fold}) layer {expected.Layer} ({layer.Type}): normwise difference {error:E2}");
            Assert.True(error <= Tolerance, $"{name} (fold {fold}) layer {expected.Layer} ({layer.Type}): normwise difference {error:E2} > {Tolerance:E0}");
        }
    }

    /// <summary>The fixtures tell the batch-norm formulas apart: the other formula misses them by far more than the tolerance.</summary>
    [Theory]
    [InlineData("small-detector/PyTorch")]
    [InlineData("small-detector/DarknetCpu")]
    [InlineData("small-classifier/PyTorch")]
    [InlineData("small-classifier/DarknetCpu")]
    public void TheOtherBatchNormFormulaMisses(string name)
    {
        DarknetFixtureCase c = DarknetFixtures.Case(name);
        DarknetBatchNormMode other = Enum.Parse<DarknetBatchNormMode>(c.BatchNorm) == DarknetBatchNormMode.PyTorch ? DarknetBatchNormMode.DarknetCpu : DarknetBatchNormMode.PyTorch;
        DarknetNetwork network = Build(c, other, fold: true);
        network.Forward(c.X.Values<float>("float32"), (int)c.X.Shape[0]);
        DarknetFixtureOutput last = c.Outputs.Last();
        double error = TorchDarknet.Normwise(actual: network.Output(last.Layer), expected: last.Y.Values<float>("float32"));
        output.WriteLine($"{name} with {other} batch norm: normwise difference {error:E2}");
        Assert.True(error > 50 * Tolerance, $"{name} with {other} batch norm: normwise difference only {error:E2}");
    }

    [Fact]
    public void OneThreadGivesTheSameOutputs()
    {
        DarknetFixtureCase c = DarknetFixtures.Case("small-detector/PyTorch");
        float[] x = c.X.Values<float>("float32");
        DarknetNetwork parallel = Build(c, DarknetBatchNormMode.PyTorch, fold: true), serial = Build(c, DarknetBatchNormMode.PyTorch, fold: true, threads: 1);
        parallel.Forward(x, 2);
        serial.Forward(x, 2);
        foreach (int layer in parallel.OutputLayers)
            Assert.Equal(parallel.Output(layer).ToArray(), serial.Output(layer).ToArray());
    }
}

/// <summary>Fixtures/darknet.json (tools/FixtureGen's darknet stem).</summary>
public static class DarknetFixtures
{
    public static DarknetFixtureFile Load() => FixtureFiles.Load<DarknetFixtureFile>("darknet.json");

    public static DarknetFixtureCase Case(string name) => Load().Cases.Single(c => c.Name == name);
}

public sealed record DarknetFixtureFile(string Generator, string Layer, List<DarknetFixtureCase> Cases);

/// <summary>
/// One network and batch-norm formula ("PyTorch" or "DarknetCpu"): cfg and weights file names (under Darknet/cfg and
/// Darknet/weights), the seeds they came from, the float32 input x (N x C x H x W) and the recorded layers' outputs.
/// </summary>
public sealed record DarknetFixtureCase(
    string Name, string Cfg, string Weights, string BatchNorm, int WeightsSeed, int InputSeed, FixtureTensor X, List<DarknetFixtureOutput> Outputs);

public sealed record DarknetFixtureOutput(int Layer, string Type, FixtureTensor Y);
