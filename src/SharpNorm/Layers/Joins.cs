using System.Numerics;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// A layer of several inputs, the joins of a <see cref="Graph{T}"/>: it computes on flat row-major data, each input
/// with its shape. Its backward gives the gradient with respect to one input at a time (the graph adds the
/// contributions of every consumer of a tensor).
/// </summary>
public interface IJoinLayer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>The output shape for these input shapes; an ArgumentException saying what does not fit otherwise.</summary>
    nint[] OutputShape(IReadOnlyList<nint[]> inputShapes);

    /// <summary>y from the inputs (each as long as its shape says).</summary>
    void Forward(ReadOnlySpan<ReadOnlyMemory<T>> inputs, IReadOnlyList<nint[]> shapes, Span<T> y);

    /// <summary>Overwrites <paramref name="dInput"/> with ∂L/∂(input <paramref name="input"/>) from dy.</summary>
    void Backward(int input, IReadOnlyList<nint[]> shapes, ReadOnlySpan<T> dy, Span<T> dInput);
}

/// <summary>
/// The inputs one after another along <see cref="Dimension"/> (channels by default), the twin of torch.cat: darknet's
/// [route] of several layers. Every other dimension must agree.
/// </summary>
public sealed class Concat<T>(int dimension = 1) : IJoinLayer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public int Dimension { get; } = dimension >= 0 ? dimension : throw new ArgumentOutOfRangeException(nameof(dimension), dimension, "The dimension must be >= 0.");

    public nint[] OutputShape(IReadOnlyList<nint[]> inputShapes)
    {
        ArgumentNullException.ThrowIfNull(inputShapes);
        if (inputShapes.Count == 0) throw new ArgumentException("Concat needs at least one input.", nameof(inputShapes));
        nint[] first = inputShapes[0];
        if (first.Length <= Dimension)
            throw new ArgumentException($"Concat along dimension {Dimension} needs inputs of rank {Dimension + 1} or more; got shape {TensorData.Format(first)}.", nameof(inputShapes));
        nint[] result = (nint[])first.Clone();
        long total = first[Dimension];
        for (int k = 1; k < inputShapes.Count; k++)
        {
            nint[] shape = inputShapes[k];
            bool fits = shape.Length == first.Length;
            for (int d = 0; fits && d < shape.Length; d++) fits = d == Dimension || shape[d] == first[d];
            if (!fits)
                throw new ArgumentException(
                    $"Concat along dimension {Dimension}: input {k} has shape {TensorData.Format(shape)}, input 0 {TensorData.Format(first)}; every other dimension must agree.", nameof(inputShapes));
            total += shape[Dimension];
        }
        result[Dimension] = checked((nint)total);
        return result;
    }

    /// <summary>Rows before the dimension, and each input's elements per row.</summary>
    private long Outer(nint[] shape)
    {
        long outer = 1;
        for (int d = 0; d < Dimension; d++) outer *= shape[d];
        return outer;
    }

    private int Inner(nint[] shape)
    {
        long inner = 1;
        for (int d = Dimension; d < shape.Length; d++) inner *= shape[d];
        return checked((int)inner);
    }

    public void Forward(ReadOnlySpan<ReadOnlyMemory<T>> inputs, IReadOnlyList<nint[]> shapes, Span<T> y)
    {
        long outer = Outer(shapes[0]);
        int rowLength = 0;
        for (int k = 0; k < inputs.Length; k++) rowLength += Inner(shapes[k]);
        for (long row = 0; row < outer; row++)
        {
            int at = (int)(row * rowLength);
            for (int k = 0; k < inputs.Length; k++)
            {
                int inner = Inner(shapes[k]);
                inputs[k].Span.Slice((int)(row * inner), inner).CopyTo(y.Slice(at, inner));
                at += inner;
            }
        }
    }

    public void Backward(int input, IReadOnlyList<nint[]> shapes, ReadOnlySpan<T> dy, Span<T> dInput)
    {
        long outer = Outer(shapes[0]);
        int rowLength = 0, offset = 0;
        for (int k = 0; k < shapes.Count; k++)
        {
            if (k == input) offset = rowLength;
            rowLength += Inner(shapes[k]);
        }
        int length = Inner(shapes[input]);
        for (long row = 0; row < outer; row++) dy.Slice((int)(row * rowLength) + offset, length).CopyTo(dInput.Slice((int)(row * length), length));
    }
}

/// <summary>The element-wise sum of inputs of one shape, in input order: darknet's [shortcut], a residual connection.</summary>
public sealed class Add<T> : IJoinLayer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public nint[] OutputShape(IReadOnlyList<nint[]> inputShapes)
    {
        ArgumentNullException.ThrowIfNull(inputShapes);
        if (inputShapes.Count == 0) throw new ArgumentException("Add needs at least one input.", nameof(inputShapes));
        for (int k = 1; k < inputShapes.Count; k++)
            if (!inputShapes[k].AsSpan().SequenceEqual(inputShapes[0]))
                throw new ArgumentException($"Add: input {k} has shape {TensorData.Format(inputShapes[k])}, input 0 {TensorData.Format(inputShapes[0])}; they must be equal.", nameof(inputShapes));
        return (nint[])inputShapes[0].Clone();
    }

    public void Forward(ReadOnlySpan<ReadOnlyMemory<T>> inputs, IReadOnlyList<nint[]> shapes, Span<T> y)
    {
        inputs[0].Span.CopyTo(y);
        for (int k = 1; k < inputs.Length; k++) System.Numerics.Tensors.TensorPrimitives.Add(y, inputs[k].Span[..y.Length], y);
    }

    public void Backward(int input, IReadOnlyList<nint[]> shapes, ReadOnlySpan<T> dy, Span<T> dInput) => dy.CopyTo(dInput);
}

/// <summary>
/// Channels [Start, Start + Length) of the input (or that range of another dimension), the twin of
/// torch.narrow(x, dimension, start, length): darknet's [route] with groups and group_id, the part of a [shortcut]
/// input that meets the other's channels, an ONNX Split output. The gradient is dy there and zero elsewhere.
/// </summary>
public sealed class ChannelSlice<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public ChannelSlice(int start, int length, int dimension = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(start);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(dimension);   // the batch dimension stays whole
        (Start, Length, Dimension) = (start, length, dimension);
    }

    public int Start { get; }
    public int Length { get; }
    public int Dimension { get; }

    protected override string Description => Dimension == 1 ? $"ChannelSlice({Start}, {Length})" : $"ChannelSlice({Start}, {Length}, dim={Dimension})";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        if (inputShape.Length <= Dimension || (long)Start + Length > inputShape[Dimension])
            throw new ArgumentException($"{Description} needs a dimension {Dimension} of length >= {(long)Start + Length}; got shape {TensorData.Format(inputShape)}.", "x");
        nint[] shape = inputShape.ToArray();
        shape[Dimension] = Length;
        return shape;
    }

    /// <summary>Blocks before the dimension, values per block, values per step along the dimension.</summary>
    private (long Outer, int Whole, int Plane) Sizes(ReadOnlySpan<nint> shape)
    {
        long outer = 1, plane = 1;
        for (int d = 0; d < Dimension; d++) outer *= shape[d];
        for (int d = Dimension + 1; d < shape.Length; d++) plane *= shape[d];
        return (outer, checked((int)(plane * shape[Dimension])), checked((int)plane));
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        var (outer, whole, plane) = Sizes(shape);
        int part = Length * plane;
        for (long n = 0; n < outer; n++) x.Slice((int)(n * whole) + Start * plane, part).CopyTo(y.Slice((int)(n * part), part));
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        var (outer, whole, plane) = Sizes(shape);
        int part = Length * plane;
        dx.Clear();
        for (long n = 0; n < outer; n++) dy.Slice((int)(n * part), part).CopyTo(dx.Slice((int)(n * whole) + Start * plane, part));
    }
}

/// <summary>
/// Nearest-neighbour upsampling by a whole factor, the twin of torch.nn.Upsample(scale_factor, mode="nearest"): each
/// value repeated factor x factor times (darknet's [upsample]). The gradient of a value is the sum over its block.
/// </summary>
public sealed class Upsample<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public Upsample(int scaleFactor)
    {
        if (scaleFactor is < 1 or > 1024) throw new ArgumentOutOfRangeException(nameof(scaleFactor), scaleFactor, "The scale factor must be a whole number from 1 to 1024.");
        ScaleFactor = scaleFactor;
    }

    public int ScaleFactor { get; }

    protected override string Description => $"Upsample({ScaleFactor})";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        if (inputShape.Length != 4) throw new ArgumentException($"{Description} takes (N, C, H, W); got shape {TensorData.Format(inputShape)}.", "x");
        long height = (long)inputShape[2] * ScaleFactor, width = (long)inputShape[3] * ScaleFactor;
        if (height * width * inputShape[0] * inputShape[1] > Array.MaxLength)
            throw new ArgumentException($"{Description} of shape {TensorData.Format(inputShape)} would hold more than {Array.MaxLength} values.", "x");
        return [inputShape[0], inputShape[1], (nint)height, (nint)width];
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        int s = ScaleFactor, h = (int)shape[2], w = (int)shape[3], outW = w * s, planes = (int)(shape[0] * shape[1]);
        for (int p = 0; p < planes; p++)
            for (int iy = 0; iy < h; iy++)
            {
                ReadOnlySpan<T> row = x.Slice((p * h + iy) * w, w);
                Span<T> first = y.Slice((p * h + iy) * s * outW, outW);
                for (int ix = 0; ix < w; ix++) first.Slice(ix * s, s).Fill(row[ix]);
                for (int r = 1; r < s; r++) first.CopyTo(y.Slice(((p * h + iy) * s + r) * outW, outW));
            }
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        int s = ScaleFactor, h = (int)shape[2], w = (int)shape[3], outW = w * s, planes = (int)(shape[0] * shape[1]);
        for (int p = 0; p < planes; p++)
            for (int iy = 0; iy < h; iy++)
            {
                Span<T> row = dx.Slice((p * h + iy) * w, w);
                row.Clear();
                for (int r = 0; r < s; r++)
                {
                    ReadOnlySpan<T> source = dy.Slice(((p * h + iy) * s + r) * outW, outW);
                    for (int ix = 0; ix < w; ix++)
                        for (int k = 0; k < s; k++) row[ix] += source[ix * s + k];
                }
            }
    }
}
