using SharpNorm.Distributed;
using Xunit;

namespace SharpNorm.Tests.Distributed;

/// <summary>The in-process communicator (threads as ranks): every collective's values, its refusals, and aborts that end every rank.</summary>
public class InProcessCommunicatorTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void CollectivesGiveTheirDefinitionOnEveryRank(int size)
    {
        var seen = new string[size];
        InProcessCommunicator.Run(size, c =>
        {
            Assert.Equal(size, c.Size);
            int rank = c.Rank;
            for (int round = 0; round < 3; round++)
            {
                // Sums in rank order, the same bits on every rank: 0.1 added rank by rank in float.
                var values = Enumerable.Range(0, 33).Select(i => 0.1f * (rank + 1) + i).ToArray();
                c.AllReduce<float>(values);
                for (int i = 0; i < values.Length; i++)
                {
                    float want = 0;
                    for (int r = 0; r < size; r++) want += 0.1f * (r + 1) + i;
                    Assert.Equal(want, values[i]);
                }
                var extremes = new double[] { rank, -rank, rank == 1 ? double.PositiveInfinity : 0 };
                c.AllReduce<double>(extremes, ReduceOperation.Max);
                Assert.Equal(new double[] { size - 1, 0, size > 1 ? double.PositiveInfinity : 0 }, extremes);
                var least = new[] { rank + 5, 7 - rank };
                c.AllReduce<int>(least, ReduceOperation.Min);
                Assert.Equal(new[] { 5, 7 - (size - 1) }, least);
                var big = new[] { (long)(rank + 1) << 40 };
                c.AllReduce<long>(big);
                Assert.Equal((long)size * (size + 1) / 2 << 40, big[0]);
                foreach (int root in new[] { 0, size - 1 })
                {
                    var message = new double[] { rank == root ? 42.5 : -1, rank };
                    c.Broadcast<double>(message, root);
                    Assert.Equal(new double[] { 42.5, root }, message);
                }
                var all = new float[3 * size];
                c.AllGather<float>(new float[] { rank, rank + 0.5f, -rank }, all);
                for (int r = 0; r < size; r++) Assert.Equal(new float[] { r, r + 0.5f, -r }, all[(3 * r)..(3 * r + 3)]);
                var pending = new double[] { rank + 0.25, -rank };
                CollectiveRequest request = c.StartAllReduce<double>(pending, ReduceOperation.Min);
                Assert.True(c.Test(request));
                c.Wait(request);
                c.Wait(request);
                Assert.Equal(new double[] { 0.25, -(size - 1) }, pending);
                var empty = Array.Empty<float>();
                c.AllReduce<float>(empty);
                c.Barrier();
            }
            seen[rank] = "done";
        });
        Assert.All(seen, s => Assert.Equal("done", s));
    }

    [Fact]
    public void ARankThatThrowsEndsEveryRankNamingIt()
    {
        var others = new Exception?[3];
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var e = Assert.Throws<AggregateException>(() => InProcessCommunicator.Run(3, c =>
        {
            if (c.Rank == 1) throw new InvalidOperationException("out of data");
            try
            {
                // Rank 1 never comes: without the abort these would wait forever.
                for (int i = 0; i < 5; i++) c.AllReduce<float>(new float[4]);
            }
            catch (Exception failure)
            {
                others[c.Rank] = failure;
                throw;
            }
        }));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30));
        Assert.Contains("Rank 1 of 3 failed: out of data", e.Message);
        foreach (int r in new[] { 0, 2 })
        {
            var aborted = Assert.IsType<CommunicatorAbortedException>(others[r]);
            Assert.Contains("rank 1 failed: InvalidOperationException: out of data", aborted.Message);
        }
    }

    [Fact]
    public void MismatchedCallsAndBadArgumentsAreRefused()
    {
        var e = Assert.Throws<AggregateException>(() => InProcessCommunicator.Run(2, c => c.AllReduce<double>(new double[c.Rank == 0 ? 3 : 4])));
        Assert.Matches(@"AllReduce: rank [01] passed [34] values, rank [01] [34]\.", e.InnerExceptions.First(x => x is InvalidOperationException).Message);

        InProcessCommunicator[] group = InProcessCommunicator.CreateGroup(2);
        var root = Assert.Throws<ArgumentOutOfRangeException>(() => group[0].Broadcast<float>(new float[2], 2));
        Assert.Contains("0 to 1", root.Message);
        var gather = Assert.Throws<ArgumentException>(() => group[0].AllGather<float>(new float[3], new float[5]));
        Assert.Contains("2 x 3 = 6; got 5", gather.Message);
        var type = Assert.Throws<NotSupportedException>(() => group[0].AllReduce<byte>(new byte[2]));
        Assert.Throws<NotSupportedException>(() => group[0].StartAllReduce<byte>(new byte[2]));
        var operation = Assert.Throws<ArgumentOutOfRangeException>(() => group[0].StartAllReduce<float>(new float[2], (ReduceOperation)7));
        Assert.Contains("Sum, Max or Min", operation.Message);
        Assert.Contains("float, double, int or long elements; got Byte", type.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => InProcessCommunicator.CreateGroup(0));
    }

    [Fact]
    public void TimedCommunicatorPassesEveryCallOnAndCountsIt()
    {
        foreach (bool separate in new[] { false, true })
        {
            var counts = new (long AllReduce, long Nonblocking, long Gather, long Broadcast, long Barrier, long Waiting)[2];
            InProcessCommunicator.Run(2, inner =>
            {
                var c = new TimedCommunicator(inner, separate);
                var values = new float[] { inner.Rank + 1, 10 };
                c.AllReduce<float>(values);
                Assert.Equal(new float[] { 3, 20 }, values);
                var pending = new double[] { inner.Rank };
                CollectiveRequest request = c.StartAllReduce<double>(pending, ReduceOperation.Max);
                c.Test(request);
                c.Wait(request);
                Assert.Equal(1.0, pending[0]);
                var all = new int[2];
                c.AllGather<int>(new[] { inner.Rank * 7 }, all);
                Assert.Equal(new[] { 0, 7 }, all);
                var message = new long[] { inner.Rank == 1 ? 99 : 0 };
                c.Broadcast<long>(message, 1);
                Assert.Equal(99, message[0]);
                c.Barrier();
                counts[inner.Rank] = (c.AllReduces.Calls, c.NonblockingAllReduces.Calls, c.AllGathers.Calls, c.Broadcasts.Calls, c.Barriers.Calls, c.Waiting.Calls);
                Assert.True(c.Total >= c.AllReduces.Time + c.Waiting.Time);
                c.Reset();
                Assert.Equal(TimeSpan.Zero, c.Total);
                Assert.Equal(0, c.AllReduces.Calls);
            });
            // With separateWaiting a barrier before the all-reduce, the wait, the all-gather and the broadcast.
            Assert.All(counts, k => Assert.Equal((1L, 1L, 1L, 1L, 1L, separate ? 4L : 0L), k));
        }
    }
}
