using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace SharpNorm.Bench;

internal sealed record BenchReport(
    string TimestampUtc, MachineInfo Machine, bool Quick, int Warmup, int Runs, int[] Threads, object Bandwidth,
    List<ResultRow> Rows, List<CaseCheck> Checks, double? OtherProcessesCores);

internal static class Report
{
    public static void PrintTable(TextWriter w, IReadOnlyList<ResultRow> rows)
    {
        w.WriteLine("| case | op | thr | SharpNorm ms | libtorch ms | speed-up | SharpNorm GB/s | floor ms | x floor | libtorch x floor | bwd ms | chain bwd ms | chain/bwd |");
        w.WriteLine("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
        foreach (var r in rows)
        {
            w.WriteLine(string.Join(" | ", [
                "| " + r.Case, r.Op, r.Threads.ToString(CultureInfo.InvariantCulture),
                Ms(r.SharpMs), Ms(r.TorchMs), Ratio(r.SpeedUp), F(r.SharpGBs, "F1"),
                Ms(r.FloorMs), Ratio(r.SharpXFloor), Ratio(r.TorchXFloor),
                Ms(r.BwdMs), Ms(r.ChainMs), Ratio(r.ChainRatio) + " |"]));
        }
    }

    public static void PrintChecks(TextWriter w, IReadOnlyList<CaseCheck> checks)
    {
        w.WriteLine("Checks (untimed, one training step from fresh running stats; max |difference|): " +
                    "SharpNorm vs libtorch y, dx, dgamma, dbeta, running mean/var; SharpNorm dx vs chain-rule dx (max |dx| for scale); " +
                    "– where the layer has no such quantity (no bias, no running statistics; no chain rule for RMSNorm); " +
                    "bytes SharpNorm allocated over fwd+bwd+eval calls; other processes' average CPU use while the case ran.");
        foreach (var c in checks)
        {
            string torch = c.TorchY is null
                ? "libtorch n/a"
                : $"y {E(c.TorchY)}, dx {E(c.TorchDx)}, dgamma {E(c.TorchDGamma)}, dbeta {E(c.TorchDBeta)}, running {E(c.TorchRunningMean)}/{E(c.TorchRunningVar)}";
            w.WriteLine($"- {c.Case}: {torch}; chain dx {E(c.ChainDx)} (max |dx| {c.DxScale:F2}); allocated {c.SharpAllocatedBytes} B; other processes {(c.OtherProcessesCores is null ? "n/a" : $"{c.OtherProcessesCores:F2} cores")}");
        }
    }

    public static void WriteJson<TReport>(string path, TReport report)
    {
        var options = new JsonSerializerOptions
        {
            WriteIndented = true,
            PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
            NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        };
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        File.WriteAllText(path, JsonSerializer.Serialize(report, options) + "\n");
    }

    private static string Ms(double? ms) => ms switch
    {
        null => "",
        >= 100 => ms.Value.ToString("F1", CultureInfo.InvariantCulture),
        >= 10 => ms.Value.ToString("F2", CultureInfo.InvariantCulture),
        _ => ms.Value.ToString("F3", CultureInfo.InvariantCulture),
    };

    private static string Ratio(double? r) => F(r, "F2");

    private static string F(double? v, string format) => v?.ToString(format, CultureInfo.InvariantCulture) ?? "";

    /// <summary>A difference in the checks; "–" where the layer has no such quantity.</summary>
    private static string E(double? v) => v?.ToString("0.0E+0", CultureInfo.InvariantCulture) ?? "–";
}
