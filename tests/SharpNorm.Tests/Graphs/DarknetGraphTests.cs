using System.Numerics.Tensors;
using SharpNorm.Darknet;
using SharpNorm.Layers;
using SharpNorm.Tensors;
using SharpNorm.Tests.Darknet;
using SharpNorm.Tests.Support;
using SharpNorm.Tools;
using Xunit;

namespace SharpNorm.Tests.Graphs;

/// <summary>
/// Darknet networks as graphs: the libtorch fixtures (Fixtures/darknet.json: a detector with shortcut, route and two
/// YOLO heads, and a classifier) within 1e-5 normwise, as the inference network meets them; the published cfgs
/// (scaled) the same as DarknetNetwork, folded and not; training steps on DarkNet-19 and YOLOv3-tiny.
/// </summary>
public class DarknetGraphTests
{
    public static TheoryData<string, bool> FixtureCases()
    {
        var data = new TheoryData<string, bool>();
        foreach (DarknetFixtureCase c in DarknetFixtures.Load().Cases)
            foreach (bool fold in new[] { true, false })
                if (fold || c.BatchNorm == nameof(DarknetBatchNormMode.PyTorch)) data.Add(c.Name, fold);
        return data;
    }

    [Theory]
    [MemberData(nameof(FixtureCases))]
    public void OutputsMatchLibTorch(string name, bool fold)
    {
        DarknetFixtureCase c = DarknetFixtures.Case(name);
        string directory = Path.Combine(AppContext.BaseDirectory, "Darknet");
        IReadOnlyList<DarknetSection> sections = DarknetConfig.ReadFile(Path.Combine(directory, "cfg", c.Cfg));
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        DarknetWeights weights = DarknetWeightsFile.Read(Path.Combine(directory, "weights", c.Weights), layers);
        Graph<float> graph = DarknetGraph.Create(sections, weights, new DarknetNetworkOptions { BatchNorm = Enum.Parse<DarknetBatchNormMode>(c.BatchNorm), FoldBatchNorm = fold });
        graph.Run(Tensor.Create(c.X.Values<float>("float32"), c.X.Shape.Select(d => (nint)d).ToArray()).AsReadOnlyTensorSpan());
        foreach (DarknetFixtureOutput expected in c.Outputs)
        {
            double error = TorchDarknet.Normwise(actual: graph.Output(expected.Layer.ToString(System.Globalization.CultureInfo.InvariantCulture)), expected: expected.Y.Values<float>("float32"));
            Assert.True(error <= 1e-5, $"{name} (fold {fold}) layer {expected.Layer} ({expected.Type}): normwise difference {error:E2}");
        }
    }

    [Theory]
    [InlineData("yolov3-tiny.cfg", true)]
    [InlineData("yolov3-tiny.cfg", false)]
    [InlineData("darknet19.cfg", true)]
    [InlineData("darknet19.cfg", false)]
    [InlineData("darknet.cfg", true)]
    [InlineData("tiny.cfg", false)]
    [InlineData("small-detector.cfg", false)]
    [InlineData("small-classifier.cfg", true)]
    public void ThePublishedNetworksGiveTheInferenceNetworksOutputs(string cfg, bool fold)
    {
        IReadOnlyList<DarknetSection> sections = cfg.StartsWith("small", StringComparison.Ordinal)
            ? DarknetConfig.ReadFile(Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", cfg)) : DarknetNetworkTests.Scaled(cfg, 96);
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        DarknetWeights weights = DarknetWeightsFile.Random(layers, seed: 4);
        var options = new DarknetNetworkOptions { FoldBatchNorm = fold };
        DarknetNetwork network = DarknetNetwork.Build(sections, weights, options);
        Graph<float> graph = DarknetGraph.Create(sections, weights, options);
        Assert.Equal(network.OutputLayers.Select(l => l.ToString(System.Globalization.CultureInfo.InvariantCulture)), graph.OutputNames);
        var random = new Random(5);
        float[] input = Enumerable.Range(0, 2 * network.InputChannels * network.InputHeight * network.InputWidth).Select(_ => (float)random.NextDouble()).ToArray();
        network.Forward(input, 2);
        graph.Run(Tensor.Create(input, [2, network.InputChannels, network.InputHeight, network.InputWidth]).AsReadOnlyTensorSpan());
        for (int k = 0; k < graph.OutputNames.Count; k++)
        {
            double error = TorchDarknet.Normwise(actual: graph.Output(k), expected: network.Output(network.OutputLayers[k]));
            Assert.True(error <= 1e-6, $"{cfg} output {graph.OutputNames[k]}: normwise difference {error:E2}");
        }
    }

    /// <summary>
    /// YOLOv3-tiny (routes, upsample, two heads) and DarkNet-19 train: in training mode with the batch norms as layers, a
    /// gradient step on a loss of the outputs lowers it, every parameter gets a finite gradient, and the running
    /// statistics move.
    /// </summary>
    [Theory]
    [InlineData("yolov3-tiny.cfg")]
    [InlineData("darknet19.cfg")]
    public void TheNetworksTrain(string cfg)
    {
        IReadOnlyList<DarknetSection> sections = DarknetNetworkTests.Scaled(cfg, 64);
        DarknetWeights weights = DarknetWeightsFile.Random(DarknetSummary.Describe(sections), seed: 6);
        Graph<float> graph = DarknetGraph.Create(sections, weights, new DarknetNetworkOptions { FoldBatchNorm = false });
        graph.Training = true;
        Tensor<float> x = new Gaussian(7).Tensor<float>([2, 3, 64, 64], scale: 0.3, offset: 0.5);
        float[] before = graph.NamedBuffers.First(b => b.Name.EndsWith("running_mean", StringComparison.Ordinal)).Buffer.Values!.ToArray();
        double Loss()
        {
            graph.Run(x.AsReadOnlyTensorSpan());
            double sum = 0;
            for (int k = 0; k < graph.OutputNames.Count; k++)
                foreach (float v in graph.Output(k)) sum += 0.5 * (double)v * v;
            return sum;
        }
        double first = Loss();
        // dL/dy = y for L = Σ y²/2.
        ReadOnlyMemory<float>[] dOutputs = Enumerable.Range(0, graph.OutputNames.Count).Select(k => (ReadOnlyMemory<float>)graph.Output(k).ToArray()).ToArray();
        graph.ZeroGrad();
        graph.Gradient(TensorData.Flat(x), dOutputs);
        foreach (var (name, p) in graph.NamedParameters)
            Assert.True(p.Gradient.ToArray().All(float.IsFinite), $"{name}: a gradient is not finite");
        Assert.Contains(graph.Parameters, p => p.Gradient.ToArray().Any(g => g != 0));
        double squared = graph.Parameters.Sum(p => p.Gradient.ToArray().Sum(g => (double)g * g));
        float rate = (float)(1e-3 * first / squared);
        foreach (Parameter<float> p in graph.Parameters)
        {
            Span<float> values = TensorData.Flat(p.Value);
            float[] gradient = p.Gradient.ToArray();
            for (int i = 0; i < values.Length; i++) values[i] -= rate * gradient[i];
        }
        double second = Loss();
        Assert.True(second < first, $"{cfg}: the loss went from {first} to {second}");
        Assert.NotEqual(before, graph.NamedBuffers.First(b => b.Name.EndsWith("running_mean", StringComparison.Ordinal)).Buffer.Values!.ToArray());
    }

    [Fact]
    public void DarknetCpusBatchNormMustBeFolded()
    {
        IReadOnlyList<DarknetSection> sections = DarknetNetworkTests.Scaled("tiny.cfg", 64);
        DarknetWeights weights = DarknetWeightsFile.Random(DarknetSummary.Describe(sections), seed: 6);
        var e = Assert.Throws<ArgumentException>(() => DarknetGraph.Create(sections, weights, new DarknetNetworkOptions { FoldBatchNorm = false, BatchNorm = DarknetBatchNormMode.DarknetCpu }));
        Assert.Contains("no BatchNorm twin", e.Message);
    }
}

/// <summary>A folded graph's convolutions pack their weights once; a Gradient call ends that, so a trained step is seen.</summary>
public class DarknetGraphFrozenWeightsTests
{
    [Fact]
    public void AfterAGradientCallChangedWeightsAreUsed()
    {
        IReadOnlyList<DarknetSection> sections = DarknetNetworkTests.Scaled("yolov3-tiny.cfg", 64);
        DarknetWeights weights = DarknetWeightsFile.Random(DarknetSummary.Describe(sections), seed: 3);
        Graph<float> graph = DarknetGraph.Create(sections, weights);
        Tensor<float> x = new Gaussian(4).Tensor<float>([1, 3, 64, 64], scale: 0.3, offset: 0.5);
        graph.Run(x.AsReadOnlyTensorSpan());
        ReadOnlyMemory<float>[] dOutputs = Enumerable.Range(0, 2).Select(k => (ReadOnlyMemory<float>)graph.Output(k).ToArray()).ToArray();
        float[] before = [.. graph.Output(0), .. graph.Output(1)];
        graph.Gradient(TensorData.Flat(x), dOutputs);
        foreach (Parameter<float> p in graph.Parameters)
        {
            Span<float> values = TensorData.Flat(p.Value);
            for (int i = 0; i < values.Length; i++) values[i] *= 0.9f;
        }
        graph.Run(x.AsReadOnlyTensorSpan());
        float[] actual = [.. graph.Output(0), .. graph.Output(1)];

        Graph<float> fresh = DarknetGraph.Create(sections, weights);
        foreach (var ((_, p), (_, q)) in graph.NamedParameters.Zip(fresh.NamedParameters)) TensorData.Flat(p.Value).CopyTo(TensorData.Flat(q.Value));
        fresh.Run(x.AsReadOnlyTensorSpan());
        float[] expected = [.. fresh.Output(0), .. fresh.Output(1)];
        // The frozen graph may take Winograd where the thawed one takes the product: rounding apart, not weights apart.
        Assert.True(TorchDarknet.Normwise(actual, expected) <= 1e-5, $"{TorchDarknet.Normwise(actual, expected):E2}");
        Assert.True(TorchDarknet.Normwise(before, expected) > 1e-2, "the changed weights should change the outputs");
    }
}
