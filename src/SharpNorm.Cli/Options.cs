using System.Globalization;
using SharpNorm.Models;

namespace SharpNorm.Cli;

/// <summary>A mistake in the command line: reported as one line, exit code 2.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>
/// The options of one command, parsed by hand: <c>--name value</c> or <c>--name=value</c>, flags without a value,
/// <c>-h</c>/<c>--help</c>. The last occurrence of an option wins. Values are read with the invariant culture.
/// </summary>
internal sealed class ParsedOptions
{
    private readonly string _command;
    private readonly Dictionary<string, string> _values = new(StringComparer.Ordinal);

    private ParsedOptions(string command) => _command = command;

    public bool Help { get; private set; }

    /// <param name="command">The command's name, for messages.</param>
    /// <param name="args">The arguments after the command's name.</param>
    /// <param name="valueOptions">Names (without the leading dashes) of the options that take a value.</param>
    public static ParsedOptions Parse(string command, IReadOnlyList<string> args, IReadOnlyCollection<string> valueOptions)
    {
        var parsed = new ParsedOptions(command);
        for (int i = 0; i < args.Count; i++)
        {
            string arg = args[i];
            if (arg is "-h" or "--help" or "-?")
            {
                parsed.Help = true;
                continue;
            }
            if (!arg.StartsWith("--", StringComparison.Ordinal) || arg.Length == 2)
                throw new UsageException($"unexpected argument '{arg}' for '{command}' (see {CommandLine.Self} {command} --help)");
            string name = arg[2..];
            string? value = null;
            int equals = name.IndexOf('=', StringComparison.Ordinal);
            if (equals >= 0)
            {
                value = name[(equals + 1)..];
                name = name[..equals];
            }
            if (!valueOptions.Contains(name))
                throw new UsageException($"unknown option '--{name}' for '{command}' (see {CommandLine.Self} {command} --help)");
            if (value is null)
            {
                // "--threads -1" takes the -1; "--epochs --lr 0.1" is a missing value, not an epoch count "--lr".
                if (i + 1 >= args.Count || args[i + 1].StartsWith("--", StringComparison.Ordinal))
                    throw new UsageException($"option --{name} needs a value");
                value = args[++i];
            }
            parsed._values[name] = value;
        }
        return parsed;
    }

    public bool Has(string name) => _values.ContainsKey(name);

    public string? String(string name) => _values.TryGetValue(name, out string? value) ? value : null;

    public string String(string name, string fallback)
    {
        string? value = String(name);
        if (value is null) return fallback;
        if (value.Length == 0) throw new UsageException($"option --{name} needs a non-empty value");
        return value;
    }

    /// <summary>A whole number in [min, max]; the message names the option and the value.</summary>
    public int Int(string name, int fallback, int min = int.MinValue, int max = int.MaxValue, string? expected = null)
    {
        string? text = String(name);
        if (text is null) return fallback;
        expected ??= max == int.MaxValue ? $"a whole number >= {min}" : $"a whole number in [{min}, {max}]";
        if (!int.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int value) || value < min || value > max)
            throw new UsageException($"option --{name}: expected {expected}, got '{text}'");
        return value;
    }

    /// <summary>A finite number accepted by <paramref name="valid"/>; <paramref name="expected"/> says what is valid.</summary>
    public double Double(string name, double fallback, Func<double, bool> valid, string expected)
    {
        string? text = String(name);
        if (text is null) return fallback;
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) || !double.IsFinite(value) || !valid(value))
            throw new UsageException($"option --{name}: expected {expected}, got '{text}'");
        return value;
    }

    /// <summary>One of <paramref name="choices"/>, ignoring case.</summary>
    public string Choice(string name, string fallback, params string[] choices)
    {
        string? text = String(name);
        if (text is null) return fallback;
        string? match = choices.FirstOrDefault(c => string.Equals(c, text, StringComparison.OrdinalIgnoreCase));
        return match ?? throw new UsageException($"option --{name}: expected one of {string.Join(", ", choices)}, got '{text}'");
    }

    /// <summary>--threads: -1 for all cores (the default) or a positive count.</summary>
    public int Threads(string name = "threads")
    {
        const string expected = "-1 (all cores) or a whole number >= 1";
        int threads = Int(name, -1, min: -1, expected: expected);
        return threads != 0 ? threads : throw new UsageException($"option --{name}: expected {expected}, got '{String(name)}'");
    }

    public NormChoice? Norm(string name = "norm")
    {
        string? text = String(name);
        return text is null ? null : Names.ParseNorm(Choice(name, "batch", Names.NormNames));
    }
}

/// <summary>The command line's names for the library's choices.</summary>
internal static class Names
{
    public static readonly string[] NormNames = ["batch", "instance", "group", "layer", "none"];
    private static readonly NormChoice[] NormValues = [NormChoice.Batch, NormChoice.Instance, NormChoice.Group, NormChoice.Layer, NormChoice.None];

    public static string Of(NormChoice norm) => norm switch
    {
        NormChoice.Batch => "batch",
        NormChoice.Instance => "instance",
        NormChoice.Group => "group",
        NormChoice.Layer => "layer",
        NormChoice.None => "none",
        _ => throw new ArgumentOutOfRangeException(nameof(norm), norm, "Unknown normalization."),
    };

    public static NormChoice ParseNorm(string name) => TryParseNorm(name, out NormChoice norm)
        ? norm
        : throw new UsageException($"unknown normalization '{name}' (expected one of {string.Join(", ", NormNames)})");

    public static bool TryParseNorm(string name, out NormChoice norm)
    {
        for (int i = 0; i < NormNames.Length; i++)
            if (string.Equals(NormNames[i], name.Trim(), StringComparison.OrdinalIgnoreCase))
            {
                norm = NormValues[i];
                return true;
            }
        norm = default;
        return false;
    }

    /// <summary>The layer's class name, for what is printed: BatchNorm, InstanceNorm, GroupNorm(8), LayerNorm, no normalization.</summary>
    public static string Describe(NormChoice norm) => norm switch
    {
        NormChoice.Batch => "BatchNorm",
        NormChoice.Instance => "InstanceNorm",
        NormChoice.Group => "GroupNorm(8)",
        NormChoice.Layer => "LayerNorm",
        _ => "no normalization",
    };
}
