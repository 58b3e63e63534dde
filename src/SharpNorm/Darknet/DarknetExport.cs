using System.Runtime.InteropServices;
using SharpNorm.Serialization;

namespace SharpNorm.Darknet;

/// <summary>
/// A darknet network's learned arrays as a PyTorch-style state dict (safetensors), named by layer index as the common
/// PyTorch ports of darknet name them: <c>{i}.conv.weight</c> (OIHW), <c>{i}.conv.bias</c> (without a batch norm),
/// <c>{i}.bn.weight/bias/running_mean/running_var/num_batches_tracked</c>, <c>{i}.fc.weight</c> (outputs x inputs) and
/// <c>{i}.fc.bias</c>, <c>{i}.local.weight</c> (positions x out x in x k x k) and <c>{i}.local.bias</c> (out x OH x OW). Folded, each batch norm is merged into its layer's weight and bias (fuse_conv_bn_eval).
/// The cfg text goes into the file's metadata ("darknet_cfg"), so the file describes its network.
/// </summary>
public static class DarknetExport
{
    public static IEnumerable<(string Name, SafetensorsEntry Entry)> StateDict(IReadOnlyList<DarknetLayerInfo> layers, DarknetWeights weights,
        bool fold = false, DarknetBatchNormMode mode = DarknetBatchNormMode.PyTorch)
    {
        ArgumentNullException.ThrowIfNull(layers);
        ArgumentNullException.ThrowIfNull(weights);
        if (weights.Layers.Count != layers.Count)
            throw new ArgumentException($"The weights are for {weights.Layers.Count} layers; the network has {layers.Count}.", nameof(weights));
        var entries = new List<(string, SafetensorsEntry)>();
        foreach (DarknetLayerInfo layer in layers)
        {
            if (!layer.HasWeights) continue;
            DarknetLayerWeights arrays = DarknetNetwork.Arrays(weights, layer);
            if (layer.Type == "local")
            {
                // LocallyConnected2d's shapes: weight (positions, out, in, k, k), bias (out, OH, OW)
                int k = layer.KernelSize;
                long positions = (long)layer.Height * layer.Width;
                entries.Add(($"{layer.Index}.local.weight", Floats(arrays.Weights, [positions, layer.Channels, layer.WeightCount / (positions * layer.Channels * k * k), k, k])));
                entries.Add(($"{layer.Index}.local.bias", Floats(arrays.Biases, [layer.Channels, layer.Height, layer.Width])));
                continue;
            }
            bool connected = layer.Type == "connected";
            string module = $"{layer.Index}.{(connected ? "fc" : "conv")}";
            long[] weightShape = connected
                ? [layer.Channels, layer.WeightCount / layer.Channels]
                : ConvWeightShape(layer, arrays);
            if (!layer.BatchNormalize)
            {
                entries.Add(($"{module}.weight", Floats(arrays.Weights, weightShape)));
                entries.Add(($"{module}.bias", Floats(arrays.Biases, [layer.Channels])));
            }
            else if (fold)
            {
                (double[] scales, double[] shifts) = DarknetBatchNorms.Folded(arrays, mode);
                float[] folded = new float[arrays.Weights.Length], bias = new float[layer.Channels];
                DarknetBatchNorms.Fold(arrays, scales, shifts, folded, bias);
                entries.Add(($"{module}.weight", Floats(folded, weightShape)));
                entries.Add(($"{module}.bias", Floats(bias, [layer.Channels])));
            }
            else
            {
                entries.Add(($"{module}.weight", Floats(arrays.Weights, weightShape)));
                entries.Add(($"{layer.Index}.bn.weight", Floats(arrays.Scales!, [layer.Channels])));
                entries.Add(($"{layer.Index}.bn.bias", Floats(arrays.Biases, [layer.Channels])));
                entries.Add(($"{layer.Index}.bn.running_mean", Floats(arrays.RollingMean!, [layer.Channels])));
                entries.Add(($"{layer.Index}.bn.running_var", Floats(arrays.RollingVariance!, [layer.Channels])));
                entries.Add(($"{layer.Index}.bn.num_batches_tracked", new SafetensorsEntry("I64", [], new byte[8])));
            }
        }
        return entries;
    }

    /// <summary>Writes the network of <paramref name="cfgPath"/> with <paramref name="weightsPath"/>'s arrays to a safetensors file.</summary>
    public static void Save(string cfgPath, string weightsPath, string outputPath, bool fold = false, DarknetBatchNormMode mode = DarknetBatchNormMode.PyTorch)
    {
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(DarknetConfig.ReadFile(cfgPath));
        DarknetWeights weights = DarknetWeightsFile.Read(weightsPath, layers);
        var metadata = new Dictionary<string, string>
        {
            ["format"] = "darknet",
            ["darknet_cfg"] = File.ReadAllText(cfgPath),
            ["darknet_version"] = $"{weights.Major}.{weights.Minor}.{weights.Revision}",
            ["seen"] = weights.Seen.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["batch_norm"] = fold ? $"folded ({mode})" : "separate",
        };
        Safetensors.Write(outputPath, StateDict(layers, weights, fold, mode), metadata);
    }

    private static long[] ConvWeightShape(DarknetLayerInfo layer, DarknetLayerWeights arrays)
    {
        // OIHW: the kernel is square in darknet; in channels per group = weights / (O * k * k).
        long perOutput = arrays.Weights.LongLength / layer.Channels;
        int size = layer.KernelSize;
        return [layer.Channels, perOutput / ((long)size * size), size, size];
    }

    private static SafetensorsEntry Floats(float[] values, long[] shape) =>
        new("F32", shape, MemoryMarshal.AsBytes(values.AsSpan()).ToArray());
}
