using System.Reflection;

namespace SharpNorm.Cli;

/// <summary>
/// The command line: dispatches to a command and turns every failure into one line on stderr,
/// <c>sharpnorm: error: message</c>, with exit code 2 for usage errors and 1 for the rest (130 on Ctrl+C).
/// Set SHARPNORM_DEBUG=1 to get the stack trace as well.
/// </summary>
internal static class App
{
    public const string Usage = """
        sharpnorm: train and evaluate SharpNorm's DarkNet-style classifier on Fashion-MNIST; run darknet networks

        Usage:
          sharpnorm train [options]                   train a model; writes model.safetensors, metrics.csv, curves.png
          sharpnorm eval --checkpoint FILE [options]  test accuracy and confusion matrix of a checkpoint
          sharpnorm export CHECKPOINT OUT.onnx [options]   a checkpoint as an ONNX model (ONNX Runtime, ...)
          sharpnorm darknet summary MODEL.cfg         layers, output shapes, parameters and BFLOPs of a darknet network
          sharpnorm darknet run MODEL.cfg MODEL.weights IMAGE     top-5 classes, or YOLO boxes, for one image
          sharpnorm darknet export MODEL.cfg MODEL.weights OUT.safetensors   the weights as a PyTorch-style state dict
          sharpnorm darknet export MODEL.cfg MODEL.weights OUT.onnx        the network as an ONNX model
          sharpnorm darknet random-weights MODEL.cfg OUT.weights   a random .weights file that fits the cfg
          sharpnorm onnx summary MODEL.onnx           inputs, outputs, ops and parameters of an ONNX model
          sharpnorm onnx run MODEL.onnx IMAGE         top-5 classes (or raw outputs) of an ONNX model, imported
          mpirun -np N sharpnorm distributed check    check Open MPI's collectives across N processes
          sharpnorm help [COMMAND]                    this text, or a command's options
          sharpnorm --version                         the version

        Run 'sharpnorm COMMAND --help' for a command's options. The data are Fashion-MNIST's four IDX files, by
        default from /usr/share/datasets/fashion-mnist (Debian: apt-get install dataset-fashion-mnist).

        Exit codes: 0 success, 1 error, 2 usage error, 130 interrupted.
        """;

    public static int Run(string[] args)
    {
        // Under mpirun a rank's output is a pseudo-terminal of mpirun's: set up as a terminal, .NET's console would
        // write keypad and color escapes into the job's log. A dumb terminal has none.
        if (Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is not null) Environment.SetEnvironmentVariable("TERM", "dumb");
        Interrupt.Install();
        try
        {
            return Dispatch(args);
        }
        catch (Exception e)
        {
            return Fail(e);
        }
    }

    private static int Dispatch(string[] args)
    {
        if (args.Length == 0)
        {
            Console.Out.WriteLine(Usage);
            return 0;
        }
        string[] rest = args[1..];
        switch (args[0])
        {
            case "train":
                return TrainCommand.Run(rest);
            case "eval" or "evaluate":
                return EvalCommand.Run(rest);
            case "export":
                return ExportCommand.Run(rest);
            case "darknet":
                return DarknetCommand.Run(rest);
            case "onnx":
                return OnnxCommand.Run(rest);
            case "distributed":
                return DistributedCommand.Run(rest);
            case "help" or "-h" or "--help" or "-?":
                if (rest.Length == 0) Console.Out.WriteLine(Usage);
                else if (rest.Length == 1 && rest[0] == "train") Console.Out.WriteLine(TrainCommand.Usage);
                else if (rest.Length == 1 && rest[0] is "eval" or "evaluate") Console.Out.WriteLine(EvalCommand.Usage);
                else if (rest.Length == 1 && rest[0] == "export") Console.Out.WriteLine(ExportCommand.Usage);
                else if (rest.Length == 1 && rest[0] == "onnx") Console.Out.WriteLine(OnnxCommand.Usage);
                else if (rest.Length == 1 && rest[0] == "darknet") Console.Out.WriteLine(DarknetCommand.Usage);
                else if (rest.Length == 1 && rest[0] == "distributed") Console.Out.WriteLine(DistributedCommand.Usage);
                else throw new UsageException($"no help for '{string.Join(' ', rest)}' (commands: train, eval, export, darknet, onnx, distributed)");
                return 0;
            case "--version":
                Console.Out.WriteLine($"sharpnorm {Version}");
                return 0;
            default:
                throw args[0].StartsWith('-')
                    ? new UsageException($"unknown option '{args[0]}'; expected a command: train, eval, export, darknet, onnx, distributed or help")
                    : new UsageException($"unknown command '{args[0]}' (commands: train, eval, export, darknet, onnx, distributed, help)");
        }
    }

    private static string Version =>
        typeof(App).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion.Split('+')[0] ?? "unknown";

    private static int Fail(Exception e)
    {
        if (e is OperationCanceledException)
        {
            Console.Out.Flush();
            Console.Error.WriteLine(e.Message.StartsWith("interrupted", StringComparison.Ordinal) ? $"sharpnorm: {e.Message}" : "sharpnorm: interrupted");
            return 130;
        }
        int code = e is UsageException ? 2 : 1;
        string message = e switch
        {
            UsageException or FileNotFoundException or DirectoryNotFoundException or InvalidDataException or IOException or UnauthorizedAccessException
                or SharpNorm.Darknet.DarknetConfigException or NotSupportedException => e.Message,
            ArgumentException argument => argument.Message, // the library's checks: "...; got shape (...)" (Parameter 'x')
            OutOfMemoryException => "out of memory (try a smaller --batch-size)",
            _ => $"{e.GetType().Name}: {e.Message}",
        };
        Console.Out.Flush();
        Console.Error.WriteLine($"sharpnorm: error: {OneLine(message)}");
        if (Environment.GetEnvironmentVariable("SHARPNORM_DEBUG") is "1" or "true") Console.Error.WriteLine(e);
        return code;
    }

    /// <summary>The message on one line: line breaks become "; " and runs of spaces one space.</summary>
    internal static string OneLine(string message)
    {
        string[] lines = message.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        return string.Join("; ", lines);
    }
}
