using System.Buffers;
using System.Runtime.CompilerServices;

namespace SharpNorm.Distributed.Mpi;

/// <summary>
/// MPI_COMM_WORLD of Open MPI: the processes <c>mpirun -np N</c> started. <see cref="World"/> initializes MPI on first
/// use (MPI_THREAD_FUNNELED: collectives are called from the thread that initialized it; the layers' helper threads
/// never call MPI) and <see cref="Dispose"/> finalizes it. Every MPI error is an <see cref="MpiException"/> naming the call.
/// </summary>
public sealed unsafe class MpiCommunicator : ICommunicator
{
    private static readonly object s_lock = new();
    private static MpiCommunicator? s_world;
    private static readonly void* InPlace = (void*)1;   // MPI_IN_PLACE in Open MPI

    private readonly MpiLibrary.Functions _mpi;
    private readonly int _thread;
    private bool _disposed;
    // Nonblocking collectives in flight: MPI_Request handles, their pinned buffers, and each slot's generation.
    private nint[] _requests = new nint[8];
    private MemoryHandle[] _pins = new MemoryHandle[8];
    private int[] _generations = Enumerable.Repeat(1, 8).ToArray();
    private bool[] _active = new bool[8];

    private MpiCommunicator(MpiLibrary.Functions mpi)
    {
        _mpi = mpi;
        _thread = Environment.CurrentManagedThreadId;
        int rank, size;
        mpi.Check(mpi.CommRank(mpi.CommWorld, &rank), "MPI_Comm_rank");
        mpi.Check(mpi.CommSize(mpi.CommWorld, &size), "MPI_Comm_size");
        (Rank, Size) = (rank, size);
    }

    /// <summary>Whether this process was started by Open MPI's mpirun (its environment names the job's size).</summary>
    public static bool LaunchedByMpirun => Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is not null;

    /// <summary>The library's own version string (MPI_Get_library_version), e.g. "Open MPI v4.1.4, ...".</summary>
    public static string LibraryVersion => MpiLibrary.Api.Version;

    /// <summary>MPI_COMM_WORLD, MPI initialized on first use by the calling thread.</summary>
    public static MpiCommunicator World
    {
        get
        {
            lock (s_lock)
            {
                if (s_world is { _disposed: false }) return s_world;
                if (s_world is not null) throw new InvalidOperationException("MPI was finalized (MpiCommunicator.World disposed); it cannot be initialized again.");
                MpiLibrary.Functions mpi = MpiLibrary.Api;
                int initialized;
                mpi.Check(mpi.Initialized(&initialized), "MPI_Initialized");
                if (initialized == 0)
                {
                    int provided;
                    mpi.Check(mpi.InitThread(null, null, MpiLibrary.RequiredThreadLevel, &provided), "MPI_Init_thread");
                    if (provided < MpiLibrary.RequiredThreadLevel)
                        throw new MpiException($"MPI_Init_thread provided thread level {provided}; MPI_THREAD_FUNNELED ({MpiLibrary.RequiredThreadLevel}) is needed.", 0);
                }
                return s_world = new MpiCommunicator(mpi);
            }
        }
    }

    public int Rank { get; }

    public int Size { get; }

    /// <summary>Seconds since an arbitrary time in the past (MPI_Wtime).</summary>
    public double Wtime => _mpi.Wtime();

    // Fully optimized from the first call: a collective of a few values costs about as much as the call itself.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void AllReduce<T>(Span<T> values, ReduceOperation operation = ReduceOperation.Sum) where T : unmanaged
    {
        Collective.RequireType<T>(nameof(AllReduce));
        Collective.RequireOperation(operation);
        Enter();
        fixed (T* buffer = values)
            _mpi.Check(_mpi.Allreduce(InPlace, buffer, values.Length, _mpi.Type<T>(), _mpi.Operation(operation), _mpi.CommWorld), "MPI_Allreduce");
    }

    /// <summary>MPI_Iallreduce in place; the buffer is pinned until the request completes.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public CollectiveRequest StartAllReduce<T>(Memory<T> values, ReduceOperation operation = ReduceOperation.Sum) where T : unmanaged
    {
        Collective.RequireType<T>(nameof(StartAllReduce));
        Collective.RequireOperation(operation);
        Enter();
        int slot = Array.IndexOf(_active, false);
        if (slot < 0) slot = Grow();
        MemoryHandle pin = values.Pin();
        int code;
        fixed (nint* request = &_requests[slot])
            code = _mpi.Iallreduce(InPlace, pin.Pointer, values.Length, _mpi.Type<T>(), _mpi.Operation(operation), _mpi.CommWorld, request);
        if (code != 0) pin.Dispose();
        _mpi.Check(code, "MPI_Iallreduce");
        _pins[slot] = pin;
        _active[slot] = true;
        return new CollectiveRequest(slot, _generations[slot]);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public bool Test(CollectiveRequest request)
    {
        Enter();
        if (!InFlight(request)) return true;
        int done;
        fixed (nint* handle = &_requests[request.Slot])
            _mpi.Check(_mpi.Test(handle, &done, null), "MPI_Test");
        if (done != 0) Release(request.Slot);
        return done != 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Wait(CollectiveRequest request)
    {
        Enter();
        if (!InFlight(request)) return;
        fixed (nint* handle = &_requests[request.Slot])
            _mpi.Check(_mpi.Wait(handle, null), "MPI_Wait");
        Release(request.Slot);
    }

    private bool InFlight(CollectiveRequest request) =>
        (uint)request.Slot < (uint)_active.Length && _active[request.Slot] && _generations[request.Slot] == request.Generation;

    private void Release(int slot)
    {
        _pins[slot].Dispose();
        _pins[slot] = default;
        _active[slot] = false;
        _generations[slot]++;
    }

    private int Grow()
    {
        int slot = _active.Length;
        Array.Resize(ref _requests, 2 * slot);
        Array.Resize(ref _pins, 2 * slot);
        Array.Resize(ref _active, 2 * slot);
        Array.Resize(ref _generations, 2 * slot);
        _generations.AsSpan(slot).Fill(1);
        return slot;
    }

    // Fully optimized from the first call: a collective of a few values costs about as much as the call itself.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Broadcast<T>(Span<T> values, int root) where T : unmanaged
    {
        Collective.RequireType<T>(nameof(Broadcast));
        Collective.RequireRoot(root, Size);
        Enter();
        fixed (T* buffer = values)
            _mpi.Check(_mpi.Bcast(buffer, values.Length, _mpi.Type<T>(), root, _mpi.CommWorld), "MPI_Bcast");
    }

    // Fully optimized from the first call: a collective of a few values costs about as much as the call itself.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void AllGather<T>(ReadOnlySpan<T> mine, Span<T> all) where T : unmanaged
    {
        Collective.RequireType<T>(nameof(AllGather));
        Collective.RequireGather(mine.Length, all.Length, Size);
        Enter();
        fixed (T* source = mine)
        fixed (T* target = all)
            _mpi.Check(_mpi.Allgather(source, mine.Length, _mpi.Type<T>(), target, mine.Length, _mpi.Type<T>(), _mpi.CommWorld), "MPI_Allgather");
    }

    // Fully optimized from the first call: a collective of a few values costs about as much as the call itself.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Barrier()
    {
        Enter();
        _mpi.Check(_mpi.Barrier(_mpi.CommWorld), "MPI_Barrier");
    }

    /// <summary>Prints the reason on standard error and ends every process of the job (MPI_Abort): does not return.</summary>
    public void Abort(int errorCode, string reason)
    {
        Console.Error.WriteLine($"rank {Rank} of {Size}: aborting the MPI job (code {errorCode}): {reason}");
        Console.Error.Flush();
        _mpi.Abort(_mpi.CommWorld, errorCode);
    }

    /// <summary>Finalizes MPI (MPI_Finalize); every rank must call it.</summary>
    public void Dispose()
    {
        lock (s_lock)
        {
            if (_disposed) return;
            _disposed = true;
            int finalized;
            _mpi.Check(_mpi.Finalized(&finalized), "MPI_Finalized");
            if (finalized == 0) _mpi.Check(_mpi.Finalize(), "MPI_Finalize");
        }
    }

    private void Enter()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Environment.CurrentManagedThreadId != _thread)
            throw new InvalidOperationException($"MPI collectives must be called from the thread that initialized MPI (thread {_thread}); this is thread {Environment.CurrentManagedThreadId}.");
    }
}
