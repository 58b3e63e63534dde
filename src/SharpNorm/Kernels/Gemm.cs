using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using SharpNorm.Threading;

namespace SharpNorm.Kernels;

/// <summary>
/// Matrix product C = op(A) · op(B) (+ C), row-major with leading dimensions, the engine of Conv2d and Linear. Written
/// the BLIS way: A and B are packed into panels (transposes are handled there), and a register-blocked micro-kernel of
/// <see cref="MR"/> rows by two vectors of columns runs over them with fused multiply-adds. Work is cut into tiles of C
/// that depend only on the sizes; each element of C is summed by one thread in a fixed order, so results are
/// bit-identical for any thread count. An instance owns its packing buffers: after the first call at a given size no
/// call allocates. Not thread-safe (one caller at a time).
/// </summary>
public sealed unsafe class Gemm<T> : IChunkJob where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>Rows of the micro-kernel.</summary>
    internal const int MR = 8;
    /// <summary>Depth of a packed block: an MR x KC sliver of A and a KC x NR sliver of B stay in L1/L2.</summary>
    private const int KC = 256;
    /// <summary>Rows of C per tile (a multiple of MR).</summary>
    private const int MC = 12 * MR;
    /// <summary>Micro-panels of columns per tile.</summary>
    private const int PanelsPerTile = 8;
    /// <summary>Below this many multiply-adds a product runs on the calling thread alone.</summary>
    private const long MinParallelWork = 1L << 18;

    private readonly ChunkRunner _runner = ChunkRunner.Shared;
    private T[] _packedA = [];
    private (nint Source, bool TransA, int M, int K, int Lda) _packedKey;
    // Packed op(B): per worker one KC x NR micro-panel (one row of tiles), or one block of columns over all of k
    // shared by every tile (several rows of tiles, which would otherwise each pack the same B).
    private T[] _packedB = [];
    private int _packedBLength;

    // The running product.
    private T* _a, _b, _c;
    private int _m, _n, _k, _ldb, _ldc, _nr, _tilesN, _tilesM, _panelsM;
    private bool _transB, _accumulate;
    private int _bits;
    // The shared block of B: its first panel and panel count; whether the running job packs it or multiplies by it.
    private bool _shared, _packing;
    private int _blockFirst, _blockPanels;

    /// <summary>Most bytes of op(B) packed as one shared block (it stays in the L3 while every row of tiles reads it).</summary>
    internal int SharedBlockBytes { get; set; } = 4 << 20;

    /// <summary>Widest vector the kernel may use, in bits (512, 256, 128; 0 for scalar code).</summary>
    public int MaxVectorBits { get; set; } = 512;

    /// <summary>Most threads a product may use; -1 for all cores.</summary>
    public int MaxDegreeOfParallelism { get; set; } = -1;

    private int Threads => MaxDegreeOfParallelism == -1 ? Environment.ProcessorCount : MaxDegreeOfParallelism;

    /// <summary>
    /// C[m x n] = op(A)[m x k] · op(B)[k x n], added to C when <paramref name="accumulate"/>. op(A) is A (m x k, row stride
    /// lda) or, with <paramref name="transA"/>, the transpose of A stored k x m; likewise B.
    /// </summary>
    public void Multiply(bool transA, bool transB, int m, int n, int k, ReadOnlySpan<T> a, int lda, ReadOnlySpan<T> b, int ldb,
        Span<T> c, int ldc, bool accumulate) => Multiply(transA, transB, m, n, k, a, lda, b, ldb, c, ldc, accumulate, reusePackedA: false);

    /// <summary>
    /// As <see cref="Multiply(bool, bool, int, int, int, ReadOnlySpan{T}, int, ReadOnlySpan{T}, int, Span{T}, int, bool)"/>;
    /// with <paramref name="reusePackedA"/> the caller promises that A is the same memory, unchanged, as in the last
    /// call with the same transA, m, k and lda, so its packed copy is used again (a convolution's weights, image after image).
    /// </summary>
    public void Multiply(bool transA, bool transB, int m, int n, int k, ReadOnlySpan<T> a, int lda, ReadOnlySpan<T> b, int ldb,
        Span<T> c, int ldc, bool accumulate, bool reusePackedA)
    {
        Validate(transA, transB, m, n, k, a.Length, lda, b.Length, ldb, c.Length, ldc);
        if (m == 0 || n == 0) return;
        if (k == 0)
        {
            if (!accumulate)
                for (int i = 0; i < m; i++) c.Slice(i * ldc, n).Clear();
            return;
        }

        int panelsM = (m + MR - 1) / MR, blocksK = (k + KC - 1) / KC;
        T[] previous = _packedA;
        Grow(ref _packedA, panelsM * MR * blocksK * KC);
        if (!ReferenceEquals(previous, _packedA)) _packedKey = default;
        fixed (T* pa = a)
        fixed (T* pb = b)
        fixed (T* pc = c)
        fixed (T* packedA = _packedA)
        {
            var key = (Source: (nint)pa, transA, m, k, lda);
            if (!reusePackedA || key != _packedKey) PackA(transA, m, k, pa, lda, packedA);
            _packedKey = key;
            Run(packedA, transB, m, n, k, pb, ldb, pc, ldc, accumulate);
        }
    }

    /// <summary>Elements of op(A) (m x k) packed by <see cref="Pack"/>.</summary>
    internal static int PackedLength(int m, int k) => (m + MR - 1) / MR * MR * k;

    /// <summary>op(A) into the panels the product reads, once for many products (<see cref="MultiplyPacked"/>).</summary>
    internal static void Pack(bool transA, int m, int k, ReadOnlySpan<T> a, int lda, Span<T> packed)
    {
        if (m < 0 || k < 0) throw new ArgumentOutOfRangeException(nameof(m), $"Matrix sizes must be >= 0; got m={m}, k={k}.");
        Require("A", transA ? k : m, transA ? m : k, a.Length, lda);
        if (packed.Length < PackedLength(m, k))
            throw new ArgumentException($"A packed takes {PackedLength(m, k)} elements; got {packed.Length}.", nameof(packed));
        if (m == 0 || k == 0) return;
        fixed (T* pa = a)
        fixed (T* target = packed)
            PackA(transA, m, k, pa, lda, target);
    }

    /// <summary>C[m x n] (+)= A · op(B) with A as <see cref="Pack"/> left it.</summary>
    internal void MultiplyPacked(ReadOnlySpan<T> packedA, bool transB, int m, int n, int k, ReadOnlySpan<T> b, int ldb, Span<T> c, int ldc, bool accumulate)
    {
        Validate(false, transB, m, n, k, PackedLength(m, k), k, b.Length, ldb, c.Length, ldc);
        if (packedA.Length < PackedLength(m, k))
            throw new ArgumentException($"A packed takes {PackedLength(m, k)} elements; got {packedA.Length}.", nameof(packedA));
        if (m == 0 || n == 0) return;
        if (k == 0)
        {
            if (!accumulate)
                for (int i = 0; i < m; i++) c.Slice(i * ldc, n).Clear();
            return;
        }
        fixed (T* pa = packedA)
        fixed (T* pb = b)
        fixed (T* pc = c)
            Run(pa, transB, m, n, k, pb, ldb, pc, ldc, accumulate);
    }

    /// <summary>The product's tiles over packed A, on the helper threads.</summary>
    private void Run(T* packedA, bool transB, int m, int n, int k, T* b, int ldb, T* c, int ldc, bool accumulate)
    {
        _bits = SimdWidth.Bits<T>(MaxVectorBits);
        _nr = 2 * (_bits == 0 ? 1 : _bits / 8 / sizeof(T));
        _a = packedA;
        _b = b;
        _c = c;
        (_m, _n, _k, _ldb, _ldc, _transB, _accumulate) = (m, n, k, ldb, ldc, transB, accumulate);
        _panelsM = (m + MR - 1) / MR;
        int panelsN = (n + _nr - 1) / _nr;
        int threads = (long)m * n * k < MinParallelWork ? 1 : Math.Max(1, Threads);
        if (_panelsM <= MC / MR)
        {
            // One row of tiles: each micro-panel of B is packed once, by the tile that uses it, into L1-sized scratch.
            _shared = false;
            _packedBLength = KC * _nr;
            Grow(ref _packedB, threads * _packedBLength);
            (_blockFirst, _blockPanels, _tilesM) = (0, panelsN, 1);
            _tilesN = Math.Min(panelsN, Math.Max((panelsN + PanelsPerTile - 1) / PanelsPerTile, threads));
            _runner.Run(this, _tilesN, threads);
            _a = _b = _c = null;
            return;
        }

        // Several rows of tiles: B is packed once per block of columns (all of k, in parallel), then every tile reads it.
        _shared = true;
        int blockPanels = (int)Math.Clamp(SharedBlockBytes / ((long)k * _nr * sizeof(T)), 1, panelsN);
        Grow(ref _packedB, blockPanels * _nr * k);
        for (int first = 0; first < panelsN; first += blockPanels)
        {
            (_blockFirst, _blockPanels) = (first, Math.Min(blockPanels, panelsN - first));
            _packing = true;
            _runner.Run(this, _blockPanels, threads);
            _packing = false;
            _tilesN = (_blockPanels + PanelsPerTile - 1) / PanelsPerTile;
            _tilesM = (_panelsM + MC / MR - 1) / (MC / MR);
            // Rows of tiles split evenly, and as many tiles as keep every thread busy to the end (the rows' split
            // changes no sum: each element is still one micro-kernel's over all of k).
            while (threads > 1 && _tilesM < _panelsM && (_tilesM * _tilesN < 4 * threads || _tilesM * _tilesN % threads != 0 && _tilesM * _tilesN < 8 * threads)) _tilesM++;
            _runner.Run(this, _tilesM * _tilesN, threads);
        }
        _a = _b = _c = null;
    }

    /// <summary>A, as op(A), into MR-row panels per KC block: block-major, then panel, then k, then the MR rows (zero padded).</summary>
    private static void PackA(bool transA, int m, int k, T* a, int lda, T* packed)
    {
        int panelsM = (m + MR - 1) / MR;
        for (int p0 = 0; p0 < k; p0 += KC)
        {
            int kc = Math.Min(KC, k - p0);
            T* block = packed + (nint)p0 * panelsM * MR;
            for (int panel = 0; panel < panelsM; panel++)
            {
                T* dst = block + (nint)panel * kc * MR;
                int i0 = panel * MR, rows = Math.Min(MR, m - i0);
                if (transA)
                {
                    // op(A) = Aᵀ: the panel's MR values of one k are contiguous in A.
                    for (int p = 0; p < kc; p++)
                    {
                        T* src = a + (nint)(p0 + p) * lda + i0;
                        for (int r = 0; r < rows; r++) dst[p * MR + r] = src[r];
                        for (int r = rows; r < MR; r++) dst[p * MR + r] = T.Zero;
                    }
                    continue;
                }
                if (rows < MR) new Span<T>(dst, kc * MR).Clear();
                int done = 0;
                // Whole panels: 8x8 blocks transposed in registers.
                if (rows == MR && typeof(T) == typeof(float) && Avx.IsSupported)
                    for (; done + 8 <= kc; done += 8)
                        Transpose8x8((float*)(a + (nint)i0 * lda + p0 + done), lda, (float*)(dst + done * MR), MR);
                // Row by row: each row of A is read in order, and written every MR elements.
                for (int r = 0; r < rows; r++)
                {
                    T* src = a + (nint)(i0 + r) * lda + p0;
                    for (int p = done; p < kc; p++) dst[p * MR + r] = src[p];
                }
            }
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

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Chunk<TSimd, TVector>(int chunk, int worker)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        if (_packing) PackSharedPanel<TSimd, TVector>(chunk);
        else Tile<TSimd, TVector>(chunk, worker);
    }

    /// <summary>Micro-panel <paramref name="q"/> of the shared block, over all of k: per KC block, kc x NR.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void PackSharedPanel<TSimd, TVector>(int q)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        fixed (T* packed = _packedB)
        {
            int j = (_blockFirst + q) * _nr, cols = Math.Min(_nr, _n - j);
            for (int p0 = 0; p0 < _k; p0 += KC)
            {
                int kc = Math.Min(KC, _k - p0);
                PackB<TSimd, TVector>(p0, kc, j, cols, _nr, packed + (nint)p0 * _blockPanels * _nr + (nint)q * kc * _nr);
            }
        }
    }

    /// <summary>
    /// One tile of C: a run of MR-row panels by a run of micro-panels of columns, over all of k in KC blocks. Tiles
    /// split rows and columns evenly; every tile's elements are each one micro-kernel's sum over k in block order.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void Tile<TSimd, TVector>(int tile, int worker)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int w = TSimd.Count, nr = 2 * w;
        int rowTile = tile / _tilesN, colTile = tile % _tilesN;
        int i0 = _panelsM * rowTile / _tilesM * MR, iEnd = Math.Min(_m, _panelsM * (rowTile + 1) / _tilesM * MR);
        int q0 = _blockPanels * colTile / _tilesN, qEnd = _blockPanels * (colTile + 1) / _tilesN;
        T* scratch = _shared ? null : (T*)Unsafe.AsPointer(ref _packedB[worker * _packedBLength]);
        T* shared = _shared ? (T*)Unsafe.AsPointer(ref _packedB[0]) : null;
        T* edge = stackalloc T[MR * nr];
        for (int p0 = 0; p0 < _k; p0 += KC)
        {
            int kc = Math.Min(KC, _k - p0);
            bool add = _accumulate || p0 > 0;
            T* blockA = _a + (nint)p0 * _panelsM * MR;
            for (int q = q0; q < qEnd; q++)
            {
                int j = (_blockFirst + q) * nr, cols = Math.Min(nr, _n - j);
                T* panelB;
                if (_shared) panelB = shared + (nint)p0 * _blockPanels * nr + (nint)q * kc * nr;
                else PackB<TSimd, TVector>(p0, kc, j, cols, nr, panelB = scratch);
                bool half = cols <= w;
                for (int i = i0; i < iEnd; i += MR)
                {
                    int rows = Math.Min(MR, _m - i);
                    T* panelA = blockA + (nint)(i / MR) * kc * MR, c = _c + (nint)i * _ldc + j;
                    if (rows == MR && cols == (half ? w : nr))
                    {
                        if (half) HalfKernel<TSimd, TVector>(kc, panelA, panelB, c, _ldc, add);
                        else MicroKernel<TSimd, TVector>(kc, panelA, panelB, c, _ldc, add);
                        continue;
                    }
                    // An edge tile: the whole block into scratch (row stride nr), then its valid part into C.
                    if (half) HalfKernel<TSimd, TVector>(kc, panelA, panelB, edge, nr, add: false);
                    else MicroKernel<TSimd, TVector>(kc, panelA, panelB, edge, nr, add: false);
                    for (int r = 0; r < rows; r++)
                        for (int col = 0; col < cols; col++)
                            c[(nint)r * _ldc + col] = add ? c[(nint)r * _ldc + col] + edge[r * nr + col] : edge[r * nr + col];
                }
            }
        }
    }

    /// <summary>A KC x NR sliver of op(B) into k-major rows of NR (zero padded).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void PackB<TSimd, TVector>(int p0, int kc, int j0, int cols, int nr, T* packed)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        if (!_transB)
        {
            for (int p = 0; p < kc; p++)
            {
                T* src = _b + (nint)(p0 + p) * _ldb + j0;
                T* dst = packed + p * nr;
                if (cols == nr)
                {
                    // Two vectors straight across (a span copy per row costs as much as the row).
                    ref T from = ref Unsafe.AsRef<T>(src), to = ref Unsafe.AsRef<T>(dst);
                    TSimd.Store(TSimd.Load(ref from, 0), ref to, 0);
                    TSimd.Store(TSimd.Load(ref from, TSimd.Count), ref to, TSimd.Count);
                    continue;
                }
                new ReadOnlySpan<T>(src, cols).CopyTo(new Span<T>(dst, cols));
                new Span<T>(dst + cols, nr - cols).Clear();
            }
            return;
        }
        // op(B) = Bᵀ: B is n x k; column j of op(B) is row j of B.
        if (cols < nr) new Span<T>(packed, kc * nr).Clear();
        int whole = 0;
        if (typeof(T) == typeof(float) && Avx.IsSupported)
        {
            // 8 rows of B by 8 of k at a time, transposed in registers.
            whole = kc / 8 * 8;
            for (int c = 0; c + 8 <= cols; c += 8)
                for (int p = 0; p < whole; p += 8)
                    Transpose8x8((float*)(_b + (nint)(j0 + c) * _ldb + p0 + p), _ldb, (float*)(packed + p * nr + c), nr);
        }
        int vectorCols = whole == 0 ? 0 : cols / 8 * 8;
        for (int c = 0; c < cols; c++)
        {
            T* src = _b + (nint)(j0 + c) * _ldb + p0;
            for (int p = c < vectorCols ? whole : 0; p < kc; p++) packed[p * nr + c] = src[p];
        }
    }

    /// <summary>dst[j * dstStride + i] = src[i * srcStride + j] for an 8x8 block of floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose8x8(float* src, int srcStride, float* dst, int dstStride)
    {
        Vector256<float> r0 = Avx.LoadVector256(src), r1 = Avx.LoadVector256(src + srcStride);
        Vector256<float> r2 = Avx.LoadVector256(src + 2 * srcStride), r3 = Avx.LoadVector256(src + 3 * srcStride);
        Vector256<float> r4 = Avx.LoadVector256(src + 4 * srcStride), r5 = Avx.LoadVector256(src + 5 * srcStride);
        Vector256<float> r6 = Avx.LoadVector256(src + 6 * srcStride), r7 = Avx.LoadVector256(src + 7 * srcStride);
        // Pairs of rows interleaved, then pairs of pairs, then the 128-bit halves: column j ends up in row j.
        Vector256<float> t0 = Avx.UnpackLow(r0, r1), t1 = Avx.UnpackHigh(r0, r1), t2 = Avx.UnpackLow(r2, r3), t3 = Avx.UnpackHigh(r2, r3);
        Vector256<float> t4 = Avx.UnpackLow(r4, r5), t5 = Avx.UnpackHigh(r4, r5), t6 = Avx.UnpackLow(r6, r7), t7 = Avx.UnpackHigh(r6, r7);
        Vector256<float> u0 = Avx.Shuffle(t0, t2, 0x44), u1 = Avx.Shuffle(t0, t2, 0xEE), u2 = Avx.Shuffle(t1, t3, 0x44), u3 = Avx.Shuffle(t1, t3, 0xEE);
        Vector256<float> u4 = Avx.Shuffle(t4, t6, 0x44), u5 = Avx.Shuffle(t4, t6, 0xEE), u6 = Avx.Shuffle(t5, t7, 0x44), u7 = Avx.Shuffle(t5, t7, 0xEE);
        Avx.Store(dst, Avx.Permute2x128(u0, u4, 0x20));
        Avx.Store(dst + dstStride, Avx.Permute2x128(u1, u5, 0x20));
        Avx.Store(dst + 2 * dstStride, Avx.Permute2x128(u2, u6, 0x20));
        Avx.Store(dst + 3 * dstStride, Avx.Permute2x128(u3, u7, 0x20));
        Avx.Store(dst + 4 * dstStride, Avx.Permute2x128(u0, u4, 0x31));
        Avx.Store(dst + 5 * dstStride, Avx.Permute2x128(u1, u5, 0x31));
        Avx.Store(dst + 6 * dstStride, Avx.Permute2x128(u2, u6, 0x31));
        Avx.Store(dst + 7 * dstStride, Avx.Permute2x128(u3, u7, 0x31));
    }

    /// <summary>
    /// C[MR x NR] (+)= Apanel · Bpanel over kc, in 2*MR vector accumulators, always a whole block (the caller routes edge
    /// tiles through scratch). Kept free of any other use of the accumulators: with a second exit that spilled them to
    /// a stack tile, the JIT without profile data (tiered compilation off) stored all sixteen to the stack on every
    /// iteration of the k loop.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void MicroKernel<TSimd, TVector>(int kc, T* a, T* b, T* c, int ldc, bool add)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int w = TSimd.Count;
        TVector c00 = TSimd.Zero, c01 = TSimd.Zero, c10 = TSimd.Zero, c11 = TSimd.Zero, c20 = TSimd.Zero, c21 = TSimd.Zero;
        TVector c30 = TSimd.Zero, c31 = TSimd.Zero, c40 = TSimd.Zero, c41 = TSimd.Zero, c50 = TSimd.Zero, c51 = TSimd.Zero;
        TVector c60 = TSimd.Zero, c61 = TSimd.Zero, c70 = TSimd.Zero, c71 = TSimd.Zero;
        ref T bRef = ref Unsafe.AsRef<T>(b);
        for (int p = 0; p < kc; p++)
        {
            TVector b0 = TSimd.Load(ref bRef, p * 2 * w), b1 = TSimd.Load(ref bRef, p * 2 * w + w);
            T* ap = a + p * MR;
            TVector av = TSimd.Broadcast(ap[0]);
            c00 = TSimd.MultiplyAdd(av, b0, c00); c01 = TSimd.MultiplyAdd(av, b1, c01);
            av = TSimd.Broadcast(ap[1]);
            c10 = TSimd.MultiplyAdd(av, b0, c10); c11 = TSimd.MultiplyAdd(av, b1, c11);
            av = TSimd.Broadcast(ap[2]);
            c20 = TSimd.MultiplyAdd(av, b0, c20); c21 = TSimd.MultiplyAdd(av, b1, c21);
            av = TSimd.Broadcast(ap[3]);
            c30 = TSimd.MultiplyAdd(av, b0, c30); c31 = TSimd.MultiplyAdd(av, b1, c31);
            av = TSimd.Broadcast(ap[4]);
            c40 = TSimd.MultiplyAdd(av, b0, c40); c41 = TSimd.MultiplyAdd(av, b1, c41);
            av = TSimd.Broadcast(ap[5]);
            c50 = TSimd.MultiplyAdd(av, b0, c50); c51 = TSimd.MultiplyAdd(av, b1, c51);
            av = TSimd.Broadcast(ap[6]);
            c60 = TSimd.MultiplyAdd(av, b0, c60); c61 = TSimd.MultiplyAdd(av, b1, c61);
            av = TSimd.Broadcast(ap[7]);
            c70 = TSimd.MultiplyAdd(av, b0, c70); c71 = TSimd.MultiplyAdd(av, b1, c71);
        }

        StoreRow<TSimd, TVector>(c, c00, c01, add);
        StoreRow<TSimd, TVector>(c + ldc, c10, c11, add);
        StoreRow<TSimd, TVector>(c + 2 * ldc, c20, c21, add);
        StoreRow<TSimd, TVector>(c + 3 * ldc, c30, c31, add);
        StoreRow<TSimd, TVector>(c + 4 * ldc, c40, c41, add);
        StoreRow<TSimd, TVector>(c + 5 * ldc, c50, c51, add);
        StoreRow<TSimd, TVector>(c + 6 * ldc, c60, c61, add);
        StoreRow<TSimd, TVector>(c + 7 * ldc, c70, c71, add);
    }

    /// <summary>
    /// C[MR x w] (+)= Apanel · (the first vector of each row of Bpanel), for a last panel of columns no wider than one
    /// vector: each element is the same chain of multiply-adds as in <see cref="MicroKernel"/>, so the same bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void HalfKernel<TSimd, TVector>(int kc, T* a, T* b, T* c, int ldc, bool add)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int w = TSimd.Count;
        TVector c0 = TSimd.Zero, c1 = TSimd.Zero, c2 = TSimd.Zero, c3 = TSimd.Zero, c4 = TSimd.Zero, c5 = TSimd.Zero, c6 = TSimd.Zero, c7 = TSimd.Zero;
        ref T bRef = ref Unsafe.AsRef<T>(b);
        for (int p = 0; p < kc; p++)
        {
            TVector b0 = TSimd.Load(ref bRef, p * 2 * w);
            T* ap = a + p * MR;
            c0 = TSimd.MultiplyAdd(TSimd.Broadcast(ap[0]), b0, c0);
            c1 = TSimd.MultiplyAdd(TSimd.Broadcast(ap[1]), b0, c1);
            c2 = TSimd.MultiplyAdd(TSimd.Broadcast(ap[2]), b0, c2);
            c3 = TSimd.MultiplyAdd(TSimd.Broadcast(ap[3]), b0, c3);
            c4 = TSimd.MultiplyAdd(TSimd.Broadcast(ap[4]), b0, c4);
            c5 = TSimd.MultiplyAdd(TSimd.Broadcast(ap[5]), b0, c5);
            c6 = TSimd.MultiplyAdd(TSimd.Broadcast(ap[6]), b0, c6);
            c7 = TSimd.MultiplyAdd(TSimd.Broadcast(ap[7]), b0, c7);
        }
        StoreHalf<TSimd, TVector>(c, c0, add);
        StoreHalf<TSimd, TVector>(c + ldc, c1, add);
        StoreHalf<TSimd, TVector>(c + 2 * ldc, c2, add);
        StoreHalf<TSimd, TVector>(c + 3 * ldc, c3, add);
        StoreHalf<TSimd, TVector>(c + 4 * ldc, c4, add);
        StoreHalf<TSimd, TVector>(c + 5 * ldc, c5, add);
        StoreHalf<TSimd, TVector>(c + 6 * ldc, c6, add);
        StoreHalf<TSimd, TVector>(c + 7 * ldc, c7, add);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreHalf<TSimd, TVector>(T* c, TVector v, bool add)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        ref T row = ref Unsafe.AsRef<T>(c);
        if (add) v = TSimd.Add(TSimd.Load(ref row, 0), v);
        TSimd.Store(v, ref row, 0);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRow<TSimd, TVector>(T* c, TVector v0, TVector v1, bool add)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        ref T row = ref Unsafe.AsRef<T>(c);
        if (add)
        {
            v0 = TSimd.Add(TSimd.Load(ref row, 0), v0);
            v1 = TSimd.Add(TSimd.Load(ref row, TSimd.Count), v1);
        }
        TSimd.Store(v0, ref row, 0);
        TSimd.Store(v1, ref row, TSimd.Count);
    }

    private static void Validate(bool transA, bool transB, int m, int n, int k, int aLength, int lda, int bLength, int ldb, int cLength, int ldc)
    {
        if (m < 0 || n < 0 || k < 0)
            throw new ArgumentOutOfRangeException(nameof(m), $"Matrix sizes must be >= 0; got m={m}, n={n}, k={k}.");
        (int aRows, int aCols) = transA ? (k, m) : (m, k);
        (int bRows, int bCols) = transB ? (n, k) : (k, n);
        Require("A", aRows, aCols, aLength, lda);
        Require("B", bRows, bCols, bLength, ldb);
        Require("C", m, n, cLength, ldc);
    }

    private static void Require(string name, int rows, int cols, int length, int ld)
    {
        if (rows == 0 || cols == 0) return;
        if (ld < cols)
            throw new ArgumentOutOfRangeException($"ld{name.ToLowerInvariant()}", $"{name} is {rows} x {cols}: its row stride must be at least {cols}; got {ld}.");
        long needed = (long)(rows - 1) * ld + cols;
        if (length < needed)
            throw new ArgumentException($"{name} is {rows} x {cols} with row stride {ld}: it needs {needed} elements; got {length}.", name.ToLowerInvariant());
    }

    private static void Grow(ref T[] buffer, int length)
    {
        if (buffer.Length < length) buffer = GC.AllocateUninitializedArray<T>(length, pinned: true);
    }
}
