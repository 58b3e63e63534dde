using System.Globalization;
using SharpNorm.Data;
using SharpNorm.Layers;
using SharpNorm.Models;
using SharpNorm.Onnx;
using SharpNorm.Serialization;

namespace SharpNorm.Cli;

/// <summary><c>sharpnorm export</c>: a checkpoint of <c>sharpnorm train</c> as an ONNX model.</summary>
internal static class ExportCommand
{
    public const string Usage = """
        Usage: sharpnorm export CHECKPOINT.safetensors OUT.onnx [options]

        Writes a checkpoint of 'sharpnorm train' as an ONNX model for ONNX Runtime and the other ONNX runtimes.
        The checkpoint's metadata says which model it is (normalization, classes) and how its input was
        normalized; the ONNX model takes grayscale images as (N, 1, 28, 28) floats, pixels in [0, 1] (byte / 255),
        any batch size N, and returns the 10 class scores (logits) as (N, 10). Class names are in its metadata.

        Options:
          --fold         fold each batch norm into the convolution before it (one Conv instead of two nodes)
          --opset N      the ONNX opset, 17 to 23 (default 17). GroupNormalization from 21, RMSNormalization from 23;
                         below, their standard decompositions
          --raw-input    no input normalization in the graph: it takes the normalized tensor the model saw in training
          -h, --help     this text
        """;

    public static int Run(IReadOnlyList<string> args)
    {
        (List<string> positional, ParsedOptions options) = DarknetRun.Split("export", args, ["opset"], ["fold", "raw-input"]);
        if (options.Help)
        {
            Console.Out.WriteLine(Usage);
            return 0;
        }
        if (positional.Count != 2) throw new UsageException($"export takes CHECKPOINT.safetensors and OUT.onnx (see {CommandLine.Self} export --help)");
        string checkpoint = positional[0], output = positional[1];
        if (!output.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase))
            throw new UsageException($"the output must be a .onnx file; got '{output}'");
        int opset = options.Int("opset", OnnxExport.DefaultOpset, min: OnnxExport.MinOpset, max: OnnxExport.MaxOpset,
            expected: $"an opset from {OnnxExport.MinOpset} to {OnnxExport.MaxOpset}");
        bool fold = options.Has("fold"), raw = options.Has("raw-input");
        if (Directory.Exists(checkpoint)) throw new IOException($"checkpoint {checkpoint} is a folder; expected a .safetensors file such as {Path.Combine(checkpoint, "model.safetensors")}");

        Dictionary<string, string> metadata = Safetensors.ReadMetadata(checkpoint);
        if (!metadata.TryGetValue("norm", out string? savedNorm))
            throw new InvalidDataException($"{checkpoint}: the metadata does not say which model this is (no 'norm'); expected a checkpoint written by 'sharpnorm train'");
        if (!Names.TryParseNorm(savedNorm, out NormChoice norm))
            throw new InvalidDataException($"{checkpoint}: metadata norm '{savedNorm}' is not one of {string.Join(", ", Names.NormNames)}");
        if (!metadata.TryGetValue("classes", out string? savedClasses) || !int.TryParse(savedClasses, NumberStyles.Integer, CultureInfo.InvariantCulture, out int classes) || classes is < 1 or > 100_000)
            throw new InvalidDataException($"{checkpoint}: metadata classes '{savedClasses}' is not a number of classes from 1 to 100000");
        (double Mean, double Std)? normalization = null;
        if (!raw)
        {
            if (!(TryRead(metadata, "mean", out double mean) && TryRead(metadata, "std", out double std) && std > 0))
                throw new InvalidDataException($"{checkpoint}: the metadata has no input normalization (mean and std); export with --raw-input to take the normalized tensor");
            normalization = (mean, std);
        }

        Sequential<float> model = DarkNetClassifier.Create<float>(norm, classes);
        Checkpoint.Load(checkpoint, model);
        model.Training = false;

        var properties = new Dictionary<string, string>(metadata) { ["input"] = raw ? "(x / 255 - mean) / std, (N, 1, 28, 28)" : "pixels / 255 in [0, 1], (N, 1, 28, 28)" };
        if (classes == FashionMnist.ClassNames.Length) properties["labels"] = string.Join(",", FashionMnist.ClassNames);
        var exportOptions = new OnnxExportOptions
        {
            Opset = opset,
            FoldBatchNorm = fold,
            InputName = "image",
            OutputName = "logits",
            InputNormalization = normalization,
            Metadata = properties,
        };
        OnnxExport.Save(model, [1, 1, 28, 28], output, exportOptions);
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"wrote {output}: {new FileInfo(output).Length:N0} bytes, opset {opset}, DarkNet-style classifier with {Names.Describe(norm)}{(fold ? ", batch norms folded" : "")}"));
        Console.Out.WriteLine(raw
            ? "input 'image' (N, 1, 28, 28): the normalized tensor (x / 255 - mean) / std; output 'logits' (N, " + classes.ToString(CultureInfo.InvariantCulture) + ")"
            : "input 'image' (N, 1, 28, 28): pixels / 255; output 'logits' (N, " + classes.ToString(CultureInfo.InvariantCulture) + ")");
        return 0;
    }

    private static bool TryRead(Dictionary<string, string> metadata, string key, out double value)
    {
        value = 0;
        return metadata.TryGetValue(key, out string? text)
            && double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out value) && double.IsFinite(value);
    }
}
