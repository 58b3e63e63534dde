namespace SharpNorm.Cli;

/// <summary>How to run this program again, for the hints it prints ("Evaluate it with: ..."): a command that works
/// from the user's shell however they started it (an installed tool, ./train.sh, dotnet run, dotnet SharpNorm.Cli.dll).</summary>
internal static class CommandLine
{
    /// <summary>"sharpnorm" when that name on PATH is this program; otherwise the path of the sharpnorm executable
    /// beside it (relative to the current directory where it lies below it), or "dotnet PATH/SharpNorm.Cli.dll".</summary>
    public static string Self => _self ??= SafeResolve();

    private static string SafeResolve()
    {
        try
        {
            return Resolve(Environment.ProcessPath, AppContext.BaseDirectory, Environment.GetEnvironmentVariable("PATH"), Environment.CurrentDirectory);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return "sharpnorm";   // e.g. the current directory was deleted: a hint must not turn into an error
        }
    }

    private static string? _self;

    internal static string Resolve(string? processPath, string baseDirectory, string? searchPath, string currentDirectory)
    {
        string? executable = null;
        string name = processPath is null ? "" : Path.GetFileName(processPath), extension = name.EndsWith(".exe", StringComparison.OrdinalIgnoreCase) ? ".exe" : "";
        name = name[..^extension.Length];
        if (name is "sharpnorm") executable = processPath;
        else if (name is "SharpNorm.Cli")
        {
            // The app host SharpNorm.Cli (dotnet run, ./train.sh, an installed tool) has the copy named sharpnorm beside it (the .csproj).
            string sibling = Path.Combine(Path.GetDirectoryName(processPath)!, "sharpnorm" + extension);
            executable = File.Exists(sibling) ? sibling : processPath;
        }
        // an installed tool's sharpnorm on PATH links to the app host itself, not to the copy beside it
        if (executable is not null && OnPath("sharpnorm" + extension, searchPath) is { } found && (SameFile(found, executable) || SameFile(found, processPath!)))
            return "sharpnorm";
        string normalized = baseDirectory.Replace('\\', '/');
        // dotnet tool install --tool-path DIR (or -g) runs DIR/.store/sharpnorm.cli/...: the command is DIR/sharpnorm
        int store = normalized.IndexOf("/.store/sharpnorm.cli/", StringComparison.OrdinalIgnoreCase);
        if (store >= 0 && Path.Combine(baseDirectory[..store], "sharpnorm" + extension) is { } command && File.Exists(command))
            return Quote(Shorten(command, currentDirectory));
        // a local tool (dotnet tool install without -g) runs from the NuGet cache as dotnet sharpnorm; its platform's
        // package is sharpnorm.cli.<rid>
        if (store < 0 && System.Text.RegularExpressions.Regex.IsMatch(normalized, @"/sharpnorm\.cli(\.[a-z0-9-]+)?/[^/]+/tools/net[^/]*/", System.Text.RegularExpressions.RegexOptions.IgnoreCase))
            return "dotnet sharpnorm";
        if (executable is not null) return Quote(Shorten(executable, currentDirectory));
        return "dotnet " + Quote(Shorten(Path.Combine(baseDirectory, "SharpNorm.Cli.dll"), currentDirectory));
    }

    /// <summary>A path as a shell word: quoted when it holds anything but plain characters.</summary>
    public static string Quote(string path) =>
        path.All(c => char.IsAsciiLetterOrDigit(c) || c is '/' or '.' or '-' or '_' or '+' or ':' or ',') ? path : "'" + path.Replace("'", "'\\''") + "'";

    private static string? OnPath(string name, string? searchPath)
    {
        foreach (string folder in (searchPath ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(folder, name);
            if (File.Exists(candidate)) return candidate;
        }
        return null;
    }

    private static bool SameFile(string a, string b) =>
        string.Equals(Path.GetFullPath(a), Path.GetFullPath(b), StringComparison.Ordinal)
        || string.Equals(new FileInfo(a).ResolveLinkTarget(true)?.FullName ?? Path.GetFullPath(a), new FileInfo(b).ResolveLinkTarget(true)?.FullName ?? Path.GetFullPath(b), StringComparison.Ordinal);

    /// <summary>The path relative to the current directory when it lies below it ("./" in front, so a shell runs it).</summary>
    private static string Shorten(string path, string currentDirectory)
    {
        string full = Path.GetFullPath(path);
        string relative = Path.GetRelativePath(currentDirectory, full);
        return relative.StartsWith("..", StringComparison.Ordinal) || Path.IsPathRooted(relative) ? full : relative.Contains(Path.DirectorySeparatorChar) ? relative : "./" + relative;
    }
}
