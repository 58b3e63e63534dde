using System.Diagnostics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace SharpNorm.Bench;

/// <summary>An operation to time and its untimed setup before each run.</summary>
internal sealed record TimedOperation(Action Run, Action? BeforeEach = null);

/// <summary>Median-of-runs timing: a Stopwatch timestamp pair around each run, optional untimed setup before each.</summary>
internal static class Timing
{
    /// <summary>Longest untimed pause between the two sides of <see cref="MeasureSideBySide"/>, ms.</summary>
    public const int PauseMs = 300;

    /// <summary>Untimed runs before a side's timed runs last at least this long, ms (and number at least the warm-up count).</summary>
    public const int WarmupMs = 4;

    /// <summary>
    /// Times two operations one after the other, each after its warm-up, with a pause between them until the side that
    /// ran has gone quiet. Each side's runs are back to back, as in a program that uses one library: what the operation
    /// left in the caches is there for the next run, and its pool threads are awake. They are not interleaved in short
    /// blocks: libgomp's OpenMP threads spin on for some 10 ms after libtorch's last call, and SharpNorm blocks timed
    /// between libtorch's ran at up to 2.5x their time even after a wait for those threads to go quiet (far less often
    /// with OMP_WAIT_POLICY=PASSIVE): one library's idle threads would be charged to the other. Drift between the two
    /// sides' stretches is what the medians over several processes are for.
    /// </summary>
    public static (Sample First, Sample? Second) MeasureSideBySide(TimedOperation first, TimedOperation? second, int warmup, int runs)
    {
        Sample a = MeasureWarm(first, warmup, runs);
        if (second is null) return (a, null);
        WaitUntilQuiet();
        Sample b = MeasureWarm(second, warmup, runs);
        WaitUntilQuiet();
        return (a, b);
    }

    private static Sample MeasureWarm(TimedOperation operation, int warmup, int runs)
    {
        long warmUntil = Stopwatch.GetTimestamp() + Stopwatch.Frequency * WarmupMs / 1000;
        for (int i = 0; i < warmup || Stopwatch.GetTimestamp() < warmUntil; i++)
        {
            operation.BeforeEach?.Invoke();
            operation.Run();
        }
        return Measure(operation.Run, 0, runs, operation.BeforeEach);
    }

    /// <summary>
    /// Sleeps until this process's threads have gone quiet (under a fifth of a core over a 20 ms window; the process's
    /// CPU time moves in ~4 ms ticks here, too coarse for shorter windows), at most <see cref="PauseMs"/>.
    /// </summary>
    private static void WaitUntilQuiet()
    {
        const int windowMs = 20;
        using var process = Process.GetCurrentProcess();
        long deadline = Stopwatch.GetTimestamp() + Stopwatch.Frequency * PauseMs / 1000;
        TimeSpan busy = process.TotalProcessorTime;
        while (Stopwatch.GetTimestamp() < deadline)
        {
            Thread.Sleep(windowMs);
            process.Refresh();
            TimeSpan now = process.TotalProcessorTime;
            if ((now - busy).TotalMilliseconds < windowMs / 5.0) return;
            busy = now;
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

/// <summary>
/// The machine's FMA peak: a register-only loop of twelve independent Vector512 (or the widest accelerated) fused
/// multiply-add chains, on 1 thread and on each thread count of the run at once; GFLOP/s counts 2 per lane per FMA.
/// Probed in every run: it differs between machines of this VM type (two cores gave 1.35x one on one of them).
/// </summary>
internal static class FmaPeak
{
    private const long Iterations = 20_000_000;
    private static float s_sink;

    /// <summary>GFLOP/s by thread count (the median of 5 probes each).</summary>
    public static Dictionary<int, double> Probe(IEnumerable<int> threadCounts)
    {
        var result = new Dictionary<int, double>();
        foreach (int threads in threadCounts.Append(1).Distinct().Order())
        {
            var samples = new List<double>();
            for (int probe = 0; probe < 5; probe++)
            {
                // Threads of their own, released together (Parallel.For may run both iterations on one pool thread).
                using var start = new Barrier(threads + 1);
                var workers = Enumerable.Range(0, threads).Select(_ => new Thread(() => { start.SignalAndWait(); s_sink += Loop(Iterations); })).ToArray();
                foreach (Thread t in workers) t.Start();
                start.SignalAndWait();
                var clock = Stopwatch.StartNew();
                foreach (Thread t in workers) t.Join();
                samples.Add(threads * Iterations * 12.0 * 2 * Vector512<float>.Count / clock.Elapsed.TotalSeconds / 1e9);
            }
            samples.Sort();
            result[threads] = samples[samples.Count / 2];
        }
        return result;
    }

    public static string Describe(Dictionary<int, double> peak) =>
        "FMA peak (12 independent Vector512<float> FMA chains in registers, median of 5): " +
        string.Join("; ", peak.OrderBy(p => p.Key).Select(p => $"{p.Key} thread{(p.Key == 1 ? "" : "s")}: {p.Value:F0} GFLOP/s"));

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Loop(long n)
    {
        Vector512<float> x = Vector512.Create(1.0001f), y = Vector512.Create(0.9999f);
        Vector512<float> a0 = x, a1 = x, a2 = x, a3 = x, a4 = x, a5 = x, a6 = x, a7 = x, a8 = x, a9 = x, a10 = x, a11 = x;
        for (long i = 0; i < n; i++)
        {
            a0 = Vector512.FusedMultiplyAdd(a0, y, x); a1 = Vector512.FusedMultiplyAdd(a1, y, x);
            a2 = Vector512.FusedMultiplyAdd(a2, y, x); a3 = Vector512.FusedMultiplyAdd(a3, y, x);
            a4 = Vector512.FusedMultiplyAdd(a4, y, x); a5 = Vector512.FusedMultiplyAdd(a5, y, x);
            a6 = Vector512.FusedMultiplyAdd(a6, y, x); a7 = Vector512.FusedMultiplyAdd(a7, y, x);
            a8 = Vector512.FusedMultiplyAdd(a8, y, x); a9 = Vector512.FusedMultiplyAdd(a9, y, x);
            a10 = Vector512.FusedMultiplyAdd(a10, y, x); a11 = Vector512.FusedMultiplyAdd(a11, y, x);
        }
        return (a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11).ToScalar();
    }
}
