using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Distributed;
using SharpNorm.Layers;
using SharpNorm.Models;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Distributed;

/// <summary>
/// SyncBatchNorm over in-process ranks against one BatchNorm on the concatenated batch: outputs, running statistics on
/// every rank, dx, and the parameter gradients summed over the ranks; uneven and empty shards; one rank bit for bit.
/// </summary>
public class SyncBatchNormTests
{
    public static TheoryData<int[], int> Shards() => new()
    {
        { [2, 3], 12 },      // uneven shards of images of 3x4
        { [3, 1, 0], 12 },   // a rank with no images
        { [1, 1, 1, 1], 6 },
        { [4, 2], 1 },       // (N, C) input
    };

    [Theory]
    [MemberData(nameof(Shards))]
    public void RanksTogetherAreBatchNormOnTheConcatenatedBatch(int[] shards, int plane)
    {
        const int C = 3;
        int total = shards.Sum();
        nint[] Shape(int n) => plane == 1 ? [n, C] : [n, C, 3, plane / 3];
        var random = new Gaussian(total * 10 + plane);
        // Large means: the ranks' moments merged in double lose nothing.
        Tensor<double> x = random.Tensor<double>(Shape(total), scale: 2, offset: 1000), dy = random.Tensor<double>(Shape(total));
        var reference = new BatchNorm<double>(C, momentum: 0.3);
        Randomize(reference, 1);
        Tensor<double> y = reference.Forward(x), dx = reference.Backward(x, dy);
        reference.Gradient(x, dy);
        int per = C * plane;
        double[] xs = x.ToArray(), dys = dy.ToArray(), ys = y.ToArray(), dxs = dx.ToArray();
        var dGamma = new double[shards.Length][];
        var dBeta = new double[shards.Length][];

        InProcessCommunicator.Run(shards.Length, communicator =>
        {
            int r = communicator.Rank, first = shards.Take(r).Sum(), n = shards[r];
            var layer = new SyncBatchNorm<double>(C, communicator, momentum: 0.3);
            Randomize(layer.Local, 1);
            Tensor<double> xr = Tensor.Create(xs[(first * per)..((first + n) * per)], Shape(n)), dyr = Tensor.Create(dys[(first * per)..((first + n) * per)], Shape(n));
            Tensor<double> yr = Tensor.Create(new double[n * per], Shape(n)), dxr = Tensor.Create(new double[n * per], Shape(n));
            layer.Forward(xr.AsReadOnlyTensorSpan(), yr.AsTensorSpan());
            layer.Backward(xr.AsReadOnlyTensorSpan(), dyr.AsReadOnlyTensorSpan(), dxr.AsTensorSpan());
            layer.Gradient(xr.AsReadOnlyTensorSpan(), dyr.AsReadOnlyTensorSpan());
            Check.Close<double>(ys[(first * per)..((first + n) * per)], yr, 1e-11, 1e-11, $"rank {r} y");
            Check.Close<double>(dxs[(first * per)..((first + n) * per)], dxr, 1e-10, 1e-11, $"rank {r} dx");
            Check.Close<double>(reference.RunningMean!.ToArray(), layer.RunningMean!, 1e-12, 1e-12, $"rank {r} running mean");
            Check.Close<double>(reference.RunningVar!.ToArray(), layer.RunningVar!, 1e-12, 1e-12, $"rank {r} running var");
            Assert.Equal(1, layer.Local.NumBatchesTracked);
            dGamma[r] = layer.Weight!.Gradient.ToArray();
            dBeta[r] = layer.Bias!.Gradient.ToArray();
        });
        // Each rank's parameter gradients are its own part's: together they are the whole batch's.
        double[] SumOver(double[][] parts) => Enumerable.Range(0, C).Select(c => parts.Sum(p => p[c])).ToArray();
        Check.Close<double>(reference.Weight!.Gradient.ToArray(), SumOver(dGamma), 1e-10, 1e-10, "dγ summed over the ranks");
        Check.Close<double>(reference.Bias!.Gradient.ToArray(), SumOver(dBeta), 1e-10, 1e-10, "dβ summed over the ranks");
    }

    [Fact]
    public void FloatRanksAgreeWithBatchNormAndWithEachOther()
    {
        const int C = 8;
        var random = new Gaussian(4);
        Tensor<float> x = random.Tensor<float>([6, C, 7, 7]);
        var reference = new BatchNorm<float>(C);
        float[] y = reference.Forward(x).ToArray();
        var running = new float[2][];
        InProcessCommunicator.Run(2, communicator =>
        {
            int r = communicator.Rank;
            var layer = new SyncBatchNorm<float>(C, communicator);
            int per = C * 49;
            Tensor<float> xr = Tensor.Create(x.ToArray()[(r * 3 * per)..((r + 1) * 3 * per)], [3, C, 7, 7]);
            var yr = Tensor.Create(new float[3 * per], [3, C, 7, 7]);
            layer.Forward(xr.AsReadOnlyTensorSpan(), yr.AsTensorSpan());
            Check.Close<float>(y[(r * 3 * per)..((r + 1) * 3 * per)], yr, 1e-5, 1e-5, $"rank {r} y");
            running[r] = layer.RunningMean!.ToArray().Concat(layer.RunningVar!.ToArray()).ToArray();
        });
        // The merged statistics are the same numbers on every rank, so the running statistics are the same bits.
        Assert.Equal(running[0], running[1]);
    }

    [Fact]
    public void OneRankIsBatchNormBitForBitAndEvalIsBatchNormsEval()
    {
        var random = new Gaussian(5);
        Tensor<float> x = random.Tensor<float>([4, 5, 6, 6]), dy = random.Tensor<float>([4, 5, 6, 6]);
        var reference = new BatchNorm<float>(5);
        var layer = new SyncBatchNorm<float>(5, InProcessCommunicator.CreateGroup(1)[0]);
        foreach (bool training in new[] { true, false })
        {
            reference.Training = layer.Training = training;
            var y = Tensor.Create(new float[x.FlattenedLength], x.Lengths);
            var dx = Tensor.Create(new float[x.FlattenedLength], x.Lengths);
            layer.Forward(x.AsReadOnlyTensorSpan(), y.AsTensorSpan());
            layer.Backward(x.AsReadOnlyTensorSpan(), dy.AsReadOnlyTensorSpan(), dx.AsTensorSpan());
            Assert.Equal(reference.Forward(x).ToArray(), y.ToArray());
            Assert.Equal(reference.Backward(x, dy).ToArray(), dx.ToArray());
        }
        Assert.Equal(reference.RunningVar!.ToArray(), layer.RunningVar!.ToArray());

        // Eval with several ranks: each rank's running statistics, no collective.
        InProcessCommunicator.Run(2, communicator =>
        {
            var sync = new SyncBatchNorm<float>(5, communicator) { Training = false };
            var plain = new BatchNorm<float>(5) { Training = false };
            Tensor<float> part = communicator.Rank == 0 ? x : random.Tensor<float>([1, 5, 6, 6]);
            var y = Tensor.Create(new float[part.FlattenedLength], part.Lengths);
            sync.Forward(part.AsReadOnlyTensorSpan(), y.AsTensorSpan());
            Assert.Equal(plain.Forward(part).ToArray(), y.ToArray());
        });
    }

    [Fact]
    public void OneValuePerChannelOverAllRanksIsRefusedOnEveryRankChangingNothing()
    {
        var messages = new string?[2];
        var e = Assert.Throws<AggregateException>(() => InProcessCommunicator.Run(2, communicator =>
        {
            var layer = new SyncBatchNorm<double>(2, communicator);
            int n = communicator.Rank == 0 ? 1 : 0;
            var x = Tensor.Create(new double[2 * n], [n, 2]);
            try
            {
                layer.Forward(x.AsReadOnlyTensorSpan(), Tensor.Create(new double[2 * n], [n, 2]).AsTensorSpan());
            }
            catch (ArgumentException failure)
            {
                messages[communicator.Rank] = failure.Message;
                Assert.Equal(0, layer.Local.NumBatchesTracked);
                Assert.Equal([1.0, 1.0], layer.RunningVar!.ToArray());
                throw;
            }
        }));
        Assert.All(messages, m => Assert.Contains("Expected more than 1 value per channel when training, got 1 over the 2 ranks", m));
        Assert.NotNull(e);
    }

    [Fact]
    public void ConvertWrapsEveryBatchNormKeepingItsParametersAndNames()
    {
        Sequential<float> model = DarkNetClassifier.Create<float>(NormChoice.Batch, seed: 1);
        ICommunicator communicator = InProcessCommunicator.CreateGroup(1)[0];
        Sequential<float> converted = SyncBatchNorm.Convert(model, communicator);
        Assert.Equal(model.Layers.Count, converted.Layers.Count);
        int wrapped = 0;
        for (int i = 0; i < model.Layers.Count; i++)
        {
            if (model.Layers[i] is BatchNorm<float> norm)
            {
                var sync = Assert.IsType<SyncBatchNorm<float>>(converted.Layers[i]);
                Assert.Same(norm, sync.Local);
                wrapped++;
            }
            else Assert.Same(model.Layers[i], converted.Layers[i]);
        }
        Assert.True(wrapped > 0);
        Assert.Equal(model.Parameters.ToArray(), converted.Parameters.ToArray());
        Assert.Equal(SharpNorm.Serialization.Checkpoint.StateDict(model).Select(e => e.Name), SharpNorm.Serialization.Checkpoint.StateDict(converted).Select(e => e.Name));
    }

    private static void Randomize<T>(BatchNorm<T> norm, int seed) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var random = new Random(seed);
        Span<T> gamma = SharpNorm.Tensors.TensorData.Flat(norm.Weight!.Value), beta = SharpNorm.Tensors.TensorData.Flat(norm.Bias!.Value);
        for (int c = 0; c < gamma.Length; c++)
        {
            gamma[c] = T.CreateTruncating(0.5 + random.NextDouble());
            beta[c] = T.CreateTruncating(random.NextDouble() - 0.5);
        }
    }
}
