using System.Diagnostics;
using Xunit;

namespace SharpNorm.Tests.Training;

/// <summary>The sharpnorm command: every failure is one line on stderr and a non-zero exit code, never a stack trace.</summary>
public class CliTests
{
    internal static (int ExitCode, string Out, string Error) Run(params string[] args)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "SharpNorm.Cli.dll"));
        foreach (string arg in args) start.ArgumentList.Add(arg);
        start.Environment.Remove("SHARPNORM_DEBUG");
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync(), error = process.StandardError.ReadToEndAsync();
        Assert.True(process.WaitForExit(60_000), $"sharpnorm {string.Join(' ', args)} did not finish");
        return (process.ExitCode, output.Result, error.Result);
    }

    /// <summary>A command line as the user would paste it into a shell (a hint the program printed).</summary>
    internal static (int ExitCode, string Out, string Error) Shell(string commandLine)
    {
        var start = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add(commandLine);
        start.Environment.Remove("SHARPNORM_DEBUG");
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync(), error = process.StandardError.ReadToEndAsync();
        Assert.True(process.WaitForExit(120_000), $"{commandLine} did not finish");
        return (process.ExitCode, output.Result, error.Result);
    }

    [Fact]
    public void HintsNameACommandThatRuns()
    {
        string folder = Directory.CreateTempSubdirectory("sharpnorm-hint-").FullName;
        try
        {
            string tools = Directory.CreateDirectory(Path.Combine(folder, "tools")).FullName;
            string shim = Path.Combine(tools, "sharpnorm");
            File.WriteAllText(shim, "");
            string empty = Path.Combine(folder, "empty"), elsewhere = Path.Combine(folder, "elsewhere");   // a PATH without sharpnorm; a current directory above none of the paths
            // an installed tool whose folder is on PATH: its name; off PATH: its path
            Assert.Equal("sharpnorm", SharpNorm.Cli.CommandLine.Resolve(shim, "/store/any/", $"{empty}:{tools}", elsewhere));
            Assert.Equal(shim, SharpNorm.Cli.CommandLine.Resolve(shim, "/store/any/", empty, elsewhere));
            // dotnet run and ./train.sh start the app host SharpNorm.Cli: the sharpnorm beside it, relative to the current directory
            string bin = Directory.CreateDirectory(Path.Combine(folder, "src", "bin")).FullName;
            File.WriteAllText(Path.Combine(bin, "sharpnorm"), "");
            Assert.Equal("src/bin/sharpnorm", SharpNorm.Cli.CommandLine.Resolve(Path.Combine(bin, "SharpNorm.Cli"), bin, empty, folder));
            Assert.Equal("./sharpnorm", SharpNorm.Cli.CommandLine.Resolve(Path.Combine(bin, "SharpNorm.Cli"), bin, empty, bin));
            // dotnet SharpNorm.Cli.dll: the same, through dotnet; a path with a space quoted
            Assert.Equal("dotnet '/opt/my tool/SharpNorm.Cli.dll'", SharpNorm.Cli.CommandLine.Resolve("/usr/share/dotnet/dotnet", "/opt/my tool/", empty, elsewhere));
            // a local tool runs from the NuGet cache through dotnet
            Assert.Equal("dotnet sharpnorm", SharpNorm.Cli.CommandLine.Resolve("/usr/share/dotnet/dotnet", "/root/.nuget/packages/sharpnorm.cli/0.1.0/tools/net10.0/any/", empty, elsewhere));
            // a checkout below a folder called tools is not a local tool
            string checkout = Directory.CreateDirectory(Path.Combine(folder, "tools", "sharpnorm.cli", "1.0", "tools", "SharpNorm.Cli", "bin", "Release", "net10.0")).FullName;
            File.WriteAllText(Path.Combine(checkout, "sharpnorm"), "");
            Assert.Equal(Path.Combine(checkout, "sharpnorm"), SharpNorm.Cli.CommandLine.Resolve(Path.Combine(checkout, "SharpNorm.Cli"), checkout + "/", empty, elsewhere));
            // the same for a platform's tool package, whose app host dotnet starts
            Assert.Equal("dotnet sharpnorm", SharpNorm.Cli.CommandLine.Resolve("/root/.nuget/packages/sharpnorm.cli.linux-x64/0.1.0/tools/net10.0/linux-x64/SharpNorm.Cli",
                "/root/.nuget/packages/sharpnorm.cli.linux-x64/0.1.0/tools/net10.0/linux-x64/", empty, elsewhere));
            // dotnet tool install --tool-path: DIR/sharpnorm links to the app host in DIR/.store (the process's path is the link's
            // target); on PATH its name, off PATH DIR/sharpnorm, not the store's long path
            string toolPath = Path.Combine(folder, "tp");
            string host = Directory.CreateDirectory(Path.Combine(toolPath, ".store", "sharpnorm.cli", "0.1.0", "sharpnorm.cli.linux-x64", "0.1.0", "tools", "net10.0", "linux-x64")).FullName;
            File.WriteAllText(Path.Combine(host, "SharpNorm.Cli"), "");
            File.WriteAllText(Path.Combine(host, "sharpnorm"), "");
            File.CreateSymbolicLink(Path.Combine(toolPath, "sharpnorm"), Path.Combine(host, "SharpNorm.Cli"));
            Assert.Equal("sharpnorm", SharpNorm.Cli.CommandLine.Resolve(Path.Combine(host, "SharpNorm.Cli"), host + "/", $"{empty}:{toolPath}", elsewhere));
            Assert.Equal(Path.Combine(toolPath, "sharpnorm"), SharpNorm.Cli.CommandLine.Resolve(Path.Combine(host, "SharpNorm.Cli"), host + "/", empty, elsewhere));
            Assert.Equal("tp/sharpnorm", SharpNorm.Cli.CommandLine.Resolve(Path.Combine(host, "SharpNorm.Cli"), host + "/", empty, folder));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Theory]
    [InlineData(2, "unknown option '--bogus'", "train", "--bogus")]
    [InlineData(2, "option --epochs", "train", "--epochs", "abc")]
    [InlineData(2, "unknown command 'fly'", "fly")]
    [InlineData(2, "--profile-communication measures a --distributed run", "train", "--profile-communication")]
    [InlineData(2, "--distributed runs under Open MPI's mpirun", "train", "--distributed")]
    [InlineData(1, "not found in /nonexistent", "train", "--data", "/nonexistent")]
    [InlineData(1, "too short for a safetensors file", "eval", "--checkpoint", "/etc/hostname")]
    [InlineData(1, "Checkpoint not found", "eval", "--checkpoint", "/nonexistent/model.safetensors")]
    public void ErrorsAreOneLineWithAnExitCode(int exitCode, string message, params string[] args)
    {
        var (code, output, error) = Run(args);
        Assert.Equal(exitCode, code);
        string line = Assert.Single(error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("sharpnorm: error: ", line);
        Assert.Contains(message, line);
        Assert.DoesNotContain("   at ", error);
        Assert.Equal("", output);
    }

    [Fact]
    public void HelpListsTheCommands()
    {
        var (code, output, _) = Run("--help");
        Assert.Equal(0, code);
        Assert.Contains("sharpnorm train", output);
        Assert.Contains("sharpnorm eval", output);
        Assert.Contains("sharpnorm export", output);
        var (trainCode, trainHelp, _) = Run("train", "--help");
        Assert.Equal(0, trainCode);
        Assert.Contains("--norm", trainHelp);
    }
}
