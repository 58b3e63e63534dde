using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace SharpNorm.Kernels;

/// <summary>
/// The row shape of the engine (LayerNorm, RMSNorm: one group per contiguous row of K = J elements, parameters per
/// column). Each row is done whole by one thread, its statistics pass and its element-wise pass back to back while
/// the row is in cache. Per row the engine keeps the center, mean, variance and invstd like any group; dgamma and
/// dbeta are column sums over the rows, taken per band of rows in T and added over the bands in double, in order.
/// </summary>
public sealed unsafe partial class NormEngine<T>
{
    private T[] _rowGamma = [];      // per column: gamma in T, ones without affine
    private T[] _rowBeta = [];       // per column: beta in T, zeros without affine
    private bool _subtractMean = true;

    private void LoadRowAffine(ReadOnlySpan<T> gamma, ReadOnlySpan<T> beta)
    {
        LoadRowGamma(gamma);
        if (beta.IsEmpty) _rowBeta.AsSpan(0, Geometry.J).Clear();
        else beta.CopyTo(_rowBeta);
    }

    private void LoadRowGamma(ReadOnlySpan<T> gamma)
    {
        if (gamma.IsEmpty) _rowGamma.AsSpan(0, Geometry.J).Fill(T.One);
        else gamma.CopyTo(_rowGamma);
    }

    /// <summary>Fixed statistics (one mean and variance for every row): each row's center, mean and invstd.</summary>
    private void SetRowStatistics(double mean, double variance, double eps, T center)
    {
        int rows = Geometry.A;
        _groupMean.AsSpan(0, rows).Fill(mean);
        _groupVariance.AsSpan(0, rows).Fill(variance);
        _groupInvStd.AsSpan(0, rows).Fill(1.0 / Math.Sqrt(variance + eps));
        _center.AsSpan(0, rows).Fill(center);
    }

    /// <summary>dgamma and dbeta per column: the band partials added in band order.</summary>
    private void CombineBands()
    {
        int width = Geometry.J;
        Span<double> dBeta = _sum1.AsSpan(0, width), dGamma = _sum2.AsSpan(0, width);
        _partial1.AsSpan(0, width).CopyTo(dBeta);
        _partial2.AsSpan(0, width).CopyTo(dGamma);
        for (int band = 1; band < _plan.BandCount; band++)
        {
            TensorPrimitives.Add(dBeta, _partial1.AsSpan(band * width, width), dBeta);
            TensorPrimitives.Add(dGamma, _partial2.AsSpan(band * width, width), dGamma);
        }
    }

    private void RowChunk(ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output, int first, int end, int worker)
    {
        if (MaxVectorBits >= 512 && Simd512<T>.IsUsable)
            RowChunk<Simd512<T>, Vector512<T>>(x, second, output, first, end, worker);
        else if (MaxVectorBits >= 256 && Simd256<T>.IsUsable)
            RowChunk<Simd256<T>, Vector256<T>>(x, second, output, first, end, worker);
        else if (MaxVectorBits >= 128 && Simd128<T>.IsUsable)
            RowChunk<Simd128<T>, Vector128<T>>(x, second, output, first, end, worker);
        else
            RowChunk<SimdScalar<T>, T>(x, second, output, first, end, worker);
    }

    /// <summary>Rows [first, end) of a forward or scaling job, or bands [first, end) of a backward job.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void RowChunk<TSimd, TVector>(ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output, int first, int end, int worker)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        NormGeometry g = Geometry;
        int width = g.J;
        ref T x0 = ref MemoryMarshal.GetReference(x);
        ref T second0 = ref second.IsEmpty ? ref x0 : ref MemoryMarshal.GetReference(second);
        ref T out0 = ref output.IsEmpty ? ref x0 : ref MemoryMarshal.GetReference(output);
        ref T gamma = ref MemoryMarshal.GetArrayDataReference(_rowGamma);
        ref T beta = ref MemoryMarshal.GetArrayDataReference(_rowBeta);

        if (_job >= JobKind.WideMoments)
        {
            WideRowChunk<TSimd, TVector>(x, second, output, first, end);
            return;
        }
        const int together = NormKernels<T>.RowsTogether;
        Span<T> c = stackalloc T[together], r = stackalloc T[together], o = stackalloc T[together], q = stackalloc T[together];
        if (_job is JobKind.RowForward or JobKind.RowNormalize or JobKind.RowScale)
        {
            // Up to four rows at a time: their statistics one by one, then one pass that reads gamma and beta once for all.
            for (int row = first; row < end; row += together)
            {
                int rows = Math.Min(together, end - row);
                for (int k = 0; k < rows; k++)
                {
                    if (_job == JobKind.RowForward) RowStatistics<TSimd, TVector>(ref Unsafe.Add(ref x0, (nint)(row + k) * width), row + k);
                    (c[k], r[k], o[k]) = RowCoefficients(row + k);
                    q[k] = T.Zero;
                }
                nint offset = (nint)row * width;
                if (_job == JobKind.RowScale)
                    NormKernels<T>.RowsInputGradient<TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref out0, offset),
                        width, rows, ref gamma, width, c, r, q, q, throughStatistics: false, _streaming);
                else
                    NormKernels<T>.NormalizeRows<TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref out0, offset), width, rows,
                        ref gamma, ref beta, width, c, r, o, _streaming);
            }
            return;
        }

        // Backward (dx too) or the gradient sums alone, band by band, four rows at a time.
        bool writeInputGradient = _job == JobKind.RowBackward;
        Span<T> scratch = WorkerScratch(worker);
        Span<T> dBeta = scratch[..width], dGamma = scratch.Slice(width, width);
        Span<T> w = stackalloc T[together];
        Span<double> sumG = stackalloc double[together], sumGCentered = stackalloc double[together];
        Span<double> pieceG = stackalloc double[together], pieceGCentered = stackalloc double[together];
        for (int band = first; band < end; band++)
        {
            dBeta.Clear();
            dGamma.Clear();
            int rowEnd = Math.Min(g.A, (band + 1) * NormPlan.RowsPerBand);
            for (int row = band * NormPlan.RowsPerBand; row < rowEnd; row += together)
            {
                int rows = Math.Min(together, rowEnd - row);
                for (int k = 0; k < rows; k++) (c[k], r[k], o[k]) = RowCoefficients(row + k);
                nint offset = (nint)row * width;
                ref T xr = ref Unsafe.Add(ref x0, offset);
                ref T dyr = ref Unsafe.Add(ref second0, offset);
                sumG.Clear();
                sumGCentered.Clear();
                for (int start = 0; start < width; start += NormPlan.RowPieceElements)
                {
                    int length = Math.Min(NormPlan.RowPieceElements, width - start);
                    pieceG.Clear();
                    pieceGCentered.Clear();
                    NormKernels<T>.RowsGradientSums<TSimd, TVector>(ref Unsafe.Add(ref xr, start), ref Unsafe.Add(ref dyr, start), width, rows,
                        ref Unsafe.Add(ref gamma, start), ref dBeta[start], ref dGamma[start], length, c, r, o, pieceG, pieceGCentered);
                    for (int k = 0; k < rows; k++)
                    {
                        sumG[k] += pieceG[k];
                        sumGCentered[k] += pieceGCentered[k];
                    }
                }
                if (!writeInputGradient) continue;
                for (int k = 0; k < rows; k++) (q[k], w[k]) = RowInputGradientCoefficients(row + k, sumG[k], sumGCentered[k]);
                NormKernels<T>.RowsInputGradient<TSimd, TVector>(ref xr, ref dyr, ref Unsafe.Add(ref out0, offset), width, rows, ref gamma, width,
                    c, r, q, w, throughStatistics: true, _streaming);
            }
            TensorPrimitives.ConvertTruncating<T, double>(dBeta, _partial1.AsSpan(band * width, width));
            TensorPrimitives.ConvertTruncating<T, double>(dGamma, _partial2.AsSpan(band * width, width));
        }
    }

    /// <summary>A row's c = center, r = invstd and o = (c - mean) * invstd for xhat = (x - c) * r + o, from the statistics in use.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private (T c, T r, T o) RowCoefficients(int row)
    {
        double invStd = _groupInvStd[row];
        return (_center[row], T.CreateTruncating(invStd), T.CreateTruncating((double.CreateTruncating(_center[row]) - _groupMean[row]) * invStd));
    }

    /// <summary>A row's dx = gamma*dy*r + q*(x - c) + w coefficients from its totals Σ g and Σ g*(x - c), g = gamma*dy.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private (T q, T w) RowInputGradientCoefficients(int row, double sumG, double sumGCentered)
    {
        double mean = _groupMean[row], invStd = _groupInvStd[row], center = double.CreateTruncating(_center[row]);
        double sumGXhat = SumDyXhat(sumG, sumGCentered, center - mean, invStd);
        (_, T q, T w) = InputGradientCoefficients(1, invStd, _subtractMean ? sumG : 0, sumGXhat, Geometry.J, center - mean);
        return (q, w);
    }

    /// <summary>
    /// A row's mean, variance and invstd from its pieces' shifted sums (shifted by the row's first element; the row's
    /// center then becomes its rounded mean), or for RMSNorm (no mean subtracted) its mean square about zero.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void RowStatistics<TSimd, TVector>(ref T row, int index)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int width = Geometry.J;
        T c = _subtractMean ? row : T.Zero;
        double sum = 0, squares = 0;
        for (int start = 0; start < width; start += NormPlan.RowPieceElements)
        {
            double pieceSum = 0, pieceSquares = 0;
            NormKernels<T>.RunSums<MomentsOp, TSimd, TVector>(ref Unsafe.Add(ref row, start), ref Unsafe.Add(ref row, start),
                Math.Min(NormPlan.RowPieceElements, width - start), c, ref pieceSum, ref pieceSquares);
            sum += pieceSum;
            squares += pieceSquares;
        }
        RowStatisticsFromSums(index, sum, squares, c);
    }

    /// <summary>A row's mean, variance, invstd and center from its sums shifted by <paramref name="shift"/> (zero for RMSNorm).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void RowStatisticsFromSums(int index, double sum, double squares, T shift)
    {
        int width = Geometry.J;
        (_groupMean[index], _groupVariance[index], _groupInvStd[index]) = _subtractMean
            ? Statistics(sum, squares, double.CreateTruncating(shift), width, _eps)
            : (0, squares / width, 1.0 / Math.Sqrt(squares / width + _eps));
        _center[index] = _subtractMean ? ApplyCenter(_groupMean[index], shift) : shift;
    }
}
