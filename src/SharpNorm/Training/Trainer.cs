using System.Diagnostics;
using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Data;
using SharpNorm.Layers;

namespace SharpNorm.Training;

/// <summary>Loss and accuracy over the batches seen so far in an epoch, for progress reports.</summary>
public readonly record struct BatchProgress(int Batch, int Batches, double Loss, double Accuracy, double ImagesPerSecond, TimeSpan Elapsed);

/// <summary>What one epoch or one evaluation measured.</summary>
public sealed record EpochResult(double Loss, double Accuracy, TimeSpan Time, int[,]? Confusion = null);

/// <summary>
/// Trains a classifier (any layer mapping (N, 1, H, W) images to (N, classes) logits) with cross-entropy: per batch
/// Forward, the loss gradient, the model's Gradient sweep, an optimizer step with the schedule's learning rate.
/// Buffers for a batch are owned and reused.
/// </summary>
public sealed class Trainer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly ILayer<T> _model;
    private readonly Parameter<T>[] _parameters;
    private readonly Optimizer<T> _optimizer;
    private readonly ILearningRateSchedule? _schedule;
    private readonly CrossEntropyLoss<T> _loss;
    private readonly int _classes;
    private readonly BatchBuffers<T> _batch = new();

    public Trainer(ILayer<T> model, Optimizer<T> optimizer, ILearningRateSchedule? schedule, int classes, double labelSmoothing = 0)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _parameters = model.Parameters.ToArray();
        _optimizer = optimizer ?? throw new ArgumentNullException(nameof(optimizer));
        _schedule = schedule;
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(classes);
        _classes = classes;
        _loss = new CrossEntropyLoss<T>(labelSmoothing);
    }

    /// <summary>One pass over the loader's batches in training mode.</summary>
    public EpochResult TrainEpoch(BatchLoader<T> loader, int epoch, Action<BatchProgress>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(loader);
        loader.StartEpoch(epoch);
        _model.Training = true;
        var clock = Stopwatch.StartNew();
        double lossSum = 0;
        int correct = 0, seen = 0;
        for (int batch = 0; batch < loader.BatchCount; batch++)
        {
            int n = _batch.Fill(loader, batch, _classes);
            var x = _batch.Images(loader, 0, n);
            var logits = _batch.Logits(n, _classes);
            var gradient = _batch.Gradient(n, _classes);
            ReadOnlySpan<int> labels = _batch.Labels.AsSpan(0, n);

            _model.Forward(x, logits);
            lossSum += _loss.Forward(logits, labels) * n;
            correct += CrossEntropyLoss<T>.CountCorrect(logits, labels);
            seen += n;
            _loss.Backward(logits, labels, gradient);
            foreach (Parameter<T> p in _parameters) p.ZeroGrad();
            _model.Gradient(x, gradient);
            if (_schedule is not null) _optimizer.LearningRate = _schedule.LearningRate(_optimizer.Steps);
            _optimizer.Step();
            progress?.Invoke(new BatchProgress(batch + 1, loader.BatchCount, lossSum / seen, (double)correct / seen, seen / clock.Elapsed.TotalSeconds, clock.Elapsed));
        }
        return new EpochResult(lossSum / seen, (double)correct / seen, clock.Elapsed);
    }

    /// <summary>Plain cross-entropy (no label smoothing), accuracy and the confusion matrix (rows: true class, columns: predicted) in eval mode.</summary>
    public EpochResult Evaluate(BatchLoader<T> loader) => Evaluate(_model, loader, _classes);

    public static EpochResult Evaluate(ILayer<T> model, BatchLoader<T> loader, int classes, CrossEntropyLoss<T>? loss = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(loader);
        loss ??= new CrossEntropyLoss<T>();
        loader.StartEpoch(0);
        bool wasTraining = model.Training;
        model.Training = false;
        var clock = Stopwatch.StartNew();
        int imageSize = loader.ImageShape.Aggregate(1, (p, d) => p * (int)d);
        var images = new T[loader.BatchSize * imageSize];
        var logitsData = new T[loader.BatchSize * classes];
        var labelsData = new int[loader.BatchSize];
        var confusion = new int[classes, classes];
        double lossSum = 0;
        int correct = 0;
        try
        {
            for (int batch = 0; batch < loader.BatchCount; batch++)
            {
                int n = loader.Fill(batch, images, labelsData);
                var logits = new TensorSpan<T>(logitsData.AsSpan(0, n * classes), [n, classes], []);
                model.Forward(new ReadOnlyTensorSpan<T>(images.AsSpan(0, n * imageSize), [n, .. loader.ImageShape], []), logits);
                ReadOnlySpan<int> labels = labelsData.AsSpan(0, n);
                lossSum += loss.Forward(logits, labels) * n;
                ReadOnlySpan<T> z = logitsData.AsSpan(0, n * classes);
                for (int i = 0; i < n; i++)
                {
                    int predicted = TensorPrimitives.IndexOfMax(z.Slice(i * classes, classes));
                    confusion[labels[i], predicted]++;
                    if (predicted == labels[i]) correct++;
                }
            }
        }
        finally
        {
            model.Training = wasTraining;
        }
        return new EpochResult(lossSum / loader.Count, (double)correct / loader.Count, clock.Elapsed, confusion);
    }

}

/// <summary>A batch's images, labels, logits and loss gradient, owned and reused from batch to batch (the trainers').</summary>
internal sealed class BatchBuffers<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private T[] _images = [], _logits = [], _gradient = [];

    public int[] Labels { get; private set; } = [];

    /// <summary>Batch <paramref name="batch"/> of the loader's epoch into the buffers; returns its image count.</summary>
    public int Fill(BatchLoader<T> loader, int batch, int classes)
    {
        int imageSize = ImageSize(loader);
        if (_images.Length < loader.BatchSize * imageSize)
        {
            _images = new T[loader.BatchSize * imageSize];
            _logits = new T[loader.BatchSize * classes];
            _gradient = new T[loader.BatchSize * classes];
            Labels = new int[loader.BatchSize];
        }
        return loader.Fill(batch, _images, Labels);
    }

    /// <summary>Images [first, first + count) of the batch, (count, 1, H, W).</summary>
    public ReadOnlyTensorSpan<T> Images(BatchLoader<T> loader, int first, int count) =>
        new(_images.AsSpan(first * ImageSize(loader), count * ImageSize(loader)), [count, .. loader.ImageShape], []);

    public TensorSpan<T> Logits(int count, int classes) => new(_logits.AsSpan(0, count * classes), [count, classes], []);

    public TensorSpan<T> Gradient(int count, int classes) => new(_gradient.AsSpan(0, count * classes), [count, classes], []);

    private static int ImageSize(BatchLoader<T> loader) => loader.ImageShape.Aggregate(1, (p, d) => p * (int)d);
}
