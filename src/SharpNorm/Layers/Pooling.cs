using System.Numerics;
using System.Runtime.InteropServices;
using SharpNorm.Kernels;
using SharpNorm.Tensors;
using SharpNorm.Threading;

namespace SharpNorm.Layers;

/// <summary>What max and average pooling share: the window, PyTorch's output size rule (ceil mode included) and the input checks.</summary>
public abstract class Pool2d<T> : Layer<T>, IChunkJob where T : unmanaged, IFloatingPointIeee754<T>
{
    private protected Pool2d(int[] kernelSize, int[]? stride, int[] padding, bool ceilMode, bool asymmetricPadding = false)
    {
        (KernelHeight, KernelWidth) = Pair(kernelSize, nameof(kernelSize), 1);
        (StrideHeight, StrideWidth) = stride is null ? (KernelHeight, KernelWidth) : Pair(stride, nameof(stride), 1);
        ArgumentNullException.ThrowIfNull(padding);
        if (asymmetricPadding && padding.Length == 4)
        {
            if (padding.Any(p => p < 0))
                throw new ArgumentException($"padding must be four integers >= 0 (top, left, bottom, right); got ({string.Join(", ", padding)}).", nameof(padding));
            if (ceilMode) throw new ArgumentException("Ceil mode takes symmetric padding (one or two values); got four.", nameof(ceilMode));
            (PadHeight, PadWidth, PadBottom, PadRight) = (padding[0], padding[1], padding[2], padding[3]);
        }
        else
        {
            (PadHeight, PadWidth) = Pair(padding, nameof(padding), 0);
            (PadBottom, PadRight) = (PadHeight, PadWidth);
        }
        if (Math.Max(PadHeight, PadBottom) * 2 > KernelHeight || Math.Max(PadWidth, PadRight) * 2 > KernelWidth)
            throw new ArgumentException(
                $"padding should be at most half of the kernel size; got padding ({PadHeight}, {PadWidth}{(IsSymmetric ? "" : $", {PadBottom}, {PadRight}")}) for kernel ({KernelHeight}, {KernelWidth}).", nameof(padding));
        CeilMode = ceilMode;
    }

    public int KernelHeight { get; }
    public int KernelWidth { get; }
    public int StrideHeight { get; }
    public int StrideWidth { get; }
    public int PadHeight { get; }
    public int PadWidth { get; }

    /// <summary>Padding after the last row (PadHeight unless the four-value padding of MaxPool2d set it).</summary>
    public int PadBottom { get; }

    /// <summary>Padding after the last column (PadWidth unless the four-value padding of MaxPool2d set it).</summary>
    public int PadRight { get; }

    public bool CeilMode { get; }

    /// <summary>Whether the padding is the same on both sides of each dimension (PyTorch's padding).</summary>
    public bool IsSymmetric => PadBottom == PadHeight && PadRight == PadWidth;

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        WindowGeometry g = Window(inputShape);
        return [inputShape[0], inputShape[1], g.OutputHeight, g.OutputWidth];
    }

    private protected WindowGeometry Window(ReadOnlySpan<nint> shape)
    {
        var (_, c, h, w) = Require4d(shape);
        int outHeight = IsSymmetric ? WindowGeometry.OutputSize(h, KernelHeight, StrideHeight, PadHeight, 1, CeilMode) : Floor(h, KernelHeight, StrideHeight, PadHeight + PadBottom);
        int outWidth = IsSymmetric ? WindowGeometry.OutputSize(w, KernelWidth, StrideWidth, PadWidth, 1, CeilMode) : Floor(w, KernelWidth, StrideWidth, PadWidth + PadRight);
        if (outHeight <= 0 || outWidth <= 0)
            throw new ArgumentException($"{Description}: input {TensorData.Format(shape)} is too small for the window; the output would be empty.", "x");
        return new WindowGeometry(c, h, w, KernelHeight, KernelWidth, StrideHeight, StrideWidth, PadHeight, PadWidth, 1, 1, outHeight, outWidth);
    }

    private static int Floor(int input, int kernel, int stride, int padding)
    {
        long span = (long)input + padding - kernel;
        return span < 0 ? 0 : (int)(span / stride + 1);
    }

    private protected string WindowDescription =>
        $"kernel ({KernelHeight}, {KernelWidth}), stride ({StrideHeight}, {StrideWidth}), padding ({PadHeight}, {PadWidth}{(IsSymmetric ? "" : $", {PadBottom}, {PadRight}")}){(CeilMode ? ", ceil mode" : "")}";

    // The running job: planes of x and dy, and where results go.
    private WindowGeometry _window;
    private unsafe T* _x, _dy, _output;
    private bool _backward;
    private int _planeCount, _chunks;

    private const int MinChunkElements = 1 << 15;

    /// <summary>Runs <see cref="PlaneJob"/> over every (n, c) plane, in contiguous shares on the shared helper threads.</summary>
    private protected unsafe void ForEachPlane(in WindowGeometry g, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> output, bool backward)
    {
        int planes = x.Length / g.InputPlane;
        fixed (T* px = x)
        fixed (T* pdy = dy)
        fixed (T* pout = output)
        {
            (_window, _backward, _planeCount) = (g, backward, planes);
            _x = px;
            _dy = pdy;
            _output = pout;
            _chunks = Math.Clamp((int)((long)planes * g.InputPlane / MinChunkElements), 1, Math.Max(1, Threads));
            ChunkRunner.Shared.Run(this, _chunks, Threads);
            _x = _dy = _output = null;
        }
    }

    unsafe void IChunkJob.Execute(int chunk, int worker)
    {
        WindowGeometry g = _window;
        int first = (int)((long)_planeCount * chunk / _chunks), end = (int)((long)_planeCount * (chunk + 1) / _chunks);
        for (int p = first; p < end; p++)
        {
            var input = new ReadOnlySpan<T>(_x + (nint)p * g.InputPlane, g.InputPlane);
            if (_backward)
                PlaneJob(g, input, new ReadOnlySpan<T>(_dy + (nint)p * g.OutputPlane, g.OutputPlane), new Span<T>(_output + (nint)p * g.InputPlane, g.InputPlane), true);
            else
                PlaneJob(g, input, default, new Span<T>(_output + (nint)p * g.OutputPlane, g.OutputPlane), false);
        }
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y) => ForEachPlane(Window(shape), x, default, y, false);

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) => ForEachPlane(Window(shape), x, dy, dx, true);

    /// <summary>Forward (an output plane from an input plane) or backward (an input-gradient plane, overwritten, from the input and output-gradient planes).</summary>
    private protected abstract void PlaneJob(in WindowGeometry g, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> output, bool backward);
}

/// <summary>
/// Max pooling, the twin of torch.nn.MaxPool2d (no dilation): stride defaults to the kernel size; padding is -inf;
/// ceil mode keeps a last partial window that starts inside the input. The first maximum of a window takes the
/// gradient, a NaN counts as the maximum, as in PyTorch. Beyond PyTorch, padding may be four values (top, left,
/// bottom, right), ONNX MaxPool's pads: darknet's pools pad padding/2 before and the rest after.
/// </summary>
public sealed class MaxPool2d<T> : Pool2d<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public MaxPool2d(int[] kernelSize, int[]? stride = null, int[]? padding = null, bool ceilMode = false)
        : base(kernelSize, stride, padding ?? [0], ceilMode, asymmetricPadding: true)
    {
    }

    public MaxPool2d(int kernelSize, int? stride = null, int padding = 0, bool ceilMode = false)
        : this([kernelSize], stride is null ? null : [stride.Value], [padding], ceilMode)
    {
    }

    protected override string Description => $"MaxPool2d({WindowDescription})";

    private protected override void PlaneJob(in WindowGeometry g, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> output, bool backward)
    {
        if (backward) output.Clear();
        bool pairs = g.KernelHeight == 2 && g.KernelWidth == 2 && g.StrideHeight == 2 && g.StrideWidth == 2 && g.PadHeight == 0 && g.PadWidth == 0
            && 2 * g.OutputHeight <= g.Height && 2 * g.OutputWidth <= g.Width;
        if (pairs && Vectorized && typeof(T) == typeof(float) && FirstMaxPairs.IsSupported)
        {
            FirstMaxPairs.Plane(MemoryMarshal.Cast<T, float>(x), g.Width, g.OutputHeight, g.OutputWidth, MemoryMarshal.Cast<T, float>(dy),
                MemoryMarshal.Cast<T, float>(output), backward);
            return;
        }
        // darknet's 2x2 stride-1 pool (padded after the input only): the plane's inside windows a vector at a time
        int done = 0;
        if (!backward && g.KernelHeight == 2 && g.KernelWidth == 2 && g.StrideHeight == 1 && g.StrideWidth == 1 && g.PadHeight == 0 && g.PadWidth == 0
            && g.OutputWidth == g.Width && g.OutputHeight >= g.Height - 1 && Vectorized && typeof(T) == typeof(float) && FirstMaxPairs.IsSupported)
            done = FirstMaxPairs.StrideOne(MemoryMarshal.Cast<T, float>(x), g.Height, g.Width, MemoryMarshal.Cast<T, float>(output));
        for (int oh = 0; oh < g.OutputHeight; oh++)
            for (int ow = 0; ow < g.OutputWidth; ow++)
            {
                if (oh * g.OutputWidth + ow < done && ow < g.Width - 1) continue;
                // The common 2x2 window inside the plane, directly; any other window by the general search.
                int at = pairs ? ArgMaxOfPair(x, g.Width, 2 * oh * g.Width + 2 * ow) : ArgMax(g, x, oh, ow);
                if (backward) output[at] += dy[oh * g.OutputWidth + ow];
                else output[oh * g.OutputWidth + ow] = x[at];
            }
    }

    /// <summary>Whether float planes take the vector paths of 2x2 windows, stride 2 and stride 1 (tests compare them with the scalar one).</summary>
    internal bool Vectorized { get; set; } = true;

    /// <summary>The first maximum (or first NaN) of the 2x2 window whose top-left element is at <paramref name="at"/>.</summary>
    private static int ArgMaxOfPair(ReadOnlySpan<T> x, int width, int at)
    {
        int best = at;
        T max = x[at];
        if (T.IsNaN(max)) return best;
        int below = at + width;
        if (x[at + 1] > max || T.IsNaN(x[at + 1])) { if (T.IsNaN(x[at + 1])) return at + 1; max = x[at + 1]; best = at + 1; }
        if (x[below] > max || T.IsNaN(x[below])) { if (T.IsNaN(x[below])) return below; max = x[below]; best = below; }
        if (x[below + 1] > max || T.IsNaN(x[below + 1])) best = below + 1;
        return best;
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

    private protected override void PlaneJob(in WindowGeometry g, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> output, bool backward)
    {
        if (backward) output.Clear();
        for (int oh = 0; oh < g.OutputHeight; oh++)
            for (int ow = 0; ow < g.OutputWidth; ow++)
            {
                var (h0, h1, w0, w1, divisor) = Extent(g, oh, ow);
                if (backward)
                {
                    if (divisor == 0) continue;
                    T share = dy[oh * g.OutputWidth + ow] / T.CreateTruncating(divisor);
                    for (int h = h0; h < h1; h++)
                        for (int w = w0; w < w1; w++) output[h * g.Width + w] += share;
                    continue;
                }
                T sum = T.Zero;
                for (int h = h0; h < h1; h++)
                    for (int w = w0; w < w1; w++) sum += x[h * g.Width + w];
                output[oh * g.OutputWidth + ow] = divisor == 0 ? T.Zero : sum / T.CreateTruncating(divisor);
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
