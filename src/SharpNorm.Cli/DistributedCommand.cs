using System.Diagnostics;
using SharpNorm.Distributed;
using SharpNorm.Distributed.Mpi;

namespace SharpNorm.Cli;

/// <summary>
/// <c>sharpnorm distributed check</c>: run under <c>mpirun -np N</c>, every rank checks MPI's collectives against the
/// values they must give (all-reduce sum/max/min over float, double, int and long, broadcast from the first and last
/// rank, all-gather, barrier, nonblocking all-reduces) and times the all-reduce at the sizes training uses; rank 0 prints the result. With
/// <c>--in-process N</c> the same checks run over N threads (the in-process communicator), no MPI needed.
/// </summary>
internal static class DistributedCommand
{
    public const string Usage = """
        Usage: mpirun -np N sharpnorm distributed check    check Open MPI's collectives across the N ranks
               sharpnorm distributed check --in-process N  the same over N threads of one process
               mpirun -np N sharpnorm distributed check --fail-rank R | --kill-rank R
                                                           rank R throws (or kills itself) halfway: every rank must end

        Every rank checks all-reduce (sum, max, min; float, double, int, long), nonblocking all-reduces in flight
        together, broadcast and all-gather against the values they must give, then times the all-reduce of 4 floats and of 1.6 MB of floats (median of 1000 and 20).
        Exit code 0 when every rank's checks pass.
        """;

    public static int Run(string[] args)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help")
        {
            Console.Out.WriteLine(Usage);
            return args.Length == 0 ? 2 : 0;
        }
        if (args[0] != "check") throw new UsageException($"unknown distributed command '{args[0]}' (commands: check)");
        if (args.Length == 3 && args[1] == "--in-process")
        {
            int ranks = int.TryParse(args[2], out int n) && n >= 1 ? n : throw new UsageException($"--in-process needs a rank count of 1 or more, got '{args[2]}'");
            var lines = new string[ranks];
            InProcessCommunicator.Run(ranks, communicator => lines[communicator.Rank] = Check(communicator, "in-process"));
            foreach (string line in lines) Console.Out.WriteLine(line);
            return 0;
        }
        (bool kill, int faultyRank) = args switch
        {
            ["check"] => (false, -1),
            ["check", "--fail-rank" or "--kill-rank", var r] when int.TryParse(r, out int rank) && rank >= 0 => (args[1] == "--kill-rank", rank),
            _ => throw new UsageException($"distributed check takes --in-process N, --fail-rank R or --kill-rank R; got '{string.Join(' ', args[1..])}'"),
        };
        if (!MpiCommunicator.LaunchedByMpirun)
            throw new UsageException($"distributed check runs under mpirun (mpirun -np 2 {CommandLine.Self} distributed check), or with --in-process N");
        using MpiCommunicator world = MpiCommunicator.World;
        string result;
        try
        {
            result = Check(world, MpiCommunicator.LibraryVersion.Split('\n')[0]);
            if (world.Rank == faultyRank)
            {
                // The other ranks are already waiting in the next collective: the job must end, not hang.
                if (kill) System.Diagnostics.Process.GetCurrentProcess().Kill();
                throw new InvalidOperationException($"rank {world.Rank} failed on purpose (--fail-rank)");
            }
        }
        catch (Exception e)
        {
            world.Abort(1, $"{e.GetType().Name}: {e.Message}");
            throw;
        }
        // Each rank's line, gathered in rank order onto rank 0, as fixed-size text.
        const int Width = 512;
        var mine = new int[Width];
        for (int i = 0; i < Math.Min(result.Length, Width); i++) mine[i] = result[i];
        var all = new int[Width * world.Size];
        world.AllGather<int>(mine, all);
        if (world.Rank == 0)
            for (int r = 0; r < world.Size; r++)
                Console.Out.WriteLine(new string(all.Skip(r * Width).Take(Width).TakeWhile(c => c != 0).Select(c => (char)c).ToArray()));
        world.Barrier();
        return 0;
    }

    /// <summary>The checks on one rank; throws on the first wrong value, naming it.</summary>
    private static string Check(ICommunicator c, string library)
    {
        int rank = c.Rank, size = c.Size;
        // Sum: values[i] = rank + i/2 on each rank, so the sum is size(size-1)/2 + size·i/2 exactly in float.
        var floats = new float[1000];
        for (int i = 0; i < floats.Length; i++) floats[i] = rank + i * 0.5f;
        c.AllReduce<float>(floats);
        for (int i = 0; i < floats.Length; i++) Expect(floats[i], size * (size - 1) / 2f + size * i * 0.5f, $"float sum [{i}]");
        var doubles = new double[] { rank, -rank, 1e300 * (rank + 1) };
        c.AllReduce<double>(doubles, ReduceOperation.Max);
        Expect(doubles[0], size - 1, "double max [0]");
        Expect(doubles[1], 0, "double max [1]");
        Expect(doubles[2], 1e300 * size, "double max [2]");
        var ints = new[] { rank + 1, 100 - rank };
        c.AllReduce<int>(ints, ReduceOperation.Min);
        Expect(ints[0], 1, "int min [0]");
        Expect(ints[1], 100 - (size - 1), "int min [1]");
        var longs = new[] { (long)rank << 40 };
        c.AllReduce<long>(longs);
        Expect(longs[0], (long)size * (size - 1) / 2 << 40, "long sum");
        foreach (int root in new[] { 0, size - 1 })
        {
            var values = new double[] { rank == root ? Math.PI : double.NaN, rank == root ? root : -1 };
            c.Broadcast<double>(values, root);
            Expect(values[0], Math.PI, $"broadcast from {root} [0]");
            Expect(values[1], root, $"broadcast from {root} [1]");
        }
        var gathered = new long[2 * size];
        c.AllGather<long>(new long[] { rank, rank * 10L }, gathered);
        for (int r = 0; r < size; r++)
        {
            Expect(gathered[2 * r], r, $"all-gather [{2 * r}]");
            Expect(gathered[2 * r + 1], 10L * r, $"all-gather [{2 * r + 1}]");
        }
        c.Barrier();

        // Nonblocking all-reduces, three in flight at once, completed by tests, a wait and a wait after completion.
        var first = new float[3000];
        var second = new double[] { rank, 2.0 * rank };
        var third = new long[] { rank + 1 };
        first.AsSpan().Fill(rank + 1);
        CollectiveRequest a = c.StartAllReduce<float>(first), b = c.StartAllReduce<double>(second, ReduceOperation.Max), d = c.StartAllReduce<long>(third, ReduceOperation.Min);
        while (!c.Test(a)) { }
        Expect(c.Test(a), true, "Test of a completed request");
        c.Wait(b);
        c.Wait(d);
        c.Wait(d);
        for (int i = 0; i < first.Length; i++) Expect(first[i], size * (size + 1) / 2f, $"nonblocking float sum [{i}]");
        Expect(second[0], size - 1, "nonblocking double max [0]");
        Expect(second[1], 2.0 * (size - 1), "nonblocking double max [1]");
        Expect(third[0], 1L, "nonblocking long min");
        c.Barrier();

        // The all-reduce at the sizes training uses: per-channel statistics (4 floats) and a model's gradients (1.6 MB).
        double Median(int floatsCount, int runs)
        {
            var buffer = new float[floatsCount];
            var times = new double[runs];
            for (int i = -runs / 10 - 1; i < runs; i++)
            {
                c.Barrier();
                long start = Stopwatch.GetTimestamp();
                c.AllReduce<float>(buffer);
                if (i >= 0) times[i] = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
            }
            Array.Sort(times);
            return times[runs / 2];
        }
        double small = Median(4, 1000), large = Median(400_000, 20);
        return $"rank {rank} of {size}: collectives ok ({library}); all-reduce of 4 floats {small:F1} µs, of 1.6 MB {large / 1000:F2} ms ({1.6e6 / large / 1e3:F2} GB/s)";
    }

    private static void Expect<T>(T actual, T expected, string what) where T : IEquatable<T>
    {
        if (!actual.Equals(expected)) throw new InvalidOperationException($"distributed check: {what} is {actual}, expected {expected}.");
    }
}
