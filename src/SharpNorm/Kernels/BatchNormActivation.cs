using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using SharpNorm.Threading;

namespace SharpNorm.Kernels;

/// <summary>
/// The element-wise passes of a BatchNorm followed by a leaky rectifier, over planes (image, channel) of y, the
/// BatchNorm's input. Per channel c the normalization is z = (y - m_c)·p_c + q_c (m_c: the mean rounded to T, a
/// center that keeps the products small), the output out = z &gt; 0 ? z : slope·z, and the gradient through the
/// rectifier d = z &gt; 0 ? dOut : slope·dOut, with the mask recomputed from y rather than stored.
/// <list type="bullet">
/// <item><see cref="Forward"/>: out from y, one pass.</item>
/// <item><see cref="Reduce"/>: per plane Σ d and Σ d·(y - m), BatchNorm's two backward reductions (and dβ, dγ).</item>
/// <item><see cref="InputGradient"/>: dy = a_c·d + b_c·(y - m_c) + e_c, BatchNorm's closed form.</item>
/// </list>
/// Each plane's results are its own, so any split over threads gives the same bits.
/// </summary>
internal sealed unsafe class BatchNormActivation<T> : IChunkJob where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>Values summed in T before a plane's sums go to double.</summary>
    private const int Piece = 4096;
    /// <summary>Planes of fewer values than this are handed to threads several at a time.</summary>
    private const int MinChunkValues = 1 << 15;

    private enum Pass { Forward, Reduce, InputGradient }

    private Pass _pass;
    private T* _y, _dOut, _out;
    private T* _center, _p, _q, _a, _b, _e;
    private double* _sum1, _sum2;
    private int _planes, _plane, _channels, _chunks, _bits;
    private T _slope;

    /// <summary>Widest vector the passes may use (tests lower it).</summary>
    public int MaxVectorBits { get; set; } = 512;

    /// <summary>out = act((y - center)·p + q) per channel.</summary>
    public void Forward(ReadOnlySpan<T> y, Span<T> output, int channels, int plane, ReadOnlySpan<T> center, ReadOnlySpan<T> p,
        ReadOnlySpan<T> q, T slope, int threads)
    {
        fixed (T* py = y)
        fixed (T* po = output)
        fixed (T* pc = center)
        fixed (T* pp = p)
        fixed (T* pq = q)
        {
            _y = py;
            _out = po;
            _center = pc;
            _p = pp;
            _q = pq;
            Run(Pass.Forward, y.Length, channels, plane, slope, threads);
        }
    }

    /// <summary>sum1[plane] = Σ d, sum2[plane] = Σ d·(y - center) for every plane (image-major: plane = n·C + c).</summary>
    public void Reduce(ReadOnlySpan<T> y, ReadOnlySpan<T> dOut, int channels, int plane, ReadOnlySpan<T> center, ReadOnlySpan<T> p,
        ReadOnlySpan<T> q, T slope, Span<double> sum1, Span<double> sum2, int threads)
    {
        fixed (T* py = y)
        fixed (T* pd = dOut)
        fixed (T* pc = center)
        fixed (T* pp = p)
        fixed (T* pq = q)
        fixed (double* s1 = sum1)
        fixed (double* s2 = sum2)
        {
            _y = py;
            _dOut = pd;
            _center = pc;
            _p = pp;
            _q = pq;
            _sum1 = s1;
            _sum2 = s2;
            Run(Pass.Reduce, y.Length, channels, plane, slope, threads);
        }
    }

    /// <summary>dy = a·d + b·(y - center) + e per channel, d the gradient through the rectifier.</summary>
    public void InputGradient(ReadOnlySpan<T> y, ReadOnlySpan<T> dOut, Span<T> dy, int channels, int plane, ReadOnlySpan<T> center,
        ReadOnlySpan<T> p, ReadOnlySpan<T> q, T slope, ReadOnlySpan<T> a, ReadOnlySpan<T> b, ReadOnlySpan<T> e, int threads)
    {
        fixed (T* py = y)
        fixed (T* pd = dOut)
        fixed (T* po = dy)
        fixed (T* pc = center)
        fixed (T* pp = p)
        fixed (T* pq = q)
        fixed (T* pa = a)
        fixed (T* pb = b)
        fixed (T* pe = e)
        {
            _y = py;
            _dOut = pd;
            _out = po;
            _center = pc;
            _p = pp;
            _q = pq;
            _a = pa;
            _b = pb;
            _e = pe;
            Run(Pass.InputGradient, y.Length, channels, plane, slope, threads);
        }
    }

    /// <summary>
    /// The per-plane sums of <see cref="Reduce"/> added per channel over the images in order: Σ d, and Σ d·(y - μ) =
    /// Σ d·(y - center) - (μ - center)·Σ d.
    /// </summary>
    public static void ChannelSums(ReadOnlySpan<double> planeSum1, ReadOnlySpan<double> planeSum2, int batch, int channels, ReadOnlySpan<double> mean,
        ReadOnlySpan<T> center, Span<double> sumD, Span<double> sumDCentered)
    {
        for (int c = 0; c < channels; c++)
        {
            double sum1 = 0, sum2 = 0;
            for (int n = 0; n < batch; n++)
            {
                sum1 += planeSum1[n * channels + c];
                sum2 += planeSum2[n * channels + c];
            }
            sumD[c] = sum1;
            sumDCentered[c] = sum2 - (mean[c] - double.CreateTruncating(center[c])) * sum1;
        }
    }

    private void Run(Pass pass, int length, int channels, int plane, T slope, int threads)
    {
        _bits = SimdWidth.Bits<T>(MaxVectorBits);
        (_pass, _channels, _plane, _planes, _slope) = (pass, channels, plane, length / plane, slope);
        _chunks = (int)Math.Clamp(length / MinChunkValues, 1, Math.Min(_planes, Math.Max(1, threads)));
        try
        {
            ChunkRunner.Shared.Run(this, _chunks, threads);
        }
        finally
        {
            _y = _dOut = _out = _center = _p = _q = _a = _b = _e = null;
            _sum1 = _sum2 = null;
        }
    }

    void IChunkJob.Execute(int chunk, int worker)
    {
        int first = (int)((long)_planes * chunk / _chunks), end = (int)((long)_planes * (chunk + 1) / _chunks);
        for (int plane = first; plane < end; plane++)
            switch (_bits)
            {
                case 512: Plane<Simd512<T>, Vector512<T>>(plane); break;
                case 256: Plane<Simd256<T>, Vector256<T>>(plane); break;
                case 128: Plane<Simd128<T>, Vector128<T>>(plane); break;
                default: Plane<SimdScalar<T>, T>(plane); break;
            }
    }

    /// <summary>One plane's pass: whole vectors, then the rest one lane at a time through the same code.</summary>
    private void Plane<TSimd, TVector>(int plane)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        int c = plane % _channels, count = _plane;
        nint offset = (nint)plane * _plane;
        switch (_pass)
        {
            case Pass.Forward:
                Forward<SimdScalar<T>, T>(c, offset, Forward<TSimd, TVector>(c, offset, 0, count), count);
                break;
            case Pass.Reduce:
                double sum1 = 0, sum2 = 0;
                for (int start = 0; start < count; start += Piece)
                {
                    int end = Math.Min(count, start + Piece);
                    var (vector1, vector2, reached) = Reduce<TSimd, TVector>(c, offset, start, end);
                    var (lane1, lane2, _) = Reduce<SimdScalar<T>, T>(c, offset, reached, end);
                    sum1 += double.CreateTruncating(vector1 + lane1);
                    sum2 += double.CreateTruncating(vector2 + lane2);
                }
                _sum1[plane] = sum1;
                _sum2[plane] = sum2;
                break;
            default:
                InputGradient<SimdScalar<T>, T>(c, offset, InputGradient<TSimd, TVector>(c, offset, 0, count), count);
                break;
        }
    }

    /// <summary>out = act((y - center)·p + q) for whole vectors of [from, to); returns where it stopped.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int Forward<TSimd, TVector>(int c, nint offset, int from, int to)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        T* y = _y + offset, output = _out + offset;
        TVector center = TSimd.Broadcast(_center[c]), p = TSimd.Broadcast(_p[c]), q = TSimd.Broadcast(_q[c]), slope = TSimd.Broadcast(_slope);
        int i = from;
        for (; i <= to - TSimd.Count; i += TSimd.Count)
            TSimd.Store(Rectify<TSimd, TVector>(TSimd.MultiplyAdd(TSimd.Subtract(TSimd.Load(ref y[i], 0), center), p, q), slope), ref output[i], 0);
        return i;
    }

    /// <summary>(Σ d, Σ d·(y - center)) over whole vectors of [from, to), and where it stopped.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private (T, T, int) Reduce<TSimd, TVector>(int c, nint offset, int from, int to)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        T* y = _y + offset, dOut = _dOut + offset;
        TVector center = TSimd.Broadcast(_center[c]), p = TSimd.Broadcast(_p[c]), q = TSimd.Broadcast(_q[c]), slope = TSimd.Broadcast(_slope);
        TVector s1 = TSimd.Zero, s2 = TSimd.Zero;
        int i = from;
        for (; i <= to - TSimd.Count; i += TSimd.Count)
        {
            TVector centered = TSimd.Subtract(TSimd.Load(ref y[i], 0), center);
            TVector d = Through<TSimd, TVector>(TSimd.MultiplyAdd(centered, p, q), TSimd.Load(ref dOut[i], 0), slope);
            s1 = TSimd.Add(s1, d);
            s2 = TSimd.MultiplyAdd(d, centered, s2);
        }
        return (TSimd.Sum(s1), TSimd.Sum(s2), i);
    }

    /// <summary>dy = a·d + b·(y - center) + e over whole vectors of [from, to); returns where it stopped.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int InputGradient<TSimd, TVector>(int c, nint offset, int from, int to)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged
    {
        T* y = _y + offset, dOut = _dOut + offset, dy = _out + offset;
        TVector center = TSimd.Broadcast(_center[c]), p = TSimd.Broadcast(_p[c]), q = TSimd.Broadcast(_q[c]), slope = TSimd.Broadcast(_slope);
        TVector a = TSimd.Broadcast(_a[c]), b = TSimd.Broadcast(_b[c]), e = TSimd.Broadcast(_e[c]);
        int i = from;
        for (; i <= to - TSimd.Count; i += TSimd.Count)
        {
            TVector centered = TSimd.Subtract(TSimd.Load(ref y[i], 0), center);
            TVector d = Through<TSimd, TVector>(TSimd.MultiplyAdd(centered, p, q), TSimd.Load(ref dOut[i], 0), slope);
            TSimd.Store(TSimd.MultiplyAdd(a, d, TSimd.MultiplyAdd(b, centered, e)), ref dy[i], 0);
        }
        return i;
    }

    /// <summary>z &gt; 0 ? z : slope·z, LeakyReLU's forward (NaN stays NaN).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TVector Rectify<TSimd, TVector>(TVector z, TVector slope)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged => TSimd.PositiveOr(z, z, TSimd.Multiply(z, slope));

    /// <summary>z &gt; 0 ? dOut : slope·dOut, LeakyReLU's backward.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TVector Through<TSimd, TVector>(TVector z, TVector dOut, TVector slope)
        where TSimd : ISimd<T, TVector>
        where TVector : unmanaged => TSimd.PositiveOr(z, dOut, TSimd.Multiply(dOut, slope));
}
