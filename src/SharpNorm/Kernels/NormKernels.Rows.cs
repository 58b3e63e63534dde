using System.Runtime.CompilerServices;

namespace SharpNorm.Kernels;

/// <summary>
/// The row shape (LayerNorm, RMSNorm): one statistics group per contiguous row of K elements, and affine parameters
/// that change along the row. Each kernel walks one piece of one row; gamma and beta are read alongside x.
/// A row's xhat is (x - c) * r + o with r = 1/sqrt(var + eps) and o = (c - mean) * r.
/// </summary>
internal static partial class NormKernels<T>
{
    /// <summary>Rows handled together by the multi-row kernels: gamma, beta and the dgamma/dbeta accumulators are loaded once for all.</summary>
    internal const int RowsTogether = 4;

    /// <summary>
    /// y = xhat * gamma + beta over n elements of each of <paramref name="rows"/> rows (1 to 4) that lie
    /// <paramref name="rowStride"/> apart, row k with its own c[k], r[k], o[k]. Each element is computed exactly as
    /// when its row is done alone.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe void NormalizeRows<TSimd, TVector>(ref T x, ref T y, nint rowStride, int rows, ref T gamma, ref T beta, int n,
        ReadOnlySpan<T> c, ReadOnlySpan<T> r, ReadOnlySpan<T> o, bool streaming)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int i = 0;
        // Streaming stores need every row at the same alignment; otherwise the rows take the cached stores.
        if (streaming && TSimd.Count > 1 && (rows == 1 || rowStride % TSimd.Count == 0))
        {
            for (; i < n && !IsVectorAligned<TSimd, TVector>(ref Unsafe.Add(ref y, i)); i++)
                for (int k = 0; k < rows; k++)
                    Unsafe.Add(ref y, k * rowStride + i) = Normalized<SimdScalar<T>, T>(Unsafe.Add(ref x, k * rowStride + i), Unsafe.Add(ref gamma, i), Unsafe.Add(ref beta, i), c[k], r[k], o[k]);
            for (; i <= n - TSimd.Count; i += TSimd.Count)
            {
                TVector g = TSimd.Load(ref gamma, i), b = TSimd.Load(ref beta, i);
                for (int k = 0; k < rows; k++)
                    TSimd.StoreStreaming(Normalized<TSimd, TVector>(TSimd.Load(ref x, k * rowStride + i), g, b,
                        TSimd.Broadcast(c[k]), TSimd.Broadcast(r[k]), TSimd.Broadcast(o[k])), ref y, k * rowStride + i);
            }
        }
        for (; i <= n - TSimd.Count; i += TSimd.Count)
        {
            TVector g = TSimd.Load(ref gamma, i), b = TSimd.Load(ref beta, i);
            for (int k = 0; k < rows; k++)
                TSimd.Store(Normalized<TSimd, TVector>(TSimd.Load(ref x, k * rowStride + i), g, b,
                    TSimd.Broadcast(c[k]), TSimd.Broadcast(r[k]), TSimd.Broadcast(o[k])), ref y, k * rowStride + i);
        }
        for (; i < n; i++)
            for (int k = 0; k < rows; k++)
                Unsafe.Add(ref y, k * rowStride + i) = Normalized<SimdScalar<T>, T>(Unsafe.Add(ref x, k * rowStride + i), Unsafe.Add(ref gamma, i), Unsafe.Add(ref beta, i), c[k], r[k], o[k]);
    }

    /// <summary>
    /// The backward reductions of n elements of each of <paramref name="rows"/> rows (1 to 4): Σ g and Σ g*(x - c) with
    /// g = gamma*dy, added to each row's totals; and per column dbeta += dy, dgamma += dy*xhat into the band
    /// accumulators, the rows added in order. Every sum is formed exactly as when the rows are done one by one.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void RowsGradientSums<TSimd, TVector>(ref T x, ref T dy, nint rowStride, int rows, ref T gamma, ref T dBeta, ref T dGamma, int n,
        ReadOnlySpan<T> c, ReadOnlySpan<T> r, ReadOnlySpan<T> o, Span<double> sumG, Span<double> sumGCentered)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int i = 0;
        while (i < n)
        {
            int blockEnd = Math.Min(n, i + RunBlock);
            TVector g0 = TSimd.Zero, g1 = TSimd.Zero, g2 = TSimd.Zero, g3 = TSimd.Zero;
            TVector h0 = TSimd.Zero, h1 = TSimd.Zero, h2 = TSimd.Zero, h3 = TSimd.Zero;
            for (; i <= blockEnd - TSimd.Count; i += TSimd.Count)
            {
                TVector gam = TSimd.Load(ref gamma, i), db = TSimd.Load(ref dBeta, i), dg = TSimd.Load(ref dGamma, i);
                GradientStep<TSimd, TVector>(ref x, ref dy, i, gam, c[0], r[0], o[0], ref g0, ref h0, ref db, ref dg);
                if (rows > 1) GradientStep<TSimd, TVector>(ref x, ref dy, rowStride + i, gam, c[1], r[1], o[1], ref g1, ref h1, ref db, ref dg);
                if (rows > 2) GradientStep<TSimd, TVector>(ref x, ref dy, 2 * rowStride + i, gam, c[2], r[2], o[2], ref g2, ref h2, ref db, ref dg);
                if (rows > 3) GradientStep<TSimd, TVector>(ref x, ref dy, 3 * rowStride + i, gam, c[3], r[3], o[3], ref g3, ref h3, ref db, ref dg);
                TSimd.Store(db, ref dBeta, i);
                TSimd.Store(dg, ref dGamma, i);
            }
            for (int k = 0; k < rows; k++)
            {
                T u1 = TSimd.Sum(k switch { 0 => g0, 1 => g1, 2 => g2, _ => g3 }), u2 = TSimd.Sum(k switch { 0 => h0, 1 => h1, 2 => h2, _ => h3 });
                for (int t = i; t < blockEnd; t++)
                {
                    T dyi = Unsafe.Add(ref dy, k * rowStride + t), centered = Unsafe.Add(ref x, k * rowStride + t) - c[k];
                    T g = T.FusedMultiplyAdd(Unsafe.Add(ref gamma, t), dyi, T.Zero);
                    u1 += g;
                    u2 = T.FusedMultiplyAdd(g, centered, u2);
                    Unsafe.Add(ref dBeta, t) += dyi;
                    Unsafe.Add(ref dGamma, t) = T.FusedMultiplyAdd(dyi, T.FusedMultiplyAdd(centered, r[k], o[k]), Unsafe.Add(ref dGamma, t));
                }
                sumG[k] += double.CreateTruncating(u1);
                sumGCentered[k] += double.CreateTruncating(u2);
            }
            i = blockEnd;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void GradientStep<TSimd, TVector>(ref T x, ref T dy, nint at, TVector gamma, T c, T r, T o,
        ref TVector sumG, ref TVector sumGCentered, ref TVector dBeta, ref TVector dGamma)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        TVector dyv = TSimd.Load(ref dy, at);
        TVector centered = TSimd.Subtract(TSimd.Load(ref x, at), TSimd.Broadcast(c));
        TVector g = TSimd.MultiplyAdd(gamma, dyv, TSimd.Zero);
        sumG = TSimd.Add(sumG, g);
        sumGCentered = TSimd.MultiplyAdd(g, centered, sumGCentered);
        dBeta = TSimd.Add(dBeta, dyv);
        dGamma = TSimd.MultiplyAdd(dyv, TSimd.MultiplyAdd(centered, TSimd.Broadcast(r), TSimd.Broadcast(o)), dGamma);
    }

    /// <summary>
    /// dx = gamma*dy*r + q*(x - c) + w over n elements of each of <paramref name="rows"/> rows (1 to 4), each with its
    /// own coefficients; with <paramref name="throughStatistics"/> false (fixed statistics) dx = gamma*dy*r alone.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe void RowsInputGradient<TSimd, TVector>(ref T x, ref T dy, ref T dx, nint rowStride, int rows, ref T gamma, int n,
        ReadOnlySpan<T> c, ReadOnlySpan<T> r, ReadOnlySpan<T> q, ReadOnlySpan<T> w, bool throughStatistics, bool streaming)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int i = 0;
        if (!throughStatistics)
        {
            // No x term at all: an infinite x must not turn dx into NaN through 0 * inf.
            for (; i <= n - TSimd.Count; i += TSimd.Count)
            {
                TVector gam = TSimd.Load(ref gamma, i);
                for (int k = 0; k < rows; k++)
                    TSimd.Store(TSimd.MultiplyAdd(TSimd.MultiplyAdd(gam, TSimd.Load(ref dy, k * rowStride + i), TSimd.Zero), TSimd.Broadcast(r[k]), TSimd.Zero), ref dx, k * rowStride + i);
            }
            for (; i < n; i++)
                for (int k = 0; k < rows; k++)
                    Unsafe.Add(ref dx, k * rowStride + i) = T.FusedMultiplyAdd(T.FusedMultiplyAdd(Unsafe.Add(ref gamma, i), Unsafe.Add(ref dy, k * rowStride + i), T.Zero), r[k], T.Zero);
            return;
        }
        if (streaming && TSimd.Count > 1 && (rows == 1 || rowStride % TSimd.Count == 0))
        {
            for (; i < n && !IsVectorAligned<TSimd, TVector>(ref Unsafe.Add(ref dx, i)); i++)
                for (int k = 0; k < rows; k++)
                    Unsafe.Add(ref dx, k * rowStride + i) = InputGradient<SimdScalar<T>, T>(Unsafe.Add(ref x, k * rowStride + i), Unsafe.Add(ref dy, k * rowStride + i),
                        Unsafe.Add(ref gamma, i), c[k], r[k], q[k], w[k]);
            for (; i <= n - TSimd.Count; i += TSimd.Count)
            {
                TVector gam = TSimd.Load(ref gamma, i);
                for (int k = 0; k < rows; k++)
                    TSimd.StoreStreaming(InputGradient<TSimd, TVector>(TSimd.Load(ref x, k * rowStride + i), TSimd.Load(ref dy, k * rowStride + i), gam,
                        TSimd.Broadcast(c[k]), TSimd.Broadcast(r[k]), TSimd.Broadcast(q[k]), TSimd.Broadcast(w[k])), ref dx, k * rowStride + i);
            }
        }
        for (; i <= n - TSimd.Count; i += TSimd.Count)
        {
            TVector gam = TSimd.Load(ref gamma, i);
            for (int k = 0; k < rows; k++)
                TSimd.Store(InputGradient<TSimd, TVector>(TSimd.Load(ref x, k * rowStride + i), TSimd.Load(ref dy, k * rowStride + i), gam,
                    TSimd.Broadcast(c[k]), TSimd.Broadcast(r[k]), TSimd.Broadcast(q[k]), TSimd.Broadcast(w[k])), ref dx, k * rowStride + i);
        }
        for (; i < n; i++)
            for (int k = 0; k < rows; k++)
                Unsafe.Add(ref dx, k * rowStride + i) = InputGradient<SimdScalar<T>, T>(Unsafe.Add(ref x, k * rowStride + i), Unsafe.Add(ref dy, k * rowStride + i),
                    Unsafe.Add(ref gamma, i), c[k], r[k], q[k], w[k]);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TVector Normalized<TSimd, TVector>(TVector x, TVector gamma, TVector beta, TVector c, TVector r, TVector o)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
        => TSimd.MultiplyAdd(TSimd.MultiplyAdd(TSimd.Subtract(x, c), r, o), gamma, beta);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TVector InputGradient<TSimd, TVector>(TVector x, TVector dy, TVector gamma, TVector c, TVector r, TVector q, TVector w)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
        => TSimd.MultiplyAdd(TSimd.MultiplyAdd(gamma, dy, TSimd.Zero), r, TSimd.MultiplyAdd(q, TSimd.Subtract(x, c), w));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe bool IsVectorAligned<TSimd, TVector>(ref T destination)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
        => ((nuint)Unsafe.AsPointer(ref destination) & (nuint)(TSimd.Count * sizeof(T) - 1)) == 0;
}
