using System.Diagnostics;
using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
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
/// images than ranks is skipped, as no layer takes an empty batch). Each rank's loss gradient is scaled by its shard
/// over the global batch and the gradients are summed over the ranks, so every rank takes the same optimizer step.
/// With SyncBatchNorm (<see cref="SyncBatchNorm.Convert{T}"/>) the ranks together compute what one process computes.
/// </summary>
/// <remarks>
/// The gradients are summed in buckets (PyTorch DDP's): the parameters, last layer's first, packed into runs of about
/// <c>bucketBytes</c>. For a <see cref="Sequential{T}"/> model a bucket's nonblocking all-reduce starts as soon as the
/// backward sweep has finished its layers' gradients, and runs while the sweep goes on through the earlier layers;
/// other models start every bucket after the sweep. The buckets' sums are the same bits as one packed all-reduce's.
/// </remarks>
public sealed class DistributedTrainer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>The default bucket size: a few buckets for a model of a few MB, each large enough to stream at full bandwidth.</summary>
    public const int DefaultBucketBytes = 256 * 1024;

    private readonly ILayer<T> _model;
    private readonly Parameter<T>[] _parameters;
    private readonly Optimizer<T> _optimizer;
    private readonly ILearningRateSchedule? _schedule;
    private readonly CrossEntropyLoss<T> _loss;
    private readonly int _classes;
    private readonly double[] _metrics = new double[3];
    private readonly BatchBuffers<T> _batch = new();
    private readonly T[] _gradients;                // the packed gradients, bucket after bucket
    private readonly int[] _offset;                 // _offset[p]: where parameter p's gradient starts in _gradients
    private readonly int[] _bucketOf;               // _bucketOf[p]: the bucket holding parameter p
    private readonly int[] _bucketStart, _bucketEnd;     // bucket b: _gradients[_bucketStart[b].._bucketEnd[b]), its parameters [_bucketFirst[b], _bucketFirst[b + 1]) in _byBucket
    private readonly int[] _bucketFirst, _byBucket;
    private readonly int[] _owners;                 // _owners[b]: parameter-in-layer memberships of bucket b, counted down by the sweep
    private readonly int[] _remaining;
    private readonly CollectiveRequest[] _requests;
    private readonly bool[] _started, _completed;
    private readonly int[][] _layerParameters = [];  // the model's layers' parameters (indices), for a Sequential model
    private readonly Sequential<T>? _sequential;
    private readonly Action<int> _onLayerReady;

    public DistributedTrainer(ILayer<T> model, Optimizer<T> optimizer, ILearningRateSchedule? schedule, int classes, ICommunicator communicator,
        double labelSmoothing = 0, int bucketBytes = DefaultBucketBytes)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _optimizer = optimizer ?? throw new ArgumentNullException(nameof(optimizer));
        Communicator = communicator ?? throw new ArgumentNullException(nameof(communicator));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(classes);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bucketBytes);
        _parameters = model.Parameters.ToArray();
        _schedule = schedule;
        _classes = classes;
        _loss = new CrossEntropyLoss<T>(labelSmoothing);

        // Buckets: the parameters from the last to the first (the order the backward completes them), cut where a
        // bucket reaches bucketBytes.
        int count = _parameters.Length, elementBytes = Unsafe.SizeOf<T>();
        _offset = new int[count];
        _bucketOf = new int[count];
        _byBucket = new int[count];
        var starts = new List<int>();
        int at = 0;
        long bucketBytesSoFar = 0;
        for (int k = 0; k < count; k++)
        {
            int p = count - 1 - k;
            if (starts.Count == 0 || bucketBytesSoFar >= bucketBytes)
            {
                starts.Add(k);
                bucketBytesSoFar = 0;
            }
            _byBucket[k] = p;
            _bucketOf[p] = starts.Count - 1;
            _offset[p] = at;
            int length = checked((int)_parameters[p].Value.FlattenedLength);
            at = checked(at + length);
            bucketBytesSoFar += (long)length * elementBytes;
        }
        int buckets = starts.Count;
        _bucketFirst = [.. starts, count];
        _bucketStart = new int[buckets];
        _bucketEnd = new int[buckets];
        for (int b = 0; b < buckets; b++)
        {
            int first = _byBucket[_bucketFirst[b]], last = _byBucket[_bucketFirst[b + 1] - 1];
            _bucketStart[b] = _offset[first];
            _bucketEnd[b] = _offset[last] + checked((int)_parameters[last].Value.FlattenedLength);
        }
        // Pinned: the nonblocking all-reduces hold its address.
        _gradients = GC.AllocateArray<T>(at, pinned: true);
        _owners = new int[buckets];
        _remaining = new int[buckets];
        _requests = new CollectiveRequest[buckets];
        _started = new bool[buckets];
        _completed = new bool[buckets];

        _onLayerReady = OnLayerReady;
        if (model is Sequential<T> sequential)
        {
            _sequential = sequential;
            var index = new Dictionary<Parameter<T>, int>(ReferenceEqualityComparer.Instance);
            for (int p = 0; p < count; p++) index.TryAdd(_parameters[p], p);
            _layerParameters = new int[sequential.Count][];
            for (int i = 0; i < sequential.Count; i++)
            {
                _layerParameters[i] = sequential[i].Parameters.Select(q => index.TryGetValue(q, out int p) ? p : -1).Where(p => p >= 0).Distinct().ToArray();
                foreach (int p in _layerParameters[i]) _owners[_bucketOf[p]]++;
            }
            // A parameter no layer names would never be reported: its bucket waits for the end of the sweep.
            var named = _layerParameters.SelectMany(ps => ps).ToHashSet();
            for (int p = 0; p < count; p++)
                if (!named.Contains(p)) _owners[_bucketOf[p]] = -1;
        }
        else Array.Fill(_owners, -1);
    }

    public ICommunicator Communicator { get; }

    /// <summary>The gradient buckets, each a run of whole parameters, the last layer's first.</summary>
    public int BucketCount => _bucketStart.Length;
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
            ComputeAndSumGradients(x, gradient);
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

    /// <summary>
    /// The backward sweep, each bucket's all-reduce started as soon as its gradients are complete (the others' tested
    /// along the way, so MPI moves them on), then every bucket waited for and its sums copied back.
    /// </summary>
    private void ComputeAndSumGradients(ReadOnlyTensorSpan<T> x, ReadOnlyTensorSpan<T> dy)
    {
        _owners.CopyTo(_remaining, 0);
        Array.Clear(_started);
        Array.Clear(_completed);
        if (_sequential is not null) _sequential.GradientReady = _onLayerReady;
        try
        {
            _model.Gradient(x, dy);
        }
        finally
        {
            if (_sequential is not null) _sequential.GradientReady = null;
        }
        for (int b = 0; b < BucketCount; b++)
            if (!_started[b]) StartBucket(b);
        for (int b = 0; b < BucketCount; b++)
        {
            Communicator.Wait(_requests[b]);
            for (int k = _bucketFirst[b]; k < _bucketFirst[b + 1]; k++)
            {
                int p = _byBucket[k];
                Span<T> g = Tensors.TensorData.Flat(_parameters[p].Gradient);
                _gradients.AsSpan(_offset[p], g.Length).CopyTo(g);
            }
        }
    }

    private void OnLayerReady(int layer)
    {
        foreach (int p in _layerParameters[layer])
            if (--_remaining[_bucketOf[p]] == 0) StartBucket(_bucketOf[p]);
        for (int b = 0; b < BucketCount; b++)
            if (_started[b] && !_completed[b]) _completed[b] = Communicator.Test(_requests[b]);
    }

    private void StartBucket(int b)
    {
        for (int k = _bucketFirst[b]; k < _bucketFirst[b + 1]; k++)
        {
            int p = _byBucket[k];
            Tensors.TensorData.Flat(_parameters[p].Gradient).CopyTo(_gradients.AsSpan(_offset[p]));
        }
        _requests[b] = Communicator.StartAllReduce<T>(_gradients.AsMemory(_bucketStart[b], _bucketEnd[b] - _bucketStart[b]));
        _started[b] = true;
    }

    private void Broadcast(Span<T> values) => Communicator.Broadcast<T>(values, 0);
}
