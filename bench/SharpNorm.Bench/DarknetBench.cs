using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using SharpNorm.Darknet;
using SharpNorm.Onnx;
using SharpNorm.Tools;
using TorchSharp;
using TorchTensor = TorchSharp.torch.Tensor;

namespace SharpNorm.Bench;

internal sealed record DarknetTimingRow(
    string Network, string Input, double Bflops, string Side, int Threads, int Runs, double MedianMs, double P10Ms, double P90Ms,
    double? LibTorchOverSide, double[] SamplesMs);

internal sealed record DarknetCheckRow(
    string Network, int Layer, string Type, string Shape, double FoldedVsLibTorch, double UnfusedVsLibTorch, double? FoldedVsFloat64,
    double? LibTorchVsFloat64, string Verdict, double? OnnxRuntimeVsLibTorch = null);

internal sealed record DarknetReport(
    string TimestampUtc, MachineInfo Machine, bool Quick, int Threads, int Warmup, int Runs, int WeightsSeed, int InputSeed,
    List<DarknetTimingRow> Timings, List<DarknetCheckRow> Checks, string LoadAverageStart, string LoadAverageEnd, double? OtherProcessesCores,
    Dictionary<int, double> FmaPeakGflops);

/// <summary>
/// bench/run.sh --darknet: inference latency of whole darknet networks, batch 1 at the cfg's own size: SharpNorm's
/// DarknetNetwork with batch norm folded into the convolutions (the default) and unfused, and the same network in
/// libtorch (tools/DarknetTorch/TorchDarknet.cs under no_grad, default backends: oneDNN on), all three from the same
/// random weights on the same input, run in turn (folded, unfused, libtorch, ...) so that other load meets them alike.
/// Each output layer is checked: normwise ||SharpNorm - libtorch|| / ||libtorch|| must stay below 1e-4; both are also
/// compared with libtorch in float64 (mkldnn plays no part there), which tells which side is off if they disagree.
/// One more side: ONNX Runtime on the folded network's graph exported by SharpNorm.Onnx (opset 17, all graph optimizations, the same intra-op threads, no spinning between runs).
/// </summary>
internal static class DarknetBench
{
    private const int WeightsSeed = 1, InputSeed = 2;
    private const double Tolerance = 1e-4;

    public static int Run(Options options)
    {
        int cores = Environment.ProcessorCount;
        if (options.Threads is { Length: > 1 }) throw new ArgumentException("--darknet takes one thread count.");
        int threads = options.Threads?[0] ?? cores;
        int warmup = options.WarmupGiven ?? (options.Quick ? 3 : 10);
        int runs = Math.Max(20, options.RunsGiven ?? (options.Quick ? 20 : 50));

        List<(string Name, string Path)> networks;
        try
        {
            networks = options.Cfg is not null
                ? [(Path.GetFileNameWithoutExtension(options.Cfg), File.Exists(options.Cfg) ? options.Cfg : throw new FileNotFoundException($"--cfg {options.Cfg}: no such file."))]
                : [("yolov3-tiny", DefaultCfg("yolov3-tiny.cfg")), ("darknet19", DefaultCfg("darknet19.cfg"))];
        }
        catch (FileNotFoundException e)
        {
            Console.Error.WriteLine(e.Message);
            return 1;
        }

        var machine = new MachineInfo(
            Cpu: MachineInfo.CpuModel(), Cores: cores, DotNet: RuntimeInformation.FrameworkDescription, Os: RuntimeInformation.OSDescription,
            Vector512: System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated,
            TorchSharp: typeof(torch).Assembly.GetName().Version?.ToString() ?? "?", LibTorch: null);
        string? mallocNote = null;
        if (options.MallocReuse)
        {
            string? why = TorchRunner.KeepFreedMemoryInHeap();
            mallocNote = why is null ? "glibc malloc: M_MMAP_MAX 0, M_TRIM_THRESHOLD max (--malloc-reuse)" : $"--malloc-reuse failed: {why}";
        }
        string? torchError = TorchRunner.TryInitialize();
        bool withTorch = torchError is null;
        bool mkldnn = withTorch && TorchDarknet.MkldnnEnabled;
        machine = machine with { LibTorch = withTorch ? "loaded" : "unavailable: " + torchError, Malloc = mallocNote ?? "defaults" };
        if (withTorch) TorchRunner.SetThreads(threads);

        Console.WriteLine($"CPU: {machine.Cpu}, {cores} cores (Environment.ProcessorCount), Vector512 {(machine.Vector512 ? "accelerated" : "not accelerated")}");
        Console.WriteLine($".NET: {machine.DotNet} on {machine.Os}");
        Console.WriteLine(withTorch
            ? $"libtorch: TorchSharp {machine.TorchSharp} (TorchSharp-cpu 0.107.0, libtorch 2.10.0 CPU), float32, no_grad, mkldnn (oneDNN) {(mkldnn ? "on" : "off")} as shipped"
            : $"libtorch unavailable ({torchError}); its rows are left out.");
        Console.WriteLine(mallocNote ?? "glibc malloc: defaults (libtorch's large activations come as fresh mmap-ed pages on every run; --malloc-reuse keeps freed memory in the heap)");
        Console.WriteLine($"Networks: {string.Join(", ", networks.Select(n => $"{n.Name} ({n.Path})"))}; batch 1 at each cfg's own size; " +
                          $"random weights (DarknetWeightsFile.Random, seed {WeightsSeed}) and input (uniform [0, 1), seed {InputSeed}) shared by all sides.");
        Console.WriteLine($"Timing: {runs} timed runs per side after {warmup} warm-up runs, sides in turn (ONNX Runtime, folded, unfused, libtorch) with a short untimed pause " +
                          $"between them; median, p10, p90 of the per-run Stopwatch ms; {threads} thread(s) (SharpNorm MaxDegreeOfParallelism, torch.set_num_threads)" +
                          (options.Quick ? " [--quick]" : ""));
        string loadStart = CpuContention.LoadAverage();
        Console.WriteLine($"Load average at start: {loadStart}");
        Console.Error.WriteLine("probing the FMA peak ...");
        Dictionary<int, double> peak = FmaPeak.Probe([threads]);
        Console.WriteLine(FmaPeak.Describe(peak) + $"; per-layer tables give GFLOP/s as a share of the {threads}-thread peak.");
        Console.WriteLine();

        var timings = new List<DarknetTimingRow>();
        var checks = new List<DarknetCheckRow>();
        var profiles = new List<(string Network, (DarknetLayerInfo Layer, double Ms)[] Layers)>();
        var contention = new CpuContention();
        foreach (var (name, path) in networks)
        {
            Console.Error.WriteLine($"{name}: building ...");
            IReadOnlyList<DarknetSection> sections = DarknetConfig.ReadFile(path);
            IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
            DarknetWeights weights = DarknetWeightsFile.Random(layers, WeightsSeed);
            var folded = DarknetNetwork.Build(sections, weights, new DarknetNetworkOptions { FoldBatchNorm = true, MaxDegreeOfParallelism = threads });
            var unfused = DarknetNetwork.Build(sections, weights, new DarknetNetworkOptions { FoldBatchNorm = false, MaxDegreeOfParallelism = threads });
            nint[] inputShape = [1, folded.InputChannels, folded.InputHeight, folded.InputWidth];
            using var sessionOptions = new SessionOptions { IntraOpNumThreads = threads, InterOpNumThreads = 1, ExecutionMode = ExecutionMode.ORT_SEQUENTIAL };
            // ONNX Runtime's pool spins between runs by default, taking a core from whichever side runs next.
            sessionOptions.AddSessionConfigEntry("session.intra_op.allow_spinning", "0");
            using var session = new InferenceSession(OnnxExport.ToBytes(folded.Graph, inputShape, new OnnxExportOptions { InputName = "image" }), sessionOptions);
            string[] ortOutputs = [.. session.OutputNames];
            using TorchDarknet? reference = withTorch ? new TorchDarknet(sections, layers, weights) : null;
            var random = new Random(InputSeed);
            float[] input = Enumerable.Range(0, folded.InputChannels * folded.InputHeight * folded.InputWidth).Select(_ => (float)random.NextDouble()).ToArray();
            using TorchTensor? torchInput = withTorch ? torch.tensor(input, [1, folded.InputChannels, folded.InputHeight, folded.InputWidth], torch.ScalarType.Float32).clone() : null;
            string shape = $"{folded.InputChannels}x{folded.InputHeight}x{folded.InputWidth}";
            using var ortInput = OrtValue.CreateTensorValueFromMemory(input, inputShape.Select(d => (long)d).ToArray());
            using var runOptions = new RunOptions();
            double bflops = layers.Sum(l => l.Bflops);

            Console.Error.WriteLine($"{name}: timing ...");
            double[] foldedMs = new double[runs], unfusedMs = new double[runs], torchMs = new double[runs], ortMs = new double[runs];
            for (int i = -warmup; i < runs; i++)
            {
                long begin = Stopwatch.GetTimestamp();
                using (IDisposableReadOnlyCollection<OrtValue> results = session.Run(runOptions, ["image"], [ortInput], ortOutputs))
                {
                    double ortTime = Stopwatch.GetElapsedTime(begin).TotalMilliseconds;
                    if (i >= 0) ortMs[i] = ortTime;
                }
                CnnBench.Pause(afterTorch: true);

                long start = Stopwatch.GetTimestamp();
                folded.Forward(input, 1);
                double ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                if (i >= 0) foldedMs[i] = ms;
                CnnBench.Pause(afterTorch: false);

                start = Stopwatch.GetTimestamp();
                unfused.Forward(input, 1);
                ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                if (i >= 0) unfusedMs[i] = ms;
                CnnBench.Pause(afterTorch: false);

                if (reference is null) continue;
                start = Stopwatch.GetTimestamp();
                TorchTensor[] outputs = reference.Forward(torchInput!);
                ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                foreach (TorchTensor t in outputs) t.Dispose();
                if (i >= 0) torchMs[i] = ms;
                CnnBench.Pause(afterTorch: true);
            }
            // Where the folded network's time goes: each layer's share over further runs.
            var ticks = new long[layers.Count];
            folded.LayerTicks = ticks;
            for (int i = 0; i < runs; i++) folded.Forward(input, 1);
            folded.LayerTicks = null;
            profiles.Add((name, layers.Select(l => (l, ticks[l.Index] * 1000.0 / Stopwatch.Frequency / runs)).ToArray()));

            double? torchMedian = reference is null ? null : new Sample(torchMs).Median;
            timings.Add(Row(name, shape, bflops, "SharpNorm, folded batch norm", threads, foldedMs, torchMedian));
            timings.Add(Row(name, shape, bflops, "SharpNorm, unfused batch norm", threads, unfusedMs, torchMedian));
            timings.Add(Row(name, shape, bflops, "ONNX Runtime 1.32 on SharpNorm's export (folded)", threads, ortMs, torchMedian));
            if (reference is not null) timings.Add(Row(name, shape, bflops, $"libtorch (no_grad{(mkldnn ? ", oneDNN" : "")})", threads, torchMs, torchMedian));

            if (reference is null) continue;
            Console.Error.WriteLine($"{name}: checking outputs (and libtorch in float64) ...");
            folded.Forward(input, 1);
            unfused.Forward(input, 1);
            float[][] torchOutputs = reference.Forward(input, 1);
            float[][]? exact = null;
            using (var reference64 = new TorchDarknet(sections, layers, weights, dtype: torch.ScalarType.Float64))
                exact = reference64.Forward(input, 1);
            using IDisposableReadOnlyCollection<OrtValue> ortResults = session.Run(runOptions, ["image"], [ortInput], ortOutputs);
            for (int k = 0; k < folded.OutputLayers.Count; k++)
            {
                int layer = folded.OutputLayers[k];
                DarknetLayerInfo info = layers[layer];
                double foldedError = TorchDarknet.Normwise(folded.Output(layer), torchOutputs[layer]), unfusedError = TorchDarknet.Normwise(unfused.Output(layer), torchOutputs[layer]);
                double ortError = TorchDarknet.Normwise(ortResults[k].GetTensorDataAsSpan<float>(), torchOutputs[layer]);
                double? folded64 = exact is null ? null : TorchDarknet.Normwise(folded.Output(layer), exact[layer]);
                double? torch64 = exact is null ? null : TorchDarknet.Normwise(torchOutputs[layer], exact[layer]);
                string verdict = foldedError < Tolerance && unfusedError < Tolerance && ortError < Tolerance ? "ok" : "FAIL";
                checks.Add(new DarknetCheckRow(name, layer, info.Type, $"{info.Channels}x{info.Height}x{info.Width}", foldedError, unfusedError, folded64, torch64, verdict, ortError));
            }
            // Every layer as well (a softmax over 1000 near-equal scores would hide errors before it): the worst of each.
            (double Error, int Layer) worstFolded = (0, -1), worstUnfused = (0, -1);
            foreach (DarknetLayerInfo info in layers)
            {
                double f = TorchDarknet.Normwise(folded.Output(info.Index), torchOutputs[info.Index]), u = TorchDarknet.Normwise(unfused.Output(info.Index), torchOutputs[info.Index]);
                if (!(f <= worstFolded.Error)) worstFolded = (f, info.Index);
                if (!(u <= worstUnfused.Error)) worstUnfused = (u, info.Index);
            }
            checks.Add(new DarknetCheckRow(name, -1, $"worst of all {layers.Count} layers: {worstFolded.Layer} folded, {worstUnfused.Layer} unfused", "",
                worstFolded.Error, worstUnfused.Error, null, null, worstFolded.Error < Tolerance && worstUnfused.Error < Tolerance ? "ok" : "FAIL"));
            GC.Collect();
        }
        double? other = contention.OtherCores();
        string loadEnd = CpuContention.LoadAverage();

        Console.WriteLine($"### Darknet inference, batch 1, {threads} thread(s)");
        Console.WriteLine();
        Console.WriteLine("| network | input | BFLOPs | side | median ms | p10 ms | p90 ms | libtorch ÷ side |");
        Console.WriteLine("|---|---|---:|---|---:|---:|---:|---:|");
        foreach (DarknetTimingRow r in timings)
            Console.WriteLine($"| {r.Network} | {r.Input} | {r.Bflops:F2} | {r.Side} | {r.MedianMs:F2} | {r.P10Ms:F2} | {r.P90Ms:F2} | {(r.LibTorchOverSide is { } x ? $"{x:F2}" : "n/a")} |");
        Console.WriteLine();
        if (checks.Count > 0)
        {
            Console.WriteLine($"### Output checks (normwise ||a - b|| / ||b||; SharpNorm against libtorch must be below {Tolerance:0e0})");
            Console.WriteLine();
            Console.WriteLine("| network | layer | output | folded vs libtorch | unfused vs libtorch | ONNX Runtime vs libtorch | folded vs libtorch float64 | libtorch vs libtorch float64 | verdict |");
            Console.WriteLine("|---|---:|---|---:|---:|---:|---:|---:|---|");
            foreach (DarknetCheckRow c in checks)
                Console.WriteLine($"| {c.Network} | {(c.Layer >= 0 ? $"{c.Layer} ({c.Type})" : c.Type)} | {c.Shape} | {c.FoldedVsLibTorch:E2} | {c.UnfusedVsLibTorch:E2} | {Format(c.OnnxRuntimeVsLibTorch)} | {Format(c.FoldedVsFloat64)} | {Format(c.LibTorchVsFloat64)} | {c.Verdict} |");
            Console.WriteLine();
        }
        foreach (var (network, profile) in profiles)
        {
            double total = profile.Sum(p => p.Ms);
            Console.WriteLine($"### {network}: SharpNorm (folded) per layer, mean of {runs} runs, {total:F2} ms in all");
            Console.WriteLine();
            Console.WriteLine("| # | layer | details | output | ms | share | GFLOP/s | % of FMA peak |");
            Console.WriteLine("|--:|---|---|---|--:|--:|--:|--:|");
            foreach (var (layer, ms) in profile)
                Console.WriteLine($"| {layer.Index} | {layer.Type} | {layer.Details} | {layer.Channels}x{layer.Height}x{layer.Width} | {ms:F3} | {100 * ms / total:F1} % | " +
                                  $"{(layer.Bflops > 0 ? $"{layer.Bflops / ms * 1e3:F0} | {100 * layer.Bflops / ms * 1e3 / peak[threads]:F0}" : " | ")} |");
            Console.WriteLine();
        }
        Console.WriteLine($"Load average at start {loadStart}, at end {loadEnd}; other processes' CPU use over the run: {(other is null ? "n/a" : $"{other:F2} cores on average")}.");

        if (options.JsonPath is not null)
        {
            Report.WriteJson(options.JsonPath, new DarknetReport(
                DateTime.UtcNow.ToString("o", CultureInfo.InvariantCulture), machine, options.Quick, threads, warmup, runs, WeightsSeed, InputSeed,
                timings, checks, loadStart, loadEnd, other, peak));
            Console.Error.WriteLine($"wrote {options.JsonPath}");
        }
        return checks.All(c => c.Verdict == "ok") ? 0 : 1;
    }

    private static string Format(double? value) => value is { } v ? v.ToString("E2", CultureInfo.InvariantCulture) : "n/a";

    private static DarknetTimingRow Row(string network, string input, double bflops, string side, int threads, double[] ms, double? torchMedian)
    {
        var sample = new Sample(ms);
        return new DarknetTimingRow(network, input, bflops, side, threads, ms.Length, sample.Median, Percentile(ms, 0.1), Percentile(ms, 0.9),
            torchMedian / sample.Median, ms);
    }

    /// <summary>Linear interpolation between the closest ranks (numpy's default).</summary>
    private static double Percentile(double[] values, double p)
    {
        double[] sorted = values.Order().ToArray();
        double rank = p * (sorted.Length - 1);
        int low = (int)Math.Floor(rank), high = Math.Min(low + 1, sorted.Length - 1);
        return sorted[low] + (rank - low) * (sorted[high] - sorted[low]);
    }


    /// <summary>
    /// ../shared/darknet/cfg/NAME beside the repository (the darknet cfgs as published), else the tests' copy
    /// tests/SharpNorm.Tests/Darknet/cfg/NAME.
    /// </summary>
    private static string DefaultCfg(string name)
    {
        for (DirectoryInfo? d = new(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (!File.Exists(Path.Combine(d.FullName, "SharpNorm.sln"))) continue;
            string shared = Path.GetFullPath(Path.Combine(d.FullName, "..", "shared", "darknet", "cfg", name));
            if (File.Exists(shared)) return shared;
            string tests = Path.Combine(d.FullName, "tests", "SharpNorm.Tests", "Darknet", "cfg", name);
            if (File.Exists(tests)) return tests;
            break;
        }
        throw new FileNotFoundException($"{name}: not in ../shared/darknet/cfg beside the repository nor in tests/SharpNorm.Tests/Darknet/cfg; give --cfg PATH.");
    }
}
