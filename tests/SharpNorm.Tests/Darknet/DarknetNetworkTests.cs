using SharpNorm.Darknet;
using Xunit;

namespace SharpNorm.Tests.Darknet;

/// <summary>
/// Darknet networks built for inference: shapes, darknet's layer rules (checked against values worked out by hand
/// from darknet's source), batch-norm folding, the two batch-norm formulas, determinism, and bad input.
/// Agreement with libtorch is in DarknetFixtureTests and DarknetTorchParityTests.
/// </summary>
public class DarknetNetworkTests
{
    private static string Cfg(string name) => Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", name);

    /// <summary>A cfg of the tests' copies at a smaller input size (the layers are the same; the maps smaller).</summary>
    internal static IReadOnlyList<DarknetSection> Scaled(string name, int size) =>
        DarknetConfig.Parse(string.Join('\n', File.ReadAllLines(Cfg(name)).Select(line =>
            line.Replace(" ", "").StartsWith("width=") ? $"width={size}" : line.Replace(" ", "").StartsWith("height=") ? $"height={size}" : line)), name);

    private static float[] Input(DarknetNetwork network, int batch, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, batch * network.InputChannels * network.InputHeight * network.InputWidth).Select(_ => (float)random.NextDouble()).ToArray();
    }

    private static double RelativeDifference(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        double difference = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            difference += Math.Pow(expected[i] - (double)actual[i], 2);
            norm += Math.Pow(expected[i], 2);
        }
        return Math.Sqrt(difference / norm);
    }

    [Theory]
    [InlineData("darknet19.cfg", 64)]
    [InlineData("yolov3-tiny.cfg", 96)]
    [InlineData("darknet.cfg", 64)]
    [InlineData("tiny.cfg", 64)]
    public void EveryLayerHasTheShapeDarknetGivesIt(string cfg, int size)
    {
        var network = DarknetNetwork.Build(Scaled(cfg, size), null);
        network.Forward(Input(network, 2, 1), 2);
        foreach (DarknetLayerInfo layer in network.Layers)
        {
            ReadOnlySpan<float> output = network.Output(layer.Index);
            Assert.Equal(2 * layer.Channels * layer.Height * layer.Width, output.Length);
            foreach (float v in output) Assert.True(float.IsFinite(v), $"layer {layer.Index} ({layer.Type}) gave {v}");
        }
    }

    [Fact]
    public void YoloNetworksReportTheirYoloLayersAsOutputs()
    {
        var network = DarknetNetwork.Load(Cfg("yolov3-tiny.cfg"), null);
        Assert.Equal([16, 23], network.OutputLayers);
        Assert.Equal([3, 4, 5], network.Yolo(16)!.Mask);
        Assert.Equal(80, network.Yolo(23)!.Classes);
        Assert.Null(network.Yolo(0));
        var classifier = DarknetNetwork.Load(Cfg("darknet19.cfg"), null);
        Assert.Equal([classifier.Layers.Count - 1], classifier.OutputLayers);
    }

    [Theory]
    [InlineData("yolov3-tiny.cfg", DarknetBatchNormMode.PyTorch)]
    [InlineData("yolov3-tiny.cfg", DarknetBatchNormMode.DarknetCpu)]
    [InlineData("darknet19.cfg", DarknetBatchNormMode.PyTorch)]
    [InlineData("darknet19.cfg", DarknetBatchNormMode.DarknetCpu)]
    public void FoldedBatchNormGivesTheUnfusedOutputs(string cfg, DarknetBatchNormMode mode)
    {
        IReadOnlyList<DarknetSection> sections = Scaled(cfg, 96);
        DarknetWeights weights = DarknetWeightsFile.Random(DarknetSummary.Describe(sections), seed: 5);
        var folded = DarknetNetwork.Build(sections, weights, new DarknetNetworkOptions { BatchNorm = mode });
        var unfused = DarknetNetwork.Build(sections, weights, new DarknetNetworkOptions { BatchNorm = mode, FoldBatchNorm = false });
        float[] input = Input(folded, 2, 2);
        folded.Forward(input, 2);
        unfused.Forward(input, 2);
        foreach (int layer in folded.OutputLayers)
            Assert.True(RelativeDifference(unfused.Output(layer), folded.Output(layer)) < 1e-5, $"layer {layer}");
    }

    [Fact]
    public void TheBatchNormModesUseTheirOwnFormulas()
    {
        // One 1x1 convolution (weight 1, one channel) with a norm: the output is the norm of the input.
        const string cfg = "[net]\nwidth=1\nheight=1\nchannels=1\n[convolutional]\nfilters=1\nsize=1\nbatch_normalize=1\nactivation=linear";
        IReadOnlyList<DarknetSection> sections = DarknetConfig.Parse(cfg);
        var weights = new DarknetWeights(0, 2, 0, 0, [new DarknetLayerWeights(0, false, [0.25f], [2f], [0.5f], [0.01f], [1f])]);
        foreach (bool fold in new[] { true, false })
        {
            var pytorch = DarknetNetwork.Build(sections, weights, new DarknetNetworkOptions { FoldBatchNorm = fold });
            var cpu = DarknetNetwork.Build(sections, weights, new DarknetNetworkOptions { BatchNorm = DarknetBatchNormMode.DarknetCpu, FoldBatchNorm = fold });
            pytorch.Forward([1.5f], 1);
            cpu.Forward([1.5f], 1);
            Assert.Equal((1.5 - 0.5) / Math.Sqrt(0.01 + 1e-5) * 2 + 0.25, pytorch.Output(0)[0], 5);
            Assert.Equal((1.5 - 0.5) / (Math.Sqrt(0.01) + 1e-6) * 2 + 0.25, cpu.Output(0)[0], 5);
        }
    }

    [Fact]
    public void MaxPoolFollowsDarknetsPaddingRule()
    {
        // size 2 stride 1 (yolov3-tiny): padding size-1 = 1, all of it after the input: a 3x3 map stays 3x3 and the last
        // row and column take the maximum over the inside elements only.
        const string cfg = "[net]\nwidth=3\nheight=3\nchannels=1\n[maxpool]\nsize=2\nstride=1\n[maxpool]\nsize=2\nstride=2";
        var network = DarknetNetwork.Build(DarknetConfig.Parse(cfg), null);
        float[] input = [1, -5, 2, -7, -3, -9, -4, 8, -6];
        network.Forward(input, 1);
        Assert.Equal([1, 2, 2, 8, 8, -6, 8, 8, -6], network.Output(0).ToArray());
        // size 2 stride 2 on the 3x3 result: (3 + 1 - 2) / 2 + 1 = 2, windows at 0 and 2.
        Assert.Equal([8, 2, 8, -6], network.Output(1).ToArray());
    }

    [Fact]
    public void RouteShortcutUpsampleAndSoftmaxFollowDarknet()
    {
        const string cfg = """
            [net]
            width=2
            height=2
            channels=2
            [convolutional]
            filters=2
            size=1
            activation=linear
            [route]
            layers=-1,0
            [route]
            layers=0
            groups=2
            group_id=1
            [shortcut]
            from=-3
            activation=leaky
            [upsample]
            stride=2
            [avgpool]
            [softmax]
            """;
        // Layer 0 is the identity: 1x1 weights [[1, 0], [0, 1]], zero biases.
        IReadOnlyList<DarknetSection> sections = DarknetConfig.Parse(cfg);
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        var weights = new DarknetWeights(0, 2, 0, 0, layers.Select(l => l.Index == 0 ? new DarknetLayerWeights(0, false, [0f, 0f], null, null, null, [1f, 0f, 0f, 1f]) : null).ToArray());
        var network = DarknetNetwork.Build(sections, weights);
        float[] input = [1, 2, 3, 4, -5, -6, -7, -8];
        network.Forward(input, 1);
        Assert.Equal(input, network.Output(0).ToArray());
        Assert.Equal([.. input, .. input], network.Output(1).ToArray());          // route: channels one after another
        Assert.Equal([-5, -6, -7, -8], network.Output(2).ToArray());               // group 1 of 2: the second channel
        // shortcut: layer 2 (1 channel) + layer 0 (2 channels): the first channel is added, then leaky.
        Assert.Equal([0.1f * -4, 0.1f * -4, 0.1f * -4, 0.1f * -4], network.Output(3).ToArray(), new Tolerance(1e-6f));
        float[] up = network.Output(4).ToArray();
        Assert.Equal(16, up.Length);
        Assert.Equal(network.Output(3)[0], up[0]);
        Assert.Equal(network.Output(3)[1], up[2]);
        Assert.Equal(network.Output(3)[1], up[7]);
        Assert.Equal(0.1f * -4, Assert.Single(network.Output(5).ToArray()), 6); // the mean of a constant map
        Assert.Equal([1f], network.Output(6).ToArray()); // softmax of one value
    }

    private sealed class Tolerance(float tolerance) : IEqualityComparer<float>
    {
        public bool Equals(float x, float y) => Math.Abs(x - y) <= tolerance;
        public int GetHashCode(float obj) => 0;
    }

    [Fact]
    public void YoloAppliesTheLogisticToXYObjectnessAndClassesOnly()
    {
        const string cfg = "[net]\nwidth=1\nheight=1\nchannels=7\n[yolo]\nmask=0\nanchors=10,20\nclasses=2";
        var network = DarknetNetwork.Build(DarknetConfig.Parse(cfg), null);
        float[] input = [0.5f, -1, 0.25f, 2, 3, -2, 1];
        network.Forward(input, 1);
        float[] expected = input.Select((v, i) => i is 2 or 3 ? v : 1 / (1 + MathF.Exp(-v))).ToArray();
        Assert.Equal(expected, network.Output(0).ToArray(), new Tolerance(1e-6f));
    }

    [Fact]
    public void ResultsAreIdenticalForAnyThreadCount()
    {
        IReadOnlyList<DarknetSection> sections = Scaled("yolov3-tiny.cfg", 64);
        var one = DarknetNetwork.Build(sections, null, new DarknetNetworkOptions { MaxDegreeOfParallelism = 1 });
        var all = DarknetNetwork.Build(sections, null, new DarknetNetworkOptions { MaxDegreeOfParallelism = 4 });
        float[] input = Input(one, 3, 4);
        one.Forward(input, 3);
        all.Forward(input, 3);
        foreach (int layer in one.OutputLayers) Assert.Equal(one.Output(layer).ToArray(), all.Output(layer).ToArray());
    }

    [Fact]
    public void BatchesGiveEachImageItsOwnResult()
    {
        IReadOnlyList<DarknetSection> sections = Scaled("darknet19.cfg", 64);
        var network = DarknetNetwork.Build(sections, null);
        float[] input = Input(network, 2, 6);
        network.Forward(input, 2);
        float[] both = network.Output(network.OutputLayers[0]).ToArray();
        int perImage = input.Length / 2;
        network.Forward(input.AsSpan(perImage), 1);
        Assert.True(RelativeDifference(both.AsSpan(both.Length / 2), network.Output(network.OutputLayers[0])) < 1e-6);
    }

    [Fact]
    public void BadInputIsRefusedClearly()
    {
        var network = DarknetNetwork.Load(Cfg("tiny.cfg"), null);
        var wrong = Assert.Throws<ArgumentException>(() => network.Forward(new float[10], 1));
        Assert.Contains("3 x 224 x 224", wrong.Message);
        Assert.Throws<InvalidOperationException>(() => network.Output(0));
        Assert.Throws<ArgumentOutOfRangeException>(() => network.Forward(new float[10], 0));

        var activation = Assert.Throws<DarknetConfigException>(() => DarknetNetwork.Build(DarknetConfig.Parse(
            "[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=1\nsize=1\nactivation=ramp", "ramp.cfg"), null));
        Assert.Contains("ramp.cfg:8", activation.Message);
        Assert.Contains("not supported", activation.Message);

        var shortcut = Assert.Throws<DarknetConfigException>(() => DarknetNetwork.Build(DarknetConfig.Parse(
            "[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=1\nsize=1\n[maxpool]\nsize=2\nstride=2\n[shortcut]\nfrom=0", "s.cfg"), null));
        Assert.Contains("sizes must match", shortcut.Message);

        IReadOnlyList<DarknetSection> sections = DarknetConfig.Parse("[net]\nwidth=1\nheight=1\nchannels=1\n[convolutional]\nfilters=2\nsize=1\nbatch_normalize=1");
        var shortWeights = new DarknetWeights(0, 2, 0, 0, [new DarknetLayerWeights(0, false, [0f, 0f], [1f, 1f], [0f, 0f], [1f], [1f, 1f])]);
        var arrays = Assert.Throws<ArgumentException>(() => DarknetNetwork.Build(sections, shortWeights));
        Assert.Contains("rolling variance has 1 values; the layer needs 2", arrays.Message);
        var negative = new DarknetWeights(0, 2, 0, 0, [new DarknetLayerWeights(0, false, [0f, 0f], [1f, 1f], [0f, 0f], [1f, -1f], [1f, 1f])]);
        Assert.Contains("negative", Assert.Throws<ArgumentException>(() => DarknetNetwork.Build(sections, negative)).Message);
    }

    [Fact]
    public void ResizeAndLetterboxAreDarknets()
    {
        // Bilinear with corners aligned: 2x2 -> 3x3 puts the mean of the four in the middle.
        float[] resized = DarknetImage.Resize([0, 1, 2, 3], 1, 2, 2, 3, 3);
        Assert.Equal([0, 0.5f, 1, 1, 1.5f, 2, 2, 2.5f, 3], resized);
        // A 2 (high) x 4 (wide) image into 4x4: resized to 2x4, centred with one grey row above and below.
        float[] boxed = DarknetImage.Letterbox([1, 1, 1, 1, 0, 0, 0, 0], 1, 2, 4, 4, 4);
        Assert.Equal([.5f, .5f, .5f, .5f, 1, 1, 1, 1, 0, 0, 0, 0, .5f, .5f, .5f, .5f], boxed);
        Assert.Equal((208, 416), DarknetImage.LetterboxSize(480, 960, 416, 416));
    }

    [Fact]
    public void NonMaximumSuppressionKeepsTheMostProbableOfOverlappingBoxes()
    {
        var a = new YoloDetection(new DarknetBox(0.5f, 0.5f, 0.2f, 0.2f), 0.9f, [0.8f, 0f], 0);
        var b = new YoloDetection(new DarknetBox(0.51f, 0.5f, 0.2f, 0.2f), 0.95f, [0.9f, 0.6f], 0);
        var c = new YoloDetection(new DarknetBox(0.1f, 0.1f, 0.1f, 0.1f), 0.7f, [0.7f, 0f], 0);
        var detections = new List<YoloDetection> { a, b, c };
        YoloDetector.SuppressOverlaps(detections, 2, 0.45f);
        Assert.Equal([0f, 0f], a.Probabilities);          // class 0 overlaps b, which is more probable
        Assert.Equal([0.9f, 0.6f], b.Probabilities);
        Assert.Equal([0.7f, 0f], c.Probabilities);        // far away: kept
        Assert.Equal(1f, DarknetBox.Iou(a.Box, a.Box), 6);
        Assert.Equal(0f, DarknetBox.Iou(a.Box, c.Box));
    }

    [Fact]
    public void YoloBoxesComeFromTheirCellAnchorAndTheLetterbox()
    {
        // One cell, one anchor of 8x4 pixels on a 16x16 input: raw x = y = 0 -> centre 0.5; w = h = 0 -> anchor size.
        const string cfg = "[net]\nwidth=16\nheight=16\nchannels=6\n[yolo]\nmask=0\nanchors=8,4\nclasses=1";
        var network = DarknetNetwork.Build(DarknetConfig.Parse(cfg), null);
        var input = new float[6 * 256];
        for (int cell = 0; cell < 256; cell++) input[4 * 256 + cell] = -10; // objectness off ...
        input[4 * 256] = 10; input[5 * 256] = 10;                             // ... except in cell (0, 0), class 0 on
        network.Forward(input, 1);
        List<YoloDetection> found = YoloDetector.Detect(network, 0, 16, 16);
        YoloDetection only = Assert.Single(found);
        Assert.Equal(new DarknetBox(0.5f / 16, 0.5f / 16, 0.5f, 0.25f), only.Box);
        // An image twice as wide as high is letterboxed into the middle half: y and height stretch by 2.
        YoloDetection wide = Assert.Single(YoloDetector.Detect(network, 0, 100, 200));
        Assert.Equal((0.5f / 16 - 0.25f) * 2, wide.Box.Y, 5);
        Assert.Equal(0.5f, wide.Box.Height, 5);
    }
}

/// <summary>Darknet's max pool against its own loop (windows from out*stride - padding/2, -FLT_MAX start, x &gt; max), NaNs and odd sizes included.</summary>
public class DarknetMaxPoolTests
{
    private static float[] Reference(float[] input, int channels, int height, int width, int size, int stride, int padding, int outH, int outW)
    {
        var output = new float[channels * outH * outW];
        int offset = padding / 2;
        for (int k = 0; k < channels; k++)
            for (int i = 0; i < outH; i++)
                for (int j = 0; j < outW; j++)
                {
                    float max = float.MinValue;
                    for (int n = 0; n < size; n++)
                        for (int m = 0; m < size; m++)
                        {
                            int y = i * stride - offset + n, x = j * stride - offset + m;
                            if (y < 0 || y >= height || x < 0 || x >= width) continue;
                            float v = input[(k * height + y) * width + x];
                            if (v > max) max = v;
                        }
                    output[(k * outH + i) * outW + j] = max;
                }
        return output;
    }

    [Theory]
    [InlineData(2, 2, null)]
    [InlineData(2, 1, null)]
    [InlineData(3, 2, null)]
    [InlineData(3, 1, 2)]
    [InlineData(2, 2, 0)]
    [InlineData(5, 3, 4)]
    public void MatchesDarknetsLoop(int size, int stride, int? padding)
    {
        var random = new Random(size * 10 + stride);
        foreach ((int height, int width) in new[] { (1, 1), (2, 3), (7, 37), (13, 13), (6, 64), (5, 97) })
        {
            if (height + (padding ?? size - 1) < size || width + (padding ?? size - 1) < size) continue;
            string cfg = $"[net]\nwidth={width}\nheight={height}\nchannels=3\n[maxpool]\nsize={size}\nstride={stride}" + (padding is null ? "" : $"\npadding={padding}");
            var network = DarknetNetwork.Build(DarknetConfig.Parse(cfg), null);
            float[] input = Enumerable.Range(0, 2 * 3 * height * width).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
            network.Forward(input, 2);
            DarknetLayerInfo layer = network.Layers[0];
            float[] expected = Reference(input, 6, height, width, size, stride, padding ?? size - 1, layer.Height, layer.Width);
            Assert.Equal(expected, network.Output(0).ToArray());
        }
    }

    [Fact]
    public void ANaNInAPoolWindowIsItsMaximumAsInPyTorch()
    {
        // The graph's MaxPool2d is torch.nn.MaxPool2d: a NaN wins its window (darknet's own loop would skip it).
        var network = DarknetNetwork.Build(DarknetConfig.Parse("[net]\nwidth=4\nheight=2\nchannels=1\n[maxpool]\nsize=2\nstride=2"), null);
        network.Forward([1, float.NaN, 3, 4, 5, 6, 7, 8], 1);
        Assert.Equal([float.NaN, 8f], network.Output(0).ToArray());
    }
}

/// <summary>Darknet classifiers as trainable graphs of logits: the inference network's logits, and trainable.</summary>
public class DarknetLogitsGraphTests
{
    [Theory]
    [InlineData("darknet19.cfg")]
    [InlineData("darknet.cfg")]
    [InlineData("tiny.cfg")]
    public void InEvalModeItGivesTheNetworksLogits(string cfg)
    {
        IReadOnlyList<DarknetSection> sections = DarknetNetworkTests.Scaled(cfg, 64);
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        DarknetWeights weights = DarknetWeightsFile.Random(layers, seed: 8);
        var network = DarknetNetwork.Build(sections, weights, new DarknetNetworkOptions { FoldBatchNorm = false });
        var model = DarknetGraph.Create(sections, weights, new DarknetNetworkOptions { FoldBatchNorm = false }, logits: true);
        Assert.Equal(["logits"], model.OutputNames);
        var random = new Random(3);
        float[] input = Enumerable.Range(0, 2 * 3 * 64 * 64).Select(_ => (float)random.NextDouble()).ToArray();
        network.Forward(input, 2);
        int logitsLayer = layers.Count - 2; // the layer before [softmax]
        Assert.Equal("softmax", layers[^1].Type);
        float[] expected = network.Output(logitsLayer).ToArray();
        var logits = model.Forward(System.Numerics.Tensors.Tensor.Create(input, [2, 3, 64, 64]));
        Assert.Equal([2, 1000], logits.Lengths.ToArray());
        Assert.Equal(expected, logits.ToArray());
    }

    private static SharpNorm.Layers.BatchNorm<float>[] Norms(SharpNorm.Layers.Graph<float> graph) =>
        graph.Nodes.Select(n => n.Layer).OfType<SharpNorm.Layers.Sequential<float>>().SelectMany(s => s.Layers).OfType<SharpNorm.Layers.BatchNorm<float>>().ToArray();

    [Fact]
    public void DarknetsBatchNormTrainingIsOnRequest()
    {
        IReadOnlyList<DarknetSection> sections = DarknetNetworkTests.Scaled("tiny.cfg", 32);
        DarknetWeights weights = DarknetWeightsFile.Random(DarknetSummary.Describe(sections), seed: 2);
        var unfused = new DarknetNetworkOptions { FoldBatchNorm = false };
        var norms = Norms(DarknetGraph.Create(sections, weights, unfused, darknetTraining: true));
        Assert.NotEmpty(norms);
        Assert.All(norms, n => Assert.True(n.UnbiasedNormalization && n.Momentum == 0.01));
        Assert.All(Norms(DarknetGraph.Create(sections, weights, unfused)), n => Assert.True(!n.UnbiasedNormalization && n.Momentum == 0.1));
    }

    [Fact]
    public void ItTrains()
    {
        IReadOnlyList<DarknetSection> sections = DarknetNetworkTests.Scaled("tiny.cfg", 32);
        var model = DarknetGraph.Create(sections, DarknetWeightsFile.Random(DarknetSummary.Describe(sections), seed: 2), new DarknetNetworkOptions { FoldBatchNorm = false }, logits: true);
        model.Training = true;
        var random = new Random(4);
        float[] input = Enumerable.Range(0, 4 * 3 * 32 * 32).Select(_ => (float)random.NextDouble()).ToArray();
        var x = System.Numerics.Tensors.Tensor.Create(input, [4, 3, 32, 32]);
        int[] labels = [1, 7, 7, 42];
        var loss = new SharpNorm.Training.CrossEntropyLoss<float>();
        var sgd = new SharpNorm.Training.Sgd<float>(model.Parameters, learningRate: 0.05, momentum: 0.9);
        double first = 0, last = 0;
        for (int step = 0; step < 8; step++)
        {
            var logits = model.Forward(x);
            last = loss.Forward(logits, labels);
            if (step == 0) first = last;
            sgd.ZeroGrad();
            model.Gradient(x, loss.Backward(logits, labels));
            sgd.Step();
        }
        Assert.True(last < 0.5 * first, $"loss {first} -> {last}");
    }

    [Fact]
    public void DarknetCpusBatchNormUnfusedIsBatchNormWithEpsZero()
    {
        IReadOnlyList<DarknetSection> sections = DarknetNetworkTests.Scaled("tiny.cfg", 32);
        DarknetWeights weights = DarknetWeightsFile.Random(DarknetSummary.Describe(sections), seed: 2);
        var norms = Norms(DarknetGraph.Create(sections, weights, new DarknetNetworkOptions { FoldBatchNorm = false, BatchNorm = DarknetBatchNormMode.DarknetCpu }));
        Assert.NotEmpty(norms);
        Assert.All(norms, n => Assert.Equal(0, n.Eps));
    }
}

/// <summary>The network packs each convolution's weights once: later calls, other inputs and other batch sizes must still be right.</summary>
public class DarknetRepeatedCallTests
{
    [Fact]
    public void EveryCallGivesWhatAFreshNetworkGives()
    {
        IReadOnlyList<DarknetSection> sections = DarknetConfig.ReadFile(Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", "small-detector.cfg"));
        DarknetWeights weights = DarknetWeightsFile.Random(DarknetSummary.Describe(sections), seed: 21);
        var network = DarknetNetwork.Build(sections, weights);
        var random = new Random(5);
        foreach (int batch in new[] { 1, 3, 1, 2 })
        {
            float[] input = Enumerable.Range(0, batch * 3 * 32 * 32).Select(_ => (float)random.NextDouble()).ToArray();
            network.Forward(input, batch);
            var fresh = DarknetNetwork.Build(sections, weights);
            fresh.Forward(input, batch);
            foreach (int layer in network.OutputLayers) Assert.Equal(fresh.Output(layer).ToArray(), network.Output(layer).ToArray());
        }
    }
}

/// <summary>Edge cases found in review: large logits, empty networks, options that would be silently wrong, too-large batches.</summary>
public class DarknetRobustnessTests
{
    [Fact]
    public void SoftmaxOfLargeLogitsStaysFinite()
    {
        var network = DarknetNetwork.Build(DarknetConfig.Parse("[net]\nwidth=1\nheight=1\nchannels=3\n[softmax]"), null);
        network.Forward([1000f, 999f, 0f], 1);
        float[] p = network.Output(0).ToArray();
        double e = Math.Exp(-1);
        Assert.Equal(1 / (1 + e), p[0], 6);
        Assert.Equal(e / (1 + e), p[1], 6);
        Assert.Equal(0f, p[2]);
    }

    [Theory]
    [InlineData("[net]\nwidth=4\nheight=4\nchannels=1", "no layers")]
    [InlineData("[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=1\nsize=1\nstride_x=2", "stride_x is not supported")]
    [InlineData("[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=1\nsize=1\n[convolutional]\nfilters=1\nsize=1\n[shortcut]\nfrom=-2\nweights_type=per_feature", "weights_type is not supported")]
    [InlineData("[net]\nwidth=1\nheight=1\nchannels=6\n[yolo]\nmask=0\nanchors=1,1\nclasses=1\nnew_coords=1", "new_coords=1 is not supported")]
    [InlineData("[net]\nwidth=1\nheight=1\nchannels=6\n[softmax]\ntree=data/9k.tree", "tree is not supported")]
    public void NetworksThatWouldBeSilentlyWrongAreRefused(string cfg, string message)
    {
        var error = Assert.Throws<DarknetConfigException>(() => DarknetNetwork.Build(DarknetConfig.Parse(cfg, "x.cfg"), null));
        Assert.Contains(message, error.Message);
        Assert.StartsWith("x.cfg:", error.Message);
    }

    [Fact]
    public void ATooLargeBatchIsRefusedAndTheNetworkStillWorks()
    {
        // One input value per image, 4M values per image after the upsample: 600 images fit the input, not the layer.
        var network = DarknetNetwork.Build(DarknetConfig.Parse("[net]\nwidth=1\nheight=1\nchannels=1\n[convolutional]\nfilters=1024\nsize=1\nactivation=linear\n[upsample]\nstride=64"), null);
        float[] input = [0.5f];
        network.Forward(input, 1);
        float[] before = network.Output(network.OutputLayers[0]).ToArray();
        var error = Assert.Throws<ArgumentOutOfRangeException>(() => network.Forward(new float[600], 600));
        Assert.Contains("more than an array holds", error.Message);
        network.Forward(input, 1);
        Assert.Equal(before, network.Output(network.OutputLayers[0]).ToArray());
    }

    [Fact]
    public void FineTuningChecksTheWeights()
    {
        IReadOnlyList<DarknetSection> sections = DarknetConfig.Parse("[net]\nwidth=2\nheight=2\nchannels=1\n[convolutional]\nfilters=2\nsize=1\nbatch_normalize=1\nactivation=leaky");
        var shortWeights = new DarknetWeights(0, 2, 0, 0, [new DarknetLayerWeights(0, false, [0f, 0f], [1f, 1f], [0f, 0f], [1f, 1f], [1f])]);
        Assert.Contains("weights has 1 values; the layer needs 2", Assert.Throws<ArgumentException>(() => DarknetGraph.Create(sections, shortWeights)).Message);
        Assert.Throws<ArgumentException>(() => DarknetExport.StateDict(DarknetSummary.Describe(sections), shortWeights).ToList());
    }

    [Fact]
    public void ImagesResizeToOnePixelAndRefuseAnEmptyLetterbox()
    {
        float[] row = DarknetImage.Resize([1, 2, 3, 4, 5, 6], 1, 2, 3, 1, 3);
        Assert.Equal([1f, 2f, 3f], row); // the first row, as darknet's corner-aligned scale would give with one output row
        Assert.Throws<ArgumentException>(() => DarknetImage.Letterbox(new float[1000], 1, 1, 1000, 416, 416));
    }
}
