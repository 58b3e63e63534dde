using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// Base of the layers around the norm layers: shape checks and the allocating overloads, written once. A subclass
/// says what output shape an input gets and computes on flat row-major spans.
/// </summary>
/// <remarks>Every check runs before any state or output is touched: a call that throws has changed nothing.</remarks>
public abstract class Layer<T> : ILayer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private int _maxDegreeOfParallelism = -1;
    private nint[]? _checkedInput;         // the last input shape OutputShape accepted, and its output shape
    private nint[] _checkedOutput = [];

    public virtual bool Training { get; set; } = true;

    public virtual int MaxDegreeOfParallelism
    {
        get => _maxDegreeOfParallelism;
        set => _maxDegreeOfParallelism = value is -1 or > 0
            ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, "MaxDegreeOfParallelism must be -1 (all cores) or positive.");
    }

    public virtual IEnumerable<Parameter<T>> Parameters => [];
    public virtual IEnumerable<LayerBuffer<T>> Buffers => [];

    /// <summary>The layer's name in messages, e.g. "MaxPool2d(2)".</summary>
    protected abstract string Description { get; }

    public abstract nint[] OutputShape(ReadOnlySpan<nint> inputShape);

    /// <summary>y = layer(x) on flat data; <paramref name="shape"/> is x's shape, already checked.</summary>
    protected abstract void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y);

    /// <summary>dx from x and dy on flat data; shapes already checked.</summary>
    protected abstract void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx);

    /// <summary>Adds the parameter gradients (layers without parameters do nothing).</summary>
    protected virtual void GradientCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy) { }

    public Tensor<T> Forward(Tensor<T> x)
    {
        ArgumentNullException.ThrowIfNull(x);
        x = TensorData.Contiguous(x);
        Tensor<T> y = TensorData.Create<T>(OutputShape(x.Lengths));
        Forward(x.AsReadOnlyTensorSpan(), y.AsTensorSpan());
        return y;
    }

    public Tensor<T> Backward(Tensor<T> x, Tensor<T> dy)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(dy);
        x = TensorData.Contiguous(x);
        Tensor<T> dx = TensorData.Create<T>(x.Lengths);
        Backward(x.AsReadOnlyTensorSpan(), TensorData.Contiguous(dy).AsReadOnlyTensorSpan(), dx.AsTensorSpan());
        return dx;
    }

    public void Gradient(Tensor<T> x, Tensor<T> dy)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(dy);
        Gradient(TensorData.Contiguous(x).AsReadOnlyTensorSpan(), TensorData.Contiguous(dy).AsReadOnlyTensorSpan());
    }

    public void Forward(ReadOnlyTensorSpan<T> x, TensorSpan<T> y)
    {
        RequireDense(x.Lengths, x.Strides, "x");
        RequireShape(y.Lengths, CheckedOutputShape(x.Lengths), "y");
        ForwardCore(x.Lengths, TensorData.Flat(x, "x"), TensorData.Flat(y, "y"));
    }

    public void Backward(ReadOnlyTensorSpan<T> x, ReadOnlyTensorSpan<T> dy, TensorSpan<T> dx)
    {
        RequireDense(x.Lengths, x.Strides, "x");
        RequireShape(dy.Lengths, CheckedOutputShape(x.Lengths), "dy");
        RequireShape(dx.Lengths, x.Lengths, "dx");
        ValidateBackward(x.Lengths);
        BackwardCore(x.Lengths, TensorData.Flat(x, "x"), TensorData.Flat(dy, "dy"), TensorData.Flat(dx, "dx"));
    }

    public void Gradient(ReadOnlyTensorSpan<T> x, ReadOnlyTensorSpan<T> dy)
    {
        RequireDense(x.Lengths, x.Strides, "x");
        RequireShape(dy.Lengths, CheckedOutputShape(x.Lengths), "dy");
        GradientCore(x.Lengths, TensorData.Flat(x, "x"), TensorData.Flat(dy, "dy"));
    }

    /// <summary>OutputShape for the input shape, remembered for the last shape so that repeated calls allocate nothing.</summary>
    private ReadOnlySpan<nint> CheckedOutputShape(ReadOnlySpan<nint> input)
    {
        if (_checkedInput is null || !input.SequenceEqual(_checkedInput))
        {
            nint[] output = OutputShape(input);
            _checkedInput = input.ToArray();
            _checkedOutput = output;
        }
        return _checkedOutput;
    }

    /// <summary>Checks that hold only for Backward (a Forward must have come first, for layers that keep state).</summary>
    protected virtual void ValidateBackward(ReadOnlySpan<nint> shape) { }

    protected int Threads => MaxDegreeOfParallelism == -1 ? Environment.ProcessorCount : MaxDegreeOfParallelism;

    protected static void RequireShape(ReadOnlySpan<nint> actual, ReadOnlySpan<nint> expected, string name)
    {
        if (!actual.SequenceEqual(expected))
            throw new ArgumentException($"Expected {name} of shape {TensorData.Format(expected)}; got shape {TensorData.Format(actual)}.", name);
    }

    private static void RequireDense(ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides, string name)
    {
        if (!TensorData.IsRowMajor(lengths, strides))
            throw new ArgumentException(
                $"Expected {name} to be a dense row-major (contiguous) tensor; got shape {TensorData.Format(lengths)} with strides {TensorData.Format(strides)}.", name);
    }

    /// <summary>Each value of <paramref name="parameters"/> drawn uniformly from ±<paramref name="bound"/>, in order (PyTorch's default initialization of weighted layers).</summary>
    private protected static void FillUniform(IEnumerable<Parameter<T>> parameters, double bound, Random random)
    {
        foreach (Parameter<T> p in parameters)
        {
            Span<T> values = TensorData.Flat(p.Value);
            for (int i = 0; i < values.Length; i++) values[i] = T.CreateTruncating((2 * random.NextDouble() - 1) * bound);
        }
    }

    /// <summary>A (height, width) pair from one value for both or two values, each at least <paramref name="minimum"/>.</summary>
    private protected static (int, int) Pair(int[] values, string name, int minimum)
    {
        ArgumentNullException.ThrowIfNull(values, name);
        if (values.Length is not (1 or 2) || values.Any(v => v < minimum))
            throw new ArgumentException($"{name} must be one or two integers >= {minimum}; got ({string.Join(", ", values)}).", name);
        return values.Length == 1 ? (values[0], values[0]) : (values[0], values[1]);
    }

    /// <summary>Checks an input of rank 4 (N, C, H, W) with at least one element; returns (N, C, H, W).</summary>
    protected (int N, int C, int H, int W) Require4d(ReadOnlySpan<nint> shape)
    {
        if (shape.Length != 4 || shape[0] <= 0 || shape[1] <= 0 || shape[2] <= 0 || shape[3] <= 0)
            throw new ArgumentException($"{Description} expects a non-empty input (N, C, H, W); got shape {TensorData.Format(shape)}.", "x");
        return (checked((int)shape[0]), checked((int)shape[1]), checked((int)shape[2]), checked((int)shape[3]));
    }
}
