using SharpNorm.Darknet;
using Xunit;

namespace SharpNorm.Tests.Darknet;

/// <summary>Darknet .weights files: round trip, exact size, and files that do not fit the network.</summary>
public class DarknetWeightsTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("sharpnorm-weights-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static IReadOnlyList<DarknetLayerInfo> Layers(string cfg) =>
        DarknetSummary.Describe(DarknetConfig.ReadFile(Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", cfg)));

    [Theory]
    [InlineData("tiny.cfg")]
    [InlineData("yolov3-tiny.cfg")]
    public void RandomWeightsRoundTripAndHaveDarknetsSize(string cfg)
    {
        IReadOnlyList<DarknetLayerInfo> layers = Layers(cfg);
        DarknetWeights weights = DarknetWeightsFile.Random(layers, seed: 3);
        string path = Path.Combine(_directory, "random.weights");
        DarknetWeightsFile.Write(path, weights);
        // Header of 20 bytes (version 0.2: 64-bit seen), then every float of every conv layer: biases, batch-norm arrays, weights.
        long floats = layers.Where(l => l.Type == "convolutional").Sum(l => l.Channels * (l.BatchNormalize ? 4L : 1L) + l.WeightCount);
        Assert.Equal(20 + 4 * floats, new FileInfo(path).Length);

        DarknetWeights read = DarknetWeightsFile.Read(path, layers);
        Assert.Equal((0, 2, 0), (read.Major, read.Minor, read.Revision));
        for (int i = 0; i < layers.Count; i++)
        {
            DarknetLayerWeights? expected = weights.Layers[i], actual = read.Layers[i];
            Assert.Equal(expected is null, actual is null);
            if (expected is null) continue;
            Assert.Equal(expected.Biases, actual!.Biases);
            Assert.Equal(expected.Weights, actual.Weights);
            Assert.Equal(expected.Scales, actual.Scales);
            Assert.Equal(expected.RollingVariance, actual.RollingVariance);
        }
    }

    [Fact]
    public void ConnectedLayersStoreTheirBatchNormAfterTheWeights()
    {
        const string cfg = "[net]\nwidth=2\nheight=2\nchannels=1\n[connected]\noutput=3\nbatch_normalize=1\nactivation=leaky";
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(DarknetConfig.Parse(cfg));
        var weights = new DarknetWeights(0, 1, 0, 7, [new DarknetLayerWeights(0, true, [1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12], Enumerable.Range(100, 12).Select(i => (float)i).ToArray())]);
        string path = Path.Combine(_directory, "connected.weights");
        DarknetWeightsFile.Write(path, weights);
        byte[] bytes = File.ReadAllBytes(path);
        Assert.Equal(16 + 4 * (3 + 12 + 9), bytes.Length); // version 0.1: 32-bit seen
        Assert.Equal(100f, BitConverter.ToSingle(bytes, 16 + 12));     // weights right after the biases
        Assert.Equal(4f, BitConverter.ToSingle(bytes, 16 + 12 + 48));  // then the scales
        DarknetWeights read = DarknetWeightsFile.Read(path, layers);
        Assert.Equal(7UL, read.Seen);
        Assert.Equal([4f, 5f, 6f], read.Layers[0]!.Scales!);
    }

    [Fact]
    public void TruncatedOrOversizedFilesNameTheProblem()
    {
        IReadOnlyList<DarknetLayerInfo> layers = Layers("tiny.cfg");
        string path = Path.Combine(_directory, "tiny.weights");
        DarknetWeightsFile.Write(path, DarknetWeightsFile.Random(layers, 1));
        byte[] bytes = File.ReadAllBytes(path);

        File.WriteAllBytes(path, bytes[..^100]);
        var truncated = Assert.Throws<InvalidDataException>(() => DarknetWeightsFile.Read(path, layers));
        Assert.Contains("ran out in layer 19 (convolutional) reading its weights", truncated.Message);

        File.WriteAllBytes(path, [.. bytes, 1, 2, 3, 4, 5, 6, 7, 8]);
        Assert.Contains("8 bytes left over", Assert.Throws<InvalidDataException>(() => DarknetWeightsFile.Read(path, layers)).Message);

        File.WriteAllBytes(path, bytes);
        Assert.Contains("left over", Assert.Throws<InvalidDataException>(() => DarknetWeightsFile.Read(path, Layers("darknet.cfg").Take(8).ToArray())).Message);
        File.WriteAllBytes(path, bytes[..10]);
        Assert.Contains("too short", Assert.Throws<InvalidDataException>(() => DarknetWeightsFile.Read(path, layers)).Message);
    }
}
