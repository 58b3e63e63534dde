using System.Numerics;
using System.Numerics.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// y = x · scale + shift with one scale and shift for every value (no parameters): ONNX's Mul and Add by scalar
/// constants, darknet's scale_x_y. dx = dy · scale. The product and the sum are rounded one after the other, as two
/// ONNX nodes compute them; a unit scale is no product and a zero shift no sum, as the export writes them (so −0 stays −0).
/// </summary>
public sealed class ScaleShift<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly T _scale, _shift;

    public ScaleShift(double scale, double shift = 0)
    {
        if (!double.IsFinite(scale)) throw new ArgumentOutOfRangeException(nameof(scale), scale, "The scale must be finite.");
        if (!double.IsFinite(shift)) throw new ArgumentOutOfRangeException(nameof(shift), shift, "The shift must be finite.");
        (_scale, _shift) = (T.CreateTruncating(scale), T.CreateTruncating(shift));
        if (!T.IsFinite(_scale)) throw new ArgumentOutOfRangeException(nameof(scale), scale, $"The scale must be finite in {typeof(T).Name}.");
        if (!T.IsFinite(_shift)) throw new ArgumentOutOfRangeException(nameof(shift), shift, $"The shift must be finite in {typeof(T).Name}.");
        (Scale, Shift) = (scale, shift);
    }

    public double Scale { get; }
    public double Shift { get; }

    protected override string Description => $"ScaleShift({Scale}, {Shift})";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        if (Scale == 1) x.CopyTo(y);
        else TensorPrimitives.Multiply(x, _scale, y);
        if (Shift != 0) TensorPrimitives.Add(y, _shift, y);
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        if (Scale == 1) dy.CopyTo(dx);
        else TensorPrimitives.Multiply(dy, _scale, dx);
    }
}
