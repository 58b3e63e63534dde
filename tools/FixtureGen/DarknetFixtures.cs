// darknet.json: whole darknet networks (tests/SharpNorm.Tests/Darknet/cfg/small-*.cfg) run in libtorch by
// tools/DarknetTorch/TorchDarknet.cs, with random weights written beside the fixtures as darknet .weights files.

using System.Text.Json;
using SharpNorm.Darknet;
using SharpNorm.Tools;
using TorchSharp;
using static TorchSharp.torch;

internal static partial class Program
{
    /// <param name="Name">cfg and weights file stem.</param>
    /// <param name="WeightsSeed">DarknetWeightsFile.Random's seed.</param>
    /// <param name="InputSeed">torch.manual_seed before the input x = rand(2, C, H, W).</param>
    /// <param name="Intermediate">Layers recorded besides the output layers.</param>
    private sealed record DarknetSpec(string Name, int WeightsSeed, int InputSeed, int[] Intermediate);

    private static readonly DarknetSpec[] DarknetNetworks =
    {
        new("small-detector", 3001, 3002, [7, 8]), // layer 7: shortcut, 8: route of two layers
        new("small-classifier", 3003, 3004, [6, 8]), // layer 6: connected with batch norm, 8: the logits before the softmax
    };

    private const int DarknetBatch = 2;

    private static void WriteDarknet(string path)
    {
        string cfgDir = Path.Combine(RepositoryRoot(), "tests", "SharpNorm.Tests", "Darknet", "cfg");
        string weightsDir = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "..", "Darknet", "weights"));
        Directory.CreateDirectory(weightsDir);
        var cases = new List<Action<Utf8JsonWriter>>();
        foreach (DarknetSpec spec in DarknetNetworks)
        {
            IReadOnlyList<DarknetSection> sections = DarknetConfig.ReadFile(Path.Combine(cfgDir, spec.Name + ".cfg"));
            IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
            string weightsPath = Path.Combine(weightsDir, spec.Name + ".weights");
            DarknetWeightsFile.Write(weightsPath, TorchDarknet.SmallVariances(DarknetWeightsFile.Random(layers, spec.WeightsSeed)));
            DarknetWeights weights = DarknetWeightsFile.Read(weightsPath, layers); // exactly what the tests read
            Console.Error.WriteLine($"{weightsPath}: {new FileInfo(weightsPath).Length} bytes");
            foreach (bool darknetCpu in new[] { false, true })
                cases.Add(w => RunDarknetCase(w, spec, sections, layers, weights, darknetCpu));
        }
        WriteFile(path, "Darknet", cases);
    }

    private static void RunDarknetCase(Utf8JsonWriter w, DarknetSpec spec, IReadOnlyList<DarknetSection> sections, IReadOnlyList<DarknetLayerInfo> layers,
        DarknetWeights weights, bool darknetCpu)
    {
        string mode = darknetCpu ? "DarknetCpu" : "PyTorch";
        using var net = new TorchDarknet(sections, layers, weights, darknetCpu);
        using var net64 = new TorchDarknet(sections, layers, weights, darknetCpu, ScalarType.Float64);
        using var other = new TorchDarknet(sections, layers, weights, !darknetCpu);
        torch.manual_seed(spec.InputSeed);
        Tensor x = torch.rand([DarknetBatch, net.InputChannels, net.InputHeight, net.InputWidth], ScalarType.Float32);
        Tensor[] y = net.Forward(x), y64 = net64.Forward(x.to_type(ScalarType.Float64)), yOther = other.Forward(x);
        int[] recorded = net.OutputLayers.Concat(spec.Intermediate).Distinct().Order().ToArray();

        // Guard: the float32 result must agree with the same network in float64; and report how far the other
        // batch-norm formula is (the fixture should tell the modes apart).
        foreach (int layer in recorded)
        {
            double error = NormwiseDifference(y[layer], y64[layer]), modes = NormwiseDifference(yOther[layer], y[layer]);
            Console.Error.WriteLine($"darknet {spec.Name}/{mode} layer {layer} ({layers[layer].Type}): float32 vs float64 {error:E2}, vs the other batch norm {modes:E2}");
            if (!(error <= 1e-5)) throw new InvalidOperationException($"darknet {spec.Name}/{mode} layer {layer}: float32 off from float64 by {error:E2} (normwise).");
        }

        w.WriteStartObject();
        w.WriteString("name", $"{spec.Name}/{mode}");
        w.WriteString("cfg", spec.Name + ".cfg");
        w.WriteString("weights", spec.Name + ".weights");
        w.WriteString("batchNorm", mode);
        w.WriteNumber("weightsSeed", spec.WeightsSeed);
        w.WriteNumber("inputSeed", spec.InputSeed);
        WriteTensor(w, "x", x);
        w.WritePropertyName("outputs");
        w.WriteStartArray();
        foreach (int layer in recorded)
        {
            w.WriteStartObject();
            w.WriteNumber("layer", layer);
            w.WriteString("type", layers[layer].Type);
            WriteTensor(w, "y", y[layer]);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    /// <summary>||a - b|| / ||b|| (Frobenius), in float64.</summary>
    private static double NormwiseDifference(Tensor a, Tensor b)
    {
        using var scope = torch.NewDisposeScope();
        Tensor a64 = a.to_type(ScalarType.Float64), b64 = b.to_type(ScalarType.Float64);
        return (a64 - b64).norm().item<double>() / b64.norm().item<double>();
    }

    private static string RepositoryRoot()
    {
        for (DirectoryInfo? d = new(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "SharpNorm.sln"))) return d.FullName;
        throw new DirectoryNotFoundException($"no SharpNorm.sln above {AppContext.BaseDirectory}");
    }
}
