using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace SharpNorm.Darknet;

/// <summary>
/// The learned arrays of one convolutional or connected layer as darknet stores them: biases (the batch norm's beta
/// when batch_normalize), then with batch_normalize the scales (gamma), rolling mean and rolling variance, and the
/// weights (OIHW for a convolution, outputs x inputs for a connected layer). A [local] layer has a bias per output
/// value and weights (positions, filters, channels, size, size), no batch norm.
/// </summary>
public sealed record DarknetLayerWeights(int Layer, bool Connected, float[] Biases, float[]? Scales, float[]? RollingMean, float[]? RollingVariance, float[] Weights);

/// <summary>A darknet .weights file: version, images seen in training, and each weighted layer's arrays (null for the others).</summary>
public sealed record DarknetWeights(int Major, int Minor, int Revision, ulong Seen, IReadOnlyList<DarknetLayerWeights?> Layers)
{
    /// <summary>Versions from 0.2 on store <c>seen</c> as a 64-bit count, older ones as 32 bits.</summary>
    public bool SeenIs64Bit => Major * 10 + Minor >= 2 && Major < 1000 && Minor < 1000;
}

/// <summary>
/// Reads and writes darknet .weights files for a network sized by <see cref="DarknetSummary"/>: three int32 (major,
/// minor, revision), <c>seen</c>, then per convolutional layer biases, [scales, rolling mean, rolling variance],
/// weights, per connected layer biases, weights, [scales, rolling mean, rolling variance], and per local layer biases
/// and weights, all float32. The file
/// must hold exactly what the network needs: running out names the layer, bytes left over are counted.
/// </summary>
public static class DarknetWeightsFile
{
    public static DarknetWeights Read(string path, IReadOnlyList<DarknetLayerInfo> layers)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(layers);
        if (!File.Exists(path)) throw new FileNotFoundException($"Darknet weights not found: {path}", path);
        byte[] bytes = File.ReadAllBytes(path);
        string name = Path.GetFileName(path);
        int at = 0;
        if (bytes.Length < 16) throw new InvalidDataException($"{name}: {bytes.Length} bytes is too short for a darknet weights header.");
        int major = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(0)), minor = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(4));
        int revision = BinaryPrimitives.ReadInt32LittleEndian(bytes.AsSpan(8));
        var header = new DarknetWeights(major, minor, revision, 0, []);
        ulong seen;
        if (header.SeenIs64Bit)
        {
            if (bytes.Length < 20) throw new InvalidDataException($"{name}: {bytes.Length} bytes is too short for a version {major}.{minor} header (20 bytes).");
            seen = BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(12));
            at = 20;
        }
        else
        {
            seen = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(12));
            at = 16;
        }

        var result = new DarknetLayerWeights?[layers.Count];
        foreach (DarknetLayerInfo layer in layers)
        {
            if (!layer.HasWeights) continue;
            long n = layer.BiasCount;
            float[] Take(long count, string what)
            {
                long needed = count * sizeof(float);
                if (bytes.Length - at < needed)
                    throw new InvalidDataException(
                        $"{name}: ran out in layer {layer.Index} ({layer.Type}) reading its {what}: {count} floats needed, {(bytes.Length - at) / sizeof(float)} left (the file is too short for this network).");
                if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("darknet weights are little-endian.");
                float[] values = MemoryMarshal.Cast<byte, float>(bytes.AsSpan(at, (int)needed)).ToArray();
                at += (int)needed;
                return values;
            }
            float[] biases = Take(n, "biases");
            float[]? scales = null, mean = null, variance = null;
            float[] weights;
            if (layer.Type == "local") weights = Take(layer.WeightCount, "weights");
            else if (layer.Type == "convolutional")
            {
                if (layer.BatchNormalize) (scales, mean, variance) = (Take(n, "scales"), Take(n, "rolling mean"), Take(n, "rolling variance"));
                weights = Take(layer.WeightCount, "weights");
            }
            else
            {
                weights = Take(layer.WeightCount, "weights");
                if (layer.BatchNormalize) (scales, mean, variance) = (Take(n, "scales"), Take(n, "rolling mean"), Take(n, "rolling variance"));
            }
            result[layer.Index] = new DarknetLayerWeights(layer.Index, layer.Type == "connected", biases, scales, mean, variance, weights);
        }
        if (at != bytes.Length)
            throw new InvalidDataException($"{name}: {bytes.Length - at} bytes left over after the last layer: the file is for a larger network (or another cfg).");
        return new DarknetWeights(major, minor, revision, seen, result);
    }

    public static void Write(string path, DarknetWeights weights)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(weights);
        using var file = new BinaryWriter(File.Create(path));
        file.Write(weights.Major);
        file.Write(weights.Minor);
        file.Write(weights.Revision);
        if (weights.SeenIs64Bit) file.Write(weights.Seen);
        else file.Write((uint)weights.Seen);
        foreach (DarknetLayerWeights? layer in weights.Layers)
        {
            if (layer is null) continue;
            void Put(float[]? values) { if (values is not null) file.Write(MemoryMarshal.AsBytes(values.AsSpan())); }
            Put(layer.Biases);
            if (!layer.Connected) { Put(layer.Scales); Put(layer.RollingMean); Put(layer.RollingVariance); Put(layer.Weights); }
            else { Put(layer.Weights); Put(layer.Scales); Put(layer.RollingMean); Put(layer.RollingVariance); }
        }
    }

    /// <summary>Random weights for testing (version 0.2.0): weights and biases small, scales near 1, variances positive.</summary>
    public static DarknetWeights Random(IReadOnlyList<DarknetLayerInfo> layers, int seed)
    {
        ArgumentNullException.ThrowIfNull(layers);
        var random = new Random(seed);
        float[] Fill(long count, double low, double high) => Enumerable.Range(0, checked((int)count)).Select(_ => (float)(low + (high - low) * random.NextDouble())).ToArray();
        var result = new DarknetLayerWeights?[layers.Count];
        foreach (DarknetLayerInfo layer in layers)
        {
            if (!layer.HasWeights) continue;
            long n = layer.BiasCount;
            long fanIn = Math.Max(1, layer.WeightCount / n);
            double bound = Math.Sqrt(3.0 / fanIn);
            result[layer.Index] = new DarknetLayerWeights(layer.Index, layer.Type == "connected", Fill(n, -0.1, 0.1),
                layer.BatchNormalize ? Fill(n, 0.5, 1.5) : null, layer.BatchNormalize ? Fill(n, -0.1, 0.1) : null,
                layer.BatchNormalize ? Fill(n, 0.5, 1.5) : null, Fill(layer.WeightCount, -bound, bound));
        }
        return new DarknetWeights(0, 2, 0, 0, result);
    }
}
