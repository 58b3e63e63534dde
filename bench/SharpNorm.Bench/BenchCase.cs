using SharpNorm.Kernels;

namespace SharpNorm.Bench;

internal enum LayerKind { BatchNorm, InstanceNorm, GroupNorm, LayerNorm, RMSNorm }

/// <summary>
/// One benchmark case: a layer and an input shape (float32). <see cref="Shape"/> is always the logical NCHW shape
/// (or (N, C)); with <see cref="ChannelsLast"/> the data is stored (N, *spatial, C), as SharpNorm's
/// ChannelLayout.Last reads it and as libtorch stores a torch.channels_last tensor. <see cref="Groups"/>: GroupNorm's G.
/// <see cref="NormalizedDims"/>: LayerNorm's and RMSNorm's normalized shape, the last that many dimensions of Shape.
/// </summary>
internal sealed record BenchCase(LayerKind Layer, long[] Shape, int Groups = 0, bool ChannelsLast = false, int NormalizedDims = 0)
{
    public string Name => Layer switch
    {
        LayerKind.GroupNorm => $"GroupNorm({Groups}) {string.Join("x", Shape)}",
        _ when IsRowLayer => $"{LayerName} {string.Join("x", Shape)} ({NormalizedLabel})",
        _ when ChannelsLast => $"{LayerName} channels-last {string.Join("x", Shape)} (NCHW)",
        _ => $"{LayerName} {string.Join("x", Shape)}",
    };

    public string LayerName => Layer switch
    {
        LayerKind.BatchNorm => "BatchNorm",
        LayerKind.InstanceNorm => "InstanceNorm",
        LayerKind.GroupNorm => "GroupNorm",
        LayerKind.LayerNorm => "LayerNorm",
        _ => "RMSNorm",
    } + (Layer is LayerKind.BatchNorm or LayerKind.InstanceNorm ? $"{Math.Max(1, Shape.Length - 2)}d" : "");

    /// <summary>LayerNorm and RMSNorm: one statistics group per row of the normalized dimensions (the engine's row shape).</summary>
    public bool IsRowLayer => Layer is LayerKind.LayerNorm or LayerKind.RMSNorm;

    /// <summary>Whether the layer has a bias (beta): all but RMSNorm.</summary>
    public bool HasBias => Layer != LayerKind.RMSNorm;

    /// <summary>
    /// Whether the chain-rule backward (tests' ChainRuleBackward: mean and variance statistics) computes this layer's
    /// dx. Not RMSNorm: it subtracts no mean.
    /// </summary>
    public bool HasChainRule => Layer != LayerKind.RMSNorm;

    /// <summary>"last dim", or the normalized dimensions by their NCHW letters, e.g. "C,H,W".</summary>
    private string NormalizedLabel => NormalizedDims == 1
        ? "last dim"
        : Shape.Length == 4
            ? string.Join(",", "NCHW"[^NormalizedDims..].ToCharArray())
            : $"last {NormalizedDims} dims";

    public int Channels => (int)Shape[1];

    /// <summary>Shape of Weight and Bias: [C], or LayerNorm's / RMSNorm's normalized shape.</summary>
    public long[] ParameterShape => IsRowLayer ? Shape[^NormalizedDims..] : [Shape[1]];

    /// <summary>Number of affine parameters (the geometry's ParameterCount): C, or K for LayerNorm / RMSNorm.</summary>
    public int ParameterCount => checked((int)ParameterShape.Aggregate(1L, (a, b) => a * b));

    /// <summary>The shape of the data as stored: Shape, or (N, *spatial, C) for channels-last.</summary>
    public long[] StorageShape => ChannelsLast && Shape.Length > 2 ? [Shape[0], .. Shape.Skip(2), Shape[1]] : Shape;

    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);

    public long Bytes => Elements * sizeof(float);

    /// <summary>The engine's view of x, as the layers map it (see NormGeometry).</summary>
    public NormGeometry Geometry
    {
        get
        {
            if (IsRowLayer)
            {
                // LayerNorm / RMSNorm (NormalizedShapeNorm.MapInput): rows = product of the leading dimensions, K = product
                // of the normalized ones; x[rows, 1, 1, K, 1], one group per row, parameters along the row.
                int rows = checked((int)Shape[..^NormalizedDims].Aggregate(1L, (a, b) => a * b));
                return new NormGeometry(rows, 1, 1, ParameterCount, 1);
            }
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

        // LayerNorm over the last dimension (transformer hidden size) and over (C, H, W); RMSNorm over the last dimension.
        yield return new BenchCase(LayerKind.LayerNorm, [4096, 1024], NormalizedDims: 1);
        yield return new BenchCase(LayerKind.LayerNorm, quick ? [32, 64, 56, 56] : [64, 64, 56, 56], NormalizedDims: 3);
        yield return new BenchCase(LayerKind.RMSNorm, [4096, 1024], NormalizedDims: 1);
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

    /// <summary>
    /// Bytes an operation must move at least, n = bytes of x. Batch, instance and group statistics (groups far larger
    /// than the caches): train fwd's statistics pass and normalize pass read 2n, write y; fwd+bwd adds reductions over
    /// x and dy and the dx pass over x and dy (read 4n) and writes dx; eval fwd reads x once and writes y.
    /// LayerNorm / RMSNorm (<see cref="BenchCase.IsRowLayer"/>): each row is done whole by one thread, its passes back
    /// to back, so the floor assumes a row stays in cache between them and counts x (and dy) once: train fwd and eval
    /// fwd read n, write n; fwd+bwd reads 3n (x in the forward, x and dy in the backward), writes 2n. That is the least
    /// any implementation must move where x does not stay in cache from call to call, and never looser than the
    /// two-pass count. The 4 KiB rows of the 4096x1024 cases sit in L1; the 784 KiB (C,H,W) rows of 64x64x56x56 fit a
    /// 1 MiB L2 for the forward, but with dy (1.5 MiB) not for the backward, whose second pass over a row then comes
    /// from L3: that fwd+bwd floor may be out of reach. Conversely a 16 MiB x can stay partly in a large L3 between
    /// calls, so x floor may fall below 1 for the 4096x1024 cases (as for BatchNorm1d 4096x1024).
    /// </summary>
    public static (long Read, long Write) Bytes(Op op, BenchCase benchCase)
    {
        long n = benchCase.Bytes;
        if (benchCase.IsRowLayer)
            return op == Op.TrainForwardBackward ? (3 * n, 2 * n) : (n, n);
        return op switch
        {
            Op.TrainForward => (2 * n, n),
            Op.TrainForwardBackward => (6 * n, 2 * n),
            _ => (n, n),
        };
    }
}
