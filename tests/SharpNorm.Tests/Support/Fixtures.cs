using System.Numerics;
using System.Numerics.Tensors;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace SharpNorm.Tests.Support;

/// <summary>Reference cases written by tools/FixtureGen from libtorch 2.10 (TorchSharp 0.107.0).</summary>
public static class Fixtures
{
    public static FixtureFile Load(string fileName) => FixtureFiles.Load<FixtureFile>(fileName);

    public static FixtureCase Case(string fileName, string name) => Load(fileName).Cases.Single(c => c.Name == name);
}

/// <summary>Fixture files read once per process, whatever their record type.</summary>
internal static class FixtureFiles
{
    private static readonly Dictionary<string, object> Files = new();

    public static TFile Load<TFile>(string fileName) where TFile : class
    {
        lock (Files)
        {
            if (!Files.TryGetValue(fileName, out object? file))
            {
                string path = Path.Combine(AppContext.BaseDirectory, "Fixtures", fileName);
                file = JsonSerializer.Deserialize<TFile>(File.ReadAllText(path), new JsonSerializerOptions { PropertyNameCaseInsensitive = true })
                       ?? throw new InvalidDataException($"{path} holds no fixture.");
                Files[fileName] = file;
            }
            return (TFile)file;
        }
    }
}

public sealed record FixtureFile(string Generator, string Layer, List<FixtureCase> Cases);

/// <summary>One layer configuration and its steps; fields a layer does not have stay at their defaults.</summary>
public sealed record FixtureCase(
    string Name, string Dtype, int NumFeatures, double Eps, double? Momentum, bool Affine, bool TrackRunningStats,
    FixtureTensor? Weight, FixtureTensor? Bias, List<FixtureStep> Steps, int NumGroups = 0, int NumChannels = 0);

public sealed record FixtureStep(
    bool Training, FixtureTensor X, FixtureTensor Dy, FixtureTensor Y, FixtureTensor Dx,
    FixtureTensor? Dweight, FixtureTensor? Dbias, FixtureTensor? RunningMean, FixtureTensor? RunningVar, long NumBatchesTracked);

public sealed record FixtureTensor(long[] Shape, string Data)
{
    [JsonIgnore] public nint[] Lengths => Shape.Select(d => (nint)d).ToArray();

    /// <summary>The values in the fixture's own dtype (float32 or float64), converted exactly to T where T is that dtype.</summary>
    public T[] Values<T>(string dtype) where T : IFloatingPointIeee754<T>
    {
        byte[] bytes = Convert.FromBase64String(Data);
        return dtype switch
        {
            "float32" => Enumerable.Range(0, bytes.Length / 4).Select(i => T.CreateTruncating(BitConverter.ToSingle(bytes, 4 * i))).ToArray(),
            "float64" => Enumerable.Range(0, bytes.Length / 8).Select(i => T.CreateTruncating(BitConverter.ToDouble(bytes, 8 * i))).ToArray(),
            _ => throw new InvalidDataException($"unknown dtype {dtype}"),
        };
    }

    public Tensor<T> ToTensor<T>(string dtype) where T : IFloatingPointIeee754<T> => Tensor.Create(Values<T>(dtype), Lengths);
}

/// <summary>LayerNorm and RMSNorm fixtures (layernorm.json, rmsnorm.json): normalized shape instead of channels.</summary>
public static class ShapeFixtures
{
    public static ShapeFixtureFile Load(string fileName) => FixtureFiles.Load<ShapeFixtureFile>(fileName);

    public static ShapeFixtureCase Case(string fileName, string name) => Load(fileName).Cases.Single(c => c.Name == name);
}

public sealed record ShapeFixtureFile(string Generator, string Layer, List<ShapeFixtureCase> Cases);

/// <summary>
/// One LayerNorm or RMSNorm configuration: <c>Bias</c> says whether LayerNorm has a bias (its values are
/// <c>BiasValue</c>); RMSNorm's <c>Eps</c> may be null, <c>EpsUsed</c> is then PyTorch's machine epsilon.
/// </summary>
public sealed record ShapeFixtureCase(
    string Name, string Dtype, int[] NormalizedShape, double? Eps, double EpsUsed, bool ElementwiseAffine, bool Bias,
    FixtureTensor? Weight, FixtureTensor? BiasValue, List<FixtureStep> Steps);

/// <summary>Conv2d, MaxPool2d and AvgPool2d fixtures (conv2d.json, maxpool2d.json, avgpool2d.json): one forward and backward each.</summary>
public static class WindowFixtures
{
    public static WindowFixtureFile Load(string fileName) => FixtureFiles.Load<WindowFixtureFile>(fileName);

    public static WindowFixtureCase Case(string fileName, string name) => Load(fileName).Cases.Single(c => c.Name == name);
}

public sealed record WindowFixtureFile(string Generator, string Layer, List<WindowFixtureCase> Cases);

/// <summary>One case; fields a layer does not have stay at their defaults (pools have no weights, convolutions no ceil mode).</summary>
public sealed record WindowFixtureCase(
    string Name, string Dtype, int[] KernelSize, int[] Stride, int[] Padding, FixtureTensor X, FixtureTensor Dy, FixtureTensor Y, FixtureTensor Dx,
    int InChannels = 0, int OutChannels = 0, int[]? Dilation = null, int Groups = 1, bool Bias = false,
    FixtureTensor? Weight = null, FixtureTensor? BiasValue = null, FixtureTensor? Dweight = null, FixtureTensor? Dbias = null,
    bool CeilMode = false, bool CountIncludePad = true);
