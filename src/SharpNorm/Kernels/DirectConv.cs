using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using SharpNorm.Threading;

namespace SharpNorm.Kernels;

/// <summary>
/// Direct stride-1 convolution for inputs of few channels (a network's 1- or 3-channel first layer), where im2col's
/// product has a depth of only C·kh·kw (9 or 27) and spends its time packing. Each band of output rows stages its
/// input rows zero-padded, then eight output channels by two vectors of columns stay in registers over the
/// C·kh·kw taps, one broadcast weight and one fused multiply-add per tap and vector. Each output is the sum over the
/// taps in (c, i, j) order, as im2col's product sums it; bands depend on the shape alone, and each writes its own
/// outputs, so results do not depend on the thread count.
/// </summary>
[SkipLocalsInit]
internal sealed unsafe class DirectConv<T> : IChunkJob where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>Output channels per register block.</summary>
    private const int Block = 8;
    /// <summary>Outputs per band of rows, about: the band's staged input and outputs stay in L2.</summary>
    private const int BandOutputs = 4096;

    private readonly ChunkRunner _runner = ChunkRunner.Shared;
    private T[] _packed = [];            // weights as [block][tap][8], zeros past the last channel
    private int[] _offsets = [];         // per tap: its offset in the staged rows
    private T[][] _stages = [];          // per worker: one band's input rows, zero-padded

    private T* _x, _y, _bias;
    private ChannelMoments<T>? _moments;
    private int _channels, _height, _width, _outChannels, _kh, _kw, _padTop, _padLeft, _outHeight, _outWidth;
    private int _rowsPerBand, _bands, _stageWidth, _bits;

    /// <summary>Widest vector the kernel may use (tests lower it).</summary>
    public int MaxVectorBits { get; set; } = 512;

    /// <summary>Whether a layer goes by this kernel on Auto: groups 1, stride 1, dilation 1, at most 4 input channels, kernels up to 7x7.</summary>
    public static bool Fits(int channels, int kh, int kw, int strideH, int strideW, int dilationH, int dilationW, int groups) =>
        groups == 1 && channels <= 4 && strideH == 1 && strideW == 1 && dilationH == 1 && dilationW == 1 && kh <= 7 && kw <= 7;

    /// <summary>Rows of output per band: the shape alone decides (a fused BatchNorm's moments are summed per band).</summary>
    public static int RowsPerBand(int outHeight, int outWidth) => Math.Clamp(BandOutputs / outWidth, 1, outHeight);

    public static int BandsPerImage(int outHeight, int outWidth) => (outHeight + RowsPerBand(outHeight, outWidth) - 1) / RowsPerBand(outHeight, outWidth);

    /// <summary>
    /// y (N, O, OH, OW) = x (N, C, H, W) convolved with weights (O, C, kh, kw) at stride 1, zero padding (padTop,
    /// padLeft) and as much at the bottom and right as OH and OW take, plus bias where given; each output channel's
    /// moments per band into <paramref name="moments"/> where given.
    /// </summary>
    public void Forward(ReadOnlySpan<T> x, int batch, int channels, int height, int width, ReadOnlySpan<T> weights, int outChannels, int kh, int kw,
        ReadOnlySpan<T> bias, int padTop, int padLeft, int outHeight, int outWidth, Span<T> y, int threads, ChannelMoments<T>? moments)
    {
        _bits = SimdWidth.Bits<T>(MaxVectorBits);
        int lanes = _bits == 0 ? 1 : _bits / 8 / sizeof(T);
        (_channels, _height, _width, _outChannels, _kh, _kw) = (channels, height, width, outChannels, kh, kw);
        (_padTop, _padLeft, _outHeight, _outWidth) = (padTop, padLeft, outHeight, outWidth);
        _rowsPerBand = RowsPerBand(outHeight, outWidth);
        _bands = BandsPerImage(outHeight, outWidth);
        // Two vectors of columns at a time, the last pair reading past the map into the staged zeros.
        _stageWidth = (outWidth + 2 * lanes - 1) / (2 * lanes) * (2 * lanes) + kw - 1;
        PackWeights(weights);
        int stageRows = _rowsPerBand + kh - 1, workers = Math.Max(1, threads);
        if (_stages.Length < workers) Array.Resize(ref _stages, workers);
        for (int w = 0; w < workers; w++)
            if (_stages[w] is null || _stages[w].Length < channels * stageRows * _stageWidth) _stages[w] = new T[channels * stageRows * _stageWidth];
        int taps = channels * kh * kw;
        if (_offsets.Length < taps) _offsets = new int[taps];
        for (int c = 0, t = 0; c < channels; c++)
            for (int i = 0; i < kh; i++)
                for (int j = 0; j < kw; j++) _offsets[t++] = (c * stageRows + i) * _stageWidth + j;
        _moments = moments;
        moments?.Reset(batch * _bands, outChannels);
        fixed (T* px = x)
        fixed (T* py = y)
        fixed (T* pb = bias)
        {
            _x = px;
            _y = py;
            _bias = bias.IsEmpty ? null : pb;
            try
            {
                _runner.Run(this, batch * _bands, threads);
            }
            finally
            {
                _x = _y = _bias = null;
                _moments = null;
            }
        }
    }

    private void PackWeights(ReadOnlySpan<T> weights)
    {
        int taps = _channels * _kh * _kw, blocks = (_outChannels + Block - 1) / Block;
        if (_packed.Length < blocks * taps * Block) _packed = new T[blocks * taps * Block];
        for (int b = 0; b < blocks; b++)
            for (int t = 0; t < taps; t++)
                for (int o = 0; o < Block; o++)
                {
                    int channel = b * Block + o;
                    _packed[(b * taps + t) * Block + o] = channel < _outChannels ? weights[channel * taps + t] : T.Zero;
                }
    }

    void IChunkJob.Execute(int chunk, int worker)
    {
        switch (_bits)
        {
            case 512: Band<Simd512<T>, Vector512<T>>(chunk, worker); break;
            case 256: Band<Simd256<T>, Vector256<T>>(chunk, worker); break;
            case 128: Band<Simd128<T>, Vector128<T>>(chunk, worker); break;
            default: Band<SimdScalar<T>, T>(chunk, worker); break;
        }
    }

    /// <summary>Output rows [first, first + rows) of one image: stage their input rows, then every channel block over every pair of column vectors.</summary>
    private void Band<TSimd, TVector>(int chunk, int worker)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        int image = chunk / _bands, band = chunk % _bands;
        int first = band * _rowsPerBand, rows = Math.Min(_rowsPerBand, _outHeight - first), stageRows = _rowsPerBand + _kh - 1;
        int plane = _outHeight * _outWidth, taps = _channels * _kh * _kw, n = TSimd.Count;
        fixed (T* stage = _stages[worker])
        fixed (T* packed = _packed)
        fixed (int* offsets = _offsets)
        {
            // Staged row r of channel c is input row first + r - padTop, shifted right by padLeft, zeros around it.
            for (int c = 0; c < _channels; c++)
                for (int r = 0; r < rows + _kh - 1; r++)
                {
                    var target = new Span<T>(stage + (c * stageRows + r) * _stageWidth, _stageWidth);
                    int source = first + r - _padTop;
                    target.Clear();
                    if ((uint)source >= (uint)_height) continue;
                    int from = Math.Max(0, -_padLeft), to = Math.Min(_width, _stageWidth - _padLeft);
                    if (to > from)
                        new ReadOnlySpan<T>(_x + ((nint)(image * _channels + c) * _height + source) * _width + from, to - from)
                            .CopyTo(target.Slice(from + _padLeft));
                }

            T* output = stackalloc T[Block * 2 * n];
            for (int block = 0; block * Block < _outChannels; block++)
            {
                T* w = packed + block * taps * Block;
                int channels = Math.Min(Block, _outChannels - block * Block);
                for (int r = 0; r < rows; r++)
                    for (int column = 0; column < _outWidth; column += 2 * n)
                    {
                        Tile<TSimd, TVector>(stage + r * _stageWidth + column, w, offsets, taps, output, n);
                        int count = Math.Min(2 * n, _outWidth - column);
                        for (int o = 0; o < channels; o++)
                        {
                            int channel = block * Block + o;
                            T* y = _y + (nint)(image * _outChannels + channel) * plane + (first + r) * _outWidth + column;
                            T* sums = output + o * 2 * n;
                            if (count == 2 * n)
                            {
                                TVector first0 = TSimd.Load(ref *sums, 0), second0 = TSimd.Load(ref *sums, n);
                                if (_bias is not null)
                                {
                                    TVector b = TSimd.Broadcast(_bias[channel]);
                                    (first0, second0) = (TSimd.Add(first0, b), TSimd.Add(second0, b));
                                }
                                TSimd.Store(first0, ref *y, 0);
                                TSimd.Store(second0, ref *y, n);
                                continue;
                            }
                            for (int k = 0; k < count; k++) y[k] = _bias is null ? sums[k] : sums[k] + _bias[channel];
                        }
                    }
            }
        }
        if (_moments is null) return;
        for (int o = 0; o < _outChannels; o++)
            _moments.Set(chunk, o, new ReadOnlySpan<T>(_y + (nint)(image * _outChannels + o) * plane + first * _outWidth, rows * _outWidth));
    }

    /// <summary>out[o][0..2n) = Σ_taps w[tap][o] · stage[offset(tap) + 0..2n), eight channels by two vectors in registers.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tile<TSimd, TVector>(T* stage, T* w, int* offsets, int taps, T* output, int n)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        TVector a0 = TSimd.Zero, a1 = TSimd.Zero, a2 = TSimd.Zero, a3 = TSimd.Zero, a4 = TSimd.Zero, a5 = TSimd.Zero, a6 = TSimd.Zero, a7 = TSimd.Zero;
        TVector b0 = TSimd.Zero, b1 = TSimd.Zero, b2 = TSimd.Zero, b3 = TSimd.Zero, b4 = TSimd.Zero, b5 = TSimd.Zero, b6 = TSimd.Zero, b7 = TSimd.Zero;
        for (int t = 0; t < taps; t++, w += Block)
        {
            T* s = stage + offsets[t];
            TVector x0 = TSimd.Load(ref *s, 0), x1 = TSimd.Load(ref *(s + n), 0);
            TVector v = TSimd.Broadcast(w[0]); a0 = TSimd.MultiplyAdd(v, x0, a0); b0 = TSimd.MultiplyAdd(v, x1, b0);
            v = TSimd.Broadcast(w[1]); a1 = TSimd.MultiplyAdd(v, x0, a1); b1 = TSimd.MultiplyAdd(v, x1, b1);
            v = TSimd.Broadcast(w[2]); a2 = TSimd.MultiplyAdd(v, x0, a2); b2 = TSimd.MultiplyAdd(v, x1, b2);
            v = TSimd.Broadcast(w[3]); a3 = TSimd.MultiplyAdd(v, x0, a3); b3 = TSimd.MultiplyAdd(v, x1, b3);
            v = TSimd.Broadcast(w[4]); a4 = TSimd.MultiplyAdd(v, x0, a4); b4 = TSimd.MultiplyAdd(v, x1, b4);
            v = TSimd.Broadcast(w[5]); a5 = TSimd.MultiplyAdd(v, x0, a5); b5 = TSimd.MultiplyAdd(v, x1, b5);
            v = TSimd.Broadcast(w[6]); a6 = TSimd.MultiplyAdd(v, x0, a6); b6 = TSimd.MultiplyAdd(v, x1, b6);
            v = TSimd.Broadcast(w[7]); a7 = TSimd.MultiplyAdd(v, x0, a7); b7 = TSimd.MultiplyAdd(v, x1, b7);
        }
        int row = 2 * n;
        TSimd.Store(a0, ref *output, 0); TSimd.Store(b0, ref *output, n);
        TSimd.Store(a1, ref *output, row); TSimd.Store(b1, ref *output, row + n);
        TSimd.Store(a2, ref *output, 2 * row); TSimd.Store(b2, ref *output, 2 * row + n);
        TSimd.Store(a3, ref *output, 3 * row); TSimd.Store(b3, ref *output, 3 * row + n);
        TSimd.Store(a4, ref *output, 4 * row); TSimd.Store(b4, ref *output, 4 * row + n);
        TSimd.Store(a5, ref *output, 5 * row); TSimd.Store(b5, ref *output, 5 * row + n);
        TSimd.Store(a6, ref *output, 6 * row); TSimd.Store(b6, ref *output, 6 * row + n);
        TSimd.Store(a7, ref *output, 7 * row); TSimd.Store(b7, ref *output, 7 * row + n);
    }
}
