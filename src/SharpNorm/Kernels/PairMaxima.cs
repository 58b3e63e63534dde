using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace SharpNorm.Kernels;

/// <summary>
/// The maxima of 2x2 blocks of two rows: row[i] = max(upper[2i], upper[2i+1], lower[2i], lower[2i+1]), the inner loop
/// of a 2x2 stride-2 max pool. Compares as x &gt; max (a NaN never wins), as darknet does.
/// </summary>
internal static class PairMaxima
{
    internal static readonly Vector512<int> Evens512 = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    internal static readonly Vector512<int> Odds512 = Vector512.Create(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);

    /// <summary>Writes the first outputs a vector at a time; returns how many it wrote (the caller does the rest).</summary>
    /// <param name="upper">The window's first row (2 x pairs values at least).</param>
    /// <param name="lower">Its second row (the first again where the input has no second).</param>
    /// <param name="row">The output row.</param>
    /// <param name="pairs">Outputs to write at most.</param>
    /// <param name="maxVectorBits">The widest vectors to use (512, 256; less: none), for tests of the narrower paths.</param>
    public static int Vectorized(ReadOnlySpan<float> upper, ReadOnlySpan<float> lower, Span<float> row, int pairs, int maxVectorBits = 512)
    {
        if (pairs == 0) return 0;
        int i = 0;
        ref float u = ref Unsafe.AsRef(in upper[0]);
        ref float l = ref Unsafe.AsRef(in lower[0]);
        ref float r = ref row[0];
        if (Avx512F.IsSupported && maxVectorBits >= 512)
        {
            Vector512<float> lowest = Vector512.Create(float.MinValue);
            for (; i + 16 <= pairs; i += 16)
            {
                Vector512<float> a = Max(Max(lowest, Vector512.LoadUnsafe(ref u, (nuint)(2 * i))), Vector512.LoadUnsafe(ref l, (nuint)(2 * i)));
                Vector512<float> b = Max(Max(lowest, Vector512.LoadUnsafe(ref u, (nuint)(2 * i + 16))), Vector512.LoadUnsafe(ref l, (nuint)(2 * i + 16)));
                Vector512<float> evens = Avx512F.PermuteVar16x32x2(a, Evens512, b), odds = Avx512F.PermuteVar16x32x2(a, Odds512, b);
                Max(evens, odds).StoreUnsafe(ref r, (nuint)i);
            }
        }
        if (Avx2.IsSupported && maxVectorBits >= 256)
        {
            Vector256<float> lowest = Vector256.Create(float.MinValue);
            for (; i + 8 <= pairs; i += 8)
            {
                Vector256<float> a = Max(Max(lowest, Vector256.LoadUnsafe(ref u, (nuint)(2 * i))), Vector256.LoadUnsafe(ref l, (nuint)(2 * i)));
                Vector256<float> b = Max(Max(lowest, Vector256.LoadUnsafe(ref u, (nuint)(2 * i + 8))), Vector256.LoadUnsafe(ref l, (nuint)(2 * i + 8)));
                // Within each 128-bit lane: evens (a0 a2 b0 b2 | a4 a6 b4 b6), odds likewise; then the 64-bit blocks in order.
                Vector256<float> evens = Avx.Shuffle(a, b, 0b10_00_10_00), odds = Avx.Shuffle(a, b, 0b11_01_11_01);
                Vector256<float> maxima = Max(evens, odds);
                Avx2.Permute4x64(maxima.AsDouble(), 0b11_01_10_00).AsSingle().StoreUnsafe(ref r, (nuint)i);
            }
        }
        return i;
    }

    // max(a, b) as b > a ? b : a: a NaN in b never wins, and the lowest start keeps a NaN from ever being in a.
    private static Vector512<float> Max(Vector512<float> a, Vector512<float> b) => Vector512.ConditionalSelect(Vector512.GreaterThan(b, a), b, a);

    private static Vector256<float> Max(Vector256<float> a, Vector256<float> b) => Vector256.ConditionalSelect(Vector256.GreaterThan(b, a), b, a);
}
