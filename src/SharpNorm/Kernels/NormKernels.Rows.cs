using System.Runtime.CompilerServices;

namespace SharpNorm.Kernels;

/// <summary>
/// The row shape (LayerNorm, RMSNorm): one statistics group per contiguous row of K elements, and affine parameters
/// that change along the row. Each kernel walks one piece of one row; gamma and beta are read alongside x.
/// A row's xhat is (x - c) * r + o with r = 1/sqrt(var + eps) and o = (c - mean) * r.
/// </summary>
internal static partial class NormKernels<T>
{
    /// <summary>y = xhat * gamma + beta over n elements.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe void NormalizeRow<TSimd, TVector>(ref T x, ref T gamma, ref T beta, ref T y, int n, T c, T r, T o, bool streaming)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        TVector cv = TSimd.Broadcast(c), rv = TSimd.Broadcast(r), ov = TSimd.Broadcast(o);
        int i = 0;
        if (streaming && TSimd.Count > 1)
        {
            // Scalar steps up to the first vector-aligned output, then stores that skip the caches.
            for (; i < n && !IsVectorAligned<TSimd, TVector>(ref Unsafe.Add(ref y, i)); i++)
                Unsafe.Add(ref y, i) = Normalized<SimdScalar<T>, T>(Unsafe.Add(ref x, i), Unsafe.Add(ref gamma, i), Unsafe.Add(ref beta, i), c, r, o);
            for (; i <= n - TSimd.Count; i += TSimd.Count)
                TSimd.StoreStreaming(Normalized<TSimd, TVector>(TSimd.Load(ref x, i), TSimd.Load(ref gamma, i), TSimd.Load(ref beta, i), cv, rv, ov), ref y, i);
        }
        for (; i <= n - 2 * TSimd.Count; i += 2 * TSimd.Count)
        {
            TSimd.Store(Normalized<TSimd, TVector>(TSimd.Load(ref x, i), TSimd.Load(ref gamma, i), TSimd.Load(ref beta, i), cv, rv, ov), ref y, i);
            int k = i + TSimd.Count;
            TSimd.Store(Normalized<TSimd, TVector>(TSimd.Load(ref x, k), TSimd.Load(ref gamma, k), TSimd.Load(ref beta, k), cv, rv, ov), ref y, k);
        }
        for (; i <= n - TSimd.Count; i += TSimd.Count)
            TSimd.Store(Normalized<TSimd, TVector>(TSimd.Load(ref x, i), TSimd.Load(ref gamma, i), TSimd.Load(ref beta, i), cv, rv, ov), ref y, i);
        for (; i < n; i++)
            Unsafe.Add(ref y, i) = Normalized<SimdScalar<T>, T>(Unsafe.Add(ref x, i), Unsafe.Add(ref gamma, i), Unsafe.Add(ref beta, i), c, r, o);
    }

    /// <summary>
    /// The backward reductions of n elements of one row: Σ g and Σ g*(x - c) with g = gamma*dy, added to the row's
    /// totals; and per column dbeta += dy, dgamma += dy*xhat into the band accumulators.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void RowGradientSums<TSimd, TVector>(ref T x, ref T dy, ref T gamma, ref T dBeta, ref T dGamma, int n, T c, T r, T o,
        ref double sumG, ref double sumGCentered)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        TVector cv = TSimd.Broadcast(c), rv = TSimd.Broadcast(r), ov = TSimd.Broadcast(o);
        int i = 0;
        while (i < n)
        {
            int blockEnd = Math.Min(n, i + RunBlock);
            TVector s1 = TSimd.Zero, s2 = TSimd.Zero;
            for (; i <= blockEnd - TSimd.Count; i += TSimd.Count)
            {
                TVector xv = TSimd.Load(ref x, i), dyv = TSimd.Load(ref dy, i);
                TVector centered = TSimd.Subtract(xv, cv);
                TVector g = TSimd.MultiplyAdd(TSimd.Load(ref gamma, i), dyv, TSimd.Zero);
                s1 = TSimd.Add(s1, g);
                s2 = TSimd.MultiplyAdd(g, centered, s2);
                TSimd.Store(TSimd.Add(TSimd.Load(ref dBeta, i), dyv), ref dBeta, i);
                TSimd.Store(TSimd.MultiplyAdd(dyv, TSimd.MultiplyAdd(centered, rv, ov), TSimd.Load(ref dGamma, i)), ref dGamma, i);
            }
            T u1 = TSimd.Sum(s1), u2 = TSimd.Sum(s2);
            for (; i < blockEnd; i++)
            {
                T dyi = Unsafe.Add(ref dy, i), centered = Unsafe.Add(ref x, i) - c;
                T g = T.FusedMultiplyAdd(Unsafe.Add(ref gamma, i), dyi, T.Zero);
                u1 += g;
                u2 = T.FusedMultiplyAdd(g, centered, u2);
                Unsafe.Add(ref dBeta, i) += dyi;
                Unsafe.Add(ref dGamma, i) = T.FusedMultiplyAdd(dyi, T.FusedMultiplyAdd(centered, r, o), Unsafe.Add(ref dGamma, i));
            }
            sumG += double.CreateTruncating(u1);
            sumGCentered += double.CreateTruncating(u2);
        }
    }

    /// <summary>
    /// dx = gamma*dy*r + q*(x - c) + w over n elements (the closed form with the row's coefficients); with
    /// <paramref name="throughStatistics"/> false (fixed statistics) dx = gamma*dy*r alone.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe void RowInputGradient<TSimd, TVector>(ref T x, ref T dy, ref T gamma, ref T dx, int n, T c, T r, T q, T w,
        bool throughStatistics, bool streaming)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        TVector cv = TSimd.Broadcast(c), rv = TSimd.Broadcast(r), qv = TSimd.Broadcast(q), wv = TSimd.Broadcast(w);
        int i = 0;
        if (!throughStatistics)
        {
            // No x term at all: an infinite x must not turn dx into NaN through 0 * inf.
            for (; i <= n - TSimd.Count; i += TSimd.Count)
                TSimd.Store(TSimd.MultiplyAdd(TSimd.MultiplyAdd(TSimd.Load(ref gamma, i), TSimd.Load(ref dy, i), TSimd.Zero), rv, TSimd.Zero), ref dx, i);
            for (; i < n; i++)
                Unsafe.Add(ref dx, i) = T.FusedMultiplyAdd(T.FusedMultiplyAdd(Unsafe.Add(ref gamma, i), Unsafe.Add(ref dy, i), T.Zero), r, T.Zero);
            return;
        }
        if (streaming && TSimd.Count > 1)
        {
            for (; i < n && !IsVectorAligned<TSimd, TVector>(ref Unsafe.Add(ref dx, i)); i++)
                Unsafe.Add(ref dx, i) = InputGradient<SimdScalar<T>, T>(Unsafe.Add(ref x, i), Unsafe.Add(ref dy, i), Unsafe.Add(ref gamma, i), c, r, q, w);
            for (; i <= n - TSimd.Count; i += TSimd.Count)
                TSimd.StoreStreaming(InputGradient<TSimd, TVector>(TSimd.Load(ref x, i), TSimd.Load(ref dy, i), TSimd.Load(ref gamma, i), cv, rv, qv, wv), ref dx, i);
        }
        for (; i <= n - TSimd.Count; i += TSimd.Count)
            TSimd.Store(InputGradient<TSimd, TVector>(TSimd.Load(ref x, i), TSimd.Load(ref dy, i), TSimd.Load(ref gamma, i), cv, rv, qv, wv), ref dx, i);
        for (; i < n; i++)
            Unsafe.Add(ref dx, i) = InputGradient<SimdScalar<T>, T>(Unsafe.Add(ref x, i), Unsafe.Add(ref dy, i), Unsafe.Add(ref gamma, i), c, r, q, w);
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
