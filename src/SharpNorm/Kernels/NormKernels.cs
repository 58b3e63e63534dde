using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

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

/// <summary>Scaling alone: out = x * p (the input gradient through fixed statistics, applied to dy).</summary>
internal readonly struct ScaleOp : IApplyOp
{
    public static bool ReadsSecond => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static TVector Apply<T, TSimd, TVector>(TVector x, TVector second, TVector center, TVector p, TVector q, TVector w)
        where T : unmanaged, IFloatingPointIeee754<T>
        where TSimd : ISimd<T, TVector>
        where TVector : struct
        => TSimd.MultiplyAdd(x, p, TSimd.Zero);
}

/// <summary>
/// The two loop shapes of the engine, written once and specialized per vector width and op: a <em>run</em> shape that
/// vectorizes along the contiguous s-runs of a slot k = (a, b, j), and a <em>column</em> shape (s-runs of one element)
/// that vectorizes across the row of W = B*J slots. Each entry point does one unit of a <see cref="NormPlan"/>;
/// inside a unit the order of every sum is fixed, so results depend on the problem alone.
/// </summary>
internal static partial class NormKernels<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>Vector lanes accumulate this many elements of a run in T before the partial sum moves into double.</summary>
    private const int RunBlock = 2048;

    /// <summary>Run shape: for units [firstUnit, endUnit), the op's two sums of each unit in double, into partial1/2[unit].</summary>
    public static void RunUnitSums<TOp>(int maxVectorBits, in NormPlan plan, ReadOnlySpan<T> x, ReadOnlySpan<T> second,
        ReadOnlySpan<T> center, int firstUnit, int endUnit, Span<double> partial1, Span<double> partial2)
        where TOp : struct, IPairSumOp
    {
        if (maxVectorBits >= 512 && Simd512<T>.IsUsable)
            RunUnitSums<TOp, Simd512<T>, Vector512<T>>(plan, x, second, center, firstUnit, endUnit, partial1, partial2);
        else if (maxVectorBits >= 256 && Simd256<T>.IsUsable)
            RunUnitSums<TOp, Simd256<T>, Vector256<T>>(plan, x, second, center, firstUnit, endUnit, partial1, partial2);
        else if (maxVectorBits >= 128 && Simd128<T>.IsUsable)
            RunUnitSums<TOp, Simd128<T>, Vector128<T>>(plan, x, second, center, firstUnit, endUnit, partial1, partial2);
        else
            RunUnitSums<TOp, SimdScalar<T>, T>(plan, x, second, center, firstUnit, endUnit, partial1, partial2);
    }

    /// <summary>
    /// Run shape: for units [firstUnit, endUnit), output = op(x, second) with the coefficients of each unit's slot;
    /// with streaming stores, x (and the second input) <paramref name="prefetchAhead"/> elements on is prefetched (see
    /// <see cref="ApplyRun"/>).
    /// <paramref name="backwards"/> walks the units and their runs last to first; every element gets the same value.
    /// </summary>
    public static void RunUnitApply<TOp>(int maxVectorBits, in NormPlan plan, ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output,
        int firstUnit, int endUnit, ReadOnlySpan<T> center, ReadOnlySpan<T> p, ReadOnlySpan<T> q, ReadOnlySpan<T> w, bool streaming, nint prefetchAhead = 0,
        bool backwards = false)
        where TOp : struct, IApplyOp
    {
        if (maxVectorBits >= 512 && Simd512<T>.IsUsable)
            RunUnitApply<TOp, Simd512<T>, Vector512<T>>(plan, x, second, output, firstUnit, endUnit, center, p, q, w, streaming, prefetchAhead, backwards);
        else if (maxVectorBits >= 256 && Simd256<T>.IsUsable)
            RunUnitApply<TOp, Simd256<T>, Vector256<T>>(plan, x, second, output, firstUnit, endUnit, center, p, q, w, streaming, prefetchAhead, backwards);
        else if (maxVectorBits >= 128 && Simd128<T>.IsUsable)
            RunUnitApply<TOp, Simd128<T>, Vector128<T>>(plan, x, second, output, firstUnit, endUnit, center, p, q, w, streaming, prefetchAhead, backwards);
        else
            RunUnitApply<TOp, SimdScalar<T>, T>(plan, x, second, output, firstUnit, endUnit, center, p, q, w, streaming, prefetchAhead, backwards);
    }

    /// <summary>Run shape, storage order: for apply units [firstUnit, endUnit) of the plan, output = op(x, second) with each run's slot coefficients.</summary>
    public static void RunApplyInStorageOrder<TOp>(int maxVectorBits, in NormPlan plan, ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output,
        int firstUnit, int endUnit, ReadOnlySpan<T> center, ReadOnlySpan<T> p, ReadOnlySpan<T> q, ReadOnlySpan<T> w, bool streaming)
        where TOp : struct, IApplyOp
    {
        if (maxVectorBits >= 512 && Simd512<T>.IsUsable)
            RunApplyInStorageOrder<TOp, Simd512<T>, Vector512<T>>(plan, x, second, output, firstUnit, endUnit, center, p, q, w, streaming);
        else if (maxVectorBits >= 256 && Simd256<T>.IsUsable)
            RunApplyInStorageOrder<TOp, Simd256<T>, Vector256<T>>(plan, x, second, output, firstUnit, endUnit, center, p, q, w, streaming);
        else if (maxVectorBits >= 128 && Simd128<T>.IsUsable)
            RunApplyInStorageOrder<TOp, Simd128<T>, Vector128<T>>(plan, x, second, output, firstUnit, endUnit, center, p, q, w, streaming);
        else
            RunApplyInStorageOrder<TOp, SimdScalar<T>, T>(plan, x, second, output, firstUnit, endUnit, center, p, q, w, streaming);
    }

    /// <summary>
    /// Column shape: for units [firstUnit, endUnit), the op's two sums over each unit's rows, per column, into
    /// partial1/2[unit*W + column]. <paramref name="scratch"/> holds 2*W elements.
    /// </summary>
    public static void RowUnitSums<TOp>(int maxVectorBits, in NormPlan plan, ReadOnlySpan<T> x, ReadOnlySpan<T> second,
        ReadOnlySpan<T> center, int firstUnit, int endUnit, Span<double> partial1, Span<double> partial2, Span<T> scratch)
        where TOp : struct, IPairSumOp
    {
        if (maxVectorBits >= 512 && Simd512<T>.IsUsable)
            RowUnitSums<TOp, Simd512<T>, Vector512<T>>(plan, x, second, center, firstUnit, endUnit, partial1, partial2, scratch);
        else if (maxVectorBits >= 256 && Simd256<T>.IsUsable)
            RowUnitSums<TOp, Simd256<T>, Vector256<T>>(plan, x, second, center, firstUnit, endUnit, partial1, partial2, scratch);
        else if (maxVectorBits >= 128 && Simd128<T>.IsUsable)
            RowUnitSums<TOp, Simd128<T>, Vector128<T>>(plan, x, second, center, firstUnit, endUnit, partial1, partial2, scratch);
        else
            RowUnitSums<TOp, SimdScalar<T>, T>(plan, x, second, center, firstUnit, endUnit, partial1, partial2, scratch);
    }

    /// <summary>
    /// Column shape: for units [firstUnit, endUnit), output = op(x, second) with per-column coefficients (W per a).
    /// Where W is a multiple of the vector length the output's stores are aligned (and cache-bypassing with streaming),
    /// and scratch (4W long) holds the rotated coefficient rows.
    /// </summary>
    public static void RowUnitApply<TOp>(int maxVectorBits, in NormPlan plan, ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output,
        int firstUnit, int endUnit, ReadOnlySpan<T> center, ReadOnlySpan<T> p, ReadOnlySpan<T> q, ReadOnlySpan<T> w, bool streaming = false, Span<T> scratch = default)
        where TOp : struct, IApplyOp
    {
        if (maxVectorBits >= 512 && Simd512<T>.IsUsable)
            RowUnitApply<TOp, Simd512<T>, Vector512<T>>(plan, x, second, output, firstUnit, endUnit, center, p, q, w, streaming, scratch);
        else if (maxVectorBits >= 256 && Simd256<T>.IsUsable)
            RowUnitApply<TOp, Simd256<T>, Vector256<T>>(plan, x, second, output, firstUnit, endUnit, center, p, q, w, streaming, scratch);
        else if (maxVectorBits >= 128 && Simd128<T>.IsUsable)
            RowUnitApply<TOp, Simd128<T>, Vector128<T>>(plan, x, second, output, firstUnit, endUnit, center, p, q, w, streaming, scratch);
        else
            RowUnitApply<TOp, SimdScalar<T>, T>(plan, x, second, output, firstUnit, endUnit, center, p, q, w, streaming: false, scratch);
    }

    /// <summary>The slot of a run-shape unit and the element ranges it covers: runs [rBegin, rEnd) from sBegin, sLength long.</summary>
    private static (int a, int b, int j, int rBegin, int rEnd, int sBegin, int sLength) RunUnit(in NormPlan plan, int unit)
    {
        NormGeometry g = plan.Geometry;
        int k = unit / plan.UnitsPerSlot, piece = unit % plan.UnitsPerSlot;
        int j = k % g.J, group = k / g.J, b = group % g.B, a = group / g.B;
        if (plan.SlicesPerRun == 1)
        {
            int rBegin = piece * plan.RunsPerUnit;
            return (a, b, j, rBegin, Math.Min(g.R, rBegin + plan.RunsPerUnit), 0, g.S);
        }
        int r = piece / plan.SlicesPerRun, sBegin = piece % plan.SlicesPerRun * plan.SliceLength;
        return (a, b, j, r, r + 1, sBegin, Math.Min(plan.SliceLength, g.S - sBegin));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunUnitSums<TOp, TSimd, TVector>(in NormPlan plan, ReadOnlySpan<T> x, ReadOnlySpan<T> second,
        ReadOnlySpan<T> center, int firstUnit, int endUnit, Span<double> partial1, Span<double> partial2)
        where TOp : struct, IPairSumOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        ref T x0 = ref MemoryMarshal.GetReference(x);
        ref T second0 = ref TOp.ReadsSecond ? ref MemoryMarshal.GetReference(second) : ref x0;
        for (int unit = firstUnit; unit < endUnit; unit++)
        {
            var (a, b, j, rBegin, rEnd, sBegin, sLength) = RunUnit(plan, unit);
            T c = center[unit / plan.UnitsPerSlot];
            double sum1 = 0, sum2 = 0;
            for (int r = rBegin; r < rEnd; r++)
            {
                nint offset = plan.Geometry.Offset(a, r, b, j) + sBegin;
                RunSums<TOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref second0, offset), sLength, c, ref sum1, ref sum2);
            }
            partial1[unit] = sum1;
            partial2[unit] = sum2;
        }
    }

    /// <summary>Sums of one contiguous run of n elements, moved into the double totals block by block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static void RunSums<TOp, TSimd, TVector>(ref T x, ref T second, int n, T center, ref double total1, ref double total2)
        where TOp : struct, IPairSumOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        TVector c = TSimd.Broadcast(center);
        int i = 0;
        while (i < n)
        {
            int blockEnd = Math.Min(n, i + RunBlock);
            // Two accumulator pairs hide the add latency; they are combined in a fixed order.
            TVector s1 = TSimd.Zero, s2 = TSimd.Zero, t1 = TSimd.Zero, t2 = TSimd.Zero;
            for (; i <= blockEnd - 2 * TSimd.Count; i += 2 * TSimd.Count)
            {
                TVector x1 = TSimd.Load(ref x, i), x2 = TSimd.Load(ref x, i + TSimd.Count);
                TVector o1 = TOp.ReadsSecond ? TSimd.Load(ref second, i) : x1;
                TVector o2 = TOp.ReadsSecond ? TSimd.Load(ref second, i + TSimd.Count) : x2;
                TOp.Step<T, TSimd, TVector>(x1, o1, c, ref s1, ref s2);
                TOp.Step<T, TSimd, TVector>(x2, o2, c, ref t1, ref t2);
            }
            for (; i <= blockEnd - TSimd.Count; i += TSimd.Count)
            {
                TVector xv = TSimd.Load(ref x, i);
                TVector ov = TOp.ReadsSecond ? TSimd.Load(ref second, i) : xv;
                TOp.Step<T, TSimd, TVector>(xv, ov, c, ref s1, ref s2);
            }
            T u1 = TSimd.Sum(TSimd.Add(s1, t1)), u2 = TSimd.Sum(TSimd.Add(s2, t2));
            for (; i < blockEnd; i++)
            {
                T xs = Unsafe.Add(ref x, i);
                T os = TOp.ReadsSecond ? Unsafe.Add(ref second, i) : xs;
                TOp.Step<T, SimdScalar<T>, T>(xs, os, center, ref u1, ref u2);
            }
            total1 += double.CreateTruncating(u1);
            total2 += double.CreateTruncating(u2);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RowUnitSums<TOp, TSimd, TVector>(in NormPlan plan, ReadOnlySpan<T> x, ReadOnlySpan<T> second,
        ReadOnlySpan<T> center, int firstUnit, int endUnit, Span<double> partials1, Span<double> partials2, Span<T> scratch)
        where TOp : struct, IPairSumOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int width = plan.Geometry.B * plan.Geometry.J;
        for (int unit = firstUnit; unit < endUnit; unit++)
        {
            int a = unit / plan.UnitsPerSlot;
            RowUnitSums<TOp, TSimd, TVector>(plan, x, second, center.Slice(a * width, width), unit,
                partials1.Slice(unit * width, width), partials2.Slice(unit * width, width), scratch);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RowUnitSums<TOp, TSimd, TVector>(in NormPlan plan, ReadOnlySpan<T> x, ReadOnlySpan<T> second,
        ReadOnlySpan<T> center, int unit, Span<double> partial1, Span<double> partial2, Span<T> scratch)
        where TOp : struct, IPairSumOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        NormGeometry g = plan.Geometry;
        int width = g.B * g.J;
        ref T x0 = ref MemoryMarshal.GetReference(x);
        ref T second0 = ref TOp.ReadsSecond ? ref MemoryMarshal.GetReference(second) : ref x0;
        Span<T> block1 = scratch[..width], block2 = scratch.Slice(width, width);
        int a = unit / plan.UnitsPerSlot, rBegin = unit % plan.UnitsPerSlot * plan.RowsPerUnit;
        int rEnd = Math.Min(g.R, rBegin + plan.RowsPerUnit);
        partial1.Clear();
        partial2.Clear();
        for (int r0 = rBegin; r0 < rEnd; r0 += NormPlan.RowBlock)
        {
            int blockEnd = Math.Min(rEnd, r0 + NormPlan.RowBlock);
            if (width <= NarrowRow)
            {
                // Narrow rows (channels-last with few channels): columns accumulate in registers down the block.
                nint first = ((nint)a * g.R + r0) * width;
                NarrowRowSums<TOp, TSimd, TVector>(ref Unsafe.Add(ref x0, first), ref Unsafe.Add(ref second0, first), blockEnd - r0, width,
                    ref MemoryMarshal.GetReference(center), ref MemoryMarshal.GetReference(block1), ref MemoryMarshal.GetReference(block2));
            }
            else
            {
                block1.Clear();
                block2.Clear();
                WideRowSums<TOp, TSimd, TVector>(ref x0, ref second0, a, r0, blockEnd, g.R, width,
                    ref MemoryMarshal.GetReference(center), ref MemoryMarshal.GetReference(block1), ref MemoryMarshal.GetReference(block2));
            }
            for (int c = 0; c < width; c++)
            {
                partial1[c] += double.CreateTruncating(block1[c]);
                partial2[c] += double.CreateTruncating(block2[c]);
            }
        }
    }

    /// <summary>Rows no wider than this keep their column sums in registers down a block of rows.</summary>
    private const int NarrowRow = 256;

    /// <summary>
    /// Sums down <paramref name="rows"/> rows per column into block1/block2 (overwritten), four vectors of columns at a
    /// time held in registers. Each column is added in row order, as in the wide-row loop.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void NarrowRowSums<TOp, TSimd, TVector>(ref T x, ref T second, int rows, int width, ref T center, ref T block1, ref T block2)
        where TOp : struct, IPairSumOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int n = TSimd.Count, c = 0;
        for (; c <= width - 4 * n; c += 4 * n)
        {
            TVector c0 = TSimd.Load(ref center, c), c1 = TSimd.Load(ref center, c + n), c2 = TSimd.Load(ref center, c + 2 * n), c3 = TSimd.Load(ref center, c + 3 * n);
            TVector a0 = TSimd.Zero, a1 = TSimd.Zero, a2 = TSimd.Zero, a3 = TSimd.Zero, b0 = TSimd.Zero, b1 = TSimd.Zero, b2 = TSimd.Zero, b3 = TSimd.Zero;
            for (int row = 0; row < rows; row++)
            {
                nint i = (nint)row * width + c;
                TVector x0 = TSimd.Load(ref x, i), x1 = TSimd.Load(ref x, i + n), x2 = TSimd.Load(ref x, i + 2 * n), x3 = TSimd.Load(ref x, i + 3 * n);
                TOp.Step<T, TSimd, TVector>(x0, TOp.ReadsSecond ? TSimd.Load(ref second, i) : x0, c0, ref a0, ref b0);
                TOp.Step<T, TSimd, TVector>(x1, TOp.ReadsSecond ? TSimd.Load(ref second, i + n) : x1, c1, ref a1, ref b1);
                TOp.Step<T, TSimd, TVector>(x2, TOp.ReadsSecond ? TSimd.Load(ref second, i + 2 * n) : x2, c2, ref a2, ref b2);
                TOp.Step<T, TSimd, TVector>(x3, TOp.ReadsSecond ? TSimd.Load(ref second, i + 3 * n) : x3, c3, ref a3, ref b3);
            }
            TSimd.Store(a0, ref block1, c); TSimd.Store(a1, ref block1, c + n); TSimd.Store(a2, ref block1, c + 2 * n); TSimd.Store(a3, ref block1, c + 3 * n);
            TSimd.Store(b0, ref block2, c); TSimd.Store(b1, ref block2, c + n); TSimd.Store(b2, ref block2, c + 2 * n); TSimd.Store(b3, ref block2, c + 3 * n);
        }
        for (; c <= width - n; c += n)
        {
            TVector cv = TSimd.Load(ref center, c), s1 = TSimd.Zero, s2 = TSimd.Zero;
            for (int row = 0; row < rows; row++)
            {
                nint i = (nint)row * width + c;
                TVector xv = TSimd.Load(ref x, i);
                TOp.Step<T, TSimd, TVector>(xv, TOp.ReadsSecond ? TSimd.Load(ref second, i) : xv, cv, ref s1, ref s2);
            }
            TSimd.Store(s1, ref block1, c);
            TSimd.Store(s2, ref block2, c);
        }
        for (; c < width; c++)
        {
            T cs = Unsafe.Add(ref center, c), s1 = T.Zero, s2 = T.Zero;
            for (int row = 0; row < rows; row++)
            {
                nint i = (nint)row * width + c;
                T xs = Unsafe.Add(ref x, i);
                TOp.Step<T, SimdScalar<T>, T>(xs, TOp.ReadsSecond ? Unsafe.Add(ref second, i) : xs, cs, ref s1, ref s2);
            }
            Unsafe.Add(ref block1, c) = s1;
            Unsafe.Add(ref block2, c) = s2;
        }
    }

    /// <summary>Rows [r0, blockEnd) of a added into block1/block2, four rows per pass over the columns.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WideRowSums<TOp, TSimd, TVector>(ref T x0, ref T second0, int a, int r0, int blockEnd, int rowsPerA, int width,
        ref T center, ref T block1, ref T block2)
        where TOp : struct, IPairSumOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        {
            int r = r0;
            for (; r <= blockEnd - 4; r += 4)
            {
                nint offset = ((nint)a * rowsPerA + r) * width;
                RowSums4<TOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref second0, offset), width,
                    ref center, ref block1, ref block2);
            }
            for (; r < blockEnd; r++)
            {
                nint offset = ((nint)a * rowsPerA + r) * width;
                RowSums<TOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref second0, offset), width,
                    ref center, ref block1, ref block2);
            }
        }
    }

    /// <summary>Adds four consecutive rows into per-column T partial sums, in row order, loading each accumulator once.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void RowSums4<TOp, TSimd, TVector>(ref T x, ref T second, int width, ref T center, ref T block1, ref T block2)
        where TOp : struct, IPairSumOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int c = 0;
        for (; c <= width - TSimd.Count; c += TSimd.Count)
        {
            TVector cv = TSimd.Load(ref center, c);
            TVector s1 = TSimd.Load(ref block1, c), s2 = TSimd.Load(ref block2, c);
            for (int row = 0; row < 4; row++)
            {
                TVector xv = TSimd.Load(ref x, row * width + c);
                TVector ov = TOp.ReadsSecond ? TSimd.Load(ref second, row * width + c) : xv;
                TOp.Step<T, TSimd, TVector>(xv, ov, cv, ref s1, ref s2);
            }
            TSimd.Store(s1, ref block1, c);
            TSimd.Store(s2, ref block2, c);
        }
        for (; c < width; c++)
            for (int row = 0; row < 4; row++)
            {
                T xs = Unsafe.Add(ref x, row * width + c);
                T os = TOp.ReadsSecond ? Unsafe.Add(ref second, row * width + c) : xs;
                TOp.Step<T, SimdScalar<T>, T>(xs, os, Unsafe.Add(ref center, c), ref Unsafe.Add(ref block1, c), ref Unsafe.Add(ref block2, c));
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunApplyInStorageOrder<TOp, TSimd, TVector>(in NormPlan plan, ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output,
        int firstUnit, int endUnit, ReadOnlySpan<T> center, ReadOnlySpan<T> p, ReadOnlySpan<T> q, ReadOnlySpan<T> w, bool streaming)
        where TOp : struct, IApplyOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        NormGeometry g = plan.Geometry;
        ref T x0 = ref MemoryMarshal.GetReference(x);
        ref T second0 = ref TOp.ReadsSecond ? ref MemoryMarshal.GetReference(second) : ref x0;
        ref T out0 = ref MemoryMarshal.GetReference(output);
        long totalRuns = (long)g.A * g.R * g.B * g.J;
        long firstRun, endRun;
        int sBegin = 0, sLength = g.S;
        if (plan.ApplySlicesPerRun == 1)
        {
            firstRun = (long)firstUnit * plan.ApplyRunsPerUnit;
            endRun = Math.Min(totalRuns, (long)endUnit * plan.ApplyRunsPerUnit);
        }
        else
        {
            // A unit is one slice of one run; take the chunk's units one at a time.
            for (int unit = firstUnit; unit < endUnit; unit++)
            {
                long run = unit / plan.ApplySlicesPerRun;
                sBegin = unit % plan.ApplySlicesPerRun * plan.ApplySliceLength;
                sLength = Math.Min(plan.ApplySliceLength, g.S - sBegin);
                int k = SlotOfRun(g, run);
                nint offset = (nint)(run * g.S + sBegin);
                ApplyRun<TOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref second0, offset),
                    ref Unsafe.Add(ref out0, offset), sLength, center[k], p[k], q[k], TOp.ReadsSecond ? w[k] : T.Zero, streaming);
            }
            return;
        }

        // Runs in storage order: (a, r, b, j) counts up with j fastest.
        long t = firstRun;
        int j = (int)(t % g.J); t /= g.J;
        int b = (int)(t % g.B); t /= g.B;
        int r = (int)(t % g.R);
        int a = (int)(t / g.R);
        for (long run = firstRun; run < endRun; run++)
        {
            int k = (a * g.B + b) * g.J + j;
            nint offset = (nint)(run * g.S);
            ApplyRun<TOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref second0, offset),
                ref Unsafe.Add(ref out0, offset), g.S, center[k], p[k], q[k], TOp.ReadsSecond ? w[k] : T.Zero, streaming);
            if (++j == g.J) { j = 0; if (++b == g.B) { b = 0; if (++r == g.R) { r = 0; a++; } } }
        }
    }

    private static int SlotOfRun(in NormGeometry g, long run)
    {
        int j = (int)(run % g.J);
        long t = run / g.J;
        int b = (int)(t % g.B);
        int a = (int)(t / g.B / g.R);
        return (a * g.B + b) * g.J + j;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunUnitApply<TOp, TSimd, TVector>(in NormPlan plan, ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output,
        int firstUnit, int endUnit, ReadOnlySpan<T> center, ReadOnlySpan<T> p, ReadOnlySpan<T> q, ReadOnlySpan<T> w, bool streaming, nint prefetchAhead,
        bool backwards)
        where TOp : struct, IApplyOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        ref T x0 = ref MemoryMarshal.GetReference(x);
        ref T second0 = ref TOp.ReadsSecond ? ref MemoryMarshal.GetReference(second) : ref x0;
        ref T out0 = ref MemoryMarshal.GetReference(output);
        // Backwards: unit by unit from the last, each unit's runs from its last (a unit's sums read them first to last).
        int step = backwards ? -1 : 1;
        for (int unit = backwards ? endUnit - 1 : firstUnit; unit >= firstUnit && unit < endUnit; unit += step)
        {
            var (a, b, j, rBegin, rEnd, sBegin, sLength) = RunUnit(plan, unit);
            int k = unit / plan.UnitsPerSlot;
            T wk = TOp.ReadsSecond ? w[k] : T.Zero;
            for (int r = backwards ? rEnd - 1 : rBegin; r >= rBegin && r < rEnd; r += step)
            {
                nint offset = plan.Geometry.Offset(a, r, b, j) + sBegin;
                ApplyRun<TOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref second0, offset),
                    ref Unsafe.Add(ref out0, offset), sLength, center[k], p[k], q[k], wk, streaming, prefetchAhead);
            }
        }
    }

    /// <summary>
    /// output = op(x, second) over n elements. With streaming stores (x and output are larger than the cache), a
    /// nonzero <paramref name="prefetchAhead"/> prefetches x (and the second input) that many elements on, one cache
    /// line per line written: a pass segment by segment reads the next segment right after this one, and fetching it
    /// now overlaps those reads with this pass's stores (where BatchNorm and the backward do it: NormEngine's
    /// NextSegmentDistance and PrefetchesInBackward). Prefetches never fault, past the end either.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static unsafe void ApplyRun<TOp, TSimd, TVector>(ref T x, ref T second, ref T output, int n, T center, T p, T q, T w, bool streaming = false,
        nint prefetchAhead = 0)
        where TOp : struct, IApplyOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        TVector cv = TSimd.Broadcast(center), pv = TSimd.Broadcast(p), qv = TSimd.Broadcast(q), wv = TSimd.Broadcast(w);
        int i = 0;
        if (streaming && TSimd.Count > 1)
        {
            // Scalar steps up to the first vector-aligned output, then stores that skip the caches: no read-for-ownership
            // of an output too large to stay in cache anyway. Scalar and vector steps compute the same bits.
            nuint vectorBytes = (nuint)(TSimd.Count * sizeof(T));
            for (; i < n && ((nuint)Unsafe.AsPointer(ref Unsafe.Add(ref output, i)) & (vectorBytes - 1)) != 0; i++)
            {
                T xs = Unsafe.Add(ref x, i);
                T os = TOp.ReadsSecond ? Unsafe.Add(ref second, i) : xs;
                Unsafe.Add(ref output, i) = TOp.Apply<T, SimdScalar<T>, T>(xs, os, center, p, q, w);
            }
            bool prefetch = prefetchAhead != 0 && System.Runtime.Intrinsics.X86.Sse.IsSupported;
            // A raw pointer, not a ref: the address may lie past the end of x, and a prefetch does not fault.
            T* ahead = (T*)Unsafe.AsPointer(ref x) + prefetchAhead, secondAhead = (T*)Unsafe.AsPointer(ref second) + prefetchAhead;
            int lineElements = 64 / sizeof(T);
            for (; i <= n - TSimd.Count; i += TSimd.Count)
            {
                if (prefetch && (i & (lineElements - 1)) < TSimd.Count)
                {
                    System.Runtime.Intrinsics.X86.Sse.Prefetch1(ahead + i);
                    if (TOp.ReadsSecond) System.Runtime.Intrinsics.X86.Sse.Prefetch1(secondAhead + i);
                }
                TVector xv = TSimd.Load(ref x, i);
                TVector ov = TOp.ReadsSecond ? TSimd.Load(ref second, i) : xv;
                TSimd.StoreStreaming(TOp.Apply<T, TSimd, TVector>(xv, ov, cv, pv, qv, wv), ref output, i);
            }
        }
        for (; i <= n - 4 * TSimd.Count; i += 4 * TSimd.Count)
        {
            for (int u = 0; u < 4; u++)
            {
                TVector xu = TSimd.Load(ref x, i + u * TSimd.Count);
                TVector ou = TOp.ReadsSecond ? TSimd.Load(ref second, i + u * TSimd.Count) : xu;
                TSimd.Store(TOp.Apply<T, TSimd, TVector>(xu, ou, cv, pv, qv, wv), ref output, i + u * TSimd.Count);
            }
        }
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

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RowUnitApply<TOp, TSimd, TVector>(in NormPlan plan, ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output,
        int firstUnit, int endUnit, ReadOnlySpan<T> center, ReadOnlySpan<T> p, ReadOnlySpan<T> q, ReadOnlySpan<T> w, bool streaming, Span<T> scratch)
        where TOp : struct, IApplyOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        NormGeometry g = plan.Geometry;
        int width = g.B * g.J;
        // With W a multiple of the vector length every row of the output starts at the same alignment, so the unit is
        // walked as rows that begin at an aligned element (see AlignedColumnApply): no store splits a cache line, and
        // streaming stores become possible. Every unit starts a whole number of rows, so of vectors, into the output:
        // one head serves them all, and the coefficient rows are rotated once per a (not per unit: a unit is only 64 rows).
        bool aligned = TSimd.Count > 1 && width % TSimd.Count == 0 && IsElementAligned(ref MemoryMarshal.GetReference(output));
        int head = aligned ? AlignedHead<TSimd, TVector>(ref MemoryMarshal.GetReference(output), width) : 0;
        int rotatedA = -1;
        for (int unit = firstUnit; unit < endUnit; unit++)
        {
            int a = unit / plan.UnitsPerSlot, row = a * width;
            ReadOnlySpan<T> c = center.Slice(row, width), pa = p.Slice(row, width), qa = q.Slice(row, width);
            ReadOnlySpan<T> wa = TOp.ReadsSecond ? w.Slice(row, width) : default;
            if (!aligned)
            {
                RowUnitApply<TOp, TSimd, TVector>(plan, x, second, output, unit, c, pa, qa, wa);
                continue;
            }
            if (a != rotatedA)
            {
                RotateCoefficients<TOp>(c, pa, qa, wa, head, scratch);
                rotatedA = a;
            }
            int rBegin = unit % plan.UnitsPerSlot * plan.RowsPerUnit, rEnd = Math.Min(g.R, rBegin + plan.RowsPerUnit);
            nint first = ((nint)a * g.R + rBegin) * width;
            ref T x0 = ref Unsafe.Add(ref MemoryMarshal.GetReference(x), first);
            AlignedColumnApply<TOp, TSimd, TVector>(ref x0, ref TOp.ReadsSecond ? ref Unsafe.Add(ref MemoryMarshal.GetReference(second), first) : ref x0,
                ref Unsafe.Add(ref MemoryMarshal.GetReference(output), first), rEnd - rBegin, width, head, c, pa, qa, wa, scratch, streaming);
        }
    }

    /// <summary>Elements before the first vector-aligned one, at most <paramref name="width"/>.</summary>
    private static int AlignedHead<TSimd, TVector>(ref T output, int width)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int head = 0;
        while (head < width && !IsVectorAligned<TSimd, TVector>(ref Unsafe.Add(ref output, head))) head++;
        return head;
    }

    /// <summary>The coefficient rows rotated left by <paramref name="head"/> into <paramref name="scratch"/> (4W): element k holds column (k + head) mod W.</summary>
    private static void RotateCoefficients<TOp>(ReadOnlySpan<T> center, ReadOnlySpan<T> p, ReadOnlySpan<T> q, ReadOnlySpan<T> w, int head, Span<T> scratch)
        where TOp : struct, IApplyOp
    {
        int width = center.Length;
        Rotate(center, scratch[..width]);
        Rotate(p, scratch.Slice(width, width));
        Rotate(q, scratch.Slice(2 * width, width));
        if (TOp.ReadsSecond) Rotate(w, scratch.Slice(3 * width, width));

        void Rotate(ReadOnlySpan<T> source, Span<T> destination)
        {
            source[head..].CopyTo(destination);
            source[..head].CopyTo(destination[(width - head)..]);
        }
    }

    /// <summary>
    /// Column shape, W a multiple of the vector length, output stores aligned (and cache-bypassing with
    /// <paramref name="streaming"/>): scalar steps up to the first
    /// vector-aligned output element <paramref name="head"/>, then the unit seen as rows that start at column head (every
    /// one aligned), with the coefficient rows rotated by head already in <paramref name="scratch"/> (4W, see
    /// <see cref="RotateCoefficients"/>); the last partial row by scalar steps. Every element gets its own column's
    /// coefficients, so the bits are those of the cached path.
    /// </summary>
    private static void AlignedColumnApply<TOp, TSimd, TVector>(ref T x, ref T second, ref T output, int rows, int width, int head,
        ReadOnlySpan<T> center, ReadOnlySpan<T> p, ReadOnlySpan<T> q, ReadOnlySpan<T> w, Span<T> scratch, bool streaming)
        where TOp : struct, IApplyOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        nint length = (nint)rows * width;
        for (int i = 0; i < head && i < length; i++)
            ScalarApply<TOp>(ref x, ref second, ref output, i, center[i], p[i], q[i], TOp.ReadsSecond ? w[i] : T.Zero);
        if (head >= length) return;

        Span<T> c = scratch[..width], pr = scratch.Slice(width, width), qr = scratch.Slice(2 * width, width), wr = scratch.Slice(3 * width, width);
        ref T xr = ref Unsafe.Add(ref x, head), sr = ref Unsafe.Add(ref second, head), outr = ref Unsafe.Add(ref output, head);
        nint rest = length - head;
        int fullRows = (int)(rest / width);
        ref T c0 = ref MemoryMarshal.GetReference(c), p0 = ref MemoryMarshal.GetReference(pr), q0 = ref MemoryMarshal.GetReference(qr), w0 = ref MemoryMarshal.GetReference(wr);
        if (width <= NarrowRow) NarrowRowApply<TOp, TSimd, TVector>(fullRows, ref xr, ref sr, ref outr, width, ref c0, ref p0, ref q0, ref w0, streaming);
        else
            for (int r = 0; r < fullRows; r += 4)
            {
                // Four rows per pass, as the cached path: each column's coefficients loaded once for all four.
                nint offset = (nint)r * width;
                ApplyRow<TOp, TSimd, TVector>(Math.Min(4, fullRows - r), ref Unsafe.Add(ref xr, offset), ref Unsafe.Add(ref sr, offset), ref Unsafe.Add(ref outr, offset),
                    width, ref c0, ref p0, ref q0, ref w0, streaming: streaming);
            }
        // The last row's first head columns: rotated positions width - head onwards.
        for (nint i = (nint)fullRows * width; i < rest; i++)
        {
            int k = (int)(i - (nint)fullRows * width);
            ScalarApply<TOp>(ref xr, ref sr, ref outr, i, c[k], pr[k], qr[k], wr[k]);
        }
    }

    /// <summary>Whether the address is a multiple of the element size (a span cast from bytes may not be; no vector store can align then).</summary>
    private static unsafe bool IsElementAligned(ref T destination) => (nuint)Unsafe.AsPointer(ref destination) % (nuint)sizeof(T) == 0;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ScalarApply<TOp>(ref T x, ref T second, ref T output, nint i, T c, T p, T q, T w) where TOp : struct, IApplyOp
    {
        T xs = Unsafe.Add(ref x, i);
        T os = TOp.ReadsSecond ? Unsafe.Add(ref second, i) : xs;
        Unsafe.Add(ref output, i) = TOp.Apply<T, SimdScalar<T>, T>(xs, os, c, p, q, w);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RowUnitApply<TOp, TSimd, TVector>(in NormPlan plan, ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output,
        int unit, ReadOnlySpan<T> center, ReadOnlySpan<T> p, ReadOnlySpan<T> q, ReadOnlySpan<T> w)
        where TOp : struct, IApplyOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        NormGeometry g = plan.Geometry;
        int width = g.B * g.J;
        ref T x0 = ref MemoryMarshal.GetReference(x);
        ref T second0 = ref TOp.ReadsSecond ? ref MemoryMarshal.GetReference(second) : ref x0;
        ref T out0 = ref MemoryMarshal.GetReference(output);
        ref T c0 = ref MemoryMarshal.GetReference(center);
        ref T p0 = ref MemoryMarshal.GetReference(p);
        ref T q0 = ref MemoryMarshal.GetReference(q);
        ref T w0 = ref TOp.ReadsSecond ? ref MemoryMarshal.GetReference(w) : ref q0;
        int a = unit / plan.UnitsPerSlot, rBegin = unit % plan.UnitsPerSlot * plan.RowsPerUnit;
        int rEnd = Math.Min(g.R, rBegin + plan.RowsPerUnit);
        if (width <= NarrowRow)
        {
            nint first = ((nint)a * g.R + rBegin) * width;
            NarrowRowApply<TOp, TSimd, TVector>(rEnd - rBegin, ref Unsafe.Add(ref x0, first), ref Unsafe.Add(ref second0, first),
                ref Unsafe.Add(ref out0, first), width, ref c0, ref p0, ref q0, ref w0);
            return;
        }
        int r = rBegin;
        for (; r <= rEnd - 4; r += 4)
        {
            nint offset = ((nint)a * g.R + r) * width;
            ApplyRow<TOp, TSimd, TVector>(4, ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref second0, offset),
                ref Unsafe.Add(ref out0, offset), width, ref c0, ref p0, ref q0, ref w0);
        }
        for (; r < rEnd; r++)
        {
            nint offset = ((nint)a * g.R + r) * width;
            ApplyRow<TOp, TSimd, TVector>(1, ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref second0, offset),
                ref Unsafe.Add(ref out0, offset), width, ref c0, ref p0, ref q0, ref w0);
        }
    }

    /// <summary>Narrow rows: four vectors of columns at a time keep their coefficients in registers down all the rows.</summary>
    private static void NarrowRowApply<TOp, TSimd, TVector>(int rows, ref T x, ref T second, ref T output, int width, ref T center, ref T p, ref T q, ref T w,
        bool streaming = false)
        where TOp : struct, IApplyOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        int n = TSimd.Count, c = 0;
        for (; c <= width - 4 * n; c += 4 * n)
        {
            TVector c0 = TSimd.Load(ref center, c), c1 = TSimd.Load(ref center, c + n), c2 = TSimd.Load(ref center, c + 2 * n), c3 = TSimd.Load(ref center, c + 3 * n);
            TVector p0 = TSimd.Load(ref p, c), p1 = TSimd.Load(ref p, c + n), p2 = TSimd.Load(ref p, c + 2 * n), p3 = TSimd.Load(ref p, c + 3 * n);
            TVector q0 = TSimd.Load(ref q, c), q1 = TSimd.Load(ref q, c + n), q2 = TSimd.Load(ref q, c + 2 * n), q3 = TSimd.Load(ref q, c + 3 * n);
            TVector w0 = TOp.ReadsSecond ? TSimd.Load(ref w, c) : TSimd.Zero, w1 = TOp.ReadsSecond ? TSimd.Load(ref w, c + n) : TSimd.Zero;
            TVector w2 = TOp.ReadsSecond ? TSimd.Load(ref w, c + 2 * n) : TSimd.Zero, w3 = TOp.ReadsSecond ? TSimd.Load(ref w, c + 3 * n) : TSimd.Zero;
            for (int row = 0; row < rows; row++)
            {
                nint i = (nint)row * width + c;
                TVector x0 = TSimd.Load(ref x, i), x1 = TSimd.Load(ref x, i + n), x2 = TSimd.Load(ref x, i + 2 * n), x3 = TSimd.Load(ref x, i + 3 * n);
                TVector y0 = TOp.Apply<T, TSimd, TVector>(x0, TOp.ReadsSecond ? TSimd.Load(ref second, i) : x0, c0, p0, q0, w0);
                TVector y1 = TOp.Apply<T, TSimd, TVector>(x1, TOp.ReadsSecond ? TSimd.Load(ref second, i + n) : x1, c1, p1, q1, w1);
                TVector y2 = TOp.Apply<T, TSimd, TVector>(x2, TOp.ReadsSecond ? TSimd.Load(ref second, i + 2 * n) : x2, c2, p2, q2, w2);
                TVector y3 = TOp.Apply<T, TSimd, TVector>(x3, TOp.ReadsSecond ? TSimd.Load(ref second, i + 3 * n) : x3, c3, p3, q3, w3);
                if (streaming)
                {
                    TSimd.StoreStreaming(y0, ref output, i);
                    TSimd.StoreStreaming(y1, ref output, i + n);
                    TSimd.StoreStreaming(y2, ref output, i + 2 * n);
                    TSimd.StoreStreaming(y3, ref output, i + 3 * n);
                }
                else
                {
                    TSimd.Store(y0, ref output, i);
                    TSimd.Store(y1, ref output, i + n);
                    TSimd.Store(y2, ref output, i + 2 * n);
                    TSimd.Store(y3, ref output, i + 3 * n);
                }
            }
        }
        if (c < width) ApplyRow<TOp, TSimd, TVector>(rows, ref Unsafe.Add(ref x, c), ref Unsafe.Add(ref second, c), ref Unsafe.Add(ref output, c),
            width, ref Unsafe.Add(ref center, c), ref Unsafe.Add(ref p, c), ref Unsafe.Add(ref q, c), ref Unsafe.Add(ref w, c), width - c, streaming);
    }

    /// <summary>Applies the op to <paramref name="rows"/> consecutive rows, loading each column's coefficients once.</summary>
    private static void ApplyRow<TOp, TSimd, TVector>(int rows, ref T x, ref T second, ref T output, int width, ref T center, ref T p, ref T q, ref T w,
        int columns = -1, bool streaming = false)
        where TOp : struct, IApplyOp
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        // width is the row stride; columns (default: all) how many of them to process.
        if (columns < 0) columns = width;
        int c = 0;
        for (; c <= columns - TSimd.Count; c += TSimd.Count)
        {
            TVector cv = TSimd.Load(ref center, c), pv = TSimd.Load(ref p, c), qv = TSimd.Load(ref q, c);
            TVector wv = TOp.ReadsSecond ? TSimd.Load(ref w, c) : TSimd.Zero;
            for (int row = 0; row < rows; row++)
            {
                TVector xv = TSimd.Load(ref x, row * width + c);
                TVector ov = TOp.ReadsSecond ? TSimd.Load(ref second, row * width + c) : xv;
                TVector yv = TOp.Apply<T, TSimd, TVector>(xv, ov, cv, pv, qv, wv);
                if (streaming) TSimd.StoreStreaming(yv, ref output, row * width + c);
                else TSimd.Store(yv, ref output, row * width + c);
            }
        }
        for (; c < columns; c++)
        {
            T ws = TOp.ReadsSecond ? Unsafe.Add(ref w, c) : T.Zero;
            for (int row = 0; row < rows; row++)
            {
                T xs = Unsafe.Add(ref x, row * width + c);
                T os = TOp.ReadsSecond ? Unsafe.Add(ref second, row * width + c) : xs;
                Unsafe.Add(ref output, row * width + c) = TOp.Apply<T, SimdScalar<T>, T>(xs, os, Unsafe.Add(ref center, c), Unsafe.Add(ref p, c), Unsafe.Add(ref q, c), ws);
            }
        }
    }
}
