using System.Numerics;
using System.Reflection;
using Google.Protobuf;
using SharpNorm.Layers;
using SharpNorm.Tensors;
using OnnxProto = global::Onnx;

namespace SharpNorm.Onnx;

/// <summary>What <see cref="OnnxExport"/> writes.</summary>
public sealed record OnnxExportOptions
{
    /// <summary>
    /// The ONNX opset (17 to 23). GroupNorm is GroupNormalization from 21 and its decomposition (Reshape,
    /// InstanceNormalization, Reshape, Mul, Add) below; RMSNorm is RMSNormalization from 23 and its decomposition below.
    /// </summary>
    public int Opset { get; init; } = OnnxExport.DefaultOpset;

    /// <summary>Fold each BatchNorm that follows a Conv2d into the convolution's weights and bias (inference only).</summary>
    public bool FoldBatchNorm { get; init; }

    /// <summary>The graph's input, of shape (N, ...) with N symbolic.</summary>
    public string InputName { get; init; } = "input";

    /// <summary>The graph's output.</summary>
    public string OutputName { get; init; } = "output";

    /// <summary>
    /// When set, the graph starts with (input − Mean) / Std, so that it takes what the model's data loader was given
    /// (e.g. pixels in [0, 1]) rather than the normalized tensor the model itself sees.
    /// </summary>
    public (double Mean, double Std)? InputNormalization { get; init; }

    /// <summary>Key-value pairs written as the model's metadata_props (what the model was trained with, its labels).</summary>
    public IReadOnlyDictionary<string, string>? Metadata { get; init; }
}

/// <summary>
/// Writes a SharpNorm model as an ONNX model (float32, inference: every layer as in eval mode, the batch dimension
/// dynamic), as torch.onnx.export writes a module. Parameters and buffers keep their state_dict names. A layer the
/// exporter cannot express is a <see cref="NotSupportedException"/> naming it, never a different graph; nothing is
/// written then.
/// </summary>
public static class OnnxExport
{
    public const int MinOpset = 17, MaxOpset = 23, DefaultOpset = 17;

    /// <summary>Writes <paramref name="model"/> for inputs of <paramref name="inputShape"/> (its batch size free) to <paramref name="path"/>.</summary>
    /// <remarks>The file is written to a temporary name beside it and renamed: it is never left half-written.</remarks>
    public static void Save<T>(ILayer<T> model, ReadOnlySpan<nint> inputShape, string path, OnnxExportOptions? options = null)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        byte[] bytes = ToBytes(model, inputShape, options);
        string full = Path.GetFullPath(path);
        string temporary = full + ".tmp-" + Environment.ProcessId;
        try
        {
            File.WriteAllBytes(temporary, bytes);
            File.Move(temporary, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(temporary)) File.Delete(temporary);
        }
    }

    /// <summary>The ONNX model's bytes (a serialized ModelProto).</summary>
    public static byte[] ToBytes<T>(ILayer<T> model, ReadOnlySpan<nint> inputShape, OnnxExportOptions? options = null)
        where T : unmanaged, IFloatingPointIeee754<T> => ToModel(model, inputShape, options).ToByteArray();

    /// <summary>The ONNX model as the protobuf classes compiled from onnx.proto.</summary>
    public static OnnxProto.ModelProto ToModel<T>(ILayer<T> model, ReadOnlySpan<nint> inputShape, OnnxExportOptions? options = null)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        ArgumentNullException.ThrowIfNull(model);
        options ??= new OnnxExportOptions();
        if (options.Opset is < MinOpset or > MaxOpset)
            throw new ArgumentOutOfRangeException(nameof(options), options.Opset, $"ONNX export writes opsets {MinOpset} to {MaxOpset}; got opset {options.Opset}.");
        ArgumentException.ThrowIfNullOrEmpty(options.InputName, nameof(options.InputName));
        ArgumentException.ThrowIfNullOrEmpty(options.OutputName, nameof(options.OutputName));
        if (options.InputName == options.OutputName)
            throw new ArgumentException($"The input and the output need different names; both are '{options.InputName}'.", nameof(options));
        if (inputShape.Length < 1 || inputShape.Contains(0) || inputShape.ToArray().Any(d => d < 0))
            throw new ArgumentException($"The input shape must be (N, ...) with every length positive; got {TensorData.Format(inputShape)}.", nameof(inputShape));
        // The model's own check of the input, with its message.
        nint[]? outputShape = model is Graph<T> { OutputNames.Count: > 1 } multiple ? multiple.OutputShapes(inputShape)[0] : model.OutputShape(inputShape);

        var writer = new OnnxGraphWriter(options.Opset);
        string input = writer.Unique(options.InputName);
        bool several = model is Graph<T> { OutputNames.Count: > 1 };
        if (!several) writer.Unique(options.OutputName);      // reserved: the output tensor is renamed to it
        string first = input;
        if (options.InputNormalization is var (mean, std))
        {
            if (!double.IsFinite(mean) || !(std > 0) || !double.IsFinite(std))
                throw new ArgumentOutOfRangeException(nameof(options), $"The input normalization needs a finite mean and a positive finite std; got mean {mean}, std {std}.");
            string centered = writer.Node("Sub", "input_normalization/Sub", "input_centered", [input, writer.Floats("input_mean", [], [(float)mean])]);
            first = writer.Node("Div", "input_normalization/Div", "input_normalized", [centered, writer.Floats("input_std", [], [(float)std])]);
        }
        var layers = new OnnxLayerWriter<T>(writer, options.FoldBatchNorm);
        writer.Graph.Input.Add(OnnxGraphWriter.Value(input, inputShape));
        if (several)
        {
            // One output per graph output, named by its node (darknet: by layer, "16" and "23" for YOLOv3-tiny's heads).
            var graph = (Graph<T>)model;
            string[] outputs = layers.Graph(graph, "", first, inputShape.ToArray());
            nint[][] shapes = graph.OutputShapes(inputShape);
            for (int k = 0; k < outputs.Length; k++)
            {
                writer.Graph.Output.Add(OnnxGraphWriter.Value(outputs[k], shapes[k]));
            }
        }
        else
        {
            string output = layers.Write(model, "", first, inputShape.ToArray());
            if (output == input) writer.Graph.Node.Add(new OnnxProto.NodeProto { OpType = "Identity", Name = writer.UniqueNode("output_identity"), Input = { input }, Output = { options.OutputName } });
            else writer.Rename(output, options.OutputName);
            writer.Graph.Output.Add(OnnxGraphWriter.Value(options.OutputName, outputShape!));
        }
        var result = new OnnxProto.ModelProto
        {
            IrVersion = IrVersion(options.Opset),
            ProducerName = "SharpNorm",
            ProducerVersion = typeof(ILayer<>).Assembly.GetName().Version?.ToString() ?? "",
            Graph = writer.Graph,
        };
        result.OpsetImport.Add(new OnnxProto.OperatorSetIdProto { Domain = "", Version = options.Opset });
        foreach (var (key, value) in options.Metadata ?? new Dictionary<string, string>())
            result.MetadataProps.Add(new OnnxProto.StringStringEntryProto { Key = key, Value = value });
        return result;
    }

    /// <summary>The oldest IR version that carries the opset (onnx/helper.py's VERSION_TABLE), for the widest runtime support.</summary>
    private static long IrVersion(int opset) => opset switch
    {
        <= 18 => 8,
        <= 20 => 9,
        <= 22 => 10,
        _ => 11,
    };
}
