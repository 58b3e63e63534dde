using System.Buffers.Binary;
using Google.Protobuf;
using OnnxProto = global::Onnx;

namespace SharpNorm.Onnx;

/// <summary>
/// Builds one ONNX GraphProto: nodes in topological order, float32 initializers, int64 constants, and names that are
/// unique within the graph. The layer writers say what to emit; this class knows the protobuf.
/// </summary>
internal sealed class OnnxGraphWriter
{
    private readonly HashSet<string> _names = new(StringComparer.Ordinal), _nodeNames = new(StringComparer.Ordinal);

    public OnnxGraphWriter(int opset) => Opset = opset;

    public int Opset { get; }

    public OnnxProto.GraphProto Graph { get; } = new() { Name = "sharpnorm" };

    /// <summary>A tensor name not yet used in the graph: <paramref name="name"/> itself, else with a numeric suffix.</summary>
    public string Unique(string name) => Unique(_names, name);

    /// <summary>A node name not yet used (nodes and tensors are named apart in ONNX).</summary>
    public string UniqueNode(string name) => Unique(_nodeNames, name);

    private static string Unique(HashSet<string> names, string name)
    {
        if (names.Add(name)) return name;
        for (int i = 1; ; i++)
            if (names.Add($"{name}_{i}")) return $"{name}_{i}";
    }

    /// <summary>Adds a float32 initializer of the given dimensions and returns its (unique) name.</summary>
    public string Floats(string name, ReadOnlySpan<long> dims, ReadOnlySpan<float> values)
    {
        long count = 1;
        foreach (long d in dims) count = checked(count * d);
        if (count != values.Length)
            throw new InvalidOperationException($"Initializer {name}: dimensions ({string.Join(", ", dims.ToArray())}) hold {count} values, not {values.Length}.");
        var bytes = new byte[checked(values.Length * sizeof(float))];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * sizeof(float)), values[i]);
        var tensor = new OnnxProto.TensorProto { Name = Unique(name), DataType = (int)OnnxProto.TensorProto.Types.DataType.Float, RawData = ByteString.CopyFrom(bytes) };
        tensor.Dims.AddRange(dims.ToArray());
        Graph.Initializer.Add(tensor);
        return tensor.Name;
    }

    /// <summary>Adds a one-dimensional int64 initializer (shapes, axes) and returns its name.</summary>
    public string Int64s(string name, ReadOnlySpan<long> values)
    {
        var tensor = new OnnxProto.TensorProto { Name = Unique(name), DataType = (int)OnnxProto.TensorProto.Types.DataType.Int64 };
        tensor.Dims.Add(values.Length);
        tensor.Int64Data.AddRange(values.ToArray());
        Graph.Initializer.Add(tensor);
        return tensor.Name;
    }

    /// <summary>Adds a node and returns the name of its (first) output, <paramref name="output"/> made unique.</summary>
    public string Node(string opType, string name, string output, IEnumerable<string> inputs, params OnnxProto.AttributeProto[] attributes)
    {
        var node = new OnnxProto.NodeProto { OpType = opType, Name = UniqueNode(name) };
        node.Input.AddRange(inputs);
        string outputName = Unique(output);
        node.Output.Add(outputName);
        node.Attribute.AddRange(attributes);
        Graph.Node.Add(node);
        return outputName;
    }

    /// <summary>Adds a node of several outputs and returns their names (each <paramref name="outputs"/> made unique).</summary>
    public string[] Node(string opType, string name, string[] outputs, IEnumerable<string> inputs, params OnnxProto.AttributeProto[] attributes)
    {
        var node = new OnnxProto.NodeProto { OpType = opType, Name = UniqueNode(name) };
        node.Input.AddRange(inputs);
        string[] names = outputs.Select(Unique).ToArray();
        node.Output.AddRange(names);
        node.Attribute.AddRange(attributes);
        Graph.Node.Add(node);
        return names;
    }

    /// <summary>Renames a tensor wherever a node reads or writes it.</summary>
    public void Rename(string from, string to)
    {
        foreach (var node in Graph.Node)
        {
            for (int i = 0; i < node.Input.Count; i++) if (node.Input[i] == from) node.Input[i] = to;
            for (int i = 0; i < node.Output.Count; i++) if (node.Output[i] == from) node.Output[i] = to;
        }
    }

    public static OnnxProto.AttributeProto String(string name, string value) =>
        new() { Name = name, Type = OnnxProto.AttributeProto.Types.AttributeType.String, S = ByteString.CopyFromUtf8(value) };

    public static OnnxProto.AttributeProto Int(string name, long value) =>
        new() { Name = name, Type = OnnxProto.AttributeProto.Types.AttributeType.Int, I = value };

    public static OnnxProto.AttributeProto Float(string name, float value) =>
        new() { Name = name, Type = OnnxProto.AttributeProto.Types.AttributeType.Float, F = value };

    public static OnnxProto.AttributeProto Ints(string name, params long[] values)
    {
        var attribute = new OnnxProto.AttributeProto { Name = name, Type = OnnxProto.AttributeProto.Types.AttributeType.Ints };
        attribute.Ints.AddRange(values);
        return attribute;
    }

    /// <summary>A float32 tensor value of the given shape, the batch dimension (dimension 0) symbolic ("N").</summary>
    public static OnnxProto.ValueInfoProto Value(string name, ReadOnlySpan<nint> shape)
    {
        var tensorShape = new OnnxProto.TensorShapeProto();
        for (int d = 0; d < shape.Length; d++)
            tensorShape.Dim.Add(d == 0 ? new OnnxProto.TensorShapeProto.Types.Dimension { DimParam = "N" } : new OnnxProto.TensorShapeProto.Types.Dimension { DimValue = shape[d] });
        return new OnnxProto.ValueInfoProto
        {
            Name = name,
            Type = new OnnxProto.TypeProto
            {
                TensorType = new OnnxProto.TypeProto.Types.Tensor { ElemType = (int)OnnxProto.TensorProto.Types.DataType.Float, Shape = tensorShape },
            },
        };
    }
}
