using SharpNorm.Darknet;
using SharpNorm.Layers;

namespace SharpNorm.Onnx;

/// <summary>
/// A darknet network (.cfg and .weights) as an ONNX model: the input is the letterboxed RGB image darknet feeds its
/// network, (N, 3, height, width) with values in [0, 1]; the output is the last layer's, the class probabilities of a
/// classifier ending in [softmax]. Chain networks (the classifiers: DarkNet-19, darknet reference, tiny) are written
/// today; a network with route, shortcut, upsample or yolo layers is refused, naming the first such layer.
/// </summary>
public static class DarknetOnnxExport
{
    /// <summary>Writes the network of <paramref name="cfgPath"/> with <paramref name="weightsPath"/>'s arrays to <paramref name="outputPath"/>.</summary>
    /// <param name="cfgPath">The network's .cfg.</param>
    /// <param name="weightsPath">Its .weights.</param>
    /// <param name="outputPath">The .onnx file to write (through a temporary file: never half-written).</param>
    /// <param name="fold">Fold each batch norm into its convolution (the BatchNormalization nodes go).</param>
    /// <param name="opset">The ONNX opset (17 to 23).</param>
    public static void Save(string cfgPath, string weightsPath, string outputPath, bool fold = false, int opset = OnnxExport.DefaultOpset)
    {
        IReadOnlyList<DarknetSection> sections = DarknetConfig.ReadFile(cfgPath);
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        RequireChain(sections, layers, cfgPath);
        DarknetWeights weights = DarknetWeightsFile.Read(weightsPath, layers);
        Sequential<float> model = DarknetSequential.Create(sections, weights);
        model.Training = false;
        DarknetSection net = sections[0];
        nint[] input = [1, net.Int("channels", 0), net.Int("height", 0), net.Int("width", 0)];
        var options = new OnnxExportOptions
        {
            Opset = opset,
            FoldBatchNorm = fold,
            InputName = "image",
            OutputName = layers[^1].Type == "softmax" ? "probabilities" : "output",
            Softmax = layers[^1].Type == "softmax",
            Metadata = new Dictionary<string, string>
            {
                ["format"] = "darknet",
                ["darknet_cfg"] = File.ReadAllText(cfgPath),
                ["darknet_version"] = $"{weights.Major}.{weights.Minor}.{weights.Revision}",
                ["input"] = $"RGB image letterboxed to {input[3]} x {input[2]}, values in [0, 1], (N, {input[1]}, {input[2]}, {input[3]})",
            },
        };
        OnnxExport.Save(model, input, outputPath, options);
    }

    private static void RequireChain(IReadOnlyList<DarknetSection> sections, IReadOnlyList<DarknetLayerInfo> layers, string cfgPath)
    {
        if (layers[^1].Type == "softmax" && sections[^1] is var softmax && (softmax.Int("groups", 1) != 1 || softmax.Float("temperature", 1) != 1))
            throw new NotSupportedException(
                $"ONNX export: {Path.GetFileName(cfgPath)} [softmax] at line {softmax.Line} has groups or a temperature; the exporter writes a plain softmax only.");
        foreach (DarknetLayerInfo layer in layers)
            if (layer.Type is "route" or "shortcut" or "upsample" or "yolo" or "region" or "reorg" or "detection" or "local")
            {
                DarknetSection section = sections[layer.Index + 1];
                throw new NotSupportedException(
                    $"ONNX export: {Path.GetFileName(cfgPath)} layer {layer.Index} ([{layer.Type}], line {section.Line}) makes the network a graph; " +
                    "the ONNX exporter writes darknet chains (classifiers) today, not yet graphs with route, shortcut, upsample or yolo layers.");
            }
    }
}
