using System.Numerics;
using SharpNorm.Layers;
using SharpNorm.Tensors;

namespace SharpNorm.Darknet;

/// <summary>
/// darknet's [reorg] (YOLOv2's passthrough): a permutation of each image's values. Forward (reverse=0) gives
/// (C·s², H/s, W/s) from (C, H, W) as darknet's reorg_cpu computes it, which is not space_to_depth: the input is
/// read as (C/s², H·s, W·s) and y[k, j, i] = x'[k mod C/s², j·s + (k div C/s²) div s, i·s + (k div C/s²) mod s].
/// reverse=1 is its transpose, depth_to_space (ONNX DepthToSpace DCR): (C, H, W) to (C/s², H·s, W·s).
/// </summary>
public sealed class Reorg<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public Reorg(int stride, bool reverse = false)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(stride);
        if ((long)stride * stride > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(stride), stride, "stride squared must fit an int.");
        Stride = stride;
        Reverse = reverse;
    }

    public int Stride { get; }
    public bool Reverse { get; }

    protected override string Description => $"Reorg(stride={Stride}{(Reverse ? ", reverse" : "")})";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        (int n, int c, int h, int w) = Require4d(inputShape);
        int s = Stride, s2 = s * s;
        if (Reverse)
        {
            if (c % s2 != 0 || (long)h * s > int.MaxValue || (long)w * s > int.MaxValue)
                throw new ArgumentException($"{Description} needs channels divisible by {s2} and sizes times {s} that fit an int; got shape {TensorData.Format(inputShape)}.", "x");
            return [n, c / s2, h * s, w * s];
        }
        if (c % s2 != 0 || h % s != 0 || w % s != 0)
            throw new ArgumentException($"{Description} needs channels divisible by {s2} and height and width by {s}; got shape {TensorData.Format(inputShape)}.", "x");
        return [n, (nint)((long)c * s2), h / s, w / s];
    }

    /// <summary>
    /// darknet's reorg_cpu on one (c, h, w) input image: "in" is value (k, j, i)'s index there, "out" its index in the
    /// (c/s², h·s, w·s) view. darknet runs it with out[in] = x[out] for a forward reorg, out[out] = x[in] for a reverse one.
    /// </summary>
    private static void Permute(ReadOnlySpan<T> from, Span<T> to, int c, int h, int w, int s, bool inToOut)
    {
        int outC = c / (s * s);
        for (int k = 0; k < c; k++)
        {
            int c2 = k % outC, offset = k / outC;
            for (int j = 0; j < h; j++)
            {
                int h2 = j * s + offset / s;
                for (int i = 0; i < w; i++)
                {
                    int inIndex = i + w * (j + h * k);
                    int outIndex = i * s + offset % s + w * s * (h2 + h * s * c2);
                    if (inToOut) to[outIndex] = from[inIndex];
                    else to[inIndex] = from[outIndex];
                }
            }
        }
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        (int c, int h, int w) = ((int)shape[1], (int)shape[2], (int)shape[3]);
        int image = c * h * w;
        for (int n = 0; n < (int)shape[0]; n++)
            Permute(x.Slice(n * image, image), y.Slice(n * image, image), c, h, w, Stride, inToOut: Reverse);
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        (int c, int h, int w) = ((int)shape[1], (int)shape[2], (int)shape[3]);
        int image = c * h * w;
        for (int n = 0; n < (int)shape[0]; n++)
            Permute(dy.Slice(n * image, image), dx.Slice(n * image, image), c, h, w, Stride, inToOut: !Reverse);
    }
}
