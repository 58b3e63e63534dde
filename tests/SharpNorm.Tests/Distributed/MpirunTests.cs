using System.Diagnostics;
using Xunit;

namespace SharpNorm.Tests.Distributed;

/// <summary>A [Fact] skipped, with the reason, where Open MPI's mpirun is not on PATH (.ci/run installs it and requires these to run).</summary>
public sealed class MpirunFactAttribute : FactAttribute
{
    public MpirunFactAttribute()
    {
        if (Mpirun.Path is null) Skip = "Open MPI's mpirun is not on PATH (Debian: apt-get install openmpi-bin libopenmpi-dev; .ci/run installs it)";
    }
}

internal static class Mpirun
{
    public static string? Path { get; } = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':')
        .Select(d => System.IO.Path.Combine(d, "mpirun")).FirstOrDefault(File.Exists);

    /// <summary>Runs `mpirun -np N dotnet SharpNorm.Cli.dll ARGS` (the CLI beside the tests), as root where need be; (exit code, output).</summary>
    public static (int ExitCode, string Output) Cli(int ranks, string arguments, TimeSpan timeout)
    {
        using Process process = Start(ranks, arguments);
        Task<string> output = process.StandardOutput.ReadToEndAsync(), error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"mpirun -np {ranks} sharpnorm {arguments} ran past {timeout.TotalSeconds} s; output so far: {output.Result}{error.Result}");
        }
        return (process.ExitCode, output.Result + error.Result);
    }

    /// <summary>Starts `mpirun -np N dotnet SharpNorm.Cli.dll ARGS` with its output redirected (the caller reads or drains it).</summary>
    public static Process Start(int ranks, string arguments)
    {
        string cli = System.IO.Path.Combine(AppContext.BaseDirectory, "SharpNorm.Cli.dll");
        var start = new ProcessStartInfo(Path!)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in new[] { "--allow-run-as-root", "--oversubscribe", "-np", ranks.ToString(), "dotnet", cli }) start.ArgumentList.Add(a);
        foreach (string a in arguments.Split(' ', StringSplitOptions.RemoveEmptyEntries)) start.ArgumentList.Add(a);
        return Process.Start(start)!;
    }
}

/// <summary>The MPI communicator under a real mpirun: two processes of the CLI check the collectives against their values.</summary>
public class MpirunTests
{
    [MpirunFact]
    public void TwoRanksPassTheCollectivesCheck()
    {
        var (code, output) = Mpirun.Cli(2, "distributed check", TimeSpan.FromSeconds(120));
        Assert.True(code == 0, $"exit code {code}: {output}");
        Assert.Contains("rank 0 of 2: collectives ok (Open MPI", output);
        Assert.Contains("rank 1 of 2: collectives ok (Open MPI", output);
    }

    [MpirunFact]
    public void ThreeRanksOnTwoCoresPassToo()
    {
        var (code, output) = Mpirun.Cli(3, "distributed check", TimeSpan.FromSeconds(120));
        Assert.True(code == 0, $"exit code {code}: {output}");
        Assert.Contains("rank 2 of 3: collectives ok", output);
    }

    [MpirunFact]
    public void ARankThatThrowsEndsTheJobNamingIt()
    {
        var clock = Stopwatch.StartNew();
        var (code, output) = Mpirun.Cli(2, "distributed check --fail-rank 1", TimeSpan.FromSeconds(60));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"the job took {clock.Elapsed.TotalSeconds:F1} s to end");
        Assert.NotEqual(0, code);
        Assert.Contains("rank 1 of 2: aborting the MPI job (code 1): InvalidOperationException: rank 1 failed on purpose", output);
    }

    [MpirunFact]
    public void ARankThatIsKilledEndsTheJobNamingIt()
    {
        var clock = Stopwatch.StartNew();
        var (code, output) = Mpirun.Cli(2, "distributed check --kill-rank 0", TimeSpan.FromSeconds(60));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"the job took {clock.Elapsed.TotalSeconds:F1} s to end");
        Assert.NotEqual(0, code);
        Assert.Matches(@"process rank 0 with PID \d+ on node \S+ exited on signal 9", output.Replace("\n", " "));
    }

    /// <summary>IDX files of class-striped random 28x28 images, Fashion-MNIST's four names, into a fresh folder.</summary>
    internal static string SyntheticData(int train, int test)
    {
        string folder = Directory.CreateTempSubdirectory("sharpnorm-mpirun-").FullName;
        var random = new Random(5);
        foreach (var (prefix, count) in new[] { ("train", train), ("t10k", test) })
        {
            var labels = new byte[count];
            var pixels = new byte[count * 28 * 28];
            random.NextBytes(pixels);
            for (int i = 0; i < count; i++)
            {
                labels[i] = (byte)random.Next(10);
                for (int c = 0; c < 28; c++) pixels[i * 784 + (2 + labels[i] * 2) * 28 + c] = 255;
            }
            File.WriteAllBytes(Path.Combine(folder, $"{prefix}-images-idx3-ubyte"), Idx([count, 28, 28], pixels));
            File.WriteAllBytes(Path.Combine(folder, $"{prefix}-labels-idx1-ubyte"), Idx([count], labels));
        }
        return folder;
    }

    private static byte[] Idx(int[] dimensions, byte[] data)
    {
        var bytes = new List<byte> { 0, 0, 0x08, (byte)dimensions.Length };
        foreach (int d in dimensions) bytes.AddRange([(byte)(d >> 24), (byte)(d >> 16), (byte)(d >> 8), (byte)d]);
        bytes.AddRange(data);
        return bytes.ToArray();
    }

    private static double[][] Metrics(string folder) =>
        File.ReadAllLines(Path.Combine(folder, "metrics.csv")).Skip(1).Select(l => l.Split(',').Select(v => double.Parse(v, System.Globalization.CultureInfo.InvariantCulture)).ToArray()).ToArray();

    /// <summary>
    /// `mpirun -np 2 sharpnorm train --distributed` against `sharpnorm train` on the same data and arguments: 20 steps
    /// (global batch 64), the same losses and accuracies to float tolerance, one set of outputs, written by rank 0.
    /// A small learning rate keeps float rounding from being amplified by the steps (at lr 0.1 the two float runs drift
    /// apart by about 1e-3 in 16 steps, as any two float orders of the same sums do).
    /// </summary>
    [MpirunFact]
    public void TwoRanksTrainAsOneProcess()
    {
        string data = SyntheticData(640, 200);
        string single = Path.Combine(data, "single"), distributed = Path.Combine(data, "distributed");
        string arguments = $"train --data {data} --epochs 2 --batch-size 64 --lr 0.002 --threads 1";
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in new[] { Path.Combine(AppContext.BaseDirectory, "SharpNorm.Cli.dll") }.Concat($"{arguments} --out {single}".Split(' '))) start.ArgumentList.Add(a);
        using (Process process = Process.Start(start)!)
        {
            string output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
            Assert.True(process.WaitForExit(120_000) && process.ExitCode == 0, output);
        }
        var (code, log) = Mpirun.Cli(2, $"{arguments} --distributed --out {distributed}", TimeSpan.FromSeconds(180));
        Assert.True(code == 0, $"exit code {code}: {log}");
        Assert.Contains("Distributed: 2 ranks", log);
        Assert.Contains("Communication per training step (least-most over the ranks):", log);
        Assert.False(log.Contains((char)27), "terminal escapes in the job's log: " + log);
        double[][] one = Metrics(single), two = Metrics(distributed);
        Assert.Equal(2, two.Length);
        for (int e = 0; e < 2; e++)
        {
            foreach (int column in new[] { 1, 3 })   // train loss, test loss
                Assert.True(Math.Abs(two[e][column] - one[e][column]) <= 2e-4 * one[e][column], $"epoch {e + 1} column {column}: {two[e][column]} against {one[e][column]}");
            foreach (int column in new[] { 2, 4 })   // train and test accuracy: at most one image of 200 on the other side
                Assert.True(Math.Abs(two[e][column] - one[e][column]) <= 0.0051, $"epoch {e + 1} column {column}: {two[e][column]} against {one[e][column]}");
        }
        Assert.True(File.Exists(Path.Combine(distributed, "model.safetensors")));
        Assert.Empty(Directory.GetFiles(distributed, "*.partial"));
        Directory.Delete(data, recursive: true);
    }

    /// <summary>
    /// A distributed run killed with its mpirun (SIGKILL, every rank at once) after its first checkpoint and resumed
    /// under mpirun ends with the uninterrupted distributed run's weights, bit for bit, and its metrics.
    /// </summary>
    [MpirunFact]
    public void AKilledDistributedRunResumesToTheSameWeightsBitForBit()
    {
        string data = SyntheticData(320, 40);
        try
        {
            string whole = Path.Combine(data, "whole"), killed = Path.Combine(data, "killed");
            string arguments = $"train --distributed --data {data} --epochs 6 --batch-size 32 --threads 1 --seed 3 --optimizer adamw";
            var (code, log) = Mpirun.Cli(2, $"{arguments} --out {whole}", TimeSpan.FromSeconds(180));
            Assert.True(code == 0, $"exit code {code}: {log}");

            using (Process mpirun = Mpirun.Start(2, $"{arguments} --out {killed}"))
            {
                _ = mpirun.StandardOutput.ReadToEndAsync();
                _ = mpirun.StandardError.ReadToEndAsync();
                var clock = Stopwatch.StartNew();
                while (Training.ResumeTests.CheckpointEpoch(killed) < 1 && !mpirun.HasExited && clock.Elapsed < TimeSpan.FromSeconds(120)) Thread.Sleep(5);
                mpirun.Kill(entireProcessTree: true);   // SIGKILL to mpirun and every rank
                mpirun.WaitForExit();
            }
            int reached = Training.ResumeTests.CheckpointEpoch(killed);
            Assert.InRange(reached, 1, 5);
            Assert.False(File.Exists(Path.Combine(killed, "model.safetensors")));

            var (resumed, resumeLog) = Mpirun.Cli(2, $"train --distributed --resume {killed} --threads 1 --data {data}", TimeSpan.FromSeconds(180));
            Assert.True(resumed == 0, $"exit code {resumed}: {resumeLog}");
            Assert.Contains($"Resumed {killed} after epoch {reached} of 6", resumeLog);
            var (a, _) = SharpNorm.Serialization.Safetensors.Read(Path.Combine(whole, "model.safetensors"));
            var (b, _) = SharpNorm.Serialization.Safetensors.Read(Path.Combine(killed, "model.safetensors"));
            Assert.Equal(a.Keys.Order(), b.Keys.Order());
            foreach (var (name, entry) in a) Assert.True(entry.Data.AsSpan().SequenceEqual(b[name].Data), $"{name} differs");
            string[] Rows(string folder) => File.ReadAllLines(Path.Combine(folder, "metrics.csv")).Select(l => string.Join(",", l.Split(',').Where((_, i) => i != 5))).ToArray();
            Assert.Equal(Rows(whole), Rows(killed));
            // resumed in one process, a 2-rank run says that its last bits will differ
            var (single, singleOutput, singleError) = Training.CliTests.Run("train", "--resume", whole, "--threads", "1", "--data", data);
            Assert.True(single == 0, singleError);
            Assert.Contains("Note: the run trained on 2 ranks and continues in one process", singleOutput);
        }
        finally
        {
            Directory.Delete(data, recursive: true);
        }
    }

    /// <summary>
    /// SIGTERM to the ranks (as a batch scheduler sends it to a job's tasks): they agree to stop at the same batch,
    /// end with exit code 130, rank 0 names the command that continues the run, and that command, pasted into a
    /// shell, finishes it. (SIGTERM or Ctrl+C to mpirun itself is Open MPI's job kill: SIGCONT, SIGTERM a second later
    /// and SIGKILL a second after that; the run then resumes from its last checkpoint.)
    /// </summary>
    [MpirunFact]
    public void AnInterruptedDistributedRunNamesTheCommandThatContinuesIt()
    {
        string data = SyntheticData(320, 40);
        try
        {
            string run = Path.Combine(data, "run");
            string log;
            using (Process mpirun = Mpirun.Start(2, $"train --distributed --data {data} --epochs 12 --batch-size 32 --threads 1 --out {run}"))
            {
                Task<string> output = mpirun.StandardOutput.ReadToEndAsync(), error = mpirun.StandardError.ReadToEndAsync();
                var clock = Stopwatch.StartNew();
                while (Training.ResumeTests.CheckpointEpoch(run) < 1 && !mpirun.HasExited && clock.Elapsed < TimeSpan.FromSeconds(120)) Thread.Sleep(5);
                using (Process ranks = Process.Start(new ProcessStartInfo("pgrep", ["-P", mpirun.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]) { RedirectStandardOutput = true })!)
                {
                    string[] pids = ranks.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries);
                    ranks.WaitForExit();
                    Assert.Equal(2, pids.Length);
                    using Process signal = Process.Start("kill", ["-TERM", .. pids])!;
                    signal.WaitForExit();
                }
                Assert.True(mpirun.WaitForExit(60_000), "mpirun did not end after SIGTERM");
                Assert.Equal(130, mpirun.ExitCode);
                log = output.Result + error.Result;
            }
            Assert.NotEqual(12, Training.ResumeTests.CheckpointEpoch(run));
            string line = Assert.Single(log.Split('\n'), l => l.StartsWith("sharpnorm: interrupted after epoch ", StringComparison.Ordinal));
            Assert.DoesNotContain("MPI_Abort", log);
            string command = line[(line.IndexOf("continue the run with: ", StringComparison.Ordinal) + "continue the run with: ".Length)..];
            Assert.StartsWith("mpirun ", command);
            Assert.Contains($" -np 2 ", command);
            Assert.Contains($" train --distributed --resume {run} --data {data}", command);
            var (code, output2, error2) = Training.CliTests.Shell(command);
            Assert.True(code == 0, $"{command}: {output2}{error2}");
            Assert.Contains($"Resumed {run} after epoch", output2);
            Assert.True(File.Exists(Path.Combine(run, "model.safetensors")));
        }
        finally
        {
            Directory.Delete(data, recursive: true);
        }
    }

    [MpirunFact]
    public void RanksStartedWithOtherArgumentsAreRefused()
    {
        // mpirun's MPMD form: rank 0 with one seed, rank 1 with another.
        string data = SyntheticData(128, 50);
        string cli = Path.Combine(AppContext.BaseDirectory, "SharpNorm.Cli.dll");
        var start = new ProcessStartInfo(Mpirun.Path!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        string common = $"train --distributed --data {data} --epochs 1 --batch-size 32 --threads 1 --out {Path.Combine(data, "out")}";
        foreach (string a in $"--allow-run-as-root --oversubscribe -np 1 dotnet {cli} {common} --seed 1 : -np 1 dotnet {cli} {common} --seed 2".Split(' '))
            start.ArgumentList.Add(a);
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync(), error = process.StandardError.ReadToEndAsync();
        Assert.True(process.WaitForExit(60_000), "mpirun did not end within 60 s");
        string log = output.Result + error.Result;
        Assert.NotEqual(0, process.ExitCode);
        Assert.Contains("rank 1 was started with other options, data, model or checkpoint than rank 0", log);
        Directory.Delete(data, recursive: true);
    }
}
