using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>Float inputs whose mean is large against their spread (mean 1e4, std 1) still normalize to 1e-3.</summary>
public class PrecisionTests
{
    public static TheoryData<NormKind, nint[], int> Shapes() => new()
    {
        { NormKind.BatchNorm, [8, 4, 32, 32], 512 },
        { NormKind.BatchNorm, [8, 4, 32, 32], 0 },
        { NormKind.BatchNorm, [4096, 8], 512 },   // (N, C): the column loop shape
        { NormKind.BatchNorm, [4096, 8], 0 },
        { NormKind.BatchNorm, [2, 3, 208, 208], 512 },
        { NormKind.InstanceNorm, [4, 4, 64, 64], 512 },
        { NormKind.InstanceNorm, [4, 4, 64, 64], 0 },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void LargeMeanSmallSpreadNormalizesWithin1em3(NormKind kind, nint[] shape, int maxVectorBits)
    {
        int channels = (int)shape[1];
        var random = new Gaussian(7);
        float[] x = random.Array<float>(shape.Aggregate(1L, (p, d) => p * d));
        int[] groupOf = LayerFactory.GroupOf(kind, shape);
        for (int i = 0; i < x.Length; i++) x[i] += 1e4f + 10f * (groupOf[i] % channels); // mean 1e4 + small per-channel offset, std 1

        RunningStatsNorm<float> layer = LayerFactory.Create<float>(kind, channels, affine: false, trackRunningStats: false);
        layer.Engine.MaxVectorBits = maxVectorBits;
        float[] y = layer.Forward(Tensor.Create(x, shape)).ToArray();
        double[] reference = ReferenceNormalize(x, groupOf, 1e-5);

        double maxError = y.Select((v, i) => Math.Abs(v - reference[i])).Max();
        Assert.True(maxError <= 1e-3, $"max |y - reference| = {maxError:E3}");
    }

    [Fact]
    public void NaiveSumOfSquaresInFloatFailsThisTest()
    {
        // Shows the test above discriminates: E[x^2] - E[x]^2 in float loses the variance at mean 1e4.
        var random = new Gaussian(7);
        float[] x = random.Array<float>(4096, 1, 1e4);
        float sum = 0, squares = 0;
        foreach (float v in x) { sum += v; squares += v * v; }
        float mean = sum / x.Length, variance = squares / x.Length - mean * mean;
        double[] reference = ReferenceNormalize(x, new int[x.Length], 1e-5);
        double maxError = x.Select((v, i) => Math.Abs((v - mean) / MathF.Sqrt(Math.Max(variance, 0) + 1e-5f) - reference[i])).Max();
        Assert.True(maxError > 1e-3, $"naive float statistics unexpectedly accurate: {maxError:E3}");
    }

    private static double[] ReferenceNormalize(float[] x, int[] groupOf, double eps)
    {
        int groups = groupOf.Max() + 1;
        var count = new double[groups];
        var mean = new double[groups];
        var variance = new double[groups];
        for (int i = 0; i < x.Length; i++) { count[groupOf[i]]++; mean[groupOf[i]] += x[i]; }
        for (int gr = 0; gr < groups; gr++) mean[gr] /= count[gr];
        for (int i = 0; i < x.Length; i++) variance[groupOf[i]] += (x[i] - mean[groupOf[i]]) * (x[i] - mean[groupOf[i]]);
        for (int gr = 0; gr < groups; gr++) variance[gr] /= count[gr];
        return x.Select((v, i) => (v - mean[groupOf[i]]) / Math.Sqrt(variance[groupOf[i]] + eps)).ToArray();
    }
}
