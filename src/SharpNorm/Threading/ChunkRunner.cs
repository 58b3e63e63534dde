namespace SharpNorm.Threading;

/// <summary>A unit of parallel work split into numbered chunks; each chunk runs exactly once, on some worker.</summary>
internal interface IChunkJob
{
    /// <param name="chunk">Which chunk, 0..chunkCount-1.</param>
    /// <param name="worker">Which worker runs it, 0..workers-1: an index into per-worker scratch.</param>
    void Execute(int chunk, int worker);
}

/// <summary>
/// Runs the chunks of a job on the calling thread and up to <c>threads - 1</c> thread-pool workers, without
/// allocating: the runner is its own reusable work item. Which worker runs which chunk varies from run to run,
/// so jobs must make results independent of it (each chunk writes its own outputs).
/// </summary>
internal sealed class ChunkRunner : IThreadPoolWorkItem
{
    private readonly ManualResetEventSlim _workersDone = new(false);
    private IChunkJob? _job;
    private int _chunkCount;
    private int _nextChunk;
    private int _nextWorker;
    private int _activeWorkers;

    /// <summary>Runs chunks 0..chunkCount-1 of <paramref name="job"/> on at most <paramref name="threads"/> threads.</summary>
    public void Run(IChunkJob job, int chunkCount, int threads)
    {
        int helpers = Math.Min(threads, chunkCount) - 1;
        if (helpers <= 0)
        {
            for (int chunk = 0; chunk < chunkCount; chunk++) job.Execute(chunk, 0);
            return;
        }

        _job = job;
        _chunkCount = chunkCount;
        _nextChunk = 0;
        _nextWorker = 0;
        _activeWorkers = helpers;
        _workersDone.Reset();
        for (int i = 0; i < helpers; i++) ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);

        RunChunks(job, worker: 0);
        // Every helper must have left before the job's buffers are reused by the next call.
        if (Volatile.Read(ref _activeWorkers) != 0) _workersDone.Wait();
        _job = null;
    }

    /// <summary>Helper entry point: runs chunks until none are left.</summary>
    void IThreadPoolWorkItem.Execute()
    {
        int worker = Interlocked.Increment(ref _nextWorker);
        RunChunks(_job!, worker);
        if (Interlocked.Decrement(ref _activeWorkers) == 0) _workersDone.Set();
    }

    private void RunChunks(IChunkJob job, int worker)
    {
        int chunk;
        while ((chunk = Interlocked.Increment(ref _nextChunk) - 1) < _chunkCount) job.Execute(chunk, worker);
    }
}
