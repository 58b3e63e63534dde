using SharpNorm.Threading;
using Xunit;

namespace SharpNorm.Tests.Threading;

/// <summary>The pool under load: every chunk exactly once, exceptions from any thread, no hang between jobs.</summary>
public class ChunkRunnerTests
{
    private sealed class CountingJob(int chunks, int spin) : IChunkJob
    {
        public readonly int[] Runs = new int[chunks];
        public readonly int[] Workers = new int[chunks];
        /// <summary>Chunks still executing: Run must not return while one is.</summary>
        public int InFlight;

        public void Execute(int chunk, int worker)
        {
            Interlocked.Increment(ref InFlight);
            Workers[chunk] = worker;
            Thread.SpinWait(spin);
            Interlocked.Increment(ref Runs[chunk]);
            Interlocked.Decrement(ref InFlight);
        }
    }

    private sealed class ThrowingJob(Func<int, int, bool> throwIf) : IChunkJob
    {
        /// <summary>Whether a helper ran a chunk of this job.</summary>
        public volatile bool HelperJoined;

        public void Execute(int chunk, int worker)
        {
            if (worker != 0) HelperJoined = true;
            // The caller's chunks give a helper up to 100 ms to join, so helper failures are exercised nearly every time.
            var waited = System.Diagnostics.Stopwatch.StartNew();
            while (worker == 0 && !HelperJoined && waited.ElapsedMilliseconds < 100) Thread.SpinWait(100);
            Thread.SpinWait(500);
            if (!throwIf(chunk, worker)) return;
            Threw = true;
            throw new InvalidOperationException($"chunk {chunk} on worker {worker}");
        }

        /// <summary>Whether some chunk threw: then Run must throw.</summary>
        public volatile bool Threw;
    }

    private static void AssertComplete(CountingJob work, int threads)
    {
        Assert.Equal(0, Volatile.Read(ref work.InFlight));
        Assert.All(work.Runs, count => Assert.Equal(1, count));
        Assert.All(work.Workers, worker => Assert.InRange(worker, 0, threads - 1));
    }

    [Fact]
    public void EveryChunkRunsExactlyOnceOverManyJobs()
    {
        var runner = new ChunkRunner();
        var random = new Random(3);
        for (int job = 0; job < 3000; job++)
        {
            int chunks = random.Next(1, 9), threads = random.Next(1, 5);
            // Short jobs (helpers still waking) and longer ones; now and then a pause long enough for helpers to sleep.
            var work = new CountingJob(chunks, spin: random.Next(2) == 0 ? 10 : 2000);
            runner.Run(work, chunks, threads);
            AssertComplete(work, threads);
            if (job % 500 == 499) Thread.Sleep(5);
        }
    }

    [Fact]
    public async Task TwoCallersAtOnceEachGetEveryChunkOnce()
    {
        // One of them finds the pool busy and runs its job alone; neither may lose or repeat a chunk.
        var runner = new ChunkRunner();
        var callers = Enumerable.Range(0, 2).Select(_ => Task.Run(() =>
        {
            for (int job = 0; job < 500; job++)
            {
                var work = new CountingJob(6, spin: 500);
                runner.Run(work, 6, 2);
                AssertComplete(work, 2);
            }
        })).ToArray();
        await Task.WhenAll(callers).WaitAsync(TimeSpan.FromMinutes(2));   // a TimeoutException if they hang
    }

    [Theory]
    [InlineData("caller")]
    [InlineData("helper")]
    [InlineData("chunk 5")]
    public void AFailingChunkThrowsAndThePoolKeepsWorking(string where)
    {
        var runner = new ChunkRunner();
        Func<int, int, bool> throwIf = where switch
        {
            "caller" => (_, worker) => worker == 0,
            "helper" => (_, worker) => worker != 0,
            _ => (chunk, _) => chunk == 5,
        };
        int thrown = 0;
        for (int attempt = 0; attempt < 200; attempt++)
        {
            var job = new ThrowingJob(throwIf);
            bool runThrew = false;
            try
            {
                runner.Run(job, 8, 3);
            }
            catch (Exception e)
            {
                Exception inner = e is AggregateException aggregate ? aggregate.InnerException! : e;
                Assert.IsType<InvalidOperationException>(inner);
                runThrew = true;
                thrown++;
            }
            // Run throws exactly when a chunk threw (the caller's or the helpers' chunks may all go to the others).
            Assert.True(runThrew == job.Threw, $"{where}: Run threw {runThrew}, a chunk threw {job.Threw}");

            var work = new CountingJob(6, spin: 50);
            runner.Run(work, 6, 3);
            AssertComplete(work, 3);
        }
        Assert.True(thrown >= (where == "chunk 5" ? 200 : 1), $"{where}: {thrown} of 200 runs threw");
    }
}
