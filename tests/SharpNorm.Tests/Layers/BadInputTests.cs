using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>Every bad input gets a clear exception, and a call that throws changes no state.</summary>
public class BadInputTests
{
    [Theory]
    [InlineData(0)]
    [InlineData(-3)]
    public void NonPositiveNumFeaturesIsRejected(int numFeatures)
    {
        Assert.Throws<ArgumentOutOfRangeException>("numFeatures", () => new BatchNorm<float>(numFeatures));
        Assert.Throws<ArgumentOutOfRangeException>("numFeatures", () => new InstanceNorm<double>(numFeatures));
    }

    [Theory]
    [InlineData(-1e-5)]
    [InlineData(double.NaN)]
    [InlineData(double.PositiveInfinity)]
    public void BadEpsIsRejected(double eps)
    {
        Assert.Throws<ArgumentOutOfRangeException>("eps", () => new BatchNorm<float>(4, eps: eps));
        Assert.Throws<ArgumentOutOfRangeException>("eps", () => new InstanceNorm<float>(4, eps: eps));
    }

    [Theory]
    [InlineData(-0.1)]
    [InlineData(1.5)]
    [InlineData(double.NaN)]
    public void MomentumOutsideUnitIntervalIsRejected(double momentum)
    {
        Assert.Throws<ArgumentOutOfRangeException>("momentum", () => new BatchNorm<float>(4, momentum: momentum));
        Assert.Throws<ArgumentOutOfRangeException>("momentum", () => new InstanceNorm<float>(4, momentum: momentum));
    }

    [Fact]
    public void BoundaryArgumentsAreAccepted()
    {
        _ = new BatchNorm<float>(1, eps: 0, momentum: 0);
        _ = new BatchNorm<float>(1, momentum: 1);
        _ = new InstanceNorm<double>(1, momentum: null);
    }

    [Fact]
    public void ConstructorDefaultsArePyTorchs()
    {
        var bn = new BatchNorm<float>(8);
        Assert.Equal((1e-5, 0.1, true, true, true), (bn.Eps, bn.Momentum, bn.Affine, bn.TrackRunningStats, bn.Training));
        Assert.Equal(Enumerable.Repeat(1f, 8), bn.Weight!.Value.ToArray());
        Assert.Equal(new float[8], bn.Bias!.Value.ToArray());
        Assert.Equal(new float[8], bn.RunningMean!.ToArray());
        Assert.Equal(Enumerable.Repeat(1f, 8), bn.RunningVar!.ToArray());
        Assert.Equal(0, bn.NumBatchesTracked);

        var inorm = new InstanceNorm<float>(8);
        Assert.Equal((1e-5, 0.1, false, false), (inorm.Eps, inorm.Momentum, inorm.Affine, inorm.TrackRunningStats));
        Assert.Null(inorm.Weight);
        Assert.Null(inorm.Bias);
        Assert.Null(inorm.RunningMean);
        Assert.Null(inorm.RunningVar);
    }

    public static TheoryData<NormKind, nint[], string> WrongShapes() => new()
    {
        { NormKind.BatchNorm, [2, 4, 3], "(2, 4, 3)" },      // 4 channels, layer has 3
        { NormKind.BatchNorm, [6], "(6,)" },                 // rank 1
        { NormKind.BatchNorm, [1, 3, 2, 2, 2, 2], "(1, 3, 2, 2, 2, 2)" }, // rank 6
        { NormKind.InstanceNorm, [2, 3], "(2, 3)" },         // rank 2
        { NormKind.InstanceNorm, [2, 5, 4], "(2, 5, 4)" },
        { NormKind.BatchNorm, [0, 3, 4], "(0, 3, 4)" },      // empty
    };

    [Theory]
    [MemberData(nameof(WrongShapes))]
    public void WrongShapeIsRejectedNamingBothShapesAndChangesNothing(NormKind kind, nint[] shape, string shown)
    {
        RunningStatsNorm<float> layer = TrainedLayer(kind);
        var before = Snapshot(layer);
        var x = Tensor.Create(new float[shape.Aggregate(1L, (p, d) => p * d)], shape);

        var error = Assert.Throws<ArgumentException>(() => layer.Forward(x));
        Assert.Contains(shown, error.Message);
        if (shape.Length >= 2 && shape[0] != 0) Assert.Contains("3", error.Message); // the expected channel count or rank
        Assert.Equal(before, Snapshot(layer));
    }

    [Fact]
    public void ChannelMismatchMessageNamesExpectedAndActual()
    {
        var error = Assert.Throws<ArgumentException>(() => new BatchNorm<float>(64).Forward(Tensor.Create(new float[2 * 32 * 4], [2, 32, 2, 2])));
        Assert.Contains("64", error.Message);
        Assert.Contains("(2, 32, 2, 2)", error.Message);
    }

    [Theory]
    [InlineData(NormKind.BatchNorm, new[] { 1, 3 })]
    [InlineData(NormKind.BatchNorm, new[] { 1, 3, 1, 1 })]
    [InlineData(NormKind.InstanceNorm, new[] { 2, 3, 1 })]
    [InlineData(NormKind.InstanceNorm, new[] { 4, 3, 1, 1, 1 })]
    public void TrainingWithOneValuePerChannelIsRejected(NormKind kind, int[] dims)
    {
        nint[] shape = dims.Select(d => (nint)d).ToArray();
        RunningStatsNorm<float> layer = TrainedLayer(kind);
        var before = Snapshot(layer);
        var x = Tensor.Create(new float[dims.Aggregate(1, (p, d) => p * d)], shape);

        var error = Assert.Throws<ArgumentException>(() => layer.Forward(x));
        Assert.Contains("Expected more than 1 value per channel when training", error.Message);
        Assert.Equal(before, Snapshot(layer));

        // Eval mode with running statistics needs no batch statistics, so one value per channel is fine (as in PyTorch).
        layer.Training = false;
        layer.Forward(x);
        Assert.Equal(before, Snapshot(layer));
    }

    [Fact]
    public void EvalWithoutRunningStatisticsStillNeedsMoreThanOneValue()
    {
        // PyTorch normalizes with batch statistics then, so the same check applies.
        var bn = new BatchNorm<float>(3, trackRunningStats: false) { Training = false };
        Assert.Throws<ArgumentException>(() => bn.Forward(Tensor.Create(new float[3], [1, 3])));
    }

    [Fact]
    public void BackwardAndGradientBeforeForwardAreInvalidOperations()
    {
        var bn = new BatchNorm<float>(3);
        var x = Tensor.Create(new float[12], [4, 3]);
        Assert.Throws<InvalidOperationException>(() => bn.Backward(x, x));
        Assert.Throws<InvalidOperationException>(() => bn.Gradient(x, x));
        Assert.Equal(new float[3], bn.Weight!.Gradient.ToArray());
    }

    [Theory]
    [InlineData(NormKind.BatchNorm)]
    [InlineData(NormKind.InstanceNorm)]
    public void BackwardWithMismatchedShapesIsRejectedAndChangesNothing(NormKind kind)
    {
        RunningStatsNorm<float> layer = TrainedLayer(kind);
        var random = new Gaussian(3);
        Tensor<float> x = random.Tensor<float>([2, 3, 4]), dy = random.Tensor<float>([2, 3, 4]);
        layer.Forward(x);
        float[] expectedDx = layer.Backward(x, dy).ToArray();
        layer.ZeroGrad();

        Tensor<float> wrongDy = random.Tensor<float>([2, 3, 5]);
        Tensor<float> otherX = random.Tensor<float>([4, 3, 4]);
        Assert.Contains("(2, 3, 5)", Assert.Throws<ArgumentException>(() => layer.Backward(x, wrongDy)).Message);
        Assert.Contains("(2, 3, 5)", Assert.Throws<ArgumentException>(() => layer.Gradient(x, wrongDy)).Message);
        Assert.Contains("(4, 3, 4)", Assert.Throws<ArgumentException>(() => layer.Backward(otherX, otherX)).Message);
        Assert.Throws<ArgumentException>(() => layer.Gradient(otherX, otherX));
        var dx = Tensor.Create(new float[24], [2, 3, 4]);
        Assert.Throws<ArgumentException>(() => layer.Backward(x, dy, Tensor.Create(new float[25], [25]).AsTensorSpan()));
        Assert.Equal(new float[3], layer.Weight!.Gradient.ToArray());

        // The failed calls left the last forward usable.
        layer.Backward(x.AsReadOnlyTensorSpan(), dy.AsReadOnlyTensorSpan(), dx.AsTensorSpan());
        Assert.Equal(expectedDx, dx.ToArray());
    }

    [Fact]
    public void FailedForwardKeepsTheLastForwardForBackward()
    {
        var bn = new BatchNorm<double>(3);
        var random = new Gaussian(5);
        Tensor<double> x = random.Tensor<double>([4, 3, 2]), dy = random.Tensor<double>([4, 3, 2]);
        bn.Forward(x);
        double[] expected = bn.Backward(x, dy).ToArray();
        Assert.Throws<ArgumentException>(() => bn.Forward(random.Tensor<double>([4, 5, 2])));
        Assert.Throws<ArgumentException>(() => bn.Forward(x.AsReadOnlyTensorSpan(), Tensor.Create(new double[23], [23]).AsTensorSpan()));
        Assert.Equal(expected, bn.Backward(x, dy).ToArray());
        Assert.Equal(1, bn.NumBatchesTracked);
    }

    [Fact]
    public void OutputShapedUnlikeInputIsRejectedBeforeAnyStateChanges()
    {
        RunningStatsNorm<float> layer = TrainedLayer(NormKind.BatchNorm);
        var before = Snapshot(layer);
        var x = new Gaussian(1).Tensor<float>([4, 3]);
        var y = Tensor.Create(new float[12], [3, 4]);
        var error = Assert.Throws<ArgumentException>(() => layer.Forward(x.AsReadOnlyTensorSpan(), y.AsTensorSpan()));
        Assert.Contains("(3, 4)", error.Message);
        Assert.Equal(before, Snapshot(layer));
    }

    [Fact]
    public void StridedSpanIsRejectedWithAClearMessage()
    {
        // A transposed (2, 3) view of 6 values: not row-major.
        var values = new float[] { 1, 2, 3, 4, 5, 6 };
        var transposed = new ReadOnlyTensorSpan<float>(values, [2, 3], [1, 2]);
        var y = Tensor.Create(new float[6], [2, 3]);
        var bn = new BatchNorm<float>(3);
        ArgumentException? error = null;
        try { bn.Forward(transposed, y.AsTensorSpan()); }
        catch (ArgumentException e) { error = e; }
        Assert.NotNull(error);
        Assert.Contains("contiguous", error.Message);
        Assert.Equal(0, bn.NumBatchesTracked);
    }

    [Fact]
    public void MaxDegreeOfParallelismRejectsZero()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new BatchNorm<float>(3).MaxDegreeOfParallelism = 0);
    }

    [Fact]
    public void NonFiniteInputPropagatesWithoutException()
    {
        // NaN in channel 0 and +Inf in channel 1: those channels go NaN (as libtorch's fixture "nonfinite" shows in detail), channel 2 stays finite.
        var bn = new BatchNorm<float>(3);
        var x = new Gaussian(2).Tensor<float>([4, 3, 5]);
        var span = x.AsTensorSpan().GetSpan([0, 0, 0], 60);
        span[2] = float.NaN;
        span[5 + 1] = float.PositiveInfinity;
        float[] y = bn.Forward(x).ToArray();
        for (int i = 0; i < y.Length; i++)
        {
            int channel = i / 5 % 3;
            Assert.True(channel == 2 ? float.IsFinite(y[i]) : float.IsNaN(y[i]), $"y[{i}] = {y[i]}");
        }
        Assert.True(float.IsNaN(bn.RunningMean!.ToArray()[0]));
        Assert.True(float.IsPositiveInfinity(bn.RunningMean!.ToArray()[1]));
    }

    private static RunningStatsNorm<float> TrainedLayer(NormKind kind)
    {
        RunningStatsNorm<float> layer = LayerFactory.Create<float>(kind, 3, affine: true, trackRunningStats: true);
        layer.Forward(new Gaussian(9).Tensor<float>([4, 3, 6], 2, 1));
        return layer;
    }

    /// <summary>All the state a failed call must leave alone, as text so that snapshots compare by value.</summary>
    private static string Snapshot(RunningStatsNorm<float> layer) =>
        $"mean {string.Join(",", layer.RunningMean!.ToArray())} var {string.Join(",", layer.RunningVar!.ToArray())} " +
        $"batches {layer.NumBatchesTracked} weight {string.Join(",", layer.Weight!.Value.ToArray())} bias {string.Join(",", layer.Bias!.Value.ToArray())} " +
        $"dweight {string.Join(",", layer.Weight.Gradient.ToArray())}";
}
