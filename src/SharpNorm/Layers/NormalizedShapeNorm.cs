using System.Numerics;
using SharpNorm.Kernels;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// What LayerNorm and RMSNorm share: statistics per input row over the trailing dimensions given by the normalized
/// shape, and affine parameters of that shape. An input (*, K1, ..., Km) is seen as A rows of K = K1*...*Km elements.
/// </summary>
public abstract class NormalizedShapeNorm<T> : NormLayer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly int[] _normalizedShape;

    private protected NormalizedShapeNorm(int[] normalizedShape, double eps, bool elementwiseAffine, bool bias)
        : base(ValidShape(normalizedShape), eps, elementwiseAffine, bias)
    {
        _normalizedShape = (int[])normalizedShape.Clone();
        NormalizedSize = _normalizedShape.Aggregate(1, (product, d) => product * d);
    }

    /// <summary>The trailing dimensions normalized together (PyTorch's normalized_shape).</summary>
    public IReadOnlyList<int> NormalizedShape => _normalizedShape;

    /// <summary>K, the number of elements normalized together: the product of <see cref="NormalizedShape"/>.</summary>
    public int NormalizedSize { get; }

    /// <summary>Same as <see cref="NormLayer{T}.Affine"/>, under PyTorch's name.</summary>
    public bool ElementwiseAffine => Affine;

    // One group per row: x[rows, 1, 1, K, 1], parameters along the row.
    protected override NormGeometry MapInput(ReadOnlySpan<nint> lengths)
    {
        int rank = _normalizedShape.Length;
        bool matches = lengths.Length >= rank;
        for (int d = 0; matches && d < rank; d++) matches = lengths[lengths.Length - rank + d] == _normalizedShape[d];
        if (!matches)
            throw new ArgumentException(
                $"Given normalizedShape {TensorData.Format(_normalizedShape.Select(d => (nint)d).ToArray())}, {LayerName} expects input of shape " +
                $"(*, {string.Join(", ", _normalizedShape)}); got shape {TensorData.Format(lengths)}.", "x");
        long rows = 1;
        for (int d = 0; d < lengths.Length - rank; d++) rows *= lengths[d];
        if (rows > int.MaxValue)
            throw new ArgumentException($"{LayerName} takes at most {int.MaxValue} rows; got shape {TensorData.Format(lengths)}.", "x");
        return new NormGeometry((int)rows, 1, 1, NormalizedSize, 1);
    }

    private static nint[] ValidShape(int[] normalizedShape)
    {
        ArgumentNullException.ThrowIfNull(normalizedShape);
        if (normalizedShape.Length == 0 || normalizedShape.Any(d => d <= 0))
            throw new ArgumentException(
                $"normalizedShape must have at least one dimension, each positive; got ({string.Join(", ", normalizedShape)}).", nameof(normalizedShape));
        long size = normalizedShape.Aggregate(1L, (product, d) => product * d);
        if (size > Array.MaxLength)
            throw new ArgumentException($"normalizedShape may hold at most {Array.MaxLength} elements; got {size}.", nameof(normalizedShape));
        return normalizedShape.Select(d => (nint)d).ToArray();
    }
}
