namespace SharpNorm.Distributed;

/// <summary>The reductions an all-reduce can apply, element by element over the ranks.</summary>
public enum ReduceOperation
{
    Sum,
    Max,
    Min,
}

/// <summary>
/// A group of ranks that run the same program and meet in collective calls (MPI's communicator): every rank calls the
/// same collectives in the same order with matching sizes. Element types: float, double, int and long.
/// </summary>
public interface ICommunicator : IDisposable
{
    /// <summary>This rank's number, 0 to <see cref="Size"/> - 1.</summary>
    int Rank { get; }

    /// <summary>Ranks in the group.</summary>
    int Size { get; }

    /// <summary>values[i] = the reduction over the ranks of their values[i], on every rank (in place).</summary>
    void AllReduce<T>(Span<T> values, ReduceOperation operation = ReduceOperation.Sum) where T : unmanaged;

    /// <summary>
    /// Starts the all-reduce of <paramref name="values"/> (in place, as <see cref="AllReduce{T}"/>) and returns before
    /// it completes (MPI_Iallreduce), so communication overlaps the caller's work; the values must stay untouched
    /// until <see cref="Wait"/> returns or <see cref="Test"/> returns true. Blocking and nonblocking collectives are
    /// started in the same order on every rank.
    /// </summary>
    CollectiveRequest StartAllReduce<T>(Memory<T> values, ReduceOperation operation = ReduceOperation.Sum) where T : unmanaged;

    /// <summary>Advances the request (MPI_Test); true once it has completed. A completed request stays completed.</summary>
    bool Test(CollectiveRequest request);

    /// <summary>Returns once the request has completed (MPI_Wait); at once for a completed request.</summary>
    void Wait(CollectiveRequest request);

    /// <summary>Every rank's values become <paramref name="root"/>'s.</summary>
    void Broadcast<T>(Span<T> values, int root) where T : unmanaged;

    /// <summary>all = the ranks' <paramref name="mine"/> side by side in rank order (all.Length = Size · mine.Length).</summary>
    void AllGather<T>(ReadOnlySpan<T> mine, Span<T> all) where T : unmanaged;

    /// <summary>Returns once every rank has called it.</summary>
    void Barrier();

    /// <summary>Ends every rank's participation: the others' pending and later collectives fail (MPI_Abort ends the processes).</summary>
    void Abort(int errorCode, string reason);
}

/// <summary>
/// A nonblocking collective in flight, from <see cref="ICommunicator.StartAllReduce{T}"/>: a slot of its communicator
/// and the slot's generation, so a request that completed is recognised as such after the slot is reused.
/// <c>default</c> is a completed request.
/// </summary>
public readonly record struct CollectiveRequest(int Slot, int Generation);

/// <summary>A collective that could not complete because a rank aborted or failed.</summary>
public sealed class CommunicatorAbortedException(string message, Exception? inner = null) : Exception(message, inner);

internal static class Collective
{
    /// <summary>The element types the communicators reduce and move.</summary>
    public static void RequireType<T>(string operation) where T : unmanaged
    {
        if (typeof(T) != typeof(float) && typeof(T) != typeof(double) && typeof(T) != typeof(int) && typeof(T) != typeof(long))
            throw new NotSupportedException($"{operation} takes float, double, int or long elements; got {typeof(T).Name}.");
    }

    public static void RequireOperation(ReduceOperation operation)
    {
        if ((uint)operation > (uint)ReduceOperation.Min) throw new ArgumentOutOfRangeException(nameof(operation), operation, "Unknown reduction (Sum, Max or Min).");
    }

    public static void RequireRoot(int root, int size)
    {
        if ((uint)root >= (uint)size) throw new ArgumentOutOfRangeException(nameof(root), root, $"The root must be a rank, 0 to {size - 1}.");
    }

    public static void RequireGather(int mine, int all, int size)
    {
        if ((long)mine * size != all)
            throw new ArgumentException($"AllGather needs all.Length = Size x mine.Length = {size} x {mine} = {(long)mine * size}; got {all}.", nameof(all));
    }
}
