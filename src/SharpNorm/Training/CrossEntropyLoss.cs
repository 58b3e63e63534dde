using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Tensors;

namespace SharpNorm.Training;

/// <summary>
/// Cross-entropy of logits against class labels, the twin of torch.nn.CrossEntropyLoss with mean reduction: log-softmax
/// and negative log-likelihood fused, optional label smoothing (the target puts 1 - ε on the label and ε/C on every
/// class). The gradient is (softmax - target) / N.
/// </summary>
public sealed class CrossEntropyLoss<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private double[] _row = [];

    /// <param name="labelSmoothing">ε in [0, 1].</param>
    public CrossEntropyLoss(double labelSmoothing = 0)
    {
        if (!(labelSmoothing >= 0 && labelSmoothing <= 1))
            throw new ArgumentOutOfRangeException(nameof(labelSmoothing), labelSmoothing, "labelSmoothing must be between 0 and 1.");
        LabelSmoothing = labelSmoothing;
    }

    public double LabelSmoothing { get; }

    /// <summary>The mean loss over the N rows of logits (N, C).</summary>
    public double Forward(ReadOnlyTensorSpan<T> logits, ReadOnlySpan<int> labels)
    {
        var (rows, classes) = Validate(logits, labels);
        ReadOnlySpan<T> z = TensorData.Flat(logits, "logits");
        if (_row.Length < classes) _row = new double[classes];
        double total = 0;
        for (int n = 0; n < rows; n++)
        {
            double logSumExp = LogSumExp(z.Slice(n * classes, classes));
            ReadOnlySpan<T> row = z.Slice(n * classes, classes);
            double nll = logSumExp - double.CreateTruncating(row[labels[n]]);
            if (LabelSmoothing == 0)
            {
                total += nll;
                continue;
            }
            double meanNegativeLogP = 0;
            for (int c = 0; c < classes; c++) meanNegativeLogP += logSumExp - double.CreateTruncating(row[c]);
            total += (1 - LabelSmoothing) * nll + LabelSmoothing * meanNegativeLogP / classes;
        }
        return total / rows;
    }

    /// <summary>Writes dL/dlogits = (softmax - target) / N into <paramref name="gradient"/> (shape of logits).</summary>
    public void Backward(ReadOnlyTensorSpan<T> logits, ReadOnlySpan<int> labels, TensorSpan<T> gradient)
    {
        var (rows, classes) = Validate(logits, labels);
        if (!gradient.Lengths.SequenceEqual(logits.Lengths))
            throw new ArgumentException($"Expected gradient of shape {TensorData.Format(logits.Lengths)}; got shape {TensorData.Format(gradient.Lengths)}.", nameof(gradient));
        ReadOnlySpan<T> z = TensorData.Flat(logits, "logits");
        Span<T> dz = TensorData.Flat(gradient, "gradient");
        double smoothing = LabelSmoothing / classes;
        for (int n = 0; n < rows; n++)
        {
            ReadOnlySpan<T> row = z.Slice(n * classes, classes);
            double logSumExp = LogSumExp(row);
            for (int c = 0; c < classes; c++)
            {
                double target = smoothing + (c == labels[n] ? 1 - LabelSmoothing : 0);
                dz[n * classes + c] = T.CreateTruncating((Math.Exp(double.CreateTruncating(row[c]) - logSumExp) - target) / rows);
            }
        }
    }

    public double Forward(Tensor<T> logits, int[] labels)
    {
        ArgumentNullException.ThrowIfNull(logits);
        return Forward(TensorData.Contiguous(logits).AsReadOnlyTensorSpan(), labels);
    }

    public Tensor<T> Backward(Tensor<T> logits, int[] labels)
    {
        ArgumentNullException.ThrowIfNull(logits);
        logits = TensorData.Contiguous(logits);
        Tensor<T> gradient = TensorData.Create<T>(logits.Lengths);
        Backward(logits.AsReadOnlyTensorSpan(), labels, gradient.AsTensorSpan());
        return gradient;
    }

    /// <summary>How many rows have their largest logit at the label (the first largest on ties).</summary>
    public static int CountCorrect(ReadOnlyTensorSpan<T> logits, ReadOnlySpan<int> labels)
    {
        var (rows, classes) = Validate(logits, labels);
        ReadOnlySpan<T> z = TensorData.Flat(logits, "logits");
        int correct = 0;
        for (int n = 0; n < rows; n++)
            if (TensorPrimitives.IndexOfMax(z.Slice(n * classes, classes)) == labels[n]) correct++;
        return correct;
    }

    private static double LogSumExp(ReadOnlySpan<T> row)
    {
        double max = double.CreateTruncating(TensorPrimitives.Max(row)), sum = 0;
        if (double.IsInfinity(max)) return max;
        foreach (T v in row) sum += Math.Exp(double.CreateTruncating(v) - max);
        return max + Math.Log(sum);
    }

    private static (int rows, int classes) Validate(in ReadOnlyTensorSpan<T> logits, ReadOnlySpan<int> labels)
    {
        if (logits.Rank != 2 || logits.Lengths[0] == 0 || logits.Lengths[1] == 0)
            throw new ArgumentException($"CrossEntropyLoss expects non-empty logits (N, C); got shape {TensorData.Format(logits.Lengths)}.", nameof(logits));
        int rows = (int)logits.Lengths[0], classes = (int)logits.Lengths[1];
        if (labels.Length != rows)
            throw new ArgumentException($"Expected {rows} labels, one per row of logits {TensorData.Format(logits.Lengths)}; got {labels.Length}.", nameof(labels));
        for (int n = 0; n < rows; n++)
            if ((uint)labels[n] >= (uint)classes)
                throw new ArgumentOutOfRangeException(nameof(labels), labels[n], $"Label {n} is {labels[n]}; labels must be in [0, {classes}).");
        return (rows, classes);
    }
}
