using System.Globalization;
using SharpNorm.Darknet;
using SharpNorm.Onnx;
using Spectre.Console;

namespace SharpNorm.Cli;

/// <summary><c>sharpnorm darknet</c>: darknet networks (.cfg and .weights): summary, run, export, random-weights.</summary>
internal static class DarknetCommand
{
    public const string Usage = """
        Usage: sharpnorm darknet summary MODEL.cfg
               sharpnorm darknet run MODEL.cfg MODEL.weights IMAGE [options]
               sharpnorm darknet export MODEL.cfg MODEL.weights OUT.safetensors [--fold] [--bn MODE]
               sharpnorm darknet export MODEL.cfg MODEL.weights OUT.onnx [--fold] [--opset N]
               sharpnorm darknet random-weights MODEL.cfg OUT.weights [--seed N]

        summary: the network's layers as darknet sizes them: output shapes, learnable parameters and BFLOPs
        (2 x multiply-adds / 1e9), and the totals.
        run: the image (PNG, JPEG, WebP, ...) letterboxed to the network's size as darknet does (resized for YOLOv1's
          [detection] networks, or as [net] letter_box says), then the network. A classifier prints its top classes;
          a detector ([yolo], [region] or [detection] heads) its boxes after non-maximum suppression.
          --names FILE     class names, one per line (darknet's .names / .list files); else class numbers
          --top N          classes a classifier prints (default 5)
          --thresh P       detectors: smallest probability printed (default 0.5, as darknet detect)
          --nms T          detectors: overlap (IoU) above which the less probable box is dropped (default 0.45)
          --out FILE       detectors: also write the image with the boxes drawn (.png or .jpg)
          --bn MODE        pytorch (default): (x - mean) / sqrt(var + 1e-5), darknet's GPU formula and PyTorch's;
                           darknet-cpu: (x - mean) / (sqrt(var) + 1e-6), pjreddie darknet's CPU formula
          --unfused        run each batch norm as its own layer instead of folding it into the convolution
          --threads N      threads (default: all cores)
        export: the weights as a safetensors state dict named like PyTorch ports ({i}.conv.weight, {i}.bn.running_var,
          {i}.fc.weight, ...) with the cfg in its metadata; --fold merges each batch norm into its layer.
          To OUT.onnx: an ONNX model (opset 17 to 23, default 17) taking the letterboxed image (N, 3, H, W) in [0, 1]
          and giving the detection layers' outputs (named by layer when there are several), or a classifier's
          probabilities; the cfg in its metadata, so that 'sharpnorm onnx run' decodes a detector's boxes.
        random-weights: a .weights file (version 0.2) of random values that fits the cfg exactly, for testing.
        """;

    public static int Run(IReadOnlyList<string> args)
    {
        if (args.Count == 0) throw new UsageException($"darknet needs a command (summary, run, export, random-weights); see {CommandLine.Self} darknet --help");
        if (args[0] is "-h" or "--help" or "help")
        {
            Console.Out.WriteLine(Usage);
            return 0;
        }
        if (args[0] == "random-weights") return RandomWeights(args);
        if (args[0] == "run") return DarknetRun.Run(args.Skip(1).ToList());
        if (args[0] == "export") return Export(args.Skip(1).ToList());
        if (args[0] != "summary")
            throw new UsageException($"unknown darknet command '{args[0]}' (commands: summary, run, export, random-weights)");
        if (args.Count != 2 || args[1].StartsWith('-'))
            throw new UsageException($"darknet summary takes one argument, the .cfg file (see {CommandLine.Self} darknet --help)");

        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(DarknetConfig.ReadFile(args[1]));
        var table = new Table().RoundedBorder().Title(Markup.Escape(Path.GetFileName(args[1])));
        foreach (string column in new[] { "#", "layer", "details", "input", "output", "parameters", "BFLOPs" }) table.AddColumn(column);
        foreach (int right in new[] { 0, 5, 6 }) table.Columns[right].RightAligned();
        foreach (DarknetLayerInfo layer in layers)
        {
            string input = layer.Inputs.Length == 1 && layer.Inputs[0] == layer.Index - 1 ? "" : string.Join(", ", layer.Inputs);
            table.AddRow(layer.Index.ToString(CultureInfo.InvariantCulture), layer.Type, Markup.Escape(layer.Details), input,
                $"{layer.Channels} x {layer.Height} x {layer.Width}", layer.Parameters == 0 ? "" : layer.Parameters.ToString("N0", CultureInfo.InvariantCulture),
                layer.Bflops == 0 ? "" : layer.Bflops.ToString("F3", CultureInfo.InvariantCulture));
        }
        Terminal.Out.Write(table);
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{layers.Count} layers, {layers.Sum(l => l.Parameters):N0} parameters, {layers.Sum(l => l.Bflops):F2} BFLOPs"));
        return 0;
    }

    private static int RandomWeights(IReadOnlyList<string> args)
    {
        int seed = 0;
        var positional = new List<string>();
        for (int i = 1; i < args.Count; i++)
        {
            if (args[i] == "--seed")
            {
                if (i + 1 >= args.Count || !int.TryParse(args[i + 1], NumberStyles.Integer, CultureInfo.InvariantCulture, out seed))
                    throw new UsageException($"option --seed: expected a whole number, got '{(i + 1 < args.Count ? args[i + 1] : "")}'");
                i++;
            }
            else if (args[i].StartsWith('-')) throw new UsageException($"unknown option '{args[i]}' for 'darknet random-weights'");
            else positional.Add(args[i]);
        }
        if (positional.Count != 2) throw new UsageException($"darknet random-weights takes MODEL.cfg and OUT.weights (see {CommandLine.Self} darknet --help)");
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(DarknetConfig.ReadFile(positional[0]));
        DarknetWeightsFile.Write(positional[1], DarknetWeightsFile.Random(layers, seed));
        Console.Out.WriteLine($"wrote {positional[1]}: {new FileInfo(positional[1]).Length:N0} bytes for {Path.GetFileName(positional[0])}");
        return 0;
    }

    private static int Export(List<string> args)
    {
        (List<string> positional, ParsedOptions options) = DarknetRun.Split("darknet export", args, ["bn", "opset"], ["fold"]);
        if (options.Help)
        {
            Console.Out.WriteLine(Usage);
            return 0;
        }
        if (positional.Count != 3) throw new UsageException($"darknet export takes MODEL.cfg, MODEL.weights and OUT.safetensors or OUT.onnx (see {CommandLine.Self} darknet --help)");
        DarknetBatchNormMode mode = DarknetRun.BatchNormMode(options);
        bool fold = options.Has("fold");
        if (positional[2].EndsWith(".onnx", StringComparison.OrdinalIgnoreCase))
        {
            if (mode != DarknetBatchNormMode.PyTorch && !fold)
                throw new UsageException("--bn darknet-cpu has no ONNX BatchNormalization twin ((x - mean) / (sqrt(var) + 1e-6)); add --fold to fold it into the convolutions");
            int opset = options.Int("opset", OnnxExport.DefaultOpset, min: OnnxExport.MinOpset, max: OnnxExport.MaxOpset,
                expected: $"an opset from {OnnxExport.MinOpset} to {OnnxExport.MaxOpset}");
            DarknetOnnxExport.Save(positional[0], positional[1], positional[2], fold, opset, mode);
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"wrote {positional[2]}: {new FileInfo(positional[2]).Length:N0} bytes, ONNX opset {opset}{(fold ? ", batch norms folded" : "")}"));
            return 0;
        }
        if (options.Has("opset")) throw new UsageException("--opset is for ONNX export (OUT.onnx)");
        if (!positional[2].EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            throw new UsageException($"darknet export writes OUT.safetensors or OUT.onnx (the format from the extension); got '{positional[2]}'");
        DarknetExport.Save(positional[0], positional[1], positional[2], fold, mode);
        Console.Out.WriteLine($"wrote {positional[2]}: {new FileInfo(positional[2]).Length:N0} bytes{(fold ? $", batch norms folded ({DarknetRun.Name(mode)})" : "")}");
        return 0;
    }
}
