using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace SharpNorm.Kernels;

/// <summary>The geometry of a 2-d convolution or pooling window over one (C, H, W) image.</summary>
public readonly record struct WindowGeometry(
    int Channels, int Height, int Width, int KernelHeight, int KernelWidth,
    int StrideHeight, int StrideWidth, int PadHeight, int PadWidth, int DilationHeight, int DilationWidth,
    int OutputHeight, int OutputWidth)
{
    public int InputPlane => Height * Width;
    public int OutputPlane => OutputHeight * OutputWidth;

    /// <summary>Rows of the column matrix: one per (channel, kernel row, kernel column).</summary>
    public int ColumnRows => Channels * KernelHeight * KernelWidth;

    /// <summary>A window with no padding, stride or dilation and a 1x1 kernel reads the image as it is.</summary>
    public bool IsPointwise => KernelHeight == 1 && KernelWidth == 1 && StrideHeight == 1 && StrideWidth == 1 && PadHeight == 0 && PadWidth == 0;

    /// <summary>PyTorch's output size: floor((in + 2*pad - dil*(k-1) - 1) / stride) + 1, or ceil with <paramref name="ceilMode"/>
    /// (where the last window must start inside the input or the left padding).</summary>
    public static int OutputSize(int input, int kernel, int stride, int pad, int dilation, bool ceilMode = false)
    {
        long span = (long)input + 2 * pad - (long)dilation * (kernel - 1) - 1;
        if (span < 0) return 0;
        long size = (ceilMode ? (span + stride - 1) / stride : span / stride) + 1;
        if (ceilMode && (size - 1) * stride >= input + pad) size--;
        return (int)size;
    }
}

/// <summary>im2col and col2im: an image as the column matrix of its windows (row (c, ki, kj), column (oh, ow)), and back.</summary>
internal static class Im2Col<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>
    /// columns[(c*kh + ki)*kw + kj, oh*OW + ow] = image[c, oh*sh - ph + ki*dh, ow*sw - pw + kj*dw], 0 outside; rows of the
    /// column matrix are <paramref name="rowStride"/> apart (several images side by side).
    /// </summary>
    public static void Gather(in WindowGeometry g, ReadOnlySpan<T> image, Span<T> columns, int rowStride)
    {
        if (SmallStrideOne(g))
        {
            GatherSmall(g, image, columns, rowStride);
            return;
        }
        if (g.StrideHeight == 1 && g.StrideWidth == 1 && g.OutputWidth == g.Width)
        {
            GatherShifted(g, image, columns, rowStride);
            return;
        }
        int plane = g.OutputPlane;
        for (int c = 0; c < g.Channels; c++)
            for (int ki = 0; ki < g.KernelHeight; ki++)
                for (int kj = 0; kj < g.KernelWidth; kj++)
                {
                    Span<T> row = columns.Slice(((c * g.KernelHeight + ki) * g.KernelWidth + kj) * rowStride, plane);
                    ReadOnlySpan<T> channel = image.Slice(c * g.InputPlane, g.InputPlane);
                    var (dx, owBegin, owEnd) = InsideColumns(g, kj);
                    for (int oh = 0; oh < g.OutputHeight; oh++)
                    {
                        Span<T> outRow = row.Slice(oh * g.OutputWidth, g.OutputWidth);
                        int ih = oh * g.StrideHeight - g.PadHeight + ki * g.DilationHeight;
                        if ((uint)ih >= (uint)g.Height || owBegin >= owEnd)
                        {
                            outRow.Clear();
                            continue;
                        }
                        outRow[..owBegin].Clear();
                        outRow[owEnd..].Clear();
                        ReadOnlySpan<T> inRow = channel.Slice(ih * g.Width, g.Width);
                        if (g.StrideWidth == 1)
                            inRow.Slice(owBegin + dx, owEnd - owBegin).CopyTo(outRow[owBegin..owEnd]);
                        else
                            for (int ow = owBegin; ow < owEnd; ow++) outRow[ow] = inRow[ow * g.StrideWidth + dx];
                    }
                }
    }

    /// <summary>Padded planes up to this many elements are staged on the stack by <see cref="GatherSmall"/>.</summary>
    private const int SmallPlane = 4096;

    /// <summary>
    /// Stride 1, dilation 1 and output rows under 16 wide (small maps): there the shifted copies spend more on clearing
    /// each row's wrapped columns than on copying, and <see cref="GatherSmall"/> is used instead.
    /// </summary>
    private static bool SmallStrideOne(in WindowGeometry g) =>
        g.StrideHeight == 1 && g.StrideWidth == 1 && g.DilationHeight == 1 && g.DilationWidth == 1 && g.OutputWidth < 16
        && (long)(g.Height + 2 * g.PadHeight) * (g.Width + 2 * g.PadWidth) <= SmallPlane;

    /// <summary>
    /// <see cref="Gather"/> for small maps at stride 1: each channel is staged once zero-padded, after which every output
    /// row of every (ki, kj) is one short copy out of the padded plane (two overlapping vectors), with no clearing.
    /// </summary>
    private static unsafe void GatherSmall(in WindowGeometry g, ReadOnlySpan<T> image, Span<T> columns, int rowStride)
    {
        int paddedWidth = g.Width + 2 * g.PadWidth, paddedHeight = g.Height + 2 * g.PadHeight, outWidth = g.OutputWidth;
        T* padded = stackalloc T[paddedWidth * paddedHeight];
        new Span<T>(padded, paddedWidth * paddedHeight).Clear();
        fixed (T* source = image)
        fixed (T* target = columns)
            for (int c = 0; c < g.Channels; c++)
            {
                // The border stays zero from the first clear: only the inside is rewritten per channel.
                T* channel = source + (nint)c * g.InputPlane;
                for (int ih = 0; ih < g.Height; ih++)
                    CopyShort(channel + ih * g.Width, padded + (ih + g.PadHeight) * paddedWidth + g.PadWidth, g.Width);
                for (int ki = 0; ki < g.KernelHeight; ki++)
                    for (int kj = 0; kj < g.KernelWidth; kj++)
                    {
                        T* row = target + (nint)((c * g.KernelHeight + ki) * g.KernelWidth + kj) * rowStride;
                        T* window = padded + ki * paddedWidth + kj;
                        for (int oh = 0; oh < g.OutputHeight; oh++) CopyShort(window + oh * paddedWidth, row + oh * outWidth, outWidth);
                    }
            }
    }

    /// <summary>n elements from source to target (not overlapping): whole vectors, the last one ending at n.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void CopyShort(T* source, T* target, int n)
    {
        int w256 = Vector256<T>.Count, w128 = Vector128<T>.Count;
        if (n >= w256)
        {
            for (int i = 0; i < n - w256; i += w256) Vector256.Store(Vector256.Load(source + i), target + i);
            Vector256.Store(Vector256.Load(source + n - w256), target + n - w256);
        }
        else if (n >= w128)
        {
            Vector128.Store(Vector128.Load(source), target);
            Vector128.Store(Vector128.Load(source + n - w128), target + n - w128);
        }
        else
            for (int i = 0; i < n; i++) target[i] = source[i];
    }

    /// <summary>
    /// <see cref="Gather"/> where output rows are as wide as input rows (stride 1, "same" width): each row of the
    /// column matrix is the channel shifted by (dy, dx), so its valid output rows are one contiguous copy, after which
    /// the columns that wrapped around a row edge are zeroed.
    /// </summary>
    private static void GatherShifted(in WindowGeometry g, ReadOnlySpan<T> image, Span<T> columns, int rowStride)
    {
        int width = g.Width, plane = g.OutputPlane;
        for (int c = 0; c < g.Channels; c++)
        {
            ReadOnlySpan<T> channel = image.Slice(c * g.InputPlane, g.InputPlane);
            for (int ki = 0; ki < g.KernelHeight; ki++)
            {
                int dy = ki * g.DilationHeight - g.PadHeight;
                // Output rows whose input row oh + dy lies inside the image.
                int ohBegin = Math.Clamp(-dy, 0, g.OutputHeight), ohEnd = Math.Clamp(g.Height - dy, ohBegin, g.OutputHeight);
                for (int kj = 0; kj < g.KernelWidth; kj++)
                {
                    Span<T> row = columns.Slice(((c * g.KernelHeight + ki) * g.KernelWidth + kj) * rowStride, plane);
                    var (dx, owBegin, owEnd) = InsideColumns(g, kj);
                    if (ohBegin >= ohEnd || owBegin >= owEnd)
                    {
                        row.Clear();
                        continue;
                    }
                    row[..(ohBegin * width)].Clear();
                    row[(ohEnd * width)..].Clear();
                    // row[t] = channel[t + shift] for t in the valid rows; sources outside the channel are wrapped columns.
                    int shift = dy * width + dx;
                    int from = Math.Max(ohBegin * width, -shift), to = Math.Min(ohEnd * width, g.InputPlane - shift);
                    channel.Slice(from + shift, to - from).CopyTo(row[from..to]);
                    row[(ohBegin * width)..from].Clear();
                    row[to..(ohEnd * width)].Clear();
                    for (int oh = ohBegin; oh < ohEnd; oh++)
                    {
                        row.Slice(oh * width, owBegin).Clear();
                        row.Slice(oh * width + owEnd, width - owEnd).Clear();
                    }
                }
            }
        }
    }

    /// <summary>
    /// Columns [first, first + count) of the image's column matrix (output positions in row-major (oh, ow) order),
    /// rows <paramref name="rowStride"/> apart: a band of the output gathered on its own, so that a large image's
    /// product can be split among threads with each band's columns small enough to stay in cache.
    /// </summary>
    public static void GatherBand(in WindowGeometry g, ReadOnlySpan<T> image, Span<T> columns, int rowStride, int first, int count)
    {
        int ow0 = g.OutputWidth, end = first + count;
        for (int c = 0; c < g.Channels; c++)
            for (int ki = 0; ki < g.KernelHeight; ki++)
                for (int kj = 0; kj < g.KernelWidth; kj++)
                {
                    Span<T> row = columns.Slice(((c * g.KernelHeight + ki) * g.KernelWidth + kj) * rowStride, count);
                    ReadOnlySpan<T> channel = image.Slice(c * g.InputPlane, g.InputPlane);
                    var (dx, owBegin, owEnd) = InsideColumns(g, kj);
                    for (int oh = first / ow0; oh * ow0 < end; oh++)
                    {
                        // This output row's part of the band: output columns [from, to), at row[(oh*OW + from) - first].
                        int from = Math.Max(0, first - oh * ow0), to = Math.Min(ow0, end - oh * ow0);
                        Span<T> outRow = row.Slice(oh * ow0 + from - first, to - from);
                        int ih = oh * g.StrideHeight - g.PadHeight + ki * g.DilationHeight;
                        int begin = Math.Clamp(owBegin, from, to), stop = Math.Clamp(owEnd, from, to);
                        if ((uint)ih >= (uint)g.Height || begin >= stop)
                        {
                            outRow.Clear();
                            continue;
                        }
                        outRow[..(begin - from)].Clear();
                        outRow[(stop - from)..].Clear();
                        ReadOnlySpan<T> inRow = channel.Slice(ih * g.Width, g.Width);
                        if (g.StrideWidth == 1)
                            inRow.Slice(begin + dx, stop - begin).CopyTo(outRow[(begin - from)..(stop - from)]);
                        else
                            for (int ow = begin; ow < stop; ow++) outRow[ow - from] = inRow[ow * g.StrideWidth + dx];
                    }
                }
    }

    /// <summary>The adjoint of <see cref="Gather"/>: image = Σ over windows of the column values (image is overwritten).</summary>
    public static void Scatter(in WindowGeometry g, ReadOnlySpan<T> columns, Span<T> image, int rowStride)
    {
        image[..(g.Channels * g.InputPlane)].Clear();
        int plane = g.OutputPlane;
        for (int c = 0; c < g.Channels; c++)
            for (int ki = 0; ki < g.KernelHeight; ki++)
                for (int kj = 0; kj < g.KernelWidth; kj++)
                {
                    ReadOnlySpan<T> row = columns.Slice(((c * g.KernelHeight + ki) * g.KernelWidth + kj) * rowStride, plane);
                    Span<T> channel = image.Slice(c * g.InputPlane, g.InputPlane);
                    var (dx, owBegin, owEnd) = InsideColumns(g, kj);
                    if (owBegin >= owEnd) continue;
                    for (int oh = 0; oh < g.OutputHeight; oh++)
                    {
                        int ih = oh * g.StrideHeight - g.PadHeight + ki * g.DilationHeight;
                        if ((uint)ih >= (uint)g.Height) continue;
                        ReadOnlySpan<T> inRow = row.Slice(oh * g.OutputWidth, g.OutputWidth);
                        Span<T> outRow = channel.Slice(ih * g.Width, g.Width);
                        if (g.StrideWidth == 1)
                            System.Numerics.Tensors.TensorPrimitives.Add(outRow.Slice(owBegin + dx, owEnd - owBegin), inRow[owBegin..owEnd],
                                outRow.Slice(owBegin + dx, owEnd - owBegin));
                        else
                            for (int ow = owBegin; ow < owEnd; ow++) outRow[ow * g.StrideWidth + dx] += inRow[ow];
                    }
                }
    }

    /// <summary>For kernel column kj: the input column offset dx (input column = ow*sw + dx) and the output columns [begin, end) whose input column lies inside [0, W).</summary>
    private static (int Dx, int Begin, int End) InsideColumns(in WindowGeometry g, int kj)
    {
        int dx = kj * g.DilationWidth - g.PadWidth;
        return (dx, Math.Max(0, CeilDiv(-dx, g.StrideWidth)), Math.Min(g.OutputWidth, FloorDiv(g.Width - 1 - dx, g.StrideWidth) + 1));
    }

    private static int CeilDiv(int a, int b) => a >= 0 ? (a + b - 1) / b : -(-a / b);
    private static int FloorDiv(int a, int b) => a >= 0 ? a / b : -((-a + b - 1) / b);
}
