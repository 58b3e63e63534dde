using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace SharpNorm.Kernels;

/// <summary>An element-wise pair of sums, accumulated per (a, b, j) over (r, s).</summary>
internal interface IPairSumOp
{
    /// <summary>Whether the op reads the second input (the kernel skips its loads otherwise).</summary>
    static abstract bool ReadsSecond { get; }

    static abstract void Step<T, TSimd, TVector>(TVector x, TVector second, TVector center, ref TVector sum1, ref TVector sum2)
        where T : unmanaged, IFloatingPointIeee754<T>
        where TSimd : ISimd<T, TVector>
        where TVector : struct;
}

/// <summary>Shifted moments: sum (x - c) and sum (x - c)^2. Shifting by a value of the group keeps float sums exact enough.</summary>
internal readonly struct MomentsOp : IPairSumOp
{
    public static bool ReadsSecond => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Step<T, TSimd, TVector>(TVector x, TVector second, TVector center, ref TVector sum1, ref TVector sum2)
        where T : unmanaged, IFloatingPointIeee754<T>
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        TVector d = TSimd.Subtract(x, center);
        sum1 = TSimd.Add(sum1, d);
        sum2 = TSimd.MultiplyAdd(d, d, sum2);
    }
}

/// <summary>Backward reductions: sum dy and sum dy * (x - c), from which dbeta, dgamma and the dx coefficients follow.</summary>
internal readonly struct GradientSumsOp : IPairSumOp
{
    public static bool ReadsSecond => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Step<T, TSimd, TVector>(TVector x, TVector dy, TVector center, ref TVector sum1, ref TVector sum2)
        where T : unmanaged, IFloatingPointIeee754<T>
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        sum1 = TSimd.Add(sum1, dy);
        sum2 = TSimd.MultiplyAdd(dy, TSimd.Subtract(x, center), sum2);
    }
}

/// <summary>An element-wise map with per-(a, b, j) coefficients: out = f(x, second; c, p, q, w).</summary>
internal interface IApplyOp
{
    static abstract bool ReadsSecond { get; }

    static abstract TVector Apply<T, TSimd, TVector>(TVector x, TVector second, TVector center, TVector p, TVector q, TVector w)
        where T : unmanaged, IFloatingPointIeee754<T>
        where TSimd : ISimd<T, TVector>
        where TVector : struct;
}

/// <summary>Normalize and affine in one expression: y = (x - c) * p + q, with p = gamma*invstd and q = beta + (c - mean)*p.</summary>
internal readonly struct NormalizeOp : IApplyOp
{
    public static bool ReadsSecond => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TVector Apply<T, TSimd, TVector>(TVector x, TVector second, TVector center, TVector p, TVector q, TVector w)
        where T : unmanaged, IFloatingPointIeee754<T>
        where TSimd : ISimd<T, TVector>
        where TVector : struct
        => TSimd.MultiplyAdd(TSimd.Subtract(x, center), p, q);
}

/// <summary>The closed-form input gradient, one expression per element: dx = p*dy + q*(x - c) + w.</summary>
internal readonly struct InputGradientOp : IApplyOp
{
    public static bool ReadsSecond => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TVector Apply<T, TSimd, TVector>(TVector x, TVector dy, TVector center, TVector p, TVector q, TVector w)
        where T : unmanaged, IFloatingPointIeee754<T>
        where TSimd : ISimd<T, TVector>
        where TVector : struct
        => TSimd.MultiplyAdd(p, dy, TSimd.MultiplyAdd(q, TSimd.Subtract(x, center), w));
}

/// <summary>
/// The two loop shapes of the engine, written once and specialized per vector width and op:
/// a <em>run</em> shape that vectorizes along the contiguous s-run of each (a, r, b, j), and a
/// <em>column</em> shape (s-runs of one element) that vectorizes across the (b, j) row.
/// Loops visit memory in storage order and each sum is accumulated in a fixed order, so results
/// depend on the problem alone.
/// </summary>
internal static class NormKernels<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>Vector lanes accumulate this many elements (run shape) or rows (column shape) in T before the partial sum moves into double.</summary>
    private const int RunBlock = 2048;
    private const int RowBlock = 64;

    /// <summary>
    /// For every (a, b, j): sum1 = Σ f1, sum2 = Σ f2 over (r, s), with the op's element-wise f.
    /// <paramref name="rowScratch"/> needs 2*B*J elements in the column shape.
    /// </summary>
    public static void PairSums<TOp>(int maxVectorBits, in NormGeometry g, ReadOnlySpan<T> x, ReadOnlySpan<T> second,
        ReadOnlySpan<T> center, Span<double> sum1, Span<double> sum2, Span<T> rowScratch)
        where TOp : struct, IPairSumOp
    {
        sum1[..g.CoefficientCount].Clear();
        sum2[..g.CoefficientCount].Clear();
        if (maxVectorBits >= 512 && Simd512<T>.IsUsable)
            PairSums<TOp, Simd512<T>, System.Runtime.Intrinsics.Vector512<T>>(g, x, second, center, sum1, sum2, rowScratch);
        else if (maxVectorBits >= 256 && Simd256<T>.IsUsable)
            PairSums<TOp, Simd256<T>, System.Runtime.Intrinsics.Vector256<T>>(g, x, second, center, sum1, sum2, rowScratch);
        else if (maxVectorBits >= 128 && Simd128<T>.IsUsable)
            PairSums<TOp, Simd128<T>, System.Runtime.Intrinsics.Vector128<T>>(g, x, second, center, sum1, sum2, rowScratch);
        else
            PairSums<TOp, SimdScalar<T>, T>(g, x, second, center, sum1, sum2, rowScratch);
    }

    /// <summary>For every element: out = op(x, second) with the coefficients of its (a, b, j).</summary>
    public static void Apply<TOp>(int maxVectorBits, in NormGeometry g, ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output,
        ReadOnlySpan<T> center, ReadOnlySpan<T> p, ReadOnlySpan<T> q, ReadOnlySpan<T> w)
        where TOp : struct, IApplyOp
    {
        if (maxVectorBits >= 512 && Simd512<T>.IsUsable)
            Apply<TOp, Simd512<T>, System.Runtime.Intrinsics.Vector512<T>>(g, x, second, output, center, p, q, w);
        else if (maxVectorBits >= 256 && Simd256<T>.IsUsable)
            Apply<TOp, Simd256<T>, System.Runtime.Intrinsics.Vector256<T>>(g, x, second, output, center, p, q, w);
        else if (maxVectorBits >= 128 && Simd128<T>.IsUsable)
            Apply<TOp, Simd128<T>, System.Runtime.Intrinsics.Vector128<T>>(g, x, second, output, center, p, q, w);
        else
            Apply<TOp, SimdScalar<T>, T>(g, x, second, output, center, p, q, w);
    }

    private static void PairSums<TOp, TSimd, TVector>(in NormGeometry g, ReadOnlySpan<T> x, ReadOnlySpan<T> second,
        ReadOnlySpan<T> center, Span<double> sum1, Span<double> sum2, Span<T> rowScratch)
        where TOp : struct, IPairSumOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        ref T x0 = ref MemoryMarshal.GetReference(x);
        ref T second0 = ref TOp.ReadsSecond ? ref MemoryMarshal.GetReference(second) : ref x0;
        int width = g.B * g.J;

        if (!g.IsColumnShape)
        {
            for (int a = 0; a < g.A; a++)
                for (int r = 0; r < g.R; r++)
                    for (int b = 0; b < g.B; b++)
                        for (int j = 0; j < g.J; j++)
                        {
                            int k = (a * g.B + b) * g.J + j;
                            nint offset = g.Offset(a, r, b, j);
                            RunSums<TOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref second0, offset),
                                g.S, center[k], ref sum1[k], ref sum2[k]);
                        }
            return;
        }

        Span<T> block1 = rowScratch[..width];
        Span<T> block2 = rowScratch.Slice(width, width);
        for (int a = 0; a < g.A; a++)
        {
            ReadOnlySpan<T> rowCenter = center.Slice(a * width, width);
            Span<double> total1 = sum1.Slice(a * width, width);
            Span<double> total2 = sum2.Slice(a * width, width);
            for (int r0 = 0; r0 < g.R; r0 += RowBlock)
            {
                block1.Clear();
                block2.Clear();
                int rowEnd = Math.Min(g.R, r0 + RowBlock);
                for (int r = r0; r < rowEnd; r++)
                {
                    nint offset = ((nint)a * g.R + r) * width;
                    RowSums<TOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref second0, offset), width,
                        ref MemoryMarshal.GetReference(rowCenter), ref MemoryMarshal.GetReference(block1), ref MemoryMarshal.GetReference(block2));
                }
                for (int c = 0; c < width; c++)
                {
                    total1[c] += double.CreateTruncating(block1[c]);
                    total2[c] += double.CreateTruncating(block2[c]);
                }
            }
        }
    }

    /// <summary>Sums of one contiguous run of n elements, moved into the double totals block by block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void RunSums<TOp, TSimd, TVector>(ref T x, ref T second, int n, T center, ref double total1, ref double total2)
        where TOp : struct, IPairSumOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        TVector c = TSimd.Broadcast(center);
        int i = 0;
        while (i < n)
        {
            int blockEnd = Math.Min(n, i + RunBlock);
            TVector s1 = TSimd.Zero, s2 = TSimd.Zero;
            for (; i <= blockEnd - TSimd.Count; i += TSimd.Count)
            {
                TVector xv = TSimd.Load(ref x, i);
                TVector ov = TOp.ReadsSecond ? TSimd.Load(ref second, i) : xv;
                TOp.Step<T, TSimd, TVector>(xv, ov, c, ref s1, ref s2);
            }
            T t1 = TSimd.Sum(s1), t2 = TSimd.Sum(s2);
            for (; i < blockEnd; i++)
            {
                T xs = Unsafe.Add(ref x, i);
                T os = TOp.ReadsSecond ? Unsafe.Add(ref second, i) : xs;
                TOp.Step<T, SimdScalar<T>, T>(xs, os, center, ref t1, ref t2);
            }
            total1 += double.CreateTruncating(t1);
            total2 += double.CreateTruncating(t2);
        }
    }

    /// <summary>Adds one row's elements into per-column T partial sums.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void RowSums<TOp, TSimd, TVector>(ref T x, ref T second, int width, ref T center, ref T block1, ref T block2)
        where TOp : struct, IPairSumOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int c = 0;
        for (; c <= width - TSimd.Count; c += TSimd.Count)
        {
            TVector xv = TSimd.Load(ref x, c);
            TVector ov = TOp.ReadsSecond ? TSimd.Load(ref second, c) : xv;
            TVector s1 = TSimd.Load(ref block1, c), s2 = TSimd.Load(ref block2, c);
            TOp.Step<T, TSimd, TVector>(xv, ov, TSimd.Load(ref center, c), ref s1, ref s2);
            TSimd.Store(s1, ref block1, c);
            TSimd.Store(s2, ref block2, c);
        }
        for (; c < width; c++)
        {
            T xs = Unsafe.Add(ref x, c);
            T os = TOp.ReadsSecond ? Unsafe.Add(ref second, c) : xs;
            TOp.Step<T, SimdScalar<T>, T>(xs, os, Unsafe.Add(ref center, c), ref Unsafe.Add(ref block1, c), ref Unsafe.Add(ref block2, c));
        }
    }

    private static void Apply<TOp, TSimd, TVector>(in NormGeometry g, ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output,
        ReadOnlySpan<T> center, ReadOnlySpan<T> p, ReadOnlySpan<T> q, ReadOnlySpan<T> w)
        where TOp : struct, IApplyOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        ref T x0 = ref MemoryMarshal.GetReference(x);
        ref T second0 = ref TOp.ReadsSecond ? ref MemoryMarshal.GetReference(second) : ref x0;
        ref T out0 = ref MemoryMarshal.GetReference(output);
        ref T w0 = ref TOp.ReadsSecond ? ref MemoryMarshal.GetReference(w) : ref MemoryMarshal.GetReference(q);

        if (!g.IsColumnShape)
        {
            for (int a = 0; a < g.A; a++)
                for (int r = 0; r < g.R; r++)
                    for (int b = 0; b < g.B; b++)
                        for (int j = 0; j < g.J; j++)
                        {
                            int k = (a * g.B + b) * g.J + j;
                            nint offset = g.Offset(a, r, b, j);
                            ApplyRun<TOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref second0, offset),
                                ref Unsafe.Add(ref out0, offset), g.S, center[k], p[k], q[k], Unsafe.Add(ref w0, k));
                        }
            return;
        }

        int width = g.B * g.J;
        for (int a = 0; a < g.A; a++)
        {
            ref T c0 = ref Unsafe.Add(ref MemoryMarshal.GetReference(center), a * width);
            ref T p0 = ref Unsafe.Add(ref MemoryMarshal.GetReference(p), a * width);
            ref T q0 = ref Unsafe.Add(ref MemoryMarshal.GetReference(q), a * width);
            ref T wa = ref Unsafe.Add(ref w0, a * width);
            for (int r = 0; r < g.R; r++)
            {
                nint offset = ((nint)a * g.R + r) * width;
                ApplyRow<TOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref second0, offset),
                    ref Unsafe.Add(ref out0, offset), width, ref c0, ref p0, ref q0, ref wa);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ApplyRun<TOp, TSimd, TVector>(ref T x, ref T second, ref T output, int n, T center, T p, T q, T w)
        where TOp : struct, IApplyOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        TVector cv = TSimd.Broadcast(center), pv = TSimd.Broadcast(p), qv = TSimd.Broadcast(q), wv = TSimd.Broadcast(w);
        int i = 0;
        for (; i <= n - TSimd.Count; i += TSimd.Count)
        {
            TVector xv = TSimd.Load(ref x, i);
            TVector ov = TOp.ReadsSecond ? TSimd.Load(ref second, i) : xv;
            TSimd.Store(TOp.Apply<T, TSimd, TVector>(xv, ov, cv, pv, qv, wv), ref output, i);
        }
        for (; i < n; i++)
        {
            T xs = Unsafe.Add(ref x, i);
            T os = TOp.ReadsSecond ? Unsafe.Add(ref second, i) : xs;
            Unsafe.Add(ref output, i) = TOp.Apply<T, SimdScalar<T>, T>(xs, os, center, p, q, w);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ApplyRow<TOp, TSimd, TVector>(ref T x, ref T second, ref T output, int width, ref T center, ref T p, ref T q, ref T w)
        where TOp : struct, IApplyOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int c = 0;
        for (; c <= width - TSimd.Count; c += TSimd.Count)
        {
            TVector xv = TSimd.Load(ref x, c);
            TVector ov = TOp.ReadsSecond ? TSimd.Load(ref second, c) : xv;
            TVector wv = TOp.ReadsSecond ? TSimd.Load(ref w, c) : TSimd.Zero;
            TSimd.Store(TOp.Apply<T, TSimd, TVector>(xv, ov, TSimd.Load(ref center, c), TSimd.Load(ref p, c), TSimd.Load(ref q, c), wv), ref output, c);
        }
        for (; c < width; c++)
        {
            T xs = Unsafe.Add(ref x, c);
            T os = TOp.ReadsSecond ? Unsafe.Add(ref second, c) : xs;
            T ws = TOp.ReadsSecond ? Unsafe.Add(ref w, c) : T.Zero;
            Unsafe.Add(ref output, c) = TOp.Apply<T, SimdScalar<T>, T>(xs, os, Unsafe.Add(ref center, c), Unsafe.Add(ref p, c), Unsafe.Add(ref q, c), ws);
        }
    }
}
