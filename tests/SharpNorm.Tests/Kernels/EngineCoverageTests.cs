using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Kernels;

/// <summary>
/// Every code path of the engine against the plain double reference: each vector width (narrower ones forced),
/// tails of every length, one channel, one sample, the column shape, runs split into slices, many tiny groups,
/// segment-parallel and unit-parallel plans, 1 to 4 threads.
/// </summary>
public class EngineCoverageTests
{
    public static TheoryData<NormKind, nint[]> Shapes()
    {
        var data = new TheoryData<NormKind, nint[]>();
        for (int s = 1; s <= 35; s++) data.Add(NormKind.BatchNorm, [2, 3, s]);   // run tails of every length
        for (int s = 2; s <= 35; s += 3) data.Add(NormKind.InstanceNorm, [2, 3, s]);
        for (int c = 1; c <= 35; c += 2) data.Add(NormKind.BatchNorm, [7, c]);    // column tails of every length
        data.Add(NormKind.BatchNorm, [1, 1, 5, 7]);        // one sample, one channel
        data.Add(NormKind.BatchNorm, [300, 1]);
        data.Add(NormKind.InstanceNorm, [1, 1, 33]);
        data.Add(NormKind.BatchNorm, [2000, 37]);          // column shape, several row units, narrow rows
        data.Add(NormKind.BatchNorm, [300, 301]);          // column shape, wide rows
        data.Add(NormKind.BatchNorm, [3, 2, 270, 260]);    // runs longer than a unit: sliced
        data.Add(NormKind.InstanceNorm, [2, 2, 300, 251]); // few huge groups, sliced
        data.Add(NormKind.BatchNorm, [9, 40, 13, 11]);     // many channels: segment-parallel
        data.Add(NormKind.InstanceNorm, [40, 33, 7, 7]);   // many tiny groups
        data.Add(NormKind.BatchNorm, [70, 5, 3, 3, 3]);
        return data;
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void FloatMatchesDoubleReferenceAtEveryWidthAndThreadCount(NormKind kind, nint[] shape)
    {
        var random = new Gaussian(shape.Aggregate(17, (h, d) => h * 31 + (int)d));
        int channels = (int)shape[1];
        long length = shape.Aggregate(1L, (p, d) => p * d);
        float[] x = random.Array<float>(length, 1.7, 0.4), dy = random.Array<float>(length);
        float[] gamma = random.Array<float>(channels, 0.3, 1), beta = random.Array<float>(channels, 0.5);
        var reference = ReferenceNorm.TrainingStep(
            x.Select(v => (double)v).ToArray(), dy.Select(v => (double)v).ToArray(), LayerFactory.GroupOf(kind, shape),
            ReferenceNorm.ChannelOf(shape), gamma.Select(v => (double)v).ToArray(), beta.Select(v => (double)v).ToArray(), 1e-5);

        foreach (int bits in new[] { 512, 256, 128, 0 })
            foreach (int threads in new[] { 1, 2, 3, 4 })
            {
                string at = $"{kind} {TensorShape(shape)} {bits}-bit {threads} threads";
                RunningStatsNorm<float> layer = LayerFactory.Create<float>(kind, channels);
                layer.Engine.MaxVectorBits = bits;
                layer.MaxDegreeOfParallelism = threads;
                gamma.CopyTo(layer.Weight!.Value.AsTensorSpan().GetSpan([0], channels));
                beta.CopyTo(layer.Bias!.Value.AsTensorSpan().GetSpan([0], channels));
                var xt = Tensor.Create(x, shape);
                var dyt = Tensor.Create(dy, shape);
                if (length / channels / (kind == NormKind.InstanceNorm ? shape[0] : 1) <= 1)
                {
                    Assert.Throws<ArgumentException>(() => layer.Forward(xt));
                    continue;
                }
                Check.Close(reference.y.Select(v => (float)v).ToArray(), layer.Forward(xt), 1e-4, 1e-4, $"{at} y");
                Check.Close(reference.dx.Select(v => (float)v).ToArray(), layer.Backward(xt, dyt), 1e-3, 2e-4, $"{at} dx");
                layer.Gradient(xt, dyt);
                double sumTolerance = 1e-5 * length / channels + 1e-4;
                Check.Close(reference.dgamma.Select(v => (float)v).ToArray(), layer.Weight!.Gradient, 1e-4, sumTolerance, $"{at} dgamma");
                Check.Close(reference.dbeta.Select(v => (float)v).ToArray(), layer.Bias!.Gradient, 1e-4, sumTolerance, $"{at} dbeta");
            }
    }

    private static string TensorShape(nint[] shape) => "(" + string.Join(", ", shape) + ")";
}
