using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Kernels;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// What BatchNorm and InstanceNorm share (PyTorch's _NormBase): parameters, running statistics, train/eval
/// semantics and the Forward / Backward / Gradient contract. Subclasses say only how an input maps onto the
/// engine's groups.
/// </summary>
/// <remarks>
/// Not thread-safe: one layer serves one caller at a time, like a torch.nn module.
/// A call that throws has changed nothing: every check runs before any state is touched.
/// </remarks>
public abstract class RunningStatsNorm<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly NormEngine<T> _engine = new();
    private nint[] _forwardShape = [];     // shape of the last Forward's input; empty before the first
    private bool _forwardUsedBatchStatistics;
    private long _forwardVersion;
    // Backward's reductions are Gradient's too: remember which (x, dy) they were computed for.
    private GradientSumsKey _gradientSumsKey;
    private readonly double[] _runningScratch;

    protected RunningStatsNorm(int numFeatures, double eps, double? momentum, bool affine, bool trackRunningStats)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numFeatures);
        if (!(eps >= 0) || double.IsInfinity(eps))
            throw new ArgumentOutOfRangeException(nameof(eps), eps, "eps must be a finite number >= 0.");
        if (momentum is double m && !(m >= 0 && m <= 1))
            throw new ArgumentOutOfRangeException(nameof(momentum), momentum, "momentum must lie in [0, 1], or be null for a cumulative moving average.");

        NumFeatures = numFeatures;
        _runningScratch = trackRunningStats ? new double[2 * numFeatures] : [];
        Eps = eps;
        Momentum = momentum;
        Affine = affine;
        TrackRunningStats = trackRunningStats;
        nint[] channels = [numFeatures];
        if (affine)
        {
            Weight = new Parameter<T>("weight", channels, T.One);
            Bias = new Parameter<T>("bias", channels, T.Zero);
        }
        if (trackRunningStats)
        {
            RunningMean = Tensor.CreateFromShape<T>(channels);
            RunningVar = Tensor.CreateFromShape<T>(channels);
            RunningVar.Fill(T.One);
        }
    }

    public int NumFeatures { get; }
    public double Eps { get; }
    public double? Momentum { get; }
    public bool Affine { get; }
    public bool TrackRunningStats { get; }

    /// <summary>Training mode (batch statistics, running statistics updated) or eval mode. Default true, as PyTorch's train().</summary>
    public bool Training { get; set; } = true;

    /// <summary>gamma, shape (C); null when <see cref="Affine"/> is false.</summary>
    public Parameter<T>? Weight { get; }

    /// <summary>beta, shape (C); null when <see cref="Affine"/> is false.</summary>
    public Parameter<T>? Bias { get; }

    /// <summary>Running mean, shape (C); null when <see cref="TrackRunningStats"/> is false.</summary>
    public Tensor<T>? RunningMean { get; }

    /// <summary>Running (unbiased) variance, shape (C); null when <see cref="TrackRunningStats"/> is false.</summary>
    public Tensor<T>? RunningVar { get; }

    /// <summary>Number of training batches seen while tracking (BatchNorm only, as in PyTorch).</summary>
    public long NumBatchesTracked { get; private set; }

    /// <summary>
    /// Most threads a call may use; -1 (default) for all cores. Results are bit-identical for any value.
    /// </summary>
    public int MaxDegreeOfParallelism
    {
        get => _engine.MaxDegreeOfParallelism;
        set => _engine.MaxDegreeOfParallelism = value is -1 or > 0
            ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, "MaxDegreeOfParallelism must be -1 (all cores) or positive.");
    }

    /// <summary>The kernel engine (tests lower its vector width).</summary>
    internal NormEngine<T> Engine => _engine;

    protected abstract string LayerName { get; }
    protected abstract int MinRank { get; }
    protected abstract string ShapeDescription { get; }
    /// <summary>Whether training steps increment <see cref="NumBatchesTracked"/> (and momentum null means 1/count).</summary>
    protected abstract bool CountsBatches { get; }
    protected abstract string TooFewValuesMessage { get; }
    protected abstract NormGeometry MapGeometry(ReadOnlySpan<nint> lengths);

    protected static int SpatialSize(ReadOnlySpan<nint> lengths)
    {
        long size = 1;
        for (int d = 2; d < lengths.Length; d++) size *= lengths[d];
        return checked((int)size);
    }

    /// <summary>Sets the running statistics to their initial values (mean 0, variance 1) and the batch count to 0.</summary>
    public void ResetRunningStats()
    {
        if (!TrackRunningStats) return;
        RunningMean!.Clear();
        RunningVar!.Fill(T.One);
        NumBatchesTracked = 0;
    }

    /// <summary>Clears the accumulated gradients of Weight and Bias.</summary>
    public void ZeroGrad()
    {
        Weight?.ZeroGrad();
        Bias?.ZeroGrad();
    }

    /// <summary>y = normalize(x): allocates y and calls <see cref="Forward(ReadOnlyTensorSpan{T}, TensorSpan{T})"/>.</summary>
    public Tensor<T> Forward(Tensor<T> x)
    {
        ArgumentNullException.ThrowIfNull(x);
        x = TensorData.Contiguous(x);
        Tensor<T> y = TensorData.Create<T>(x.Lengths);
        Forward(x.AsReadOnlyTensorSpan(), y.AsTensorSpan());
        return y;
    }

    /// <summary>
    /// Writes the normalized x into y (same shape). Training: batch statistics, and the running statistics
    /// updated when tracked. Eval: the running statistics when tracked, else the batch statistics.
    /// </summary>
    public void Forward(ReadOnlyTensorSpan<T> x, TensorSpan<T> y)
    {
        NormGeometry g = ValidateInput(x.Lengths, x.Strides);
        RequireSameShape(x.Lengths, y.Lengths, "y");
        ReadOnlySpan<T> input = TensorData.Flat(x, "x");
        Span<T> output = TensorData.Flat(y, "y");
        bool useBatchStatistics = Training || !TrackRunningStats;
        if (useBatchStatistics && g.GroupSize <= 1)
            throw new ArgumentException($"{TooFewValuesMessage}, got input size {TensorData.Format(x.Lengths)}.", nameof(x));

        // Validation is complete: from here on nothing throws, so state changes are all-or-nothing.
        if (useBatchStatistics)
        {
            _engine.Forward(g, input, output, GammaOrEmpty(), BetaOrEmpty(), Eps);
            if (Training && TrackRunningStats) UpdateRunningStatistics(g);
        }
        else
        {
            _engine.Forward(g, input, output, TensorData.Flat(RunningMean!), TensorData.Flat(RunningVar!), GammaOrEmpty(), BetaOrEmpty(), Eps);
        }

        if (_forwardShape.Length != x.Rank) _forwardShape = new nint[x.Rank];
        x.Lengths.CopyTo(_forwardShape);
        _forwardUsedBatchStatistics = useBatchStatistics;
        _forwardVersion++;
    }

    /// <summary>dL/dx for the last Forward on x: allocates dx and calls the span overload.</summary>
    public Tensor<T> Backward(Tensor<T> x, Tensor<T> dy)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(dy);
        x = TensorData.Contiguous(x);
        dy = TensorData.Contiguous(dy);
        Tensor<T> dx = TensorData.Create<T>(x.Lengths);
        Backward(x.AsReadOnlyTensorSpan(), dy.AsReadOnlyTensorSpan(), dx.AsTensorSpan());
        return dx;
    }

    /// <summary>
    /// Writes dL/dx into dx for the last Forward on x, given dy = dL/dy. With batch statistics this is the full
    /// closed-form derivative through the statistics; with running statistics (eval) it is gamma*invstd*dy.
    /// </summary>
    public void Backward(ReadOnlyTensorSpan<T> x, ReadOnlyTensorSpan<T> dy, TensorSpan<T> dx)
    {
        ValidateBackward(x, dy);
        RequireSameShape(x.Lengths, dx.Lengths, "dx");
        ReadOnlySpan<T> input = TensorData.Flat(x, "x");
        ReadOnlySpan<T> gradOutput = TensorData.Flat(dy, "dy");
        Span<T> gradInput = TensorData.Flat(dx, "dx");

        _engine.Backward(input, gradOutput, gradInput, GammaOrEmpty(), _forwardUsedBatchStatistics);
        // With batch statistics Backward made the parameter-gradient reductions too.
        if (_forwardUsedBatchStatistics) _gradientSumsKey = GradientSumsKey.Of(input, gradOutput, _forwardVersion);
    }

    /// <summary>Accumulates dL/dgamma and dL/dbeta into Weight.Gradient and Bias.Gradient.</summary>
    public void Gradient(Tensor<T> x, Tensor<T> dy)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(dy);
        Gradient(TensorData.Contiguous(x).AsReadOnlyTensorSpan(), TensorData.Contiguous(dy).AsReadOnlyTensorSpan());
    }

    /// <summary>
    /// Accumulates dL/dgamma = Σ dy*xhat and dL/dbeta = Σ dy (per channel) into Weight.Gradient and Bias.Gradient,
    /// for the last Forward on x. After Backward on the same x and dy (same memory, no Forward in between) it reuses
    /// Backward's reductions instead of reading the tensors again. Nothing to do when the layer is not affine.
    /// </summary>
    public void Gradient(ReadOnlyTensorSpan<T> x, ReadOnlyTensorSpan<T> dy)
    {
        ValidateBackward(x, dy);
        ReadOnlySpan<T> input = TensorData.Flat(x, "x");
        ReadOnlySpan<T> gradOutput = TensorData.Flat(dy, "dy");
        if (!Affine) return;

        var key = GradientSumsKey.Of(input, gradOutput, _forwardVersion);
        if (!key.Equals(_gradientSumsKey))
        {
            _engine.ComputeGradientSums(input, gradOutput);
            _gradientSumsKey = key;
        }
        _engine.AccumulateParameterGradients(TensorData.Flat(Weight!.Gradient), TensorData.Flat(Bias!.Gradient));
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private void UpdateRunningStatistics(in NormGeometry g)
    {
        double factor = Momentum ?? 0.0;
        if (CountsBatches)
        {
            NumBatchesTracked++;
            if (Momentum is null) factor = 1.0 / NumBatchesTracked;
        }

        Span<T> runningMean = TensorData.Flat(RunningMean!);
        Span<T> runningVar = TensorData.Flat(RunningVar!);
        ReadOnlySpan<double> mean = _engine.GroupMean, variance = _engine.GroupVariance;
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

    private NormGeometry ValidateInput(ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides)
    {
        if (lengths.Length < MinRank || lengths.Length > 5)
            throw new ArgumentException(
                $"{LayerName} expects input of rank {MinRank} to 5, {ShapeDescription}; got rank {lengths.Length} input of shape {TensorData.Format(lengths)}.", "x");
        if (lengths[1] != NumFeatures)
            throw new ArgumentException(
                $"{LayerName}(numFeatures: {NumFeatures}) expects {NumFeatures} channels in dimension 1, shape (N, {NumFeatures}, ...); got shape {TensorData.Format(lengths)}.", "x");
        long length = 1;
        foreach (nint d in lengths) length *= d;
        if (length == 0)
            throw new ArgumentException($"{LayerName} expects a non-empty input; got shape {TensorData.Format(lengths)}.", "x");
        if (length > Array.MaxLength)
            throw new ArgumentException($"{LayerName} takes at most {Array.MaxLength} elements; got shape {TensorData.Format(lengths)}.", "x");
        if (!TensorData.IsRowMajor(lengths, strides))
            throw new ArgumentException(
                $"Expected x to be a dense row-major (contiguous) tensor; got shape {TensorData.Format(lengths)} with strides {TensorData.Format(strides)}.", "x");
        return MapGeometry(lengths);
    }

    private void ValidateBackward(in ReadOnlyTensorSpan<T> x, in ReadOnlyTensorSpan<T> dy)
    {
        if (_forwardShape.Length == 0)
            throw new InvalidOperationException($"{LayerName}: Backward and Gradient need a Forward on the same input first.");
        if (!TensorData.SameShape(x.Lengths, _forwardShape))
            throw new ArgumentException(
                $"{LayerName}: x must be the input of the last Forward, shape {TensorData.Format(_forwardShape)}; got shape {TensorData.Format(x.Lengths)}.", nameof(x));
        RequireSameShape(x.Lengths, dy.Lengths, "dy");
    }

    private static void RequireSameShape(ReadOnlySpan<nint> expected, ReadOnlySpan<nint> actual, string name)
    {
        if (!TensorData.SameShape(expected, actual))
            throw new ArgumentException($"Expected {name} of shape {TensorData.Format(expected)} like x; got shape {TensorData.Format(actual)}.", name);
    }

    private ReadOnlySpan<T> GammaOrEmpty() => Affine ? TensorData.Flat(Weight!.Value) : default;
    private ReadOnlySpan<T> BetaOrEmpty() => Affine ? TensorData.Flat(Bias!.Value) : default;

    /// <summary>Identifies the (x, dy) memory and forward the cached gradient sums belong to.</summary>
    private readonly record struct GradientSumsKey(nint X, nint Dy, int Length, long ForwardVersion)
    {
        public static unsafe GradientSumsKey Of(ReadOnlySpan<T> x, ReadOnlySpan<T> dy, long forwardVersion)
        {
            fixed (T* px = x)
            fixed (T* pdy = dy)
                return new GradientSumsKey((nint)px, (nint)pdy, x.Length, forwardVersion);
        }
    }
}
