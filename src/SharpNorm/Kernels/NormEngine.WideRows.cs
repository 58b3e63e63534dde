using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace SharpNorm.Kernels;

/// <summary>
/// Wide rows (LayerNorm over (C,H,W): rows of hundreds of KB). One thread per row would hold four rows of x and dy,
/// megabytes, between a row's two passes, so the second pass would read them from memory again; and fewer rows than
/// threads would leave threads idle. Instead all threads work on the same block of up to four rows, each on its own
/// columns: the block's sums per (row, piece), combined in piece order on the caller, then its element-wise pass while
/// the block is still in cache. dgamma and dbeta accumulate per column (each column belongs to one piece) over the
/// rows of a band, as in the narrow path, and each band joins the column totals as soon as it is complete. Pieces are
/// fixed by the row length alone, so results do not depend on the thread count. The forward, which holds only x between
/// its passes, stays on the narrow path for rows under <see cref="WideForwardRowBytes"/> when there are rows enough.
/// </summary>
public sealed unsafe partial class NormEngine<T>
{
    /// <summary>
    /// Rows at least this long (in bytes) take the wide path: shorter, four rows of x and dy per thread still stay in
    /// cache between the passes and the narrow path is faster (docs/benchmarks.md, "Thresholds").
    /// </summary>
    internal const long WideRowBytes = 512 << 10;

    /// <summary>Elements per piece of a wide row: its sums are formed alone, then the pieces' sums added in order.</summary>
    internal const int WidePieceElements = 1 << 12;

    /// <summary>
    /// The forward of wide rows shorter than this (in bytes) takes the narrow path (one thread per row, four rows at a
    /// time) when there are rows enough to share out: it holds only x between its two passes, not x and dy, and needs
    /// no join per block (docs/benchmarks.md, "Thresholds").
    /// </summary>
    internal const long WideForwardRowBytes = 2 << 20;

    /// <summary>Fewer rows than this take the wide forward whatever their length: one thread per row would leave threads idle.</summary>
    internal const int NarrowForwardMinRows = 16;

    /// <summary>This engine's wide-row threshold in bytes (<see cref="WideRowBytes"/>; tests lower it to reach the path on small rows).</summary>
    internal long WideRowMinBytes { get; set; } = WideRowBytes;

    /// <summary>This engine's wide-forward threshold in bytes (<see cref="WideForwardRowBytes"/>; tests lower it with <see cref="WideRowMinBytes"/>).</summary>
    internal long WideForwardMinBytes { get; set; } = WideForwardRowBytes;

    /// <summary>Whether the statistics in use are of wide rows (set by Prepare, so a backward follows its forward's choice).</summary>
    private bool IsWideRows => _plan.IsRow && _wideRows;
    private bool _wideRows;

    /// <summary>Whether the forward of these wide rows takes the wide path too (set by Prepare; shape alone decides, never the thread count).</summary>
    private bool _wideForward;

    private int WidePieceCount => (Geometry.J + WidePieceElements - 1) / WidePieceElements;

    // The block of rows in work and its per-row coefficients: shift or center c, r = invstd, o = (c - mean)*r, q, w.
    private int _blockRow, _blockRows;
    private readonly T[] _blockC = new T[NormKernels<T>.RowsTogether], _blockR = new T[NormKernels<T>.RowsTogether];
    private readonly T[] _blockO = new T[NormKernels<T>.RowsTogether], _blockQ = new T[NormKernels<T>.RowsTogether];
    private readonly T[] _blockW = new T[NormKernels<T>.RowsTogether];
    private double[] _pieceSum1 = [], _pieceSum2 = [];   // per (row of the block, piece)
    private T[] _columnDBeta = [], _columnDGamma = [];   // per column: the band's sums so far, in T

    private void PrepareWideRows()
    {
        int pieces = WidePieceCount;
        Grow(ref _pieceSum1, NormKernels<T>.RowsTogether * pieces);
        Grow(ref _pieceSum2, NormKernels<T>.RowsTogether * pieces);
        Grow(ref _columnDBeta, Geometry.J);
        Grow(ref _columnDGamma, Geometry.J);
    }

    /// <summary>Training forward of wide rows, block by block: moments per piece, each row's statistics, then y.</summary>
    private void WideRowForward(ReadOnlySpan<T> x, Span<T> y)
    {
        NormGeometry g = Geometry;
        for (int row = 0; row < g.A; row += NormKernels<T>.RowsTogether)
        {
            _blockRow = row;
            _blockRows = Math.Min(NormKernels<T>.RowsTogether, g.A - row);
            for (int k = 0; k < _blockRows; k++) _blockC[k] = _subtractMean ? x[(row + k) * g.J] : T.Zero;
            Run(JobKind.WideMoments, x, default, default);
            for (int k = 0; k < _blockRows; k++)
            {
                (double sum, double squares) = AddPieces(k);
                RowStatisticsFromSums(row + k, sum, squares, _blockC[k]);
                SetBlockCoefficients(k);
            }
            Run(JobKind.WideNormalize, x, default, y);
        }
    }

    /// <summary>
    /// Backward of wide rows (dx too when <paramref name="dx"/> is not empty), block by block: the reductions per piece
    /// with dgamma/dbeta per column, then dx from each row's totals.
    /// </summary>
    private void WideRowBackward(ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        NormGeometry g = Geometry;
        for (int row = 0; row < g.A; row += NormKernels<T>.RowsTogether)
        {
            _blockRow = row;
            _blockRows = Math.Min(NormKernels<T>.RowsTogether, g.A - row);
            for (int k = 0; k < _blockRows; k++) SetBlockCoefficients(k);
            Run(JobKind.WideGradientSums, x, dy, default);
            if (dx.IsEmpty) continue;
            for (int k = 0; k < _blockRows; k++)
            {
                (double sumG, double sumGCentered) = AddPieces(k);
                (_blockQ[k], _blockW[k]) = RowInputGradientCoefficients(row + k, sumG, sumGCentered);
            }
            Run(JobKind.WideInputGradient, x, dy, dx);
        }
    }

    /// <summary>Row k of the block: its pieces' two sums added in piece order.</summary>
    private (double, double) AddPieces(int k)
    {
        int pieces = WidePieceCount;
        double sum1 = 0, sum2 = 0;
        for (int piece = 0; piece < pieces; piece++)
        {
            sum1 += _pieceSum1[k * pieces + piece];
            sum2 += _pieceSum2[k * pieces + piece];
        }
        return (sum1, sum2);
    }

    /// <summary>Row k of the block: its c, r and o from the statistics in use.</summary>
    private void SetBlockCoefficients(int k) => (_blockC[k], _blockR[k], _blockO[k]) = RowCoefficients(_blockRow + k);

    /// <summary>total = partial (first band) or total + partial, the partial widened to double.</summary>
    private static void AddBandPartial(ReadOnlySpan<T> partial, Span<double> total, bool firstBand)
    {
        if (firstBand)
        {
            TensorPrimitives.ConvertTruncating<T, double>(partial, total);
            return;
        }
        Span<double> widened = stackalloc double[512];
        for (int start = 0; start < partial.Length; start += widened.Length)
        {
            int length = Math.Min(widened.Length, partial.Length - start);
            TensorPrimitives.ConvertTruncating<T, double>(partial.Slice(start, length), widened[..length]);
            TensorPrimitives.Add(total.Slice(start, length), widened[..length], total.Slice(start, length));
        }
    }

    /// <summary>Pieces [first, end) of the block's rows for the running wide job.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void WideRowChunk<TSimd, TVector>(ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output, int first, int end)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int width = Geometry.J, rows = _blockRows, pieces = WidePieceCount;
        nint offset = (nint)_blockRow * width;
        ref T x0 = ref Unsafe.Add(ref MemoryMarshal.GetReference(x), offset);
        ref T second0 = ref second.IsEmpty ? ref x0 : ref Unsafe.Add(ref MemoryMarshal.GetReference(second), offset);
        ref T out0 = ref output.IsEmpty ? ref x0 : ref Unsafe.Add(ref MemoryMarshal.GetReference(output), offset);
        ref T gamma = ref MemoryMarshal.GetArrayDataReference(_rowGamma);
        ref T beta = ref MemoryMarshal.GetArrayDataReference(_rowBeta);
        ReadOnlySpan<T> c = _blockC.AsSpan(0, rows), r = _blockR.AsSpan(0, rows), o = _blockO.AsSpan(0, rows);
        int columnStart = first * WidePieceElements, columnEnd = Math.Min(width, end * WidePieceElements);

        switch (_job)
        {
            case JobKind.WideMoments:
                for (int k = 0; k < rows; k++)
                    for (int piece = first; piece < end; piece++)
                    {
                        int start = piece * WidePieceElements;
                        double sum = 0, squares = 0;
                        ref T at = ref Unsafe.Add(ref x0, k * (nint)width + start);
                        NormKernels<T>.RunSums<MomentsOp, TSimd, TVector>(ref at, ref at, Math.Min(WidePieceElements, width - start), c[k], ref sum, ref squares);
                        (_pieceSum1[k * pieces + piece], _pieceSum2[k * pieces + piece]) = (sum, squares);
                    }
                return;

            case JobKind.WideNormalize:
                NormKernels<T>.NormalizeRows<TSimd, TVector>(ref Unsafe.Add(ref x0, columnStart), ref Unsafe.Add(ref out0, columnStart), width, rows,
                    ref Unsafe.Add(ref gamma, columnStart), ref Unsafe.Add(ref beta, columnStart), columnEnd - columnStart, c, r, o, _streaming);
                return;

            case JobKind.WideInputGradient:
                NormKernels<T>.RowsInputGradient<TSimd, TVector>(ref Unsafe.Add(ref x0, columnStart), ref Unsafe.Add(ref second0, columnStart),
                    ref Unsafe.Add(ref out0, columnStart), width, rows, ref Unsafe.Add(ref gamma, columnStart), columnEnd - columnStart,
                    c, r, _blockQ.AsSpan(0, rows), _blockW.AsSpan(0, rows), throughStatistics: true, _streaming);
                return;

            case JobKind.WideGradientSums:
            {
                // A band's column sums start at its first row and move into double after its last, as in the narrow path.
                int band = _blockRow / NormPlan.RowsPerBand;
                Span<T> dBeta = _columnDBeta.AsSpan(columnStart, columnEnd - columnStart), dGamma = _columnDGamma.AsSpan(columnStart, columnEnd - columnStart);
                if (_blockRow % NormPlan.RowsPerBand == 0)
                {
                    dBeta.Clear();
                    dGamma.Clear();
                }
                Span<double> pieceG = stackalloc double[NormKernels<T>.RowsTogether], pieceGCentered = stackalloc double[NormKernels<T>.RowsTogether];
                for (int piece = first; piece < end; piece++)
                {
                    int start = piece * WidePieceElements;
                    pieceG.Clear();
                    pieceGCentered.Clear();
                    NormKernels<T>.RowsGradientSums<TSimd, TVector>(ref Unsafe.Add(ref x0, start), ref Unsafe.Add(ref second0, start), width, rows,
                        ref Unsafe.Add(ref gamma, start), ref _columnDBeta[start], ref _columnDGamma[start], Math.Min(WidePieceElements, width - start),
                        c, r, o, pieceG, pieceGCentered);
                    for (int k = 0; k < rows; k++)
                        (_pieceSum1[k * pieces + piece], _pieceSum2[k * pieces + piece]) = (pieceG[k], pieceGCentered[k]);
                }
                if (_blockRow + rows == Math.Min(Geometry.A, (band + 1) * NormPlan.RowsPerBand))
                {
                    // The band's partials join the totals in band order, as CombineBands adds them in the narrow path.
                    AddBandPartial(dBeta, _sum1.AsSpan(columnStart, dBeta.Length), band == 0);
                    AddBandPartial(dGamma, _sum2.AsSpan(columnStart, dGamma.Length), band == 0);
                }
                return;
            }
        }
    }
}
