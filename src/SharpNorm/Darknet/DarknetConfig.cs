using System.Globalization;

namespace SharpNorm.Darknet;

/// <summary>A darknet .cfg file is malformed: the message names the line (and the file).</summary>
public sealed class DarknetConfigException(string message) : FormatException(message);

/// <summary>
/// One [section] of a darknet .cfg file with its key=value options, each remembering its line. Typed getters check
/// values and name the line of a bad one.
/// </summary>
public sealed class DarknetSection
{
    private readonly Dictionary<string, (string Value, int Line)> _options = new(StringComparer.Ordinal);
    private readonly string _source;

    internal DarknetSection(string type, int line, string source)
    {
        Type = type;
        Line = line;
        _source = source;
    }

    /// <summary>The section type with darknet's aliases resolved: "convolutional" for [conv], "maxpool" for [max], ...</summary>
    public string Type { get; }

    /// <summary>Line of the section header (1-based).</summary>
    public int Line { get; }

    public IReadOnlyCollection<string> Keys => _options.Keys;

    internal void Set(string key, string value, int line) => _options[key] = (value, line);

    public bool Has(string key) => _options.ContainsKey(key);

    public string String(string key, string fallback) => _options.TryGetValue(key, out var o) ? o.Value : fallback;

    public int Int(string key, int fallback)
    {
        if (!_options.TryGetValue(key, out var o)) return fallback;
        // darknet reads integers with atoi: "1.0" is refused here rather than silently truncated.
        if (!int.TryParse(o.Value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int value))
            throw Bad(key, o, "a whole number");
        return value;
    }

    public double Float(string key, double fallback)
    {
        if (!_options.TryGetValue(key, out var o)) return fallback;
        if (!double.TryParse(o.Value, NumberStyles.Float, CultureInfo.InvariantCulture, out double value) || !double.IsFinite(value))
            throw Bad(key, o, "a number");
        return value;
    }

    /// <summary>A comma-separated list of integers ("layers = -1, 8", "mask = 3,4,5"); empty entries are skipped.</summary>
    public int[]? IntList(string key)
    {
        if (!_options.TryGetValue(key, out var o)) return null;
        var values = new List<int>();
        foreach (string part in o.Value.Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            if (!int.TryParse(part, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int value))
                throw Bad(key, o, "a comma-separated list of whole numbers");
            values.Add(value);
        }
        return values.ToArray();
    }

    /// <summary>A comma-separated list of numbers ("anchors = 10,14, 23,27").</summary>
    public double[]? FloatList(string key)
    {
        if (!_options.TryGetValue(key, out var o)) return null;
        var values = new List<double>();
        foreach (string part in o.Value.Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            if (!double.TryParse(part, NumberStyles.Float, CultureInfo.InvariantCulture, out double value))
                throw Bad(key, o, "a comma-separated list of numbers");
            values.Add(value);
        }
        return values.ToArray();
    }

    /// <summary>An error about this section (a value out of range, a reference to a missing layer).</summary>
    public DarknetConfigException Error(string message, string? key = null) =>
        new($"{_source}:{(key is not null && _options.TryGetValue(key, out var o) ? o.Line : Line)}: [{Type}] {message}");

    private DarknetConfigException Bad(string key, (string Value, int Line) option, string expected) =>
        new($"{_source}:{option.Line}: [{Type}] {key}={option.Value}: expected {expected}.");
}

/// <summary>
/// Reads darknet .cfg files as darknet's read_cfg does: all whitespace removed from each line, lines starting with
/// '#' or ';' and empty lines skipped, '[' starts a section, other lines are key=value options of the section above.
/// Unknown section types are refused (naming the line), so a typo never builds half a network.
/// </summary>
public static class DarknetConfig
{
    private static readonly Dictionary<string, string> SectionTypes = new(StringComparer.Ordinal)
    {
        ["net"] = "net", ["network"] = "net",
        ["convolutional"] = "convolutional", ["conv"] = "convolutional",
        ["maxpool"] = "maxpool", ["max"] = "maxpool",
        ["avgpool"] = "avgpool", ["avg"] = "avgpool",
        ["route"] = "route", ["shortcut"] = "shortcut", ["upsample"] = "upsample",
        ["connected"] = "connected", ["conn"] = "connected",
        ["dropout"] = "dropout",
        ["softmax"] = "softmax", ["soft"] = "softmax",
        ["yolo"] = "yolo", ["region"] = "region", ["detection"] = "detection",
        ["reorg"] = "reorg", ["local"] = "local",
        ["cost"] = "cost",
    };

    public static IReadOnlyList<DarknetSection> ReadFile(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"Darknet cfg not found: {path}", path);
        return Parse(File.ReadAllText(path), Path.GetFileName(path));
    }

    /// <param name="text">The cfg text.</param>
    /// <param name="source">Names the file in error messages.</param>
    public static IReadOnlyList<DarknetSection> Parse(string text, string source = "cfg")
    {
        ArgumentNullException.ThrowIfNull(text);
        var sections = new List<DarknetSection>();
        string[] lines = text.Split('\n');
        for (int index = 0; index < lines.Length; index++)
        {
            int lineNumber = index + 1;
            string line = string.Concat(lines[index].Where(c => !char.IsWhiteSpace(c)));
            if (line.Length == 0 || line[0] is '#' or ';') continue;
            if (line[0] == '[')
            {
                if (line[^1] != ']')
                    throw new DarknetConfigException($"{source}:{lineNumber}: section header {line} has no closing ']'.");
                string name = line[1..^1].ToLowerInvariant();
                if (!SectionTypes.TryGetValue(name, out string? type))
                    throw new DarknetConfigException($"{source}:{lineNumber}: unknown section [{name}] (known: {string.Join(", ", SectionTypes.Keys.Select(k => $"[{k}]"))}).");
                sections.Add(new DarknetSection(type, lineNumber, source));
                continue;
            }
            int equals = line.IndexOf('=');
            if (equals <= 0)
                throw new DarknetConfigException($"{source}:{lineNumber}: expected key=value or [section]; got '{line}'.");
            if (sections.Count == 0)
                throw new DarknetConfigException($"{source}:{lineNumber}: option '{line}' comes before the first [section].");
            sections[^1].Set(line[..equals], line[(equals + 1)..], lineNumber);
        }
        if (sections.Count == 0 || sections[0].Type != "net")
            throw new DarknetConfigException($"{source}: the first section must be [net] (or [network]).");
        return sections;
    }
}
