using System.Numerics.Tensors;
using SharpNorm.Darknet;
using SharpNorm.Layers;
using SharpNorm.Tensors;
using SharpNorm.Tests.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Graphs;

/// <summary>The graph's layers and the graph itself against double-precision central differences; its bookkeeping.</summary>
public class GraphTests
{
    public static TheoryData<string> LayerCases() => [.. Layers.Keys];

    private static readonly Dictionary<string, (Func<ILayer<double>> Create, nint[] Shape)> Layers = new()
    {
        ["sigmoid"] = (() => new Sigmoid<double>(), [2, 3, 4]),
        ["tanh"] = (() => new Tanh<double>(), [2, 3, 4]),
        ["silu"] = (() => new SiLU<double>(), [2, 3, 4]),
        ["mish"] = (() => new Mish<double>(), [2, 3, 4]),
        ["elu"] = (() => new ELU<double>(), [2, 3, 4]),
        ["softmax over channels"] = (() => new Softmax<double>(1), [2, 5, 3]),
        ["softmax over the last dimension"] = (() => new Softmax<double>(2), [2, 3, 6]),
        ["identity"] = (() => new Identity<double>(), [2, 3]),
        ["scale and shift"] = (() => new ScaleShift<double>(-1.5, 0.25), [2, 3, 4]),
        ["channel slice"] = (() => new ChannelSlice<double>(2, 3), [2, 6, 2, 3]),
        ["upsample by 2"] = (() => new Upsample<double>(2), [2, 3, 3, 4]),
        ["upsample by 3"] = (() => new Upsample<double>(3), [1, 2, 2, 3]),
        ["max pool padded after (darknet's size 2 stride 1)"] = (() => new MaxPool2d<double>([2], [1], [0, 0, 1, 1]), [2, 2, 5, 6]),
        ["max pool padded before and after"] = (() => new MaxPool2d<double>([3], [2], [1, 0, 1, 1]), [1, 2, 7, 6]),
        ["yolo"] = (() => new YoloLayer<double>(new YoloHead(2, [0, 1], [10, 14, 23, 27], 1.05)), [2, 14, 3, 2]),
        ["reshape"] = (() => new Reshape<double>(0, 3, -1, 2), [2, 6, 2, 2]),
        ["permute"] = (() => new Permute<double>(0, 3, 1, 4, 2), [2, 3, 2, 4, 2]),
        ["slice of dimension 2"] = (() => new ChannelSlice<double>(1, 2, dimension: 2), [2, 3, 4, 2]),
        ["reorg by 2"] = (() => new Reorg<double>(2), [2, 8, 4, 6]),
        ["reorg by 2, reverse"] = (() => new Reorg<double>(2, reverse: true), [2, 8, 3, 2]),
        ["reorg by 3"] = (() => new Reorg<double>(3), [1, 9, 3, 6]),
        ["region, softmax classes"] = (() => new RegionLayer<double>(new RegionHead(3, [1, 2, 3, 4], Softmax: true)), [2, 16, 3, 2]),
        ["region, logistic classes"] = (() => new RegionLayer<double>(new RegionHead(2, [1, 2], Softmax: false)), [2, 7, 2, 3]),
        ["detection, softmax"] = (() => new DetectionLayer<double>(new DetectionHead(3, 2, 2, Softmax: true, Sqrt: true)), [2, 52]),
        ["detection, no softmax"] = (() => new DetectionLayer<double>(new DetectionHead(2, 1, 2, Softmax: false, Sqrt: false)), [2, 28, 1, 1]),
        ["locally connected, darknet's pad 1"] = (() => new LocallyConnected2d<double>(2, 3, 4, 5, 3, stride: 1, padding: 1, random: new Random(1)), [2, 2, 4, 5]),
        ["locally connected, stride 2"] = (() => new LocallyConnected2d<double>(2, 3, 5, 5, 2, stride: 2, padding: 0, random: new Random(2)), [2, 2, 5, 5]),
    };

    [Theory]
    [MemberData(nameof(LayerCases))]
    public void EachNewLayerMatchesCentralDifferences(string layer)
    {
        var (create, shape) = Layers[layer];
        CnnLayerTests.CheckGradients(create(), shape, seed: 3);
    }

    [Fact]
    public void ScaleShiftRoundsTheProductThenTheSumAndRefusesNonFiniteConstants()
    {
        var layer = new ScaleShift<float>(1.05, -0.025);
        var x = new Gaussian(2).Tensor<float>([2, 3, 5]);
        float[] y = layer.Forward(x).ToArray(), input = x.ToArray();
        for (int i = 0; i < y.Length; i++) Assert.Equal(input[i] * 1.05f + -0.025f, y[i]);   // two roundings, as ONNX's Mul then Add
        Assert.Throws<ArgumentOutOfRangeException>(() => new ScaleShift<float>(double.NaN));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ScaleShift<float>(1, double.PositiveInfinity));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ScaleShift<float>(1e300));   // finite in double, not in float
        Assert.Equal(1e300 * 2, new ScaleShift<double>(1e300).Forward(Tensor.Create(new double[] { 2 }, [1])).ToArray()[0]);
        // a unit scale is no product and a zero shift no sum, as the ONNX export writes them: -0 stays -0
        Assert.True(double.IsNegative(new ScaleShift<float>(2).Forward(Tensor.Create(new float[] { -0f }, [1])).ToArray()[0]));
        Assert.True(double.IsNegative(new ScaleShift<float>(1, 0).Forward(Tensor.Create(new float[] { -0f }, [1])).ToArray()[0]));
    }

    [Fact]
    public void DarknetsAsymmetricMaxPoolKeepsTheSizeAndClipsTheWindow()
    {
        var pool = new MaxPool2d<double>([2], [1], [0, 0, 1, 1]);
        Assert.Equal([1, 1, 3, 3], pool.OutputShape([1, 1, 3, 3]));
        var x = Tensor.Create(new double[] { 1, 5, 2, 7, 3, 4, 0, 9, 8 }, [1, 1, 3, 3]);
        Assert.Equal([7, 5, 4, 9, 9, 8, 9, 9, 8], pool.Forward(x).ToArray());
        Assert.Throws<ArgumentException>(() => new MaxPool2d<double>([2], [1], [0, 0, 1, 1], ceilMode: true));
        Assert.Throws<ArgumentException>(() => new MaxPool2d<double>([2], [1], [0, 0, 2, 1]));
        Assert.Throws<ArgumentException>(() => new AvgPool2d<double>([2], [1], [0, 0, 1, 1]));
    }

    /// <summary>
    /// input → a (conv, BN, leaky: a fused Sequential) → b (conv) → concat(a, b) → c (conv) → add(c, a) → upsample; and
    /// a slice of a → its own output. a feeds four nodes, so its gradient sums four parts.
    /// </summary>
    private static Graph<double> Residual(int seed)
    {
        var random = new Random(seed);
        return new Graph<double>("x",
        [
            new GraphNode<double>("a", new Sequential<double>(new Conv2d<double>(2, 4, 3, padding: 1, bias: false, random: random), new BatchNorm<double>(4), new LeakyReLU<double>(0.1)), "x"),
            new GraphNode<double>("b", new Conv2d<double>(4, 4, 3, padding: 1, random: random), "a"),
            new GraphNode<double>("route", new Concat<double>(), "a", "b"),
            new GraphNode<double>("c", new Conv2d<double>(8, 4, 1, random: random), "route"),
            new GraphNode<double>("shortcut", new Add<double>(), "c", "a"),
            new GraphNode<double>("up", new Upsample<double>(2), "shortcut"),
            new GraphNode<double>("half", new ChannelSlice<double>(2, 2), "a"),
            new GraphNode<double>("mish", new Mish<double>(), "half"),
        ], "up", "mish");
    }

    [Fact]
    public void AGraphWithRoutesAndShortcutsMatchesCentralDifferences()
    {
        Graph<double> graph = Residual(1);
        var gaussian = new Gaussian(2);
        nint[] shape = [2, 2, 5, 4];
        Tensor<double> x = gaussian.Tensor<double>(shape);
        nint[][] outputShapes = graph.OutputShapes(shape);
        double[][] weights = outputShapes.Select(s => gaussian.Array<double>(s.Aggregate(1L, (p, d) => p * d))).ToArray();
        double Loss()
        {
            graph.Run(x.AsReadOnlyTensorSpan());
            double sum = 0;
            for (int k = 0; k < weights.Length; k++)
            {
                ReadOnlySpan<double> y = graph.Output(k);
                for (int i = 0; i < y.Length; i++) sum += y[i] * weights[k][i];
            }
            return sum;
        }
        graph.ZeroGrad();
        Loss();
        var dx = new double[x.FlattenedLength];
        ReadOnlyMemory<double>[] dOutputs = [weights[0], weights[1]];
        graph.Backward(TensorData.Flat(x), dOutputs, dx);
        graph.Gradient(TensorData.Flat(x), dOutputs);
        Assert.Equal(NumericalGradient.Central(TensorData.Flat(x), Loss), dx, NumericalGradient.Agrees);
        foreach (var (name, p) in graph.NamedParameters)
            Assert.True(NumericalGradient.Central(TensorData.Flat(p.Value), Loss).Zip(p.Gradient.ToArray()).All(v => NumericalGradient.Agrees.Equals(v.Second, v.First)), name);
        Assert.Contains(graph.NamedParameters, p => p.Name == "a.0.weight");
        Assert.Contains(graph.NamedBuffers, b => b.Name == "a.1.running_var");
    }

    [Fact]
    public void AOneOutputGraphIsALayerAndAJoinMayReadTheInputTwice()
    {
        var random = new Random(4);
        var graph = new Graph<double>("x",
        [
            new GraphNode<double>("double", new Add<double>(), "x", "x"),
            new GraphNode<double>("conv", new Conv2d<double>(3, 2, 3, stride: 2, random: random), "double"),
            new GraphNode<double>("both", new Concat<double>(), "conv", "conv"),
            new GraphNode<double>("sig", new Sigmoid<double>(), "both"),
        ], "sig");
        CnnLayerTests.CheckGradients(graph, [2, 3, 7, 6], seed: 5);
    }

    [Fact]
    public void AChainAsAGraphIsTheSequentialBitForBit()
    {
        Sequential<float> Chain() => new(new Conv2d<float>(3, 8, 3, padding: 1, bias: false, random: new Random(7)), new BatchNorm<float>(8), new LeakyReLU<float>(0.1),
            new MaxPool2d<float>(2), new Conv2d<float>(8, 4, 1, random: new Random(8)), new GlobalAvgPool2d<float>(), new Flatten<float>());
        Sequential<float> sequential = Chain(), inner = Chain();
        var graph = new Graph<float>("input", [new GraphNode<float>("body", inner, "input")], "body");
        var gaussian = new Gaussian(9);
        Tensor<float> x = gaussian.Tensor<float>([4, 3, 8, 8]), dy = gaussian.Tensor<float>([4, 4]);
        foreach (bool training in new[] { true, false })
        {
            sequential.Training = graph.Training = training;
            Assert.Equal(sequential.Forward(x).ToArray(), graph.Forward(x).ToArray());
            Assert.Equal(sequential.Backward(x, dy).ToArray(), graph.Backward(x, dy).ToArray());
        }
        sequential.Training = graph.Training = true;
        sequential.Forward(x);
        graph.Forward(x);
        sequential.ZeroGrad();
        graph.ZeroGrad();
        sequential.Gradient(x, dy);
        graph.Gradient(x, dy);
        foreach (var ((name, p), (graphName, q)) in sequential.NamedParameters.Zip(graph.NamedParameters))
        {
            Assert.Equal("body." + name, graphName);
            Assert.Equal(p.Gradient.ToArray(), q.Gradient.ToArray());
        }
    }

    [Fact]
    public void ATrainingStepIsTheSameBitsForAnyThreadCountAndAllocatesNothing()
    {
        float[]? reference = null;
        foreach (int threads in new[] { 1, 2, 4 })
        {
            Graph<float> graph = Float(Residual(11));
            graph.MaxDegreeOfParallelism = threads;
            var gaussian = new Gaussian(12);
            Tensor<float> x = gaussian.Tensor<float>([4, 2, 12, 10]);
            nint[][] shapes = graph.OutputShapes(x.Lengths);
            ReadOnlyMemory<float>[] dOutputs = shapes.Select(s => (ReadOnlyMemory<float>)gaussian.Array<float>(s.Aggregate(1L, (p, d) => p * d))).ToArray();
            var dx = new float[x.FlattenedLength];
            void Step()
            {
                graph.Run(x.AsReadOnlyTensorSpan());
                graph.Gradient(TensorData.Flat(x), dOutputs);
                graph.Backward(TensorData.Flat(x), dOutputs, dx);
            }
            for (int i = 0; i < 20; i++) Step();
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 3; i++) Step();
            Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
            float[] result = [.. dx, .. graph.Output(0), .. graph.Output(1), .. graph.Parameters.SelectMany(p => p.Gradient.ToArray())];
            if (reference is null) reference = result;
            else Assert.Equal(reference, result);
        }
    }

    /// <summary>The residual graph in float with the double graph's initial parameters.</summary>
    private static Graph<float> Float(Graph<double> source)
    {
        var random = new Random(11);
        var graph = new Graph<float>("x",
        [
            new GraphNode<float>("a", new Sequential<float>(new Conv2d<float>(2, 4, 3, padding: 1, bias: false, random: random), new BatchNorm<float>(4), new LeakyReLU<float>(0.1)), "x"),
            new GraphNode<float>("b", new Conv2d<float>(4, 4, 3, padding: 1, random: random), "a"),
            new GraphNode<float>("route", new Concat<float>(), "a", "b"),
            new GraphNode<float>("c", new Conv2d<float>(8, 4, 1, random: random), "route"),
            new GraphNode<float>("shortcut", new Add<float>(), "c", "a"),
            new GraphNode<float>("up", new Upsample<float>(2), "shortcut"),
            new GraphNode<float>("half", new ChannelSlice<float>(2, 2), "a"),
            new GraphNode<float>("mish", new Mish<float>(), "half"),
        ], "up", "mish");
        Assert.Equal(source.NamedParameters.Select(p => p.Name), graph.NamedParameters.Select(p => p.Name));
        return graph;
    }

    [Fact]
    public void BadGraphsAndBadCallsAreClearErrorsThatChangeNothing()
    {
        var conv = new Conv2d<double>(2, 3, 1);
        var e = Assert.Throws<ArgumentException>(() => new Graph<double>("x", [new GraphNode<double>("a", conv, "y")], "a"));
        Assert.Contains("'a' reads 'y'", e.Message);
        e = Assert.Throws<ArgumentException>(() => new Graph<double>("x", [new GraphNode<double>("a", conv, "x"), new GraphNode<double>("a", new ReLU<double>(), "a")], "a"));
        Assert.Contains("named 'a'", e.Message);
        e = Assert.Throws<ArgumentException>(() => new Graph<double>("x", [new GraphNode<double>("a", conv, "x")], "b"));
        Assert.Contains("Output 'b'", e.Message);
        // A later node cannot be read before it exists: the order is the topological order, so there is no cycle.
        e = Assert.Throws<ArgumentException>(() => new Graph<double>("x", [new GraphNode<double>("a", new Add<double>(), "x", "b"), new GraphNode<double>("b", conv, "a")], "b"));
        Assert.Contains("topological order", e.Message);

        var graph = new Graph<double>("x",
        [
            new GraphNode<double>("a", new Conv2d<double>(2, 3, 1), "x"),
            new GraphNode<double>("b", new Conv2d<double>(2, 3, 1, stride: 2), "x"),
            new GraphNode<double>("join", new Concat<double>(), "a", "b"),
        ], "join", "a");
        Assert.Throws<InvalidOperationException>(() => graph.OutputShape([1, 2, 4, 4]));
        e = Assert.Throws<ArgumentException>(() => graph.OutputShapes([1, 2, 4, 4]));
        Assert.Contains("Node 'join' (Concat)", e.Message);
        Assert.Throws<InvalidOperationException>(() => graph.Output(0));
        var x = new Gaussian(1).Tensor<double>([1, 2, 4, 4]);
        Assert.Throws<ArgumentException>(() => graph.Run(x.AsReadOnlyTensorSpan()));
        Assert.Throws<InvalidOperationException>(() => graph.Output(0));   // the failed run left nothing behind
        Assert.Throws<InvalidOperationException>(() => graph.Gradient(TensorData.Flat(x), [new double[48], new double[48]]));
    }
}
