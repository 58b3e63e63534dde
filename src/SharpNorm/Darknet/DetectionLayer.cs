using System.Numerics;
using SharpNorm.Layers;
using SharpNorm.Tensors;

namespace SharpNorm.Darknet;

/// <summary>
/// A [detection] layer's settings (YOLOv1): a side x side grid, each cell predicting Boxes boxes (confidence and
/// x, y, w, h) and one set of class scores; Sqrt: w and h are predicted as their square roots.
/// </summary>
public sealed record DetectionHead(int Classes, int Boxes, int Side, bool Softmax, bool Sqrt)
{
    /// <summary>Values per image: side² x (classes + boxes x 5), in that order (all class scores, then confidences, then boxes).</summary>
    public long Values => (long)Side * Side * (Classes + 5L * Boxes);
}

/// <summary>
/// darknet's [detection] (YOLOv1) as a layer, as forward_detection_layer computes it: the input (a connected layer's
/// side² x (classes + 5·boxes) values per image) passes through, with softmax=1 each cell's class scores (the first
/// side²·classes values, classes per cell) through a softmax. <see cref="YoloDetector"/> turns the output into boxes.
/// </summary>
public sealed class DetectionLayer<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public DetectionLayer(DetectionHead head)
    {
        ArgumentNullException.ThrowIfNull(head);
        if (head.Classes <= 0 || head.Boxes <= 0 || head.Side <= 0 || head.Values > int.MaxValue)
            throw new ArgumentException($"A detection head needs positive classes, boxes and side, and fewer than 2^31 values; got {head}.", nameof(head));
        Head = head;
    }

    public DetectionHead Head { get; }

    protected override string Description => $"Detection({Head.Side}x{Head.Side}, {Head.Boxes} boxes, {Head.Classes} classes{(Head.Softmax ? ", softmax" : "")})";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        long perImage = 1;
        for (int d = 1; d < inputShape.Length; d++) perImage *= inputShape[d];
        if (inputShape.Length < 2 || inputShape[0] <= 0 || perImage != Head.Values)
            throw new ArgumentException($"{Description} takes (N, {Head.Values}) values ({Head.Side}² x ({Head.Classes} + 5 x {Head.Boxes})); got shape {TensorData.Format(inputShape)}.", "x");
        return inputShape.ToArray();
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        x.CopyTo(y);
        if (!Head.Softmax) return;
        int perImage = (int)Head.Values, classes = Head.Classes, cells = Head.Side * Head.Side;
        for (int n = 0; n < (int)shape[0]; n++)
            for (int cell = 0; cell < cells; cell++)
            {
                Span<T> scores = y.Slice(n * perImage + cell * classes, classes);
                T max = T.NegativeInfinity, sum = T.Zero;
                foreach (T v in scores) max = T.Max(max, v);
                for (int k = 0; k < classes; k++) sum += scores[k] = T.Exp(scores[k] - max);
                for (int k = 0; k < classes; k++) scores[k] /= sum;
            }
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        if (!Head.Softmax)
        {
            dy.CopyTo(dx);
            return;
        }
        ForwardCore(shape, x, dx);   // dx holds y, then the gradient: confidences and boxes pass dy through
        int perImage = (int)Head.Values, classes = Head.Classes, cells = Head.Side * Head.Side;
        for (int n = 0; n < (int)shape[0]; n++)
        {
            int first = n * perImage;
            dy.Slice(first + cells * classes, perImage - cells * classes).CopyTo(dx.Slice(first + cells * classes));
            for (int cell = 0; cell < cells; cell++)
            {
                int at = first + cell * classes;
                T dot = T.Zero;
                for (int k = 0; k < classes; k++) dot += dy[at + k] * dx[at + k];
                for (int k = 0; k < classes; k++) dx[at + k] *= dy[at + k] - dot;
            }
        }
    }
}
