using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace SharpNorm.Kernels;

/// <summary>
/// PyTorch's 2x2 stride-2 max pool over two rows, a vector of outputs at a time: the window (upper[2i], upper[2i+1],
/// lower[2i], lower[2i+1]) gives its first maximum, a NaN counting as larger than any number (the first NaN wins), and
/// the backward hands dy to that element alone. The same choice, element for element, as the scalar search.
/// </summary>
internal static class FirstMaxPairs
{
    private static readonly Vector512<int> Evens512 = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    private static readonly Vector512<int> Odds512 = Vector512.Create(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    private static readonly Vector512<int> LowHalves = Vector512.Create(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    private static readonly Vector512<int> HighHalves = Vector512.Create(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);

    /// <summary>Whether <see cref="Plane"/> can run here.</summary>
    public static bool IsSupported => Avx512F.IsSupported;

    /// <summary>
    /// A whole plane (rows of <paramref name="width"/>, at least 2 x outHeight of them, width at least 2 x outWidth):
    /// the forward writes y (outHeight x outWidth); the backward writes dx over the windows' elements from dy (each
    /// element is in one window: dy where it is its window's first maximum, 0 elsewhere) and leaves the rest of dx
    /// (an odd last row or column) alone. Rows with 16 outputs or more go a vector at a time; what is left of each row
    /// (all of it when rows are short) is staged, several rows' remainders side by side in one vector.
    /// </summary>
    public static void Plane(ReadOnlySpan<float> x, int width, int outHeight, int outWidth, ReadOnlySpan<float> dy, Span<float> output, bool backward)
    {
        ref float px = ref Unsafe.AsRef(in x[0]);
        ref float pdy = ref backward ? ref Unsafe.AsRef(in dy[0]) : ref Unsafe.NullRef<float>();
        ref float pout = ref output[0];
        int whole = outWidth / 16 * 16;
        for (int oh = 0; oh < outHeight && whole > 0; oh++)
        {
            ref float upper = ref Unsafe.Add(ref px, 2 * oh * width), lower = ref Unsafe.Add(ref upper, width);
            for (int i = 0; i < whole; i += 16)
            {
                if (!backward)
                {
                    Window(ref upper, ref lower, 2 * i, out Vector512<float> max, out _, out _, out _);
                    max.StoreUnsafe(ref pout, (nuint)(oh * outWidth + i));
                    continue;
                }
                Window(ref upper, ref lower, 2 * i, out _, out var right, out var lowerRight, out var below);
                Gradient(Vector512.LoadUnsafe(ref pdy, (nuint)(oh * outWidth + i)), right, lowerRight, below,
                    ref Unsafe.Add(ref pout, 2 * oh * width + 2 * i), ref Unsafe.Add(ref pout, (2 * oh + 1) * width + 2 * i));
            }
        }

        // The remainders: `left` outputs per row from column `whole` on, `rows` rows per staged vector.
        int left = outWidth - whole;
        if (left == 0) return;
        int rows = 16 / left;
        Span<float> stage = stackalloc float[5 * 32];
        ref float su = ref stage[0];
        ref float sl = ref stage[32];
        ref float sd = ref stage[64];
        ref float sdu = ref stage[96];
        ref float sdl = ref stage[128];
        stage.Clear();
        for (int oh0 = 0; oh0 < outHeight; oh0 += rows)
        {
            int count = Math.Min(rows, outHeight - oh0);
            for (int j = 0; j < count; j++)
            {
                int at = 2 * (oh0 + j) * width + 2 * whole;
                Copy(ref Unsafe.Add(ref px, at), ref Unsafe.Add(ref su, 2 * j * left), 2 * left);
                Copy(ref Unsafe.Add(ref px, at + width), ref Unsafe.Add(ref sl, 2 * j * left), 2 * left);
                if (backward) Copy(ref Unsafe.Add(ref pdy, (oh0 + j) * outWidth + whole), ref Unsafe.Add(ref sd, j * left), left);
            }
            Window(ref su, ref sl, 0, out Vector512<float> max, out var right, out var lowerRight, out var below);
            if (backward) Gradient(Vector512.LoadUnsafe(ref sd), right, lowerRight, below, ref sdu, ref sdl);
            else max.StoreUnsafe(ref sd);
            for (int j = 0; j < count; j++)
            {
                if (!backward)
                {
                    Copy(ref Unsafe.Add(ref sd, j * left), ref Unsafe.Add(ref pout, (oh0 + j) * outWidth + whole), left);
                    continue;
                }
                int at = 2 * (oh0 + j) * width + 2 * whole;
                Copy(ref Unsafe.Add(ref sdu, 2 * j * left), ref Unsafe.Add(ref pout, at), 2 * left);
                Copy(ref Unsafe.Add(ref sdl, 2 * j * left), ref Unsafe.Add(ref pout, at + width), 2 * left);
            }
        }
    }

    /// <summary>
    /// The forward of a 2x2 stride-1 pool whose output is as wide as its input (darknet's size-2 stride-1 maxpool,
    /// padded after): output p = (oh, ow) is the first maximum of x[p], x[p + 1], x[p + width], x[p + width + 1].
    /// Walks the plane flat, 16 outputs at a time, so that maps narrower than a vector go by vectors too, and returns
    /// how many outputs from the start it wrote; those at ow = width - 1 (whose x[p + 1] is the next row's) and all
    /// from the returned count on are the caller's scalar search's.
    /// </summary>
    public static int StrideOne(ReadOnlySpan<float> x, int height, int width, Span<float> output)
    {
        // the last window read, p + width + 1, must stay in the plane
        int whole = Math.Max(0, (height - 1) * width - 1) / 16 * 16;
        ref float upper = ref Unsafe.AsRef(in x[0]);
        ref float lower = ref Unsafe.Add(ref upper, width);
        ref float pout = ref output[0];
        for (int p = 0; p < whole; p += 16)
        {
            // first maximum of the window in the scalar search's order: the upper pair, then the lower pair
            Vector512<float> upperLeft = Vector512.LoadUnsafe(ref upper, (nuint)p), upperRight = Vector512.LoadUnsafe(ref upper, (nuint)(p + 1));
            Vector512<float> lowerLeft = Vector512.LoadUnsafe(ref lower, (nuint)p), lowerRight = Vector512.LoadUnsafe(ref lower, (nuint)(p + 1));
            Vector512<float> top = Vector512.ConditionalSelect(Beats(upperRight, upperLeft), upperRight, upperLeft);
            Vector512<float> bottom = Vector512.ConditionalSelect(Beats(lowerRight, lowerLeft), lowerRight, lowerLeft);
            Vector512.ConditionalSelect(Beats(bottom, top), bottom, top).StoreUnsafe(ref pout, (nuint)p);
        }
        return whole;
    }

    private static void Copy(ref float from, ref float to, int count) =>
        MemoryMarshal.CreateReadOnlySpan(ref from, count).CopyTo(MemoryMarshal.CreateSpan(ref to, count));

    /// <summary>dy of 16 windows onto their elements, 32 columns of each row: dy at each window's first maximum, 0 elsewhere.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Gradient(Vector512<float> dy, Vector512<float> right, Vector512<float> lowerRight, Vector512<float> below, ref float dxUpper, ref float dxLower)
    {
        Vector512<float> zero = Vector512<float>.Zero;
        // 0 + dy, as the scalar path's cleared gradient plus dy (a -0 becomes +0 there too).
        Vector512<float> upperLeft = Vector512.ConditionalSelect(~below & ~right, dy, zero) + zero;
        Vector512<float> upperRight = Vector512.ConditionalSelect(~below & right, dy, zero) + zero;
        Vector512<float> lowerLeft = Vector512.ConditionalSelect(below & ~lowerRight, dy, zero) + zero;
        Vector512<float> lowerRightGradient = Vector512.ConditionalSelect(below & lowerRight, dy, zero) + zero;
        Avx512F.PermuteVar16x32x2(upperLeft, LowHalves, upperRight).StoreUnsafe(ref dxUpper);
        Avx512F.PermuteVar16x32x2(upperLeft, HighHalves, upperRight).StoreUnsafe(ref dxUpper, 16);
        Avx512F.PermuteVar16x32x2(lowerLeft, LowHalves, lowerRightGradient).StoreUnsafe(ref dxLower);
        Avx512F.PermuteVar16x32x2(lowerLeft, HighHalves, lowerRightGradient).StoreUnsafe(ref dxLower, 16);
    }

    /// <summary>
    /// 16 windows from 32 columns of each row: their first maxima, and where each lies: <paramref name="right"/> (the
    /// upper pair's winner is its right element), <paramref name="lowerRight"/> (likewise the lower pair's) and
    /// <paramref name="below"/> (the lower pair's winner beats the upper's).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Window(ref float u, ref float l, int at, out Vector512<float> max, out Vector512<float> right, out Vector512<float> lowerRight,
        out Vector512<float> below)
    {
        Vector512<float> u0 = Vector512.LoadUnsafe(ref u, (nuint)at), u1 = Vector512.LoadUnsafe(ref u, (nuint)(at + 16));
        Vector512<float> l0 = Vector512.LoadUnsafe(ref l, (nuint)at), l1 = Vector512.LoadUnsafe(ref l, (nuint)(at + 16));
        Vector512<float> upperLeft = Avx512F.PermuteVar16x32x2(u0, Evens512, u1), upperRight = Avx512F.PermuteVar16x32x2(u0, Odds512, u1);
        Vector512<float> lowerLeft = Avx512F.PermuteVar16x32x2(l0, Evens512, l1), lowerRightValue = Avx512F.PermuteVar16x32x2(l0, Odds512, l1);
        right = Beats(upperRight, upperLeft);
        Vector512<float> top = Vector512.ConditionalSelect(right, upperRight, upperLeft);
        lowerRight = Beats(lowerRightValue, lowerLeft);
        Vector512<float> bottom = Vector512.ConditionalSelect(lowerRight, lowerRightValue, lowerLeft);
        below = Beats(bottom, top);
        max = Vector512.ConditionalSelect(below, bottom, top);
    }

    /// <summary>A later element beats the best so far when it is larger, or a NaN where the best is not (ties keep the first).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Beats(Vector512<float> later, Vector512<float> best) =>
        Vector512.GreaterThan(later, best) | (~Vector512.Equals(later, later) & Vector512.Equals(best, best));
}
