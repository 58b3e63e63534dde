using System.Globalization;
using SharpNorm.Darknet;
using SharpNorm.Serialization;
using SharpNorm.Tests.Training;
using SkiaSharp;
using Xunit;

namespace SharpNorm.Tests.Darknet;

/// <summary><c>sharpnorm darknet run / export</c>: the command's answers against the library run by hand on the same image.</summary>
public class DarknetCliTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("sharpnorm-darknet-cli-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static string Cfg(string name) => Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", name);

    /// <summary>A 60 x 40 RGB image with a gradient, as PNG; returns its pixels as darknet loads them.</summary>
    private float[] WriteImage(string path)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(60, 40, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        for (int y = 0; y < 40; y++)
            for (int x = 0; x < 60; x++)
                bitmap.SetPixel(x, y, new SKColor((byte)(4 * x), (byte)(6 * y), (byte)(x * y % 256)));
        using (SKData data = bitmap.Encode(SKEncodedImageFormat.Png, 100))
        using (FileStream file = File.Create(path))
            data.SaveTo(file);
        var pixels = new float[3 * 40 * 60];
        for (int y = 0; y < 40; y++)
            for (int x = 0; x < 60; x++)
            {
                pixels[y * 60 + x] = 4 * x / 255f;
                pixels[2400 + y * 60 + x] = 6 * y / 255f;
                pixels[4800 + y * 60 + x] = x * y % 256 / 255f;
            }
        return pixels;
    }

    private string RandomWeights(string cfg)
    {
        string path = Path.Combine(_directory, Path.ChangeExtension(cfg, ".weights"));
        DarknetWeightsFile.Write(path, DarknetWeightsFile.Random(DarknetSummary.Describe(DarknetConfig.ReadFile(Cfg(cfg))), seed: 11));
        return path;
    }

    [Fact]
    public void RunPrintsAClassifiersTopClasses()
    {
        string image = Path.Combine(_directory, "image.png"), weights = RandomWeights("tiny.cfg");
        float[] pixels = WriteImage(image);
        string names = Path.Combine(_directory, "names.list");
        File.WriteAllLines(names, Enumerable.Range(0, 1000).Select(i => $"name{i}"));

        var (code, output, error) = CliTests.Run("darknet", "run", Cfg("tiny.cfg"), weights, image, "--names", names, "--top", "3");
        Assert.True(code == 0, error);
        string[] lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains("(60 x 40, letterboxed to 224 x 224)", lines[0]);

        var network = DarknetNetwork.Load(Cfg("tiny.cfg"), weights);
        network.Forward(DarknetImage.Letterbox(pixels, 3, 40, 60, 224, 224), 1);
        (int Index, float Score)[] expected = YoloDetector.Top(network.Output(network.OutputLayers[0]), 3);
        Assert.Equal(4, lines.Length);
        for (int i = 0; i < 3; i++)
            Assert.Equal(string.Create(CultureInfo.InvariantCulture, $"{expected[i].Score * 100,6:F2}%  name{expected[i].Index}"), lines[i + 1]);
    }

    /// <summary>darknet export to ONNX, then sharpnorm onnx run: the same top classes as darknet run; onnx summary of it.</summary>
    [Fact]
    public void OnnxRunOfAnExportedClassifierPrintsTheSameTopClasses()
    {
        string image = Path.Combine(_directory, "image.png"), weights = RandomWeights("tiny.cfg"), onnx = Path.Combine(_directory, "tiny.onnx");
        WriteImage(image);
        string names = Path.Combine(_directory, "names.list");
        File.WriteAllLines(names, Enumerable.Range(0, 1000).Select(i => $"name{i}"));
        Assert.Equal(0, CliTests.Run("darknet", "export", Cfg("tiny.cfg"), weights, onnx).ExitCode);

        var (darknetCode, darknet, _) = CliTests.Run("darknet", "run", Cfg("tiny.cfg"), weights, image, "--names", names, "--top", "3");
        var (code, output, error) = CliTests.Run("onnx", "run", onnx, image, "--names", names, "--top", "3");
        Assert.True(code == 0 && darknetCode == 0, error);
        string[] lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries), expected = darknet.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains("(60 x 40, letterboxed to 224 x 224)", lines[0]);
        Assert.Equal("output probabilities: probabilities", lines[1]);
        Assert.Equal(expected[1..], lines[2..]);

        var (summaryCode, summary, summaryError) = CliTests.Run("onnx", "summary", onnx);
        Assert.True(summaryCode == 0, summaryError);
        Assert.Contains("input  image (N, 3, 224, 224)", summary);
        Assert.Contains("output probabilities (N, 1000)", summary);
        Assert.Contains("SharpNorm imports it: a graph of", summary);
        Assert.Contains("Conv", summary);

        File.WriteAllBytes(Path.Combine(_directory, "bad.onnx"), [1, 2, 3]);
        foreach (var (exit, message, args) in new (int, string, string[])[]
        {
            (1, "not an ONNX model", ["onnx", "summary", Path.Combine(_directory, "bad.onnx")]),
            (1, "ONNX model not found", ["onnx", "run", Path.Combine(_directory, "none.onnx"), image]),
            (2, "unknown onnx command 'fly'", ["onnx", "fly"]),
            (2, "onnx run takes MODEL.onnx and IMAGE", ["onnx", "run", onnx]),
        })
        {
            var (badCode, badOutput, badError) = CliTests.Run(args);
            Assert.Equal(exit, badCode);
            string line = Assert.Single(badError.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.True(line.StartsWith("sharpnorm: error: ", StringComparison.Ordinal) && line.Contains(message, StringComparison.Ordinal), line);
            Assert.Equal("", badOutput);
        }
    }

    /// <summary>
    /// YOLOv2's [region] (letterboxed) and YOLOv1's [detection] (resized, as darknet's yolo test) detectors: darknet run
    /// prints their boxes; exported to ONNX, onnx run decodes the same boxes from the cfg in the metadata.
    /// </summary>
    [Theory]
    [InlineData("small-region.cfg", "letterboxed to 32 x 32", "0.1")]
    [InlineData("small-detection.cfg", "resized to 16 x 16", "0.05")]
    public void RegionAndDetectionNetworksPrintTheirBoxesInDarknetAndOnnxRun(string cfg, string resize, string threshold)
    {
        string image = Path.Combine(_directory, "image.png"), weights = RandomWeights(cfg), onnx = Path.Combine(_directory, "model.onnx");
        float[] pixels = WriteImage(image);
        var (code, output, error) = CliTests.Run("darknet", "run", Cfg(cfg), weights, image, "--thresh", threshold);
        Assert.True(code == 0, error);
        string[] lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains(resize, lines[0]);
        var network = DarknetNetwork.Load(Cfg(cfg), weights);
        bool letterboxed = cfg == "small-region.cfg";
        network.Forward(letterboxed ? DarknetImage.Letterbox(pixels, 3, 40, 60, network.InputHeight, network.InputWidth)
            : DarknetImage.Resize(pixels, 3, 40, 60, network.InputHeight, network.InputWidth), 1);
        float t = float.Parse(threshold, CultureInfo.InvariantCulture);
        int boxes = YoloDetector.Detect(network, 0, 40, 60, t, letterboxed: letterboxed).Sum(d => d.Probabilities.Count(p => p > t));
        Assert.True(boxes > 0, "the random network finds no box: the test would prove nothing");
        Assert.Contains($"; {boxes} box{(boxes == 1 ? "" : "es")} (threshold {threshold}, NMS 0.45)", lines[0]);
        Assert.Equal(boxes + 1, lines.Length);

        Assert.Equal(0, CliTests.Run("darknet", "export", Cfg(cfg), weights, onnx).ExitCode);
        var (onnxCode, onnxOutput, onnxError) = CliTests.Run("onnx", "run", onnx, image, "--thresh", threshold);
        Assert.True(onnxCode == 0, onnxError);
        string[] onnxLines = onnxOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains(resize, onnxLines[0]);
        Assert.Equal(lines[0][lines[0].IndexOf(';')..], onnxLines[0][onnxLines[0].IndexOf(';')..]);
        Assert.Equal(lines[1..], onnxLines[1..]);
    }

    [Fact]
    public void RunPrintsYoloBoxesAndDrawsThem()
    {
        string image = Path.Combine(_directory, "image.png"), weights = RandomWeights("yolov3-tiny.cfg"), drawn = Path.Combine(_directory, "boxes.png");
        float[] pixels = WriteImage(image);
        var (code, output, error) = CliTests.Run("darknet", "run", Cfg("yolov3-tiny.cfg"), weights, image, "--thresh", "0.4", "--out", drawn);
        Assert.True(code == 0, error);

        var network = DarknetNetwork.Load(Cfg("yolov3-tiny.cfg"), weights);
        network.Forward(DarknetImage.Letterbox(pixels, 3, 40, 60, 416, 416), 1);
        int boxes = YoloDetector.Detect(network, 0, 40, 60, 0.4f).Sum(d => d.Probabilities.Count(p => p > 0.4f));
        Assert.Contains($"; {boxes} box{(boxes == 1 ? "" : "es")} (threshold 0.4, NMS 0.45)", output);
        Assert.Contains($"wrote {drawn}", output);
        using SKBitmap? written = SKBitmap.Decode(drawn);
        Assert.Equal((60, 40), (written!.Width, written.Height));
    }

    [Fact]
    public void ExportWritesAStateDictWithTheCfg()
    {
        string weights = RandomWeights("yolov3-tiny.cfg"), exported = Path.Combine(_directory, "model.safetensors");
        var (code, _, error) = CliTests.Run("darknet", "export", Cfg("yolov3-tiny.cfg"), weights, exported);
        Assert.True(code == 0, error);
        (Dictionary<string, SafetensorsEntry> tensors, Dictionary<string, string> metadata) = Safetensors.Read(exported);
        Assert.Equal(File.ReadAllText(Cfg("yolov3-tiny.cfg")), metadata["darknet_cfg"]);
        Assert.Equal([16L, 3, 3, 3], tensors["0.conv.weight"].Shape);
        Assert.Equal([255L, 512, 1, 1], tensors["15.conv.weight"].Shape);
        Assert.True(tensors.ContainsKey("15.conv.bias"));     // no batch norm before a yolo head: the conv has its bias
        Assert.False(tensors.ContainsKey("0.conv.bias"));
        DarknetWeights read = DarknetWeightsFile.Read(weights, DarknetSummary.Describe(DarknetConfig.ReadFile(Cfg("yolov3-tiny.cfg"))));
        Assert.Equal(read.Layers[0]!.RollingVariance, BitsToFloats(tensors["0.bn.running_var"].Data));
        Assert.Equal(read.Layers[0]!.Weights, BitsToFloats(tensors["0.conv.weight"].Data));

        // Folded: conv weight and bias only, and a network built from them gives the same outputs.
        var (foldCode, _, foldError) = CliTests.Run("darknet", "export", Cfg("yolov3-tiny.cfg"), weights, exported, "--fold");
        Assert.True(foldCode == 0, foldError);
        (tensors, _) = Safetensors.Read(exported);
        Assert.DoesNotContain(tensors.Keys, k => k.Contains(".bn."));
        Assert.Equal(255 + 16, BitsToFloats(tensors["15.conv.bias"].Data).Length + BitsToFloats(tensors["0.conv.bias"].Data).Length);
    }

    private static float[] BitsToFloats(byte[] data) => System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(data).ToArray();

    [Theory]
    [InlineData(2, "darknet run takes MODEL.cfg, MODEL.weights and IMAGE", "darknet", "run", "a.cfg")]
    [InlineData(2, "unknown option '--bogus'", "darknet", "run", "a.cfg", "b.weights", "c.png", "--bogus", "1")]
    [InlineData(2, "option --bn", "darknet", "export", "a.cfg", "b.weights", "c.safetensors", "--bn", "gpu")]
    [InlineData(1, "Darknet cfg not found", "darknet", "run", "/nonexistent.cfg", "/nonexistent.weights", "/etc/hostname")]
    [InlineData(1, "image not found", "darknet", "run", "/nonexistent.cfg", "/nonexistent.weights", "/nonexistent.png")]
    [InlineData(2, "darknet needs a command", "darknet")]
    [InlineData(2, "onnx needs a command", "onnx")]
    [InlineData(2, "--out x.gif: expected a .png or .jpg file name", "darknet", "run", "/nonexistent.cfg", "/nonexistent.weights", "/nonexistent.png", "--out", "x.gif")]
    public void ErrorsAreOneLine(int exitCode, string message, params string[] args)
    {
        var (code, output, error) = CliTests.Run(args);
        Assert.Equal(exitCode, code);
        string line = Assert.Single(error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains(message, line);
        Assert.Equal("", output);
    }

    [Fact]
    public void ACfgWithLetterBoxZeroIsResizedAsAlexeyABsDarknetDoes()
    {
        string image = Path.Combine(_directory, "image.png"), weights = RandomWeights("tiny.cfg");
        float[] pixels = WriteImage(image);
        string cfg = Path.Combine(_directory, "resized.cfg");
        File.WriteAllText(cfg, File.ReadAllText(Cfg("tiny.cfg")).Replace("[net]", "[net]\nletter_box=0"));
        var (code, output, error) = CliTests.Run("darknet", "run", cfg, weights, image, "--top", "1");
        Assert.True(code == 0, error);
        Assert.Contains("(60 x 40, resized to 224 x 224)", output);
        var network = DarknetNetwork.Load(cfg, weights);
        network.Forward(DarknetImage.Resize(pixels, 3, 40, 60, 224, 224), 1);
        (int index, float score) = YoloDetector.Top(network.Output(network.OutputLayers[0]), 1)[0];
        Assert.EndsWith(string.Create(CultureInfo.InvariantCulture, $"{score * 100,6:F2}%  class {index}"), output.TrimEnd());
    }

    [Fact]
    public void AFileThatIsNotAnImageIsNamed()
    {
        var (code, _, error) = CliTests.Run("darknet", "run", Cfg("tiny.cfg"), RandomWeights("tiny.cfg"), "/etc/hostname");
        Assert.Equal(1, code);
        Assert.Contains("hostname: not an image", error);
    }
}
