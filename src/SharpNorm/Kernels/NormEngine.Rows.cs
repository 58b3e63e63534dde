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
        int width = Geometry.J;
        if (gamma.IsEmpty) _rowGamma.AsSpan(0, width).Fill(T.One);
        else gamma.CopyTo(_rowGamma);
        if (beta.IsEmpty) _rowBeta.AsSpan(0, width).Clear();
        else beta.CopyTo(_rowBeta);
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

        if (_job is JobKind.RowForward or JobKind.RowNormalize or JobKind.RowScale)
        {
            for (int row = first; row < end; row++)
            {
                nint offset = (nint)row * width;
                ref T xr = ref Unsafe.Add(ref x0, offset);
                if (_job == JobKind.RowForward) RowStatistics<TSimd, TVector>(ref xr, row);
                double mean = _groupMean[row], invStd = _groupInvStd[row];
                T c = _center[row], r = T.CreateTruncating(invStd);
                if (_job == JobKind.RowScale)
                    NormKernels<T>.RowInputGradient<TSimd, TVector>(ref xr, ref xr, ref gamma, ref Unsafe.Add(ref out0, offset), width,
                        c, r, T.Zero, T.Zero, throughStatistics: false, _streaming);
                else
                    NormKernels<T>.NormalizeRow<TSimd, TVector>(ref xr, ref gamma, ref beta, ref Unsafe.Add(ref out0, offset), width,
                        c, r, T.CreateTruncating((double.CreateTruncating(c) - mean) * invStd), _streaming);
            }
            return;
        }

        // Backward (dx too) or the gradient sums alone, band by band.
        bool writeInputGradient = _job == JobKind.RowBackward;
        Span<T> scratch = _workerScratch.AsSpan(worker * _workerScratchLength, _workerScratchLength);
        Span<T> dBeta = scratch[..width], dGamma = scratch.Slice(width, width);
        for (int band = first; band < end; band++)
        {
            dBeta.Clear();
            dGamma.Clear();
            int rowEnd = Math.Min(g.A, (band + 1) * NormPlan.RowsPerBand);
            for (int row = band * NormPlan.RowsPerBand; row < rowEnd; row++)
            {
                nint offset = (nint)row * width;
                ref T xr = ref Unsafe.Add(ref x0, offset);
                ref T dyr = ref Unsafe.Add(ref second0, offset);
                double mean = _groupMean[row], invStd = _groupInvStd[row], center = double.CreateTruncating(_center[row]);
                T c = _center[row], r = T.CreateTruncating(invStd), o = T.CreateTruncating((center - mean) * invStd);
                double sumG = 0, sumGCentered = 0;
                for (int start = 0; start < width; start += NormPlan.RowPieceElements)
                {
                    int length = Math.Min(NormPlan.RowPieceElements, width - start);
                    double pieceG = 0, pieceGCentered = 0;
                    NormKernels<T>.RowGradientSums<TSimd, TVector>(ref Unsafe.Add(ref xr, start), ref Unsafe.Add(ref dyr, start),
                        ref Unsafe.Add(ref gamma, start), ref dBeta[start], ref dGamma[start], length, c, r, o, ref pieceG, ref pieceGCentered);
                    sumG += pieceG;
                    sumGCentered += pieceGCentered;
                }
                if (!writeInputGradient) continue;
                double sumGXhat = SumDyXhat(sumG, sumGCentered, center - mean, invStd);
                var (_, q, w) = InputGradientCoefficients(1, invStd, _subtractMean ? sumG : 0, sumGXhat, width, center - mean);
                NormKernels<T>.RowInputGradient<TSimd, TVector>(ref xr, ref dyr, ref gamma, ref Unsafe.Add(ref out0, offset), width,
                    c, r, q, w, throughStatistics: true, _streaming);
            }
            TensorPrimitives.ConvertTruncating<T, double>(dBeta, _partial1.AsSpan(band * width, width));
            TensorPrimitives.ConvertTruncating<T, double>(dGamma, _partial2.AsSpan(band * width, width));
        }
    }

    /// <summary>
    /// A row's mean, variance and invstd from its pieces' shifted sums (the center is the row's first element), or
    /// for RMSNorm (no mean subtracted) its mean square about zero.
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
        _center[index] = c;
        (_groupMean[index], _groupVariance[index], _groupInvStd[index]) = _subtractMean
            ? Statistics(sum, squares, double.CreateTruncating(c), width, _eps)
            : (0, squares / width, 1.0 / Math.Sqrt(squares / width + _eps));
    }
}
