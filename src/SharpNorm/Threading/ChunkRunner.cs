using System.Diagnostics;

namespace SharpNorm.Threading;

/// <summary>A unit of parallel work split into numbered chunks; each chunk runs exactly once, on some worker.</summary>
internal interface IChunkJob
{
    /// <param name="chunk">Which chunk, 0..chunkCount-1.</param>
    /// <param name="worker">Which worker runs it, 0..threads-1: an index into per-worker scratch.</param>
    void Execute(int chunk, int worker);
}

/// <summary>
/// Runs the chunks of a job on the calling thread and up to <c>threads - 1</c> helper threads of its own, and allocates
/// nothing per run. Helpers spin briefly after a job before they sleep, so the back-to-back passes of a normalization
/// (a few hundred microseconds each) do not pay a thread wake-up each. Which worker runs which chunk varies from run to
/// run, so jobs make results independent of it (each chunk writes its own outputs). One job runs at a time: a caller
/// that finds the pool busy (another thread's layer) runs its job alone, with the same results.
/// </summary>
/// <remarks>
/// A helper takes part in a job only if it enters it while the job is open; once the caller has run out of chunks it
/// closes the job and waits for the helpers that entered (they may hold a chunk), never for one still waking up. On a
/// VM a sleeping thread can take a millisecond to run again; a job of a few hundred microseconds then runs on the
/// threads that are there instead of waiting for it.
/// </remarks>
internal sealed class ChunkRunner
{
    /// <summary>The pool all engines share: helpers are a process-wide resource, like OpenMP's.</summary>
    public static ChunkRunner Shared { get; } = new();

    private static readonly long SpinTicks = Stopwatch.Frequency / 2_000; // 500 µs: the serial part between the products of a convolution

    private readonly SemaphoreSlim _done = new(0);
    private readonly object _threadsLock = new();
    private Helper[] _helperThreads = [];
    private int _busy;
    // The published job: generation in the high half, helper count in the low half, read by helpers in one load so
    // that they never pair one job's generation with another's helper count.
    private long _ticket;
    private IChunkJob? _job;
    private int _chunkCount;
    private int _nextChunk;
    // The running job's entry: its generation in the high half, Closed once the caller has no chunks left, and in the
    // low bits the number of helpers inside it. Helpers enter only an open job of the generation they saw published.
    private long _entry;
    private const long Closed = 1L << 31;
    private const long ActiveMask = Closed - 1;
    private Exception? _failure;

    /// <summary>Runs chunks 0..chunkCount-1 of <paramref name="job"/> on at most <paramref name="threads"/> threads.</summary>
    public void Run(IChunkJob job, int chunkCount, int threads)
    {
        int helpers = Math.Min(threads, chunkCount) - 1;
        if (helpers > 0) EnsureHelpers(helpers); // even when busy now: threads are created on first need, not later
        if (helpers <= 0 || Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
        {
            for (int chunk = 0; chunk < chunkCount; chunk++) job.Execute(chunk, 0);
            return;
        }

        try
        {
            _job = job;
            _chunkCount = chunkCount;
            _nextChunk = 0;
            _failure = null;
            long generation = (Volatile.Read(ref _ticket) >> 32) + 1;
            Volatile.Write(ref _entry, generation << 32);
            Interlocked.Exchange(ref _ticket, (generation << 32) | (uint)helpers); // publishes the fields above
            Helper[] helperThreads = _helperThreads;
            for (int i = 0; i < helpers; i++) helperThreads[i].WakeIfSleeping();

            Exception? own = null;
            try
            {
                RunChunks(job, worker: 0);
            }
            catch (Exception e)
            {
                // Hand out no more chunks, but wait for the helpers: they may be using memory the caller pinned for this job.
                own = e;
                Interlocked.Exchange(ref _nextChunk, _chunkCount);
            }

            // No chunks are left to hand out: close the job to helpers not yet in it, and wait for those inside. If any
            // were, the last one out releases _done once; spin for it first, then take that permit.
            long entry = Interlocked.Or(ref _entry, Closed);
            if ((entry & ActiveMask) != 0)
            {
                long spinUntil = Stopwatch.GetTimestamp() + SpinTicks;
                while ((Volatile.Read(ref _entry) & ActiveMask) != 0 && Stopwatch.GetTimestamp() < spinUntil) Thread.SpinWait(16);
                _done.Wait();
            }
            _job = null;
            if (own is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(own);
            if (_failure is { } failure) throw new AggregateException("A normalization kernel failed on a helper thread.", failure);
        }
        finally
        {
            Volatile.Write(ref _busy, 0);
        }
    }

    private void RunChunks(IChunkJob job, int worker)
    {
        int chunk;
        while ((chunk = Interlocked.Increment(ref _nextChunk) - 1) < _chunkCount) job.Execute(chunk, worker);
    }

    private void EnsureHelpers(int helpers)
    {
        if (Volatile.Read(ref _helperThreads).Length >= helpers) return;
        lock (_threadsLock)
        {
            var grown = new Helper[Math.Max(helpers, _helperThreads.Length)];
            _helperThreads.CopyTo(grown, 0);
            for (int i = _helperThreads.Length; i < grown.Length; i++)
            {
                // A new helper must take part in the job about to be published: it starts from the generation before it.
                var helper = grown[i] = new Helper();
                int index = i + 1;
                long generation = Volatile.Read(ref _ticket) >> 32;
                new Thread(() => HelperLoop(helper, index, generation)) { IsBackground = true, Name = $"SharpNorm worker {index}" }.Start();
            }
            Volatile.Write(ref _helperThreads, grown);
        }
    }

    private void HelperLoop(Helper helper, int index, long seen)
    {
        while (true)
        {
            long ticket = Volatile.Read(ref _ticket);
            long spinUntil = Stopwatch.GetTimestamp() + SpinTicks;
            while (ticket >> 32 == seen)
            {
                if (Stopwatch.GetTimestamp() < spinUntil) Thread.SpinWait(16);
                else
                {
                    helper.Sleep(this, seen);
                    spinUntil = Stopwatch.GetTimestamp() + SpinTicks;
                }
                ticket = Volatile.Read(ref _ticket);
            }
            seen = ticket >> 32;
            if (index > (int)(uint)ticket) continue; // this job wants fewer helpers
            if (!TryEnter(seen)) continue;           // the caller finished it without this helper

            try
            {
                RunChunks(_job!, index);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _failure, e, null);
                Volatile.Write(ref _nextChunk, int.MaxValue / 2); // let the others stop early
            }
            long left = Interlocked.Decrement(ref _entry);
            if ((left & Closed) != 0 && (left & ActiveMask) == 0) _done.Release();
        }
    }

    /// <summary>Counts this helper into the job of <paramref name="generation"/> if that job is still open.</summary>
    private bool TryEnter(long generation)
    {
        long entry = Volatile.Read(ref _entry);
        while (entry >> 32 == generation && (entry & Closed) == 0)
        {
            long seen = Interlocked.CompareExchange(ref _entry, entry + 1, entry);
            if (seen == entry) return true;
            entry = seen;
        }
        return false;
    }

    /// <summary>One helper thread's own wake-up: a permit meant for it cannot be taken by another.</summary>
    private sealed class Helper
    {
        private readonly SemaphoreSlim _wake = new(0);
        private int _sleeping;

        /// <summary>Sleeps unless a job after generation <paramref name="seen"/> is published once the helper has said it sleeps.</summary>
        public void Sleep(ChunkRunner runner, long seen)
        {
            Interlocked.Exchange(ref _sleeping, 1);
            if (Volatile.Read(ref runner._ticket) >> 32 == seen)
            {
                _wake.Wait();
                return;
            }
            // A job came meanwhile. Take the announcement back; if a waker already took it, consume its permit.
            if (Interlocked.Exchange(ref _sleeping, 0) == 0) _wake.Wait();
        }

        public void WakeIfSleeping()
        {
            if (Interlocked.Exchange(ref _sleeping, 0) == 1) _wake.Release();
        }
    }
}
