using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Kernels;

/// <summary>Results are bit-for-bit identical whatever the thread count: the work split depends on the problem alone.</summary>
public class DeterminismTests
{
    public static TheoryData<NormKind, nint[], bool> Shapes() => new()
    {
        { NormKind.BatchNorm, [8, 16, 56, 56], true },     // segment-parallel
        { NormKind.BatchNorm, [4, 3, 300, 300], true },    // few channels, sliced runs, unit-parallel
        { NormKind.BatchNorm, [4096, 64], true },          // column shape
        { NormKind.InstanceNorm, [64, 64, 7, 7], false },  // many tiny groups
        { NormKind.InstanceNorm, [2, 3, 400, 400], true },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void IdenticalBitsForOneToFourThreads(NormKind kind, nint[] shape, bool track)
    {
        var random = new Gaussian(11);
        Tensor<float> x = random.Tensor<float>(shape, 3, 5), dy = random.Tensor<float>(shape);
        string? first = null;
        foreach (int threads in new[] { 1, 2, 3, 4 })
        {
            RunningStatsNorm<float> layer = LayerFactory.Create<float>(kind, (int)shape[1], affine: true, trackRunningStats: track);
            layer.MaxDegreeOfParallelism = threads;
            string result = Fingerprint(layer.Forward(x)) + Fingerprint(layer.Backward(x, dy));
            layer.Gradient(x, dy);
            result += Fingerprint(layer.Weight!.Gradient) + Fingerprint(layer.Bias!.Gradient);
            if (track) result += Fingerprint(layer.RunningMean!) + Fingerprint(layer.RunningVar!);
            layer.Training = false;
            result += Fingerprint(layer.Forward(x)) + Fingerprint(layer.Backward(x, dy));
            first ??= result;
            Assert.True(first == result, $"{threads} threads differ from 1 thread");
        }
    }

    /// <summary>A hash of the exact bits.</summary>
    private static string Fingerprint(Tensor<float> tensor)
    {
        var hash = new HashCode();
        foreach (float v in tensor) hash.Add(BitConverter.SingleToInt32Bits(v));
        return hash.ToHashCode().ToString("x8") + ";";
    }
}
