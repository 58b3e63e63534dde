using System.Numerics;
using System.Runtime.InteropServices;

namespace SharpNorm.Distributed;

/// <summary>
/// Ranks as threads of one process (tests, and data-parallel runs on one machine without MPI). Each collective pins
/// every rank's buffer, meets at a barrier, and each rank computes its result from all of them in rank order, so the
/// results are the same on every rank and from run to run. A rank that aborts (or whose body throws, under
/// <see cref="Run"/>) makes every pending and later collective of the group throw
/// <see cref="CommunicatorAbortedException"/> naming it: no rank waits forever.
/// </summary>
public sealed unsafe class InProcessCommunicator : ICommunicator
{
    private sealed class Group(int size)
    {
        public readonly Barrier Meeting = new(size);
        public readonly CancellationTokenSource Aborted = new();
        public readonly nint[] Buffers = new nint[size];
        public readonly int[] Lengths = new int[size];
        public volatile string? Reason;
    }

    private readonly Group _group;
    private byte[] _scratch = [];

    private InProcessCommunicator(Group group, int rank)
    {
        _group = group;
        Rank = rank;
    }

    public int Rank { get; }

    public int Size => _group.Lengths.Length;

    /// <summary>A group of <paramref name="size"/> communicators, one per rank, to be used from one thread each.</summary>
    public static InProcessCommunicator[] CreateGroup(int size)
    {
        if (size < 1) throw new ArgumentOutOfRangeException(nameof(size), size, "A group needs at least one rank.");
        var group = new Group(size);
        return Enumerable.Range(0, size).Select(rank => new InProcessCommunicator(group, rank)).ToArray();
    }

    /// <summary>
    /// Runs <paramref name="body"/> once per rank, each on a thread of its own, and returns when all have returned. A
    /// rank that throws aborts the group; the first failure is rethrown, naming its rank.
    /// </summary>
    public static void Run(int size, Action<ICommunicator> body)
    {
        ArgumentNullException.ThrowIfNull(body);
        InProcessCommunicator[] ranks = CreateGroup(size);
        var failures = new Exception?[size];
        var threads = ranks.Select(communicator => new Thread(() =>
        {
            try
            {
                body(communicator);
            }
            catch (Exception e)
            {
                failures[communicator.Rank] = e;
                communicator.Abort(1, $"rank {communicator.Rank} failed: {e.GetType().Name}: {e.Message}");
            }
        }) { IsBackground = true, Name = $"rank {communicator.Rank}" }).ToArray();
        foreach (Thread t in threads) t.Start();
        foreach (Thread t in threads) t.Join();
        // The rank whose failure aborted the group, before the others' aborted collectives.
        Exception? first = failures.FirstOrDefault(e => e is not null and not CommunicatorAbortedException) ?? failures.FirstOrDefault(e => e is not null);
        if (first is not null)
        {
            int rank = Array.IndexOf(failures, first);
            throw new AggregateException($"Rank {rank} of {size} failed: {first.Message}", failures.Where(e => e is not null)!);
        }
    }

    public void AllReduce<T>(Span<T> values, ReduceOperation operation = ReduceOperation.Sum) where T : unmanaged
    {
        Collective.RequireType<T>(nameof(AllReduce));
        Collective.RequireOperation(operation);
        fixed (T* mine = values)
        {
            Deposit(mine, values.Length);
            int length = values.Length;
            for (int r = 0; r < Size; r++)
                if (_group.Lengths[r] != length)
                    Fail($"AllReduce: rank {r} passed {_group.Lengths[r]} values, rank {Rank} {length}.");
            Span<T> result = Scratch<T>(length);
            new ReadOnlySpan<T>((void*)_group.Buffers[0], length).CopyTo(result);
            for (int r = 1; r < Size; r++)
                Reduce(result, new ReadOnlySpan<T>((void*)_group.Buffers[r], length), operation);
            // Every rank has read every buffer before any overwrites its own.
            Meet();
            result.CopyTo(values);
        }
    }

    /// <summary>Completes the all-reduce before it returns: threads of one process have no transfer to overlap.</summary>
    public CollectiveRequest StartAllReduce<T>(Memory<T> values, ReduceOperation operation = ReduceOperation.Sum) where T : unmanaged
    {
        AllReduce(values.Span, operation);
        return default;
    }

    public bool Test(CollectiveRequest request) => true;

    public void Wait(CollectiveRequest request) { }

    public void Broadcast<T>(Span<T> values, int root) where T : unmanaged
    {
        Collective.RequireType<T>(nameof(Broadcast));
        Collective.RequireRoot(root, Size);
        fixed (T* mine = values)
        {
            Deposit(mine, values.Length);
            if (_group.Lengths[root] != values.Length)
                Fail($"Broadcast: root {root} passed {_group.Lengths[root]} values, rank {Rank} {values.Length}.");
            if (Rank != root) new ReadOnlySpan<T>((void*)_group.Buffers[root], values.Length).CopyTo(values);
            Meet();
        }
    }

    public void AllGather<T>(ReadOnlySpan<T> mine, Span<T> all) where T : unmanaged
    {
        Collective.RequireType<T>(nameof(AllGather));
        Collective.RequireGather(mine.Length, all.Length, Size);
        fixed (T* source = mine)
        {
            Deposit(source, mine.Length);
            for (int r = 0; r < Size; r++)
            {
                if (_group.Lengths[r] != mine.Length) Fail($"AllGather: rank {r} passed {_group.Lengths[r]} values, rank {Rank} {mine.Length}.");
                new ReadOnlySpan<T>((void*)_group.Buffers[r], mine.Length).CopyTo(all.Slice(r * mine.Length, mine.Length));
            }
            Meet();
        }
    }

    public void Barrier() => Meet();

    public void Abort(int errorCode, string reason)
    {
        _group.Reason ??= $"rank {Rank} aborted (code {errorCode}): {reason}";
        _group.Aborted.Cancel();
    }

    public void Dispose() { }

    /// <summary>This rank's buffer where the others can read it, then the meeting: after it, every rank's is there.</summary>
    private void Deposit(void* buffer, int length)
    {
        // A rank that runs ahead into its next collective must not overwrite slots still being read: wait first.
        Meet();
        _group.Buffers[Rank] = (nint)buffer;
        _group.Lengths[Rank] = length;
        Meet();
    }

    private void Meet()
    {
        if (_group.Aborted.IsCancellationRequested) throw Aborted(null);
        try
        {
            _group.Meeting.SignalAndWait(_group.Aborted.Token);
        }
        catch (OperationCanceledException e)
        {
            throw Aborted(e);
        }
    }

    private CommunicatorAbortedException Aborted(Exception? inner) =>
        new($"Rank {Rank} of {Size}: the group was aborted: {_group.Reason ?? "(no reason given)"}", inner);

    /// <summary>Mismatched calls: every rank sees the mismatch (all read the same slots), so all throw.</summary>
    private void Fail(string message)
    {
        Abort(1, message);
        throw new InvalidOperationException(message);
    }

    private Span<T> Scratch<T>(int length) where T : unmanaged
    {
        int bytes = checked(length * sizeof(T));
        if (_scratch.Length < bytes) _scratch = GC.AllocateUninitializedArray<byte>(bytes, pinned: true);
        return MemoryMarshal.Cast<byte, T>(_scratch.AsSpan(0, bytes));
    }

    private static void Reduce<T>(Span<T> result, ReadOnlySpan<T> other, ReduceOperation operation) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) Numbers(MemoryMarshal.Cast<T, float>(result), MemoryMarshal.Cast<T, float>(other), operation);
        else if (typeof(T) == typeof(double)) Numbers(MemoryMarshal.Cast<T, double>(result), MemoryMarshal.Cast<T, double>(other), operation);
        else if (typeof(T) == typeof(int)) Numbers(MemoryMarshal.Cast<T, int>(result), MemoryMarshal.Cast<T, int>(other), operation);
        else Numbers(MemoryMarshal.Cast<T, long>(result), MemoryMarshal.Cast<T, long>(other), operation);
    }

    private static void Numbers<T>(Span<T> result, ReadOnlySpan<T> other, ReduceOperation operation) where T : INumber<T>
    {
        for (int i = 0; i < result.Length; i++)
            result[i] = operation switch
            {
                ReduceOperation.Sum => result[i] + other[i],
                ReduceOperation.Max => T.Max(result[i], other[i]),
                _ => T.Min(result[i], other[i]),
            };
    }
}
