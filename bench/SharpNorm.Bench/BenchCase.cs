using SharpNorm.Kernels;

namespace SharpNorm.Bench;

internal enum LayerKind { BatchNorm, InstanceNorm }

/// <summary>One benchmark case: a layer and an input shape (float32, NCHW or (N, C)).</summary>
internal sealed record BenchCase(LayerKind Layer, long[] Shape)
{
    public string Name => $"{LayerName} {string.Join("x", Shape)}";

    public string LayerName => (Layer == LayerKind.BatchNorm ? "BatchNorm" : "InstanceNorm") + $"{Math.Max(1, Shape.Length - 2)}d";

    public int Channels => (int)Shape[1];

    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);

    public long Bytes => Elements * sizeof(float);

    /// <summary>The engine's view of x, as BatchNorm / InstanceNorm map it (see NormGeometry).</summary>
    public NormGeometry Geometry
    {
        get
        {
            int spatial = (int)Shape.Skip(2).Aggregate(1L, (a, b) => a * b);
            return Layer == LayerKind.BatchNorm
                ? new NormGeometry(1, (int)Shape[0], Channels, 1, spatial)
                : new NormGeometry((int)Shape[0], 1, Channels, 1, spatial);
        }
    }

    public static IEnumerable<BenchCase> All(bool quick)
    {
        long[][] shapes2d = quick
            ? [[32, 64, 56, 56], [16, 256, 28, 28]]
            : [[32, 64, 56, 56], [64, 64, 56, 56], [8, 32, 208, 208], [16, 256, 28, 28], [128, 512, 7, 7]];
        foreach (var shape in shapes2d) yield return new BenchCase(LayerKind.BatchNorm, shape);
        foreach (var shape in shapes2d) yield return new BenchCase(LayerKind.InstanceNorm, shape);
        yield return new BenchCase(LayerKind.BatchNorm, [4096, 1024]);
    }
}

/// <summary>The operations measured, with the bytes each must move at least (n = bytes of x).</summary>
internal enum Op { TrainForward, TrainForwardBackward, EvalForward }

internal static class OpInfo
{
    public static string Name(Op op) => op switch
    {
        Op.TrainForward => "train fwd",
        Op.TrainForwardBackward => "train fwd+bwd",
        _ => "eval fwd",
    };

    /// <summary>train fwd: statistics pass + normalize pass read 2n, write y; fwd+bwd adds reductions over x and dy
    /// and the dx pass over x and dy (read 4n) and writes dx; eval fwd reads x once and writes y.</summary>
    public static (long Read, long Write) Bytes(Op op, long n) => op switch
    {
        Op.TrainForward => (2 * n, n),
        Op.TrainForwardBackward => (6 * n, 2 * n),
        _ => (n, n),
    };
}
