using System.Numerics.Tensors;
using Microsoft.ML.OnnxRuntime;
using SharpNorm.Layers;
using SharpNorm.Models;
using SharpNorm.Onnx;
using SharpNorm.Tensors;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Onnx;

/// <summary>
/// Every exported model runs in ONNX Runtime, the independent reference, and must give SharpNorm's eval-mode outputs
/// within 1e-5 normwise (‖ort − sharpnorm‖ / ‖sharpnorm‖), for batches of 1 and 4 from one file (the batch is dynamic).
/// </summary>
[Collection(OnnxRuntimeCollection.Name)]
public class OnnxExportTests
{
    private const double Bound = 1e-5;

    public static TheoryData<NormChoice, bool, int> ClassifierCases()
    {
        var cases = new TheoryData<NormChoice, bool, int>();
        foreach (NormChoice norm in Enum.GetValues<NormChoice>())
            foreach (int opset in new[] { 17, 21 })
            {
                cases.Add(norm, false, opset);
                if (norm == NormChoice.Batch) cases.Add(norm, true, opset);
            }
        return cases;
    }

    [Theory]
    [MemberData(nameof(ClassifierCases))]
    public void TheDefaultClassifierRunsInOnnxRuntime(NormChoice norm, bool fold, int opset)
    {
        Sequential<float> model = DarkNetClassifier.Create<float>(norm, classes: 10, seed: 5);
        Trained(model, [8, 1, 28, 28], seed: 6);
        byte[] onnx = OnnxExport.ToBytes(model, [1, 1, 28, 28], new OnnxExportOptions { Opset = opset, FoldBatchNorm = fold });
        AgreesWithOnnxRuntime(model, onnx, [1, 28, 28], seed: 7);
    }

    [Fact]
    public void InitializersKeepTheStateDictNamesAndTheBatchIsSymbolic()
    {
        Sequential<float> model = DarkNetClassifier.Create<float>(NormChoice.Batch, classes: 10, seed: 5);
        var proto = OnnxExport.ToModel(model, [2, 1, 28, 28]);
        var initializers = proto.Graph.Initializer.Select(i => i.Name).ToHashSet();
        foreach (var (name, _) in model.NamedParameters) Assert.Contains(name, initializers);
        foreach (var (name, buffer) in model.NamedBuffers)
            if (!buffer.IsCount) Assert.Contains(name, initializers);
        Assert.Equal("N", proto.Graph.Input.Single().Type.TensorType.Shape.Dim[0].DimParam);
        Assert.Equal("N", proto.Graph.Output.Single().Type.TensorType.Shape.Dim[0].DimParam);
        Assert.Equal([10L], proto.Graph.Output.Single().Type.TensorType.Shape.Dim.Skip(1).Select(d => d.DimValue));
        Assert.Equal(17, proto.OpsetImport.Single().Version);

        var folded = OnnxExport.ToModel(model, [2, 1, 28, 28], new OnnxExportOptions { FoldBatchNorm = true });
        Assert.DoesNotContain(folded.Graph.Node, n => n.OpType == "BatchNormalization");
        Assert.Equal(proto.Graph.Node.Count(n => n.OpType == "Conv"), folded.Graph.Node.Count(n => n.OpType == "Conv"));
    }

    public static TheoryData<string> LayerCases() => [.. Networks.Keys];

    private static readonly Dictionary<string, (Func<Sequential<float>> Create, nint[] Sample)> Networks = new()
    {
        ["conv groups, stride, dilation, asymmetric kernel"] = (() => new Sequential<float>(
            new Conv2d<float>(4, 6, [3, 2], stride: [2, 1], padding: [1, 2], dilation: [1, 2], groups: 2, bias: true, random: new Random(1)),
            new ReLU<float>(),
            new Conv2d<float>(6, 6, 3, padding: 1, groups: 6, random: new Random(2))), [4, 9, 11]),
        ["max pools with padding, stride and ceil mode"] = (() => new Sequential<float>(
            new MaxPool2d<float>(3, stride: 2, padding: 1, ceilMode: true),
            new MaxPool2d<float>([2, 3], stride: [1, 2], ceilMode: false),
            new MaxPool2d<float>(2, stride: 2, ceilMode: true)), [3, 13, 12]),
        ["average pools counting and not counting the padding"] = (() => new Sequential<float>(
            new AvgPool2d<float>(3, stride: 2, padding: 1, countIncludePad: true),
            new AvgPool2d<float>(3, stride: 1, padding: 1, countIncludePad: false),
            new AvgPool2d<float>(2, stride: 2, ceilMode: true, countIncludePad: false)), [3, 13, 12]),
        // PyTorch drops a ceil-mode window that would start in the right padding: (5 + 2 - 2) / 2 rounds up to 3 + 1
        // windows, the last of which would start at 6 = 5 + 1; the divisor of a window reaching past the input counts
        // the padding but not the ceil-mode overhang.
        ["pools whose last ceil-mode window starts in the padding"] = (() => new Sequential<float>(
            new Sequential<float>(new MaxPool2d<float>(2, stride: 2, padding: 1, ceilMode: true)),
            new Sequential<float>(new AvgPool2d<float>(2, stride: 2, padding: 1, ceilMode: true, countIncludePad: true)),
            new AvgPool2d<float>(3, stride: 2, padding: 1, ceilMode: true, countIncludePad: true)), [2, 11, 11]),
        ["instance norm, with and without running statistics"] = (() => new Sequential<float>(
            new InstanceNorm<float>(3, affine: true),
            new InstanceNorm<float>(3, affine: false, trackRunningStats: true),
            new InstanceNorm<float>(3, affine: false, eps: 1e-3)), [3, 5, 6]),
        ["batch norm without affine parameters, and batch norm 1d"] = (() => new Sequential<float>(
            new BatchNorm<float>(3, affine: false, eps: 1e-3),
            new Flatten<float>(),
            new BatchNorm<float>(60)), [3, 4, 5]),
        ["group norm affine and not"] = (() => new Sequential<float>(
            new GroupNorm<float>(2, 6),
            new GroupNorm<float>(3, 6, eps: 1e-3, affine: false),
            new GroupNorm<float>(6, 6)), [6, 5, 4]),
        ["layer norm with and without weight and bias"] = (() => new Sequential<float>(
            new LayerNorm<float>([5, 4]),
            new LayerNorm<float>(4, bias: false),
            new LayerNorm<float>([3, 5, 4], elementwiseAffine: false, eps: 1e-3)), [3, 5, 4]),
        ["rms norm with and without weight"] = (() => new Sequential<float>(
            new RMSNorm<float>([5, 4]),
            new RMSNorm<float>(4, eps: 1e-3, elementwiseAffine: false)), [3, 5, 4]),
        ["linear on rank 2 and rank 3, with and without bias"] = (() => new Sequential<float>(
            new Linear<float>(7, 5, random: new Random(3)),
            new LeakyReLU<float>(0.2),
            new Linear<float>(5, 4, bias: false, random: new Random(4)),
            new Dropout<float>(0.3),
            new Flatten<float>(),
            new Linear<float>(12, 3, random: new Random(5))), [3, 7]),
        ["nested sequentials, global average pool, flatten"] = (() => new Sequential<float>(
            new Sequential<float>(new Conv2d<float>(2, 4, 3, padding: 1, bias: false, random: new Random(6)), new BatchNorm<float>(4)),
            new Sequential<float>(new LeakyReLU<float>(0.1), new Sequential<float>(new GlobalAvgPool2d<float>())),
            new Flatten<float>(),
            new Linear<float>(4, 2, random: new Random(7))), [2, 6, 6]),
    };

    [Theory]
    [MemberData(nameof(LayerCases))]
    public void EachLayerKindRunsInOnnxRuntime(string network)
    {
        var (create, sample) = Networks[network];
        foreach (int opset in new[] { 17, 18, 21, 23 })
            foreach (bool fold in new[] { false, true })
            {
                Sequential<float> model = create();
                Trained(model, [4, .. sample], seed: 11);
                byte[] onnx = OnnxExport.ToBytes(model, [1, .. sample], new OnnxExportOptions { Opset = opset, FoldBatchNorm = fold });
                AgreesWithOnnxRuntime(model, onnx, sample, seed: 12, $"opset {opset}, fold {fold}");
            }
    }

    /// <summary>A graph of two outputs with a route (Concat), a shortcut (Add) and a sum of three (Sum), a channel slice (Slice), upsampling (Resize), Mish and SiLU.</summary>
    private static Graph<float> Residual()
    {
        var random = new Random(3);
        return new Graph<float>("x",
        [
            new GraphNode<float>("a", new Sequential<float>(new Conv2d<float>(3, 4, 3, padding: 1, bias: false, random: random), new BatchNorm<float>(4), new LeakyReLU<float>(0.1)), "x"),
            new GraphNode<float>("b", new Sequential<float>(new Conv2d<float>(4, 4, 3, padding: 1, random: random), new SiLU<float>()), "a"),
            new GraphNode<float>("route", new Concat<float>(), "a", "b"),
            new GraphNode<float>("c", new Conv2d<float>(8, 4, 1, random: random), "route"),
            new GraphNode<float>("shortcut", new Add<float>(), "c", "a"),
            new GraphNode<float>("sum", new Add<float>(), "shortcut", "a", "b"),
            new GraphNode<float>("up", new Upsample<float>(2), "sum"),
            new GraphNode<float>("half", new ChannelSlice<float>(2, 2), "a"),
            new GraphNode<float>("mish", new Mish<float>(), "half"),
            new GraphNode<float>("pool", new MaxPool2d<float>([2], [1], [0, 0, 1, 1]), "mish"),
            new GraphNode<float>("softmax", new Softmax<float>(1), "pool"),
        ], "up", "softmax");
    }

    [Theory]
    [InlineData(17, false)]
    [InlineData(18, true)]
    [InlineData(23, false)]
    public void AGraphOfTwoOutputsRunsInOnnxRuntime(int opset, bool fold)
    {
        Graph<float> graph = Residual();
        graph.Training = true;
        var gaussian = new Gaussian(4);
        for (int step = 0; step < 2; step++) graph.Run(gaussian.Tensor<float>([4, 3, 7, 6]).AsReadOnlyTensorSpan());
        graph.Training = false;
        byte[] onnx = OnnxExport.ToBytes(graph, [1, 3, 7, 6], new OnnxExportOptions { Opset = opset, FoldBatchNorm = fold });
        using var session = new InferenceSession(onnx);
        Assert.Equal(["up", "softmax"], session.OutputNames);
        foreach (int batch in new[] { 1, 4 })
        {
            Tensor<float> x = gaussian.Tensor<float>([batch, 3, 7, 6]);
            graph.Run(x.AsReadOnlyTensorSpan());
            float[] input = x.ToArray();
            using var value = OrtValue.CreateTensorValueFromMemory(input, [batch, 3, 7, 6]);
            using var runOptions = new RunOptions();   // disposed after the run: a RunOptions the GC finalizes during Run crashes ONNX Runtime
            using var outputs = session.Run(runOptions, ["x" == session.InputNames[0] ? "x" : session.InputNames[0]], [value], session.OutputNames);
            for (int k = 0; k < 2; k++)
            {
                float[] expected = graph.Output(k).ToArray(), actual = outputs[k].GetTensorDataAsSpan<float>().ToArray();
                Assert.Equal(graph.OutputShapes([batch, 3, 7, 6])[k].Select(d => (long)d), outputs[k].GetTensorTypeAndShape().Shape);
                double difference = 0, size = 0;
                for (int i = 0; i < expected.Length; i++)
                {
                    difference += Math.Pow((double)actual[i] - expected[i], 2);
                    size += Math.Pow(expected[i], 2);
                }
                Assert.True(Math.Sqrt(difference / size) <= Bound, $"opset {opset} batch {batch} output {k}: {Math.Sqrt(difference / size):E2} normwise");
            }
        }
    }

    [Fact]
    public void AOneOutputGraphWhoseOutputFeedsAnotherNodeKeepsItsConsumer()
    {
        var graph = new Graph<float>("x",
        [
            new GraphNode<float>("a", new Conv2d<float>(2, 3, 3, random: new Random(1)), "x"),
            new GraphNode<float>("b", new Sigmoid<float>(), "a"),
            new GraphNode<float>("c", new Add<float>(), "a", "b"),
        ], "a");
        graph.Training = false;
        AgreesWithOnnxRuntime(graph, OnnxExport.ToBytes(graph, [1, 2, 6, 6]), [2, 6, 6], seed: 2);
        Assert.Contains(OnnxExport.ToModel(graph, [1, 2, 6, 6]).Graph.Node, n => n.OpType == "Sigmoid" && n.Input.Single() == "output");
    }

    [Fact]
    public void ADoubleModelIsWrittenInFloat()
    {
        Sequential<double> model = DarkNetClassifier.Create<double>(NormChoice.Group, classes: 4, seed: 2);
        Sequential<float> twin = DarkNetClassifier.Create<float>(NormChoice.Group, classes: 4, seed: 2);
        byte[] fromDouble = OnnxExport.ToBytes(model, [1, 1, 28, 28]), fromFloat = OnnxExport.ToBytes(twin, [1, 1, 28, 28]);
        Assert.Equal(fromFloat.Length, fromDouble.Length);
        AgreesWithOnnxRuntime(twin, fromDouble, [1, 28, 28], seed: 3);
    }

    [Fact]
    public void ALayerTheExporterCannotExpressIsNamed()
    {
        var model = new Sequential<float>(new Conv2d<float>(1, 2, 3), new Sequential<float>(new ReLU<float>(), new Unknown()));
        var e = Assert.Throws<NotSupportedException>(() => OnnxExport.ToBytes(model, [1, 1, 5, 5]));
        Assert.Contains("'1.1'", e.Message);
        Assert.Contains("Unknown", e.Message);

        var untracked = new Sequential<float>(new Conv2d<float>(1, 2, 3), new BatchNorm<float>(2, trackRunningStats: false));
        e = Assert.Throws<NotSupportedException>(() => OnnxExport.ToBytes(untracked, [1, 1, 5, 5]));
        Assert.Contains("'1'", e.Message);
        Assert.Contains("running statistics", e.Message);
        Assert.Throws<NotSupportedException>(() => OnnxExport.ToBytes(untracked, [1, 1, 5, 5], new OnnxExportOptions { FoldBatchNorm = true }));

        var channelsLast = new Sequential<float>(new GroupNorm<float>(1, 3, layout: ChannelLayout.Last));
        e = Assert.Throws<NotSupportedException>(() => OnnxExport.ToBytes(channelsLast, [1, 4, 4, 3]));
        Assert.Contains("channels last", e.Message);
    }

    [Fact]
    public void BadArgumentsAreRefusedAndWriteNothing()
    {
        Sequential<float> model = DarkNetClassifier.Create<float>(NormChoice.Batch, classes: 3, seed: 1);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => OnnxExport.ToBytes(model, [1, 1, 28, 28], new OnnxExportOptions { Opset = 16 }));
        Assert.Contains("opset 16", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => OnnxExport.ToBytes(model, [1, 1, 28, 28], new OnnxExportOptions { Opset = 24 }));
        Assert.Throws<ArgumentException>(() => OnnxExport.ToBytes(model, [1, 1, 0, 28]));
        Assert.Throws<ArgumentException>(() => OnnxExport.ToBytes(model, [1, 3, 28, 28]));   // the model's own shape check
        Assert.Throws<ArgumentException>(() => OnnxExport.ToBytes(model, [1, 1, 28, 28], new OnnxExportOptions { InputName = "x", OutputName = "x" }));

        string folder = Directory.CreateTempSubdirectory("sharpnorm-onnx-").FullName;
        try
        {
            string path = Path.Combine(folder, "model.onnx");
            File.WriteAllText(path, "previous");
            var unsupported = new Sequential<float>(new Unknown());
            Assert.Throws<NotSupportedException>(() => OnnxExport.Save(unsupported, [1, 1, 4, 4], path));
            Assert.Equal("previous", File.ReadAllText(path));
            Assert.Single(Directory.GetFiles(folder));

            OnnxExport.Save(model, [1, 1, 28, 28], path);
            Assert.Single(Directory.GetFiles(folder));
            AgreesWithOnnxRuntime(model, File.ReadAllBytes(path), [1, 28, 28], seed: 2);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void TheModelIsLeftAsItWas()
    {
        Sequential<float> model = DarkNetClassifier.Create<float>(NormChoice.Batch, classes: 3, seed: 1);
        model.Training = true;
        Trained(model, [4, 1, 28, 28], seed: 3);
        model.Training = true;
        var before = model.NamedParameters.Select(p => p.Parameter.Value.ToArray()).ToList();
        OnnxExport.ToBytes(model, [1, 1, 28, 28], new OnnxExportOptions { FoldBatchNorm = true });
        Assert.True(model.Training);
        Assert.Equal(before, model.NamedParameters.Select(p => p.Parameter.Value.ToArray()).ToList());
    }

    /// <summary>Running statistics from a few training batches, and the norms' γ and β and every bias moved off their initial values.</summary>
    private static void Trained(Sequential<float> model, nint[] batchShape, int seed)
    {
        var gaussian = new Gaussian(seed);
        foreach (ILayer<float> layer in Leaves(model))
            foreach (Parameter<float> parameter in layer.Parameters)
                if (layer is NormLayer<float> || parameter.Value.Rank == 1)
                {
                    Span<float> values = TensorData.Flat(parameter.Value);
                    for (int i = 0; i < values.Length; i++) values[i] += (float)(0.3 * gaussian.Next());
                }
        model.Training = true;
        for (int step = 0; step < 3; step++) model.Forward(gaussian.Tensor<float>(batchShape, scale: 1.5, offset: 0.4));
        model.Training = false;
    }

    private static IEnumerable<ILayer<float>> Leaves(ILayer<float> layer) =>
        layer is Sequential<float> sequential ? sequential.Layers.SelectMany(Leaves) : [layer];

    /// <summary>Runs the file in ONNX Runtime on batches of 1 and 4 and compares with the model's eval-mode output.</summary>
    private static void AgreesWithOnnxRuntime(Layer<float> model, byte[] onnx, nint[] sample, int seed, string what = "")
    {
        model.Training = false;
        using var options = new SessionOptions { IntraOpNumThreads = 1, GraphOptimizationLevel = GraphOptimizationLevel.ORT_DISABLE_ALL };
        using var session = new InferenceSession(onnx, options);
        var gaussian = new Gaussian(seed);
        foreach (int batch in new[] { 1, 4 })
        {
            nint[] shape = [batch, .. sample];
            Tensor<float> x = gaussian.Tensor<float>(shape);
            float[] expected = model.Forward(x).ToArray();
            float[] input = x.ToArray();
            using var value = OrtValue.CreateTensorValueFromMemory(input, shape.Select(d => (long)d).ToArray());
            using var runOptions = new RunOptions();   // disposed after the run: a RunOptions the GC finalizes during Run crashes ONNX Runtime
            using var outputs = session.Run(runOptions, [session.InputNames[0]], [value], [session.OutputNames[0]]);
            float[] actual = outputs[0].GetTensorDataAsSpan<float>().ToArray();
            Assert.Equal(model.OutputShape(shape).Select(d => (long)d), outputs[0].GetTensorTypeAndShape().Shape);
            double difference = 0, size = 0;
            for (int i = 0; i < expected.Length; i++)
            {
                difference += Math.Pow((double)actual[i] - expected[i], 2);
                size += Math.Pow(expected[i], 2);
            }
            double relative = Math.Sqrt(difference / size);
            Assert.True(relative <= Bound, $"{what} batch {batch}: ONNX Runtime's output is {relative:E2} from SharpNorm's normwise (bound {Bound:E0})");
        }
    }

    private sealed class Unknown : Layer<float>
    {
        protected override string Description => "Unknown";

        public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

        protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<float> x, Span<float> y) => x.CopyTo(y);

        protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<float> x, ReadOnlySpan<float> dy, Span<float> dx) => dy.CopyTo(dx);
    }
}
