using SharpNorm.Kernels;

namespace SharpNorm.Bench;

internal enum LayerKind { BatchNorm, InstanceNorm, GroupNorm }

/// <summary>
/// One benchmark case: a layer and an input shape (float32). <see cref="Shape"/> is always the logical NCHW shape
/// (or (N, C)); with <see cref="ChannelsLast"/> the data is stored (N, *spatial, C), as SharpNorm's
/// ChannelLayout.Last reads it and as libtorch stores a torch.channels_last tensor. <see cref="Groups"/>: GroupNorm's G.
/// </summary>
internal sealed record BenchCase(LayerKind Layer, long[] Shape, int Groups = 0, bool ChannelsLast = false)
{
    public string Name => Layer == LayerKind.GroupNorm
        ? $"GroupNorm({Groups}) {string.Join("x", Shape)}"
        : ChannelsLast
            ? $"{LayerName} channels-last {string.Join("x", Shape)} (NCHW)"
            : $"{LayerName} {string.Join("x", Shape)}";

    public string LayerName => Layer switch
    {
        LayerKind.BatchNorm => "BatchNorm",
        LayerKind.InstanceNorm => "InstanceNorm",
        _ => "GroupNorm",
    } + (Layer == LayerKind.GroupNorm ? "" : $"{Math.Max(1, Shape.Length - 2)}d");

    public int Channels => (int)Shape[1];

    /// <summary>The shape of the data as stored: Shape, or (N, *spatial, C) for channels-last.</summary>
    public long[] StorageShape => ChannelsLast && Shape.Length > 2 ? [Shape[0], .. Shape.Skip(2), Shape[1]] : Shape;

    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);

    public long Bytes => Elements * sizeof(float);

    /// <summary>The engine's view of x, as BatchNorm / InstanceNorm / GroupNorm map it (see NormGeometry).</summary>
    public NormGeometry Geometry
    {
        get
        {
            int batch = (int)Shape[0], spatial = (int)Shape.Skip(2).Aggregate(1L, (a, b) => a * b);
            return Layer switch
            {
                LayerKind.BatchNorm when ChannelsLast => new NormGeometry(1, batch * spatial, Channels, 1, 1),
                LayerKind.BatchNorm => new NormGeometry(1, batch, Channels, 1, spatial),
                LayerKind.InstanceNorm when ChannelsLast => new NormGeometry(batch, spatial, Channels, 1, 1),
                LayerKind.InstanceNorm => new NormGeometry(batch, 1, Channels, 1, spatial),
                _ when ChannelsLast => new NormGeometry(batch, spatial, Groups, Channels / Groups, 1),
                _ => new NormGeometry(batch, 1, Groups, Channels / Groups, spatial),
            };
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

        long[][] groupShapes = quick ? [[32, 64, 56, 56]] : [[32, 64, 56, 56], [64, 64, 56, 56]];
        foreach (var shape in groupShapes) yield return new BenchCase(LayerKind.GroupNorm, shape, Groups: 32);
        yield return new BenchCase(LayerKind.BatchNorm, quick ? [32, 64, 56, 56] : [64, 64, 56, 56], ChannelsLast: true);
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
