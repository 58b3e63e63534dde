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

    public static TheoryData<string> NearZeroCases() => new(NearZeroLayers.Keys);

    // Each case: the float and double layers, the input shape, and which group (of the statistics) element i is in.
    private static readonly Dictionary<string, (Func<NormLayer<float>> Float, Func<NormLayer<double>> Double, nint[] Shape, Func<long, long> GroupOf)> NearZeroLayers = new()
    {
        ["BatchNorm2d, 3 channels"] = (() => new BatchNorm<float>(3), () => new BatchNorm<double>(3), [16, 3, 14, 14], i => i / 196 % 3),
        ["BatchNorm2d, 20 channels"] = (() => new BatchNorm<float>(20), () => new BatchNorm<double>(20), [8, 20, 7, 7], i => i / 49 % 20),
        ["BatchNorm1d (N, C)"] = (() => new BatchNorm<float>(8), () => new BatchNorm<double>(8), [512, 8], i => i % 8),
        ["BatchNorm2d channels-last"] = (() => new BatchNorm<float>(8, layout: ChannelLayout.Last), () => new BatchNorm<double>(8, layout: ChannelLayout.Last), [8, 14, 14, 8], i => i % 8),
        ["InstanceNorm2d 7x7"] = (() => new InstanceNorm<float>(8), () => new InstanceNorm<double>(8), [16, 8, 7, 7], i => i / 49),
        ["GroupNorm(2, 8)"] = (() => new GroupNorm<float>(2, 8), () => new GroupNorm<double>(2, 8), [8, 8, 14, 14], i => i / (4 * 196)),
        ["LayerNorm(448)"] = (() => new LayerNorm<float>(448), () => new LayerNorm<double>(448), [64, 448], i => i / 448),
    };

    /// <summary>
    /// Outputs near zero (|y| < 0.01, where a ReLU's mask looks) stay accurate even when each group's
    /// first element, the statistics pass's shift, is an outlier (8 spreads from the mean). Inputs lie on a 1/64 grid so
    /// that the float sums, and with them the mean, are exact: what is left is the rounding of the element-wise pass.
    /// Normalizing about the first element instead would put q = (c - mean)*p, about 8, into every output, and its
    /// rounding (up to 4.8e-7) with it. (The variance is not exact, but its error scales with |y|, small here.)
    /// </summary>
    [Theory]
    [MemberData(nameof(NearZeroCases))]
    public void OutputsNearZeroStayAccurateWhenAGroupStartsWithAnOutlier(string name)
    {
        var (makeFloat, makeDouble, shape, groupOf) = NearZeroLayers[name];
        long length = shape.Aggregate(1L, (p, d) => p * d);
        var random = new Gaussian(11);
        float[] noise = random.Array<float>(length);
        var x = new float[length];
        var started = new HashSet<long>();
        for (long i = 0; i < length; i++)
            x[i] = started.Add(groupOf(i)) ? 3f + 8 * 0.5f : 3f + MathF.Round(0.5f * noise[i] * 64) / 64;
        double[] xd = x.Select(v => (double)v).ToArray();

        float[] y = new float[length];
        double[] reference = new double[length];
        makeFloat().Forward(new ReadOnlyTensorSpan<float>(x, shape, []), new TensorSpan<float>(y, shape, []));
        makeDouble().Forward(new ReadOnlyTensorSpan<double>(xd, shape, []), new TensorSpan<double>(reference, shape, []));

        double worst = 0;
        int nearZero = 0;
        for (long i = 0; i < length; i++)
        {
            if (Math.Abs(reference[i]) >= 0.01) continue;
            nearZero++;
            worst = Math.Max(worst, Math.Abs(y[i] - reference[i]));
        }
        Assert.True(nearZero >= 20, $"{name}: only {nearZero} outputs near zero");
        Assert.True(worst <= 2e-8, $"{name}: max |y - reference| over outputs with |y| < 0.01 is {worst:E2}");
    }

    /// <summary>
    /// The (c - mean) terms of the coefficients, which centering on the rounded mean makes tiny: with the statistics
    /// pass's shift kept as the center (an outlier, far from the mean), forward, backward and parameter gradients in
    /// double agree with the default to rounding. A wrong sign or a dropped term in those terms shows here at O(1).
    /// </summary>
    [Theory]
    [MemberData(nameof(NearZeroCases))]
    public void CenteringOnTheShiftInsteadOfTheMeanGivesTheSameResults(string name)
    {
        var (_, makeDouble, shape, groupOf) = NearZeroLayers[name];
        long length = shape.Aggregate(1L, (p, d) => p * d);
        var random = new Gaussian(13);
        double[] noise = random.Array<double>(length), dy = random.Array<double>(length);
        var x = new double[length];
        var started = new HashSet<long>();
        for (long i = 0; i < length; i++) x[i] = started.Add(groupOf(i)) ? 1000 + 9 : 1000 + noise[i];

        (double[] Y, double[] Dx, double[] Parameters) Run(bool centerOnMean)
        {
            NormLayer<double> layer = makeDouble();
            layer.Engine.CenterOnMean = centerOnMean;
            if (layer.Weight is { } weight)
                for (int i = 0; i < weight.Value.FlattenedLength; i++) weight.Value[i] = 0.5 + 0.1 * (i % 7);
            if (layer.Bias is { } bias)
                for (int i = 0; i < bias.Value.FlattenedLength; i++) bias.Value[i] = 0.1 * (i % 5) - 0.2;
            var xs = new ReadOnlyTensorSpan<double>(x, shape, []);
            var dys = new ReadOnlyTensorSpan<double>(dy, shape, []);
            double[] y = new double[length], dx = new double[length];
            layer.Forward(xs, new TensorSpan<double>(y, shape, []));
            layer.Backward(xs, dys, new TensorSpan<double>(dx, shape, []));
            layer.Gradient(xs, dys);
            IEnumerable<double> parameters = layer.Weight is null ? [] : layer.Weight.Gradient.ToArray();
            if (layer.Bias is not null) parameters = parameters.Concat(layer.Bias.Gradient.ToArray());
            return (y, dx, parameters.ToArray());
        }

        var onMean = Run(centerOnMean: true);
        var onShift = Run(centerOnMean: false);
        static double Relative(double[] a, double[] b) =>
            a.Zip(b, (u, v) => Math.Abs(u - v)).DefaultIfEmpty().Max() / Math.Max(b.Select(Math.Abs).DefaultIfEmpty().Max(), 1e-300);
        Assert.True(Relative(onShift.Y, onMean.Y) <= 1e-9, $"{name}: y differs by {Relative(onShift.Y, onMean.Y):E2}");
        Assert.True(Relative(onShift.Dx, onMean.Dx) <= 1e-9, $"{name}: dx differs by {Relative(onShift.Dx, onMean.Dx):E2}");
        Assert.True(Relative(onShift.Parameters, onMean.Parameters) <= 1e-9, $"{name}: parameter gradients differ by {Relative(onShift.Parameters, onMean.Parameters):E2}");
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
