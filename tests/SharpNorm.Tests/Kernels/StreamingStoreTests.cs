using System.Numerics.Tensors;
using SharpNorm.Kernels;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Kernels;

/// <summary>Outputs past the streaming threshold take the cache-bypassing store path: same bits, aligned or not.</summary>
public class StreamingStoreTests
{
    [Theory]
    [InlineData(NormKind.BatchNorm)]
    [InlineData(NormKind.InstanceNorm)]
    public void LargeOutputsMatchReferenceAndDoNotDependOnAlignment(NormKind kind)
    {
        nint[] shape = [2, 3, 1000, 1500]; // 36 MB of float
        long length = 2L * 3 * 1000 * 1500;
        Assert.True(length * sizeof(float) >= NormEngine<float>.StreamingStoreBytes);
        var random = new Gaussian(5);
        float[] x = random.Array<float>(length, 2, 1), dy = random.Array<float>(length);
        var xt = Tensor.Create(x, shape);
        var dyt = Tensor.Create(dy, shape);

        RunningStatsNorm<float> layer = LayerFactory.Create<float>(kind, 3);
        float[] y = layer.Forward(xt).ToArray();
        float[] dx = layer.Backward(xt, dyt).ToArray();

        // Outputs one element past a vector boundary: the streaming loop starts with scalar steps.
        float[] shifted = new float[length + 1];
        layer.Forward(xt.AsReadOnlyTensorSpan(), new TensorSpan<float>(shifted.AsSpan(1), shape));
        Assert.True(y.AsSpan().SequenceEqual(shifted.AsSpan(1)), "forward output depends on alignment");
        layer.Backward(xt.AsReadOnlyTensorSpan(), dyt.AsReadOnlyTensorSpan(), new TensorSpan<float>(shifted.AsSpan(1), shape));
        Assert.True(dx.AsSpan().SequenceEqual(shifted.AsSpan(1)), "backward output depends on alignment");

        // Against the double reference, on a sample of elements.
        int[] groupOf = LayerFactory.GroupOf(kind, shape);
        int groups = groupOf.Max() + 1;
        var mean = new double[groups];
        var variance = new double[groups];
        var count = new double[groups];
        for (long i = 0; i < length; i++) { mean[groupOf[i]] += x[i]; count[groupOf[i]]++; }
        for (int g = 0; g < groups; g++) mean[g] /= count[g];
        for (long i = 0; i < length; i++) variance[groupOf[i]] += (x[i] - mean[groupOf[i]]) * (x[i] - mean[groupOf[i]]);
        for (int g = 0; g < groups; g++) variance[g] /= count[g];
        for (long i = 0; i < length; i += 9973)
        {
            double expected = (x[i] - mean[groupOf[i]]) / Math.Sqrt(variance[groupOf[i]] + 1e-5);
            Assert.True(Math.Abs(y[i] - expected) <= 1e-4, $"y[{i}] = {y[i]}, expected {expected}");
        }
    }
}
