using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using SharpNorm.Threading;

namespace SharpNorm.Kernels;

/// <summary>
/// Grouped convolution with few channels per group, depthwise included (MobileNet's layers, ResNeXt's groups of 4):
/// each of the G groups' Og filters (Cg x kh x kw) reads the group's Cg input channels, at any stride, padding and
/// dilation. im2col would make each group a product of depth Cg·kh·kw and Og rows, nearly all packing; here each
/// output plane is summed directly from the group's channels staged zero-padded, four vectors of columns at a time.
/// The forward and dx go by (image, group), dW and db by filter over the whole batch in image order, so every value is
/// summed by one thread in a fixed order and results do not depend on the thread count. The forward sums each output
/// over the taps in (c, i, j) order with fused multiply-adds, as im2col's product does: the same bits.
/// </summary>
[SkipLocalsInit]
internal sealed unsafe class GroupedConv<T> : IChunkJob where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>Most input channels per group this kernel takes on Auto (more make a product deep enough for im2col).</summary>
    public const int MaxGroupChannels = 8;

    private enum Job { Forward, InputGradient, WeightGradient }

    private readonly ChunkRunner _runner = ChunkRunner.Shared;
    private T[][] _planes = [];          // per worker: the group's Cg padded planes (input channels, or dx before cropping)
    private T[][] _sums = [];            // per worker: the weight gradient's per-tap vector sums and scalar tails

    private Job _job;
    private T* _x, _y, _weights, _bias, _out, _dBias;
    private ChannelMoments<T>? _moments;
    private int _batch, _channels, _height, _width, _outChannels, _groups, _groupChannels, _groupOut;
    private int _kh, _kw, _sh, _sw, _ph, _pw, _dh, _dw, _outHeight, _outWidth;
    private int _paddedHeight, _paddedWidth, _paddedPlane, _bits;

    /// <summary>Widest vector the kernel may use (tests lower it).</summary>
    public int MaxVectorBits { get; set; } = 512;

    /// <summary>Whether a layer goes by this kernel: more than one group, at most <see cref="MaxGroupChannels"/> input channels per group.</summary>
    public static bool Fits(int inChannels, int outChannels, int groups) =>
        groups > 1 && inChannels % groups == 0 && outChannels % groups == 0 && inChannels / groups <= MaxGroupChannels;

    /// <summary>y (N, O, OH, OW) = x (N, C, H, W) convolved group by group with weights (O, C/G, kh, kw), plus bias; moments per image.</summary>
    public void Forward(ReadOnlySpan<T> x, ReadOnlySpan<T> weights, ReadOnlySpan<T> bias, Span<T> y, in WindowGeometry g, int batch, int outChannels,
        int groups, int threads, ChannelMoments<T>? moments)
    {
        Setup(Job.Forward, g, batch, outChannels, groups, threads);
        _moments = moments;
        moments?.Reset(batch, outChannels);
        fixed (T* px = x)
        fixed (T* pw = weights)
        fixed (T* pb = bias)
        fixed (T* py = y)
        {
            _x = px;
            _weights = pw;
            _bias = bias.IsEmpty ? null : pb;
            _out = py;
            Execute(batch * groups, threads);
        }
        _moments = null;
    }

    /// <summary>dx (N, C, H, W) = the input gradient for output gradient dy (N, O, OH, OW) (overwritten).</summary>
    public void InputGradient(ReadOnlySpan<T> dy, ReadOnlySpan<T> weights, Span<T> dx, in WindowGeometry g, int batch, int outChannels, int groups, int threads)
    {
        Setup(Job.InputGradient, g, batch, outChannels, groups, threads);
        fixed (T* pdy = dy)
        fixed (T* pw = weights)
        fixed (T* pdx = dx)
        {
            _y = pdy;
            _weights = pw;
            _out = pdx;
            Execute(batch * groups, threads);
        }
    }

    /// <summary>dW (O, C/G, kh, kw) += Σ over the batch of dy ⋆ x; db (O) += Σ dy where given.</summary>
    public void WeightGradient(ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dWeights, Span<T> dBias, in WindowGeometry g, int batch, int outChannels,
        int groups, int threads)
    {
        Setup(Job.WeightGradient, g, batch, outChannels, groups, threads);
        fixed (T* px = x)
        fixed (T* pdy = dy)
        fixed (T* pdw = dWeights)
        fixed (T* pdb = dBias)
        {
            _x = px;
            _y = pdy;
            _out = pdw;
            _dBias = dBias.IsEmpty ? null : pdb;
            Execute(outChannels, threads);
        }
    }

    /// <summary>The call's sizes (g: one group's input geometry, g.Channels = C/G) and each worker's buffers.</summary>
    private void Setup(Job job, in WindowGeometry g, int batch, int outChannels, int groups, int threads)
    {
        _job = job;
        _bits = SimdWidth.Bits<T>(MaxVectorBits);
        (_batch, _groupChannels, _height, _width, _outChannels, _groups) = (batch, g.Channels, g.Height, g.Width, outChannels, groups);
        (_channels, _groupOut) = (g.Channels * groups, outChannels / groups);
        (_kh, _kw, _sh, _sw, _ph, _pw, _dh, _dw) = (g.KernelHeight, g.KernelWidth, g.StrideHeight, g.StrideWidth, g.PadHeight, g.PadWidth, g.DilationHeight, g.DilationWidth);
        (_outHeight, _outWidth) = (g.OutputHeight, g.OutputWidth);
        // Rows and columns the windows reach (never more than the padded input at floor-mode sizes).
        _paddedHeight = Math.Max(g.Height + 2 * g.PadHeight, (g.OutputHeight - 1) * g.StrideHeight + (g.KernelHeight - 1) * g.DilationHeight + 1);
        _paddedWidth = Math.Max(g.Width + 2 * g.PadWidth, (g.OutputWidth - 1) * g.StrideWidth + (g.KernelWidth - 1) * g.DilationWidth + 1);
        _paddedPlane = checked(_paddedHeight * _paddedWidth);
        int workers = Math.Max(1, threads), planes = checked(_groupChannels * _paddedPlane);
        int sums = job == Job.WeightGradient ? checked(_groupChannels * _kh * _kw * (64 / sizeof(T) + 1)) : 0;
        if (_planes.Length < workers) Array.Resize(ref _planes, workers);
        if (_sums.Length < workers) Array.Resize(ref _sums, workers);
        for (int w = 0; w < workers; w++)
        {
            if (_planes[w] is null || _planes[w].Length < planes) _planes[w] = GC.AllocateUninitializedArray<T>(planes, pinned: true);
            if (_sums[w] is null || _sums[w].Length < sums) _sums[w] = GC.AllocateUninitializedArray<T>(Math.Max(sums, 1), pinned: true);
        }
    }

    private void Execute(int chunks, int threads)
    {
        try
        {
            _runner.Run(this, chunks, Math.Max(1, threads));
        }
        finally
        {
            _x = _y = _weights = _bias = _out = _dBias = null;
        }
    }

    void IChunkJob.Execute(int chunk, int worker)
    {
        switch (_bits)
        {
            case 512: Chunk<Simd512<T>, Vector512<T>>(chunk, worker); break;
            case 256: Chunk<Simd256<T>, Vector256<T>>(chunk, worker); break;
            case 128: Chunk<Simd128<T>, Vector128<T>>(chunk, worker); break;
            default: Chunk<SimdScalar<T>, T>(chunk, worker); break;
        }
    }

    private void Chunk<TSimd, TVector>(int chunk, int worker)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        T* planes = (T*)Unsafe.AsPointer(ref _planes[worker][0]);
        switch (_job)
        {
            case Job.Forward: ForwardGroup<TSimd, TVector>(chunk / _groups, chunk % _groups, planes); break;
            case Job.InputGradient: InputGradientGroup<TSimd, TVector>(chunk / _groups, chunk % _groups, planes); break;
            default: WeightGradientFilter<TSimd, TVector>(chunk, planes, (T*)Unsafe.AsPointer(ref _sums[worker][0])); break;
        }
    }

    /// <summary>The group's input channels of image n into the padded planes: zeros around them.</summary>
    private void Stage(int n, int group, T* planes)
    {
        new Span<T>(planes, _groupChannels * _paddedPlane).Clear();
        for (int c = 0; c < _groupChannels; c++)
        {
            T* source = _x + ((nint)n * _channels + group * _groupChannels + c) * _height * _width, plane = planes + (nint)c * _paddedPlane;
            for (int ih = 0; ih < _height; ih++)
                new ReadOnlySpan<T>(source + (nint)ih * _width, _width).CopyTo(new Span<T>(plane + (nint)(ih + _ph) * _paddedWidth + _pw, _width));
        }
    }

    /// <summary>y[n, o] for the group's filters: Σ over taps (c, i, j) of w[o, c, i, j] · the staged channel c shifted by the tap, plus the bias.</summary>
    private void ForwardGroup<TSimd, TVector>(int n, int group, T* planes)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        Stage(n, group, planes);
        int lanes = TSimd.Count, vectorEnd = _sw == 1 ? _outWidth / lanes * lanes : 0;
        for (int o = group * _groupOut; o < (group + 1) * _groupOut; o++)
        {
            T* w = _weights + (nint)o * _groupChannels * _kh * _kw;
            T* y = _out + ((nint)n * _outChannels + o) * _outHeight * _outWidth;
            T bias = _bias is null ? T.Zero : _bias[o];
            for (int oh = 0; oh < _outHeight; oh++)
            {
                T* top = planes + (nint)oh * _sh * _paddedWidth, row = y + (nint)oh * _outWidth;
                int ow = 0;
                for (; ow + 4 * lanes <= vectorEnd; ow += 4 * lanes) OutputsBy4<TSimd, TVector>(top + ow, w, bias, row + ow);
                for (; ow < vectorEnd; ow += lanes) Outputs<TSimd, TVector>(top + ow, w, bias, row + ow);
                for (; ow < _outWidth; ow++) Outputs<SimdScalar<T>, T>(top + ow * _sw, w, bias, row + ow);
            }
            _moments?.Set(n, o, new ReadOnlySpan<T>(y, _outHeight * _outWidth));
        }
    }

    /// <summary>One vector of outputs (lane l at window column l·stride): the taps in (c, i, j) order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Outputs<TSimd, TVector>(T* window, T* w, T bias, T* target)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        TVector sum = TSimd.Zero;
        for (int c = 0, k = 0; c < _groupChannels; c++)
            for (int i = 0; i < _kh; i++)
            {
                ref T tapRow = ref Unsafe.AsRef<T>(window + (nint)c * _paddedPlane + (nint)i * _dh * _paddedWidth);
                for (int j = 0; j < _kw; j++, k++) sum = TSimd.MultiplyAdd(TSimd.Broadcast(w[k]), TSimd.Load(ref tapRow, j * _dw), sum);
            }
        TSimd.Store(TSimd.Add(sum, TSimd.Broadcast(bias)), ref Unsafe.AsRef<T>(target), 0);
    }

    /// <summary>Four vectors of outputs side by side (stride 1): four independent chains over the taps.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void OutputsBy4<TSimd, TVector>(T* window, T* w, T bias, T* target)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        int lanes = TSimd.Count;
        TVector s0 = TSimd.Zero, s1 = TSimd.Zero, s2 = TSimd.Zero, s3 = TSimd.Zero;
        for (int c = 0, k = 0; c < _groupChannels; c++)
            for (int i = 0; i < _kh; i++)
            {
                ref T tapRow = ref Unsafe.AsRef<T>(window + (nint)c * _paddedPlane + (nint)i * _dh * _paddedWidth);
                for (int j = 0; j < _kw; j++, k++)
                {
                    TVector weight = TSimd.Broadcast(w[k]);
                    nint at = j * _dw;
                    s0 = TSimd.MultiplyAdd(weight, TSimd.Load(ref tapRow, at), s0);
                    s1 = TSimd.MultiplyAdd(weight, TSimd.Load(ref tapRow, at + lanes), s1);
                    s2 = TSimd.MultiplyAdd(weight, TSimd.Load(ref tapRow, at + 2 * lanes), s2);
                    s3 = TSimd.MultiplyAdd(weight, TSimd.Load(ref tapRow, at + 3 * lanes), s3);
                }
            }
        TVector b = TSimd.Broadcast(bias);
        ref T to = ref Unsafe.AsRef<T>(target);
        TSimd.Store(TSimd.Add(s0, b), ref to, 0);
        TSimd.Store(TSimd.Add(s1, b), ref to, lanes);
        TSimd.Store(TSimd.Add(s2, b), ref to, 2 * lanes);
        TSimd.Store(TSimd.Add(s3, b), ref to, 3 * lanes);
    }

    /// <summary>
    /// dx[n] for the group's channels: each of the group's filters scatters w[o, c, i, j] · dy[o] onto channel c's
    /// padded plane at every tap (filters, channels, taps, rows in order), and the planes' insides are dx.
    /// </summary>
    private void InputGradientGroup<TSimd, TVector>(int n, int group, T* planes)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        new Span<T>(planes, _groupChannels * _paddedPlane).Clear();
        int outPlane = _outHeight * _outWidth, vectorEnd = _sw == 1 ? _outWidth / TSimd.Count * TSimd.Count : 0;
        for (int o = group * _groupOut; o < (group + 1) * _groupOut; o++)
        {
            T* dy = _y + ((nint)n * _outChannels + o) * outPlane;
            for (int c = 0; c < _groupChannels; c++)
                for (int i = 0; i < _kh; i++)
                    for (int j = 0; j < _kw; j++)
                    {
                        T weight = _weights[(((nint)o * _groupChannels + c) * _kh + i) * _kw + j];
                        TVector wv = TSimd.Broadcast(weight);
                        for (int oh = 0; oh < _outHeight; oh++)
                        {
                            T* target = planes + (nint)c * _paddedPlane + (nint)(oh * _sh + i * _dh) * _paddedWidth + j * _dw;
                            T* source = dy + (nint)oh * _outWidth;
                            int ow = 0;
                            for (; ow < vectorEnd; ow += TSimd.Count)
                            {
                                ref T t = ref Unsafe.AsRef<T>(target + ow);
                                TSimd.Store(TSimd.MultiplyAdd(wv, TSimd.Load(ref Unsafe.AsRef<T>(source + ow), 0), TSimd.Load(ref t, 0)), ref t, 0);
                            }
                            for (; ow < _outWidth; ow++) target[ow * _sw] = T.FusedMultiplyAdd(weight, source[ow], target[ow * _sw]);
                        }
                    }
        }
        for (int c = 0; c < _groupChannels; c++)
        {
            T* dx = _out + ((nint)n * _channels + group * _groupChannels + c) * _height * _width, plane = planes + (nint)c * _paddedPlane;
            for (int ih = 0; ih < _height; ih++)
                new ReadOnlySpan<T>(plane + (nint)(ih + _ph) * _paddedWidth + _pw, _width).CopyTo(new Span<T>(dx + (nint)ih * _width, _width));
        }
    }

    /// <summary>
    /// dW[o, c, i, j] += Σ over images, rows and columns of dy[n, o] · the staged channel c shifted by the tap; db[o] +=
    /// Σ dy. Each tap sums a vector of lanes over the whole batch (then the lanes, then the scalar tail), in image order.
    /// </summary>
    private void WeightGradientFilter<TSimd, TVector>(int o, T* planes, T* scratch)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        int taps = _groupChannels * _kh * _kw, group = o / _groupOut, outPlane = _outHeight * _outWidth;
        TVector* sums = (TVector*)scratch;
        T* tails = scratch + (nint)taps * TSimd.Count;
        for (int k = 0; k < taps; k++)
        {
            sums[k] = TSimd.Zero;
            tails[k] = T.Zero;
        }
        TVector biasSum = TSimd.Zero;
        T biasTail = T.Zero;
        int vectorEnd = _sw == 1 ? _outWidth / TSimd.Count * TSimd.Count : 0;
        for (int n = 0; n < _batch; n++)
        {
            Stage(n, group, planes);
            T* dy = _y + ((nint)n * _outChannels + o) * outPlane;
            for (int oh = 0; oh < _outHeight; oh++)
            {
                T* source = dy + (nint)oh * _outWidth, top = planes + (nint)oh * _sh * _paddedWidth;
                for (int ow = 0; ow < vectorEnd; ow += TSimd.Count)
                {
                    TVector d = TSimd.Load(ref Unsafe.AsRef<T>(source + ow), 0);
                    biasSum = TSimd.Add(biasSum, d);
                    for (int c = 0, k = 0; c < _groupChannels; c++)
                        for (int i = 0; i < _kh; i++)
                        {
                            ref T tapRow = ref Unsafe.AsRef<T>(top + (nint)c * _paddedPlane + (nint)i * _dh * _paddedWidth + ow);
                            for (int j = 0; j < _kw; j++, k++) sums[k] = TSimd.MultiplyAdd(d, TSimd.Load(ref tapRow, j * _dw), sums[k]);
                        }
                }
                for (int ow = vectorEnd; ow < _outWidth; ow++)
                {
                    T d = source[ow];
                    biasTail += d;
                    for (int c = 0, k = 0; c < _groupChannels; c++)
                        for (int i = 0; i < _kh; i++)
                        {
                            T* tapRow = top + (nint)c * _paddedPlane + (nint)i * _dh * _paddedWidth + ow * _sw;
                            for (int j = 0; j < _kw; j++, k++) tails[k] = T.FusedMultiplyAdd(d, tapRow[j * _dw], tails[k]);
                        }
                }
            }
        }
        T* dw = _out + (nint)o * taps;
        for (int k = 0; k < taps; k++) dw[k] += TSimd.Sum(sums[k]) + tails[k];
        if (_dBias is not null) _dBias[o] += TSimd.Sum(biasSum) + biasTail;
    }
}
