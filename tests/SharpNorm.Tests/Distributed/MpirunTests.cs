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
        string cli = System.IO.Path.Combine(AppContext.BaseDirectory, "SharpNorm.Cli.dll");
        var start = new ProcessStartInfo(Path!)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in new[] { "--allow-run-as-root", "--oversubscribe", "-np", ranks.ToString(), "dotnet", cli }) start.ArgumentList.Add(a);
        foreach (string a in arguments.Split(' ', StringSplitOptions.RemoveEmptyEntries)) start.ArgumentList.Add(a);
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync(), error = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"mpirun -np {ranks} sharpnorm {arguments} ran past {timeout.TotalSeconds} s; output so far: {output.Result}{error.Result}");
        }
        return (process.ExitCode, output.Result + error.Result);
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
}
