using SharpNorm.Darknet;
using SharpNorm.Layers;
using Xunit;

namespace SharpNorm.Tests.Darknet;

/// <summary>
/// YOLOv2's and YOLOv1's layers ([reorg], [region], [local], [detection]): values worked out by hand from darknet's
/// source, box decoding, weights files, refusals. Agreement with libtorch twins is in DarknetTorchParityTests, the
/// gradients in GraphTests.
/// </summary>
public class DarknetFamilyTests
{
    private static string Cfg(string name) => Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", name);

    [Fact]
    public void ReorgIsDarknetsPermutationNotSpaceToDepth()
    {
        // reorg_cpu reads a (4, 2, 2) input as (1, 4, 4): x'[r, c] = 4r + c; output channel k = dy*2 + dx takes x'[2j + dy, 2i + dx].
        var x = System.Numerics.Tensors.Tensor.Create(Enumerable.Range(0, 16).Select(v => (double)v).ToArray(), [1, 4, 2, 2]);
        var reorg = new Reorg<double>(2);
        Assert.Equal([1, 16, 1, 1], reorg.OutputShape([1, 4, 2, 2]));
        double[] y = reorg.Forward(x).ToArray();
        Assert.Equal([0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15], y);
        // reverse=1 is depth_to_space (DCR): channel (dy*2 + dx) of a (4, 1, 1) input goes to pixel (dy, dx)
        var reverse = new Reorg<double>(2, reverse: true);
        var z = System.Numerics.Tensors.Tensor.Create(new double[] { 10, 11, 12, 13 }, [1, 4, 1, 1]);
        Assert.Equal([10, 11, 12, 13], reverse.Forward(z).ToArray());
        var wide = System.Numerics.Tensors.Tensor.Create(Enumerable.Range(0, 8).Select(v => (double)v).ToArray(), [1, 4, 1, 2]);
        // channel k, column i -> pixel (k / 2, 2i + k % 2) of a 2x4 map
        Assert.Equal([0, 2, 1, 3, 4, 6, 5, 7], reverse.Forward(wide).ToArray());
        Assert.Throws<ArgumentException>(() => reorg.OutputShape([1, 4, 3, 2]));
        Assert.Throws<ArgumentException>(() => reorg.OutputShape([1, 6, 2, 2]));
    }

    [Fact]
    public void RegionBoxesUseGridCellAnchorsAndTheSoftmaxOfTheClasses()
    {
        // One anchor of 2x1 cells on a 16x16 grid, two classes: raw x = y = w = h = 0 gives the cell's centre and the anchor's size.
        const string cfg = "[net]\nwidth=16\nheight=16\nchannels=7\n[region]\nanchors=2,1\nclasses=2\nnum=1\nsoftmax=1\ncoords=4";
        var network = DarknetNetwork.Build(DarknetConfig.Parse(cfg), null);
        Assert.Equal([0], network.OutputLayers);
        Assert.Equal(2, network.Region(0)!.Classes);
        var input = new float[7 * 256];
        for (int cell = 0; cell < 256; cell++) input[4 * 256 + cell] = -10; // objectness off ...
        int at = 3 * 16 + 5;                                                 // ... except in row 3, column 5
        input[4 * 256 + at] = 10;
        input[5 * 256 + at] = 1;                                             // class scores 1 and 0: softmax e/(1+e), 1/(1+e)
        network.Forward(input, 1);
        ReadOnlySpan<float> output = network.Output(0);
        float e = MathF.E;
        Assert.Equal(e / (1 + e), output[5 * 256 + at], 6);
        Assert.Equal(1 / (1 + e), output[6 * 256 + at], 6);
        YoloDetection only = Assert.Single(YoloDetector.Detect(network, 0, 16, 16, threshold: 0.2f, letterboxed: false));
        Assert.Equal(new DarknetBox(5.5f / 16, 3.5f / 16, 2f / 16, 1f / 16), only.Box);
        float objectness = 1 / (1 + MathF.Exp(-10));
        Assert.Equal(objectness, only.Objectness, 6);
        Assert.Equal(objectness * e / (1 + e), only.Probabilities[0], 6);
        Assert.Equal(objectness / (1 + e), only.Probabilities[1], 6);
    }

    [Fact]
    public void DetectionBoxesAreYoloV1s()
    {
        // side 2, 2 boxes, 3 classes: 12 class scores (3 per cell), 8 confidences (2 per cell), 8 boxes of 4
        const string cfg = "[net]\nwidth=1\nheight=1\nchannels=52\n[detection]\nclasses=3\ncoords=4\nside=2\nnum=2\nsoftmax=0\nsqrt=1";
        var network = DarknetNetwork.Build(DarknetConfig.Parse(cfg), null);
        Assert.Equal(2, network.Detection(0)!.Side);
        var input = new float[52];
        int cell = 3;                                          // row 1, column 1
        input[cell * 3 + 2] = 0.9f;                            // class 2
        input[12 + cell * 2 + 1] = 0.8f;                       // box 1's confidence
        int box = 20 + (cell * 2 + 1) * 4;
        (input[box], input[box + 1], input[box + 2], input[box + 3]) = (0.5f, 0.25f, 0.6f, 0.4f);
        network.Forward(input, 1);
        Assert.Equal(input, network.Output(0).ToArray());      // softmax=0: the values pass through
        YoloDetection only = Assert.Single(YoloDetector.Detect(network, 0, 100, 100, threshold: 0.2f, letterboxed: false));
        Assert.Equal((1.5f / 2, 1.25f / 2), (only.Box.X, only.Box.Y));
        Assert.Equal(0.36f, only.Box.Width, 6);                // sqrt=1: the square of the prediction
        Assert.Equal(0.16f, only.Box.Height, 6);
        Assert.Equal([0f, 0f, 0.8f * 0.9f], only.Probabilities);
    }

    [Fact]
    public void DetectionSoftmaxIsOverEachCellsClasses()
    {
        var layer = new DetectionLayer<double>(new DetectionHead(2, 1, 1, Softmax: true, Sqrt: false));
        double[] y = layer.Forward(System.Numerics.Tensors.Tensor.Create(new double[] { 0, 1, 7, 1, 2, 3, 4 }, [1, 7])).ToArray();
        Assert.Equal(1 / (1 + Math.E), y[0], 12);
        Assert.Equal(Math.E / (1 + Math.E), y[1], 12);
        Assert.Equal([7, 1, 2, 3, 4], y[2..]);
    }

    [Fact]
    public void LocalLayersComputeEachPositionWithItsOwnFilters()
    {
        // 1 channel, 2x2 input, 1x1 window, 1 filter: each output value is its own weight times the pixel, plus its own bias.
        var local = new LocallyConnected2d<double>(1, 1, 2, 2, 1);
        new double[] { 1, 2, 3, 4 }.CopyTo(SharpNorm.Tensors.TensorData.Flat(local.Weight.Value));
        new double[] { 10, 20, 30, 40 }.CopyTo(SharpNorm.Tensors.TensorData.Flat(local.Bias!.Value));
        double[] y = local.Forward(System.Numerics.Tensors.Tensor.Create(new double[] { 5, 6, 7, 8 }, [1, 1, 2, 2])).ToArray();
        Assert.Equal([15, 32, 51, 72], y);
        // darknet's pad=1, size=3: positions keep the input size; the weights are (positions, out, in, 3, 3)
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(DarknetConfig.ReadFile(Cfg("small-detection.cfg")));
        DarknetLayerInfo first = layers[4];
        Assert.Equal(("local", 8, 4, 4), (first.Type, first.Channels, first.Height, first.Width));
        Assert.Equal(16L * 8 * 16 * 9, first.WeightCount);
        Assert.Equal(16L * 8 * 16 * 9 + 8 * 16, first.Parameters);
        Assert.Equal((6, 3, 3), (layers[5].Channels, layers[5].Height, layers[5].Width));
    }

    [Theory]
    [InlineData("small-detection.cfg")]
    [InlineData("small-region.cfg")]
    public void WeightsFilesRoundTripAndCheckTheirLength(string cfg)
    {
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(DarknetConfig.ReadFile(Cfg(cfg)));
        DarknetWeights weights = DarknetWeightsFile.Random(layers, seed: 5);
        string path = Path.Combine(Path.GetTempPath(), $"family-{Environment.ProcessId}-{cfg}.weights");
        try
        {
            DarknetWeightsFile.Write(path, weights);
            long floats = layers.Where(l => l.HasWeights).Sum(l => l.Parameters + (l.BatchNormalize ? 2L * l.Channels : 0));
            Assert.Equal(20 + 4 * floats, new FileInfo(path).Length);
            DarknetWeights read = DarknetWeightsFile.Read(path, layers);
            for (int i = 0; i < layers.Count; i++)
            {
                Assert.Equal(weights.Layers[i]?.Weights, read.Layers[i]?.Weights);
                Assert.Equal(weights.Layers[i]?.Biases, read.Layers[i]?.Biases);
            }
            File.WriteAllBytes(path, File.ReadAllBytes(path)[..^4]);
            var error = Assert.Throws<InvalidDataException>(() => DarknetWeightsFile.Read(path, layers));
            Assert.Contains("ran out in layer", error.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void APublishedYoloV2RunsAndDecodesBoxes()
    {
        var network = DarknetNetwork.Build(DarknetNetworkTests.Scaled("yolov2-tiny.cfg", 96), null);
        Assert.Equal([network.Layers.Count - 1], network.OutputLayers);
        Assert.Equal(("region", 425, 3, 3), (network.Layers[^1].Type, network.Layers[^1].Channels, network.Layers[^1].Height, network.Layers[^1].Width));
        var input = new float[3 * 96 * 96];
        new Random(3).NextBytes(new byte[1]);
        for (int i = 0; i < input.Length; i++) input[i] = (i % 97) / 97f;
        network.Forward(input, 1);
        List<YoloDetection> all = YoloDetector.Detect(network, 0, 96, 96, threshold: 0f);
        Assert.Equal(3 * 3 * 5, all.Count(d => d.Objectness > 0));   // threshold 0 keeps every cell's anchors
        Assert.All(all, d => Assert.Equal(80, d.Probabilities.Length));
    }

    [Theory]
    [InlineData("[net]\nwidth=1\nheight=1\nchannels=6\n[region]\nanchors=1,1\nclasses=1\nnum=1\ntree=data/9k.tree", "tree is not supported")]
    [InlineData("[net]\nwidth=1\nheight=1\nchannels=6\n[region]\nanchors=1,1\nclasses=1\nnum=1\nbackground=1", "background=1 is not supported")]
    [InlineData("[net]\nwidth=1\nheight=1\nchannels=7\n[region]\nanchors=1,1\nclasses=1\nnum=1\ncoords=5", "coords=5")]
    [InlineData("[net]\nwidth=1\nheight=1\nchannels=6\n[region]\nanchors=1,1,2\nclasses=1\nnum=1", "anchor pairs")]
    [InlineData("[net]\nwidth=1\nheight=1\nchannels=8\n[region]\nanchors=1,1\nclasses=1\nnum=1", "input channels")]
    [InlineData("[net]\nwidth=4\nheight=4\nchannels=4\n[reorg]\nstride=2\nflatten=1", "flatten is not supported")]
    [InlineData("[net]\nwidth=5\nheight=4\nchannels=4\n[reorg]\nstride=2", "sizes by 2")]
    [InlineData("[net]\nwidth=6\nheight=6\nchannels=1\n[local]\nsize=5\npad=1\nfilters=1", "only size=3 is consistent")]
    [InlineData("[net]\nwidth=1\nheight=1\nchannels=10\n[detection]\nclasses=1\ncoords=4\nside=2\nnum=1", "inputs")]
    [InlineData("[net]\nwidth=1\nheight=1\nchannels=6\n[detection]\nclasses=1\nside=1\nnum=1", "coords=1")]
    public void DarknetFamilyCfgsThatCannotBeComputedAsDarknetDoesAreRefused(string cfg, string message)
    {
        var error = Assert.Throws<DarknetConfigException>(() => DarknetNetwork.Build(DarknetConfig.Parse(cfg, "x.cfg"), null));
        Assert.Contains(message, error.Message);
        Assert.StartsWith("x.cfg:", error.Message);
    }

    [Fact]
    public void ResultsAreIdenticalForAnyThreadCount()
    {
        foreach (string cfg in new[] { "small-region.cfg", "small-detection.cfg" })
        {
            IReadOnlyList<DarknetSection> sections = DarknetConfig.ReadFile(Cfg(cfg));
            float[]? first = null;
            foreach (int threads in new[] { 1, 2, 4 })
            {
                var network = DarknetNetwork.Build(sections, null, new DarknetNetworkOptions { MaxDegreeOfParallelism = threads });
                var random = new Random(8);
                float[] input = Enumerable.Range(0, 2 * network.InputChannels * network.InputHeight * network.InputWidth).Select(_ => (float)random.NextDouble()).ToArray();
                network.Forward(input, 2);
                float[] output = network.Output(network.OutputLayers[0]).ToArray();
                if (first is null) first = output;
                else Assert.Equal(first, output);
            }
        }
    }
}

/// <summary>The shape layers an imported graph is made of: values worked out by hand, refusals.</summary>
public class ShapeLayerTests
{
    [Fact]
    public void ReshapePermuteAndSliceMoveValuesAsTorchDoes()
    {
        var x = System.Numerics.Tensors.Tensor.Create(Enumerable.Range(0, 12).Select(v => (double)v).ToArray(), [1, 2, 3, 2]);
        Assert.Equal([1, 3, 4], new Reshape<double>(0, 3, -1).OutputShape([1, 2, 3, 2]));
        Assert.Equal(Enumerable.Range(0, 12).Select(v => (double)v), new Reshape<double>(0, 3, -1).Forward(x).ToArray());
        // torch.arange(12).reshape(1, 2, 3, 2).permute(0, 3, 1, 2).flatten() = 0 2 4 6 8 10 1 3 5 7 9 11
        Assert.Equal([0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11], new Permute<double>(0, 3, 1, 2).Forward(x).ToArray());
        Assert.Equal([1, 2, 2, 3], new Permute<double>(0, 3, 1, 2).OutputShape([1, 2, 3, 2]));
        // x[:, :, 1:3, :] = 2 3 4 5, 8 9 10 11
        Assert.Equal([2, 3, 4, 5, 8, 9, 10, 11], new ChannelSlice<double>(1, 2, dimension: 2).Forward(x).ToArray());
        Assert.Throws<ArgumentException>(() => new Reshape<double>(1, 12));
        Assert.Throws<ArgumentException>(() => new Reshape<double>(0, -1, -1));
        Assert.Throws<ArgumentException>(() => new Reshape<double>(0, 5).OutputShape([1, 2, 3, 2]));
        Assert.Throws<ArgumentException>(() => new Permute<double>(1, 0, 2));
        Assert.Throws<ArgumentException>(() => new Permute<double>(0, 1, 1));
        Assert.Throws<ArgumentException>(() => new Permute<double>(0, 2, 1).OutputShape([1, 2, 3, 2]));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ChannelSlice<double>(0, 1, dimension: 0));
    }
}
