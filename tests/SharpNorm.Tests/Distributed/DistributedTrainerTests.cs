using System.Numerics;
using SharpNorm.Data;
using SharpNorm.Distributed;
using SharpNorm.Layers;
using SharpNorm.Training;
using Xunit;

namespace SharpNorm.Tests.Distributed;

/// <summary>
/// Data-parallel training over in-process ranks with SyncBatchNorm against one process on the same global batches:
/// the same losses and parameters after 20 steps (augmented, shuffled, uneven shards, a short last batch).
/// </summary>
public class DistributedTrainerTests
{
    private const int Classes = 4, Size = 12, BatchSize = 20, Epochs = 4;

    private static Sequential<T> Model<T>() where T : unmanaged, IFloatingPointIeee754<T>
    {
        var random = new Random(7);
        return new Sequential<T>(
            new Conv2d<T>(1, 8, 3, padding: 1, bias: false, random: random), new BatchNorm<T>(8), new LeakyReLU<T>(0.1), new MaxPool2d<T>(2),
            new Conv2d<T>(8, 12, 3, padding: 1, bias: false, random: random), new BatchNorm<T>(12, momentum: null), new LeakyReLU<T>(0.1),
            new Conv2d<T>(12, Classes, 1, random: random), new GlobalAvgPool2d<T>(), new Flatten<T>());
    }

    private static ImageDataset Data()
    {
        var random = new Random(11);
        int count = 103;   // five batches of 20 and one of 3
        var pixels = new byte[count * Size * Size];
        random.NextBytes(pixels);
        var labels = new byte[count];
        for (int i = 0; i < count; i++)
        {
            labels[i] = (byte)random.Next(Classes);
            // A class-dependent stripe, so that the loss falls.
            for (int c = 0; c < Size; c++) pixels[i * Size * Size + labels[i] * 3 * Size + c] = 255;
        }
        return new ImageDataset(pixels, labels, Size, Size, Classes);
    }

    private static (List<double> Losses, double[] Parameters) Train<T>(ICommunicator? communicator, int bucketBytes = DistributedTrainer<T>.DefaultBucketBytes,
        Action<Sequential<T>, DistributedTrainer<T>>? inspect = null) where T : unmanaged, IFloatingPointIeee754<T>
    {
        ImageDataset data = Data();
        var (mean, std) = data.PixelStatistics();
        var loader = new BatchLoader<T>(data, BatchSize, shuffle: true, seed: 3, mean, std, new Augmentation(CropPadding: 2, HorizontalFlip: true));
        Sequential<T> model = Model<T>();
        model.MaxDegreeOfParallelism = 1;
        if (communicator is not null) model = SyncBatchNorm.Convert(model, communicator);
        var sgd = new Sgd<T>(model.Parameters, 0.05, momentum: 0.9, weightDecay: 5e-4, nesterov: true);
        var losses = new List<double>();
        if (communicator is null)
        {
            var trainer = new Trainer<T>(model, sgd, null, Classes);
            for (int epoch = 0; epoch < Epochs; epoch++) losses.Add(trainer.TrainEpoch(loader, epoch).Loss);
        }
        else
        {
            var trainer = new DistributedTrainer<T>(model, sgd, null, Classes, communicator, bucketBytes: bucketBytes);
            inspect?.Invoke(model, trainer);
            trainer.BroadcastState();
            for (int epoch = 0; epoch < Epochs; epoch++) losses.Add(trainer.TrainEpoch(loader, epoch).Loss);
        }
        double[] parameters = model.Parameters.SelectMany(p => p.Value.ToArray()).Select(v => double.CreateTruncating(v))
            .Concat(model.Buffers.Where(b => !b.IsCount).SelectMany(b => b.Values!.ToArray()).Select(v => double.CreateTruncating(v))).ToArray();
        return (losses, parameters);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public void RanksTrainAsOneProcessOnTheGlobalBatch(int ranks)
    {
        var (losses, parameters) = Train<double>(null);
        Assert.True(losses[^1] < losses[0], $"the loss should fall: {string.Join(", ", losses)}");
        var results = new (List<double> Losses, double[] Parameters)[ranks];
        InProcessCommunicator.Run(ranks, communicator => results[communicator.Rank] = Train<double>(communicator));
        for (int r = 0; r < ranks; r++)
        {
            // 20 steps in double: the sums' order differs (shards, all-reduce), nothing else.
            for (int e = 0; e < Epochs; e++) Assert.True(Math.Abs(results[r].Losses[e] - losses[e]) <= 1e-10 * Math.Abs(losses[e]), $"rank {r} epoch {e}: {results[r].Losses[e]} against {losses[e]}");
            double worst = parameters.Select((v, i) => Math.Abs(v - results[r].Parameters[i]) / (1 + Math.Abs(v))).Max();
            Assert.True(worst <= 1e-9, $"rank {r}: parameters and running statistics differ by {worst:E2}");
            // Every rank ends with the same model, bit for bit.
            Assert.Equal(results[0].Parameters, results[r].Parameters);
        }
    }

    [Fact]
    public void FloatRanksTrainAsOneProcessToFloatTolerance()
    {
        var (losses, _) = Train<float>(null);
        var results = new List<double>[2];
        InProcessCommunicator.Run(2, communicator => results[communicator.Rank] = Train<float>(communicator).Losses);
        for (int e = 0; e < Epochs; e++) Assert.True(Math.Abs(results[0][e] - losses[e]) <= 1e-4 * losses[e], $"epoch {e}: {results[0][e]} against {losses[e]}");
        Assert.Equal(results[0], results[1]);
    }

    [Fact]
    public void AnyBucketSizeGivesTheSameBits()
    {
        int parameters = Model<double>().Parameters.Count();
        var results = new Dictionary<int, double[]>();
        foreach (int bucketBytes in new[] { 1, 700, DistributedTrainer<double>.DefaultBucketBytes, int.MaxValue })
        {
            var ranks = new double[2][];
            var buckets = new int[2];
            InProcessCommunicator.Run(2, communicator => ranks[communicator.Rank] =
                Train<double>(communicator, bucketBytes, (_, trainer) => buckets[communicator.Rank] = trainer.BucketCount).Parameters);
            Assert.Equal(ranks[0], ranks[1]);
            results[bucketBytes] = ranks[0];
            if (bucketBytes == 1) Assert.Equal(parameters, buckets[0]);           // a bucket per parameter
            if (bucketBytes == 700) Assert.InRange(buckets[0], 2, parameters - 1);
            if (bucketBytes == int.MaxValue) Assert.Equal(1, buckets[0]);
        }
        foreach (var (bucketBytes, values) in results) Assert.True(values.SequenceEqual(results[1]), $"bucketBytes {bucketBytes} differs from a bucket per parameter");
    }

    /// <summary>Records, at each nonblocking start, whether the first layer's gradient was still untouched (the sweep not yet there).</summary>
    private sealed class StartRecorder(ICommunicator inner, Func<bool> sweepBeforeFirstLayer) : ICommunicator
    {
        public readonly List<bool> Starts = [];
        public int Rank => inner.Rank;
        public int Size => inner.Size;
        public void AllReduce<T>(Span<T> values, ReduceOperation operation = ReduceOperation.Sum) where T : unmanaged => inner.AllReduce(values, operation);
        public CollectiveRequest StartAllReduce<T>(Memory<T> values, ReduceOperation operation = ReduceOperation.Sum) where T : unmanaged
        {
            Starts.Add(sweepBeforeFirstLayer());
            return inner.StartAllReduce(values, operation);
        }
        public bool Test(CollectiveRequest request) => inner.Test(request);
        public void Wait(CollectiveRequest request) => inner.Wait(request);
        public void Broadcast<T>(Span<T> values, int root) where T : unmanaged => inner.Broadcast(values, root);
        public void AllGather<T>(ReadOnlySpan<T> mine, Span<T> all) where T : unmanaged => inner.AllGather(mine, all);
        public void Barrier() => inner.Barrier();
        public void Abort(int errorCode, string reason) => inner.Abort(errorCode, reason);
        public void Dispose() { }
    }

    [Fact]
    public void BucketsStartWhileTheBackwardSweepIsStillRunning()
    {
        var recorders = new StartRecorder[2];
        InProcessCommunicator.Run(2, communicator =>
        {
            Conv2d<double>? first = null;
            var recorder = new StartRecorder(communicator, () => first!.Parameters.All(p => p.Gradient.ToArray().All(v => v == 0)));
            recorders[communicator.Rank] = recorder;
            Train<double>(recorder, bucketBytes: 1, (model, _) => first = (Conv2d<double>)model[0]);
        });
        int parameters = Model<double>().Parameters.Count(), starts = recorders[0].Starts.Count;
        Assert.Equal(0, starts % parameters);
        Assert.Equal(recorders[0].Starts, recorders[1].Starts);
        // Per step: every bucket but the first layer's own starts before the sweep reaches the first layer.
        for (int s = 0; s < starts; s += parameters)
            Assert.Equal(Enumerable.Repeat(true, parameters - 1).Append(false), recorders[0].Starts.Skip(s).Take(parameters));
    }

    [Theory]
    [InlineData(20, 2, new[] { 10, 10 })]
    [InlineData(20, 3, new[] { 7, 7, 6 })]
    [InlineData(3, 2, new[] { 2, 1 })]
    public void ShardsAreContiguousAndDifferByAtMostOne(int total, int size, int[] counts)
    {
        int next = 0;
        for (int r = 0; r < size; r++)
        {
            var (first, count) = DistributedTrainer<float>.Shard(total, r, size);
            Assert.Equal(next, first);
            Assert.Equal(counts[r], count);
            next += count;
        }
        Assert.Equal(total, next);
    }
}
