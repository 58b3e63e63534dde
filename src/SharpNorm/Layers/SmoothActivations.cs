using System.Numerics;
using System.Numerics.Tensors;

namespace SharpNorm.Layers;

/// <summary>Logistic sigmoid, the twin of torch.nn.Sigmoid (darknet's <c>logistic</c>): y = 1 / (1 + e^-x); dx = dy·y(1 − y).</summary>
public sealed class Sigmoid<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    protected override string Description => "Sigmoid";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y) => TensorPrimitives.Sigmoid(x, y);

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        for (int i = 0; i < x.Length; i++)
        {
            T s = T.One / (T.One + T.Exp(-x[i]));
            dx[i] = dy[i] * s * (T.One - s);
        }
    }
}

/// <summary>Hyperbolic tangent, the twin of torch.nn.Tanh: dx = dy·(1 − y²).</summary>
public sealed class Tanh<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    protected override string Description => "Tanh";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y) => TensorPrimitives.Tanh(x, y);

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        for (int i = 0; i < x.Length; i++)
        {
            T t = T.Tanh(x[i]);
            dx[i] = dy[i] * (T.One - t * t);
        }
    }
}

/// <summary>x·sigmoid(x), the twin of torch.nn.SiLU (darknet's <c>swish</c>): dx = dy·(s + x·s(1 − s)).</summary>
public sealed class SiLU<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    protected override string Description => "SiLU";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        for (int i = 0; i < x.Length; i++) y[i] = x[i] / (T.One + T.Exp(-x[i]));
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        for (int i = 0; i < x.Length; i++)
        {
            T s = T.One / (T.One + T.Exp(-x[i]));
            dx[i] = dy[i] * (s + x[i] * s * (T.One - s));
        }
    }
}

/// <summary>
/// x·tanh(softplus(x)), the twin of torch.nn.Mish (darknet's <c>mish</c>); softplus is x itself above 20, as darknet
/// and torch.nn.functional.softplus take it. dx = dy·(t + x·sigmoid(x)·(1 − t²)) with t = tanh(softplus(x)).
/// </summary>
public sealed class Mish<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private static readonly T Threshold = T.CreateTruncating(20);

    protected override string Description => "Mish";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

    private static T Softplus(T x) => x > Threshold ? x : T.LogP1(T.Exp(x));

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        for (int i = 0; i < x.Length; i++) y[i] = x[i] * T.Tanh(Softplus(x[i]));
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        for (int i = 0; i < x.Length; i++)
        {
            T t = T.Tanh(Softplus(x[i])), s = T.One / (T.One + T.Exp(-x[i]));
            dx[i] = dy[i] * (t + x[i] * s * (T.One - t * t));
        }
    }
}

/// <summary>
/// Softmax along <see cref="Dimension"/> (the classes, dimension 1, by default), the twin of torch.nn.Softmax(dim):
/// y = e^(x − max) / Σ e^(x − max); dx = y·(dy − Σ dy·y).
/// </summary>
public sealed class Softmax<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public Softmax(int dimension = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(dimension);
        Dimension = dimension;
    }

    public int Dimension { get; }

    protected override string Description => $"Softmax(dim={Dimension})";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        if (inputShape.Length <= Dimension)
            throw new ArgumentException($"{Description} needs inputs of rank {Dimension + 1} or more; got shape {Tensors.TensorData.Format(inputShape)}.", "x");
        return inputShape.ToArray();
    }

    private (int Outer, int Length, int Inner) Sizes(ReadOnlySpan<nint> shape)
    {
        long outer = 1, inner = 1;
        for (int d = 0; d < Dimension; d++) outer *= shape[d];
        for (int d = Dimension + 1; d < shape.Length; d++) inner *= shape[d];
        return ((int)outer, (int)shape[Dimension], (int)inner);
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        var (outer, length, inner) = Sizes(shape);
        for (int o = 0; o < outer; o++)
            for (int j = 0; j < inner; j++)
            {
                int first = o * length * inner + j;
                T max = T.NegativeInfinity;
                for (int k = 0; k < length; k++) max = T.Max(max, x[first + k * inner]);
                T sum = T.Zero;
                for (int k = 0; k < length; k++) sum += y[first + k * inner] = T.Exp(x[first + k * inner] - max);
                for (int k = 0; k < length; k++) y[first + k * inner] /= sum;
            }
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        ForwardCore(shape, x, dx);   // dx holds y until it is overwritten, one column at a time
        var (outer, length, inner) = Sizes(shape);
        for (int o = 0; o < outer; o++)
            for (int j = 0; j < inner; j++)
            {
                int first = o * length * inner + j;
                T dot = T.Zero;
                for (int k = 0; k < length; k++) dot += dy[first + k * inner] * dx[first + k * inner];
                for (int k = 0; k < length; k++) dx[first + k * inner] *= dy[first + k * inner] - dot;
            }
    }
}

/// <summary>The input unchanged, the twin of torch.nn.Identity: a graph node that names a tensor (darknet's [cost]).</summary>
public sealed class Identity<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    protected override string Description => "Identity";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y) => x.CopyTo(y);

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) => dy.CopyTo(dx);
}

/// <summary>Exponential linear unit with α = 1, the twin of torch.nn.ELU() (darknet's <c>elu</c>): y = x for x &gt; 0, else e^x − 1.</summary>
public sealed class ELU<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    protected override string Description => "ELU";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        for (int i = 0; i < x.Length; i++) y[i] = x[i] > T.Zero ? x[i] : T.Exp(x[i]) - T.One;
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        for (int i = 0; i < x.Length; i++) dx[i] = x[i] > T.Zero ? dy[i] : dy[i] * T.Exp(x[i]);
    }
}
