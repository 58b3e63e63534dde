namespace SharpNorm.Bench;

internal sealed record Options(bool Quick, string? JsonPath, string? Filter, int[]? Threads, int Warmup, int Runs, int WaitIdleSeconds, bool MallocReuse, bool Help,
    bool Cnn = false, int? WarmupGiven = null, int? RunsGiven = null, bool Darknet = false, string? Cfg = null,
    SharpNorm.Layers.ConvAlgorithm ConvAlgorithm = SharpNorm.Layers.ConvAlgorithm.Auto, string Network = "default", bool Unfused = false, bool Gemm = false, bool Grouped = false)
{
    public const string Usage =
        """
        usage: bench/run.sh [options]
          --quick          few runs (3 warm-up, 5 timed) on a subset of cases: a smoke run under a minute
          --json PATH      also write every measurement, raw samples included, as JSON
          --filter TEXT    only the cases whose name contains TEXT (case-insensitive), e.g. InstanceNorm, 56x56, GroupNorm, LayerNorm, RMSNorm, channels-last
          --threads LIST   thread counts to run, e.g. 1 or 1,2 (default: 1 and Environment.ProcessorCount)
          --warmup N       warm-up runs per measurement (default 5; --quick 3)
          --runs N         timed runs per measurement, median reported (default 15; --quick 5)
          --malloc-reuse   keep freed memory in glibc's heap (no mmap for large blocks): libtorch then reuses its
                           output buffers instead of faulting in fresh pages on every call (tensors > 32 MiB)
          --wait-idle S    first wait up to S seconds for other processes to leave the CPUs idle (shared machines)

        usage: bench/run.sh --cnn [--threads N] [--quick] [--json PATH] [--warmup N] [--runs N] [--malloc-reuse] [--wait-idle S] [--unfused] [--grouped]
          --cnn            the CNN benchmark instead: SharpNorm's DarkNet-style Fashion-MNIST classifier and the same
                           network in libtorch, trained side by side from equal weights on the same batches (ms per
                           step, images/s, projected epoch time), eval throughput on the test set, and each of its
                           convolutions alone (GFLOP/s forward and backward), with output checks between the two.
                           --threads: thread counts (default Environment.ProcessorCount); --warmup/--runs: warm-up
                           and timed training steps (default 5 and 20, --quick 5 and 10; conv layers: --runs or 15,
                           --quick 10, at least 10)
          --network untuned  a network the kernels were not tuned on instead (another DarkNet-style stack, 40x40
                           inputs: the images zero-padded, batch 64); training, eval and its convolutions alone
          --conv-algorithm auto|im2col   SharpNorm's convolutions: Conv2d's default choice (Winograd for the 3x3 layers
                           with 16+ channels) or im2col products everywhere
          --unfused        SharpNorm's Conv2d -> BatchNorm -> LeakyReLU runs as three layers (Sequential.FuseConvBatchNorm
                           off) instead of the fused block
          --grouped        also time grouped convolutions alone: MobileNet v1's depthwise 3x3 layers and 32 groups of 4
                           channels, batch 16 (checked against libtorch like the network's)

        usage: bench/run.sh --darknet [--cfg PATH] [--threads N] [--quick] [--json PATH] [--warmup N] [--runs N] [--malloc-reuse]
          --darknet        darknet inference latency (DarknetBench.cs): DarknetNetwork with folded batch norm, unfused,
                           and the same network in libtorch (tools/DarknetTorch/TorchDarknet.cs, no_grad, eval), batch 1
                           at the cfg's own size, random weights (seed 1) shared by all three; median, p10 and p90 ms,
                           ratio libtorch / SharpNorm, and each output layer's normwise difference ||a-b||/||b|| to
                           libtorch (and of both to libtorch in float64), which must stay below 1e-4.
                           Default networks: yolov3-tiny (416x416) and darknet19 (224x224) from ../shared/darknet/cfg
                           beside the repository, else tests/SharpNorm.Tests/Darknet/cfg.
          --cfg PATH       that cfg alone instead (at its own [net] size)
                           --threads: thread count (default Environment.ProcessorCount); --warmup/--runs: warm-up and
                           timed runs per side (default 10 and 50, --quick 3 and 20; at least 20 timed)

        usage: bench/run.sh --gemm [--threads LIST] [--quick] [--json PATH] [--runs N]
          --gemm           the matrix product alone (GemmBench.cs): Gemm<float> against libtorch's addmm_ on the same
                           operands, square products from 512³ to 2048³, the products the CNN's convolutions issue and
                           the darknet networks' largest; ms, GFLOP/s and share of the FMA peak, time ratio, and the
                           normwise difference of the two results. --threads: default 1 and Environment.ProcessorCount
        """;

    public static Options Parse(string[] args)
    {
        bool quick = false, help = false, mallocReuse = false, cnn = false, darknet = false, unfused = false, gemm = false, grouped = false;
        string? json = null, filter = null, cfg = null;
        var algorithm = SharpNorm.Layers.ConvAlgorithm.Auto;
        bool algorithmGiven = false;
        string network = "default";
        int[]? threads = null;
        int? warmup = null, runs = null;
        int waitIdle = 0;
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--quick": quick = true; break;
                case "--cnn": cnn = true; break;
                case "--darknet": darknet = true; break;
                case "--gemm": gemm = true; break;
                case "--cfg": cfg = Value(); break;
                case "--network":
                    network = Value() is "default" or "untuned" ? args[i] : throw new ArgumentException($"--network takes default or untuned, got '{args[i]}'.");
                    break;
                case "--conv-algorithm":
                    algorithmGiven = true;
                    algorithm = Value() switch
                    {
                        "auto" => SharpNorm.Layers.ConvAlgorithm.Auto,
                        "im2col" => SharpNorm.Layers.ConvAlgorithm.Im2ColGemm,
                        string other => throw new ArgumentException($"--conv-algorithm takes auto or im2col, got '{other}'."),
                    };
                    break;
                case "--malloc-reuse": mallocReuse = true; break;
                case "--unfused": unfused = true; break;
                case "--grouped": grouped = true; break;
                case "--json": json = Value(); break;
                case "--filter": filter = Value(); break;
                case "--threads":
                    threads = Value().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                        .Select(s => int.TryParse(s, out int t) && t > 0 ? t : throw new ArgumentException($"bad thread count '{s}'."))
                        .Distinct().ToArray();
                    if (threads.Length == 0) throw new ArgumentException("--threads needs at least one count.");
                    break;
                case "--warmup": warmup = PositiveInt(Value(), "--warmup", allowZero: true); break;
                case "--runs": runs = PositiveInt(Value(), "--runs", allowZero: false); break;
                case "--wait-idle": waitIdle = PositiveInt(Value(), "--wait-idle", allowZero: true); break;
                case "-h" or "--help": help = true; break;
                default: throw new ArgumentException($"unknown argument '{args[i]}'.");
            }
        }
        if (cnn && filter is not null) throw new ArgumentException("--filter does not apply to --cnn.");
        if (darknet && (cnn || filter is not null)) throw new ArgumentException("--darknet does not combine with --cnn or --filter.");
        if (unfused && !cnn) throw new ArgumentException("--unfused applies to --cnn only.");
        if (algorithmGiven && !cnn) throw new ArgumentException("--conv-algorithm applies to --cnn only.");
        if (grouped && !cnn) throw new ArgumentException("--grouped applies to --cnn only.");
        if (cfg is not null && !darknet) throw new ArgumentException("--cfg applies to --darknet only.");
        if (gemm && (cnn || darknet || filter is not null)) throw new ArgumentException("--gemm does not combine with --cnn, --darknet or --filter.");
        return new Options(quick, json, filter, threads, warmup ?? (quick ? 3 : 5), runs ?? (quick ? 5 : 15), waitIdle, mallocReuse, help,
            cnn, warmup, runs, darknet, cfg, algorithm, network, unfused, gemm, grouped);
    }

    private static int PositiveInt(string s, string name, bool allowZero) =>
        int.TryParse(s, out int v) && (v > 0 || (allowZero && v == 0)) ? v : throw new ArgumentException($"{name} needs a {(allowZero ? "non-negative" : "positive")} integer, got '{s}'.");
}

internal sealed record MachineInfo(string Cpu, int Cores, string DotNet, string Os, bool Vector512, string TorchSharp, string? LibTorch, string? Malloc = null)
{
    public static string CpuModel()
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith("model name", StringComparison.Ordinal))
                    return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return "unknown (no /proc/cpuinfo model name)";
    }
}
