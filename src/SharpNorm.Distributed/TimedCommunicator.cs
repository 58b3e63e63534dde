using System.Diagnostics;

namespace SharpNorm.Distributed;

/// <summary>The calls of one kind a <see cref="TimedCommunicator"/> saw, and the time spent inside them.</summary>
public readonly record struct CollectiveTime(long Calls, TimeSpan Time);

/// <summary>
/// A communicator that passes every call to another and adds up the time spent inside each kind of call: the time a
/// rank waits for the others and for the transfer, which is what communication costs a training step. Nonblocking
/// all-reduces count their start, tests and wait together; the time they overlapped other work is not in it. A call
/// that throws is not counted: a failed collective ends the job.
/// </summary>
/// <remarks>
/// With <c>separateWaiting</c> a barrier runs before each blocking collective and each wait (a measurement mode: every
/// rank must then wait on the same requests in the same order): its time, <see cref="Waiting"/>, is the ranks reaching
/// the collective at different times, and the collectives' times are their transfers alone.
/// </remarks>
public sealed class TimedCommunicator(ICommunicator inner, bool separateWaiting = false) : ICommunicator
{
    private readonly ICommunicator _inner = inner ?? throw new ArgumentNullException(nameof(inner));
    private long _waitingCalls, _waitingTicks;
    private long _allReduceCalls, _allReduceTicks, _nonblockingCalls, _nonblockingTicks, _broadcastCalls, _broadcastTicks;
    private long _allGatherCalls, _allGatherTicks, _barrierCalls, _barrierTicks;

    public int Rank => _inner.Rank;

    public int Size => _inner.Size;

    public ICommunicator Inner => _inner;

    /// <summary>Blocking all-reduces (SyncBatchNorm's backward sums, the metrics).</summary>
    public CollectiveTime AllReduces => new(_allReduceCalls, Stopwatch.GetElapsedTime(0, _allReduceTicks));

    /// <summary>Nonblocking all-reduces (the gradient buckets): calls counts the starts; the time is start, tests and wait.</summary>
    public CollectiveTime NonblockingAllReduces => new(_nonblockingCalls, Stopwatch.GetElapsedTime(0, _nonblockingTicks));

    /// <summary>All-gathers (SyncBatchNorm's forward statistics).</summary>
    public CollectiveTime AllGathers => new(_allGatherCalls, Stopwatch.GetElapsedTime(0, _allGatherTicks));

    public CollectiveTime Broadcasts => new(_broadcastCalls, Stopwatch.GetElapsedTime(0, _broadcastTicks));

    public CollectiveTime Barriers => new(_barrierCalls, Stopwatch.GetElapsedTime(0, _barrierTicks));

    /// <summary>With separateWaiting: the barriers before the collectives, the time ranks waited for each other.</summary>
    public CollectiveTime Waiting => new(_waitingCalls, Stopwatch.GetElapsedTime(0, _waitingTicks));

    public bool SeparatesWaiting => separateWaiting;

    /// <summary>All the time spent inside the communicator, waiting included.</summary>
    public TimeSpan Total => Stopwatch.GetElapsedTime(0, _allReduceTicks + _nonblockingTicks + _broadcastTicks + _allGatherTicks + _barrierTicks + _waitingTicks);

    /// <summary>Starts the counts from zero.</summary>
    public void Reset() =>
        _waitingCalls = _waitingTicks = _allReduceCalls = _allReduceTicks = _nonblockingCalls = _nonblockingTicks = _broadcastCalls = _broadcastTicks =
            _allGatherCalls = _allGatherTicks = _barrierCalls = _barrierTicks = 0;

    public void AllReduce<T>(Span<T> values, ReduceOperation operation = ReduceOperation.Sum) where T : unmanaged
    {
        WaitForTheOthers();
        long start = Stopwatch.GetTimestamp();
        _inner.AllReduce(values, operation);
        Add(ref _allReduceCalls, ref _allReduceTicks, start);
    }

    public CollectiveRequest StartAllReduce<T>(Memory<T> values, ReduceOperation operation = ReduceOperation.Sum) where T : unmanaged
    {
        long start = Stopwatch.GetTimestamp();
        var result = _inner.StartAllReduce(values, operation);
        Add(ref _nonblockingCalls, ref _nonblockingTicks, start);
        return result;
    }

    public bool Test(CollectiveRequest request)
    {
        long start = Stopwatch.GetTimestamp();
        var result = _inner.Test(request);
        _nonblockingTicks += Stopwatch.GetTimestamp() - start;
        return result;
    }

    public void Wait(CollectiveRequest request)
    {
        WaitForTheOthers();
        long start = Stopwatch.GetTimestamp();
        _inner.Wait(request);
        _nonblockingTicks += Stopwatch.GetTimestamp() - start;
    }

    public void Broadcast<T>(Span<T> values, int root) where T : unmanaged
    {
        WaitForTheOthers();
        long start = Stopwatch.GetTimestamp();
        _inner.Broadcast(values, root);
        Add(ref _broadcastCalls, ref _broadcastTicks, start);
    }

    public void AllGather<T>(ReadOnlySpan<T> mine, Span<T> all) where T : unmanaged
    {
        WaitForTheOthers();
        long start = Stopwatch.GetTimestamp();
        _inner.AllGather(mine, all);
        Add(ref _allGatherCalls, ref _allGatherTicks, start);
    }

    public void Barrier()
    {
        long start = Stopwatch.GetTimestamp();
        _inner.Barrier();
        Add(ref _barrierCalls, ref _barrierTicks, start);
    }

    public void Abort(int errorCode, string reason) => _inner.Abort(errorCode, reason);

    /// <summary>Does nothing: the wrapped communicator is its creator's to dispose.</summary>
    public void Dispose() { }

    private void WaitForTheOthers()
    {
        if (!separateWaiting) return;
        long start = Stopwatch.GetTimestamp();
        _inner.Barrier();
        Add(ref _waitingCalls, ref _waitingTicks, start);
    }

    private static void Add(ref long calls, ref long ticks, long start)
    {
        calls++;
        ticks += Stopwatch.GetTimestamp() - start;
    }
}
