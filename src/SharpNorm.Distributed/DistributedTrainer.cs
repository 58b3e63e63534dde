using System.Diagnostics;
using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Data;
using SharpNorm.Layers;
using SharpNorm.Training;

namespace SharpNorm.Distributed;

/// <summary>
/// Data-parallel training: every rank holds the whole model and trains on its shard of every global batch, and the
/// ranks' steps are one step of a single process on the global batch. The global batches are the single process's
/// (one seeded shuffle and augmentation, <see cref="BatchLoader{T}"/>'s; every rank prepares the global batch so the
/// augmentation's random stream is the same), each split into <see cref="ICommunicator.Size"/> disjoint contiguous
/// shards whose sizes differ by at most one (no padding: the last, short batch is split the same way; a batch of fewer
/// images than ranks is skipped, as no layer takes an empty batch). Each rank's loss gradient is scaled by its shard over the global batch, the gradients are summed over
/// the ranks in one packed all-reduce after the backward, and every rank takes the same optimizer step. With
/// SyncBatchNorm (<see cref="SyncBatchNorm.Convert{T}"/>) the ranks together compute what one process computes.
/// </summary>
public sealed class DistributedTrainer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly ILayer<T> _model;
    private readonly Parameter<T>[] _parameters;
    private readonly Optimizer<T> _optimizer;
    private readonly ILearningRateSchedule? _schedule;
    private readonly CrossEntropyLoss<T> _loss;
    private readonly int _classes;
    private readonly double[] _metrics = new double[3];
    private readonly BatchBuffers<T> _batch = new();
    private readonly T[] _gradients;

    public DistributedTrainer(ILayer<T> model, Optimizer<T> optimizer, ILearningRateSchedule? schedule, int classes, ICommunicator communicator,
        double labelSmoothing = 0)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _optimizer = optimizer ?? throw new ArgumentNullException(nameof(optimizer));
        Communicator = communicator ?? throw new ArgumentNullException(nameof(communicator));
        _parameters = model.Parameters.ToArray();
        _schedule = schedule;
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(classes);
        _classes = classes;
        _loss = new CrossEntropyLoss<T>(labelSmoothing);
        _gradients = new T[_parameters.Sum(p => checked((int)p.Value.FlattenedLength))];
    }

    public ICommunicator Communicator { get; }

    /// <summary>Rank 0's parameters and buffers on every rank (call once before training: the models start equal).</summary>
    public void BroadcastState()
    {
        foreach (Parameter<T> p in _parameters) Broadcast(Tensors.TensorData.Flat(p.Value));
        var counts = new List<LayerBuffer<T>>();
        foreach (LayerBuffer<T> buffer in _model.Buffers)
        {
            if (buffer.IsCount) counts.Add(buffer);
            else Broadcast(Tensors.TensorData.Flat(buffer.Values!));
        }
        var values = counts.Select(b => b.Count).ToArray();
        Communicator.Broadcast<long>(values, 0);
        for (int i = 0; i < counts.Count; i++) counts[i].Count = values[i];
    }

    /// <summary>
    /// One pass over the loader's global batches, this rank training on its shard of each; the loss and accuracy are
    /// the global batch's (all ranks), the same on every rank.
    /// </summary>
    public EpochResult TrainEpoch(BatchLoader<T> loader, int epoch, Action<BatchProgress>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(loader);
        loader.StartEpoch(epoch);
        _model.Training = true;
        var clock = Stopwatch.StartNew();
        double lossSum = 0, correct = 0, seen = 0;
        for (int batch = 0; batch < loader.BatchCount; batch++)
        {
            int total = _batch.Fill(loader, batch, _classes);
            // A global batch of fewer images than ranks would leave a rank none: the layers take no empty batch.
            if (total < Communicator.Size) continue;
            (int first, int n) = Shard(total, Communicator.Rank, Communicator.Size);
            var x = _batch.Images(loader, first, n);
            var logits = _batch.Logits(n, _classes);
            var gradient = _batch.Gradient(n, _classes);
            ReadOnlySpan<int> labels = _batch.Labels.AsSpan(first, n);

            _model.Forward(x, logits);
            _metrics[0] = _loss.Forward(logits, labels) * n;
            _metrics[1] = CrossEntropyLoss<T>.CountCorrect(logits, labels);
            _metrics[2] = n;
            // The local mean's gradient, rescaled to this shard's share of the global batch's mean.
            _loss.Backward(logits, labels, gradient);
            Span<T> g = Tensors.TensorData.Flat(gradient, "gradient");
            TensorPrimitives.Multiply(g, T.CreateTruncating((double)n / total), g);
            foreach (Parameter<T> p in _parameters) p.ZeroGrad();
            _model.Gradient(x, gradient);
            SumGradients();
            Communicator.AllReduce<double>(_metrics);
            (lossSum, correct, seen) = (lossSum + _metrics[0], correct + _metrics[1], seen + _metrics[2]);
            if (_schedule is not null) _optimizer.LearningRate = _schedule.LearningRate(_optimizer.Steps);
            _optimizer.Step();
            progress?.Invoke(new BatchProgress(batch + 1, loader.BatchCount, lossSum / seen, correct / seen, seen / clock.Elapsed.TotalSeconds, clock.Elapsed));
        }
        return new EpochResult(lossSum / seen, correct / seen, clock.Elapsed);
    }

    /// <summary>Images [first, first + n) of a global batch of <paramref name="total"/>: contiguous shards, the first total mod size one longer.</summary>
    public static (int First, int Count) Shard(int total, int rank, int size)
    {
        int basic = total / size, extra = total % size;
        return (rank * basic + Math.Min(rank, extra), basic + (rank < extra ? 1 : 0));
    }

    /// <summary>Every parameter's gradient summed over the ranks, packed into one all-reduce.</summary>
    private void SumGradients()
    {
        int at = 0;
        foreach (Parameter<T> p in _parameters)
        {
            Span<T> g = Tensors.TensorData.Flat(p.Gradient);
            g.CopyTo(_gradients.AsSpan(at));
            at += g.Length;
        }
        Communicator.AllReduce<T>(_gradients.AsSpan(0, at));
        at = 0;
        foreach (Parameter<T> p in _parameters)
        {
            Span<T> g = Tensors.TensorData.Flat(p.Gradient);
            _gradients.AsSpan(at, g.Length).CopyTo(g);
            at += g.Length;
        }
    }

    private void Broadcast(Span<T> values) => Communicator.Broadcast<T>(values, 0);
}
