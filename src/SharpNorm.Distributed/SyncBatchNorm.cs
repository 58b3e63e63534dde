using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Kernels;
using SharpNorm.Layers;
using SharpNorm.Tensors;

namespace SharpNorm.Distributed;

/// <summary>
/// Batch normalization over the global batch of every rank, the twin of torch.nn.SyncBatchNorm (channels first: input
/// (N, C, *)). In training each rank sums its part's per-channel moments, the ranks all-gather them (count, mean, M2)
/// and merge them in rank order in double (count-weighted: ranks may hold different batch sizes, one may hold none),
/// so every rank normalizes by the same statistics and keeps the same running statistics. The backward all-reduces
/// the two per-channel sums (Σ dy, Σ dy·(x - μ)) in one packed call and writes dx in BatchNorm's closed form with the
/// global count; the parameter gradients are each rank's own sums, as PyTorch's (data-parallel training averages them
/// across ranks). Eval mode, and training with one rank, are the wrapped <see cref="BatchNorm{T}"/>'s, bit for bit.
/// </summary>
public sealed class SyncBatchNorm<T> : ILayer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly BatchNorm<T> _local;
    private readonly ChannelMoments<T> _moments = new();
    private readonly BatchNormActivation<T> _passes = new();
    private readonly double[] _mean, _variance, _invStd, _statistics, _sums;
    private readonly T[] _center, _p, _q, _a, _b, _e;
    private double[] _gathered = [], _planeSum1 = [], _planeSum2 = [];
    private bool _synced;          // the last Forward normalized by merged statistics
    private nint[] _syncedShape = [];
    private double _globalCount;

    /// <param name="numFeatures">C, the channels (dimension 1 of the input).</param>
    /// <param name="communicator">The ranks whose batches make the global batch.</param>
    /// <param name="eps">Added to the variance for numerical stability.</param>
    /// <param name="momentum">Weight of the batch statistics in the running update; null for a cumulative moving average.</param>
    /// <param name="affine">Whether the layer has learnable gamma (Weight) and beta (Bias).</param>
    /// <param name="trackRunningStats">Whether the layer keeps running statistics and uses them in eval mode.</param>
    public SyncBatchNorm(int numFeatures, ICommunicator communicator, double eps = 1e-5, double? momentum = 0.1, bool affine = true,
        bool trackRunningStats = true)
        : this(new BatchNorm<T>(numFeatures, eps, momentum, affine, trackRunningStats), communicator)
    {
    }

    /// <summary>
    /// Wraps an existing BatchNorm: its parameters, running statistics and state_dict names become this layer's (what
    /// <see cref="SyncBatchNorm.Convert{T}"/> does to a model's layers).
    /// </summary>
    public SyncBatchNorm(BatchNorm<T> batchNorm, ICommunicator communicator)
    {
        ArgumentNullException.ThrowIfNull(batchNorm);
        ArgumentNullException.ThrowIfNull(communicator);
        if (batchNorm.Layout != ChannelLayout.First)
            throw new ArgumentException("SyncBatchNorm takes channels-first input (N, C, *), as PyTorch's; this BatchNorm is channels last.", nameof(batchNorm));
        if (batchNorm.UnbiasedNormalization)
            throw new ArgumentException("SyncBatchNorm normalizes by the biased batch variance, as PyTorch's; this BatchNorm uses darknet's unbiased one.", nameof(batchNorm));
        _local = batchNorm;
        Communicator = communicator;
        int c = batchNorm.NumFeatures;
        (_mean, _variance, _invStd, _statistics, _sums) = (new double[c], new double[c], new double[c], new double[3 * c], new double[2 * c]);
        (_center, _p, _q, _a, _b, _e) = (new T[c], new T[c], new T[c], new T[c], new T[c], new T[c]);
    }

    public ICommunicator Communicator { get; }

    /// <summary>The wrapped BatchNorm (parameters, running statistics, eval mode).</summary>
    public BatchNorm<T> Local => _local;

    public int NumFeatures => _local.NumFeatures;
    public Parameter<T>? Weight => _local.Weight;
    public Parameter<T>? Bias => _local.Bias;
    public Tensor<T>? RunningMean => _local.RunningMean;
    public Tensor<T>? RunningVar => _local.RunningVar;

    public bool Training
    {
        get => _local.Training;
        set => _local.Training = value;
    }

    public int MaxDegreeOfParallelism
    {
        get => _local.MaxDegreeOfParallelism;
        set => _local.MaxDegreeOfParallelism = value;
    }

    private int Threads => MaxDegreeOfParallelism == -1 ? Environment.ProcessorCount : MaxDegreeOfParallelism;

    public IEnumerable<Parameter<T>> Parameters => _local.Parameters;

    public IEnumerable<LayerBuffer<T>> Buffers => _local.Buffers;

    public nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        Validate(inputShape);
        return inputShape.ToArray();
    }

    public void Forward(ReadOnlyTensorSpan<T> x, TensorSpan<T> y)
    {
        if (Communicator.Size == 1 || !_local.TakesBatchStatistics)
        {
            _synced = false;
            _local.Forward(x, y);
            return;
        }
        nint[] shape = x.Lengths.ToArray();
        (int batch, int plane) = Validate(shape);
        if (!y.Lengths.SequenceEqual(x.Lengths))
            throw new ArgumentException($"SyncBatchNorm: y must have x's shape {TensorData.Format(shape)}; got {TensorData.Format(y.Lengths)}.", nameof(y));
        // An empty part (a rank with no images) still takes part in the collectives.
        ReadOnlySpan<T> xs = batch * plane == 0 ? default : TensorData.Flat(x, "x");
        Span<T> ys = batch * plane == 0 ? default : TensorData.Flat(y, "y");
        int channels = NumFeatures;

        // This rank's moments per channel (count, mean, M2), then every rank's, merged in rank order.
        _moments.Reset(batch, channels);
        if (batch > 0 && plane > 0)
        {
            for (int n = 0; n < batch; n++)
                for (int c = 0; c < channels; c++) _moments.Set(n, c, xs.Slice((n * channels + c) * plane, plane));
            _moments.Combine(_mean, _variance);
        }
        double localCount = (double)batch * plane;
        for (int c = 0; c < channels; c++)
        {
            _statistics[3 * c] = localCount;
            _statistics[3 * c + 1] = localCount > 0 ? _mean[c] : 0;
            _statistics[3 * c + 2] = localCount > 0 ? _variance[c] * localCount : 0;
        }
        int size = Communicator.Size;
        if (_gathered.Length < 3 * channels * size) _gathered = new double[3 * channels * size];
        Communicator.AllGather<double>(_statistics, _gathered.AsSpan(0, 3 * channels * size));
        double total = 0;
        for (int r = 0; r < size; r++) total += _gathered[3 * channels * r];
        if (total <= 1)
            throw new ArgumentException($"Expected more than 1 value per channel when training, got {total} over the {size} ranks (this rank's input {TensorData.Format(shape)}).", nameof(x));
        for (int c = 0; c < channels; c++)
        {
            double count = 0, mean = 0, m2 = 0;
            for (int r = 0; r < size; r++)
            {
                int at = 3 * (channels * r + c);
                double n = _gathered[at];
                if (n == 0) continue;
                double sum = count + n, delta = _gathered[at + 1] - mean;
                mean += delta * (n / sum);
                m2 += _gathered[at + 2] + delta * delta * (count * n / sum);
                count = sum;
            }
            _mean[c] = mean;
            _variance[c] = m2 / count;
            _invStd[c] = 1.0 / Math.Sqrt(_variance[c] + _local.Eps);
        }
        if (_local.TrackRunningStats) _local.UpdateRunningStatistics(_mean, _variance, checked((int)total));
        _globalCount = total;

        // y = (x - center)·p + q per channel, p = γ/σ, q = β - p·(μ - center), the center μ rounded to T.
        ReadOnlySpan<T> gamma = Weight is null ? default : TensorData.Flat(Weight.Value), beta = Bias is null ? default : TensorData.Flat(Bias.Value);
        for (int c = 0; c < channels; c++)
        {
            _center[c] = T.CreateTruncating(_mean[c]);
            double p = (gamma.IsEmpty ? 1.0 : double.CreateTruncating(gamma[c])) * _invStd[c];
            _p[c] = T.CreateTruncating(p);
            _q[c] = T.CreateTruncating((beta.IsEmpty ? 0.0 : double.CreateTruncating(beta[c])) - p * (_mean[c] - double.CreateTruncating(_center[c])));
        }
        if (batch > 0 && plane > 0) _passes.Forward(xs, ys, channels, plane, _center, _p, _q, T.One, Threads);
        _synced = true;
        _syncedShape = shape;
        _local.ForgetForward();
    }

    public void Backward(ReadOnlyTensorSpan<T> x, ReadOnlyTensorSpan<T> dy, TensorSpan<T> dx)
    {
        if (!_synced)
        {
            _local.Backward(x, dy, dx);
            return;
        }
        (int batch, int plane) = RequireSyncedShapes(x, dy, dx.Lengths);
        int channels = NumFeatures;
        bool empty = batch * plane == 0;
        ReadOnlySpan<T> xs = empty ? default : TensorData.Flat(x, "x"), dys = empty ? default : TensorData.Flat(dy, "dy");
        LocalSums(xs, dys, batch, plane);
        // Σ dy and Σ dy·(x - μ) over every rank's part, one packed all-reduce.
        Communicator.AllReduce<double>(_sums);
        ReadOnlySpan<T> gamma = Weight is null ? default : TensorData.Flat(Weight.Value);
        for (int c = 0; c < channels; c++)
        {
            // dx = k·(dy - Σdy/M) - k·σ⁻²·(x - μ)·Σ dy·(x - μ)/M, M the global count.
            double k = (gamma.IsEmpty ? 1.0 : double.CreateTruncating(gamma[c])) * _invStd[c];
            double b = -k * _invStd[c] * _invStd[c] * _sums[channels + c] / _globalCount;
            _a[c] = T.CreateTruncating(k);
            _b[c] = T.CreateTruncating(b);
            _e[c] = T.CreateTruncating(-k * _sums[c] / _globalCount + b * (double.CreateTruncating(_center[c]) - _mean[c]));
        }
        if (!empty) _passes.InputGradient(xs, dys, TensorData.Flat(dx, "dx"), channels, plane, _center, _p, _q, T.One, _a, _b, _e, Threads);
    }

    /// <summary>dγ += this rank's Σ dy·x̂, dβ += its Σ dy (no collective: data-parallel training averages the ranks' gradients).</summary>
    public void Gradient(ReadOnlyTensorSpan<T> x, ReadOnlyTensorSpan<T> dy)
    {
        if (!_synced)
        {
            _local.Gradient(x, dy);
            return;
        }
        (int batch, int plane) = RequireSyncedShapes(x, dy, dy.Lengths);
        if (Weight is null || batch * plane == 0) return;
        LocalSums(TensorData.Flat(x, "x"), TensorData.Flat(dy, "dy"), batch, plane);
        Span<T> dGamma = TensorData.Flat(Weight.Gradient);
        Span<T> dBeta = Bias is null ? default : TensorData.Flat(Bias.Gradient);
        for (int c = 0; c < NumFeatures; c++)
        {
            dGamma[c] += T.CreateTruncating(_sums[NumFeatures + c] * _invStd[c]);
            if (!dBeta.IsEmpty) dBeta[c] += T.CreateTruncating(_sums[c]);
        }
    }

    /// <summary>This rank's Σ dy and Σ dy·(x - μ) per channel into _sums (images in order), by the fused block's reduce pass.</summary>
    private void LocalSums(ReadOnlySpan<T> x, ReadOnlySpan<T> dy, int batch, int plane)
    {
        int channels = NumFeatures, planes = batch * channels;
        _sums.AsSpan().Clear();
        if (batch == 0 || plane == 0) return;
        if (_planeSum1.Length < planes)
        {
            _planeSum1 = new double[planes];
            _planeSum2 = new double[planes];
        }
        _passes.Reduce(x, dy, channels, plane, _center, _p, _q, T.One, _planeSum1, _planeSum2, Threads);
        BatchNormActivation<T>.ChannelSums(_planeSum1, _planeSum2, batch, channels, _mean, _center, _sums.AsSpan(0, channels), _sums.AsSpan(channels, channels));
    }

    private (int Batch, int Plane) Validate(ReadOnlySpan<nint> shape)
    {
        if (shape.Length < 2 || shape.Length > 5 || shape[1] != NumFeatures)
            throw new ArgumentException($"SyncBatchNorm(numFeatures: {NumFeatures}) expects input (N, {NumFeatures}, *) of rank 2 to 5; got shape {TensorData.Format(shape)}.", "x");
        long plane = 1;
        for (int d = 2; d < shape.Length; d++) plane *= shape[d];
        return (checked((int)shape[0]), checked((int)plane));
    }

    private (int Batch, int Plane) RequireSyncedShapes(ReadOnlyTensorSpan<T> x, ReadOnlyTensorSpan<T> dy, ReadOnlySpan<nint> output)
    {
        if (!x.Lengths.SequenceEqual(_syncedShape) || !dy.Lengths.SequenceEqual(_syncedShape) || !output.SequenceEqual(_syncedShape))
            throw new InvalidOperationException(
                $"SyncBatchNorm: Backward and Gradient take the last training Forward's shape {TensorData.Format(_syncedShape)}; got x {TensorData.Format(x.Lengths)}, dy {TensorData.Format(dy.Lengths)}.");
        return Validate(_syncedShape);
    }
}

/// <summary>PyTorch's convert_sync_batchnorm for SharpNorm models.</summary>
public static class SyncBatchNorm
{
    /// <summary>
    /// A copy of <paramref name="model"/>'s layer list with every channels-first BatchNorm wrapped in a
    /// <see cref="SyncBatchNorm{T}"/> over <paramref name="communicator"/> (same parameter and buffer objects, so the
    /// same state_dict names and optimizer state); nested Sequentials are converted too.
    /// </summary>
    public static Sequential<T> Convert<T>(Sequential<T> model, ICommunicator communicator) where T : unmanaged, IFloatingPointIeee754<T>
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(communicator);
        ILayer<T>[] layers = model.Layers.Select(layer => layer switch
        {
            BatchNorm<T> { Layout: ChannelLayout.First, UnbiasedNormalization: false } norm => new SyncBatchNorm<T>(norm, communicator),
            Sequential<T> inner => Convert(inner, communicator),
            _ => layer,
        }).ToArray();
        return new Sequential<T>(layers) { Training = model.Training, MaxDegreeOfParallelism = model.MaxDegreeOfParallelism, FuseConvBatchNorm = model.FuseConvBatchNorm };
    }
}
