using SharpNorm.Darknet;
using Xunit;

namespace SharpNorm.Tests.Darknet;

/// <summary>Darknet .cfg parsing and sizing: the real cfg files (darknet's own figures), aliases, and bad files.</summary>
public class DarknetConfigTests
{
    private static string Cfg(string name) => Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", name);

    [Theory]
    [InlineData("darknet19.cfg", 26, "7.29", 1000)]    // darknet prints 7.29 BFLOPs for DarkNet-19 at 256x256
    [InlineData("yolov3-tiny.cfg", 24, "5.56", 255)]   // and 5.56 for YOLOv3-tiny at 416x416
    [InlineData("darknet.cfg", 16, "0.96", 1000)]
    [InlineData("tiny.cfg", 22, "0.98", 1000)]
    public void RealConfigsParseAndSizeAsDarknet(string file, int layerCount, string bflops, int lastChannels)
    {
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(DarknetConfig.ReadFile(Cfg(file)));
        Assert.Equal(layerCount, layers.Count);
        Assert.Equal(bflops, layers.Sum(l => l.Bflops).ToString("F2", System.Globalization.CultureInfo.InvariantCulture));
        Assert.Equal(lastChannels, layers[^1].Channels);
    }

    [Fact]
    public void YoloV3TinyRoutesAndPoolsAsDarknet()
    {
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(DarknetConfig.ReadFile(Cfg("yolov3-tiny.cfg")));
        // The stride-1 max pool keeps 13x13 (padding defaults to size-1).
        Assert.Equal((512, 13, 13), (layers[11].Channels, layers[11].Height, layers[11].Width));
        Assert.Equal("yolo", layers[16].Type);
        Assert.Equal((255, 13, 13), (layers[16].Channels, layers[16].Height, layers[16].Width));
        Assert.Equal([13], layers[17].Inputs);                                   // route -4 from layer 17
        Assert.Equal(("upsample", 128, 26, 26), (layers[19].Type, layers[19].Channels, layers[19].Height, layers[19].Width));
        Assert.Equal([19, 8], layers[20].Inputs);                                // route -1, 8: concatenation
        Assert.Equal((384, 26, 26), (layers[20].Channels, layers[20].Height, layers[20].Width));
    }

    [Fact]
    public void AliasesCommentsAndWhitespaceAreReadAsDarknetDoes()
    {
        const string text = """
            [net]
            # a comment
            ; another
            width = 8
            height=8
            channels= 3

            [conv]
            filters = 4
            size=3
            pad=1
            activation=leaky
            [max]
            size=2
            stride=2
            [avg]
            [conn]
            output=5
            activation=linear
            [soft]
            """;
        IReadOnlyList<DarknetSection> sections = DarknetConfig.Parse(text);
        Assert.Equal(["net", "convolutional", "maxpool", "avgpool", "connected", "softmax"], sections.Select(s => s.Type));
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        Assert.Equal((4, 8, 8), (layers[0].Channels, layers[0].Height, layers[0].Width));
        Assert.Equal((4, 4, 4), (layers[1].Channels, layers[1].Height, layers[1].Width));
        Assert.Equal(4 * 3 * 9 + 4, layers[0].Parameters);
        Assert.Equal(4 * 5 + 5, layers[3].Parameters);
        // The convolution's activation defaults to logistic, as in darknet.
        Assert.Contains("logistic", DarknetSummary.Describe(DarknetConfig.Parse("[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=2\nsize=1"))[0].Details);
    }

    [Theory]
    [InlineData("[net]\nwidth=8\nheight=8\nchannels=3\n[convolution]\nfilters=4", "cfg:5: unknown section [convolution]")]
    [InlineData("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=four", "cfg:6: [convolutional] filters=four: expected a whole number")]
    [InlineData("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=0", "cfg:6: [convolutional] filters=0 must be positive")]
    [InlineData("[net]\nwidth=8\nheight=8\nchannels=3\n[route]\nlayers=-3", "cfg:6: [route] layers refers to layer -3")]
    [InlineData("[convolutional]\nfilters=4", "the first section must be [net]")]
    [InlineData("[net]\nwidth=8\nheight=8\nchannels=3\nfilters", "cfg:5: expected key=value")]
    [InlineData("[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters=4\nsize=3\nactivation=sigmoid", "cfg:8: [convolutional] activation=sigmoid is not a darknet activation")]
    [InlineData("[net]\nwidth=2\nheight=2\nchannels=3\n[convolutional]\nfilters=4\nsize=5", "cfg:5: [convolutional] the input 2x2 is too small")]
    public void BadConfigsNameTheLine(string text, string message)
    {
        var e = Assert.Throws<DarknetConfigException>(() => DarknetSummary.Describe(DarknetConfig.Parse(text)));
        Assert.Contains(message, e.Message);
    }
}
