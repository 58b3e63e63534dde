using System.Diagnostics;
using SharpNorm.Serialization;
using SharpNorm.Tests.Distributed;
using Xunit;

namespace SharpNorm.Tests.Training;

/// <summary>sharpnorm train writes a checkpoint after every epoch; a run killed mid-way and resumed ends with the uninterrupted run's weights, bit for bit.</summary>
public class ResumeTests
{
    private static string[] Train(string data, string output) =>
        ["train", "--data", data, "--epochs", "4", "--batch-size", "32", "--threads", "1", "--seed", "3", "--optimizer", "adamw", "--out", output];

    internal static int CheckpointEpoch(string folder)
    {
        string path = Path.Combine(folder, "checkpoint.safetensors");
        try
        {
            return File.Exists(path) ? int.Parse(Safetensors.ReadMetadata(path)["epoch"], System.Globalization.CultureInfo.InvariantCulture) : 0;
        }
        catch (IOException)
        {
            return 0;   // replaced while being read
        }
    }

    [Fact]
    public void AKilledRunResumesToTheSameWeightsBitForBit()
    {
        string data = MpirunTests.SyntheticData(320, 40);
        try
        {
            string whole = Path.Combine(data, "whole"), killed = Path.Combine(data, "killed");
            var (code, _, error) = CliTests.Run(Train(data, whole));
            Assert.True(code == 0, error);
            Assert.Equal(4, CheckpointEpoch(whole));

            var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "SharpNorm.Cli.dll"));
            foreach (string arg in Train(data, killed)) start.ArgumentList.Add(arg);
            using (Process process = Process.Start(start)!)
            {
                _ = process.StandardOutput.ReadToEndAsync();
                _ = process.StandardError.ReadToEndAsync();
                var clock = Stopwatch.StartNew();
                while (CheckpointEpoch(killed) < 1 && !process.HasExited && clock.Elapsed < TimeSpan.FromSeconds(60)) Thread.Sleep(5);
                process.Kill();   // SIGKILL: no chance to clean up
                process.WaitForExit();
            }
            int reached = CheckpointEpoch(killed);
            Assert.InRange(reached, 1, 3);   // killed after its first checkpoint, before its last
            Assert.False(File.Exists(Path.Combine(killed, "model.safetensors")));

            var (resumed, output, resumeError) = CliTests.Run("train", "--resume", killed, "--threads", "1", "--data", data);
            Assert.True(resumed == 0, resumeError);
            Assert.Contains($"Resumed {killed} after epoch {reached} of 4", output);
            var (a, _) = Safetensors.Read(Path.Combine(whole, "model.safetensors"));
            var (b, _) = Safetensors.Read(Path.Combine(killed, "model.safetensors"));
            Assert.Equal(a.Keys.Order(), b.Keys.Order());
            foreach (var (name, entry) in a) Assert.True(entry.Data.AsSpan().SequenceEqual(b[name].Data), $"{name} differs");
            // the metrics of the four epochs agree but for the time taken
            string[] Metrics(string folder) => File.ReadAllLines(Path.Combine(folder, "metrics.csv")).Select(l => string.Join(",", l.Split(',').Where((_, i) => i != 5))).ToArray();
            Assert.Equal(Metrics(whole), Metrics(killed));
        }
        finally
        {
            Directory.Delete(data, recursive: true);
        }
    }

    [Fact]
    public async Task AnInterruptedRunNamesTheCommandThatContinuesIt()
    {
        string data = MpirunTests.SyntheticData(320, 40);
        try
        {
            string run = Path.Combine(data, "run");
            var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "SharpNorm.Cli.dll"));
            foreach (string arg in Train(data, run)) start.ArgumentList.Add(arg);
            start.ArgumentList.Add("--epochs");
            start.ArgumentList.Add("12");   // long enough that the signal comes first
            string error;
            int exitCode;
            using (Process process = Process.Start(start)!)
            {
                _ = process.StandardOutput.ReadToEndAsync();
                Task<string> stderr = process.StandardError.ReadToEndAsync();
                var clock = Stopwatch.StartNew();
                while (CheckpointEpoch(run) < 1 && !process.HasExited && clock.Elapsed < TimeSpan.FromSeconds(60)) Thread.Sleep(5);
                using (Process signal = Process.Start("kill", ["-TERM", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])!) signal.WaitForExit();
                Assert.True(process.WaitForExit(60_000), "the interrupted run did not stop");
                exitCode = process.ExitCode;
                error = await stderr;
            }
            Assert.Equal(130, exitCode);
            string line = Assert.Single(error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.Matches(@"^sharpnorm: interrupted after epoch ([1-9]|1[01]) of 12; continue the run with: ", line);
            string command = line[(line.IndexOf("continue the run with: ", StringComparison.Ordinal) + "continue the run with: ".Length)..];
            Assert.Contains($" train --resume {SharpNorm.Cli.CommandLine.Quote(run)}", command);
            var (code, output, resumeError) = CliTests.Shell(command);   // as printed: it names --data too
            Assert.True(code == 0, $"{command}: {resumeError}");
            Assert.Contains($"Resumed {run} after epoch", output);
            Assert.True(File.Exists(Path.Combine(run, "model.safetensors")));
        }
        finally
        {
            Directory.Delete(data, recursive: true);
        }
    }

    [Fact]
    public void ABadCheckpointIsOneLineAndLeavesTheFolderAsItWas()
    {
        string data = MpirunTests.SyntheticData(96, 20);
        try
        {
            string run = Path.Combine(data, "run");
            var (code, _, error) = CliTests.Run("train", "--data", data, "--epochs", "2", "--batch-size", "32", "--threads", "1", "--out", run);
            Assert.True(code == 0, error);
            string checkpoint = Path.Combine(run, "checkpoint.safetensors");
            Dictionary<string, byte[]> Snapshot() => Directory.GetFiles(run).ToDictionary(f => f, File.ReadAllBytes);

            // another file in its place: the final model (not a training checkpoint), then a truncated one
            byte[] original = File.ReadAllBytes(checkpoint);
            foreach (byte[] replacement in new[] { File.ReadAllBytes(Path.Combine(run, "model.safetensors")), original[..(original.Length / 2)] })
            {
                File.WriteAllBytes(checkpoint, replacement);
                var before = Snapshot();
                var (badCode, badOutput, badError) = CliTests.Run("train", "--resume", run, "--data", data);
                Assert.Equal(1, badCode);
                string line = Assert.Single(badError.Split('\n', StringSplitOptions.RemoveEmptyEntries));
                Assert.StartsWith("sharpnorm: error: ", line);
                Assert.Contains("checkpoint.safetensors", line);
                var after = Snapshot();
                Assert.Equal(before.Keys.Order(), after.Keys.Order());
                foreach (var (file, bytes) in before) Assert.True(bytes.AsSpan().SequenceEqual(after[file]), $"{file} changed");
            }
            File.WriteAllBytes(checkpoint, original);
            foreach (var (exit, message, args) in new (int, string, string[])[]
            {
                (2, "--lr cannot be given with it", ["train", "--resume", run, "--lr", "0.5"]),
                (1, "no checkpoint.safetensors in it", ["train", "--resume", data]),
                (1, "no such folder", ["train", "--resume", Path.Combine(data, "none")]),
            })
            {
                var (badCode, _, badError) = CliTests.Run(args);
                Assert.Equal(exit, badCode);
                Assert.Contains(message, Assert.Single(badError.Split('\n', StringSplitOptions.RemoveEmptyEntries)));
            }
            // the hint a finished run prints is a command that runs
            var (_, hintOutput, _) = CliTests.Run("train", "--data", data, "--epochs", "2", "--batch-size", "32", "--threads", "1", "--out", Path.Combine(data, "hinted"));
            string hint = Assert.Single(hintOutput.Split('\n'), l => l.StartsWith("Evaluate it with: ", StringComparison.Ordinal))["Evaluate it with: ".Length..];
            Assert.Contains(" eval --checkpoint ", hint);
            var (evalCode, evalOutput, evalError) = CliTests.Shell(hint);
            Assert.True(evalCode == 0, $"{hint}: {evalError}");
            Assert.Contains("accuracy", evalOutput, StringComparison.OrdinalIgnoreCase);
            // a finished run resumes to nothing more to do
            var (doneCode, doneOutput, doneError) = CliTests.Run("train", "--resume", run, "--data", data, "--threads", "1");
            Assert.True(doneCode == 0, doneError);
            Assert.Contains("all 2 epochs were finished", doneOutput);
        }
        finally
        {
            Directory.Delete(data, recursive: true);
        }
    }
}
