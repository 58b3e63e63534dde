using System.Numerics;

namespace SharpNorm.Layers;

/// <summary>
/// y = (x − mean) / std with one mean and std for every value, torchvision's Normalize for one channel: the input
/// normalization a model was trained with, as the first node of an exported or imported graph. dx = dy / std.
/// </summary>
public sealed class Normalize<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly T _mean, _std;

    public Normalize(double mean, double std)
    {
        if (!double.IsFinite(mean)) throw new ArgumentOutOfRangeException(nameof(mean), mean, "The mean must be finite.");
        if (!(std > 0) || !double.IsFinite(std)) throw new ArgumentOutOfRangeException(nameof(std), std, "The std must be positive and finite.");
        (Mean, Std) = (mean, std);
        (_mean, _std) = (T.CreateTruncating(mean), T.CreateTruncating(std));
    }

    public double Mean { get; }
    public double Std { get; }

    protected override string Description => $"Normalize({Mean}, {Std})";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        for (int i = 0; i < x.Length; i++) y[i] = (x[i] - _mean) / _std;
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        for (int i = 0; i < x.Length; i++) dx[i] = dy[i] / _std;
    }
}
