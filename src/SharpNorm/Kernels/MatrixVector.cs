using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Threading;

namespace SharpNorm.Kernels;

/// <summary>
/// y (rows × n) = x (rows × k) · Wᵀ for a few rows (W: n × k, row-major), as dot products of W's rows: a fully
/// connected layer at batch 1 streams its weights once, where a matrix product would pack them first. Each output is
/// one <see cref="TensorPrimitives.Dot{T}(ReadOnlySpan{T}, ReadOnlySpan{T})"/>, so results do not depend on the thread count.
/// </summary>
internal sealed unsafe class MatrixVector<T> : IChunkJob where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>The most rows taken this way: each row of W, read once from memory, serves this many dot products from cache.</summary>
    public const int MaxRows = 4;

    /// <summary>Outputs per chunk of work.</summary>
    private const int Outputs = 16;

    private T* _x, _w, _y;
    private int _rows, _n, _k;

    /// <summary>y (rows × n) = x (rows × k) · Wᵀ on at most <paramref name="threads"/> threads (at least 1).</summary>
    public void Multiply(int rows, int n, int k, ReadOnlySpan<T> x, ReadOnlySpan<T> w, Span<T> y, int threads)
    {
        if (rows is < 1 or > MaxRows) throw new ArgumentOutOfRangeException(nameof(rows), rows, $"MatrixVector takes 1 to {MaxRows} rows.");
        fixed (T* px = x)
        fixed (T* pw = w)
        fixed (T* py = y)
        {
            _x = px;
            _w = pw;
            _y = py;
            (_rows, _n, _k) = (rows, n, k);
            int chunks = (n + Outputs - 1) / Outputs;
            // below ~64K multiply-adds a second thread costs more than it saves
            ChunkRunner.Shared.Run(this, chunks, (long)n * k < 1 << 16 ? 1 : threads);
            _x = _w = _y = null;
        }
    }

    void IChunkJob.Execute(int chunk, int worker)
    {
        int first = chunk * Outputs, last = Math.Min(first + Outputs, _n);
        for (int o = first; o < last; o++)
        {
            var weights = new ReadOnlySpan<T>(_w + (long)o * _k, _k);
            for (int r = 0; r < _rows; r++)
                _y[(long)r * _n + o] = TensorPrimitives.Dot(new ReadOnlySpan<T>(_x + (long)r * _k, _k), weights);
        }
    }
}
