using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Kernels;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// The contract every normalization layer shares: affine parameters, the Forward / Backward / Gradient methods with
/// their allocating and span overloads, and input validation. A subclass maps its input onto the engine's groups and
/// says when it normalizes with statistics of its own (running statistics) instead of the batch's.
/// </summary>
/// <remarks>
/// Not thread-safe: one layer serves one caller at a time, like a torch.nn module.
/// A call that throws has changed nothing: every check runs before any state is touched.
/// </remarks>
public abstract class NormLayer<T> : ILayer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly NormEngine<T> _engine = new();
    private nint[] _forwardShape = [];     // shape of the last Forward's input; empty before the first
    private bool _forwardUsedBatchStatistics;
    private long _forwardVersion;
    // Backward's reductions are Gradient's too: remember which (x, dy) they were computed for.
    private GradientSumsKey _gradientSumsKey;

    /// <param name="parameterShape">Shape of Weight and Bias.</param>
    /// <param name="eps">Added to the variance for numerical stability.</param>
    /// <param name="affine">Whether the layer has learnable Weight (gamma) and Bias (beta).</param>
    /// <param name="bias">Whether an affine layer has Bias (beta) besides Weight (LayerNorm's bias: false, RMSNorm).</param>
    protected NormLayer(ReadOnlySpan<nint> parameterShape, double eps, bool affine, bool bias = true)
    {
        if (!(eps >= 0) || double.IsInfinity(eps))
            throw new ArgumentOutOfRangeException(nameof(eps), eps, "eps must be a finite number >= 0.");
        Eps = eps;
        Affine = affine;
        if (affine)
        {
            Weight = new Parameter<T>("weight", parameterShape, T.One);
            if (bias) Bias = new Parameter<T>("bias", parameterShape, T.Zero);
        }
    }

    public double Eps { get; }
    public bool Affine { get; }

    /// <summary>Training mode or eval mode. Default true, as PyTorch's train().</summary>
    public bool Training { get; set; } = true;

    /// <summary>gamma; null when <see cref="Affine"/> is false.</summary>
    public Parameter<T>? Weight { get; }

    /// <summary>beta; null when <see cref="Affine"/> is false or the layer has no bias.</summary>
    public Parameter<T>? Bias { get; }

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

    /// <summary>A fused block ran this layer's forward in its own passes: the engine holds nothing of it, so Backward and Gradient called on the layer alone need a Forward of its own first.</summary>
    internal void ForgetForward()
    {
        _forwardShape = [];
        _gradientSumsKey = default;
    }

    /// <summary>The kernel engine (tests lower its vector width).</summary>
    internal NormEngine<T> Engine => _engine;

    protected abstract string LayerName { get; }

    /// <summary>Checks rank and channels of an input (ArgumentException naming expected and actual shapes) and maps it onto the engine.</summary>
    protected abstract NormGeometry MapInput(ReadOnlySpan<nint> lengths);

    /// <summary>False for RMSNorm: the mean is not subtracted and the mean square takes the variance's place.</summary>
    protected virtual bool SubtractsMean => true;

    /// <summary>Whether training normalizes by the unbiased batch variance (darknet's BatchNorm) instead of the biased one (PyTorch's).</summary>
    protected virtual bool NormalizesByUnbiasedVariance => false;

    /// <summary>Whether the next Forward normalizes with the batch's own statistics (else <see cref="ForwardWithOwnStatistics"/>).</summary>
    protected virtual bool UsesBatchStatistics => true;

    /// <summary>Checks that hold only when batch statistics are taken (throws ArgumentException; changes nothing).</summary>
    protected virtual void ValidateBatchStatistics(in NormGeometry g, ReadOnlySpan<nint> lengths) { }

    /// <summary>Called after the batch statistics of a Forward are computed (running statistics update).</summary>
    protected virtual void OnBatchStatistics(in NormGeometry g) { }

    /// <summary>Forward with the layer's own statistics (running statistics in eval mode).</summary>
    protected virtual void ForwardWithOwnStatistics(in NormGeometry g, ReadOnlySpan<T> x, Span<T> y) =>
        throw new InvalidOperationException($"{LayerName} has no statistics of its own.");

    /// <summary>Weight and Bias, where the layer has them.</summary>
    public IEnumerable<Parameter<T>> Parameters
    {
        get
        {
            if (Weight is not null) yield return Weight;
            if (Bias is not null) yield return Bias;
        }
    }

    /// <summary>Running statistics, where the layer keeps them.</summary>
    public virtual IEnumerable<LayerBuffer<T>> Buffers => [];

    /// <summary>The output has the input's shape; throws ArgumentException for an input the layer cannot take.</summary>
    public nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        MapInput(inputShape);
        return inputShape.ToArray();
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

    /// <summary>Writes the normalized x into y (same shape).</summary>
    public void Forward(ReadOnlyTensorSpan<T> x, TensorSpan<T> y)
    {
        NormGeometry g = ValidateInput(x.Lengths, x.Strides);
        RequireSameShape(x.Lengths, y.Lengths, "y");
        ReadOnlySpan<T> input = TensorData.Flat(x, "x");
        Span<T> output = TensorData.Flat(y, "y");
        bool useBatchStatistics = UsesBatchStatistics;
        if (useBatchStatistics) ValidateBatchStatistics(g, x.Lengths);

        // Validation is complete: from here on nothing throws, so state changes are all-or-nothing.
        if (useBatchStatistics)
        {
            _engine.Forward(g, input, output, GammaOrEmpty(), BetaOrEmpty(), Eps, SubtractsMean, NormalizesByUnbiasedVariance);
            OnBatchStatistics(g);
        }
        else
        {
            ForwardWithOwnStatistics(g, input, output);
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
    /// closed-form derivative through the statistics; with the layer's own statistics (eval) it is gamma*invstd*dy.
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
    /// Accumulates dL/dgamma = Σ dy*xhat and dL/dbeta = Σ dy (per parameter) into Weight.Gradient and Bias.Gradient (if any),
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
        _engine.AccumulateParameterGradients(TensorData.Flat(Weight!.Gradient), Bias is null ? default : TensorData.Flat(Bias.Gradient));
    }

    private NormGeometry ValidateInput(ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides)
    {
        // the element count first, saturating, so that no size derived from it below can overflow
        long length = 1;
        foreach (nint d in lengths) length = d <= 0 ? 0 : length > Array.MaxLength / d ? long.MaxValue : length * d;
        if (length == 0)
            throw new ArgumentException($"{LayerName} expects a non-empty input; got shape {TensorData.Format(lengths)}.", "x");
        if (length > Array.MaxLength)
            throw new ArgumentException($"{LayerName} takes at most {Array.MaxLength} elements; got shape {TensorData.Format(lengths)}.", "x");
        NormGeometry g = MapInput(lengths);
        if (!TensorData.IsRowMajor(lengths, strides))
            throw new ArgumentException(
                $"Expected x to be a dense row-major (contiguous) tensor; got shape {TensorData.Format(lengths)} with strides {TensorData.Format(strides)}.", "x");
        return g;
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

    protected ReadOnlySpan<T> GammaOrEmpty() => Affine ? TensorData.Flat(Weight!.Value) : default;
    protected ReadOnlySpan<T> BetaOrEmpty() => Bias is null ? default : TensorData.Flat(Bias.Value);

    /// <summary>Index of the channel dimension: 1, or the last one for channels-last input of rank 3 or more.</summary>
    protected static int ChannelDimension(ReadOnlySpan<nint> lengths, ChannelLayout layout) =>
        layout == ChannelLayout.Last && lengths.Length > 2 ? lengths.Length - 1 : 1;

    /// <summary>Product of the dimensions other than batch (0) and channels.</summary>
    protected static int SpatialSize(ReadOnlySpan<nint> lengths, ChannelLayout layout)
    {
        int channel = ChannelDimension(lengths, layout);
        long size = 1;
        for (int d = 1; d < lengths.Length; d++)
            if (d != channel) size *= lengths[d];
        return checked((int)size);
    }

    /// <summary>"(N, C, ...)" or "(N, ..., C)" with the expected channel count, for messages.</summary>
    protected static string ExpectedShape(ChannelLayout layout, int channels) =>
        layout == ChannelLayout.Last ? $"(N, ..., {channels})" : $"(N, {channels}, ...)";

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
