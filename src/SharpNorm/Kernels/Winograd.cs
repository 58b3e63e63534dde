using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using SharpNorm.Threading;

namespace SharpNorm.Kernels;

/// <summary>
/// 3x3 stride-1 convolution by Winograd's F(4x4, 3x3) (Lavin and Gray, 2016): each 6x6 input tile d becomes
/// V = Bᵀ d B, each filter g becomes U = G g Gᵀ, and the 4x4 output tile is Y = Aᵀ (Σ_c U ⊙ V) A. Over channels the
/// element-wise products are 36 independent matrix products, M[ξ] (O x tiles) = U[ξ] (O x C) · V[ξ] (C x tiles),
/// run by <see cref="Gemm{T}"/>: 36 multiplies per 16 outputs where the direct sum takes 144.
/// </summary>
/// <remarks>
/// Tiles of all images are numbered in one sequence (image, tile row, tile column) and cut into fixed ranges; a range is
/// one chunk, transformed, multiplied and transformed back by one thread, so results do not depend on the thread count.
/// The transforms run a vector of tiles at a time (the tiles' values staged side by side). An instance owns its
/// buffers: after the first call at a given size no call allocates. Not thread-safe (one caller at a time).
/// </remarks>
// Every stack buffer here is written before it is read: no zeroing on entry.
[SkipLocalsInit]
internal sealed unsafe class Winograd<T> : IChunkJob where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>Input tile side (α = m + r - 1), output tile side and positions of the transformed tile.</summary>
    private const int Alpha = 6, Tile = 4, Positions = Alpha * Alpha;
    /// <summary>Tiles are handled in blocks of this many (a multiple of every vector width's lane count).</summary>
    private const int Block = 16;

    private readonly ChunkRunner _runner = ChunkRunner.Shared;
    private T[] _u = [];                // U[ξ][o][c], the transformed filters, each ξ padded to whole blocks
    private int _uStride;
    private T[] _packedU = [];          // each U[ξ] packed for the products
    private Worker[] _workers = [];
    private (int Channels, int OutChannels) _filtersFor;
    private T[] _partGradients = [];    // per part of the tiles: dU[ξ][o][c], summed over the part's chunks
    private bool _weightGradient;
    private int _parts, _chunks;

    /// <summary>Parts of the tiles whose weight gradients are summed separately (then in order), whatever the thread count.</summary>
    private const int GradientParts = 4;

    // The running call.
    private T* _x, _y, _bias;
    private int _channels, _outChannels, _height, _width, _outHeight, _outWidth, _padTop, _padLeft, _tilesHigh, _tilesWide;
    private long _tiles;
    private int _tilesPerChunk, _bits;

    /// <summary>Widest vector the transforms and products may use (tests lower it).</summary>
    public int MaxVectorBits { get; set; } = 512;

    /// <summary>
    /// y (N, O, OH, OW) = the 3x3 stride-1 convolution of x (N, C, H, W) with filters (O, C, 3, 3), zero padding
    /// (padTop, padLeft) and as much at the bottom and right as OH and OW take, plus bias (O) where given. With
    /// <paramref name="filtersUnchanged"/> the caller promises the filters are those of the last call (inference), whose
    /// transform is used again. <paramref name="moments"/>, where given, receives each output channel's shifted sums per
    /// chunk of tiles, summed from the output transform's registers.
    /// </summary>
    public void Forward(ReadOnlySpan<T> x, int batch, int channels, int height, int width, ReadOnlySpan<T> filters, int outChannels,
        ReadOnlySpan<T> bias, int padTop, int padLeft, int outHeight, int outWidth, Span<T> y, int threads, bool filtersUnchanged = false,
        ChannelMoments<T>? moments = null)
    {
        bool transformed = filtersUnchanged && _filtersFor == (channels, outChannels);
        Setup(batch, channels, height, width, outChannels, padTop, padLeft, outHeight, outWidth);
        _moments = moments;
        moments?.Reset(_chunks, outChannels);
        threads = Math.Max(1, threads);
        if (!transformed) TransformFilters(filters);
        _filtersFor = (channels, outChannels);
        EnsureWorkers(Math.Min(threads, Math.Max(_chunks, Positions)));
        _weightGradient = false;
        fixed (T* px = x)
        fixed (T* py = y)
        fixed (T* pb = bias)
        {
            _x = px;
            _y = py;
            _bias = bias.IsEmpty ? null : pb;
            try
            {
                if (_chunks >= threads)
                {
                    _phase = Phase.Chunks;
                    _runner.Run(this, _chunks, threads);
                }
                else
                {
                    // Fewer ranges of tiles than threads (a small map at batch 1): each range's three steps are split
                    // among the threads instead, by channel, by position and by output channel, in the buffers of worker 0.
                    for (_splitChunk = 0; _splitChunk < _chunks; _splitChunk++)
                    {
                        _phase = Phase.SplitInput;
                        _runner.Run(this, Math.Min(_channels, SplitParts), threads);
                        _phase = Phase.SplitProducts;
                        _runner.Run(this, Positions, threads);
                        _phase = Phase.SplitOutput;
                        _runner.Run(this, Math.Min(_outChannels, SplitParts), threads);
                    }
                }
            }
            finally
            {
                _x = _y = _bias = null;
                _moments = null;
            }
        }
    }

    /// <summary>What a chunk of the running job is: a whole range of tiles, or one step's share of a range.</summary>
    private enum Phase { Chunks, SplitInput, SplitProducts, SplitOutput }

    /// <summary>Channel groups of a split range's transforms (enough for the threads to share evenly).</summary>
    private const int SplitParts = 32;

    private Phase _phase;
    private int _splitChunk;

    private ChannelMoments<T>? _moments;

    /// <summary>
    /// dW (O, C, 3, 3) += the weight gradient of <see cref="Forward"/>'s convolution for input x and output gradient
    /// dy (N, O, OH, OW): dU[ξ] = Σ_tiles (A dY Aᵀ)[ξ] · V[ξ]ᵀ, 36 products over the tiles, then dW = Gᵀ dU G per filter.
    /// The tiles' chunks are cut into fixed parts summed separately and then in part order.
    /// </summary>
    public void WeightGradient(ReadOnlySpan<T> x, int batch, int channels, int height, int width, ReadOnlySpan<T> dy, int outChannels,
        int padTop, int padLeft, int outHeight, int outWidth, Span<T> dWeights, int threads)
    {
        Setup(batch, channels, height, width, outChannels, padTop, padLeft, outHeight, outWidth);
        _parts = Math.Min(GradientParts, _chunks);
        int filters = outChannels * channels, size = Positions * filters;
        Grow(ref _partGradients, _parts * size);
        EnsureWorkers(Math.Clamp(threads, 1, _parts));
        _weightGradient = true;
        fixed (T* px = x)
        fixed (T* pdy = dy)
        {
            _x = px;
            _y = pdy;
            _runner.Run(this, _parts, Math.Clamp(threads, 1, _parts));
            _x = _y = null;
        }
        // The parts in order, then Gᵀ dU G onto each filter's gradient.
        Span<T> total = _partGradients.AsSpan(0, size);
        for (int part = 1; part < _parts; part++)
            System.Numerics.Tensors.TensorPrimitives.Add(total, _partGradients.AsSpan(part * size, size), total);
        fixed (T* du = total)
        fixed (T* dw = dWeights)
            for (int f = 0; f < filters; f += Block)
                switch (_bits)
                {
                    case 512: FilterGradientBlock<Simd512<T>, Vector512<T>>(du, filters, f, Math.Min(Block, filters - f), dw); break;
                    case 256: FilterGradientBlock<Simd256<T>, Vector256<T>>(du, filters, f, Math.Min(Block, filters - f), dw); break;
                    case 128: FilterGradientBlock<Simd128<T>, Vector128<T>>(du, filters, f, Math.Min(Block, filters - f), dw); break;
                    default: FilterGradientBlock<SimdScalar<T>, T>(du, filters, f, Math.Min(Block, filters - f), dw); break;
                }
    }

    /// <summary>One part of the tiles: for each of its chunks V = Bᵀ d B and dM = A dY Aᵀ, then dU[ξ] += dM[ξ] · V[ξ]ᵀ.</summary>
    private void GradientPart<TSimd, TVector>(int part, Worker w)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        int c = _channels, o = _outChannels, size = Positions * o * c;
        T* du = (T*)Unsafe.AsPointer(ref _partGradients[part * size]);
        int firstChunk = (int)((long)_chunks * part / _parts), endChunk = (int)((long)_chunks * (part + 1) / _parts);
        fixed (T* v = w.Transformed)
        fixed (T* m = w.Products)
        {
            TilePlace* places = stackalloc TilePlace[Block];
            for (int chunk = firstChunk; chunk < endChunk; chunk++)
            {
                long first = (long)chunk * _tilesPerChunk;
                int count = (int)Math.Min(_tilesPerChunk, _tiles - first), columns = (count + Block - 1) / Block * Block;
                for (int block = 0; block < columns; block += Block)
                {
                    int tiles = Math.Min(Block, count - block);
                    Locate(first + block, tiles, places);
                    for (int channel = 0; channel < c; channel++)
                        InputTiles<TSimd, TVector>(places, tiles, channel, v + (nint)channel * columns + block, c * columns);
                    for (int channel = 0; channel < o; channel++)
                        GradientTiles<TSimd, TVector>(places, tiles, channel, m + (nint)channel * columns + block, o * columns);
                }
                for (int xi = 0; xi < Positions; xi++)
                    w.Gemm.Multiply(false, true, o, c, columns, new ReadOnlySpan<T>(m + (nint)xi * o * columns, o * columns), columns,
                        new ReadOnlySpan<T>(v + (nint)xi * c * columns, c * columns), columns, new Span<T>(du + (nint)xi * o * c, o * c), c,
                        accumulate: chunk > firstChunk);
            }
        }
    }

    /// <summary>
    /// Output channel <paramref name="channel"/> of tiles [first, first + count): each tile's 4x4 output gradient
    /// (zero outside the output) staged as s[i][j][tile], then dM = A s Aᵀ into m[ξ * stride + tile].
    /// </summary>
    private void GradientTiles<TSimd, TVector>(TilePlace* places, int count, int channel, T* m, int stride)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        T* staged = stackalloc T[Tile * Tile * Block];
        if (count < Block) new Span<T>(staged, Tile * Tile * Block).Clear();
        for (int t = 0; t < count; t++)
        {
            T* source = OutputTile(places[t], channel, out int rows, out int columns);
            T* target = staged + t;
            for (int i = 0; i < Tile; i++, source += _outWidth, target += Tile * Block)
                for (int j = 0; j < Tile; j++) target[j * Block] = i < rows && j < columns ? source[j] : T.Zero;
        }
        TVector* e = stackalloc TVector[Alpha * Tile];
        for (int lane = 0; lane < Block; lane += TSimd.Count)
        {
            // A s: each column of the 4x4 gradient.
            for (int j = 0; j < Tile; j++)
            {
                T* source = staged + j * Block + lane;
                TransformGradient<TSimd, TVector>(TSimd.Load(ref *source, 0), TSimd.Load(ref *(source + Tile * Block), 0),
                    TSimd.Load(ref *(source + 2 * Tile * Block), 0), TSimd.Load(ref *(source + 3 * Tile * Block), 0),
                    out e[j], out e[Tile + j], out e[2 * Tile + j], out e[3 * Tile + j], out e[4 * Tile + j], out e[5 * Tile + j]);
            }
            // (A s) Aᵀ: each row.
            for (int i = 0; i < Alpha; i++)
            {
                TVector* r = e + i * Tile;
                TransformGradient<TSimd, TVector>(r[0], r[1], r[2], r[3], out TVector m0, out TVector m1, out TVector m2, out TVector m3,
                    out TVector m4, out TVector m5);
                T* target = m + (nint)(i * Alpha) * stride + lane;
                TSimd.Store(m0, ref *target, 0);
                TSimd.Store(m1, ref *(target + stride), 0);
                TSimd.Store(m2, ref *(target + 2 * (nint)stride), 0);
                TSimd.Store(m3, ref *(target + 3 * (nint)stride), 0);
                TSimd.Store(m4, ref *(target + 4 * (nint)stride), 0);
                TSimd.Store(m5, ref *(target + 5 * (nint)stride), 0);
            }
        }
    }

    /// <summary>A applied to one line of four output gradients (the transpose of <see cref="TransformOutput"/>), giving six.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void TransformGradient<TSimd, TVector>(TVector s0, TVector s1, TVector s2, TVector s3,
        out TVector m0, out TVector m1, out TVector m2, out TVector m3, out TVector m4, out TVector m5)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        TVector two = TSimd.Broadcast(T.CreateTruncating(2)), four = TSimd.Broadcast(T.CreateTruncating(4)), eight = TSimd.Broadcast(T.CreateTruncating(8));
        TVector p = TSimd.Add(s0, s2), q = TSimd.Add(s1, s3);
        TVector pp = TSimd.MultiplyAdd(four, s2, s0), qq = TSimd.MultiplyAdd(eight, s3, TSimd.MultiplyAdd(two, s1, TSimd.Zero));
        m0 = s0;
        m1 = TSimd.Add(p, q);
        m2 = TSimd.Subtract(p, q);
        m3 = TSimd.Add(pp, qq);
        m4 = TSimd.Subtract(pp, qq);
        m5 = s3;
    }

    /// <summary>Filters [first, first + count): dW[f] += Gᵀ dU[f] G, dU read as du[ξ * filters + f], a vector of filters at a time.</summary>
    private static void FilterGradientBlock<TSimd, TVector>(T* du, int filters, int first, int count, T* dw)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        T* staged = stackalloc T[9 * Block];
        T* padded = stackalloc T[Positions * Block];
        T* source = du + first;
        nint stride = filters;
        if (count < Block)
        {
            // The last filters: copied out so that whole vectors can be read.
            new Span<T>(padded, Positions * Block).Clear();
            for (int xi = 0; xi < Positions; xi++)
                new ReadOnlySpan<T>(du + xi * (nint)filters + first, count).CopyTo(new Span<T>(padded + xi * Block, count));
            source = padded;
            stride = Block;
        }
        TVector* e = stackalloc TVector[3 * Alpha];
        for (int lane = 0; lane < Block; lane += TSimd.Count)
        {
            // Gᵀ dU: each column of the 6x6.
            for (int j = 0; j < Alpha; j++)
            {
                T* column = source + j * stride + lane;
                TransformFilterGradient<TSimd, TVector>(TSimd.Load(ref *column, 0), TSimd.Load(ref *(column + Alpha * stride), 0),
                    TSimd.Load(ref *(column + 2 * Alpha * stride), 0), TSimd.Load(ref *(column + 3 * Alpha * stride), 0),
                    TSimd.Load(ref *(column + 4 * Alpha * stride), 0), TSimd.Load(ref *(column + 5 * Alpha * stride), 0),
                    out e[j], out e[Alpha + j], out e[2 * Alpha + j]);
            }
            // (Gᵀ dU) G: each row.
            for (int i = 0; i < 3; i++)
            {
                TVector* r = e + i * Alpha;
                TransformFilterGradient<TSimd, TVector>(r[0], r[1], r[2], r[3], r[4], r[5], out TVector g0, out TVector g1, out TVector g2);
                TSimd.Store(g0, ref staged[(i * 3) * Block + lane], 0);
                TSimd.Store(g1, ref staged[(i * 3 + 1) * Block + lane], 0);
                TSimd.Store(g2, ref staged[(i * 3 + 2) * Block + lane], 0);
            }
        }
        for (int f = 0; f < count; f++)
            for (int k = 0; k < 9; k++) dw[(nint)(first + f) * 9 + k] += staged[k * Block + f];
    }

    /// <summary>Gᵀ applied to one line of six values, giving three (the transpose of <see cref="TransformFilter"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void TransformFilterGradient<TSimd, TVector>(TVector u0, TVector u1, TVector u2, TVector u3, TVector u4, TVector u5,
        out TVector g0, out TVector g1, out TVector g2)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        TVector quarter = TSimd.Broadcast(T.CreateTruncating(0.25)), sixth = TSimd.Broadcast(T.One / T.CreateTruncating(6));
        TVector twelfth = TSimd.Broadcast(T.One / T.CreateTruncating(12)), twentyFourth = TSimd.Broadcast(T.One / T.CreateTruncating(24));
        TVector sum12 = TSimd.Add(u1, u2), difference12 = TSimd.Subtract(u2, u1), sum34 = TSimd.Add(u3, u4), difference34 = TSimd.Subtract(u3, u4);
        g0 = TSimd.MultiplyAdd(quarter, u0, TSimd.MultiplyAdd(twentyFourth, sum34, TSimd.Subtract(TSimd.Zero, TSimd.MultiplyAdd(sixth, sum12, TSimd.Zero))));
        g1 = TSimd.MultiplyAdd(sixth, difference12, TSimd.MultiplyAdd(twelfth, difference34, TSimd.Zero));
        g2 = TSimd.Add(TSimd.MultiplyAdd(sixth, TSimd.Subtract(sum34, sum12), TSimd.Zero), u5);
    }

    /// <summary>The call's sizes, vector width, tiles and chunks.</summary>
    private void Setup(int batch, int channels, int height, int width, int outChannels, int padTop, int padLeft, int outHeight, int outWidth)
    {
        _bits = SimdWidth.Bits<T>(MaxVectorBits);
        (_channels, _outChannels, _height, _width, _outHeight, _outWidth, _padTop, _padLeft) =
            (channels, outChannels, height, width, outHeight, outWidth, padTop, padLeft);
        _tilesHigh = (outHeight + Tile - 1) / Tile;
        _tilesWide = (outWidth + Tile - 1) / Tile;
        _tiles = (long)batch * _tilesHigh * _tilesWide;
        _tilesPerChunk = TilesPerChunk(channels, outChannels);
        _chunks = checked((int)((_tiles + _tilesPerChunk - 1) / _tilesPerChunk));
    }

    /// <summary>
    /// Tiles per chunk: 256 (columns enough for the products' panels) unless the transformed inputs and outputs of so many
    /// (36 x (C + O) values each) would pass 8 MB; a multiple of the block, at least one block. Depends on the shape alone.
    /// </summary>
    private static int TilesPerChunk(int channels, int outChannels)
    {
        long perTile = (long)Positions * (channels + outChannels) * sizeof(T);
        return (int)Math.Clamp((8L << 20) / perTile / Block * Block, Block, 64);
    }

    void IChunkJob.Execute(int chunk, int worker)
    {
        if (_weightGradient)
        {
            switch (_bits)
            {
                case 512: GradientPart<Simd512<T>, Vector512<T>>(chunk, _workers[worker]); break;
                case 256: GradientPart<Simd256<T>, Vector256<T>>(chunk, _workers[worker]); break;
                case 128: GradientPart<Simd128<T>, Vector128<T>>(chunk, _workers[worker]); break;
                default: GradientPart<SimdScalar<T>, T>(chunk, _workers[worker]); break;
            }
            return;
        }
        switch (_bits)
        {
            case 512: Forward<Simd512<T>, Vector512<T>>(chunk, _workers[worker]); break;
            case 256: Forward<Simd256<T>, Vector256<T>>(chunk, _workers[worker]); break;
            case 128: Forward<Simd128<T>, Vector128<T>>(chunk, _workers[worker]); break;
            default: Forward<SimdScalar<T>, T>(chunk, _workers[worker]); break;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Forward<TSimd, TVector>(int chunk, Worker w)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        if (_phase == Phase.Chunks)
        {
            Chunk<TSimd, TVector>(chunk, w);
            return;
        }
        long first = (long)_splitChunk * _tilesPerChunk;
        int count = (int)Math.Min(_tilesPerChunk, _tiles - first), columns = (count + Block - 1) / Block * Block;
        int c = _channels, o = _outChannels;
        Worker shared = _workers[0];
        fixed (T* v = shared.Transformed)
        fixed (T* m = shared.Products)
        {
            if (_phase == Phase.SplitProducts)
            {
                int packed = Gemm<T>.PackedLength(o, c);
                w.Gemm.MultiplyPacked(_packedU.AsSpan(chunk * packed, packed), false, o, columns, c,
                    new ReadOnlySpan<T>(v + (nint)chunk * c * columns, c * columns), columns, new Span<T>(m + (nint)chunk * o * columns, o * columns), columns,
                    accumulate: false);
                return;
            }
            bool input = _phase == Phase.SplitInput;
            int channels = input ? c : o, parts = Math.Min(channels, SplitParts);
            int from = (int)((long)channels * chunk / parts), to = (int)((long)channels * (chunk + 1) / parts);
            TilePlace* places = stackalloc TilePlace[Block];
            for (int block = 0; block < columns; block += Block)
            {
                int tiles = Math.Min(Block, count - block);
                Locate(first + block, tiles, places);
                for (int channel = from; channel < to; channel++)
                    if (input) InputTiles<TSimd, TVector>(places, tiles, channel, v + (nint)channel * columns + block, c * columns);
                    else OutputTiles<TSimd, TVector>(places, tiles, channel, m + (nint)channel * columns + block, o * columns, _splitChunk, block == 0);
            }
        }
    }

    /// <summary>Tiles [chunk * tilesPerChunk, ...): V = Bᵀ d B per channel, M[ξ] = U[ξ] · V[ξ], y = Aᵀ M A (+ bias) per output channel.</summary>
    private void Chunk<TSimd, TVector>(int chunk, Worker w)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        long first = (long)chunk * _tilesPerChunk;
        int count = (int)Math.Min(_tilesPerChunk, _tiles - first), columns = (count + Block - 1) / Block * Block;
        int c = _channels, o = _outChannels;
        fixed (T* v = w.Transformed)
        fixed (T* m = w.Products)
        {
            TilePlace* places = stackalloc TilePlace[Block];
            for (int block = 0; block < columns; block += Block)
            {
                int tiles = Math.Min(Block, count - block);
                Locate(first + block, tiles, places);
                for (int channel = 0; channel < c; channel++)
                    InputTiles<TSimd, TVector>(places, tiles, channel, v + (nint)channel * columns + block, c * columns);
            }
            int packed = Gemm<T>.PackedLength(o, c);
            for (int xi = 0; xi < Positions; xi++)
                w.Gemm.MultiplyPacked(_packedU.AsSpan(xi * packed, packed), false, o, columns, c,
                    new ReadOnlySpan<T>(v + (nint)xi * c * columns, c * columns), columns, new Span<T>(m + (nint)xi * o * columns, o * columns), columns,
                    accumulate: false);
            for (int block = 0; block < columns; block += Block)
            {
                int tiles = Math.Min(Block, count - block);
                Locate(first + block, tiles, places);
                for (int channel = 0; channel < o; channel++)
                    OutputTiles<TSimd, TVector>(places, tiles, channel, m + (nint)channel * columns + block, o * columns, chunk, block == 0);
            }
        }
    }

    /// <summary>
    /// Channel <paramref name="channel"/> of tiles [first, first + count) (count ≤ Block; the rest of the block is
    /// zeros): each tile's 6x6 input, zero outside the image, staged as d[i][j][tile], then V = Bᵀ d B into
    /// v[ξ * stride + tile].
    /// </summary>
    private void InputTiles<TSimd, TVector>(TilePlace* places, int count, int channel, T* v, int stride)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        T* d = stackalloc T[Positions * Block];
        if (count < Block) new Span<T>(d, Positions * Block).Clear();
        int plane = _height * _width;
        for (int t = 0; t < count; t++)
        {
            TilePlace place = places[t];
            T* source = _x + place.Image * _channels * plane + (nint)channel * plane + (nint)place.Top * _width + place.Left;
            if (place.Inside)
            {
                T* row = d + t;
                for (int i = 0; i < Alpha; i++, source += _width, row += Alpha * Block)
                {
                    row[0] = source[0];
                    row[Block] = source[1];
                    row[2 * Block] = source[2];
                    row[3 * Block] = source[3];
                    row[4 * Block] = source[4];
                    row[5 * Block] = source[5];
                }
                continue;
            }
            for (int i = 0; i < Alpha; i++, source += _width)
            {
                bool rowInside = (uint)(place.Top + i) < (uint)_height;
                for (int j = 0; j < Alpha; j++)
                    d[(i * Alpha + j) * Block + t] = rowInside && (uint)(place.Left + j) < (uint)_width ? source[j] : T.Zero;
            }
        }
        TVector* e = stackalloc TVector[Positions];
        for (int lane = 0; lane < Block; lane += TSimd.Count)
        {
            // Bᵀ d: each column of the tile.
            for (int j = 0; j < Alpha; j++)
            {
                TransformInput<TSimd, TVector>(
                    Load<TSimd, TVector>(d, 0, j, lane), Load<TSimd, TVector>(d, 1, j, lane), Load<TSimd, TVector>(d, 2, j, lane),
                    Load<TSimd, TVector>(d, 3, j, lane), Load<TSimd, TVector>(d, 4, j, lane), Load<TSimd, TVector>(d, 5, j, lane),
                    out e[j], out e[Alpha + j], out e[2 * Alpha + j], out e[3 * Alpha + j], out e[4 * Alpha + j], out e[5 * Alpha + j]);
            }
            // (Bᵀ d) B: each row.
            for (int i = 0; i < Alpha; i++)
            {
                TVector* r = e + i * Alpha;
                TransformInput<TSimd, TVector>(r[0], r[1], r[2], r[3], r[4], r[5], out TVector v0, out TVector v1, out TVector v2, out TVector v3,
                    out TVector v4, out TVector v5);
                T* target = v + (nint)(i * Alpha) * stride + lane;
                TSimd.Store(v0, ref *target, 0);
                TSimd.Store(v1, ref *(target + stride), 0);
                TSimd.Store(v2, ref *(target + 2 * (nint)stride), 0);
                TSimd.Store(v3, ref *(target + 3 * (nint)stride), 0);
                TSimd.Store(v4, ref *(target + 4 * (nint)stride), 0);
                TSimd.Store(v5, ref *(target + 5 * (nint)stride), 0);
            }
        }
    }

    /// <summary>
    /// Output channel <paramref name="channel"/> of tiles [first, first + count): Y = Aᵀ M A from m[ξ * stride + tile],
    /// plus the bias, staged as y[i][j][tile] and written where the tile lies inside the output; with moments asked for,
    /// the values written are added to the chunk's shifted sums of the channel.
    /// </summary>
    private void OutputTiles<TSimd, TVector>(TilePlace* places, int count, int channel, T* m, int stride, int chunk, bool firstBlock)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        T* staged = stackalloc T[Tile * Tile * Block];
        TVector bias = _bias is null ? TSimd.Zero : TSimd.Broadcast(_bias[channel]);
        TVector* e = stackalloc TVector[Tile * Alpha];
        for (int lane = 0; lane < Block; lane += TSimd.Count)
        {
            // Aᵀ M: each column of the 6x6 products.
            for (int j = 0; j < Alpha; j++)
            {
                T* source = m + (nint)j * stride + lane;
                TransformOutput<TSimd, TVector>(
                    TSimd.Load(ref *source, 0), TSimd.Load(ref *(source + Alpha * (nint)stride), 0), TSimd.Load(ref *(source + 2 * Alpha * (nint)stride), 0),
                    TSimd.Load(ref *(source + 3 * Alpha * (nint)stride), 0), TSimd.Load(ref *(source + 4 * Alpha * (nint)stride), 0),
                    TSimd.Load(ref *(source + 5 * Alpha * (nint)stride), 0),
                    out e[j], out e[Alpha + j], out e[2 * Alpha + j], out e[3 * Alpha + j]);
            }
            // (Aᵀ M) A: each row.
            for (int i = 0; i < Tile; i++)
            {
                TVector* r = e + i * Alpha;
                TransformOutput<TSimd, TVector>(r[0], r[1], r[2], r[3], r[4], r[5], out TVector y0, out TVector y1, out TVector y2, out TVector y3);
                T* target = staged + i * Tile * Block + lane;
                TSimd.Store(TSimd.Add(y0, bias), ref *target, 0);
                TSimd.Store(TSimd.Add(y1, bias), ref *(target + Block), 0);
                TSimd.Store(TSimd.Add(y2, bias), ref *(target + 2 * Block), 0);
                TSimd.Store(TSimd.Add(y3, bias), ref *(target + 3 * Block), 0);
            }
        }
        for (int t = 0; t < count; t++)
        {
            T* target = OutputTile(places[t], channel, out int rows, out int columns);
            T* source = staged + t;
            if (columns == Tile)
            {
                for (int i = 0; i < rows; i++, target += _outWidth, source += Tile * Block)
                {
                    target[0] = source[0];
                    target[1] = source[Block];
                    target[2] = source[2 * Block];
                    target[3] = source[3 * Block];
                }
                continue;
            }
            for (int i = 0; i < rows; i++, target += _outWidth, source += Tile * Block)
                for (int j = 0; j < columns; j++) target[j] = source[j * Block];
        }
        if (_moments is not null) AddMoments<TSimd, TVector>(places, count, channel, staged, chunk, firstBlock);
    }

    /// <summary>
    /// Adds the staged outputs of a block of tiles to the chunk's partial of the channel, shifted by the chunk's first
    /// output. Positions outside the map (edge tiles, the block's empty lanes) are set to the shift first: they add zero.
    /// </summary>
    private void AddMoments<TSimd, TVector>(TilePlace* places, int count, int channel, T* staged, int chunk, bool firstBlock)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        ref ChannelMoments<T>.Partial partial = ref _moments!.At(chunk, channel);
        if (firstBlock) partial.Shift = staged[0];
        T shift = partial.Shift;
        int values = 0;
        for (int t = 0; t < Block; t++)
        {
            int rows = 0, columns = 0;
            if (t < count) OutputTile(places[t], channel, out rows, out columns);
            values += rows * columns;
            if (rows == Tile && columns == Tile) continue;
            for (int i = 0; i < Tile; i++)
                for (int j = 0; j < Tile; j++)
                    if (i >= rows || j >= columns) staged[(i * Tile + j) * Block + t] = shift;
        }
        TVector c = TSimd.Broadcast(shift), s1 = TSimd.Zero, s2 = TSimd.Zero;
        for (int k = 0; k < Tile * Tile * Block; k += TSimd.Count)
        {
            TVector d = TSimd.Subtract(TSimd.Load(ref *(staged + k), 0), c);
            s1 = TSimd.Add(s1, d);
            s2 = TSimd.MultiplyAdd(d, d, s2);
        }
        partial.Sum1 += double.CreateTruncating(TSimd.Sum(s1));
        partial.Sum2 += double.CreateTruncating(TSimd.Sum(s2));
        partial.Count += values;
    }

    /// <summary>Where a tile lies: its image, and the top-left of its 6x6 input window (padding counted); whether that window is inside the image.</summary>
    private struct TilePlace
    {
        public nint Image;
        public int Top, Left;
        public bool Inside;
    }

    /// <summary>The top-left of a tile's 4x4 outputs (or output gradients) in channel <paramref name="channel"/>, and how many of its rows and columns lie inside the output.</summary>
    private T* OutputTile(TilePlace place, int channel, out int rows, out int columns)
    {
        int row = place.Top + _padTop, column = place.Left + _padLeft, outPlane = _outHeight * _outWidth;
        rows = Math.Min(Tile, _outHeight - row);
        columns = Math.Min(Tile, _outWidth - column);
        return _y + (place.Image * _outChannels + channel) * outPlane + (nint)row * _outWidth + column;
    }

    /// <summary>The places of tiles [first, first + count).</summary>
    private void Locate(long first, int count, TilePlace* places)
    {
        int perImage = _tilesHigh * _tilesWide;
        for (int t = 0; t < count; t++)
        {
            long tile = first + t;
            int image = (int)(tile / perImage), within = (int)(tile % perImage);
            int top = within / _tilesWide * Tile - _padTop, left = within % _tilesWide * Tile - _padLeft;
            places[t] = new TilePlace
            {
                Image = image, Top = top, Left = left,
                Inside = top >= 0 && left >= 0 && top + Alpha <= _height && left + Alpha <= _width,
            };
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TVector Load<TSimd, TVector>(T* staged, int i, int j, int lane)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged => TSimd.Load(ref *(staged + (i * Alpha + j) * Block + lane), 0);

    /// <summary>Bᵀ applied to one line of six values (F(4x4, 3x3) with points 0, ±1, ±2).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void TransformInput<TSimd, TVector>(TVector d0, TVector d1, TVector d2, TVector d3, TVector d4, TVector d5,
        out TVector r0, out TVector r1, out TVector r2, out TVector r3, out TVector r4, out TVector r5)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        TVector four = TSimd.Broadcast(T.CreateTruncating(4)), minusFour = TSimd.Broadcast(T.CreateTruncating(-4));
        TVector minusFive = TSimd.Broadcast(T.CreateTruncating(-5));
        TVector t0 = TSimd.MultiplyAdd(minusFour, d2, d4), t1 = TSimd.MultiplyAdd(minusFour, d1, d3);
        TVector t2 = TSimd.Subtract(d4, d2), t3 = TSimd.Subtract(d3, d1);
        t3 = TSimd.Add(t3, t3);
        r0 = TSimd.MultiplyAdd(four, d0, TSimd.MultiplyAdd(minusFive, d2, d4));
        r1 = TSimd.Add(t0, t1);
        r2 = TSimd.Subtract(t0, t1);
        r3 = TSimd.Add(t2, t3);
        r4 = TSimd.Subtract(t2, t3);
        r5 = TSimd.MultiplyAdd(four, d1, TSimd.MultiplyAdd(minusFive, d3, d5));
    }

    /// <summary>Aᵀ applied to one line of six products, giving four outputs.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void TransformOutput<TSimd, TVector>(TVector m0, TVector m1, TVector m2, TVector m3, TVector m4, TVector m5,
        out TVector s0, out TVector s1, out TVector s2, out TVector s3)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        TVector a = TSimd.Add(m1, m2), b = TSimd.Subtract(m1, m2), c = TSimd.Add(m3, m4), d = TSimd.Subtract(m3, m4);
        s0 = TSimd.Add(TSimd.Add(m0, a), c);
        s1 = TSimd.MultiplyAdd(TSimd.Broadcast(T.CreateTruncating(2)), d, b);
        s2 = TSimd.MultiplyAdd(TSimd.Broadcast(T.CreateTruncating(4)), c, a);
        s3 = TSimd.Add(TSimd.MultiplyAdd(TSimd.Broadcast(T.CreateTruncating(8)), d, b), m5);
    }

    /// <summary>U[ξ][o][c] = (G g Gᵀ)[ξ] for every filter g = filters[o][c], a vector of filters at a time; then each U[ξ] packed.</summary>
    private void TransformFilters(ReadOnlySpan<T> filters)
    {
        int count = _outChannels * _channels;
        _uStride = (count + Block - 1) / Block * Block;
        Grow(ref _u, Positions * _uStride);
        fixed (T* g = filters)
        fixed (T* u = _u)
            for (int f = 0; f < count; f += Block)
                switch (_bits)
                {
                    case 512: FilterBlock<Simd512<T>, Vector512<T>>(g, f, Math.Min(Block, count - f), u); break;
                    case 256: FilterBlock<Simd256<T>, Vector256<T>>(g, f, Math.Min(Block, count - f), u); break;
                    case 128: FilterBlock<Simd128<T>, Vector128<T>>(g, f, Math.Min(Block, count - f), u); break;
                    default: FilterBlock<SimdScalar<T>, T>(g, f, Math.Min(Block, count - f), u); break;
                }
        int packed = Gemm<T>.PackedLength(_outChannels, _channels);
        Grow(ref _packedU, Positions * packed);
        for (int xi = 0; xi < Positions; xi++)
            Gemm<T>.Pack(false, _outChannels, _channels, _u.AsSpan(xi * _uStride, count), _channels, _packedU.AsSpan(xi * packed, packed));
    }

    /// <summary>Filters [first, first + count): taps staged as g[k][filter], then G g Gᵀ into u[ξ * stride + filter].</summary>
    private void FilterBlock<TSimd, TVector>(T* filters, int first, int count, T* u)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        T* g = stackalloc T[9 * Block];
        new Span<T>(g, 9 * Block).Clear();
        for (int f = 0; f < count; f++)
            for (int k = 0; k < 9; k++) g[k * Block + f] = filters[(nint)(first + f) * 9 + k];
        TVector* e = stackalloc TVector[Alpha * 3];
        for (int lane = 0; lane < Block; lane += TSimd.Count)
        {
            // G g: each column of the filter.
            for (int j = 0; j < 3; j++)
                TransformFilter<TSimd, TVector>(TSimd.Load(ref g[j * Block + lane], 0), TSimd.Load(ref g[(3 + j) * Block + lane], 0),
                    TSimd.Load(ref g[(6 + j) * Block + lane], 0), e + j, 3);
            // (G g) Gᵀ: each row.
            for (int i = 0; i < Alpha; i++)
                TransformFilter<TSimd, TVector>(e[i * 3], e[i * 3 + 1], e[i * 3 + 2], null, 0, u + (nint)i * Alpha * _uStride + first + lane, _uStride);
        }
    }

    /// <summary>
    /// G applied to three taps: the six results into target[k * step] (vectors), or stored to memory at
    /// store[k * stride] where <paramref name="target"/> is null.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void TransformFilter<TSimd, TVector>(TVector g0, TVector g1, TVector g2, TVector* target, int step, T* store = null, int stride = 0)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        TVector quarter = TSimd.Broadcast(T.CreateTruncating(0.25)), sixth = TSimd.Broadcast(T.One / T.CreateTruncating(6));
        TVector twelfth = TSimd.Broadcast(T.One / T.CreateTruncating(12)), twentyFourth = TSimd.Broadcast(T.One / T.CreateTruncating(24));
        TVector outer = TSimd.Add(g0, g2);
        TVector u0 = TSimd.MultiplyAdd(quarter, g0, TSimd.Zero);
        TVector u1 = TSimd.Subtract(TSimd.Zero, TSimd.MultiplyAdd(sixth, TSimd.Add(outer, g1), TSimd.Zero));
        TVector u2 = TSimd.Subtract(TSimd.Zero, TSimd.MultiplyAdd(sixth, TSimd.Subtract(outer, g1), TSimd.Zero));
        TVector even = TSimd.MultiplyAdd(twentyFourth, g0, TSimd.MultiplyAdd(sixth, g2, TSimd.Zero)), odd = TSimd.MultiplyAdd(twelfth, g1, TSimd.Zero);
        TVector u3 = TSimd.Add(even, odd), u4 = TSimd.Subtract(even, odd);
        if (target is not null)
        {
            target[0] = u0; target[step] = u1; target[2 * step] = u2; target[3 * step] = u3; target[4 * step] = u4; target[5 * step] = g2;
            return;
        }
        TSimd.Store(u0, ref *store, 0);
        TSimd.Store(u1, ref *(store + stride), 0);
        TSimd.Store(u2, ref *(store + 2 * (nint)stride), 0);
        TSimd.Store(u3, ref *(store + 3 * (nint)stride), 0);
        TSimd.Store(u4, ref *(store + 4 * (nint)stride), 0);
        TSimd.Store(g2, ref *(store + 5 * (nint)stride), 0);
    }

    private void EnsureWorkers(int count)
    {
        if (_workers.Length < count)
        {
            var workers = new Worker[count];
            _workers.CopyTo(workers, 0);
            for (int i = _workers.Length; i < count; i++) workers[i] = new Worker();
            _workers = workers;
        }
        int columns = (_tilesPerChunk + Block - 1) / Block * Block;
        foreach (Worker w in _workers)
        {
            w.Gemm.MaxVectorBits = MaxVectorBits;
            w.Gemm.MaxDegreeOfParallelism = 1;
            Grow(ref w.Transformed, Positions * _channels * columns);
            Grow(ref w.Products, Positions * _outChannels * columns);
        }
    }

    private static void Grow(ref T[] buffer, int length)
    {
        if (buffer.Length < length) buffer = GC.AllocateUninitializedArray<T>(length, pinned: true);
    }

    private sealed class Worker
    {
        public readonly Gemm<T> Gemm = new();
        public T[] Transformed = [];
        public T[] Products = [];
    }
}
