using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>
/// Channels-last input gives what the same layer computes on the same values in (N, C, *) layout, which the libtorch
/// fixtures pin down (PyTorch's channels_last tensors hold the same values in this order): outputs, input gradients,
/// parameter gradients and running statistics, in training and eval, in double.
/// </summary>
public class ChannelsLastTests
{
    public static TheoryData<string, nint[]> Cases() => new()
    {
        { "BatchNorm", [6, 3] },
        { "BatchNorm", [4, 3, 5] },
        { "BatchNorm", [2, 3, 4, 5] },
        { "BatchNorm", [2, 3, 2, 3, 4] },
        { "BatchNorm", [64, 37, 3, 3] },  // rows of 37 channels: vector tails across the row
        { "InstanceNorm", [3, 4, 7] },
        { "InstanceNorm", [2, 3, 4, 5] },
        { "InstanceNorm", [2, 5, 2, 3, 4] },
        { "GroupNorm", [2, 6, 4, 5] },
        { "GroupNorm", [3, 6, 7] },
        { "GroupNorm", [2, 8, 2, 3, 3] },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void ChannelsLastMatchesChannelsFirst(string layer, nint[] shape)
    {
        int channels = (int)shape[1];
        var random = new Gaussian(shape.Aggregate(3, (h, d) => h * 17 + (int)d));
        double[] x = random.Array<double>(shape.Aggregate(1L, (p, d) => p * d), 2, 0.5), dy = random.Array<double>(x.Length);
        double[] gamma = random.Array<double>(channels, 0.3, 1), beta = random.Array<double>(channels, 0.4);
        nint[] lastShape = [shape[0], .. shape[2..], shape[1]];

        NormLayer<double> first = Create(layer, channels, ChannelLayout.First), last = Create(layer, channels, ChannelLayout.Last);
        foreach (NormLayer<double> l in new[] { first, last })
        {
            gamma.CopyTo(l.Weight!.Value.AsTensorSpan().GetSpan([0], channels));
            beta.CopyTo(l.Bias!.Value.AsTensorSpan().GetSpan([0], channels));
        }

        foreach (bool training in new[] { true, true, false })
        {
            first.Training = last.Training = training;
            var xFirst = Tensor.Create(x, shape);
            var dyFirst = Tensor.Create(dy, shape);
            var xLast = Tensor.Create(ToLast(x, shape), lastShape);
            var dyLast = Tensor.Create(ToLast(dy, shape), lastShape);

            Close(ToLast(first.Forward(xFirst).ToArray(), shape), last.Forward(xLast).ToArray(), $"{layer} y (training {training})");
            Close(ToLast(first.Backward(xFirst, dyFirst).ToArray(), shape), last.Backward(xLast, dyLast).ToArray(), $"{layer} dx");
            first.ZeroGrad();
            last.ZeroGrad();
            first.Gradient(xFirst, dyFirst);
            last.Gradient(xLast, dyLast);
            Close(first.Weight!.Gradient.ToArray(), last.Weight!.Gradient.ToArray(), $"{layer} dgamma");
            Close(first.Bias!.Gradient.ToArray(), last.Bias!.Gradient.ToArray(), $"{layer} dbeta");
            if (first is RunningStatsNorm<double> f && last is RunningStatsNorm<double> s)
            {
                Close(f.RunningMean!.ToArray(), s.RunningMean!.ToArray(), $"{layer} running mean");
                Close(f.RunningVar!.ToArray(), s.RunningVar!.ToArray(), $"{layer} running var");
                Assert.Equal(f.NumBatchesTracked, s.NumBatchesTracked);
            }
        }
    }

    [Fact]
    public void ChannelsLastChecksTheLastDimension()
    {
        var bn = new BatchNorm<float>(3, layout: ChannelLayout.Last);
        var error = Assert.Throws<ArgumentException>(() => bn.Forward(Tensor.Create(new float[24], [2, 3, 4])));
        Assert.Contains("(2, 3, 4)", error.Message);
        Assert.Contains("(N, ..., 3)", error.Message);
        bn.Forward(Tensor.Create(new float[24], [2, 4, 3]));
        Assert.Throws<ArgumentOutOfRangeException>("layout", () => new InstanceNorm<float>(3, layout: (ChannelLayout)7));
        // One spatial position per instance: channels-last InstanceNorm refuses it like channels-first.
        var inorm = new InstanceNorm<float>(3, layout: ChannelLayout.Last);
        Assert.Throws<ArgumentException>(() => inorm.Forward(Tensor.Create(new float[6], [2, 1, 3])));
    }

    private static NormLayer<double> Create(string layer, int channels, ChannelLayout layout) => layer switch
    {
        "BatchNorm" => new BatchNorm<double>(channels, eps: 1e-3, layout: layout),
        "InstanceNorm" => new InstanceNorm<double>(channels, eps: 1e-3, affine: true, trackRunningStats: true, layout: layout),
        _ => new GroupNorm<double>(2, channels, eps: 1e-3, layout: layout),
    };

    /// <summary>(N, C, *spatial) values reordered as (N, *spatial, C).</summary>
    private static double[] ToLast(double[] values, nint[] shape)
    {
        int n = (int)shape[0], c = (int)shape[1], spatial = values.Length / n / c;
        var result = new double[values.Length];
        for (int i = 0; i < n; i++)
            for (int ch = 0; ch < c; ch++)
                for (int s = 0; s < spatial; s++)
                    result[(i * spatial + s) * c + ch] = values[(i * c + ch) * spatial + s];
        return result;
    }

    private static void Close(double[] expected, double[] actual, string what) => Check.Close<double>(expected, actual, 1e-11, 1e-12, what);
}
