using Spectre.Console;

namespace SharpNorm.Cli;

/// <summary>
/// Standard output as a Spectre console. On a terminal: colors and live progress bars. Redirected (a file, a pipe, CI):
/// plain text without ANSI escapes and no live display, so logs read as they are.
/// </summary>
internal static class Terminal
{
    private static readonly Lazy<IAnsiConsole> Console_ = new(Create);

    public static IAnsiConsole Out => Console_.Value;

    /// <summary>Whether progress is drawn as live bars (an interactive terminal) rather than as plain lines.</summary>
    public static bool Live => !Plain && Out.Profile.Capabilities.Interactive && Out.Profile.Capabilities.Ansi;

    // Under mpirun a rank writes to a pseudo-terminal of mpirun's whatever mpirun's own output is, and it has no width.
    private static bool Plain => Console.IsOutputRedirected || Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is not null;

    private static IAnsiConsole Create()
    {
        if (!Plain) return AnsiConsole.Console;
        IAnsiConsole plain = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
            Out = new AnsiConsoleOutput(Console.Out),
        });
        // A file has no width; Spectre would assume 80 columns, wrap long lines and squeeze the tables.
        plain.Profile.Width = 240;
        return plain;
    }
}
