// SharpNorm.Bench: SharpNorm vs libtorch (TorchSharp) side by side in one process, plus the chain-rule backward
// and a memory-bandwidth floor. Run through bench/run.sh (it sets up LD_PRELOAD so TorchSharp loads on Debian 12).
//
//   bench/run.sh [--quick] [--json PATH] [--filter TEXT] [--threads 1,2] [--warmup N] [--runs N]
//                [--malloc-reuse] [--wait-idle SECONDS]        (--help lists them)
//   bench/run.sh --cnn [--threads N] [--quick] [--json PATH]   the CNN benchmark (CnnBench.cs)
//   bench/run.sh --darknet [--cfg PATH] [--threads N] [--quick]  darknet inference latency (DarknetBench.cs)
//   bench/run.sh --gemm [--threads LIST] [--quick]               the matrix product against libtorch's (GemmBench.cs)

using System.Globalization;
using System.Runtime.InteropServices;
using SharpNorm.Bench;

CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;

Options options;
try
{
    options = Options.Parse(args);
}
catch (ArgumentException e)
{
    Console.Error.WriteLine(e.Message);
    Console.Error.WriteLine(Options.Usage);
    return 2;
}
if (options.Help)
{
    Console.WriteLine(Options.Usage);
    return 0;
}
if (options.Cnn) return CnnBench.Run(options);
if (options.Darknet) return DarknetBench.Run(options);
if (options.Gemm) return GemmBench.Run(options);

var cases = BenchCase.All(options.Quick)
    .Where(c => options.Filter is null || c.Name.Contains(options.Filter, StringComparison.OrdinalIgnoreCase))
    .ToList();
if (cases.Count == 0)
{
    Console.Error.WriteLine($"No case matches --filter \"{options.Filter}\". Cases: {string.Join("; ", BenchCase.All(false).Select(c => c.Name))}");
    return 2;
}

int cores = Environment.ProcessorCount;
int[] threadCounts = options.Threads ?? (cores > 1 ? [1, cores] : [1]);

var machine = new MachineInfo(
    Cpu: MachineInfo.CpuModel(),
    Cores: cores,
    DotNet: RuntimeInformation.FrameworkDescription,
    Os: RuntimeInformation.OSDescription,
    Vector512: System.Runtime.Intrinsics.Vector512.IsHardwareAccelerated,
    TorchSharp: typeof(TorchSharp.torch).Assembly.GetName().Version?.ToString() ?? "?",
    LibTorch: null);

string? mallocNote = null;
if (options.MallocReuse)
{
    string? why = TorchRunner.KeepFreedMemoryInHeap();
    mallocNote = why is null ? "glibc malloc: M_MMAP_MAX 0, M_TRIM_THRESHOLD max (--malloc-reuse)" : $"--malloc-reuse failed: {why}";
}

// libtorch: the first use loads the native library; if that fails, report it once and leave its columns blank.
string? torchError = TorchRunner.TryInitialize();
machine = machine with { LibTorch = torchError is null ? "loaded" : "unavailable: " + torchError, Malloc = mallocNote ?? "defaults" };

Console.WriteLine($"CPU: {machine.Cpu}, {cores} cores (Environment.ProcessorCount), Vector512 {(machine.Vector512 ? "accelerated" : "not accelerated")}");
Console.WriteLine($".NET: {machine.DotNet} on {machine.Os}");
Console.WriteLine(torchError is null
    ? $"libtorch: TorchSharp {machine.TorchSharp} (TorchSharp-cpu 0.107.0, libtorch 2.10.0 CPU)"
    : $"libtorch unavailable ({torchError}); its columns are left blank.");
Console.WriteLine(mallocNote ?? "glibc malloc: defaults (libtorch mmaps blocks over its dynamic threshold, at most 32 MiB, afresh on each call; see --malloc-reuse)");
Console.WriteLine($"Timing: median of {options.Runs} timed runs (Stopwatch per run) after {options.Warmup} warm-up runs lasting {Timing.WarmupMs} ms at least; " +
                  $"SharpNorm's runs, then libtorch's once SharpNorm's threads are idle (and the reverse before the next op); float32, threads {string.Join(", ", threadCounts)}" +
                  (options.Quick ? " [--quick]" : ""));

if (options.WaitIdleSeconds > 0)
{
    Console.Error.WriteLine($"waiting up to {options.WaitIdleSeconds} s for the CPUs to be idle ...");
    double? other = CpuContention.WaitForIdle(options.WaitIdleSeconds);
    Console.Error.WriteLine($"other processes now use {(other is null ? "n/a" : $"{other:F2}")} cores");
}
Console.WriteLine($"Load average at start: {CpuContention.LoadAverage()} (other processes' CPU use during each case is listed under Checks; the machine should be otherwise idle)");
var runContention = new CpuContention();
Console.Error.WriteLine("probing memory bandwidth ...");
var bandwidth = Bandwidth.Probe(threadCounts, options.Quick);
Console.WriteLine("Bandwidth (256 MiB float array, median): " + string.Join("; ",
    threadCounts.Select(t => $"{t} thread{(t == 1 ? "" : "s")}: read {bandwidth.Read[t].GBs:F1} GB/s, write {bandwidth.Write[t].GBs:F1} GB/s")));
Console.WriteLine("Floor = readBytes/readBW + writeBytes/writeBW with n = bytes of x: train fwd reads 2n, writes n; " +
                  "train fwd+bwd reads 6n, writes 2n; eval fwd reads n, writes n; LayerNorm/RMSNorm (each row's passes " +
                  "back to back, the row assumed to stay in cache): train and eval fwd read n, write n; fwd+bwd reads 3n, writes 2n. " +
                  "GB/s counts those bytes. bwd = SharpNorm Backward+Gradient alone; chain = ChainRuleBackward (1 thread), " +
                  "ratio chain/bwd at 1 thread (none for RMSNorm: no mean subtracted).");
Console.WriteLine();

Console.Error.WriteLine("warming up the JIT on small inputs ...");
CaseRunner.WarmUpJit(cases, threadCounts, options, bandwidth);

var rows = new List<ResultRow>();
var checks = new List<CaseCheck>();
foreach (var benchCase in cases)
{
    Console.Error.WriteLine($"{benchCase.Name} ...");
    using (var runner = new CaseRunner(benchCase, options, bandwidth, torchError is null))
    {
        var contention = new CpuContention();
        CaseCheck check = runner.Check();
        foreach (int threads in threadCounts)
            rows.AddRange(runner.Measure(threads));
        checks.Add(check with { OtherProcessesCores = contention.OtherCores() });
    }
    GC.Collect();
    GC.WaitForPendingFinalizers();
    GC.Collect();
}

Report.PrintTable(Console.Out, rows);
Console.WriteLine();
Report.PrintChecks(Console.Out, checks);
double? otherCores = runContention.OtherCores();
Console.WriteLine($"Other processes' CPU use over the whole run: {(otherCores is null ? "n/a" : $"{otherCores:F2} cores on average")}.");

if (options.JsonPath is not null)
{
    Report.WriteJson(options.JsonPath, new BenchReport(
        DateTime.UtcNow.ToString("o", CultureInfo.InvariantCulture), machine, options.Quick, options.Warmup, options.Runs,
        threadCounts, bandwidth.ToJson(), rows, checks, otherCores));
    Console.Error.WriteLine($"wrote {options.JsonPath}");
}
return 0;
