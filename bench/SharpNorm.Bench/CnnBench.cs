using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using SharpNorm.Data;
using SharpNorm.Layers;
using SharpNorm.Models;
using TorchSharp;
using TorchTensor = TorchSharp.torch.Tensor;

namespace SharpNorm.Bench;

internal sealed record TrainRow(
    string Side, int Threads, int Steps, double MedianMs, double MinMs, double ImagesPerSecond, double EpochSeconds, double? TimeRatio,
    double LastLoss, double MeanLoss, double[] SamplesMs, double[] LossesMeasured, long? AllocatedBytesPerStep, double? OtherProcessesCores);

internal sealed record EvalRow(
    string Side, int Threads, int Images, double MedianBatchMs, double MinBatchMs, double ImagesPerSecond, double PassSeconds, double? TimeRatio,
    double Loss, double Accuracy, double[] BatchMs, double? OtherProcessesCores);

internal sealed record CheckRow(string Check, string Quantity, int? Threads, double MaxAbsDiff, double MaxAbsLibTorch, double Relative, string Verdict);

internal sealed record CnnSetup(
    string Model, long Parameters, int BatchSize, string Optimizer, string Data, double PixelMean, double PixelStd, int ShuffleSeed,
    int WarmupSteps, int MeasuredSteps, int EvalImages, int ConvWarmup, int ConvRuns, double EpochImages);

internal sealed record CnnReport(
    string TimestampUtc, MachineInfo Machine, bool Quick, int[] Threads, CnnSetup Setup, List<TrainRow> Training, List<EvalRow> Eval,
    List<ConvRow> Conv, List<CheckRow> Checks, List<string> Notes, string LoadAverageStart, string LoadAverageEnd, double? OtherProcessesCores,
    Dictionary<int, double> FmaPeakGflops);

/// <summary>
/// bench/run.sh --cnn: the DarkNet-style Fashion-MNIST classifier (DarkNetClassifier.Create&lt;float&gt;(NormChoice.Batch,
/// seed: 1)) trained side by side with the same network in libtorch from equal weights on the same batches (ms per step,
/// images/s, projected epoch time), eval throughput on the test set, and each distinct convolution of it alone (GFLOP/s),
/// with checks of the two sides' outputs against each other.
/// </summary>
internal static class CnnBench
{
    private const int Classes = 10, ModelSeed = 1, ShuffleSeed = 1, ConvSeed = 20240601;
    /// <summary>128 for the default network; 64 for the untuned one (--network untuned).</summary>
    private static int BatchSize = 128;
    private const double EpochImages = 60000, Tolerance = 1e-3;

    public static int Run(Options options)
    {
        int cores = Environment.ProcessorCount;
        int[] threadCounts = options.Threads ?? [cores];
        int warmup = options.WarmupGiven ?? 5;
        int steps = options.RunsGiven ?? (options.Quick ? 10 : 20);
        int convWarmup = options.WarmupGiven ?? (options.Quick ? 3 : 5);
        int convRuns = Math.Max(10, options.RunsGiven ?? (options.Quick ? 10 : 15));
        int evalBatchLimit = options.Quick ? 20 : int.MaxValue;

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
        machine = machine with { LibTorch = withTorch ? "loaded" : "unavailable: " + torchError, Malloc = mallocNote ?? "defaults" };

        ImageDataset train, test;
        try
        {
            train = FashionMnist.Load(FashionMnist.DebianDirectory, train: true);
            test = FashionMnist.Load(FashionMnist.DebianDirectory, train: false);
        }
        catch (Exception e) when (e is FileNotFoundException or InvalidDataException or IOException)
        {
            Console.Error.WriteLine($"--cnn needs Fashion-MNIST: {e.Message}");
            return 1;
        }
        bool untuned = options.Network == "untuned";
        if (untuned)
        {
            // A network none of the kernels were tuned on: another DarkNet-style stack, 40x40 inputs (the images
            // zero-padded by 6), batch 64.
            BatchSize = 64;
            train = Pad(train, 6);
            test = Pad(test, 6);
        }
        Func<Sequential<float>> createModel = untuned ? () => UntunedNetwork(ModelSeed) : () => DarkNetClassifier.Create<float>(NormChoice.Batch, seed: ModelSeed);
        string modelName = untuned ? "untuned DarkNet-style stack (CnnBench.UntunedNetwork, seed 1) on 40x40" : "DarkNetClassifier.Create<float>(NormChoice.Batch, seed: 1)";
        var (mean, std) = train.PixelStatistics();
        var trainLoader = new BatchLoader<float>(train, BatchSize, shuffle: true, ShuffleSeed, mean, std, Augmentation.None);
        var testLoader = new BatchLoader<float>(test, BatchSize, shuffle: false, 0, mean, std, Augmentation.None);
        Batches trainBatches = Batches.Fill(trainLoader, warmup + steps, withTorch);
        Batches testBatches = Batches.Fill(testLoader, Math.Min(evalBatchLimit, testLoader.BatchCount), withTorch);
        nint[] imageShape = trainLoader.ImageShape;

        long parameterCount = DarkNetClassifier.ParameterCount(createModel());
        var setup = new CnnSetup(
            modelName, parameterCount, BatchSize,
            $"SGD(lr {CnnSgd.LearningRate}, momentum {CnnSgd.Momentum}, nesterov, weight decay {CnnSgd.WeightDecay}), cross-entropy",
            $"Fashion-MNIST ({FashionMnist.DebianDirectory}), BatchLoader<float> without augmentation, shuffled with seed {ShuffleSeed}",
            mean, std, ShuffleSeed, warmup, steps, testBatches.Images.Sum(b => b.Length) / train.ImageSize, convWarmup, convRuns, EpochImages);

        Console.WriteLine($"CPU: {machine.Cpu}, {cores} cores (Environment.ProcessorCount), Vector512 {(machine.Vector512 ? "accelerated" : "not accelerated")}");
        Console.WriteLine($".NET: {machine.DotNet} on {machine.Os}");
        Console.WriteLine(withTorch
            ? $"libtorch: TorchSharp {machine.TorchSharp} (TorchSharp-cpu 0.107.0, libtorch 2.10.0 CPU), float32, default backends (oneDNN/mkldnn on, as shipped)"
            : $"libtorch unavailable ({torchError}); its columns are left blank.");
        Console.WriteLine(mallocNote ?? "glibc malloc: defaults (libtorch's large activation and gradient buffers then come as fresh mmap-ed pages on every step; --malloc-reuse keeps freed memory in the heap)");
        Console.WriteLine($"Model: {setup.Model}, {parameterCount} parameters; the libtorch twin is torch.nn.Sequential of the same layers with SharpNorm's initial parameters copied in.");
        Console.WriteLine($"Training: batch {BatchSize}, {setup.Optimizer}; {setup.Data} (pixel mean {mean:F4}, std {std:F4}); both sides train on the same batches, filled once.");
        Console.WriteLine($"Timing: training step = median of {steps} steps after {warmup} warm-up steps (batch preparation untimed); " +
                          $"eval = forward of {setup.EvalImages} test images in batches of {BatchSize}, median per full batch, after 3 warm-up batches; " +
                          $"conv = median of {convRuns} runs after {convWarmup} warm-up runs; SharpNorm's Conv2d algorithm {options.ConvAlgorithm}, conv -> BatchNorm -> LeakyReLU {(options.Unfused ? "as three layers (--unfused)" : "fused")}; threads {string.Join(", ", threadCounts)}" + (options.Quick ? " [--quick]" : "") +
                          ". The two sides run in turn, step by step (batch by batch, run by run), with a short untimed pause between them, so load from other processes meets both alike.");
        if (options.WaitIdleSeconds > 0)
        {
            Console.Error.WriteLine($"waiting up to {options.WaitIdleSeconds} s for the CPUs to be idle ...");
            double? other = CpuContention.WaitForIdle(options.WaitIdleSeconds);
            Console.Error.WriteLine($"other processes now use {(other is null ? "n/a" : $"{other:F2}")} cores");
        }
        string loadStart = CpuContention.LoadAverage();
        Console.WriteLine($"Load average at start: {loadStart} (other processes' CPU use while each part ran is listed in its table)");
        Console.Error.WriteLine("probing the FMA peak ...");
        Dictionary<int, double> peak = FmaPeak.Probe(threadCounts);
        Console.WriteLine(FmaPeak.Describe(peak) + "; conv rows give each side's GFLOP/s as a share of the peak at their thread count.");
        Console.WriteLine();

        var runContention = new CpuContention();
        var trainRows = new List<TrainRow>();
        var evalRows = new List<EvalRow>();
        var convRows = new List<ConvRow>();
        var checks = new List<CheckRow>();

        foreach (int threads in threadCounts)
        {
            Console.Error.WriteLine($"training, {threads} thread(s) ...");
            var sharpModel = createModel();
            foreach (Conv2d<float> conv in sharpModel.Layers.OfType<Conv2d<float>>()) conv.Algorithm = options.ConvAlgorithm;
            sharpModel.FuseConvBatchNorm = !options.Unfused;
            var sharp = new SharpCnn(sharpModel, BatchSize, imageShape, Classes, threads);
            using TorchCnn? torchModel = withTorch ? new TorchCnn(sharp.Model) : null;
            // The first step once more in float64 from the same initial parameters: the reference for both float32 sides.
            using TorchCnn? reference = withTorch && trainRows.Count == 0 ? new TorchCnn(sharp.Model, float64: true) : null;

            if (withTorch) TorchRunner.SetThreads(threads);
            GC.Collect();
            var first = new FirstStep();
            if (reference is not null)
            {
                first.ReferenceLogits = new float[trainBatches.Labels[0].Length * Classes];
                first.ReferenceLoss = reference.Step(trainBatches.TorchImages![0], trainBatches.TorchLabels![0], first.ReferenceLogits);
                first.ReferenceGradients = reference.Snapshot(gradients: true);
            }
            var (sharpRow, torchRow) = Train(sharp, torchModel, trainBatches, warmup, steps, threads, first);
            trainRows.Add(torchRow is null ? sharpRow : sharpRow with { TimeRatio = sharpRow.MedianMs / torchRow.MedianMs });
            if (torchRow is not null) trainRows.Add(torchRow);
            if (torchModel is not null) AddModelChecks(checks, first, sharp, torchModel, threads, warmup + steps);

            Console.Error.WriteLine($"eval, {threads} thread(s) ...");
            var (sharpEval, torchEval) = Eval(sharp, torchModel, testBatches, threads);
            evalRows.Add(torchEval is null ? sharpEval : sharpEval with { TimeRatio = sharpEval.MedianBatchMs / torchEval.MedianBatchMs });
            if (torchEval is not null) evalRows.Add(torchEval);
        }
        trainBatches.Dispose();
        testBatches.Dispose();

        foreach (ConvShape shape in (untuned ? UntunedConvShapes.Network(BatchSize) : ConvShape.Network(BatchSize)).Concat(options.Grouped ? ConvShape.Grouped() : []))
        {
            Console.Error.WriteLine($"conv {shape.Kernel} on {shape.Input} ...");
            using var bench = new ConvBench(shape, withTorch, ConvSeed, options.ConvAlgorithm);
            foreach (var (quantity, diff, scale) in bench.Check())
                checks.Add(Check($"Conv2d {shape.Kernel} on {shape.Input} " + (shape.Timed ? $"(layer {shape.Layers})" : "(not in the network)"), quantity, null, diff, scale));
            if (!shape.Timed) continue;
            foreach (int threads in threadCounts) convRows.Add(bench.Measure(threads, convWarmup, convRuns));
            GC.Collect();
        }

        double? otherCores = runContention.OtherCores();
        string loadEnd = CpuContention.LoadAverage();
        var notes = new List<string>();
        PrintTraining(trainRows);
        PrintEval(evalRows);
        PrintConv(convRows, peak);
        PrintChecks(checks, notes);
        notes.Add($"Load average at start {loadStart}, at end {loadEnd}; other processes' CPU use over the whole run: " +
                  $"{(otherCores is null ? "n/a" : $"{otherCores:F2} cores on average")} (per training/eval side in the JSON).");
        foreach (string note in notes) Console.WriteLine(note);

        if (options.JsonPath is not null)
        {
            Report.WriteJson(options.JsonPath, new CnnReport(
                DateTime.UtcNow.ToString("o", CultureInfo.InvariantCulture), machine, options.Quick, threadCounts, setup,
                trainRows, evalRows, convRows, checks, notes, loadStart, loadEnd, otherCores, peak));
            Console.Error.WriteLine($"wrote {options.JsonPath}");
        }
        return 0;
    }

    /// <summary>
    /// The untuned network: conv(3x3) → BatchNorm → LeakyReLU blocks of 16 (pool), 32 (pool), 64, 32 (1x1), 64 (pool),
    /// 128, 64 (1x1), 128, then a 1x1 convolution to the classes and global average pooling; on 40x40 the maps are
    /// 40, 20, 10 and 5 wide.
    /// </summary>
    internal static Sequential<float> UntunedNetwork(int seed)
    {
        var random = new Random(seed);
        var layers = new List<ILayer<float>>();
        int channels = 1;
        foreach (var (outChannels, kernel, pool) in new[] { (16, 3, true), (32, 3, true), (64, 3, false), (32, 1, false), (64, 3, true), (128, 3, false), (64, 1, false), (128, 3, false) })
        {
            layers.Add(new Conv2d<float>(channels, outChannels, kernel, padding: kernel / 2, bias: false, random: random));
            layers.Add(new BatchNorm<float>(outChannels));
            layers.Add(new LeakyReLU<float>(0.1));
            if (pool) layers.Add(new MaxPool2d<float>(2));
            channels = outChannels;
        }
        layers.Add(new Conv2d<float>(channels, Classes, 1, random: random));
        layers.Add(new GlobalAvgPool2d<float>());
        layers.Add(new Flatten<float>());
        return new Sequential<float>(layers.ToArray());
    }

    /// <summary>The images with a border of zeros.</summary>
    private static ImageDataset Pad(ImageDataset data, int border)
    {
        int height = data.Height + 2 * border, width = data.Width + 2 * border;
        var pixels = new byte[data.Count * height * width];
        for (int i = 0; i < data.Count; i++)
            for (int y = 0; y < data.Height; y++)
                data.Pixels.AsSpan((i * data.Height + y) * data.Width, data.Width).CopyTo(pixels.AsSpan((i * height + y + border) * width + border));
        return new ImageDataset(pixels, data.Labels, height, width, data.Classes);
    }

    /// <summary>What the first (warm-up) step of each side saw: logits, loss and gradients from equal weights on batch 0.</summary>
    private sealed class FirstStep
    {
        public float[] SharpLogits = [], TorchLogits = [];
        public double SharpLoss, TorchLoss;
        public Dictionary<string, float[]> SharpGradients = [], TorchGradients = [];
        /// <summary>libtorch float64 (rounded to float), first thread count only; empty otherwise.</summary>
        public float[] ReferenceLogits = [];
        public double ReferenceLoss;
        public Dictionary<string, float[]> ReferenceGradients = [];
    }

    /// <summary>
    /// After a side's step, before the other side's: lets its threads stop spinning (SharpNorm's helpers spin 100 µs;
    /// libgomp's OpenMP threads, with OMP_WAIT_POLICY unset, some 300000 pause loops, a few ms), so neither side's timed
    /// work competes with the other's idle threads.
    /// </summary>
    public static void Pause(bool afterTorch) => Thread.Sleep(afterTorch ? 10 : 2);

    private static double TimeMs(long start) => Stopwatch.GetElapsedTime(start).TotalMilliseconds;

    /// <summary>
    /// Both models train on the same batches, step by step in turn (SharpNorm's step i, then libtorch's step i), so that
    /// whatever else runs on the machine meets both alike; each step timed on its own (Stopwatch), batches ready in
    /// memory. Step 0's logits, loss and gradients are kept for the checks.
    /// </summary>
    private static (TrainRow Sharp, TrainRow? Torch) Train(SharpCnn sharp, TorchCnn? torchModel, Batches batches, int warmup, int steps, int threads, FirstStep first)
    {
        int total = warmup + steps;
        double[] sharpMs = new double[steps], torchMs = new double[steps], sharpLosses = new double[total], torchLosses = new double[total];
        long allocated = 0;
        first.TorchLogits = new float[batches.Labels[0].Length * Classes];
        var contention = new CpuContention();
        for (int step = 0; step < total; step++)
        {
            long bytes = GC.GetTotalAllocatedBytes(precise: true);
            long start = Stopwatch.GetTimestamp();
            sharpLosses[step] = sharp.Step(batches.Images[step], batches.Labels[step]);
            double ms = TimeMs(start);
            if (step >= warmup)
            {
                sharpMs[step - warmup] = ms;
                allocated += GC.GetTotalAllocatedBytes(precise: true) - bytes;
            }
            if (step == 0)
            {
                first.SharpLoss = sharpLosses[0];
                first.SharpLogits = sharp.Logits(batches.Labels[0].Length).ToArray();
                first.SharpGradients = sharp.Snapshot(gradients: true);
            }
            Pause(afterTorch: false);
            if (torchModel is null) continue;

            start = Stopwatch.GetTimestamp();
            torchLosses[step] = torchModel.Step(batches.TorchImages![step], batches.TorchLabels![step], step == 0 ? first.TorchLogits : null);
            ms = TimeMs(start);
            if (step >= warmup) torchMs[step - warmup] = ms;
            if (step == 0)
            {
                first.TorchLoss = torchLosses[0];
                first.TorchGradients = torchModel.Snapshot(gradients: true);
            }
            Pause(afterTorch: true);
        }
        double? other = contention.OtherCores();
        TrainRow sharpRow = Row("SharpNorm", threads, new Sample(sharpMs), sharpLosses[warmup..], allocated / Math.Max(1, steps), other);
        return (sharpRow, torchModel is null ? null : Row("libtorch", threads, new Sample(torchMs), torchLosses[warmup..], null, other));
    }

    private static TrainRow Row(string side, int threads, Sample sample, double[] losses, long? allocatedPerStep, double? otherCores) =>
        new(side, threads, sample.Ms.Length, sample.Median, sample.Min, BatchSize / sample.Median * 1e3, EpochImages / BatchSize * sample.Median / 1e3, null,
            losses[^1], losses.Average(), sample.Ms, losses, allocatedPerStep, otherCores);

    private const int EvalWarmupBatches = 3;

    /// <summary>Forward only in eval mode over the test batches, batch by batch in turn as in <see cref="Train"/>; scores untimed.</summary>
    private static (EvalRow Sharp, EvalRow? Torch) Eval(SharpCnn sharp, TorchCnn? torchModel, Batches batches, int threads)
    {
        sharp.Model.Training = false;
        if (torchModel is not null) torchModel.Training = false;
        try
        {
            using IDisposable? noGrad = torchModel is null ? null : torch.no_grad();
            double[] sharpMs = new double[batches.Count], torchMs = new double[batches.Count];
            double sharpLoss = 0, torchLoss = 0;
            int sharpCorrect = 0, torchCorrect = 0, images = 0;
            var contention = new CpuContention();
            for (int b = -Math.Min(EvalWarmupBatches, batches.Count); b < batches.Count; b++)
            {
                int batch = b < 0 ? b + Math.Min(EvalWarmupBatches, batches.Count) : b, n = batches.Labels[batch].Length;
                long start = Stopwatch.GetTimestamp();
                sharp.Forward(batches.Images[batch], n);
                double ms = TimeMs(start);
                if (b >= 0)
                {
                    sharpMs[b] = ms;
                    var (loss, right) = sharp.Score(batches.Labels[batch]);
                    sharpLoss += loss;
                    sharpCorrect += right;
                    images += n;
                }
                Pause(afterTorch: false);
                if (torchModel is null) continue;

                using (var scope = torch.NewDisposeScope())
                {
                    start = Stopwatch.GetTimestamp();
                    TorchTensor logits = torchModel.Forward(batches.TorchImages![batch]);
                    ms = TimeMs(start);
                    if (b >= 0)
                    {
                        torchMs[b] = ms;
                        var (loss, right) = TorchCnn.Score(logits, batches.TorchLabels![batch]);
                        torchLoss += loss;
                        torchCorrect += right;
                    }
                }
                Pause(afterTorch: true);
            }
            double? other = contention.OtherCores();
            return (EvalResult("SharpNorm", threads, batches, sharpMs, sharpLoss, sharpCorrect, images, other),
                torchModel is null ? null : EvalResult("libtorch", threads, batches, torchMs, torchLoss, torchCorrect, images, other));
        }
        finally
        {
            sharp.Model.Training = true;
            if (torchModel is not null) torchModel.Training = true;
        }
    }

    private static EvalRow EvalResult(string side, int threads, Batches batches, double[] ms, double lossSum, int correct, int images, double? otherCores)
    {
        // Median over the full batches (the last one may be short); the pass time counts every batch.
        double[] full = ms.Where((_, b) => batches.Labels[b].Length == BatchSize).ToArray();
        double median = new Sample(full.Length > 0 ? full : ms).Median;
        return new EvalRow(side, threads, images, median, (full.Length > 0 ? full : ms).Min(), BatchSize / median * 1e3, ms.Sum() / 1e3, null, lossSum / images, (double)correct / images, ms, otherCores);
    }

    private static void AddModelChecks(List<CheckRow> checks, FirstStep first, SharpCnn sharp, TorchCnn torchModel, int threads, int totalSteps)
    {
        checks.Add(Check("first batch, training-mode forward (equal weights)", "logits", threads,
            ConvBench.MaxAbsDiff(first.SharpLogits, first.TorchLogits), ConvBench.MaxAbs(first.TorchLogits)));
        checks.Add(Check("first batch", "loss", threads, Math.Abs(first.SharpLoss - first.TorchLoss), Math.Abs(first.TorchLoss)));
        // Every parameter's gradient of the first step; the worst relative difference is listed.
        CheckRow? worst = null;
        foreach (var (name, torchGradient) in first.TorchGradients)
        {
            CheckRow row = Check("first batch, backward (every parameter's gradient; worst listed)", $"grad {name}", threads,
                ConvBench.MaxAbsDiff(first.SharpGradients[name], torchGradient), ConvBench.MaxAbs(torchGradient));
            if (worst is null || !(row.Relative <= worst.Relative)) worst = row;
        }
        if (worst is not null) checks.Add(worst);
        if (first.ReferenceGradients.Count > 0)
        {
            // Against float64: which float32 side is off where the two disagree (libtorch's with oneDNN is listed, not judged).
            checks.Add(Check("first batch vs libtorch float64, training-mode forward", "logits: SharpNorm", threads,
                ConvBench.MaxAbsDiff(first.SharpLogits, first.ReferenceLogits), ConvBench.MaxAbs(first.ReferenceLogits)));
            CheckRow? worstSharp = null, worstTorch = null;
            foreach (var (name, reference) in first.ReferenceGradients)
            {
                CheckRow sharpRow = Check("first batch vs libtorch float64, backward (worst listed)", $"grad {name}: SharpNorm", threads,
                    ConvBench.MaxAbsDiff(first.SharpGradients[name], reference), ConvBench.MaxAbs(reference));
                double torchDiff = ConvBench.MaxAbsDiff(first.TorchGradients[name], reference), scale = ConvBench.MaxAbs(reference);
                var torchRow = new CheckRow("first batch vs libtorch float64, backward (worst listed)", $"grad {name}: libtorch float32", threads,
                    torchDiff, scale, Relative(torchDiff, scale), "info");
                if (worstSharp is null || !(sharpRow.Relative <= worstSharp.Relative)) worstSharp = sharpRow;
                if (worstTorch is null || !(torchRow.Relative <= worstTorch.Relative)) worstTorch = torchRow;
            }
            if (worstSharp is not null) checks.Add(worstSharp);
            if (worstTorch is not null) checks.Add(worstTorch);
        }
        // After all steps: how far the two trainings have drifted apart (informational: float rounding compounds).
        Dictionary<string, float[]> sharpValues = sharp.Snapshot(gradients: false), torchValues = torchModel.Snapshot(gradients: false);
        CheckRow? drift = null;
        foreach (var (name, values) in torchValues)
        {
            double diff = ConvBench.MaxAbsDiff(sharpValues[name], values), scale = ConvBench.MaxAbs(values);
            var row = new CheckRow($"parameters after {totalSteps} steps (worst listed)", name, threads, diff, scale, Relative(diff, scale), "info");
            if (drift is null || !(row.Relative <= drift.Relative)) drift = row;
        }
        if (drift is not null) checks.Add(drift);
        double squaredDiff = 0, squared = 0;
        foreach (var (name, values) in torchValues)
            for (int i = 0; i < values.Length; i++)
            {
                double d = (double)sharpValues[name][i] - values[i];
                squaredDiff += d * d;
                squared += (double)values[i] * values[i];
            }
        checks.Add(new CheckRow($"parameters after {totalSteps} steps, all together", "‖Δ‖₂ / ‖libtorch‖₂", threads,
            Math.Sqrt(squaredDiff), Math.Sqrt(squared), Relative(Math.Sqrt(squaredDiff), Math.Sqrt(squared)), "info"));
    }

    private static double Relative(double diff, double scale) => diff / Math.Max(scale, 1e-30);

    private static CheckRow Check(string check, string quantity, int? threads, double diff, double scale)
    {
        double relative = Relative(diff, scale);
        return new CheckRow(check, quantity, threads, diff, scale, relative,
            relative <= Tolerance ? "ok" : double.IsNaN(relative) ? "DIFFERS (NaN)" : "DIFFERS");
    }

    private static void PrintTraining(List<TrainRow> rows)
    {
        Console.WriteLine($"### Training step (batch {BatchSize}, forward + loss + backward + SGD step)");
        Console.WriteLine();
        Console.WriteLine("| side | thr | step ms (median) | min ms | img/s | epoch s (60000 img, projected) | SharpNorm/libtorch time | loss, last step | loss, mean of timed steps | allocated B/step | other processes, cores |");
        Console.WriteLine("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        foreach (TrainRow r in rows)
            Console.WriteLine($"| {r.Side} | {r.Threads} | {Ms(r.MedianMs)} | {Ms(r.MinMs)} | {r.ImagesPerSecond:F0} | {r.EpochSeconds:F1} | {F(r.TimeRatio, "F2")} | " +
                              $"{r.LastLoss:F4} | {r.MeanLoss:F4} | {(r.AllocatedBytesPerStep is null ? "" : r.AllocatedBytesPerStep.Value.ToString(CultureInfo.InvariantCulture))} | {F(r.OtherProcessesCores, "F2")} |");
        Console.WriteLine();
    }

    private static void PrintEval(List<EvalRow> rows)
    {
        Console.WriteLine($"### Eval (forward only, eval mode; libtorch under no_grad; batch {BatchSize}, after the training above)");
        Console.WriteLine();
        Console.WriteLine("| side | thr | images | batch ms (median) | min ms | img/s | pass s | SharpNorm/libtorch time | test loss | test accuracy | other processes, cores |");
        Console.WriteLine("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        foreach (EvalRow r in rows)
            Console.WriteLine($"| {r.Side} | {r.Threads} | {r.Images} | {Ms(r.MedianBatchMs)} | {Ms(r.MinBatchMs)} | {r.ImagesPerSecond:F0} | {r.PassSeconds:F2} | {F(r.TimeRatio, "F2")} | {r.Loss:F4} | {r.Accuracy:P2} | {F(r.OtherProcessesCores, "F2")} |");
        Console.WriteLine();
    }

    private static void PrintConv(List<ConvRow> rows, Dictionary<int, double> peak)
    {
        Console.WriteLine($"### Conv2d alone (float32, batch {BatchSize}; GFLOP/s = 2·N·O·OH·OW·C·kh·kw / time, twice that for a backward that computes dx and dW; % = share of the FMA peak at the row's thread count)");
        Console.WriteLine();
        Console.WriteLine("| layer | input | conv | thr | GFLOP | fwd ms SharpNorm | fwd ms libtorch | fwd GFLOP/s SharpNorm | fwd GFLOP/s libtorch | fwd % peak S / T | fwd S/T time | " +
                          "dx ms SharpNorm | dW ms SharpNorm | bwd ms SharpNorm (dx+dW) | bwd ms libtorch | bwd GFLOP/s SharpNorm | bwd GFLOP/s libtorch | bwd % peak S / T | bwd S/T time | other processes, cores |");
        Console.WriteLine("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        foreach (ConvRow r in rows)
        {
            double p = peak[r.Threads];
            string Share(double? gflops) => gflops is { } g ? $"{100 * g / p:F0}" : "";
            Console.WriteLine($"| {r.Layers} | {r.Input} | {r.Kernel} | {r.Threads} | {r.ForwardGflop:F3} | {Ms(r.SharpForwardMs)} | {Ms(r.TorchForwardMs)} | " +
                              $"{r.SharpForwardGflops:F1} | {F(r.TorchForwardGflops, "F1")} | {Share(r.SharpForwardGflops)} / {Share(r.TorchForwardGflops)} | {F(r.ForwardRatio, "F2")} | " +
                              $"{Ms(r.SharpDxMs)} | {Ms(r.SharpDwMs)} | {Ms(r.SharpBackwardMs)} | {Ms(r.TorchBackwardMs)} | {r.SharpBackwardGflops:F1} | {F(r.TorchBackwardGflops, "F1")} | " +
                              $"{Share(r.SharpBackwardGflops)} / {Share(r.TorchBackwardGflops)} | {F(r.BackwardRatio, "F2")} | {F(r.OtherProcessesCores, "F2")} |");
        }
        Console.WriteLine();
        Console.WriteLine("SharpNorm bwd = median dx (Backward) + median dW (Gradient), timed separately; libtorch bwd = y.backward(dy) with x and weight " +
                          "requiring grad (dx and dW in one call; graph built untimed, grads set to None before each run). S/T time: SharpNorm time / libtorch time.");
        Console.WriteLine();
    }

    private static void PrintChecks(List<CheckRow> checks, List<string> notes)
    {
        Console.WriteLine($"### Checks (SharpNorm vs libtorch; max |difference|, max |libtorch value|, their ratio; DIFFERS above {Tolerance:0.0E+0})");
        Console.WriteLine();
        Console.WriteLine("| check | quantity | thr | max abs diff | max abs libtorch | relative | verdict |");
        Console.WriteLine("|---|---|--:|--:|--:|--:|---|");
        foreach (CheckRow c in checks)
            Console.WriteLine($"| {c.Check} | {c.Quantity} | {c.Threads?.ToString(CultureInfo.InvariantCulture) ?? ""} | {E(c.MaxAbsDiff)} | {E(c.MaxAbsLibTorch)} | {E(c.Relative)} | {c.Verdict} |");
        Console.WriteLine();
        var differing = checks.Where(c => c.Verdict.StartsWith("DIFFERS", StringComparison.Ordinal)).ToList();
        var inNetwork = differing.Where(c => !c.Check.Contains("not in the network", StringComparison.Ordinal)).ToList();
        var checkOnly = differing.Except(inNetwork).ToList();
        var againstFloat64 = checks.Where(c => c.Check.StartsWith("first batch vs libtorch float64", StringComparison.Ordinal) &&
                                               c.Quantity.Contains("grad", StringComparison.Ordinal)).ToList();
        if (inNetwork.Count > 0)
            notes.Add("NOTE: SharpNorm and libtorch disagree on the network's own computations: " +
                      string.Join("; ", inNetwork.Select(c => $"{c.Check}: {c.Quantity} (relative {E(c.Relative)})")) +
                      ". libtorch runs with its default backends (oneDNN/mkldnn on, what users get); its float32 conv dx has been seen " +
                      "to be wrong on this machine for some kernel shapes. Timings are as measured." +
                      (againstFloat64.Count == 0 ? "" : " Against libtorch in float64 (the same first step): " +
                          string.Join("; ", againstFloat64.Select(c => $"{c.Quantity} worst relative {E(c.Relative)}")) +
                          ". A LeakyReLU input within float rounding of zero can take the other side of the mask in either float32 " +
                          "computation, which moves its channel's Σ dy in the norm before it and that channel's row of the convolution's " +
                          "weight gradient before that: one such element is enough to exceed the tolerance."));
        else if (checks.Count > 0)
            notes.Add($"The network's forward, gradients and each of its convolutions (y, dx, dW) agree between SharpNorm and libtorch within a relative {Tolerance:0.0E+0} (libtorch with oneDNN/mkldnn on, as shipped).");
        if (checkOnly.Count > 0)
            notes.Add("NOTE: on check-only shapes (not in the network; from the tests' fixtures) libtorch's float32 conv results with oneDNN/mkldnn on differ: " +
                      string.Join("; ", checkOnly.GroupBy(c => c.Check).Select(g => $"{g.Key.Replace(" (not in the network)", "", StringComparison.Ordinal)}: " +
                          string.Join(", ", g.Select(c => $"{c.Quantity} relative {E(c.Relative)}")) +
                          (checks.Any(c => c.Check == g.Key && c.Quantity.StartsWith("dx: SharpNorm", StringComparison.Ordinal) && c.Verdict == "ok")
                              ? " (SharpNorm's dx matches the float64 sum: libtorch's is wrong)" : ""))) +
                      ". mkldnn is left on for every timing (what libtorch users get).");
    }

    private static string Ms(double? ms) => ms switch
    {
        null => "",
        >= 100 => ms.Value.ToString("F1", CultureInfo.InvariantCulture),
        >= 10 => ms.Value.ToString("F2", CultureInfo.InvariantCulture),
        _ => ms.Value.ToString("F3", CultureInfo.InvariantCulture),
    };

    private static string F(double? v, string format) => v?.ToString(format, CultureInfo.InvariantCulture) ?? "";

    private static string E(double v) => v.ToString("0.0E+0", CultureInfo.InvariantCulture);

    /// <summary>Batches filled once from a loader (epoch 0), with libtorch copies of the same values.</summary>
    private sealed class Batches : IDisposable
    {
        public required float[][] Images { get; init; }
        public required int[][] Labels { get; init; }
        public TorchTensor[]? TorchImages { get; init; }
        public TorchTensor[]? TorchLabels { get; init; }
        public int Count => Labels.Length;

        public static Batches Fill(BatchLoader<float> loader, int count, bool withTorch)
        {
            loader.StartEpoch(0);
            int imageSize = (int)loader.ImageShape.Aggregate((nint)1, (p, d) => p * d);
            var images = new float[count][];
            var labels = new int[count][];
            for (int b = 0; b < count; b++)
            {
                var x = new float[loader.BatchSize * imageSize];
                var y = new int[loader.BatchSize];
                int n = loader.Fill(b % loader.BatchCount, x, y);
                images[b] = n == loader.BatchSize ? x : x[..(n * imageSize)];
                labels[b] = n == loader.BatchSize ? y : y[..n];
            }
            long[] shape(int b) => [labels[b].Length, .. loader.ImageShape.Select(d => (long)d)];
            return new Batches
            {
                Images = images,
                Labels = labels,
                TorchImages = withTorch ? Enumerable.Range(0, count).Select(b => TorchCnn.FromArray(images[b], shape(b))).ToArray() : null,
                TorchLabels = withTorch ? labels.Select(TorchCnn.FromLabels).ToArray() : null,
            };
        }

        public void Dispose()
        {
            foreach (TorchTensor t in (TorchImages ?? []).Concat(TorchLabels ?? [])) t.Dispose();
        }
    }
}
