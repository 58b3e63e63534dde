using System.Numerics;
using SharpNorm.Kernels;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>What max and average pooling share: the window, PyTorch's output size rule (ceil mode included) and the input checks.</summary>
public abstract class Pool2d<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private protected Pool2d(int[] kernelSize, int[]? stride, int[] padding, bool ceilMode)
    {
        (KernelHeight, KernelWidth) = Pair(kernelSize, nameof(kernelSize), 1);
        (StrideHeight, StrideWidth) = stride is null ? (KernelHeight, KernelWidth) : Pair(stride, nameof(stride), 1);
        (PadHeight, PadWidth) = Pair(padding, nameof(padding), 0);
        if (PadHeight * 2 > KernelHeight || PadWidth * 2 > KernelWidth)
            throw new ArgumentException(
                $"padding should be at most half of the kernel size; got padding ({PadHeight}, {PadWidth}) for kernel ({KernelHeight}, {KernelWidth}).", nameof(padding));
        CeilMode = ceilMode;
    }

    public int KernelHeight { get; }
    public int KernelWidth { get; }
    public int StrideHeight { get; }
    public int StrideWidth { get; }
    public int PadHeight { get; }
    public int PadWidth { get; }
    public bool CeilMode { get; }

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        WindowGeometry g = Window(inputShape);
        return [inputShape[0], inputShape[1], g.OutputHeight, g.OutputWidth];
    }

    private protected WindowGeometry Window(ReadOnlySpan<nint> shape)
    {
        var (_, c, h, w) = Require4d(shape);
        int outHeight = WindowGeometry.OutputSize(h, KernelHeight, StrideHeight, PadHeight, 1, CeilMode);
        int outWidth = WindowGeometry.OutputSize(w, KernelWidth, StrideWidth, PadWidth, 1, CeilMode);
        if (outHeight <= 0 || outWidth <= 0)
            throw new ArgumentException($"{Description}: input {TensorData.Format(shape)} is too small for the window; the output would be empty.", "x");
        return new WindowGeometry(c, h, w, KernelHeight, KernelWidth, StrideHeight, StrideWidth, PadHeight, PadWidth, 1, 1, outHeight, outWidth);
    }

    private protected string WindowDescription =>
        $"kernel ({KernelHeight}, {KernelWidth}), stride ({StrideHeight}, {StrideWidth}), padding ({PadHeight}, {PadWidth}){(CeilMode ? ", ceil mode" : "")}";

    private protected static (int, int) Pair(int[] values, string name, int minimum)
    {
        ArgumentNullException.ThrowIfNull(values, name);
        if (values.Length is not (1 or 2) || values.Any(v => v < minimum))
            throw new ArgumentException($"{name} must be one or two integers >= {minimum}; got ({string.Join(", ", values)}).", name);
        return values.Length == 1 ? (values[0], values[0]) : (values[0], values[1]);
    }

    /// <summary>Runs <paramref name="plane"/> over every (n, c) plane, on several threads when there are enough planes.</summary>
    private protected void ForEachPlane(int planes, Action<int> plane)
    {
        if (planes >= 2 * Threads && Threads > 1)
            Parallel.For(0, planes, new ParallelOptions { MaxDegreeOfParallelism = Threads }, plane);
        else
            for (int p = 0; p < planes; p++) plane(p);
    }
}

/// <summary>
/// Max pooling, the twin of torch.nn.MaxPool2d (no dilation): stride defaults to the kernel size; padding is -inf;
/// ceil mode keeps a last partial window that starts inside the input. The first maximum of a window takes the
/// gradient, a NaN counts as the maximum, as in PyTorch.
/// </summary>
public sealed class MaxPool2d<T> : Pool2d<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public MaxPool2d(int[] kernelSize, int[]? stride = null, int[]? padding = null, bool ceilMode = false)
        : base(kernelSize, stride, padding ?? [0], ceilMode)
    {
    }

    public MaxPool2d(int kernelSize, int? stride = null, int padding = 0, bool ceilMode = false)
        : this([kernelSize], stride is null ? null : [stride.Value], [padding], ceilMode)
    {
    }

    protected override string Description => $"MaxPool2d({WindowDescription})";

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        WindowGeometry g = Window(shape);
        int planes = (int)(x.Length / g.InputPlane);
        unsafe
        {
            fixed (T* px = x)
            fixed (T* py = y)
            {
                T* xp = px, yp = py;
                ForEachPlane(planes, p =>
                {
                    var input = new ReadOnlySpan<T>(xp + (nint)p * g.InputPlane, g.InputPlane);
                    var output = new Span<T>(yp + (nint)p * g.OutputPlane, g.OutputPlane);
                    for (int oh = 0; oh < g.OutputHeight; oh++)
                        for (int ow = 0; ow < g.OutputWidth; ow++)
                            output[oh * g.OutputWidth + ow] = input[ArgMax(g, input, oh, ow)];
                });
            }
        }
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        WindowGeometry g = Window(shape);
        int planes = (int)(x.Length / g.InputPlane);
        unsafe
        {
            fixed (T* px = x)
            fixed (T* pdy = dy)
            fixed (T* pdx = dx)
            {
                T* xp = px, dyp = pdy, dxp = pdx;
                ForEachPlane(planes, p =>
                {
                    var input = new ReadOnlySpan<T>(xp + (nint)p * g.InputPlane, g.InputPlane);
                    var gradOut = new ReadOnlySpan<T>(dyp + (nint)p * g.OutputPlane, g.OutputPlane);
                    var gradIn = new Span<T>(dxp + (nint)p * g.InputPlane, g.InputPlane);
                    gradIn.Clear();
                    // The maxima are found again from x: the layer keeps no state between Forward and Backward.
                    for (int oh = 0; oh < g.OutputHeight; oh++)
                        for (int ow = 0; ow < g.OutputWidth; ow++)
                            gradIn[ArgMax(g, input, oh, ow)] += gradOut[oh * g.OutputWidth + ow];
                });
            }
        }
    }

    /// <summary>Index in the plane of the window's first maximum (or first NaN).</summary>
    private static int ArgMax(in WindowGeometry g, ReadOnlySpan<T> plane, int oh, int ow)
    {
        int h0 = oh * g.StrideHeight - g.PadHeight, w0 = ow * g.StrideWidth - g.PadWidth;
        int h1 = Math.Min(h0 + g.KernelHeight, g.Height), w1 = Math.Min(w0 + g.KernelWidth, g.Width);
        h0 = Math.Max(h0, 0);
        w0 = Math.Max(w0, 0);
        int best = h0 * g.Width + w0;
        T max = T.NegativeInfinity;
        for (int h = h0; h < h1; h++)
            for (int w = w0; w < w1; w++)
            {
                T v = plane[h * g.Width + w];
                if (v > max || T.IsNaN(v))
                {
                    max = v;
                    best = h * g.Width + w;
                    if (T.IsNaN(v)) return best;
                }
            }
        return best;
    }
}

/// <summary>
/// Average pooling, the twin of torch.nn.AvgPool2d: stride defaults to the kernel size; with
/// <c>countIncludePad</c> (default, as PyTorch) padded zeros count in the divisor, and a ceil-mode window that runs
/// past the padding divides by its part inside input and padding, as PyTorch does.
/// </summary>
public sealed class AvgPool2d<T> : Pool2d<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public AvgPool2d(int[] kernelSize, int[]? stride = null, int[]? padding = null, bool ceilMode = false, bool countIncludePad = true)
        : base(kernelSize, stride, padding ?? [0], ceilMode)
    {
        CountIncludePad = countIncludePad;
    }

    public AvgPool2d(int kernelSize, int? stride = null, int padding = 0, bool ceilMode = false, bool countIncludePad = true)
        : this([kernelSize], stride is null ? null : [stride.Value], [padding], ceilMode, countIncludePad)
    {
    }

    public bool CountIncludePad { get; }

    protected override string Description => $"AvgPool2d({WindowDescription})";

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        WindowGeometry g = Window(shape);
        int planes = (int)(x.Length / g.InputPlane);
        unsafe
        {
            fixed (T* px = x)
            fixed (T* py = y)
            {
                T* xp = px, yp = py;
                ForEachPlane(planes, p =>
                {
                    var input = new ReadOnlySpan<T>(xp + (nint)p * g.InputPlane, g.InputPlane);
                    var output = new Span<T>(yp + (nint)p * g.OutputPlane, g.OutputPlane);
                    for (int oh = 0; oh < g.OutputHeight; oh++)
                        for (int ow = 0; ow < g.OutputWidth; ow++)
                        {
                            var (h0, h1, w0, w1, divisor) = Extent(g, oh, ow);
                            T sum = T.Zero;
                            for (int h = h0; h < h1; h++)
                                for (int w = w0; w < w1; w++) sum += input[h * g.Width + w];
                            output[oh * g.OutputWidth + ow] = divisor == 0 ? T.Zero : sum / T.CreateTruncating(divisor);
                        }
                });
            }
        }
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        WindowGeometry g = Window(shape);
        int planes = (int)(x.Length / g.InputPlane);
        unsafe
        {
            fixed (T* pdy = dy)
            fixed (T* pdx = dx)
            {
                T* dyp = pdy, dxp = pdx;
                ForEachPlane(planes, p =>
                {
                    var gradOut = new ReadOnlySpan<T>(dyp + (nint)p * g.OutputPlane, g.OutputPlane);
                    var gradIn = new Span<T>(dxp + (nint)p * g.InputPlane, g.InputPlane);
                    gradIn.Clear();
                    for (int oh = 0; oh < g.OutputHeight; oh++)
                        for (int ow = 0; ow < g.OutputWidth; ow++)
                        {
                            var (h0, h1, w0, w1, divisor) = Extent(g, oh, ow);
                            if (divisor == 0) continue;
                            T share = gradOut[oh * g.OutputWidth + ow] / T.CreateTruncating(divisor);
                            for (int h = h0; h < h1; h++)
                                for (int w = w0; w < w1; w++) gradIn[h * g.Width + w] += share;
                        }
                });
            }
        }
    }

    /// <summary>The window's rows and columns inside the input, and its divisor (PyTorch's avg_pool2d rule).</summary>
    private (int h0, int h1, int w0, int w1, int divisor) Extent(in WindowGeometry g, int oh, int ow)
    {
        int h0 = oh * g.StrideHeight - g.PadHeight, w0 = ow * g.StrideWidth - g.PadWidth;
        int h1 = Math.Min(h0 + g.KernelHeight, g.Height + g.PadHeight), w1 = Math.Min(w0 + g.KernelWidth, g.Width + g.PadWidth);
        int poolSize = (h1 - h0) * (w1 - w0);
        h0 = Math.Max(h0, 0);
        w0 = Math.Max(w0, 0);
        h1 = Math.Min(h1, g.Height);
        w1 = Math.Min(w1, g.Width);
        if (h0 >= h1 || w0 >= w1) return (0, 0, 0, 0, 0);
        return (h0, h1, w0, w1, CountIncludePad ? poolSize : (h1 - h0) * (w1 - w0));
    }
}

/// <summary>
/// Global average pooling, the twin of torch.nn.AdaptiveAvgPool2d(1): (N, C, H, W) to (N, C, 1, 1), the mean of each plane
/// (darknet's [avgpool]).
/// </summary>
public sealed class GlobalAvgPool2d<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    protected override string Description => "GlobalAvgPool2d";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        var (n, c, _, _) = Require4d(inputShape);
        return [n, c, 1, 1];
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        int plane = (int)(shape[2] * shape[3]);
        T count = T.CreateTruncating(plane);
        for (int p = 0; p < y.Length; p++) y[p] = System.Numerics.Tensors.TensorPrimitives.Sum(x.Slice(p * plane, plane)) / count;
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        int plane = (int)(shape[2] * shape[3]);
        T count = T.CreateTruncating(plane);
        for (int p = 0; p < dy.Length; p++) dx.Slice(p * plane, plane).Fill(dy[p] / count);
    }
}
