using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tensors;

namespace SharpNorm.Darknet;

/// <summary>A [region] layer's settings (YOLOv2): classes, anchors as (width, height) pairs in grid cells, softmax or logistic class scores.</summary>
public sealed record RegionHead(int Classes, double[] Anchors, bool Softmax)
{
    public int Boxes => Anchors.Length / 2;
}

/// <summary>
/// darknet's [region] (YOLOv2) as a layer, as forward_region_layer computes it: each anchor's block of 5 + classes
/// entries over (H, W) gets the logistic on x, y (entries 0, 1) and objectness (4), w and h (2, 3) stay raw, and the
/// class scores a softmax across the classes at each cell (softmax=1) or the logistic. <see cref="YoloDetector"/>
/// turns the output into boxes.
/// </summary>
public sealed class RegionLayer<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public RegionLayer(RegionHead head)
    {
        ArgumentNullException.ThrowIfNull(head);
        if (head.Classes <= 0 || head.Anchors.Length == 0 || head.Anchors.Length % 2 != 0)
            throw new ArgumentException($"A region head needs classes > 0 and anchors in (width, height) pairs; got {head.Classes} classes, {head.Anchors.Length} anchor values.", nameof(head));
        Head = head;
    }

    public RegionHead Head { get; }

    private int Entries => Head.Classes + 5;

    protected override string Description => $"Region({Head.Boxes} anchors, {Head.Classes} classes{(Head.Softmax ? ", softmax" : "")})";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        if (inputShape.Length != 4 || inputShape[0] <= 0 || inputShape[1] != (long)Head.Boxes * Entries || inputShape[2] <= 0 || inputShape[3] <= 0)
            throw new ArgumentException($"{Description} takes (N, {(long)Head.Boxes * Entries}, H, W); got shape {TensorData.Format(inputShape)}.", "x");
        return inputShape.ToArray();
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        int plane = (int)(shape[2] * shape[3]), blocks = (int)shape[0] * Head.Boxes, classes = Head.Classes;
        for (int b = 0; b < blocks; b++)
        {
            int first = b * Entries * plane;
            // as the Sigmoid layer computes it, so that the exported and re-imported head gives the same bits
            TensorPrimitives.Sigmoid(x.Slice(first, 2 * plane), y.Slice(first, 2 * plane));
            x.Slice(first + 2 * plane, 2 * plane).CopyTo(y.Slice(first + 2 * plane));
            TensorPrimitives.Sigmoid(x.Slice(first + 4 * plane, plane), y.Slice(first + 4 * plane, plane));
            int scores = first + 5 * plane;
            if (!Head.Softmax)
            {
                TensorPrimitives.Sigmoid(x.Slice(scores, classes * plane), y.Slice(scores, classes * plane));
                continue;
            }
            // darknet's softmax_cpu: per cell, over the classes (plane apart), max subtracted
            for (int cell = 0; cell < plane; cell++)
            {
                T max = T.NegativeInfinity, sum = T.Zero;
                for (int k = 0; k < classes; k++) max = T.Max(max, x[scores + k * plane + cell]);
                for (int k = 0; k < classes; k++) sum += y[scores + k * plane + cell] = T.Exp(x[scores + k * plane + cell] - max);
                for (int k = 0; k < classes; k++) y[scores + k * plane + cell] /= sum;
            }
        }
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        ForwardCore(shape, x, dx);   // dx holds y until each value is overwritten by its gradient
        int plane = (int)(shape[2] * shape[3]), blocks = (int)shape[0] * Head.Boxes, classes = Head.Classes;
        for (int b = 0; b < blocks; b++)
        {
            int first = b * Entries * plane;
            for (int i = 0; i < 5 * plane; i++)
            {
                int entry = i / plane;
                T s = dx[first + i];
                dx[first + i] = entry is 2 or 3 ? dy[first + i] : dy[first + i] * s * (T.One - s);
            }
            int scores = first + 5 * plane;
            if (!Head.Softmax)
            {
                for (int i = scores; i < scores + classes * plane; i++) dx[i] = dy[i] * dx[i] * (T.One - dx[i]);
                continue;
            }
            // softmax: dx_k = y_k (dy_k - Σ_j dy_j y_j)
            for (int cell = 0; cell < plane; cell++)
            {
                T dot = T.Zero;
                for (int k = 0; k < classes; k++) dot += dy[scores + k * plane + cell] * dx[scores + k * plane + cell];
                for (int k = 0; k < classes; k++) dx[scores + k * plane + cell] *= dy[scores + k * plane + cell] - dot;
            }
        }
    }
}
