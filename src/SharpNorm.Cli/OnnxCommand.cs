using System.Globalization;
using System.Numerics.Tensors;
using SharpNorm.Darknet;
using SharpNorm.Layers;
using SharpNorm.Onnx;
using Spectre.Console;
using OnnxProto = global::Onnx;

namespace SharpNorm.Cli;

/// <summary><c>sharpnorm onnx</c>: an ONNX model's summary, and one image through it (imported as a SharpNorm graph).</summary>
internal static class OnnxCommand
{
    public const string Usage = """
        Usage: sharpnorm onnx summary MODEL.onnx
               sharpnorm onnx run MODEL.onnx IMAGE [--top N] [--names FILE] [--thresh P] [--nms IOU] [--out FILE] [--threads N]

        summary: the model's opset, inputs and outputs (shapes, N the free batch), its ops with their counts, the
          parameters (initializer values) and metadata, and whether SharpNorm imports it (else what it cannot read).
        run: the image (PNG, JPEG, WebP, ...) through the model imported as a SharpNorm graph: letterboxed to the
          input's size as darknet does for 3 channels, resized in grey for 1, values in [0, 1]. An output of
          (N, classes) prints its top classes (probabilities: the output itself after a softmax, else the softmax of
          the logits), with the names in the model's metadata ("labels") or --names. A darknet detector exported by
          SharpNorm (its cfg in the metadata) prints its boxes as darknet run does; other outputs print their shape
          and statistics.
          --top N          classes printed (default 5)
          --names FILE     class names, one per line
          --thresh P       detectors: boxes of class probability above P (default 0.5)
          --nms IOU        detectors: overlap above which the less probable box of a class goes (default 0.45)
          --out FILE       detectors: the image with its boxes drawn (PNG or JPEG)
          --threads N      threads (default: all cores)
        """;

    public static int Run(IReadOnlyList<string> args)
    {
        if (args.Count == 0) throw new UsageException($"onnx needs a command (summary, run); see {CommandLine.Self} onnx --help");
        if (args[0] is "-h" or "--help" or "help")
        {
            Console.Out.WriteLine(Usage);
            return 0;
        }
        return args[0] switch
        {
            "summary" => Summary(args.Skip(1).ToList()),
            "run" => RunImage(args.Skip(1).ToList()),
            _ => throw new UsageException($"unknown onnx command '{args[0]}' (commands: summary, run)"),
        };
    }

    private static OnnxProto.ModelProto Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"ONNX model not found: {path}", path);
        try
        {
            return OnnxProto.ModelProto.Parser.ParseFrom(File.ReadAllBytes(path));
        }
        catch (Google.Protobuf.InvalidProtocolBufferException e)
        {
            throw new InvalidDataException($"{Path.GetFileName(path)}: not an ONNX model ({e.Message})", e);
        }
    }

    private static string Shape(OnnxProto.ValueInfoProto value) =>
        value.Type?.TensorType?.Shape is { } shape
            ? "(" + string.Join(", ", shape.Dim.Select(d => d.ValueCase == OnnxProto.TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue ? d.DimValue.ToString(CultureInfo.InvariantCulture) : d.DimParam.Length > 0 ? d.DimParam : "?")) + ")"
            : "(unknown shape)";

    private static int Summary(List<string> args)
    {
        (List<string> positional, ParsedOptions options) = DarknetRun.Split("onnx summary", args, [], []);
        if (options.Help)
        {
            Console.Out.WriteLine(Usage);
            return 0;
        }
        if (positional.Count != 1) throw new UsageException($"onnx summary takes one argument, the .onnx file (see {CommandLine.Self} onnx --help)");
        string path = positional[0];
        OnnxProto.ModelProto model = Read(path);
        OnnxProto.GraphProto graph = model.Graph ?? throw new InvalidDataException($"{Path.GetFileName(path)}: the model has no graph.");
        var initializers = graph.Initializer.Select(i => i.Name).ToHashSet(StringComparer.Ordinal);
        long parameters = graph.Initializer.Where(i => i.DataType == (int)OnnxProto.TensorProto.Types.DataType.Float)
            .Sum(i => i.Dims.Aggregate(1L, (p, d) => d < 0 ? p : p * d));
        Console.Out.WriteLine($"{Path.GetFileName(path)}: IR version {model.IrVersion}, opset {string.Join(", ", model.OpsetImport.Select(o => $"{(o.Domain.Length == 0 ? "ai.onnx" : o.Domain)} {o.Version}"))}" +
                              (model.ProducerName.Length > 0 ? $", produced by {model.ProducerName} {model.ProducerVersion}".TrimEnd() : ""));
        foreach (var input in graph.Input.Where(i => !initializers.Contains(i.Name))) Console.Out.WriteLine($"input  {input.Name} {Shape(input)}");
        foreach (var output in graph.Output) Console.Out.WriteLine($"output {output.Name} {Shape(output)}");
        var table = new Table().RoundedBorder().AddColumn("op").AddColumn(new TableColumn("nodes").RightAligned());
        foreach (var group in graph.Node.GroupBy(n => n.OpType).OrderByDescending(g => g.Count()).ThenBy(g => g.Key, StringComparer.Ordinal))
            table.AddRow(Markup.Escape(group.Key), group.Count().ToString(CultureInfo.InvariantCulture));
        Terminal.Out.Write(table);
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{graph.Node.Count} nodes, {graph.Initializer.Count} initializers, {parameters:N0} float parameters"));
        foreach (var entry in model.MetadataProps.Where(p => p.Key is not ("darknet_cfg")))
            Console.Out.WriteLine($"metadata {entry.Key}: {(entry.Value.Length > 120 ? entry.Value[..117] + "..." : entry.Value)}");
        try
        {
            Graph<float> imported = OnnxImport.Load(path);
            Console.Out.WriteLine($"SharpNorm imports it: a graph of {imported.Nodes.Count} nodes, {imported.Parameters.Sum(p => p.Value.FlattenedLength):N0} parameters");
        }
        catch (InvalidDataException e)
        {
            Console.Out.WriteLine($"SharpNorm cannot import it: {App.OneLine(e.Message)}");
        }
        return 0;
    }

    private static int RunImage(List<string> args)
    {
        (List<string> positional, ParsedOptions options) = DarknetRun.Split("onnx run", args, ["top", "names", "threads", "thresh", "nms", "out"], []);
        if (options.Help)
        {
            Console.Out.WriteLine(Usage);
            return 0;
        }
        if (positional.Count != 2) throw new UsageException($"onnx run takes MODEL.onnx and IMAGE (see {CommandLine.Self} onnx --help)");
        int top = options.Int("top", 5, min: 1);
        int threads = options.Threads();
        double threshold = options.Double("thresh", 0.5, v => v is >= 0 and < 1, "a probability in [0, 1)");
        double nms = options.Double("nms", 0.45, v => v is >= 0 and <= 1, "an overlap in [0, 1]");
        string[]? names = options.String("names") is { } namesPath ? DarknetRun.ReadNames(namesPath) : null;
        string? outPath = DarknetRun.OutPath(options);
        (string modelPath, string imagePath) = (positional[0], positional[1]);
        if (!File.Exists(imagePath)) throw new FileNotFoundException($"image not found: {imagePath}", imagePath);
        OnnxProto.ModelProto model = Read(modelPath);
        Graph<float> graph = OnnxImport.Load(modelPath);
        graph.MaxDegreeOfParallelism = threads;
        var dims = model.Graph.Input.First(i => !model.Graph.Initializer.Any(t => t.Name == i.Name)).Type.TensorType.Shape.Dim;
        if (dims.Count != 4) throw new InvalidDataException($"{Path.GetFileName(modelPath)}: the input must be an image (N, C, H, W); it has rank {dims.Count}.");
        (int c, int h, int w) = ((int)dims[1].DimValue, (int)dims[2].DimValue, (int)dims[3].DimValue);
        if (c is not (1 or 3)) throw new InvalidDataException($"{Path.GetFileName(modelPath)}: the input has {c} channels; images give 1 (grey) or 3 (RGB).");
        // A darknet detector's cfg travels in the metadata: its heads decode the outputs into boxes.
        IReadOnlyList<DarknetSection>? darknet = model.MetadataProps.FirstOrDefault(p => p.Key == "darknet_cfg") is { } cfg
            ? DarknetConfig.Parse(cfg.Value, Path.GetFileName(modelPath) + " (darknet_cfg)") : null;
        bool detector = darknet is not null && darknet.Skip(1).Any(section => section.Type is "yolo" or "region" or "detection");
        bool letterbox = c == 3 && (!detector || darknet![0].Int("letter_box", darknet.Any(section => section.Type == "detection") ? 0 : 1) != 0);
        (float[] rgb, int height, int width) = DarknetRun.LoadImage(imagePath);
        float[] input = c == 1 ? DarknetImage.Resize(Grey(rgb, height * width), 1, height, width, h, w)
            : letterbox ? DarknetImage.Letterbox(rgb, 3, height, width, h, w) : DarknetImage.Resize(rgb, 3, height, width, h, w);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        graph.Run(new ReadOnlyTensorSpan<float>(input, [1, c, h, w], []));
        double milliseconds = clock.Elapsed.TotalMilliseconds;
        string header = string.Create(CultureInfo.InvariantCulture,
            $"{Path.GetFileName(modelPath)} on {Path.GetFileName(imagePath)} ({width} x {height}, {(c == 1 ? "grey, resized" : letterbox ? "letterboxed" : "resized")} to {w} x {h}): {milliseconds:F1} ms");
        names ??= model.MetadataProps.FirstOrDefault(p => p.Key == "labels")?.Value.Split(',');
        if (detector)
        {
            ReadOnlyMemory<float>[] heads = Enumerable.Range(0, graph.OutputNames.Count).Select(k => (ReadOnlyMemory<float>)graph.Output(k).ToArray()).ToArray();
            List<YoloDetection> detections;
            try
            {
                detections = YoloDetector.Detect(darknet!, heads, height, width, (float)threshold, (float)nms, letterbox);
            }
            catch (ArgumentException e)
            {
                throw new InvalidDataException($"{Path.GetFileName(modelPath)}: its outputs do not match its darknet_cfg ({e.Message})", e);
            }
            int classes = detections.Count > 0 ? detections[0].Probabilities.Length
                : darknet!.Skip(1).First(section => section.Type is "yolo" or "region" or "detection").Int("classes", 20);
            DarknetRun.PrintDetections(header, detections, names, classes, threshold, nms, height, width, imagePath, outPath);
            return 0;
        }
        Console.Out.WriteLine(header);
        nint[][] shapes = graph.OutputShapes([1, c, h, w]);
        for (int k = 0; k < graph.OutputNames.Count; k++)
        {
            ReadOnlySpan<float> values = graph.Output(k);
            if (shapes[k].Length == 2)
            {
                if (names is not null && names.Length != values.Length)
                    throw new InvalidDataException($"{names.Length} class names for {values.Length} outputs.");
                bool probabilities = graph[graph.OutputNames[k]].Layer is Softmax<float> || graph[graph.OutputNames[k]].Layer is Sequential<float> { Layers: [.., Softmax<float>] };
                float[] scores = values.ToArray();
                if (!probabilities) TensorPrimitives.SoftMax(values, scores);
                Console.Out.WriteLine($"output {graph.OutputNames[k]}: {(probabilities ? "probabilities" : "softmax of the logits")}");
                foreach ((int index, float score) in YoloDetector.Top(scores, Math.Min(top, scores.Length)))
                    Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{score * 100,6:F2}%  {(names is null ? $"class {index}" : names[index])}"));
            }
            else
                Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"output {graph.OutputNames[k]} ({string.Join(" x ", shapes[k])}): min {TensorPrimitives.Min(values):G5}, max {TensorPrimitives.Max(values):G5}, mean {TensorPrimitives.Sum(values) / values.Length:G5}"));
        }
        return 0;
    }

    /// <summary>Planar RGB as grey, ITU-R BT.601 luma.</summary>
    private static float[] Grey(float[] rgb, int plane)
    {
        var grey = new float[plane];
        for (int i = 0; i < plane; i++) grey[i] = 0.299f * rgb[i] + 0.587f * rgb[plane + i] + 0.114f * rgb[2 * plane + i];
        return grey;
    }
}
