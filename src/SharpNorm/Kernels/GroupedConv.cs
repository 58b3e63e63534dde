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
/// The forward and dx go by (image, group), dW and db by group over the whole batch in image order, so every value is
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
    private int _paddedHeight, _phaseWidth, _phaseStride, _paddedPlane, _bits;
    private int[] _tapOffsets = [];      // per tap (c, i, j): where its input for output (0, 0) lies in the staged planes
    private int[] _dxOffsets = [];       // the gathered dx's taps (o, i, j) in the staged dy planes
    private bool _gatherDx;
    private int _dyWidth, _dyPlane;

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
            Execute(groups, threads);
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
        int paddedWidth = Math.Max(g.Width + 2 * g.PadWidth, (g.OutputWidth - 1) * g.StrideWidth + (g.KernelWidth - 1) * g.DilationWidth + 1);
        // Columns split by phase (column mod stride), so that a tap's inputs for consecutive outputs are consecutive;
        // a vector of slack (zeros) after each row for the last, part-filled vector of outputs.
        _phaseWidth = Math.Max((paddedWidth + _sw - 1) / _sw, g.OutputWidth + (g.KernelWidth - 1) * g.DilationWidth / _sw) + 64 / sizeof(T);
        _phaseStride = checked(_paddedHeight * _phaseWidth);
        _paddedPlane = checked(_sw * _phaseStride);
        int taps = _groupChannels * _kh * _kw;
        if (_tapOffsets.Length < taps) _tapOffsets = new int[taps];
        for (int c = 0, k = 0; c < _groupChannels; c++)
            for (int i = 0; i < _kh; i++)
                for (int j = 0; j < _kw; j++, k++)
                    _tapOffsets[k] = c * _paddedPlane + j * _dw % _sw * _phaseStride + i * _dh * _phaseWidth + j * _dw / _sw;
        int workers = Math.Max(1, threads), planes = checked(_groupChannels * _paddedPlane);
        int sums = job == Job.WeightGradient ? checked(_groupOut * (taps + 1) * (64 / sizeof(T))) : 0;
        // dx at stride 1 with padding no wider than the window: the forward's shape over dy zero-padded by the window
        // less the padding, with the taps turned around (a gather: one load per multiply-add, no read-modify-write).
        _gatherDx = job == Job.InputGradient && _sh == 1 && _sw == 1 && (_kh - 1) * _dh >= _ph && (_kw - 1) * _dw >= _pw;
        if (_gatherDx)
        {
            _dyWidth = g.Width + (_kw - 1) * _dw + 64 / sizeof(T);
            _dyPlane = checked((g.Height + (_kh - 1) * _dh) * _dyWidth);
            int dxTaps = checked(_groupOut * _kh * _kw);
            if (_dxOffsets.Length < dxTaps) _dxOffsets = new int[dxTaps];
            for (int o = 0, k = 0; o < _groupOut; o++)
                for (int i = 0; i < _kh; i++)
                    for (int j = 0; j < _kw; j++, k++)
                        _dxOffsets[k] = o * _dyPlane + (_kh - 1 - i) * _dh * _dyWidth + (_kw - 1 - j) * _dw;
            planes = checked(_groupOut * _dyPlane);
            sums = dxTaps;
        }
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
            case Job.InputGradient when _gatherDx:
                GatheredInputGradient<TSimd, TVector>(chunk / _groups, chunk % _groups, planes, (T*)Unsafe.AsPointer(ref _sums[worker][0]));
                break;
            case Job.InputGradient: InputGradientGroup<TSimd, TVector>(chunk / _groups, chunk % _groups, planes); break;
            default: WeightGradientGroup<TSimd, TVector>(chunk, planes, (T*)Unsafe.AsPointer(ref _sums[worker][0])); break;
        }
    }

    /// <summary>The group's input channels of image n into the padded planes (by column phase): zeros around them.</summary>
    private void Stage(int n, int group, T* planes)
    {
        new Span<T>(planes, _groupChannels * _paddedPlane).Clear();
        for (int c = 0; c < _groupChannels; c++)
        {
            T* source = _x + ((nint)n * _channels + group * _groupChannels + c) * _height * _width, plane = planes + (nint)c * _paddedPlane;
            for (int ih = 0; ih < _height; ih++)
                MoveRow(source + (nint)ih * _width, plane + (nint)(ih + _ph) * _phaseWidth, toImage: false);
        }
    }

    /// <summary>
    /// An input row between the image and its staged, padded row: into the staged row, or (<paramref name="toImage"/>)
    /// back out. At strides above 1, phase r of the staged row holds padded columns r, r + stride, ...
    /// </summary>
    private void MoveRow(T* imageRow, T* stagedRow, bool toImage)
    {
        if (_sw == 1)
        {
            if (toImage) new ReadOnlySpan<T>(stagedRow + _pw, _width).CopyTo(new Span<T>(imageRow, _width));
            else new ReadOnlySpan<T>(imageRow, _width).CopyTo(new Span<T>(stagedRow + _pw, _width));
            return;
        }
        for (int r = 0; r < _sw; r++)
        {
            // Phase r's first inside column: input column r - pw, moved up by whole strides into the image.
            T* phase = stagedRow + (nint)r * _phaseStride;
            int first = r - _pw, index = 0;
            if (first < 0)
            {
                index = (-first + _sw - 1) / _sw;
                first += index * _sw;
            }
            for (int iw = first; iw < _width; iw += _sw, index++)
                if (toImage) imageRow[iw] = phase[index];
                else phase[index] = imageRow[iw];
        }
    }

    /// <summary>Lanes [0, count) one, the rest zero: PositiveOr(mask, v, 0) keeps v's first count lanes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TVector Mask<TSimd, TVector>(int count, T* scratch)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        for (int l = 0; l < TSimd.Count; l++) scratch[l] = l < count ? T.One : T.Zero;
        return TSimd.Load(ref *scratch, 0);
    }

    /// <summary>y[n, o] for the group's filters: Σ over taps (c, i, j) of w[o, c, i, j] · the staged channel c shifted by the tap, plus the bias.</summary>
    private void ForwardGroup<TSimd, TVector>(int n, int group, T* planes)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        Stage(n, group, planes);
        int taps = _groupChannels * _kh * _kw;
        fixed (int* offsets = _tapOffsets)
            for (int o = group * _groupOut; o < (group + 1) * _groupOut; o++)
            {
                T* y = _out + ((nint)n * _outChannels + o) * _outHeight * _outWidth;
                Plane<TSimd, TVector>(planes, _sh * _phaseWidth, offsets, taps, _weights + (nint)o * taps, _bias is null ? T.Zero : _bias[o],
                    y, _outHeight, _outWidth);
                _moments?.Set(n, o, new ReadOnlySpan<T>(y, _outHeight * _outWidth));
            }
    }

    /// <summary>
    /// An output plane (rows x columns, row r reading the staged planes from r·rowStep on) as Σ over the taps of
    /// w[k] · the staged values at offsets[k], plus the bias; the last, part-filled vector of a row loads into the
    /// rows' slack and keeps only its valid lanes.
    /// </summary>
    private static void Plane<TSimd, TVector>(T* planes, int rowStep, int* offsets, int taps, T* w, T bias, T* y, int rows, int columns)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        int lanes = TSimd.Count, whole = columns / lanes * lanes;
        T* tail = stackalloc T[lanes];
        for (int r = 0; r < rows; r++)
        {
            T* top = planes + (nint)r * rowStep, row = y + (nint)r * columns;
            int c = 0;
            for (; c + 4 * lanes <= whole; c += 4 * lanes) OutputsBy4<TSimd, TVector>(top + c, offsets, taps, w, bias, row + c);
            for (; c < whole; c += lanes) Outputs<TSimd, TVector>(top + c, offsets, taps, w, bias, row + c);
            if (c == columns) continue;
            Outputs<TSimd, TVector>(top + c, offsets, taps, w, bias, tail);
            new ReadOnlySpan<T>(tail, columns - c).CopyTo(new Span<T>(row + c, columns - c));
        }
    }

    /// <summary>One vector of outputs: the taps in (c, i, j) order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Outputs<TSimd, TVector>(T* window, int* offsets, int taps, T* w, T bias, T* target)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        TVector sum = TSimd.Zero;
        for (int k = 0; k < taps; k++) sum = TSimd.MultiplyAdd(TSimd.Broadcast(w[k]), TSimd.Load(ref *(window + offsets[k]), 0), sum);
        TSimd.Store(TSimd.Add(sum, TSimd.Broadcast(bias)), ref Unsafe.AsRef<T>(target), 0);
    }

    /// <summary>Four vectors of outputs side by side: four independent chains over the taps.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void OutputsBy4<TSimd, TVector>(T* window, int* offsets, int taps, T* w, T bias, T* target)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        int lanes = TSimd.Count;
        TVector s0 = TSimd.Zero, s1 = TSimd.Zero, s2 = TSimd.Zero, s3 = TSimd.Zero;
        for (int k = 0; k < taps; k++)
        {
            TVector weight = TSimd.Broadcast(w[k]);
            ref T tap = ref *(window + offsets[k]);
            s0 = TSimd.MultiplyAdd(weight, TSimd.Load(ref tap, 0), s0);
            s1 = TSimd.MultiplyAdd(weight, TSimd.Load(ref tap, lanes), s1);
            s2 = TSimd.MultiplyAdd(weight, TSimd.Load(ref tap, 2 * lanes), s2);
            s3 = TSimd.MultiplyAdd(weight, TSimd.Load(ref tap, 3 * lanes), s3);
        }
        TVector b = TSimd.Broadcast(bias);
        ref T to = ref Unsafe.AsRef<T>(target);
        TSimd.Store(TSimd.Add(s0, b), ref to, 0);
        TSimd.Store(TSimd.Add(s1, b), ref to, lanes);
        TSimd.Store(TSimd.Add(s2, b), ref to, 2 * lanes);
        TSimd.Store(TSimd.Add(s3, b), ref to, 3 * lanes);
    }

    /// <summary>
    /// dx[n] for the group's channels at stride 1: the group's dy planes staged zero-padded by the window less the
    /// padding, then dx[c] = Σ over (o, i, j) of w[o, c, i, j] · the staged dy[o] shifted by the turned-around tap.
    /// </summary>
    private void GatheredInputGradient<TSimd, TVector>(int n, int group, T* planes, T* weights)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        int top = (_kh - 1) * _dh - _ph, left = (_kw - 1) * _dw - _pw, taps = _kh * _kw, outPlane = _outHeight * _outWidth;
        new Span<T>(planes, _groupOut * _dyPlane).Clear();
        for (int o = 0; o < _groupOut; o++)
        {
            T* dy = _y + ((nint)n * _outChannels + group * _groupOut + o) * outPlane, plane = planes + (nint)o * _dyPlane;
            for (int oh = 0; oh < _outHeight; oh++)
                new ReadOnlySpan<T>(dy + (nint)oh * _outWidth, _outWidth).CopyTo(new Span<T>(plane + (nint)(oh + top) * _dyWidth + left, _outWidth));
        }
        fixed (int* offsets = _dxOffsets)
            for (int c = 0; c < _groupChannels; c++)
            {
                // The channel's weights in the taps' (o, i, j) order.
                for (int o = 0; o < _groupOut; o++)
                    new ReadOnlySpan<T>(_weights + ((nint)(group * _groupOut + o) * _groupChannels + c) * taps, taps).CopyTo(new Span<T>(weights + o * taps, taps));
                T* dx = _out + ((nint)n * _channels + group * _groupChannels + c) * _height * _width;
                Plane<TSimd, TVector>(planes, _dyWidth, offsets, _groupOut * taps, weights, T.Zero, dx, _height, _width);
            }
    }

    /// <summary>
    /// dx[n] for the group's channels: each of the group's filters adds w[o, c, i, j] · dy[o] onto channel c's padded
    /// planes at every tap (filters, taps, rows in order; a part-filled last vector changes only its valid lanes), and
    /// the planes' insides are dx.
    /// </summary>
    private void InputGradientGroup<TSimd, TVector>(int n, int group, T* planes)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        new Span<T>(planes, _groupChannels * _paddedPlane).Clear();
        int lanes = TSimd.Count, outPlane = _outHeight * _outWidth, whole = _outWidth / lanes * lanes, taps = _groupChannels * _kh * _kw;
        T* scratch = stackalloc T[2 * lanes];
        TVector mask = Mask<TSimd, TVector>(_outWidth - whole, scratch);
        fixed (int* offsets = _tapOffsets)
            for (int o = group * _groupOut; o < (group + 1) * _groupOut; o++)
            {
                T* dy = _y + ((nint)n * _outChannels + o) * outPlane, w = _weights + (nint)o * taps;
                for (int k = 0; k < taps; k++)
                {
                    TVector weight = TSimd.Broadcast(w[k]);
                    for (int oh = 0; oh < _outHeight; oh++)
                    {
                        T* target = planes + offsets[k] + (nint)oh * _sh * _phaseWidth, source = dy + (nint)oh * _outWidth;
                        int ow = 0;
                        for (; ow < whole; ow += lanes)
                        {
                            ref T t = ref *(target + ow);
                            TSimd.Store(TSimd.MultiplyAdd(weight, TSimd.Load(ref *(source + ow), 0), TSimd.Load(ref t, 0)), ref t, 0);
                        }
                        if (ow == _outWidth) continue;
                        new ReadOnlySpan<T>(source + ow, _outWidth - ow).CopyTo(new Span<T>(scratch + lanes, lanes));
                        ref T last = ref *(target + ow);
                        TVector before = TSimd.Load(ref last, 0);
                        TSimd.Store(TSimd.PositiveOr(mask, TSimd.MultiplyAdd(weight, TSimd.Load(ref *(scratch + lanes), 0), before), before), ref last, 0);
                    }
                }
            }
        for (int c = 0; c < _groupChannels; c++)
        {
            T* dx = _out + ((nint)n * _channels + group * _groupChannels + c) * _height * _width, plane = planes + (nint)c * _paddedPlane;
            for (int ih = 0; ih < _height; ih++) MoveRow(dx + (nint)ih * _width, plane + (nint)(ih + _ph) * _phaseWidth, toImage: true);
        }
    }

    /// <summary>
    /// dW[o, c, i, j] += Σ over images, rows and columns of dy[n, o] · the staged channel c shifted by the tap, for the
    /// group's filters; db[o] += Σ dy. Each (filter, tap) sums a vector of lanes over the whole batch (a part-filled last
    /// vector with its other lanes zeroed), then the lanes, in image order.
    /// </summary>
    private void WeightGradientGroup<TSimd, TVector>(int group, T* planes, T* scratch)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        int lanes = TSimd.Count, taps = _groupChannels * _kh * _kw, outPlane = _outHeight * _outWidth;
        int whole = _outWidth / lanes * lanes;
        TVector* sums = (TVector*)scratch;
        for (int k = 0; k < _groupOut * (taps + 1); k++) sums[k] = TSimd.Zero;
        T* staged = stackalloc T[2 * lanes];
        TVector mask = Mask<TSimd, TVector>(_outWidth - whole, staged), zero = TSimd.Zero;
        fixed (int* offsets = _tapOffsets)
            for (int n = 0; n < _batch; n++)
            {
                Stage(n, group, planes);
                for (int f = 0; f < _groupOut; f++)
                {
                    T* dy = _y + ((nint)n * _outChannels + group * _groupOut + f) * outPlane;
                    TVector* filter = sums + (nint)f * (taps + 1);   // taps' sums, then db's
                    for (int oh = 0; oh < _outHeight; oh++)
                    {
                        T* source = dy + (nint)oh * _outWidth, top = planes + (nint)oh * _sh * _phaseWidth;
                        for (int ow = 0; ow < _outWidth; ow += lanes)
                        {
                            bool part = ow == whole;
                            TVector d;
                            if (part)
                            {
                                new Span<T>(staged + lanes, lanes).Clear();
                                new ReadOnlySpan<T>(source + ow, _outWidth - ow).CopyTo(new Span<T>(staged + lanes, lanes));
                                d = TSimd.Load(ref *(staged + lanes), 0);
                            }
                            else d = TSimd.Load(ref *(source + ow), 0);
                            filter[taps] = TSimd.Add(filter[taps], d);
                            for (int k = 0; k < taps; k++)
                            {
                                TVector v = TSimd.Load(ref *(top + offsets[k] + ow), 0);
                                if (part) v = TSimd.PositiveOr(mask, v, zero);
                                filter[k] = TSimd.MultiplyAdd(d, v, filter[k]);
                            }
                        }
                    }
                }
            }
        for (int f = 0; f < _groupOut; f++)
        {
            int o = group * _groupOut + f;
            TVector* filter = sums + (nint)f * (taps + 1);
            T* dw = _out + (nint)o * taps;
            for (int k = 0; k < taps; k++) dw[k] += TSimd.Sum(filter[k]);
            if (_dBias is not null) _dBias[o] += TSimd.Sum(filter[taps]);
        }
    }
}
