using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tensors;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>CheckFinite: off, a NaN flows into BatchNorm's running statistics as in PyTorch; on, the first layer that makes one is named and the statistics stay as they were.</summary>
public class FiniteCheckTests
{
    private static Sequential<float> Model()
    {
        var model = new Sequential<float>(new Linear<float>(3, 4, random: new Random(1)), new BatchNorm<float>(4), new ReLU<float>());
        return model;
    }

    [Fact]
    public void OffANaNPoisonsTheRunningStatisticsAsInPyTorch()
    {
        Sequential<float> model = Model();
        var x = Tensor.Create(new float[] { 1, 2, float.NaN, 4, 5, 6 }, [2, 3]);
        model.Forward(x);
        var norm = (BatchNorm<float>)model[1];
        Assert.Contains(TensorData.Flat(norm.RunningMean!).ToArray(), float.IsNaN);
    }

    [Fact]
    public void OnTheInputsNaNIsNamedAndNothingChanges()
    {
        Sequential<float> model = Model();
        model.CheckFinite = true;
        var norm = (BatchNorm<float>)model[1];
        float[] before = TensorData.Flat(norm.RunningMean!).ToArray();
        var e = Assert.Throws<NonFiniteValueException>(() => model.Forward(Tensor.Create(new float[] { 1, 2, float.NaN, 4, 5, 6 }, [2, 3])));
        Assert.Equal(("input", 2L), (e.Layer, e.Index));
        Assert.True(double.IsNaN(e.Value));
        Assert.Equal(before, TensorData.Flat(norm.RunningMean!).ToArray());
        Assert.Equal(0, norm.NumBatchesTracked);
    }

    [Fact]
    public void OnTheFirstLayerToMakeANonFiniteValueIsNamed()
    {
        Sequential<float> model = Model();
        model.CheckFinite = true;
        var linear = (Linear<float>)model[0];
        TensorData.Flat(linear.Weight.Value)[5] = float.PositiveInfinity;   // output 1 reads input 1 through it
        var e = Assert.Throws<NonFiniteValueException>(() => model.Forward(Tensor.Create(new float[] { 1, 2, 3, 4, 5, 6 }, [2, 3])));
        Assert.Equal("0 (Linear)", e.Layer);
        Assert.Equal(1, e.Index);
        Assert.Equal(double.PositiveInfinity, e.Value);
        Assert.Contains("Layer 0 (Linear) produced ∞", e.Message.Replace("Infinity", "∞"));
        Assert.Equal(0, ((BatchNorm<float>)model[1]).NumBatchesTracked);
        // finite again: the check passes and costs nothing else
        TensorData.Flat(linear.Weight.Value)[5] = 0.5f;
        model.Forward(Tensor.Create(new float[] { 1, 2, 3, 4, 5, 6 }, [2, 3]));
    }

    [Fact]
    public void AGraphNamesTheNode()
    {
        var graph = new Graph<double>("x",
        [
            new GraphNode<double>("a", new Identity<double>(), "x"),
            new GraphNode<double>("sum", new Add<double>(), "a", "a"),
            new GraphNode<double>("soft", new Softmax<double>(1), "sum"),
        ], "soft") { CheckFinite = true };
        var e = Assert.Throws<NonFiniteValueException>(() => graph.Run(Tensor.Create(new double[] { 1, double.MaxValue }, [1, 2]).AsReadOnlyTensorSpan()));
        Assert.Equal("'sum' (Add)", e.Layer);
        Assert.Equal(double.PositiveInfinity, e.Value);
    }
}
