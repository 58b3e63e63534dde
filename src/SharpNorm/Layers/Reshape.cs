using System.Numerics;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// The values in a new shape, the twin of ONNX Reshape (and torch.reshape): each sample keeps its values in order.
/// The batch dimension is kept (the target's first entry is 0); of the others, 0 copies the input's length at that
/// position and one -1 takes what is left.
/// </summary>
public sealed class Reshape<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly long[] _target;

    public Reshape(params long[] target)
    {
        ArgumentNullException.ThrowIfNull(target);
        if (target.Length < 1 || target[0] != 0 || target.Count(d => d == -1) > 1 || target.Any(d => d < -1))
            throw new ArgumentException($"A reshape target keeps the batch (first entry 0) and has lengths >= 0 with at most one -1; got ({string.Join(", ", target)}).", nameof(target));
        _target = (long[])target.Clone();
    }

    public IReadOnlyList<long> Target => _target;

    protected override string Description => $"Reshape({string.Join(", ", _target)})";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        long values = 1;
        foreach (nint d in inputShape) values = d > 0 && values <= long.MaxValue / d ? values * d : throw Bad(inputShape);
        var shape = new nint[_target.Length];
        long known = 1;
        int infer = -1;
        for (int d = 0; d < _target.Length; d++)
        {
            long length = _target[d] == 0 ? (d < inputShape.Length ? inputShape[d] : throw Bad(inputShape)) : _target[d];
            if (length == -1) { infer = d; continue; }
            shape[d] = (nint)length;
            known = known <= long.MaxValue / length ? known * length : throw Bad(inputShape);
        }
        if (infer >= 0)
        {
            if (values % known != 0) throw Bad(inputShape);
            shape[infer] = (nint)(values / known);
        }
        else if (known != values) throw Bad(inputShape);
        return shape;
    }

    private ArgumentException Bad(ReadOnlySpan<nint> inputShape) =>
        new($"{Description} cannot take a non-empty input of shape {TensorData.Format(inputShape)}: the value counts differ.", "x");

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y) => x.CopyTo(y);

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) => dy.CopyTo(dx);
}

/// <summary>
/// The dimensions reordered, the twin of torch.permute and ONNX Transpose: y has length shape[perm[d]] in dimension d
/// and y[i_0, ..., i_k] = x at index i_d in dimension perm[d]. The batch dimension stays first.
/// </summary>
public sealed class Permute<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly int[] _order;

    public Permute(params int[] order)
    {
        ArgumentNullException.ThrowIfNull(order);
        if (order.Length < 1 || order[0] != 0 || order.Order().Where((d, i) => d != i).Any())
            throw new ArgumentException($"A permutation keeps the batch first and lists each dimension once; got ({string.Join(", ", order)}).", nameof(order));
        _order = (int[])order.Clone();
    }

    public IReadOnlyList<int> Order => _order;

    protected override string Description => $"Permute({string.Join(", ", _order)})";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        if (inputShape.Length != _order.Length || inputShape.Contains(0))
            throw new ArgumentException($"{Description} takes a non-empty input of rank {_order.Length}; got shape {TensorData.Format(inputShape)}.", "x");
        var shape = new nint[_order.Length];
        for (int d = 0; d < shape.Length; d++) shape[d] = inputShape[_order[d]];
        return shape;
    }

    /// <summary>Walks y in order: <paramref name="gather"/> copies x[offset] to y[i], else dx[offset] = dy[i].</summary>
    private void Walk(ReadOnlySpan<nint> shape, ReadOnlySpan<T> from, Span<T> to, bool gather)
    {
        int rank = _order.Length;
        Span<long> inputStrides = stackalloc long[rank], strides = stackalloc long[rank], lengths = stackalloc long[rank];
        long stride = 1;
        for (int d = rank - 1; d >= 0; d--) { inputStrides[d] = stride; stride *= shape[d]; }
        // the input's stride of each output dimension, and the output's lengths
        for (int d = 0; d < rank; d++) (strides[d], lengths[d]) = (inputStrides[_order[d]], shape[_order[d]]);
        Span<long> index = stackalloc long[rank];
        index.Clear();
        long offset = 0;
        for (int i = 0; i < to.Length; i++)
        {
            if (gather) to[i] = from[(int)offset];
            else to[(int)offset] = from[i];
            for (int d = rank - 1; d >= 0; d--)   // the next index, odometer style
            {
                offset += strides[d];
                if (++index[d] < lengths[d]) break;
                offset -= strides[d] * lengths[d];
                index[d] = 0;
            }
        }
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y) => Walk(shape, x, y, gather: true);

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) => Walk(shape, dy, dx, gather: false);
}
