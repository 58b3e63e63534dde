using SharpNorm.Darknet;
using SharpNorm.Layers;

namespace SharpNorm.Onnx;

/// <summary>
/// A darknet network (.cfg and .weights) as an ONNX model, written from its <see cref="DarknetGraph"/>: the input is
/// the letterboxed RGB image darknet feeds its network, (N, 3, height, width) with values in [0, 1]; the outputs are
/// the [yolo] layers' (named by layer: "16" and "23" for YOLOv3-tiny), else the last layer's ("probabilities" after a
/// [softmax], else "output").
/// </summary>
public static class DarknetOnnxExport
{
    /// <summary>Writes the network of <paramref name="cfgPath"/> with <paramref name="weightsPath"/>'s arrays to <paramref name="outputPath"/>.</summary>
    /// <param name="cfgPath">The network's .cfg.</param>
    /// <param name="weightsPath">Its .weights.</param>
    /// <param name="outputPath">The .onnx file to write (through a temporary file: never half-written).</param>
    /// <param name="fold">Fold each batch norm into its convolution (the BatchNormalization nodes go).</param>
    /// <param name="opset">The ONNX opset (17 to 23).</param>
    /// <param name="mode">The batch norm's formula; darknet-cpu's needs <paramref name="fold"/> (BatchNormalization cannot express it).</param>
    public static void Save(string cfgPath, string weightsPath, string outputPath, bool fold = false, int opset = OnnxExport.DefaultOpset,
        DarknetBatchNormMode mode = DarknetBatchNormMode.PyTorch)
    {
        IReadOnlyList<DarknetSection> sections = DarknetConfig.ReadFile(cfgPath);
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        DarknetWeights weights = DarknetWeightsFile.Read(weightsPath, layers);
        Graph<float> graph = DarknetGraph.Create(sections, weights, new DarknetNetworkOptions { FoldBatchNorm = fold, BatchNorm = mode });
        DarknetSection net = sections[0];
        nint[] input = [1, net.Int("channels", 0), net.Int("height", 0), net.Int("width", 0)];
        var options = new OnnxExportOptions
        {
            Opset = opset,
            InputName = "image",
            OutputName = layers[^1].Type == "softmax" ? "probabilities" : "output",
            Metadata = new Dictionary<string, string>
            {
                ["format"] = "darknet",
                ["darknet_cfg"] = File.ReadAllText(cfgPath),
                ["darknet_version"] = $"{weights.Major}.{weights.Minor}.{weights.Revision}",
                ["input"] = $"RGB image letterboxed to {input[3]} x {input[2]}, values in [0, 1], (N, {input[1]}, {input[2]}, {input[3]})",
                ["outputs"] = string.Join(",", graph.OutputNames),
            },
        };
        OnnxExport.Save(graph, input, outputPath, options);
    }
}
