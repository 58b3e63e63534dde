namespace SharpNorm.Cli;

/// <summary>
/// Ctrl+C: the first press asks the run to stop at the next batch (live displays are cleaned up, the epochs already
/// finished stay in metrics.csv); a second press ends the process at once.
/// </summary>
internal static class Interrupt
{
    private static volatile bool _requested;

    public static void Install() => Console.CancelKeyPress += (_, e) =>
    {
        if (_requested) return;
        _requested = true;
        e.Cancel = true;
    };

    public static void ThrowIfRequested()
    {
        if (_requested) throw new OperationCanceledException("interrupted");
    }
}
