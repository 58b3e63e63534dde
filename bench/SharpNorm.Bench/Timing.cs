using System.Diagnostics;
using System.Numerics.Tensors;

namespace SharpNorm.Bench;

/// <summary>An operation to time and its untimed setup before each run.</summary>
internal sealed record TimedOperation(Action Run, Action? BeforeEach = null);

/// <summary>Median-of-runs timing: a Stopwatch timestamp pair around each run, optional untimed setup before each.</summary>
internal static class Timing
{
    /// <summary>Timed runs per block in <see cref="MeasureSideBySide"/>.</summary>
    public const int BlockRuns = 5;

    /// <summary>Untimed pause after each block of <see cref="MeasureSideBySide"/>, ms.</summary>
    public const int PauseMs = 10;

    /// <summary>
    /// Times two operations over the same stretch of time: after <paramref name="warmup"/> untimed runs of each, they
    /// take turns in blocks of <see cref="BlockRuns"/> timed runs, each block after one untimed run of its own. On a
    /// shared machine, whose speed drifts over seconds (a neighbour's burst, a slow stretch of one core), a slow
    /// stretch then falls on both sides instead of on whichever happened to be timed then, so their ratio holds where
    /// their absolute times do not. Within a block each run follows a run of the same operation, as with back-to-back
    /// runs: what the operation left in the caches is there for the next. Between blocks a pause of
    /// <see cref="PauseMs"/> lets the side that ran last stop spinning (SharpNorm's helpers for 500 µs, libgomp's
    /// OpenMP threads for some 300000 pause loops), so neither side's timed runs compete with the other's idle threads.
    /// </summary>
    public static (Sample First, Sample? Second) MeasureSideBySide(TimedOperation first, TimedOperation? second, int warmup, int runs)
    {
        if (second is null) return (Measure(first.Run, warmup, runs, first.BeforeEach), null);
        for (int i = 0; i < warmup; i++)
        {
            RunOnce(first);
            RunOnce(second);
        }
        var firstMs = new double[runs];
        var secondMs = new double[runs];
        for (int done = 0; done < runs; done += BlockRuns)
        {
            int count = Math.Min(BlockRuns, runs - done);
            RunBlock(first, firstMs.AsSpan(done, count));
            Thread.Sleep(PauseMs);
            RunBlock(second, secondMs.AsSpan(done, count));
            Thread.Sleep(PauseMs);
        }
        return (new Sample(firstMs), new Sample(secondMs));
    }

    private static void RunOnce(TimedOperation operation)
    {
        operation.BeforeEach?.Invoke();
        operation.Run();
    }

    private static void RunBlock(TimedOperation operation, Span<double> ms)
    {
        RunOnce(operation);
        for (int i = 0; i < ms.Length; i++)
        {
            operation.BeforeEach?.Invoke();
            long start = Stopwatch.GetTimestamp();
            operation.Run();
            ms[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
    }

    public static Sample Measure(Action run, int warmup, int runs, Action? beforeEach = null)
    {
        for (int i = 0; i < warmup; i++)
        {
            beforeEach?.Invoke();
            run();
        }
        var ms = new double[runs];
        for (int i = 0; i < runs; i++)
        {
            beforeEach?.Invoke();
            long start = Stopwatch.GetTimestamp();
            run();
            ms[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        return new Sample(ms);
    }
}

/// <summary>Timed runs in ms (in order) and their median.</summary>
internal sealed record Sample(double[] Ms)
{
    public double Median
    {
        get
        {
            var sorted = (double[])Ms.Clone();
            Array.Sort(sorted);
            int n = sorted.Length;
            return n % 2 == 1 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
        }
    }

    public double Min => Ms.Min();
}

/// <summary>
/// Read and write bandwidth of main memory, probed on a 256 MiB float array: read = vectorized sum
/// (TensorPrimitives.Sum), write = vectorized fill (Span.Fill, ordinary stores as the kernels use). The
/// all-threads probes split the array into fixed chunks and run them with Parallel.For.
/// </summary>
internal sealed class Bandwidth
{
    public const long ProbeBytes = 256L << 20;
    private static float s_sink;

    public Dictionary<int, ProbeResult> Read { get; } = new();
    public Dictionary<int, ProbeResult> Write { get; } = new();

    public sealed record ProbeResult(double GBs, double MedianMs, double[] SamplesMs);

    public static Bandwidth Probe(int[] threadCounts, bool quick)
    {
        var result = new Bandwidth();
        var buffer = new float[ProbeBytes / sizeof(float)];
        buffer.AsSpan().Fill(1f); // touch every page before timing
        int warmup = quick ? 1 : 2, runs = quick ? 3 : 9;
        foreach (int threads in threadCounts)
        {
            int chunks = threads == 1 ? 1 : threads * 8;
            var po = new ParallelOptions { MaxDegreeOfParallelism = threads };
            var partial = new float[chunks];
            int chunkLength = buffer.Length / chunks;

            Sample read = Timing.Measure(() =>
            {
                if (chunks == 1)
                {
                    s_sink += TensorPrimitives.Sum<float>(buffer);
                    return;
                }
                Parallel.For(0, chunks, po, i =>
                    partial[i] = TensorPrimitives.Sum<float>(buffer.AsSpan(i * chunkLength, i == chunks - 1 ? buffer.Length - i * chunkLength : chunkLength)));
                s_sink += partial.Sum();
            }, warmup, runs);

            float value = 0f;
            Sample write = Timing.Measure(() =>
            {
                value += 1f;
                if (chunks == 1)
                {
                    buffer.AsSpan().Fill(value);
                    return;
                }
                float v = value;
                Parallel.For(0, chunks, po, i =>
                    buffer.AsSpan(i * chunkLength, i == chunks - 1 ? buffer.Length - i * chunkLength : chunkLength).Fill(v));
            }, warmup, runs);

            result.Read[threads] = new ProbeResult(ProbeBytes / read.Median / 1e6, read.Median, read.Ms);
            result.Write[threads] = new ProbeResult(ProbeBytes / write.Median / 1e6, write.Median, write.Ms);
        }
        GC.KeepAlive(buffer);
        return result;
    }

    /// <summary>Lower bound in ms to read and write the given bytes at the probed bandwidths for that thread count.</summary>
    public double FloorMs(int threads, long readBytes, long writeBytes) =>
        readBytes / (Read[threads].GBs * 1e6) + writeBytes / (Write[threads].GBs * 1e6);

    public object ToJson() => new
    {
        probeBytes = ProbeBytes,
        read = Read.OrderBy(p => p.Key).Select(p => new { threads = p.Key, gbPerS = p.Value.GBs, medianMs = p.Value.MedianMs, samplesMs = p.Value.SamplesMs }),
        write = Write.OrderBy(p => p.Key).Select(p => new { threads = p.Key, gbPerS = p.Value.GBs, medianMs = p.Value.MedianMs, samplesMs = p.Value.SamplesMs }),
    };
}

/// <summary>
/// How much CPU other processes used over an interval (all cores' busy time from /proc/stat minus this
/// process's CPU time), in average cores: a noise indicator on a shared machine. Null where /proc/stat is absent.
/// </summary>
internal sealed class CpuContention
{
    private readonly long _startTimestamp = Stopwatch.GetTimestamp();
    private readonly double? _startBusySeconds = BusySeconds();
    private readonly TimeSpan _startProcess = Process.GetCurrentProcess().TotalProcessorTime;

    public double? OtherCores()
    {
        double? busy = BusySeconds();
        if (busy is null || _startBusySeconds is null) return null;
        double wall = Stopwatch.GetElapsedTime(_startTimestamp).TotalSeconds;
        double own = (Process.GetCurrentProcess().TotalProcessorTime - _startProcess).TotalSeconds;
        return wall <= 0 ? null : Math.Max(0, (busy.Value - _startBusySeconds.Value - own) / wall);
    }

    /// <summary>Waits until other processes use under 0.15 cores over a 2 s window, at most the given time; the last reading.</summary>
    public static double? WaitForIdle(int maxSeconds)
    {
        var deadline = Stopwatch.GetTimestamp() + maxSeconds * Stopwatch.Frequency;
        while (true)
        {
            var window = new CpuContention();
            Thread.Sleep(2000);
            double? other = window.OtherCores();
            if (other is null || other < 0.15 || Stopwatch.GetTimestamp() >= deadline) return other;
        }
    }

    public static string LoadAverage()
    {
        try { return string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)); }
        catch (IOException) { return "n/a"; }
        catch (UnauthorizedAccessException) { return "n/a"; }
    }

    // user + nice + system + irq + softirq + steal of the aggregate "cpu" line, in seconds (USER_HZ = 100).
    private static double? BusySeconds()
    {
        try
        {
            string? line = File.ReadLines("/proc/stat").FirstOrDefault(l => l.StartsWith("cpu ", StringComparison.Ordinal));
            if (line is null) return null;
            long[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1).Select(long.Parse).ToArray();
            long busy = f[0] + f[1] + f[2] + (f.Length > 6 ? f[5] + f[6] : 0) + (f.Length > 7 ? f[7] : 0);
            return busy / 100.0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            return null;
        }
    }
}
