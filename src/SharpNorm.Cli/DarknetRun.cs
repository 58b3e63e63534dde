using System.Diagnostics;
using System.Globalization;
using SharpNorm.Darknet;
using SkiaSharp;

namespace SharpNorm.Cli;

/// <summary><c>sharpnorm darknet run</c>: one image through a darknet network, as darknet's classify / detect commands.</summary>
internal static class DarknetRun
{
    public static int Run(List<string> args)
    {
        (List<string> positional, ParsedOptions options) = Split("darknet run", args, ["names", "top", "thresh", "nms", "out", "bn", "threads"], ["unfused"]);
        if (options.Help)
        {
            Console.Out.WriteLine(DarknetCommand.Usage);
            return 0;
        }
        if (positional.Count != 3) throw new UsageException($"darknet run takes MODEL.cfg, MODEL.weights and IMAGE (see {CommandLine.Self} darknet --help)");
        (string cfgPath, string weightsPath, string imagePath) = (positional[0], positional[1], positional[2]);
        int topClasses = options.Int("top", 5, min: 1);
        double threshold = options.Double("thresh", 0.5, v => v is >= 0 and < 1, "a probability in [0, 1)");
        double nms = options.Double("nms", 0.45, v => v is >= 0 and <= 1, "an overlap in [0, 1]");
        var networkOptions = new DarknetNetworkOptions
        {
            BatchNorm = BatchNormMode(options),
            FoldBatchNorm = !options.Has("unfused"),
            MaxDegreeOfParallelism = options.Threads(),
        };
        string[]? names = options.String("names") is { } namesPath ? ReadNames(namesPath) : null;
        string? outPath = OutPath(options);

        if (!File.Exists(imagePath)) throw new FileNotFoundException($"image not found: {imagePath}", imagePath); // before a slow load
        DarknetNetwork network = DarknetNetwork.Load(cfgPath, weightsPath, networkOptions);
        (float[] pixels, int height, int width) = LoadImage(imagePath);
        if (network.InputChannels != 3)
            throw new InvalidDataException($"{Path.GetFileName(cfgPath)} takes {network.InputChannels} channels; images give 3 (RGB).");
        // pjreddie's darknet letterboxes, but YOLOv1 ([detection]) was trained and tested on plain resizes; AlexeyAB's
        // resizes unless [net] letter_box=1: follow the cfg where it says.
        int head = network.OutputLayers[0];
        bool letterbox = DarknetConfig.ReadFile(cfgPath)[0].Int("letter_box", network.Detection(head) is null ? 1 : 0) != 0;
        float[] input = letterbox
            ? DarknetImage.Letterbox(pixels, 3, height, width, network.InputHeight, network.InputWidth)
            : DarknetImage.Resize(pixels, 3, height, width, network.InputHeight, network.InputWidth);
        var clock = Stopwatch.StartNew();
        network.Forward(input, 1);
        double milliseconds = clock.Elapsed.TotalMilliseconds;
        string header = string.Create(CultureInfo.InvariantCulture,
            $"{Path.GetFileName(cfgPath)} on {Path.GetFileName(imagePath)} ({width} x {height}, {(letterbox ? "letterboxed" : "resized")} to {network.InputWidth} x {network.InputHeight}): {milliseconds:F1} ms");

        int? detectorClasses = network.Yolo(head)?.Classes ?? network.Region(head)?.Classes ?? network.Detection(head)?.Classes;
        if (detectorClasses is null)
        {
            ReadOnlySpan<float> scores = network.Output(network.OutputLayers[0]);
            CheckNames(names, scores.Length);
            Console.Out.WriteLine(header);
            foreach ((int index, float score) in YoloDetector.Top(scores, Math.Min(topClasses, scores.Length)))
                Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{score * 100,6:F2}%  {Label(names, index)}"));
            return 0;
        }

        List<YoloDetection> detections = YoloDetector.Detect(network, 0, height, width, (float)threshold, (float)nms, letterbox);
        PrintDetections(header, detections, names, detectorClasses.Value, threshold, nms, height, width, imagePath, outPath);
        return 0;
    }

    /// <summary>--out's file name, refused before any work unless it names a PNG or JPEG file.</summary>
    internal static string? OutPath(ParsedOptions options)
    {
        string? path = options.String("out");
        if (path is not null && Path.GetExtension(path).ToLowerInvariant() is not (".png" or ".jpg" or ".jpeg"))
            throw new UsageException($"--out {path}: expected a .png or .jpg file name");
        return path;
    }

    /// <summary>The boxes above the threshold, most probable first, in pixels of the image; drawn into <paramref name="outPath"/> when given.</summary>
    internal static void PrintDetections(string header, List<YoloDetection> detections, string[]? names, int classes, double threshold, double nms,
        int height, int width, string imagePath, string? outPath)
    {
        CheckNames(names, classes);
        var found = new List<(int Class, float Probability, DarknetBox Box)>();
        foreach (YoloDetection detection in detections)
            for (int k = 0; k < detection.Probabilities.Length; k++)
                if (detection.Probabilities[k] > threshold) found.Add((k, detection.Probabilities[k], detection.Box));
        Console.Out.WriteLine($"{header}; {found.Count} box{(found.Count == 1 ? "" : "es")} (threshold {threshold.ToString(CultureInfo.InvariantCulture)}, NMS {nms.ToString(CultureInfo.InvariantCulture)})");
        foreach ((int k, float probability, DarknetBox box) in found.OrderByDescending(f => f.Probability))
        {
            (int left, int top, int right, int bottom) = Pixels(box, height, width);
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{Label(names, k)}: {probability * 100:F0}%  left {left}, top {top}, right {right}, bottom {bottom}"));
        }
        if (outPath is not null) DrawBoxes(imagePath, outPath, found, names, height, width);
    }

    /// <summary>Positional arguments apart from options; <paramref name="flags"/> take no value.</summary>
    internal static (List<string> Positional, ParsedOptions Options) Split(string command, IReadOnlyList<string> args, string[] valueOptions, string[] flags)
    {
        var positional = new List<string>();
        var rest = new List<string>();
        for (int i = 0; i < args.Count; i++)
        {
            string arg = args[i];
            if (!arg.StartsWith('-') || arg == "-") positional.Add(arg);
            else if (flags.Contains(arg.TrimStart('-'))) rest.AddRange([arg, "1"]);
            else
            {
                rest.Add(arg);
                if (!arg.Contains('=') && valueOptions.Contains(arg.TrimStart('-')) && i + 1 < args.Count) rest.Add(args[++i]);
            }
        }
        return (positional, ParsedOptions.Parse(command, rest, [.. valueOptions, .. flags]));
    }

    internal static DarknetBatchNormMode BatchNormMode(ParsedOptions options) =>
        options.Choice("bn", "pytorch", "pytorch", "darknet-cpu") == "pytorch" ? DarknetBatchNormMode.PyTorch : DarknetBatchNormMode.DarknetCpu;

    internal static string Name(DarknetBatchNormMode mode) => mode == DarknetBatchNormMode.PyTorch ? "pytorch" : "darknet-cpu";

    internal static string[] ReadNames(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"names file not found: {path}", path);
        return File.ReadAllLines(path).Select(l => l.Trim()).Where(l => l.Length > 0).ToArray();
    }

    private static void CheckNames(string[]? names, int classes)
    {
        if (names is not null && names.Length != classes)
            throw new InvalidDataException($"the names file has {names.Length} names; the network has {classes} classes.");
    }

    private static string Label(string[]? names, int index) => names?[index] ?? $"class {index}";

    /// <summary>The image as darknet's load_image_color gives it: planar RGB in [0, 1] (alpha dropped).</summary>
    internal static (float[] Pixels, int Height, int Width) LoadImage(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"image not found: {path}", path);
        using SKCodec? codec = SKCodec.Create(path);
        if (codec is null) throw new InvalidDataException($"{Path.GetFileName(path)}: not an image this build can decode (PNG, JPEG, WebP, GIF, BMP).");
        // Unpremultiplied: stb_image (darknet) drops alpha and keeps the stored colours; premultiplying would darken them.
        var info = new SKImageInfo(codec.Info.Width, codec.Info.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        using var rgba = new SKBitmap(info);
        SKCodecResult result = codec.GetPixels(info, rgba.GetPixels());
        if (result is not (SKCodecResult.Success or SKCodecResult.IncompleteInput))
            throw new InvalidDataException($"{Path.GetFileName(path)}: could not decode the image ({result}).");
        float[] pixels = DarknetImage.FromInterleaved(rgba.GetPixelSpan(), rgba.Width, rgba.Height, 4, rgba.RowBytes);
        return (pixels, rgba.Height, rgba.Width);
    }

    /// <summary>darknet's draw_detections: the box's corners in pixels, clamped to the image.</summary>
    private static (int Left, int Top, int Right, int Bottom) Pixels(DarknetBox box, int height, int width) =>
        (Math.Clamp((int)((box.X - box.Width / 2) * width), 0, width - 1), Math.Clamp((int)((box.Y - box.Height / 2) * height), 0, height - 1),
         Math.Clamp((int)((box.X + box.Width / 2) * width), 0, width - 1), Math.Clamp((int)((box.Y + box.Height / 2) * height), 0, height - 1));

    private static void DrawBoxes(string imagePath, string outPath, List<(int Class, float Probability, DarknetBox Box)> found, string[]? names, int height, int width)
    {
        SKEncodedImageFormat format = Path.GetExtension(outPath).ToLowerInvariant() switch
        {
            ".png" => SKEncodedImageFormat.Png,
            ".jpg" or ".jpeg" => SKEncodedImageFormat.Jpeg,
            _ => throw new UsageException($"--out {outPath}: expected a .png or .jpg file name"),
        };
        using SKBitmap bitmap = SKBitmap.Decode(imagePath);
        using (var canvas = new SKCanvas(bitmap))
        using (var stroke = new SKPaint { Style = SKPaintStyle.Stroke, StrokeWidth = Math.Max(2, height / 200f), IsAntialias = true })
        using (var fill = new SKPaint { Style = SKPaintStyle.Fill })
        using (var text = new SKPaint { Color = SKColors.White, IsAntialias = true })
        using (var font = new SKFont { Size = Math.Max(12, height / 40f) })
        {
            foreach ((int k, float probability, DarknetBox box) in found)
            {
                SKColor color = SKColor.FromHsv(k * 360f / Math.Max(1, names?.Length ?? 80) % 360, 80, 90);
                (stroke.Color, fill.Color) = (color, color);
                (int left, int top, int right, int bottom) = Pixels(box, height, width);
                canvas.DrawRect(left, top, right - left, bottom - top, stroke);
                string label = string.Create(CultureInfo.InvariantCulture, $"{Label(names, k)} {probability * 100:F0}%");
                float labelWidth = font.MeasureText(label);
                canvas.DrawRect(left, Math.Max(0, top - font.Size * 1.2f), labelWidth + 6, font.Size * 1.2f, fill);
                canvas.DrawText(label, left + 3, Math.Max(font.Size, top - font.Size * 0.25f), SKTextAlign.Left, font, text);
            }
        }
        using SKData data = bitmap.Encode(format, 90);
        using FileStream file = File.Create(outPath);
        data.SaveTo(file);
        Console.Out.WriteLine($"wrote {outPath}");
    }
}
