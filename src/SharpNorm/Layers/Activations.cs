using System.Numerics;
using System.Numerics.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// Leaky rectifier, the twin of torch.nn.LeakyReLU: y = x for x &gt; 0, else slope*x. The default slope is darknet's
/// 0.1 (PyTorch's is 0.01); dx = dy where x &gt; 0, else slope*dy (PyTorch's choice at x = 0).
/// </summary>
public sealed class LeakyReLU<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly T _slope;

    /// <param name="negativeSlope">The slope for negative inputs; 0 gives ReLU.</param>
    public LeakyReLU(double negativeSlope = 0.1)
    {
        if (!double.IsFinite(negativeSlope))
            throw new ArgumentOutOfRangeException(nameof(negativeSlope), negativeSlope, "negativeSlope must be finite.");
        NegativeSlope = negativeSlope;
        _slope = T.CreateTruncating(negativeSlope);
    }

    public double NegativeSlope { get; }

    protected override string Description => $"LeakyReLU({NegativeSlope})";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

    private readonly Rectifier<T> _rectifier = new();

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y) => _rectifier.Run(x, default, y, _slope, Threads);

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) =>
        _rectifier.Run(x, dy, dx, _slope, Threads);
}

/// <summary>Rectifier, the twin of torch.nn.ReLU: y = max(x, 0); dx = dy where x &gt; 0, else 0.</summary>
public sealed class ReLU<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    protected override string Description => "ReLU";

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape) => inputShape.ToArray();

    private readonly Rectifier<T> _rectifier = new();

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y) => _rectifier.Run(x, default, y, T.Zero, Threads);

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) =>
        _rectifier.Run(x, dy, dx, T.Zero, Threads);
}

/// <summary>A rectifier's forward or backward over pieces of the tensor on the shared helper threads (element-wise: any split gives the same bits).</summary>
internal sealed unsafe class Rectifier<T> : SharpNorm.Threading.IChunkJob where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>Elements per piece: below two pieces the caller's thread does it all.</summary>
    private const int Piece = 1 << 16;

    private T* _x, _dy, _out;
    private int _length;
    private T _slope;

    /// <summary>The forward (dy empty) or the backward of a rectifier with the given slope.</summary>
    public void Run(ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> output, T slope, int threads)
    {
        fixed (T* px = x)
        fixed (T* pdy = dy)
        fixed (T* pout = output)
        {
            _x = px;
            _dy = dy.IsEmpty ? null : pdy;
            _out = pout;
            (_length, _slope) = (x.Length, slope);
            int pieces = (x.Length + Piece - 1) / Piece;
            SharpNorm.Threading.ChunkRunner.Shared.Run(this, pieces, pieces < 2 ? 1 : Math.Max(1, threads));
            _x = _dy = _out = null;
        }
    }

    void SharpNorm.Threading.IChunkJob.Execute(int chunk, int worker)
    {
        int first = chunk * Piece, count = Math.Min(Piece, _length - first);
        var x = new ReadOnlySpan<T>(_x + first, count);
        var output = new Span<T>(_out + first, count);
        if (_dy is null) Rectifier.Forward(x, output, _slope);
        else Rectifier.Backward(x, new ReadOnlySpan<T>(_dy + first, count), output, _slope);
    }
}

internal static class Rectifier
{
    /// <summary>y = x &gt; 0 ? x : slope*x (NaN stays NaN).</summary>
    public static void Forward<T>(ReadOnlySpan<T> x, Span<T> y, T slope) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && Vector<T>.IsSupported)
        {
            var slopes = new Vector<T>(slope);
            for (; i <= x.Length - Vector<T>.Count; i += Vector<T>.Count)
            {
                var v = new Vector<T>(x[i..]);
                Vector.ConditionalSelect(Vector.LessThanOrEqual(v, Vector<T>.Zero), v * slopes, v).CopyTo(y[i..]);
            }
        }
        for (; i < x.Length; i++) y[i] = x[i] <= T.Zero ? x[i] * slope : x[i];
    }

    /// <summary>dx = x &gt; 0 ? dy : slope*dy.</summary>
    public static void Backward<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx, T slope) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated && Vector<T>.IsSupported)
        {
            var slopes = new Vector<T>(slope);
            for (; i <= x.Length - Vector<T>.Count; i += Vector<T>.Count)
            {
                var g = new Vector<T>(dy[i..]);
                Vector.ConditionalSelect(Vector.GreaterThan(new Vector<T>(x[i..]), Vector<T>.Zero), g, g * slopes).CopyTo(dx[i..]);
            }
        }
        for (; i < x.Length; i++) dx[i] = x[i] > T.Zero ? dy[i] : dy[i] * slope;
    }
}
