using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tensors;

namespace SharpNorm.Darknet;

/// <summary>
/// darknet's [yolo] as a layer: the input (N, anchors·(5 + classes), H, W) with the logistic applied to each anchor's
/// x and y (then scaled by scale_x_y about the cell's centre), objectness and class scores; w and h pass through raw,
/// as darknet leaves them. <see cref="YoloDetector"/> turns the output into boxes.
/// </summary>
public sealed class YoloLayer<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public YoloLayer(YoloHead head)
    {
        ArgumentNullException.ThrowIfNull(head);
        Head = head;
    }

    public YoloHead Head { get; }

    private int Entries => Head.Classes + 5;

    protected override string Description => $"Yolo({Head.Mask.Length} anchors, {Head.Classes} classes)";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        if (inputShape.Length != 4 || inputShape[1] != (long)Head.Mask.Length * Entries)
            throw new ArgumentException($"{Description} takes (N, {Head.Mask.Length * Entries}, H, W); got shape {TensorData.Format(inputShape)}.", "x");
        return inputShape.ToArray();
    }

    private static T Logistic(T x) => T.One / (T.One + T.Exp(-x));

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        int plane = (int)(shape[2] * shape[3]), entries = Entries, anchors = (int)shape[0] * Head.Mask.Length;
        T scale = T.CreateTruncating(Head.ScaleXY), shift = T.CreateTruncating(-0.5 * (Head.ScaleXY - 1));
        for (int a = 0; a < anchors; a++)
        {
            int first = a * entries * plane;
            // as the Sigmoid layer computes it, so that the exported and re-imported head gives the same bits
            Span<T> xy = y.Slice(first, 2 * plane);
            TensorPrimitives.Sigmoid(x.Slice(first, 2 * plane), xy);
            if (Head.ScaleXY != 1)
                for (int i = 0; i < xy.Length; i++) xy[i] = xy[i] * scale + shift;
            x.Slice(first + 2 * plane, 2 * plane).CopyTo(y.Slice(first + 2 * plane));
            TensorPrimitives.Sigmoid(x.Slice(first + 4 * plane, (entries - 4) * plane), y.Slice(first + 4 * plane, (entries - 4) * plane));
        }
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        int plane = (int)(shape[2] * shape[3]), entries = Entries, anchors = (int)shape[0] * Head.Mask.Length;
        T scale = T.CreateTruncating(Head.ScaleXY);
        for (int a = 0; a < anchors; a++)
        {
            int first = a * entries * plane;
            for (int i = 0; i < entries * plane; i++)
            {
                int entry = i / plane;
                T s = Logistic(x[first + i]), g = dy[first + i];
                dx[first + i] = entry is 2 or 3 ? g : entry < 2 ? g * s * (T.One - s) * scale : g * s * (T.One - s);
            }
        }
    }
}
