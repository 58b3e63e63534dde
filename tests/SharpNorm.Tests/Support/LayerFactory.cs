using System.Numerics;
using SharpNorm.Layers;

namespace SharpNorm.Tests.Support;

public enum NormKind { BatchNorm, InstanceNorm }

public static class LayerFactory
{
    public static RunningStatsNorm<T> Create<T>(NormKind kind, int numFeatures, double eps = 1e-5, double? momentum = 0.1,
        bool affine = true, bool trackRunningStats = true) where T : unmanaged, IFloatingPointIeee754<T>
        => kind == NormKind.BatchNorm
            ? new BatchNorm<T>(numFeatures, eps, momentum, affine, trackRunningStats)
            : new InstanceNorm<T>(numFeatures, eps, momentum, affine, trackRunningStats);

    /// <summary>Group id of each element: per channel for BatchNorm, per (sample, channel) for InstanceNorm.</summary>
    public static int[] GroupOf(NormKind kind, nint[] shape)
    {
        int n = (int)shape[0], c = (int)shape[1];
        int spatial = 1;
        for (int d = 2; d < shape.Length; d++) spatial *= (int)shape[d];
        var groups = new int[n * c * spatial];
        for (int i = 0; i < groups.Length; i++)
        {
            int channel = i / spatial % c, sample = i / spatial / c;
            groups[i] = kind == NormKind.BatchNorm ? channel : sample * c + channel;
        }
        return groups;
    }
}
