using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Kernels;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// Fully connected layer, the twin of torch.nn.Linear: y = x Wᵀ + b for input (*, in), weight (out, in), bias (out).
/// Up to 4 rows go by dot products of the weight rows, more by the matrix product: a row's outputs may differ in their
/// last bit between those two (as in PyTorch, whose kernels also change with the batch), never with the thread count.
/// </summary>
public sealed class Linear<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly Gemm<T> _gemm = new();
    private readonly MatrixVector<T> _matrixVector = new();

    /// <param name="inFeatures">Size of the last input dimension.</param>
    /// <param name="outFeatures">Size of the last output dimension.</param>
    /// <param name="bias">Whether the layer adds a learnable bias.</param>
    /// <param name="random">Source of the initial weights (PyTorch's default: uniform in ±1/sqrt(in)); a fixed seed when null.</param>
    public Linear(int inFeatures, int outFeatures, bool bias = true, Random? random = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(inFeatures);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(outFeatures);
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        Weight = new Parameter<T>("weight", [outFeatures, inFeatures], T.Zero);
        if (bias) Bias = new Parameter<T>("bias", [outFeatures], T.Zero);
        ResetParameters(random ?? new Random(0));
    }

    public int InFeatures { get; }
    public int OutFeatures { get; }
    public Parameter<T> Weight { get; }
    public Parameter<T>? Bias { get; }

    public override IEnumerable<Parameter<T>> Parameters => Bias is null ? [Weight] : [Weight, Bias];

    protected override string Description => $"Linear({InFeatures}, {OutFeatures})";

    /// <summary>Draws weight and bias uniformly from ±1/sqrt(in), PyTorch's default initialization.</summary>
    public void ResetParameters(Random random)
    {
        ArgumentNullException.ThrowIfNull(random);
        double bound = 1 / Math.Sqrt(InFeatures);
        FillUniform(Parameters, bound, random);
    }

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        if (inputShape.Length < 1 || inputShape[^1] != InFeatures || inputShape.Contains(0))
            throw new ArgumentException($"{Description} expects a non-empty input (*, {InFeatures}); got shape {TensorData.Format(inputShape)}.", "x");
        nint[] output = inputShape.ToArray();
        output[^1] = OutFeatures;
        return output;
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        int rows = x.Length / InFeatures;
        if (rows <= MatrixVector<T>.MaxRows)
            _matrixVector.Multiply(rows, OutFeatures, InFeatures, x, TensorData.Flat(Weight.Value), y, Threads);
        else
        {
            _gemm.MaxDegreeOfParallelism = MaxDegreeOfParallelism;
            _gemm.Multiply(false, true, rows, OutFeatures, InFeatures, x, InFeatures, TensorData.Flat(Weight.Value), InFeatures, y, OutFeatures, accumulate: false);
        }
        if (Bias is null) return;
        ReadOnlySpan<T> bias = TensorData.Flat(Bias.Value);
        for (int r = 0; r < rows; r++) TensorPrimitives.Add(y.Slice(r * OutFeatures, OutFeatures), bias, y.Slice(r * OutFeatures, OutFeatures));
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        int rows = x.Length / InFeatures;
        _gemm.MaxDegreeOfParallelism = MaxDegreeOfParallelism;
        // dx (rows x in) = dy (rows x out) · W (out x in)
        _gemm.Multiply(false, false, rows, InFeatures, OutFeatures, dy, OutFeatures, TensorData.Flat(Weight.Value), InFeatures, dx, InFeatures, accumulate: false);
    }

    protected override void GradientCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy)
    {
        int rows = x.Length / InFeatures;
        _gemm.MaxDegreeOfParallelism = MaxDegreeOfParallelism;
        // dW (out x in) += dyᵀ (out x rows) · x (rows x in)
        _gemm.Multiply(true, false, OutFeatures, InFeatures, rows, dy, OutFeatures, x, InFeatures, TensorData.Flat(Weight.Gradient), InFeatures, accumulate: true);
        if (Bias is null) return;
        Span<T> biasGradient = TensorData.Flat(Bias.Gradient);
        for (int r = 0; r < rows; r++) TensorPrimitives.Add(biasGradient, dy.Slice(r * OutFeatures, OutFeatures), biasGradient);
    }
}

/// <summary>Flattens every dimension after the first, the twin of torch.nn.Flatten(): (N, *) to (N, prod(*)).</summary>
public sealed class Flatten<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    protected override string Description => "Flatten";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        if (inputShape.Length < 1)
            throw new ArgumentException($"Flatten expects input of rank 1 or more; got shape {TensorData.Format(inputShape)}.", "x");
        if (inputShape.Length == 1) return inputShape.ToArray();
        long rest = 1;
        for (int d = 1; d < inputShape.Length; d++) rest *= inputShape[d];
        return [inputShape[0], checked((nint)rest)];
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y) => x.CopyTo(y);

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) => dy.CopyTo(dx);
}

/// <summary>
/// Dropout, the twin of torch.nn.Dropout: in training each element is zeroed with probability p and the rest are
/// scaled by 1/(1-p); in eval it is the identity. The mask of the last Forward is kept for Backward. The random stream
/// comes from the seed, so a run is reproducible.
/// </summary>
public sealed class Dropout<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly Random _random;
    private bool[] _keep = [];
    private int _maskLength = -1;   // -1: no training Forward yet
    private bool _lastForwardTrained;

    public Dropout(double p = 0.5, int seed = 0)
    {
        if (!(p >= 0 && p <= 1))
            throw new ArgumentOutOfRangeException(nameof(p), p, "Dropout probability must be between 0 and 1.");
        P = p;
        _random = new Random(seed);
    }

    public double P { get; }

    protected override string Description => $"Dropout({P})";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        _lastForwardTrained = Training && P > 0;
        if (!_lastForwardTrained)
        {
            x.CopyTo(y);
            return;
        }
        if (_keep.Length < x.Length) _keep = new bool[x.Length];
        _maskLength = x.Length;
        T scale = P >= 1 ? T.Zero : T.One / T.CreateTruncating(1 - P);
        for (int i = 0; i < x.Length; i++)
        {
            _keep[i] = _random.NextDouble() >= P;
            y[i] = _keep[i] ? x[i] * scale : T.Zero;
        }
    }

    protected override void ValidateBackward(ReadOnlySpan<nint> shape)
    {
        long length = 1;
        foreach (nint d in shape) length *= d;
        if (_lastForwardTrained && length != _maskLength)
            throw new ArgumentException($"Dropout: Backward needs the input of the last Forward ({_maskLength} elements); got shape {TensorData.Format(shape)}.", "x");
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        if (!_lastForwardTrained)
        {
            dy.CopyTo(dx);
            return;
        }
        T scale = P >= 1 ? T.Zero : T.One / T.CreateTruncating(1 - P);
        for (int i = 0; i < dy.Length; i++) dx[i] = _keep[i] ? dy[i] * scale : T.Zero;
    }
}
