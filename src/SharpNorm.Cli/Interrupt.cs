using System.Runtime.InteropServices;

namespace SharpNorm.Cli;

/// <summary>
/// Ctrl+C (or SIGTERM): the first one asks the run to stop at the next batch, so live displays are cleaned up and the
/// epochs already finished stay in metrics.csv; a second one ends the process at once.
/// </summary>
internal static class Interrupt
{
    private static volatile bool _requested;
    private static PosixSignalRegistration? _terminate;

    public static void Install()
    {
        Console.CancelKeyPress += (_, e) => e.Cancel = Request();
        if (!OperatingSystem.IsWindows()) _terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, context => context.Cancel = Request());
    }

    /// <returns>Whether to keep the process alive: true the first time.</returns>
    private static bool Request()
    {
        if (_requested) return false;
        _requested = true;
        return true;
    }

    /// <summary>Whether Ctrl+C or SIGTERM came (a distributed run's ranks agree on it before they stop).</summary>
    public static bool Requested => _requested;

    public static void ThrowIfRequested()
    {
        if (_requested) throw new OperationCanceledException("interrupted");
    }
}
