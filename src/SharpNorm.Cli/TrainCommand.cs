using System.Diagnostics;
using System.Globalization;
using SharpNorm.Data;
using SharpNorm.Distributed;
using SharpNorm.Distributed.Mpi;
using SharpNorm.Layers;
using SharpNorm.Models;
using SharpNorm.Serialization;
using SharpNorm.Training;
using Spectre.Console;

namespace SharpNorm.Cli;

/// <summary>What one epoch measured, a row of metrics.csv.</summary>
internal sealed record EpochMetrics(int Epoch, double TrainLoss, double TrainAccuracy, double TestLoss, double TestAccuracy, double Seconds, double LearningRateEnd);

/// <summary><c>sharpnorm train</c>: trains the DarkNet-style classifier on Fashion-MNIST, writes checkpoint, metrics and curves.</summary>
internal static class TrainCommand
{
    public const string Usage = """
        Usage: sharpnorm train [options]

        Trains SharpNorm's DarkNet-style classifier on Fashion-MNIST (float32, on the CPU) and writes
        model.safetensors, metrics.csv and curves.png into the output folder.

        Options:
          --data DIR             folder with Fashion-MNIST's four IDX files, raw or .gz
                                 (default /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist)
          --norm NAME            normalization after each convolution: batch, instance, group, layer, none
                                 (default batch)
          --epochs N             passes over the training set (default 10)
          --batch-size N         images per step (default 128)
          --optimizer NAME       sgd: momentum 0.9, Nesterov, weight decay 5e-4 (default)
                                 adamw: weight decay 0.05
          --lr X                 peak learning rate of the one-cycle schedule (25% warm-up, then cosine
                                 annealing over all steps); default 0.1 for sgd, 2e-3 for adamw
          --label-smoothing X    cross-entropy label smoothing in [0, 1) (default 0); the training loss
                                 includes it, the test loss is plain cross-entropy
          --crop-padding N       augmentation: random crops of the image padded by N zeros (default 0: none);
                                 horizontal flips are always on
          --seed N               seeds the weights, the shuffling and the augmentation (default 1)
          --threads N            threads for the layers; -1 for all cores (default -1)
          --limit N              train on the first N training images only, for a quick try
                                 (the test set stays whole)
          --out DIR              output folder (default runs/<norm>-<yyyyMMdd-HHmmss>)
          --resume DIR           continue the run in DIR from its last finished epoch (DIR/checkpoint.safetensors,
                                 written after every epoch): the same settings, the same final weights bit for
                                 bit as a run never stopped; only --threads and --data may be given with it
                                 (a --distributed run resumes under mpirun, every rank reading DIR)
          --check-finite         stop at the first NaN or infinity, naming the layer that made it (PyTorch, and
                                 the default, let it flow into the loss and the batch norms' running statistics)
          --distributed          data-parallel over the processes of mpirun -np N: each trains on its shard of
                                 every global batch of --batch-size, BatchNorm becomes SyncBatchNorm, and rank 0
                                 prints progress and writes the output (default threads: the cores / the ranks)
          --profile-communication  with --distributed: a barrier before each collective, so the summary
                                 separates the ranks waiting for each other from the transfers (measurement)
          -h, --help             this text

        Examples:
          sharpnorm train
          sharpnorm train --norm group --epochs 5 --out runs/group
          sharpnorm train --epochs 1 --limit 2000 --out /tmp/try
          mpirun -np 2 sharpnorm train --distributed --epochs 1
        """;

    private static readonly string[] ValueOptions =
        ["data", "norm", "epochs", "batch-size", "optimizer", "lr", "label-smoothing", "crop-padding", "seed", "threads", "limit", "out", "resume"];

    private const int Classes = 10;

    private sealed record Settings(
        string Data, NormChoice Norm, int Epochs, int BatchSize, string Optimizer, double LearningRate, double LabelSmoothing,
        int CropPadding, int Seed, int Threads, int? Limit, string Out, bool Distributed = false, bool ProfileCommunication = false, bool CheckFinite = false);

    public static int Run(IReadOnlyList<string> args)
    {
        bool distributed = args.Contains("--distributed"), profile = args.Contains("--profile-communication"), checkFinite = args.Contains("--check-finite");
        ParsedOptions options = ParsedOptions.Parse("train", args.Where(a => a is not "--distributed" and not "--profile-communication" and not "--check-finite").ToArray(), ValueOptions);
        if (options.Help)
        {
            Console.Out.WriteLine(Usage);
            return 0;
        }
        Settings settings = Read(options) with { Distributed = distributed, ProfileCommunication = profile, CheckFinite = checkFinite };
        string? resumeFolder = options.String("resume");
        if (resumeFolder is not null)
        {
            string[] changed = ValueOptions.Where(o => o is not ("resume" or "threads" or "data") && options.Has(o)).ToArray();
            if (changed.Length > 0)
                throw new UsageException($"--resume continues the run with its own settings; --{changed[0]} cannot be given with it (only --threads and --data)");
        }
        if (profile && !distributed) throw new UsageException("--profile-communication measures a --distributed run");
        if (!distributed)
        {
            TrainingCheckpoint? resume = resumeFolder is null ? null : TrainingCheckpoint.Read(resumeFolder);
            return Train(resume is null ? settings : resume.Apply(settings) with { Out = resumeFolder! }, null, resume);
        }
        if (!MpiCommunicator.LaunchedByMpirun)
            throw new UsageException($"--distributed runs under Open MPI's mpirun: mpirun -np N {CommandLine.Self} train --distributed [options]");
        using MpiCommunicator world = MpiCommunicator.World;
        try
        {
            // Every rank reads the checkpoint (the run's folder on one machine, or a shared file system); the ranks then
            // check that they read the same one before any state changes.
            TrainingCheckpoint? resume = resumeFolder is null ? null : TrainingCheckpoint.Read(resumeFolder);
            int code = Train(resume is null ? settings : resume.Apply(settings) with { Out = resumeFolder! }, world, resume);
            world.Barrier();
            return code;
        }
        catch (OperationCanceledException) when (world.Size > 1)
        {
            // The ranks agreed to stop at the same batch (Train's stop check): they end together; rank 0 says why.
            if (world.Rank != 0) return 130;
            throw;
        }
        catch (Exception e) when (world.Size > 1)
        {
            // The other ranks wait in a collective: end the whole job, naming this rank.
            world.Abort(1, $"{e.GetType().Name}: {e.Message}");
            throw;
        }
    }

    private static Settings Read(ParsedOptions options)
    {
        NormChoice norm = options.Norm() ?? NormChoice.Batch;
        string optimizer = options.Choice("optimizer", "sgd", "sgd", "adamw");
        double defaultRate = optimizer == "sgd" ? 0.1 : 2e-3;
        string defaultOut = Path.Combine("runs", $"{Names.Of(norm)}-{DateTime.Now.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture)}");
        return new Settings(
            Data: options.String("data", FashionMnist.DebianDirectory),
            Norm: norm,
            Epochs: options.Int("epochs", 10, min: 1),
            BatchSize: options.Int("batch-size", 128, min: 1),
            Optimizer: optimizer,
            LearningRate: options.Double("lr", defaultRate, x => x > 0, "a number > 0"),
            LabelSmoothing: options.Double("label-smoothing", 0, x => x is >= 0 and < 1, "a number in [0, 1)"),
            CropPadding: options.Int("crop-padding", 0, min: 0),
            Seed: options.Int("seed", 1),
            Threads: options.Threads(),
            Limit: options.Has("limit") ? options.Int("limit", 0, min: 1) : null,
            Out: options.String("out", defaultOut));
    }

    /// <param name="communicator">The ranks of a distributed run, or null for one process.</param>
    private static int Train(Settings s, ICommunicator? communicator, TrainingCheckpoint? resume = null)
    {
        bool leader = communicator is null || communicator.Rank == 0;
        // Only rank 0 prints: the others' console writes nowhere.
        IAnsiConsole console = leader ? Terminal.Out : AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(TextWriter.Null) });
        var wall = Stopwatch.StartNew();

        if (File.Exists(s.Out)) throw new IOException($"--out {s.Out} is a file, not a folder");
        ImageDataset train = FashionMnist.Load(s.Data, train: true);
        ImageDataset test = FashionMnist.Load(s.Data, train: false);
        if (s.Limit is int limit) train = train.Take(limit);
        var (mean, std) = train.PixelStatistics();
        if (!(std > 0)) throw new InvalidDataException($"the training images of {s.Data} are all the same value; cannot normalize them");

        var trainLoader = new BatchLoader<float>(train, s.BatchSize, shuffle: true, seed: s.Seed, mean, std, new Augmentation(CropPadding: s.CropPadding, HorizontalFlip: true));
        var testLoader = new BatchLoader<float>(test, Math.Max(s.BatchSize, 256), shuffle: false, seed: 0, mean, std);
        long totalSteps = (long)s.Epochs * trainLoader.BatchCount;
        if (totalSteps < 2)
            throw new UsageException($"{s.Epochs} epoch(s) of {trainLoader.BatchCount} batch(es) is {totalSteps} step; the one-cycle schedule needs at least 2 (more epochs, more images or a smaller --batch-size)");

        Sequential<float> model = DarkNetClassifier.Create<float>(s.Norm, Classes, s.Seed);
        int threads = s.Threads == -1 ? Environment.ProcessorCount : s.Threads;
        // Ctrl+C or SIGTERM stops the run at the next batch; the ranks of a distributed run agree on it first (a 4-byte
        // all-reduce per batch, outside the timed communication), so that all of them stop at the same batch.
        ICommunicator? ranks = communicator;
        Action stop = ranks is null ? Interrupt.ThrowIfRequested : () =>
        {
            Span<int> requested = [Interrupt.Requested ? 1 : 0];
            ranks.AllReduce(requested, ReduceOperation.Max);
            if (requested[0] != 0) throw new OperationCanceledException("interrupted");
        };
        TimedCommunicator? timed = communicator is null ? null : new TimedCommunicator(communicator, s.ProfileCommunication);
        communicator = timed;
        if (communicator is not null)
        {
            model = SyncBatchNorm.Convert(model, communicator);
            // The ranks on this machine share its cores.
            if (s.Threads == -1) threads = Math.Max(1, Environment.ProcessorCount / LocalRanks(communicator));
            RequireSameRun(communicator, s, DarkNetClassifier.ParameterCount(model), train.Count, resume?.Fingerprint ?? "");
        }
        model.MaxDegreeOfParallelism = threads;
        model.CheckFinite = s.CheckFinite;
        Optimizer<float> optimizer = s.Optimizer == "sgd"
            ? new Sgd<float>(model.Parameters, s.LearningRate, momentum: 0.9, dampening: 0, weightDecay: 5e-4, nesterov: true)
            : new AdamW<float>(model.Parameters, s.LearningRate, weightDecay: 0.05);
        var schedule = new OneCycleSchedule(s.LearningRate, totalSteps, pctStart: 0.25);
        Func<int, Action<BatchProgress>, EpochResult> trainEpoch;
        int buckets = 0;
        if (communicator is null)
        {
            var trainer = new Trainer<float>(model, optimizer, schedule, Classes, s.LabelSmoothing);
            trainEpoch = (epoch, progress) => trainer.TrainEpoch(trainLoader, epoch, progress);
        }
        else
        {
            var trainer = new DistributedTrainer<float>(model, optimizer, schedule, Classes, communicator, s.LabelSmoothing);
            trainer.BroadcastState();
            buckets = trainer.BucketCount;
            trainEpoch = (epoch, progress) => trainer.TrainEpoch(trainLoader, epoch, progress);
        }
        var history = new List<EpochMetrics>();
        int firstEpoch = 1;
        if (resume is not null)
        {
            // Everything is checked before anything changes: a checkpoint of another run leaves the folder as it was.
            resume.Restore(model, optimizer, train.Count, mean, std);
            history.AddRange(resume.History);
            firstEpoch = resume.Epoch + 1;
        }
        // Fail on an unusable output folder now, before any training time is spent.
        if (leader) Directory.CreateDirectory(s.Out);

        string optimizerText = s.Optimizer == "sgd"
            ? $"SGD (momentum 0.9, Nesterov, weight decay 5e-4), one-cycle schedule to lr {FormatRate(s.LearningRate)}"
            : $"AdamW (weight decay 0.05), one-cycle schedule to lr {FormatRate(s.LearningRate)}";
        console.MarkupLine($"[bold]DarkNet-style classifier[/] with {Markup.Escape(Names.Describe(s.Norm))}, {DarkNetClassifier.ParameterCount(model):N0} parameters");
        console.MarkupLine(Markup.Escape($"Fashion-MNIST from {s.Data}: {train.Count:N0} training images{(s.Limit is null ? "" : " (--limit)")}, {test.Count:N0} test images"));
        console.MarkupLine(Markup.Escape($"{optimizerText}" + (s.LabelSmoothing > 0 ? $", label smoothing {Format(s.LabelSmoothing)}" : "")));
        console.MarkupLine(Markup.Escape($"{s.Epochs} epoch(s) of {trainLoader.BatchCount} batches of {s.BatchSize}; pixel mean {mean:F4}, std {std:F4}; seed {s.Seed}; {threads} thread(s)"));
        if (communicator is not null)
            console.MarkupLine(Markup.Escape($"Distributed: {communicator.Size} ranks ({MpiCommunicator.LibraryVersion.Split(',')[0]}), each global batch of {s.BatchSize} split into shards of {s.BatchSize / communicator.Size}-{(s.BatchSize + communicator.Size - 1) / communicator.Size}; SyncBatchNorm; {threads} thread(s) per rank"));
        console.MarkupLine(Markup.Escape($"Output: {s.Out}"));

        string metricsPath = Path.Combine(s.Out, "metrics.csv");
        string checkpointPath = Path.Combine(s.Out, "model.safetensors");
        string curvesPath = Path.Combine(s.Out, "curves.png");
        EpochResult? lastTest = null;
        TimeSpan trainTime = TimeSpan.Zero;
        timed?.Reset();
        if (resume?.Ranks is int trainedOn && trainedOn != (communicator?.Size ?? 0))
            console.MarkupLine(Markup.Escape($"Note: the run trained {(trainedOn == 0 ? "in one process" : $"on {trainedOn} ranks")} and continues " +
                $"{(communicator is null ? "in one process" : $"on {communicator.Size} ranks")}: the same computation, summed in another order, so the weights will differ in their last bits from an uninterrupted run's"));
        if (resume is not null)
            console.MarkupLine(Markup.Escape(firstEpoch > s.Epochs
                ? $"Resumed {s.Out}: all {s.Epochs} epochs were finished"
                : $"Resumed {s.Out} after epoch {resume.Epoch} of {s.Epochs} ({optimizer.Steps:N0} steps)"));
        try
        {
            for (int epoch = firstEpoch; epoch <= s.Epochs; epoch++)
            {
                stop();
                var clock = Stopwatch.StartNew();
                var (trainResult, testResult) = Terminal.Live && leader
                    ? LiveEpoch(console, model, trainEpoch, trainLoader, testLoader, epoch, s.Epochs, stop)
                    : PlainEpoch(console, model, trainEpoch, trainLoader, testLoader, epoch, s.Epochs, stop);
                double seconds = clock.Elapsed.TotalSeconds;
                lastTest = testResult;
                trainTime += trainResult.Time;
                history.Add(new EpochMetrics(epoch, trainResult.Loss, trainResult.Accuracy, testResult.Loss, testResult.Accuracy, seconds, optimizer.LearningRate));
                int width = s.Epochs.ToString(CultureInfo.InvariantCulture).Length;
                console.MarkupLine(
                    $"epoch {epoch.ToString(CultureInfo.InvariantCulture).PadLeft(width)}/{s.Epochs}  " +
                    $"train loss {trainResult.Loss:F4} acc {Percent(trainResult.Accuracy)}  " +
                    $"[bold]test loss {testResult.Loss:F4} acc {Percent(testResult.Accuracy)}[/]  " +
                    $"{seconds:F1}s (test {testResult.Time.TotalSeconds:F1}s)  {train.Count / trainResult.Time.TotalSeconds:N0} img/s  " +
                    $"lr {FormatRate(optimizer.LearningRate)}");
                // Written after every epoch: an interrupted run keeps the epochs it finished, and --resume continues it.
                if (leader)
                {
                    Results.WriteMetrics(metricsPath, history);
                    TrainingCheckpoint.Write(s.Out, model, optimizer, epoch, SettingsMetadata(s, communicator?.Size ?? 0), history, train.Count, mean, std);
                }
            }
        }
        catch (OperationCanceledException) when (history.Count > 0)
        {
            string data = (s.Data == FashionMnist.DebianDirectory ? "" : $" --data {Quote(s.Data)}") + (s.CheckFinite ? " --check-finite" : "");
            string again = communicator is null
                ? $"{CommandLine.Self} train --resume {Quote(s.Out)}{data}"
                : $"{Mpirun(communicator.Size)} {CommandLine.Self} train --distributed --resume {Quote(s.Out)}{data}";
            throw new OperationCanceledException($"interrupted after epoch {history[^1].Epoch} of {s.Epochs}; continue the run with: {again}");
        }
        if (resume is not null && history.Count > 0) lastTest = new EpochResult(history[^1].TestLoss, history[^1].TestAccuracy, TimeSpan.Zero);

        var metadata = new Dictionary<string, string>
        {
            ["model"] = "DarkNetClassifier",
            ["norm"] = Names.Of(s.Norm),
            ["classes"] = Invariant(Classes),
            ["epochs"] = Invariant(s.Epochs),
            ["seed"] = Invariant(s.Seed),
            ["mean"] = Invariant(mean),
            ["std"] = Invariant(std),
            ["test_accuracy"] = Invariant(lastTest!.Accuracy),
            ["test_loss"] = Invariant(lastTest.Loss),
            ["optimizer"] = s.Optimizer,
            ["lr"] = Invariant(s.LearningRate),
            ["batch_size"] = Invariant(s.BatchSize),
            ["label_smoothing"] = Invariant(s.LabelSmoothing),
            ["train_images"] = Invariant(train.Count),
        };
        if (communicator is not null) metadata["ranks"] = Invariant(communicator.Size);
        // A collective: every rank, before the others stop.
        long stepsHere = (long)(s.Epochs - firstEpoch + 1) * trainLoader.BatchCount;   // the steps this process trained (after a resume, fewer)
        string? communication = timed is null || stepsHere <= 0 ? null : CommunicationSummary(timed, trainTime, stepsHere, buckets);
        if (!leader) return 0;
        Checkpoint.Save(checkpointPath, model, metadata);
        try
        {
            Charts.WriteCurves(curvesPath, history, $"{Names.Describe(s.Norm)}, Fashion-MNIST");
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // E.g. SkiaSharp's native library missing on this platform: say so, the rest of the run is on disk.
            throw new IOException($"could not draw {curvesPath} ({e.GetBaseException().GetType().Name}: {e.GetBaseException().Message}); " +
                $"{checkpointPath} and {metricsPath} were written (final test accuracy {Percent(lastTest.Accuracy)})", e);
        }

        console.WriteLine();
        if (communication is not null) console.MarkupLine(Markup.Escape(communication));
        console.MarkupLine($"[bold]Final test accuracy: {Percent(lastTest.Accuracy)}[/] (loss {lastTest.Loss:F4}) after {s.Epochs} epoch(s), {FormatDuration(wall.Elapsed)}");
        console.MarkupLine(Markup.Escape($"  checkpoint  {checkpointPath}"));
        console.MarkupLine(Markup.Escape($"  metrics     {metricsPath}"));
        console.MarkupLine(Markup.Escape($"  curves      {curvesPath}"));
        console.MarkupLine(Markup.Escape($"Evaluate it with: {CommandLine.Self} eval --checkpoint {Quote(checkpointPath)}" +
            (s.Data == FashionMnist.DebianDirectory ? "" : $" --data {Quote(s.Data)}")));
        return 0;
    }

    /// <summary>An epoch under a live progress bar (loss, accuracy, images/s, time left), cleared when done.</summary>
    private static (EpochResult Train, EpochResult Test) LiveEpoch(
        IAnsiConsole console, Sequential<float> model, Func<int, Action<BatchProgress>, EpochResult> trainEpoch, BatchLoader<float> trainLoader,
        BatchLoader<float> testLoader, int epoch, int epochs, Action stop)
    {
        return console.Progress()
            .AutoClear(true)
            .HideCompleted(false)
            .Columns(
                new TaskDescriptionColumn { Alignment = Justify.Left },
                new ProgressBarColumn(),
                new PercentageColumn(),
                new TimeColumn())
            .Start(context =>
            {
                string prefix = $"epoch {epoch}/{epochs}";
                ProgressTask task = context.AddTask(Markup.Escape($"{prefix}  starting"), maxValue: trainLoader.BatchCount);
                EpochResult train = trainEpoch(epoch, p =>
                {
                    stop();
                    task.Description = Markup.Escape($"{prefix}  loss {p.Loss:F4}  acc {Percent(p.Accuracy)}  {p.ImagesPerSecond:N0} img/s");
                    task.Value = p.Batch;
                });
                task.Value = task.MaxValue;
                ProgressTask evaluation = context.AddTask(Markup.Escape($"{prefix}  testing on {testLoader.Count:N0} images"), maxValue: 1);
                evaluation.IsIndeterminate = true;
                EpochResult test = Test(model, testLoader);
                evaluation.IsIndeterminate = false;
                evaluation.Value = 1;
                return (train, test);
            });
    }

    /// <summary>An epoch reported as plain lines every ~10% of its batches (redirected output, CI).</summary>
    private static (EpochResult Train, EpochResult Test) PlainEpoch(
        IAnsiConsole console, Sequential<float> model, Func<int, Action<BatchProgress>, EpochResult> trainEpoch, BatchLoader<float> trainLoader,
        BatchLoader<float> testLoader, int epoch, int epochs, Action stop)
    {
        int batches = trainLoader.BatchCount, every = Math.Max(1, (batches + 9) / 10);
        int batchWidth = batches.ToString(CultureInfo.InvariantCulture).Length;
        EpochResult train = trainEpoch(epoch, p =>
        {
            stop();
            if (p.Batch % every != 0 && p.Batch != p.Batches) return;
            TimeSpan left = p.Batch == 0 ? TimeSpan.Zero : p.Elapsed / p.Batch * (p.Batches - p.Batch);
            console.WriteLine(
                $"epoch {epoch}/{epochs}  batch {p.Batch.ToString(CultureInfo.InvariantCulture).PadLeft(batchWidth)}/{p.Batches} " +
                $"({100.0 * p.Batch / p.Batches,3:F0}%)  loss {p.Loss:F4}  acc {Percent(p.Accuracy)}  {p.ImagesPerSecond:N0} img/s  " +
                $"elapsed {FormatDuration(p.Elapsed)}  left {FormatDuration(left)}");
        });
        EpochResult test = Test(model, testLoader);
        return (train, test);
    }

    /// <summary>Ranks of the job on this machine (Open MPI's OMPI_COMM_WORLD_LOCAL_SIZE), else all of them.</summary>
    /// <summary>
    /// The time inside MPI during training per step, least and most over the ranks: transfers, and a rank waiting for
    /// the others to reach the collective (separated with --profile-communication; otherwise in each collective's time).
    /// </summary>
    private static string CommunicationSummary(TimedCommunicator timed, TimeSpan trainTime, long steps, int buckets)
    {
        double[] mine = [timed.Total.TotalMilliseconds, timed.Waiting.Time.TotalMilliseconds, timed.AllGathers.Time.TotalMilliseconds,
            timed.AllReduces.Time.TotalMilliseconds, timed.NonblockingAllReduces.Time.TotalMilliseconds, trainTime.TotalMilliseconds];
        var all = new double[mine.Length * timed.Size];
        timed.AllGather<double>(mine, all);
        string Range(int k)
        {
            var values = Enumerable.Range(0, timed.Size).Select(r => all[r * mine.Length + k] / steps).ToArray();
            string F(double v) => v.ToString("F2", CultureInfo.InvariantCulture);
            return timed.Size == 1 ? F(values[0]) : $"{F(values.Min())}-{F(values.Max())}";
        }
        var shares = Enumerable.Range(0, timed.Size).Select(r => all[r * mine.Length] / all[r * mine.Length + 5]).ToArray();
        double Calls(CollectiveTime t) => (double)t.Calls / steps;
        return $"Communication per training step (least-most over the ranks): {Range(0)} ms inside MPI, {shares.Min():P1}-{shares.Max():P1} of the step" +
            (timed.SeparatesWaiting ? $"; waiting for the other ranks {Range(1)} ms" : "") +
            $"; SyncBatchNorm statistics {Range(2)} ms ({Calls(timed.AllGathers):F0} all-gathers), SyncBatchNorm backward and metrics {Range(3)} ms " +
            $"({Calls(timed.AllReduces):F0} all-reduces), gradients {Range(4)} ms not hidden by the backward ({buckets} buckets)";
    }

    private static int LocalRanks(ICommunicator communicator) =>
        int.TryParse(Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_LOCAL_SIZE"), out int local) && local > 0 ? local : communicator.Size;

    /// <summary>
    /// Every rank must train the same model on the same data with the same options (the output folder aside, which
    /// only rank 0 writes): their fingerprints are gathered and compared, and a rank that differs is named on all.
    /// </summary>
    private static void RequireSameRun(ICommunicator communicator, Settings s, long parameters, int trainImages, string checkpoint)
    {
        string run = $"{s with { Out = "", Threads = 0 }}|parameters={parameters}|train={trainImages}|resume={checkpoint}";
        long fingerprint = BitConverter.ToInt64(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(run)), 0);
        var all = new long[communicator.Size];
        communicator.AllGather<long>(new[] { fingerprint }, all);
        for (int r = 1; r < all.Length; r++)
            if (all[r] != all[0])
                throw new UsageException($"rank {r} was started with other options, data, model or checkpoint than rank 0 (this is rank {communicator.Rank}: {run}); start every rank with the same arguments");
    }

    /// <summary>The test set's loss (plain cross-entropy, without label smoothing, as 'sharpnorm eval') and accuracy.</summary>
    private static EpochResult Test(Sequential<float> model, BatchLoader<float> loader) => Trainer<float>.Evaluate(model, loader, Classes);

    internal static string Percent(double fraction) => (100 * fraction).ToString("F2", CultureInfo.InvariantCulture) + "%";

    internal static string FormatDuration(TimeSpan t) =>
        t.TotalHours >= 1 ? $"{(int)t.TotalHours}:{t.Minutes:D2}:{t.Seconds:D2}" : $"{t.Minutes}:{t.Seconds:D2}";

    private static string Quote(string path) => CommandLine.Quote(path);

    /// <summary>An mpirun command line for <paramref name="size"/> ranks, with the options Open MPI needs here (root, more ranks on this machine than its cores).</summary>
    private static string Mpirun(int size)
    {
        int local = int.TryParse(Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_LOCAL_SIZE"), CultureInfo.InvariantCulture, out int n) ? n : size;
        return "mpirun " + (Environment.UserName == "root" ? "--allow-run-as-root " : "") + (local > OnlineCores() ? "--oversubscribe " : "") + $"-np {size}";
    }

    /// <summary>
    /// The machine's physical cores, Open MPI's default slots (a rank bound to one core sees only that one in
    /// Environment.ProcessorCount): the online CPUs over the hardware threads per core.
    /// </summary>
    private static int OnlineCores()
    {
        try
        {
            int cpus = CountList(File.ReadAllText("/sys/devices/system/cpu/online"));
            int perCore = CountList(File.ReadAllText("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list"));
            return Math.Max(1, cpus / Math.Max(1, perCore));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or OverflowException)
        {
            return Environment.ProcessorCount;
        }

        // "0-1" or "0,2-5": a kernel CPU list
        static int CountList(string list) => list.Trim().Split(',').Sum(range =>
            range.Split('-') is [var a, var b] ? int.Parse(b, CultureInfo.InvariantCulture) - int.Parse(a, CultureInfo.InvariantCulture) + 1 : 1);
    }

    private static string Format(double x) => x.ToString("G4", CultureInfo.InvariantCulture);

    /// <summary>A learning rate: 0.1, 0.002, 4e-07.</summary>
    private static string FormatRate(double x) =>
        x.ToString(x == 0 || x >= 1e-3 ? "0.######" : "0.##e-00", CultureInfo.InvariantCulture);

    /// <summary>The settings that decide a run's results, as a checkpoint records them for --resume.</summary>
    /// <param name="ranks">The ranks of a distributed run; 0 for one process.</param>
    private static Dictionary<string, string> SettingsMetadata(Settings s, int ranks) => new()
    {
        ["norm"] = Names.Of(s.Norm),
        ["epochs"] = Invariant(s.Epochs),
        ["batch_size"] = Invariant(s.BatchSize),
        ["optimizer"] = s.Optimizer,
        ["lr"] = Invariant(s.LearningRate),
        ["label_smoothing"] = Invariant(s.LabelSmoothing),
        ["crop_padding"] = Invariant(s.CropPadding),
        ["seed"] = Invariant(s.Seed),
        ["limit"] = s.Limit is int l ? Invariant(l) : "",
        ["ranks"] = Invariant(ranks),
    };

    /// <summary>A run's state after an epoch: <c>checkpoint.safetensors</c> in its folder (model, optimizer, epoch, settings, metrics so far).</summary>
    private sealed class TrainingCheckpoint
    {
        public const string FileName = "checkpoint.safetensors";
        private const string OptimizerPrefix = "optimizer.";

        private readonly string _path;
        private readonly Dictionary<string, SafetensorsEntry> _tensors;
        private readonly Dictionary<string, string> _metadata;

        private TrainingCheckpoint(string path, Dictionary<string, SafetensorsEntry> tensors, Dictionary<string, string> metadata) =>
            (_path, _tensors, _metadata) = (path, tensors, metadata);

        public int Epoch { get; private init; }
        public List<EpochMetrics> History { get; } = [];

        /// <summary>What tells one checkpoint from another of the same run: ranks compare it before resuming.</summary>
        public string Fingerprint => $"{Epoch}|{_metadata.GetValueOrDefault("steps")}|{_metadata.GetValueOrDefault("history")}";

        /// <summary>The ranks the run trained on (0: one process), or null where the checkpoint does not say.</summary>
        public int? Ranks => _metadata.TryGetValue("ranks", out string? r) && int.TryParse(r, NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : null;

        public static void Write(string folder, Sequential<float> model, Optimizer<float> optimizer, int epoch, Dictionary<string, string> settings,
            List<EpochMetrics> history, int trainImages, double mean, double std)
        {
            var metadata = new Dictionary<string, string>(settings)
            {
                ["format"] = "sharpnorm-train-checkpoint",
                ["model"] = "DarkNetClassifier",
                ["epoch"] = Invariant(epoch),
                ["steps"] = optimizer.Steps.ToString(CultureInfo.InvariantCulture),
                ["train_images"] = Invariant(trainImages),
                ["mean"] = Invariant(mean),
                ["std"] = Invariant(std),
                ["history"] = string.Join(";", history.Select(m => string.Join(",", new[] { m.Epoch, m.TrainLoss, m.TrainAccuracy, m.TestLoss, m.TestAccuracy, m.Seconds, m.LearningRateEnd }.Select(v => Invariant(v))))),
            };
            var entries = Checkpoint.StateDict(model).Concat(optimizer.State.Select(b =>
                (OptimizerPrefix + b.Name, new SafetensorsEntry("F32", [b.Values.LongLength], System.Runtime.InteropServices.MemoryMarshal.AsBytes(b.Values.AsSpan()).ToArray()))));
            Safetensors.Write(Path.Combine(folder, FileName), entries, metadata);   // a temporary file, flushed, then renamed
        }

        public static TrainingCheckpoint Read(string folder)
        {
            string path = Path.Combine(folder, FileName);
            if (!Directory.Exists(folder)) throw new DirectoryNotFoundException($"--resume {folder}: no such folder");
            if (!File.Exists(path)) throw new FileNotFoundException($"--resume {folder}: no {FileName} in it (a run writes one after each epoch)", path);
            var (tensors, metadata) = Safetensors.Read(path);
            string Get(string key) => metadata.TryGetValue(key, out string? value) ? value
                : throw new InvalidDataException($"{path}: not a sharpnorm train checkpoint (no \"{key}\" in its metadata)");
            if (Get("format") != "sharpnorm-train-checkpoint" || Get("model") != "DarkNetClassifier")
                throw new InvalidDataException($"{path}: a {Get("format")} of {Get("model")}, not a sharpnorm train checkpoint of the DarkNetClassifier");
            var checkpoint = new TrainingCheckpoint(path, tensors, metadata) { Epoch = ParseInt(path, "epoch", Get("epoch")) };
            foreach (string row in Get("history").Split(';', StringSplitOptions.RemoveEmptyEntries))
            {
                double[] v = row.Split(',').Select(x => double.Parse(x, CultureInfo.InvariantCulture)).ToArray();
                if (v.Length != 7) throw new InvalidDataException($"{path}: a metrics row of {v.Length} values; 7 expected");
                checkpoint.History.Add(new EpochMetrics((int)v[0], v[1], v[2], v[3], v[4], v[5], v[6]));
            }
            if (checkpoint.History.Count != checkpoint.Epoch) throw new InvalidDataException($"{path}: {checkpoint.History.Count} metrics rows for {checkpoint.Epoch} epochs");
            return checkpoint;
        }

        private static int ParseInt(string path, string key, string value) =>
            int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : throw new InvalidDataException($"{path}: {key} \"{value}\" is not a count");

        private static double ParseDouble(string path, string key, string value) =>
            double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out double x) ? x : throw new InvalidDataException($"{path}: {key} \"{value}\" is not a number");

        /// <summary>The run's settings from the checkpoint (threads, data and flags from the command line).</summary>
        public Settings Apply(Settings s)
        {
            NormChoice norm = Enum.GetValues<NormChoice>().FirstOrDefault(n => Names.Of(n) == _metadata["norm"], (NormChoice)(-1));
            if (!Enum.IsDefined(norm)) throw new InvalidDataException($"{_path}: norm \"{_metadata["norm"]}\" is not one this version trains");
            string optimizer = _metadata["optimizer"] is "sgd" or "adamw" ? _metadata["optimizer"] : throw new InvalidDataException($"{_path}: optimizer \"{_metadata["optimizer"]}\" is not sgd or adamw");
            return s with
            {
                Norm = norm,
                Epochs = ParseInt(_path, "epochs", _metadata["epochs"]),
                BatchSize = ParseInt(_path, "batch_size", _metadata["batch_size"]),
                Optimizer = optimizer,
                LearningRate = ParseDouble(_path, "lr", _metadata["lr"]),
                LabelSmoothing = ParseDouble(_path, "label_smoothing", _metadata["label_smoothing"]),
                CropPadding = ParseInt(_path, "crop_padding", _metadata["crop_padding"]),
                Seed = int.Parse(_metadata["seed"], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture),
                Limit = _metadata["limit"].Length == 0 ? null : ParseInt(_path, "limit", _metadata["limit"]),
            };
        }

        /// <summary>Model and optimizer state from the checkpoint; everything checked first (a mismatch changes nothing).</summary>
        public void Restore(Sequential<float> model, Optimizer<float> optimizer, int trainImages, double mean, double std)
        {
            if (ParseInt(_path, "train_images", _metadata["train_images"]) != trainImages || ParseDouble(_path, "mean", _metadata["mean"]) != mean || ParseDouble(_path, "std", _metadata["std"]) != std)
                throw new InvalidDataException($"{_path}: the run trained on {_metadata["train_images"]} images of mean {_metadata["mean"]}; --data gives {trainImages} of mean {Invariant(mean)}");
            long steps = long.Parse(_metadata["steps"], NumberStyles.None, CultureInfo.InvariantCulture);
            IReadOnlyList<(string Name, float[] Values)> state = optimizer.State;
            foreach (var (name, values) in state)
            {
                if (!_tensors.TryGetValue(OptimizerPrefix + name, out SafetensorsEntry? entry) || entry.DType != "F32" || entry.Data.Length != values.Length * sizeof(float))
                    throw new InvalidDataException($"{_path}: the optimizer's {name} ({values.Length} values) is missing or of another size");
            }
            if (_tensors.Keys.Count(k => k.StartsWith(OptimizerPrefix, StringComparison.Ordinal)) != state.Count)
                throw new InvalidDataException($"{_path}: the checkpoint's optimizer state is of another optimizer");
            // the model's part, checked and loaded by Checkpoint.Load (which changes nothing on a mismatch)
            Checkpoint.Load(_tensors.Where(t => !t.Key.StartsWith(OptimizerPrefix, StringComparison.Ordinal)).ToDictionary(), model, _path);
            foreach (var (name, values) in state)
                System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(_tensors[OptimizerPrefix + name].Data).CopyTo(values);
            optimizer.Restore(steps);
        }
    }

    private static string Invariant(double x) => x.ToString("R", CultureInfo.InvariantCulture);

    private static string Invariant(int x) => x.ToString(CultureInfo.InvariantCulture);
}
