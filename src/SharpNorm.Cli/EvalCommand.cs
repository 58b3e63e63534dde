using System.Globalization;
using SharpNorm.Data;
using SharpNorm.Layers;
using SharpNorm.Models;
using SharpNorm.Serialization;
using SharpNorm.Training;
using Spectre.Console;

namespace SharpNorm.Cli;

/// <summary><c>sharpnorm eval</c>: a checkpoint's test accuracy and confusion matrix.</summary>
internal static class EvalCommand
{
    public const string Usage = """
        Usage: sharpnorm eval --checkpoint FILE [options]

        Loads a checkpoint written by 'sharpnorm train' and prints its accuracy on the Fashion-MNIST test set
        and the confusion matrix (rows: true class, columns: predicted class).

        Options:
          --checkpoint FILE      the model.safetensors to evaluate (required)
          --data DIR             folder with Fashion-MNIST's IDX files (default /usr/share/datasets/fashion-mnist)
          --norm NAME            batch, instance, group, layer or none: the model's normalization when the
                                 checkpoint's metadata does not name it (default batch)
          --batch-size N         images per forward pass (default 256)
          --threads N            threads for the layers; -1 for all cores (default -1)
          -h, --help             this text

        The input normalization (pixel mean and std) comes from the checkpoint's metadata, else from the
        training set's statistics.
        """;

    private static readonly string[] ValueOptions = ["checkpoint", "data", "norm", "batch-size", "threads"];

    private const int Classes = 10;

    public static int Run(IReadOnlyList<string> args)
    {
        ParsedOptions options = ParsedOptions.Parse("eval", args, ValueOptions);
        if (options.Help)
        {
            Console.Out.WriteLine(Usage);
            return 0;
        }
        string checkpoint = options.String("checkpoint")
            ?? throw new UsageException($"eval needs --checkpoint FILE (see {CommandLine.Self} eval --help)");
        if (checkpoint.Length == 0) throw new UsageException("option --checkpoint needs a non-empty value");
        string data = options.String("data", FashionMnist.DebianDirectory);
        NormChoice? normOption = options.Norm();
        int batchSize = options.Int("batch-size", 256, min: 1);
        int threads = options.Threads();
        return Evaluate(checkpoint, data, normOption, batchSize, threads);
    }

    private static int Evaluate(string path, string data, NormChoice? normOption, int batchSize, int threads)
    {
        IAnsiConsole console = Terminal.Out;
        if (Directory.Exists(path)) throw new IOException($"checkpoint {path} is a folder; expected a .safetensors file such as {Path.Combine(path, "model.safetensors")}");

        // The metadata says how to build the model; Checkpoint.Load then checks every tensor against it.
        Dictionary<string, string> metadata = Safetensors.ReadMetadata(path);
        NormChoice norm = normOption ?? NormChoice.Batch;
        if (metadata.TryGetValue("norm", out string? savedNorm))
        {
            if (!Names.TryParseNorm(savedNorm, out norm))
                throw new InvalidDataException($"{path}: metadata norm '{savedNorm}' is not one of {string.Join(", ", Names.NormNames)}");
            if (normOption is NormChoice asked && asked != norm)
                Console.Error.WriteLine($"sharpnorm: note: {path} was trained with --norm {Names.Of(norm)}; ignoring --norm {Names.Of(asked)}");
        }
        int classes = metadata.TryGetValue("classes", out string? savedClasses) && int.TryParse(savedClasses, CultureInfo.InvariantCulture, out int c) ? c : Classes;
        if (classes != Classes) throw new InvalidDataException($"{path}: the model has {classes} classes; Fashion-MNIST has {Classes}");

        Sequential<float> model = DarkNetClassifier.Create<float>(norm, Classes);
        try
        {
            Checkpoint.Load(path, model);
        }
        catch (InvalidDataException e) when (!metadata.ContainsKey("norm"))
        {
            throw new InvalidDataException($"{e.Message} The checkpoint's metadata does not name its normalization: is --norm {Names.Of(norm)} right? (batch, instance, group, layer, none)", e);
        }
        model.MaxDegreeOfParallelism = threads;

        ImageDataset test = FashionMnist.Load(data, train: false);
        string statisticsSource = "checkpoint";
        if (!(TryRead(metadata, "mean", out double mean) && TryRead(metadata, "std", out double std) && std > 0))
        {
            (mean, std) = FashionMnist.Load(data, train: true).PixelStatistics();
            statisticsSource = "training set (not in the checkpoint)";
        }
        var loader = new BatchLoader<float>(test, batchSize, shuffle: false, seed: 0, mean, std);

        console.MarkupLine(Markup.Escape($"Checkpoint {path}"));
        console.MarkupLine(Markup.Escape($"DarkNet-style classifier with {Names.Describe(norm)}, {DarkNetClassifier.ParameterCount(model):N0} parameters{Describe(metadata)}"));
        console.MarkupLine(Markup.Escape($"Test set: {test.Count:N0} images from {data}; pixel mean {mean:F4}, std {std:F4} from the {statisticsSource}"));

        EpochResult result = Terminal.Live
            ? console.Status().Start($"Evaluating {test.Count:N0} test images...", _ => Trainer<float>.Evaluate(model, loader, Classes))
            : Trainer<float>.Evaluate(model, loader, Classes);
        int[,] confusion = result.Confusion!;
        int correct = Enumerable.Range(0, Classes).Sum(k => confusion[k, k]);

        console.WriteLine();
        console.MarkupLine($"[bold]Test accuracy: {TrainCommand.Percent(result.Accuracy)}[/] ({correct:N0} of {test.Count:N0}), loss {result.Loss:F4}, {result.Time.TotalSeconds:F1}s");
        if (metadata.TryGetValue("test_accuracy", out string? saved) && double.TryParse(saved, CultureInfo.InvariantCulture, out double savedAccuracy)
            && Math.Abs(savedAccuracy - result.Accuracy) > 1e-9)
            console.MarkupLine(Markup.Escape($"(the checkpoint's metadata says {TrainCommand.Percent(savedAccuracy)})"));
        console.WriteLine();
        console.Write(ConfusionTable(confusion));
        return 0;
    }

    /// <summary>Rows: true class; columns: predicted class (numbered as the rows); the last column is the class's recall.</summary>
    private static Table ConfusionTable(int[,] confusion)
    {
        string[] names = FashionMnist.ClassNames;
        var table = new Table()
            .Border(TableBorder.Rounded)
            .Title("Confusion matrix (rows: true class, columns: predicted class)")
            .AddColumn(new TableColumn("true \\ predicted").LeftAligned());
        for (int k = 0; k < Classes; k++) table.AddColumn(new TableColumn(k.ToString(CultureInfo.InvariantCulture)).RightAligned());
        table.AddColumn(new TableColumn("recall").RightAligned());
        for (int t = 0; t < Classes; t++)
        {
            int total = 0;
            var cells = new List<string> { Markup.Escape($"{t} {names[t]}") };
            for (int p = 0; p < Classes; p++)
            {
                total += confusion[t, p];
                string count = confusion[t, p].ToString(CultureInfo.InvariantCulture);
                cells.Add(p == t ? $"[bold green]{count}[/]" : confusion[t, p] == 0 ? $"[grey]{count}[/]" : count);
            }
            cells.Add(total == 0 ? "-" : Percent1((double)confusion[t, t] / total));
            table.AddRow(cells.ToArray());
        }
        var precision = new List<string> { "precision" };
        for (int p = 0; p < Classes; p++)
        {
            int predicted = Enumerable.Range(0, Classes).Sum(t => confusion[t, p]);
            precision.Add(predicted == 0 ? "-" : Percent1((double)confusion[p, p] / predicted));
        }
        precision.Add("");
        table.AddEmptyRow();
        table.AddRow(precision.ToArray());
        return table;
    }

    private static string Percent1(double fraction) => (100 * fraction).ToString("F1", CultureInfo.InvariantCulture) + "%";

    private static bool TryRead(Dictionary<string, string> metadata, string key, out double value)
    {
        value = 0;
        return metadata.TryGetValue(key, out string? text)
            && double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out value) && double.IsFinite(value);
    }

    private static string Describe(Dictionary<string, string> metadata)
    {
        var parts = new List<string>();
        if (metadata.TryGetValue("epochs", out string? epochs)) parts.Add($"{epochs} epoch(s)");
        if (metadata.TryGetValue("optimizer", out string? optimizer)) parts.Add(optimizer + (metadata.TryGetValue("lr", out string? lr) ? $" lr {lr}" : ""));
        if (metadata.TryGetValue("batch_size", out string? batch)) parts.Add($"batch {batch}");
        if (metadata.TryGetValue("seed", out string? seed)) parts.Add($"seed {seed}");
        return parts.Count == 0 ? "" : $"; trained: {string.Join(", ", parts)}";
    }
}
