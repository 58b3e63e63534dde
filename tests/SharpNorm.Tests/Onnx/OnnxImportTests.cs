using System.Numerics.Tensors;
using Google.Protobuf;
using SharpNorm.Layers;
using SharpNorm.Models;
using SharpNorm.Onnx;
using SharpNorm.Tensors;
using SharpNorm.Tests.Support;
using Xunit;
using OnnxProto = global::Onnx;

namespace SharpNorm.Tests.Onnx;

/// <summary>Export → import gives the original network's outputs; malformed files are clear errors.</summary>
public class OnnxImportTests(Xunit.Abstractions.ITestOutputHelper output)
{
    public static TheoryData<NormChoice, int> RoundTripCases() => new()
    {
        { NormChoice.Batch, 17 }, { NormChoice.Instance, 17 }, { NormChoice.Layer, 17 }, { NormChoice.None, 17 }, { NormChoice.Group, 21 }, { NormChoice.Group, 17 }, { NormChoice.Batch, 23 },
    };

    [Theory]
    [MemberData(nameof(RoundTripCases))]
    public void TheClassifierComesBackWithItsOutputsBitForBit(NormChoice norm, int opset)
    {
        Sequential<float> model = DarkNetClassifier.Create<float>(norm, classes: 10, seed: 5);
        Trained(model);
        Graph<float> imported = OnnxImport.FromBytes(OnnxExport.ToBytes(model, [1, 1, 28, 28], new OnnxExportOptions { Opset = opset }));
        foreach (var (name, p) in model.NamedParameters)
            Assert.Equal(p.Value.ToArray(), imported.NamedParameters.Single(q => q.Name == name).Parameter.Value.ToArray());
        Same(model, imported, [1, 28, 28]);
    }

    [Fact]
    public void AGraphOfTwoOutputsComesBack()
    {
        var random = new Random(3);
        var graph = new Graph<float>("x",
        [
            new GraphNode<float>("a", new Sequential<float>(new Conv2d<float>(3, 4, 3, padding: 1, bias: false, random: random), new BatchNorm<float>(4), new LeakyReLU<float>(0.1)), "x"),
            new GraphNode<float>("b", new Sequential<float>(new Conv2d<float>(4, 4, 3, padding: 1, random: random), new SiLU<float>()), "a"),
            new GraphNode<float>("route", new Concat<float>(), "a", "b"),
            new GraphNode<float>("shortcut", new Add<float>(), "route", "route"),
            new GraphNode<float>("sum", new Add<float>(), "a", "b", "a"),
            new GraphNode<float>("up", new Upsample<float>(2), "sum"),
            new GraphNode<float>("half", new ChannelSlice<float>(1, 3), "a"),
            new GraphNode<float>("mish", new Mish<float>(), "half"),
            new GraphNode<float>("pool", new MaxPool2d<float>([2], [1], [0, 0, 1, 1]), "mish"),
            new GraphNode<float>("avg", new AvgPool2d<float>(3, stride: 2, padding: 1, countIncludePad: false), "pool"),
            new GraphNode<float>("flat", new Flatten<float>(), "avg"),
            new GraphNode<float>("fc", new Linear<float>(3 * 4 * 3, 5, random: random), "flat"),
            new GraphNode<float>("softmax", new Softmax<float>(1), "fc"),
        ], "up", "softmax", "shortcut");
        graph.Training = false;
        Graph<float> imported = OnnxImport.FromBytes(OnnxExport.ToBytes(graph, [1, 3, 7, 6], new OnnxExportOptions { Opset = 18 }));
        Assert.Equal(3, imported.OutputNames.Count);
        var x = new Gaussian(4).Tensor<float>([3, 3, 7, 6]);
        graph.Run(x.AsReadOnlyTensorSpan());
        imported.Run(x.AsReadOnlyTensorSpan());
        for (int k = 0; k < 3; k++) Assert.Equal(graph.Output(k).ToArray(), imported.Output(k).ToArray());
    }

    /// <summary>Darknet networks of every layer kind (YOLOv3's heads, YOLOv2's reorg and region, YOLOv1's local and detection) come back bit for bit.</summary>
    [Theory]
    [InlineData("small-detector.cfg", 0, true)]
    [InlineData("small-detector.cfg", 0, false)]
    [InlineData("small-detector-scaled.cfg", 0, true)]
    [InlineData("small-detector-scaled.cfg", 0, false)]
    [InlineData("small-region.cfg", 0, true)]
    [InlineData("small-region.cfg", 0, false)]
    [InlineData("small-detection.cfg", 0, true)]
    [InlineData("yolov2-tiny.cfg", 96, true)]
    [InlineData("yolov3-tiny.cfg", 96, true)]
    public void DarknetNetworksComeBackBitForBit(string cfg, int size, bool fold)
    {
        IReadOnlyList<SharpNorm.Darknet.DarknetSection> sections = size == 0
            ? SharpNorm.Darknet.DarknetConfig.ReadFile(Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", cfg))
            : SharpNorm.Tests.Darknet.DarknetNetworkTests.Scaled(cfg, size);
        var weights = SharpNorm.Darknet.DarknetWeightsFile.Random(SharpNorm.Darknet.DarknetSummary.Describe(sections), seed: 6);
        Graph<float> graph = SharpNorm.Darknet.DarknetGraph.Create(sections, weights, new SharpNorm.Darknet.DarknetNetworkOptions { FoldBatchNorm = fold });
        var net = sections[0];
        nint[] shape = [1, net.Int("channels", 0), net.Int("height", 0), net.Int("width", 0)];
        Graph<float> imported = OnnxImport.FromBytes(OnnxExport.ToBytes(graph, shape, new OnnxExportOptions { Opset = 18 }));
        Assert.Equal(graph.OutputNames.Count, imported.OutputNames.Count);
        Assert.Equal(graph.Parameters.Sum(p => p.Value.FlattenedLength), imported.Parameters.Sum(p => p.Value.FlattenedLength));
        foreach (int batch in new[] { 1, 3 })
        {
            shape[0] = batch;
            var x = new Gaussian(7).Tensor<float>(shape);
            graph.Run(x.AsReadOnlyTensorSpan());
            imported.Run(x.AsReadOnlyTensorSpan());
            for (int k = 0; k < graph.OutputNames.Count; k++) Assert.Equal(graph.Output(k).ToArray(), imported.Output(k).ToArray());
        }
    }

    /// <summary>Opsets before 21 and 23 write GroupNorm and RMSNorm as their decompositions; they come back as the norms.</summary>
    [Theory]
    [InlineData(17)]
    [InlineData(18)]
    [InlineData(21)]
    [InlineData(23)]
    public void TheNormsAndLayersOfEveryKindComeBack(int opset)
    {
        var model = new Sequential<float>(
            new Normalize<float>(0.3, 0.4),
            new Conv2d<float>(3, 6, [3, 2], stride: [2, 1], padding: [1, 0], dilation: [1, 2], groups: 3, random: new Random(1)),
            new InstanceNorm<float>(6, affine: true), new Tanh<float>(),
            new GroupNorm<float>(3, 6), new Sigmoid<float>(), new ScaleShift<float>(1.5, -0.25),
            new LayerNorm<float>([6, 4, 3]), new ELU<float>(), new ScaleShift<float>(2),
            new RMSNorm<float>([4, 3], eps: 1e-4), new ReLU<float>(), new ScaleShift<float>(1, 0.5),
            new MaxPool2d<float>(2, ceilMode: true), new GlobalAvgPool2d<float>(), new Flatten<float>(),
            new Linear<float>(6, 4, random: new Random(2)), new Dropout<float>(0.2), new Linear<float>(4, 3, bias: false, random: new Random(3)));
        Trained(model, [4, 3, 7, 5]);
        Graph<float> imported = OnnxImport.FromBytes(OnnxExport.ToBytes(model, [1, 3, 7, 5], new OnnxExportOptions { Opset = opset }));
        Assert.Contains(imported.Nodes, n => n.Layer is GroupNorm<float>);
        Assert.Contains(imported.Nodes, n => n.Layer is RMSNorm<float>);
        // Mul then Add of scalars is one ScaleShift again, Mul alone and Add alone one each
        Assert.Equal([(1.5, -0.25), (2.0, 0.0), (1.0, 0.5)],
            imported.Nodes.Select(n => n.Layer).OfType<ScaleShift<float>>().Select(l => (l.Scale, l.Shift)).ToArray());
        Same(model, imported, [3, 7, 5]);
        var plain = new Sequential<float>(new GroupNorm<float>(2, 6, affine: false), new RMSNorm<float>([4, 3], eps: 1e-3, elementwiseAffine: false));
        Graph<float> back = OnnxImport.FromBytes(OnnxExport.ToBytes(plain, [1, 6, 4, 3], new OnnxExportOptions { Opset = opset }));
        Assert.Equal(2, back.Nodes.Count);
        Same(plain, back, [6, 4, 3]);
    }

    [Fact]
    public void AnImportedModelFineTunes()
    {
        Sequential<float> model = DarkNetClassifier.Create<float>(NormChoice.Batch, classes: 10, seed: 5);
        Graph<float> graph = OnnxImport.FromBytes(OnnxExport.ToBytes(model, [1, 1, 28, 28]));
        graph.Training = true;
        var gaussian = new Gaussian(6);
        Tensor<float> x = gaussian.Tensor<float>([8, 1, 28, 28]);
        int[] labels = [0, 1, 2, 3, 4, 5, 6, 7];
        var loss = new SharpNorm.Training.CrossEntropyLoss<float>();
        var sgd = new SharpNorm.Training.Sgd<float>(graph.Parameters, learningRate: 0.05, momentum: 0.9);
        double first = 0, last = 0;
        for (int step = 0; step < 10; step++)
        {
            Tensor<float> logits = graph.Forward(x);
            last = loss.Forward(logits, labels);
            if (step == 0) first = last;
            sgd.ZeroGrad();
            graph.Gradient(x, loss.Backward(logits, labels));
            sgd.Step();
        }
        Assert.True(last < 0.5 * first, $"loss {first} -> {last}");
    }

    private static OnnxProto.ModelProto Valid() => OnnxExport.ToModel(DarkNetClassifier.Create<float>(NormChoice.Batch, classes: 3, seed: 1), [1, 1, 28, 28]);

    public static TheoryData<string, string> MalformedCases()
    {
        var data = new TheoryData<string, string>();
        foreach (var (kind, message) in new (string, string)[]
        {
            ("cycle", "not in topological order"),
            ("missing initializer", "neither the input, an initializer nor a node's output"),
            ("short tensor", "needs 1728 bytes; it has 1724"),
            ("external data", "external file"),
            ("unsupported op", "op NonMaxSuppression is not supported"),
            ("old opset", "opset 12 is not supported"),
            ("double initializer", "float32 expected"),
            ("other domain", "domain 'com.microsoft'"),
            ("huge dimensions", "larger than an array holds"),
            ("two inputs", "must have one input"),
            ("symbolic size", "dimension 2 must be a fixed positive size"),
            ("not protobuf", "not an ONNX model"),
        })
            data.Add(kind, message);
        return data;
    }

    [Theory]
    [MemberData(nameof(MalformedCases))]
    public void MalformedFilesAreClearErrors(string kind, string message)
    {
        OnnxProto.ModelProto model = Valid();
        OnnxProto.GraphProto g = model.Graph;
        byte[]? bytes = null;
        switch (kind)
        {
            case "cycle": (g.Node[0], g.Node[1]) = (g.Node[1], g.Node[0]); break;
            case "missing initializer": g.Initializer.RemoveAt(g.Initializer.ToList().FindIndex(i => i.Name == "1.running_mean")); g.Node[1].Input[3] = "nowhere"; break;
            case "short tensor": g.Initializer[0].RawData = ByteString.CopyFrom(g.Initializer[0].RawData.Span[4..]); break;
            case "external data": g.Initializer[0].DataLocation = OnnxProto.TensorProto.Types.DataLocation.External; break;
            case "unsupported op": g.Node[2].OpType = "NonMaxSuppression"; break;
            case "old opset": model.OpsetImport[0].Version = 12; break;
            case "double initializer": g.Initializer[0].DataType = (int)OnnxProto.TensorProto.Types.DataType.Double; break;
            case "other domain": model.OpsetImport.Add(new OnnxProto.OperatorSetIdProto { Domain = "com.microsoft", Version = 1 }); break;
            case "huge dimensions": g.Initializer[0].Dims.Clear(); g.Initializer[0].Dims.AddRange([1L << 40, 1L << 40]); break;
            case "two inputs": g.Input.Add(g.Input[0].Clone()); g.Input[1].Name = "second"; break;
            case "symbolic size": g.Input[0].Type.TensorType.Shape.Dim[2].DimParam = "H"; break;
            case "not protobuf": bytes = [0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3]; break;
        }
        var e = Assert.Throws<InvalidDataException>(() => OnnxImport.FromBytes(bytes ?? model.ToByteArray(), "bad.onnx"));
        Assert.StartsWith("bad.onnx: ", e.Message);
        Assert.True(e.Message.Contains(message, StringComparison.Ordinal), e.Message);
    }

    /// <summary>
    /// Truncations at many lengths and random byte changes of a small model of every op kind (so that most bytes are
    /// graph structure, not weights): each loads or is an InvalidDataException, nothing else. SHARPNORM_FUZZ_ONNX=N
    /// runs N mutations instead of 2,000. The darknet seeds add the heads' Reshape, Split, Transpose, DepthToSpace and
    /// the locally connected chain.
    /// </summary>
    [Theory]
    [InlineData("classifier")]
    [InlineData("small-region.cfg")]
    [InlineData("small-detection.cfg")]
    public void MutatedFilesLoadOrFailCleanly(string seed)
    {
        if (seed != "classifier")
        {
            var sections = SharpNorm.Darknet.DarknetConfig.ReadFile(Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", seed));
            var layers = SharpNorm.Darknet.DarknetSummary.Describe(sections);
            Graph<float> graph = SharpNorm.Darknet.DarknetGraph.Create(sections, SharpNorm.Darknet.DarknetWeightsFile.Random(layers, 1), new SharpNorm.Darknet.DarknetNetworkOptions());
            var net = sections[0];
            Fuzz(OnnxExport.ToBytes(graph, [1, net.Int("channels", 0), net.Int("height", 0), net.Int("width", 0)], new OnnxExportOptions { Opset = 18 }));
            return;
        }
        var model = new Sequential<float>(
            new Normalize<float>(0.3, 0.4), new Conv2d<float>(2, 4, 3, padding: 1, groups: 2, random: new Random(1)), new BatchNorm<float>(4), new SiLU<float>(),
            new GroupNorm<float>(2, 4), new Mish<float>(), new MaxPool2d<float>([2], [1], [0, 0, 1, 1]), new AvgPool2d<float>(2, ceilMode: true),
            new LayerNorm<float>([4, 3, 3]), new Flatten<float>(), new Linear<float>(36, 5, random: new Random(2)), new Softmax<float>(1));
        Fuzz(OnnxExport.ToBytes(model, [1, 2, 6, 6], new OnnxExportOptions { Opset = 21 }));
    }

    private void Fuzz(byte[] valid)
    {
        int mutations = int.TryParse(Environment.GetEnvironmentVariable("SHARPNORM_FUZZ_ONNX"), out int n) && n > 0 ? n : 2000;
        var random = new Random(7);
        int loaded = 0, refused = 0;
        void Try(byte[] bytes)
        {
            try
            {
                OnnxImport.FromBytes(bytes, "fuzz.onnx");
                loaded++;
            }
            catch (InvalidDataException)
            {
                refused++;
            }
        }
        for (int length = 0; length < valid.Length; length += Math.Max(1, valid.Length / 400)) Try(valid[..length]);
        for (int i = 0; i < mutations; i++)
        {
            byte[] mutated = (byte[])valid.Clone();
            for (int k = random.Next(1, 5); k > 0; k--)
                mutated[random.Next(mutated.Length)] = random.Next(3) switch { 0 => (byte)random.Next(256), 1 => 0xff, _ => (byte)(mutated[random.Next(mutated.Length)] ^ (1 << random.Next(8))) };
            Try(mutated);
        }
        output.WriteLine($"{loaded + refused} inputs: {loaded} loaded, {refused} refused with InvalidDataException, none with anything else");
        Assert.True(refused > 400 && loaded > 0, $"{refused} refused, {loaded} loaded");
    }

    [Fact]
    public void AMissingFileIsNamed()
    {
        var e = Assert.Throws<FileNotFoundException>(() => OnnxImport.Load("/nonexistent/model.onnx"));
        Assert.Contains("/nonexistent/model.onnx", e.Message);
    }

    private static void Trained(Sequential<float> model, nint[]? shape = null)
    {
        var gaussian = new Gaussian(8);
        foreach (Parameter<float> p in model.Parameters)
            if (p.Value.Rank == 1 || p.Name == "weight" && model.Layers.Any(l => l is NormLayer<float> n && n.Weight == p))
            {
                Span<float> values = TensorData.Flat(p.Value);
                for (int i = 0; i < values.Length; i++) values[i] += (float)(0.2 * gaussian.Next());
            }
        model.Training = true;
        for (int i = 0; i < 2; i++) model.Forward(gaussian.Tensor<float>(shape ?? [4, 1, 28, 28], scale: 1.5, offset: 0.3));
        model.Training = false;
    }

    private static void Same(Sequential<float> model, Graph<float> imported, nint[] sample)
    {
        var gaussian = new Gaussian(9);
        foreach (int batch in new[] { 1, 4 })
        {
            Tensor<float> x = gaussian.Tensor<float>([batch, .. sample]);
            Assert.Equal(model.Forward(x).ToArray(), imported.Forward(x).ToArray());
        }
    }
}
