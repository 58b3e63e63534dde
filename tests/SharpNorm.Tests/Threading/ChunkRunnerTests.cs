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

        public void Execute(int chunk, int worker)
        {
            Interlocked.Increment(ref Runs[chunk]);
            Workers[chunk] = worker;
            Thread.SpinWait(spin);
        }
    }

    private sealed class ThrowingJob(int throwAt) : IChunkJob
    {
        public void Execute(int chunk, int worker)
        {
            Thread.SpinWait(200);
            if (chunk == throwAt) throw new InvalidOperationException($"chunk {chunk}");
        }
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
            Assert.All(work.Runs, count => Assert.Equal(1, count));
            Assert.All(work.Workers, worker => Assert.InRange(worker, 0, threads - 1));
            if (job % 500 == 499) Thread.Sleep(5);
        }
    }

    [Theory]
    [InlineData(0)]
    [InlineData(5)]
    public void AFailingChunkThrowsAndThePoolKeepsWorking(int throwAt)
    {
        var runner = new ChunkRunner();
        for (int attempt = 0; attempt < 200; attempt++)
        {
            var e = Assert.ThrowsAny<Exception>(() => runner.Run(new ThrowingJob(throwAt), 8, 3));
            Exception inner = e is AggregateException aggregate ? aggregate.InnerException! : e;
            Assert.IsType<InvalidOperationException>(inner);
            Assert.Equal($"chunk {throwAt}", inner.Message);

            var work = new CountingJob(6, spin: 50);
            runner.Run(work, 6, 3);
            Assert.All(work.Runs, count => Assert.Equal(1, count));
        }
    }
}
