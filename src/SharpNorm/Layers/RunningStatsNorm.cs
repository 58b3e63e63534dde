using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using SharpNorm.Kernels;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// What BatchNorm and InstanceNorm add to the norm-layer contract (PyTorch's _NormBase): running statistics and
/// train/eval semantics. Subclasses say only how an input maps onto the engine's groups.
/// </summary>
public abstract class RunningStatsNorm<T> : NormLayer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly double[] _runningScratch;

    protected RunningStatsNorm(int numFeatures, double eps, double? momentum, bool affine, bool trackRunningStats, ChannelLayout layout)
        : base(ValidFeatureShape(numFeatures), eps, affine)
    {
        if (!Enum.IsDefined(layout)) throw new ArgumentOutOfRangeException(nameof(layout), layout, "layout must be First or Last.");
        Layout = layout;
        if (momentum is double m && !(m >= 0 && m <= 1))
            throw new ArgumentOutOfRangeException(nameof(momentum), momentum, "momentum must lie in [0, 1], or be null for a cumulative moving average.");

        if (trackRunningStats) Limits.RequireParameter("running statistics", [numFeatures]);
        NumFeatures = numFeatures;
        Momentum = momentum;
        TrackRunningStats = trackRunningStats;
        _runningScratch = trackRunningStats ? new double[2 * numFeatures] : [];
        if (trackRunningStats)
        {
            RunningMean = Tensor.CreateFromShape<T>([numFeatures]);
            RunningVar = Tensor.CreateFromShape<T>([numFeatures]);
            RunningVar.Fill(T.One);
        }
    }

    public int NumFeatures { get; }
    public double? Momentum { get; }
    public bool TrackRunningStats { get; }

    /// <summary>Whether channels are dimension 1 (N, C, *) or the last dimension (N, *, C).</summary>
    public ChannelLayout Layout { get; }

    /// <summary>Running mean, shape (C); null when <see cref="TrackRunningStats"/> is false.</summary>
    public Tensor<T>? RunningMean { get; }

    /// <summary>Running (unbiased) variance, shape (C); null when <see cref="TrackRunningStats"/> is false.</summary>
    public Tensor<T>? RunningVar { get; }

    /// <summary>Number of training batches seen while tracking (BatchNorm only, as in PyTorch).</summary>
    public long NumBatchesTracked { get; private set; }

    protected abstract int MinRank { get; }
    /// <summary>The shapes the layer takes, for messages, in its layout.</summary>
    protected abstract string ShapeDescription { get; }
    /// <summary>Whether training steps increment <see cref="NumBatchesTracked"/> (and momentum null means 1/count).</summary>
    protected abstract bool CountsBatches { get; }
    protected abstract string TooFewValuesMessage { get; }
    /// <summary>The engine's view of an input with <paramref name="batch"/> samples, <paramref name="channels"/> channels and
    /// <paramref name="spatial"/> positions per channel, in <see cref="Layout"/>.</summary>
    protected abstract NormGeometry MapGeometry(int batch, int channels, int spatial);

    /// <summary>running_mean, running_var and num_batches_tracked when tracking, as PyTorch's _NormBase registers them.</summary>
    public override IEnumerable<LayerBuffer<T>> Buffers
    {
        get
        {
            if (!TrackRunningStats) yield break;
            yield return new LayerBuffer<T>("running_mean", RunningMean!);
            yield return new LayerBuffer<T>("running_var", RunningVar!);
            yield return new LayerBuffer<T>("num_batches_tracked", () => NumBatchesTracked, value => NumBatchesTracked = value >= 0
                ? value
                : throw new ArgumentOutOfRangeException(nameof(value), value, "num_batches_tracked must be >= 0."));
        }
    }

    /// <summary>Sets the running statistics to their initial values (mean 0, variance 1) and the batch count to 0.</summary>
    public void ResetRunningStats()
    {
        if (!TrackRunningStats) return;
        RunningMean!.Clear();
        RunningVar!.Fill(T.One);
        NumBatchesTracked = 0;
    }

    // Training, or no running statistics to use: the batch's own (as PyTorch's bn_training / use_input_stats).
    protected override bool UsesBatchStatistics => Training || !TrackRunningStats;

    protected override NormGeometry MapInput(ReadOnlySpan<nint> lengths)
    {
        if (lengths.Length < MinRank || lengths.Length > 5)
            throw new ArgumentException(
                $"{LayerName} expects input of rank {MinRank} to 5, {ShapeDescription}; got rank {lengths.Length} input of shape {TensorData.Format(lengths)}.", "x");
        int channel = ChannelDimension(lengths, Layout);
        if (lengths[channel] != NumFeatures)
            throw new ArgumentException(
                $"{LayerName}(numFeatures: {NumFeatures}) expects {NumFeatures} channels in dimension {channel}, shape {ExpectedShape(Layout, NumFeatures)}; got shape {TensorData.Format(lengths)}.", "x");
        return MapGeometry((int)lengths[0], NumFeatures, SpatialSize(lengths, Layout));
    }

    protected override void ValidateBatchStatistics(in NormGeometry g, ReadOnlySpan<nint> lengths)
    {
        if (g.GroupSize <= 1)
            throw new ArgumentException($"{TooFewValuesMessage}, got input size {TensorData.Format(lengths)}.", "x");
    }

    protected override void OnBatchStatistics(in NormGeometry g)
    {
        if (Training && TrackRunningStats) UpdateRunningStatistics(g);
    }

    protected override void ForwardWithOwnStatistics(in NormGeometry g, ReadOnlySpan<T> x, Span<T> y) =>
        Engine.Forward(g, x, y, TensorData.Flat(RunningMean!), TensorData.Flat(RunningVar!), GammaOrEmpty(), BetaOrEmpty(), Eps);

    /// <summary>Whether the next Forward takes the batch's statistics (training, or no running statistics to use).</summary>
    internal bool TakesBatchStatistics => UsesBatchStatistics;

    /// <summary>The running update for statistics computed outside the layer (a fused block's): one group per channel of <paramref name="count"/> values.</summary>
    internal void UpdateRunningStatistics(ReadOnlySpan<double> mean, ReadOnlySpan<double> variance, int count) =>
        UpdateRunningStatistics(new NormGeometry(1, 1, NumFeatures, 1, count), mean, variance);

    private void UpdateRunningStatistics(in NormGeometry g) => UpdateRunningStatistics(g, Engine.GroupMean, Engine.GroupVariance);

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void UpdateRunningStatistics(in NormGeometry g, ReadOnlySpan<double> mean, ReadOnlySpan<double> variance)
    {
        double factor = Momentum ?? 0.0;
        if (CountsBatches)
        {
            NumBatchesTracked++;
            if (Momentum is null) factor = 1.0 / NumBatchesTracked;
        }

        Span<T> runningMean = TensorData.Flat(RunningMean!);
        Span<T> runningVar = TensorData.Flat(RunningVar!);
        double count = g.GroupSize, unbias = count / (count - 1);
        // One update per group, averaged over a (InstanceNorm's instances), as ATen's instance_norm does.
        // Groups are visited in storage order (a outer); each channel's terms are still added in order of a.
        Span<double> newMean = _runningScratch.AsSpan(0, g.B), newVar = _runningScratch.AsSpan(g.B, g.B);
        newMean.Clear();
        newVar.Clear();
        for (int a = 0; a < g.A; a++)
            for (int b = 0; b < g.B; b++)
            {
                int group = a * g.B + b;
                newMean[b] += factor * mean[group] + (1 - factor) * double.CreateTruncating(runningMean[b]);
                newVar[b] += factor * variance[group] * unbias + (1 - factor) * double.CreateTruncating(runningVar[b]);
            }
        for (int b = 0; b < g.B; b++)
        {
            runningMean[b] = T.CreateTruncating(newMean[b] / g.A);
            runningVar[b] = T.CreateTruncating(newVar[b] / g.A);
        }
    }

    private static nint[] ValidFeatureShape(int numFeatures)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numFeatures);
        return [numFeatures];
    }
}
