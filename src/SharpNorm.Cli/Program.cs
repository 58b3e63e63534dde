namespace SharpNorm.Cli;

internal static class Program
{
    public static int Main(string[] args) => App.Run(args);
}
