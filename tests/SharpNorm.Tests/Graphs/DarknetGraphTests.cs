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
/// Darknet networks as trainable graphs: training steps on DarkNet-19 and YOLOv3-tiny. (Their inference, which
/// DarknetNetwork runs through the same graph, meets the libtorch fixtures in DarknetFixtureTests.)
/// </summary>
public class DarknetGraphTests
{
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
}

/// <summary>A darknet network's convolutions pack their weights once; a Gradient call ends that, so a trained step is seen.</summary>
public class DarknetGraphFrozenWeightsTests
{
    [Fact]
    public void AfterAGradientCallChangedWeightsAreUsed()
    {
        IReadOnlyList<DarknetSection> sections = DarknetNetworkTests.Scaled("yolov3-tiny.cfg", 64);
        DarknetWeights weights = DarknetWeightsFile.Random(DarknetSummary.Describe(sections), seed: 3);
        Graph<float> graph = DarknetNetwork.Build(sections, weights).Graph;
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

        Graph<float> fresh = DarknetNetwork.Build(sections, weights).Graph;
        foreach (var ((_, p), (_, q)) in graph.NamedParameters.Zip(fresh.NamedParameters)) TensorData.Flat(p.Value).CopyTo(TensorData.Flat(q.Value));
        fresh.Run(x.AsReadOnlyTensorSpan());
        float[] expected = [.. fresh.Output(0), .. fresh.Output(1)];
        // The frozen graph may take Winograd where the thawed one takes the product: rounding apart, not weights apart.
        Assert.True(TorchDarknet.Normwise(actual, expected) <= 1e-5, $"{TorchDarknet.Normwise(actual, expected):E2}");
        Assert.True(TorchDarknet.Normwise(before, expected) > 1e-2, "the changed weights should change the outputs");
    }
}
