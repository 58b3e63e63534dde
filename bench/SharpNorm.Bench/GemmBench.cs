using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using SharpNorm.Kernels;
using TorchSharp;
using TorchTensor = TorchSharp.torch.Tensor;

namespace SharpNorm.Bench;

/// <summary>A product C[m x n] = op(A) · op(B) of the bench, and where it comes from.</summary>
internal sealed record GemmShape(string Name, string Source, int M, int N, int K, bool TransA = false, bool TransB = false)
{
    public double Flops => 2.0 * M * N * K;

    public string Sizes => $"{M}x{N}x{K}{(TransA ? " Aᵀ" : "")}{(TransB ? " Bᵀ" : "")}";

    /// <summary>
    /// Square products (the issue's "512 and larger"), the products DarkNetClassifier's convolutions issue at batch 128
    /// (im2col per image, Winograd per transform position over a range of 64 tiles, 1x1 per image; forward, dx, dW),
    /// and the im2col products of the darknet networks' 512- and 1024-filter layers at batch 1.
    /// </summary>
    public static GemmShape[] All(bool quick) => quick
        ? [new("512³", "square", 512, 512, 512), new("1024³", "square", 1024, 1024, 1024), new("conv 4 fwd", "CNN, Winograd position", 96, 64, 48),
           new("yolo 12", "darknet im2col", 1024, 169, 4608)]
        :
        [
            new("512³", "square", 512, 512, 512),
            new("1024³", "square", 1024, 1024, 1024),
            new("2048³", "square", 2048, 2048, 2048),
            new("conv 0 fwd", "CNN 1→48 3x3 28x28, im2col per image", 48, 784, 9),
            new("conv 0 dW", "CNN 1→48 3x3 28x28, im2col per image", 48, 9, 784, TransB: true),
            new("conv 4 fwd", "CNN 48→96 3x3 14x14, Winograd position", 96, 64, 48),
            new("conv 4 dx", "CNN 48→96 3x3 14x14, Winograd position", 48, 64, 96),
            new("conv 4 dW", "CNN 48→96 3x3 14x14, Winograd position", 96, 48, 64, TransB: true),
            new("conv 8 fwd", "CNN 96→192 3x3 7x7, Winograd position", 192, 64, 96),
            new("conv 8 dx", "CNN 96→192 3x3 7x7, Winograd position", 96, 64, 192),
            new("conv 8 dW", "CNN 96→192 3x3 7x7, Winograd position", 192, 96, 64, TransB: true),
            new("conv 11 fwd", "CNN 192→96 1x1 7x7, per image", 96, 49, 192),
            new("conv 11 dx", "CNN 192→96 1x1 7x7, per image", 192, 49, 96, TransA: true),
            new("conv 11 dW", "CNN 192→96 1x1 7x7, per image", 96, 192, 49, TransB: true),
            new("yolo 12", "YOLOv3-tiny 512→1024 3x3 13x13, im2col", 1024, 169, 4608),
            new("yolo 10", "YOLOv3-tiny 256→512 3x3 13x13, im2col", 512, 169, 2304),
            new("darknet19 12", "DarkNet-19 256→512 3x3 16x16, im2col", 512, 256, 2304),
            new("darknet19 18", "DarkNet-19 512→1024 3x3 8x8, im2col", 1024, 64, 4608),
            new("darknet19 23", "DarkNet-19 1024→1000 1x1 8x8", 1000, 64, 1024),
            new("yolo 12 winograd", "YOLOv3-tiny 512→1024 3x3 13x13 at batch 1, one Winograd position (16 tiles)", 1024, 16, 512),
            new("yolov1 12", "YOLOv1-tiny 512→1024 3x3 7x7 at batch 1, im2col", 1024, 49, 4608),
        ];
}

internal sealed record GemmRow(
    string Name, string Source, string Sizes, int Threads, double SharpMs, double SharpGflops, double SharpPeakShare,
    double? TorchMs, double? TorchGflops, double? TorchPeakShare, double? TimeRatio, double? NormwiseDifference, double[] SharpSamplesMs, double[]? TorchSamplesMs);

internal sealed record GemmReport(string TimestampUtc, MachineInfo Machine, bool Quick, int Runs, Dictionary<int, double> FmaPeakGflops, List<GemmRow> Rows,
    string LoadAverageStart, string LoadAverageEnd, double? OtherProcessesCores);

/// <summary>
/// bench/run.sh --gemm: SharpNorm's matrix product (Gemm&lt;float&gt;, A packed once and reused as a convolution's
/// weights are) against libtorch's (c.addmm_(a, b, beta 0), transposes as views) on the same operands, in turn within
/// one process, at each thread count; GFLOP/s as 2·m·n·k over the median time and as a share of the probed FMA peak.
/// </summary>
internal static class GemmBench
{
    public static int Run(Options options)
    {
        int cores = Environment.ProcessorCount;
        int[] threadCounts = options.Threads ?? (cores == 1 ? [1] : [1, cores]);
        int runs = options.RunsGiven ?? (options.Quick ? 7 : 15);
        var machine = new MachineInfo(
            Cpu: MachineInfo.CpuModel(), Cores: cores, DotNet: RuntimeInformation.FrameworkDescription, Os: RuntimeInformation.OSDescription,
            Vector512: System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated,
            TorchSharp: typeof(torch).Assembly.GetName().Version?.ToString() ?? "?", LibTorch: null);
        string? torchError = TorchRunner.TryInitialize();
        bool withTorch = torchError is null;
        machine = machine with { LibTorch = withTorch ? "loaded" : "unavailable: " + torchError };

        Console.WriteLine($"CPU: {machine.Cpu}, {cores} cores (Environment.ProcessorCount), Vector512 {(machine.Vector512 ? "accelerated" : "not accelerated")}");
        Console.WriteLine($".NET: {machine.DotNet} on {machine.Os}");
        Console.WriteLine(withTorch
            ? $"libtorch: TorchSharp {machine.TorchSharp} (TorchSharp-cpu 0.107.0, libtorch 2.10.0 CPU), float32, c.addmm_(a, b, beta: 0)"
            : $"libtorch unavailable ({torchError}); its columns are left out.");
        Console.WriteLine($"Timing: {runs} samples per side, sides in turn with a pause between (the other side's threads stop spinning); each sample times enough calls for about 20 ms; median ms per call" +
                          (options.Quick ? " [--quick]" : ""));
        string loadStart = CpuContention.LoadAverage();
        Console.Error.WriteLine("probing the FMA peak ...");
        Dictionary<int, double> peak = FmaPeak.Probe(threadCounts);
        Console.WriteLine(FmaPeak.Describe(peak));
        Console.WriteLine();

        var rows = new List<GemmRow>();
        var contention = new CpuContention();
        foreach (int threads in threadCounts)
        {
            if (withTorch) TorchRunner.SetThreads(threads);
            foreach (GemmShape shape in GemmShape.All(options.Quick))
            {
                Console.Error.WriteLine($"{threads} thread(s): {shape.Name} {shape.Sizes} ...");
                rows.Add(Measure(shape, threads, runs, withTorch, peak[threads]));
            }
        }
        double? other = contention.OtherCores();
        string loadEnd = CpuContention.LoadAverage();

        Console.WriteLine("### Matrix products, float32 (ms per call, GFLOP/s, share of the FMA peak at that thread count)");
        Console.WriteLine();
        Console.WriteLine("| product | from | m x n x k | thr | SharpNorm ms | GFLOP/s | % of peak | libtorch ms | GFLOP/s | % of peak | time ÷ libtorch's | ‖Δ‖/‖C‖ |");
        Console.WriteLine("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        foreach (GemmRow r in rows)
            Console.WriteLine($"| {r.Name} | {r.Source} | {r.Sizes} | {r.Threads} | {r.SharpMs:F3} | {r.SharpGflops:F0} | {100 * r.SharpPeakShare:F0} | " +
                              $"{Opt(r.TorchMs, "F3")} | {Opt(r.TorchGflops, "F0")} | {Opt(r.TorchPeakShare * 100, "F0")} | {Opt(r.TimeRatio, "F2")} | {Opt(r.NormwiseDifference, "E1")} |");
        Console.WriteLine();
        Console.WriteLine($"Load average at start {loadStart}, at end {loadEnd}; other processes' CPU use over the run: {(other is null ? "n/a" : $"{other:F2} cores on average")}.");
        if (options.JsonPath is not null)
        {
            Report.WriteJson(options.JsonPath, new GemmReport(DateTime.UtcNow.ToString("o", CultureInfo.InvariantCulture), machine, options.Quick, runs, peak, rows,
                loadStart, loadEnd, other));
            Console.Error.WriteLine($"wrote {options.JsonPath}");
        }
        // The two sides must compute the same product.
        return rows.All(r => r.NormwiseDifference is null || r.NormwiseDifference < 1e-5) ? 0 : 1;
    }

    private static string Opt(double? value, string format) => value is { } v ? v.ToString(format, CultureInfo.InvariantCulture) : "n/a";

    private static GemmRow Measure(GemmShape s, int threads, int runs, bool withTorch, double peak)
    {
        var random = new Random(s.M * 31 + s.N * 7 + s.K);
        float[] a = Uniform(random, s.M * s.K), b = Uniform(random, s.K * s.N), c = new float[s.M * s.N];
        int lda = s.TransA ? s.M : s.K, ldb = s.TransB ? s.K : s.N;
        var gemm = new Gemm<float> { MaxDegreeOfParallelism = threads };
        void Sharp() => gemm.Multiply(s.TransA, s.TransB, s.M, s.N, s.K, a, lda, b, ldb, c, s.N, accumulate: false, reusePackedA: true);

        TorchTensor? ta = null, tb = null, tc = null, opA = null, opB = null;
        if (withTorch)
        {
            ta = TorchCnn.FromArray(a, s.TransA ? [s.K, s.M] : [s.M, s.K]);
            tb = TorchCnn.FromArray(b, s.TransB ? [s.N, s.K] : [s.K, s.N]);
            tc = torch.zeros(s.M, s.N, torch.ScalarType.Float32);
            opA = s.TransA ? ta.t() : ta;
            opB = s.TransB ? tb.t() : tb;
        }
        void Torch() => tc!.addmm_(opA!, opB!, beta: 0, alpha: 1);
        try
        {
            // Calls per sample: about 20 ms of SharpNorm's time.
            Sharp();
            var probe = Stopwatch.StartNew();
            Sharp();
            int calls = (int)Math.Clamp(20.0 / Math.Max(probe.Elapsed.TotalMilliseconds, 1e-3), 1, 10_000);
            for (int i = 0; i < Math.Max(3, calls); i++) Sharp();
            if (withTorch) for (int i = 0; i < Math.Max(3, calls); i++) Torch();

            double[] sharpMs = new double[runs], torchMs = new double[runs];
            for (int r = 0; r < runs; r++)
            {
                CnnBench.Pause(afterTorch: true);
                sharpMs[r] = Time(Sharp, calls);
                if (!withTorch) continue;
                CnnBench.Pause(afterTorch: false);
                torchMs[r] = Time(Torch, calls);
            }
            double sharp = new Sample(sharpMs).Median, sharpGflops = s.Flops / sharp / 1e6;
            if (!withTorch)
                return new GemmRow(s.Name, s.Source, s.Sizes, threads, sharp, sharpGflops, sharpGflops / peak, null, null, null, null, null, sharpMs, null);
            double torchMedian = new Sample(torchMs).Median, torchGflops = s.Flops / torchMedian / 1e6;
            Sharp();
            Torch();
            float[] reference = tc!.data<float>().ToArray();
            double diff = 0, norm = 0;
            for (int i = 0; i < c.Length; i++)
            {
                diff += (double)(c[i] - reference[i]) * (c[i] - reference[i]);
                norm += (double)reference[i] * reference[i];
            }
            return new GemmRow(s.Name, s.Source, s.Sizes, threads, sharp, sharpGflops, sharpGflops / peak, torchMedian, torchGflops, torchGflops / peak,
                sharp / torchMedian, Math.Sqrt(diff / Math.Max(norm, double.Epsilon)), sharpMs, torchMs);
        }
        finally
        {
            if (opA is not null && !ReferenceEquals(opA, ta)) opA.Dispose();
            if (opB is not null && !ReferenceEquals(opB, tb)) opB.Dispose();
            ta?.Dispose();
            tb?.Dispose();
            tc?.Dispose();
        }
    }

    private static double Time(Action call, int calls)
    {
        long start = Stopwatch.GetTimestamp();
        for (int i = 0; i < calls; i++) call();
        return Stopwatch.GetElapsedTime(start).TotalMilliseconds / calls;
    }

    private static float[] Uniform(Random random, int length)
    {
        var values = new float[length];
        for (int i = 0; i < length; i++) values[i] = (float)(random.NextDouble() * 2 - 1);
        return values;
    }
}
