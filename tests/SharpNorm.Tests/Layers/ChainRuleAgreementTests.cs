using System.Numerics.Tensors;
using SharpNorm.Kernels;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>The compact closed-form backward equals the four-step computation-graph chain to 1e-12 in double.</summary>
public class ChainRuleAgreementTests
{
    public static TheoryData<NormKind, int, bool> Configurations()
    {
        var data = new TheoryData<NormKind, int, bool>();
        foreach (NormKind kind in Enum.GetValues<NormKind>())
            for (int rank = kind == NormKind.BatchNorm ? 2 : 3; rank <= 5; rank++)
                foreach (bool affine in new[] { true, false })
                    data.Add(kind, rank, affine);
        return data;
    }

    [Theory]
    [MemberData(nameof(Configurations))]
    public void CompactBackwardEqualsComputationGraphChain(NormKind kind, int rank, bool affine)
    {
        nint[] shape = rank switch { 2 => [64, 5], 3 => [6, 4, 33], 4 => [4, 3, 17, 9], _ => [2, 3, 5, 4, 7] };
        int channels = (int)shape[1];
        const double eps = 1e-5;
        var random = new Gaussian(rank + (affine ? 10 : 0));
        RunningStatsNorm<double> layer = LayerFactory.Create<double>(kind, channels, eps, affine: affine);
        double[] gamma = affine ? random.Array<double>(channels, 0.5, 1) : [];
        if (affine) gamma.CopyTo(layer.Weight!.Value.AsTensorSpan().GetSpan([0], channels));

        Tensor<double> x = random.Tensor<double>(shape, 2, 3), dy = random.Tensor<double>(shape);
        layer.Forward(x);
        double[] compact = layer.Backward(x, dy).ToArray();

        // The chain gets its statistics from a plain two-pass computation, independent of the engine.
        NormGeometry g = kind == NormKind.BatchNorm
            ? new NormGeometry(1, (int)shape[0], channels, 1, compact.Length / (int)shape[0] / channels)
            : new NormGeometry((int)shape[0], 1, channels, 1, compact.Length / (int)shape[0] / channels);
        double[] xs = x.ToArray();
        int[] groupOf = LayerFactory.GroupOf(kind, shape);
        var mean = new double[g.GroupCount];
        var variance = new double[g.GroupCount];
        for (int i = 0; i < xs.Length; i++) mean[groupOf[i]] += xs[i] / g.GroupSize;
        for (int i = 0; i < xs.Length; i++) variance[groupOf[i]] += (xs[i] - mean[groupOf[i]]) * (xs[i] - mean[groupOf[i]]) / g.GroupSize;

        var chain = new double[xs.Length];
        ChainRuleBackward<double>.Backward(g, xs, dy.ToArray(), gamma, mean, variance, eps, chain,
            new double[xs.Length], new double[g.GroupCount], new double[g.GroupCount]);

        double scale = Math.Max(1, chain.Max(Math.Abs));
        for (int i = 0; i < chain.Length; i++)
            Assert.True(Math.Abs(compact[i] - chain[i]) <= 1e-12 * scale, $"dx[{i}]: compact {compact[i]:R}, chain {chain[i]:R}");
    }
}
