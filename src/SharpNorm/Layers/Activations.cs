using System.Numerics;
using System.Numerics.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// Leaky rectifier, the twin of torch.nn.LeakyReLU: y = x for x &gt; 0, else slope*x. The default slope is darknet's
/// 0.1 (PyTorch's is 0.01); dx = dy where x &gt; 0, else slope*dy (PyTorch's choice at x = 0).
/// </summary>
public sealed class LeakyReLU<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly T _slope;

    /// <param name="negativeSlope">The slope for negative inputs; 0 gives ReLU.</param>
    public LeakyReLU(double negativeSlope = 0.1)
    {
        if (!double.IsFinite(negativeSlope))
            throw new ArgumentOutOfRangeException(nameof(negativeSlope), negativeSlope, "negativeSlope must be finite.");
        NegativeSlope = negativeSlope;
        _slope = T.CreateTruncating(negativeSlope);
    }

    public double NegativeSlope { get; }

    protected override string Description => $"LeakyReLU({NegativeSlope})";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y) => Rectifier.Forward(x, y, _slope);

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) =>
        Rectifier.Backward(x, dy, dx, _slope);
}

/// <summary>Rectifier, the twin of torch.nn.ReLU: y = max(x, 0); dx = dy where x &gt; 0, else 0.</summary>
public sealed class ReLU<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    protected override string Description => "ReLU";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y) => Rectifier.Forward(x, y, T.Zero);

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) =>
        Rectifier.Backward(x, dy, dx, T.Zero);
}

internal static class Rectifier
{
    /// <summary>y = x &gt; 0 ? x : slope*x (NaN stays NaN).</summary>
    public static void Forward<T>(ReadOnlySpan<T> x, Span<T> y, T slope) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && Vector<T>.IsSupported)
        {
            var slopes = new Vector<T>(slope);
            for (; i <= x.Length - Vector<T>.Count; i += Vector<T>.Count)
            {
                var v = new Vector<T>(x[i..]);
                Vector.ConditionalSelect(Vector.LessThanOrEqual(v, Vector<T>.Zero), v * slopes, v).CopyTo(y[i..]);
            }
        }
        for (; i < x.Length; i++) y[i] = x[i] <= T.Zero ? x[i] * slope : x[i];
    }

    /// <summary>dx = x &gt; 0 ? dy : slope*dy.</summary>
    public static void Backward<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx, T slope) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && Vector<T>.IsSupported)
        {
            var slopes = new Vector<T>(slope);
            for (; i <= x.Length - Vector<T>.Count; i += Vector<T>.Count)
            {
                var g = new Vector<T>(dy[i..]);
                Vector.ConditionalSelect(Vector.GreaterThan(new Vector<T>(x[i..]), Vector<T>.Zero), g, g * slopes).CopyTo(dx[i..]);
            }
        }
        for (; i < x.Length; i++) dx[i] = x[i] > T.Zero ? dy[i] : dy[i] * slope;
    }
}
