using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace SharpNorm.Kernels;

/// <summary>
/// Per-channel mean and biased variance of a convolution's output, gathered by the convolution's own work units
/// (an image, a band of an image, a range of Winograd tiles) while each unit's output is still in cache, so that
/// BatchNorm's statistics need no pass over the output. Each (unit, channel) keeps shifted sums Σ(y - c), Σ(y - c)²
/// about a value c of its own; <see cref="Combine"/> merges the units in unit order in double (Chan's pairwise
/// update). Units depend on the shape alone, so the result is the same for any thread count.
/// </summary>
internal sealed class ChannelMoments<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>Values summed in T before the partial sums go to double: keeps float rounding small on large planes.</summary>
    private const int Piece = 4096;

    private Partial[] _partials = [];

    /// <summary>One unit's sums for one channel.</summary>
    public struct Partial
    {
        public T Shift;
        public double Count, Sum1, Sum2;
    }

    public int Units { get; private set; }
    public int Channels { get; private set; }

    /// <summary>Widest vector the sums may use (tests lower it).</summary>
    public int MaxVectorBits { get; set; } = 512;

    /// <summary>Makes room for <paramref name="units"/> x <paramref name="channels"/> partials, all empty.</summary>
    public void Reset(int units, int channels)
    {
        long length = (long)units * channels;
        if (_partials.Length < length) _partials = new Partial[checked((int)length)];
        _partials.AsSpan(0, (int)length).Clear();
        (Units, Channels) = (units, channels);
    }

    public ref Partial At(int unit, int channel) => ref _partials[unit * Channels + channel];

    /// <summary>The (unit, channel) partial of the values of <paramref name="values"/>, shifted by its first value.</summary>
    public void Set(int unit, int channel, ReadOnlySpan<T> values)
    {
        ref Partial p = ref At(unit, channel);
        p.Shift = values[0];
        (p.Sum1, p.Sum2) = ShiftedSums(values, p.Shift, MaxVectorBits);
        p.Count = values.Length;
    }

    /// <summary>Mean and biased variance per channel, the units merged in order; every unit must hold values of every channel.</summary>
    public void Combine(Span<double> mean, Span<double> variance)
    {
        for (int c = 0; c < Channels; c++)
        {
            double count = 0, m = 0, m2 = 0;
            for (int unit = 0; unit < Units; unit++)
            {
                Partial p = _partials[unit * Channels + c];
                if (p.Count == 0) continue;
                double unitMean = p.Sum1 / p.Count;
                double unitM2 = Math.Max(0, p.Sum2 - p.Sum1 * unitMean);
                unitMean += double.CreateTruncating(p.Shift);
                double total = count + p.Count, delta = unitMean - m;
                m += delta * (p.Count / total);
                m2 += unitM2 + delta * delta * (count * p.Count / total);
                count = total;
            }
            mean[c] = m;
            variance[c] = m2 / count;
        }
    }

    /// <summary>(Σ (x - shift), Σ (x - shift)²) in double, summed in T a piece at a time.</summary>
    public static (double, double) ShiftedSums(ReadOnlySpan<T> x, T shift, int maxBits)
    {
        double s1 = 0, s2 = 0;
        for (int start = 0; start < x.Length; start += Piece)
        {
            ReadOnlySpan<T> piece = x.Slice(start, Math.Min(Piece, x.Length - start));
            (T a, T b) = SimdWidth.Bits<T>(maxBits) switch
            {
                512 => PieceSums<Simd512<T>, Vector512<T>>(piece, shift),
                256 => PieceSums<Simd256<T>, Vector256<T>>(piece, shift),
                128 => PieceSums<Simd128<T>, Vector128<T>>(piece, shift),
                _ => PieceSums<SimdScalar<T>, T>(piece, shift),
            };
            s1 += double.CreateTruncating(a);
            s2 += double.CreateTruncating(b);
        }
        return (s1, s2);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static (T, T) PieceSums<TSimd, TVector>(ReadOnlySpan<T> x, T shift)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        ref T source = ref System.Runtime.InteropServices.MemoryMarshal.GetReference(x);
        TVector c = TSimd.Broadcast(shift), s1a = TSimd.Zero, s1b = TSimd.Zero, s2a = TSimd.Zero, s2b = TSimd.Zero;
        int n = TSimd.Count, i = 0;
        // Two accumulators each: the adds of one vector do not wait on the last.
        for (; i <= x.Length - 2 * n; i += 2 * n)
        {
            TVector d0 = TSimd.Subtract(TSimd.Load(ref source, i), c), d1 = TSimd.Subtract(TSimd.Load(ref source, i + n), c);
            s1a = TSimd.Add(s1a, d0);
            s1b = TSimd.Add(s1b, d1);
            s2a = TSimd.MultiplyAdd(d0, d0, s2a);
            s2b = TSimd.MultiplyAdd(d1, d1, s2b);
        }
        T sum1 = TSimd.Sum(TSimd.Add(s1a, s1b)), sum2 = TSimd.Sum(TSimd.Add(s2a, s2b));
        for (; i < x.Length; i++)
        {
            T d = x[i] - shift;
            sum1 += d;
            sum2 += d * d;
        }
        return (sum1, sum2);
    }
}
