using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tensors;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>
/// BatchNorm's darknet training mode (unbiasedNormalization): normalized by the unbiased batch variance, as darknet's
/// forward_batchnorm_layer does; checked against the formula in double and by central differences.
/// </summary>
public class BatchNormUnbiasedTests
{
    [Theory]
    [InlineData(new[] { 4, 3, 5 })]        // (N, C, L): run shape
    [InlineData(new[] { 6, 5 })]           // (N, C): column shape
    [InlineData(new[] { 2, 3, 4, 5 })]     // (N, C, H, W)
    public void GradientsMatchCentralDifferences(int[] shape)
    {
        var layer = new BatchNorm<double>(shape[1], unbiasedNormalization: true);
        var random = new Gaussian(9);
        random.Array<double>(shape[1], 0.3, 1).CopyTo(TensorData.Flat(layer.Weight!.Value));
        random.Array<double>(shape[1], 0.5).CopyTo(TensorData.Flat(layer.Bias!.Value));
        CnnLayerTests.CheckGradients(layer, [.. shape.Select(d => (nint)d)], seed: shape.Sum());
    }

    [Theory]
    [InlineData(ChannelLayout.First)]
    [InlineData(ChannelLayout.Last)]
    public void ForwardDividesByTheUnbiasedStandardDeviationAndRunningStatisticsAreUnchanged(ChannelLayout layout)
    {
        const int n = 3, c = 2, l = 4;
        var random = new Gaussian(4);
        float[] x = random.Array<float>(n * c * l, 1.5, 0.3);
        nint[] shape = layout == ChannelLayout.First ? [n, c, l] : [n, l, c];
        var darknet = new BatchNorm<float>(c, momentum: 0.01, layout: layout, unbiasedNormalization: true);
        var pytorch = new BatchNorm<float>(c, momentum: 0.01, layout: layout);
        float[] y = darknet.Forward(Tensor.Create(x, shape)).ToArray();
        pytorch.Forward(Tensor.Create(x, shape));

        for (int channel = 0; channel < c; channel++)
        {
            int[] at = Enumerable.Range(0, n * l).Select(i => layout == ChannelLayout.First
                ? i / l * c * l + channel * l + i % l
                : i * c + channel).ToArray();
            double mean = at.Average(i => (double)x[i]);
            double unbiased = at.Sum(i => Math.Pow(x[i] - mean, 2)) / (at.Length - 1);
            foreach (int i in at) Assert.True(Math.Abs((x[i] - mean) / Math.Sqrt(unbiased + 1e-5) - y[i]) < 1e-5, $"y[{i}] = {y[i]}");
            // darknet's rolling update with momentum 0.01 is PyTorch's: the running statistics agree.
            Assert.Equal(pytorch.RunningMean![channel], darknet.RunningMean![channel]);
            Assert.Equal(pytorch.RunningVar![channel], darknet.RunningVar![channel]);
            Assert.True(Math.Abs(0.99 * 1 + 0.01 * unbiased - darknet.RunningVar![channel]) < 1e-6);
        }

        // Eval mode is the same formula in both modes.
        darknet.Training = pytorch.Training = false;
        Assert.Equal(pytorch.Forward(Tensor.Create(x, shape)).ToArray(), darknet.Forward(Tensor.Create(x, shape)).ToArray());
    }
}
