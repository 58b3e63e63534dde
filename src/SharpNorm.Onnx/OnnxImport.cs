using System.Buffers.Binary;
using System.Numerics.Tensors;
using Google.Protobuf;
using SharpNorm.Layers;
using SharpNorm.Tensors;
using OnnxProto = global::Onnx;

namespace SharpNorm.Onnx;

/// <summary>
/// Reads an ONNX model into a <see cref="Graph{T}"/> of SharpNorm layers, runnable and trainable, its batch size free:
/// the ops SharpNorm's exporter writes (Conv, BatchNormalization, InstanceNormalization, GroupNormalization,
/// LayerNormalization, RMSNormalization, Relu, LeakyRelu, Sigmoid, Tanh, Elu, Softmax, MaxPool, AveragePool,
/// GlobalAveragePool, Flatten, Gemm, MatMul (+ Add of a bias), Concat, Add, Sum, Slice of channels, Resize (nearest,
/// whole factors), Identity, Dropout; x·Sigmoid(x) as SiLU, x·Tanh(Softplus(x)) as Mish, (x − a) / b of scalars as
/// Normalize), float32, opsets 13 to 23. Each node's output tensor names its graph node, so parameters are named
/// "{tensor}.weight" — the state_dict names of an exported Sequential. Anything else is an
/// <see cref="InvalidDataException"/> naming the file, the node and what was expected.
/// </summary>
public static class OnnxImport
{
    public const int MinOpset = 13, MaxOpset = 23;

    /// <summary>Reads the ONNX model at <paramref name="path"/>.</summary>
    public static Graph<float> Load(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"ONNX model not found: {path}", path);
        return FromBytes(File.ReadAllBytes(path), Path.GetFileName(path));
    }

    /// <summary>Reads an ONNX model from its bytes; <paramref name="source"/> names it in errors.</summary>
    public static Graph<float> FromBytes(byte[] bytes, string source = "model.onnx")
    {
        ArgumentNullException.ThrowIfNull(bytes);
        OnnxProto.ModelProto model;
        try
        {
            model = OnnxProto.ModelProto.Parser.ParseFrom(bytes);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new InvalidDataException($"{source}: not an ONNX model ({e.Message})", e);
        }
        return new Reader(model, source).Read();
    }

    private sealed class Reader(OnnxProto.ModelProto model, string source)
    {
        private readonly Dictionary<string, OnnxProto.TensorProto> _initializers = new(StringComparer.Ordinal);
        private readonly Dictionary<string, nint[]> _shapes = new(StringComparer.Ordinal);   // tensors computed so far (batch 1)
        private readonly Dictionary<string, List<OnnxProto.NodeProto>> _consumers = new(StringComparer.Ordinal);
        private readonly Dictionary<string, OnnxProto.NodeProto> _producers = new(StringComparer.Ordinal);
        private readonly HashSet<OnnxProto.NodeProto> _absorbed = [];
        private readonly List<GraphNode<float>> _nodes = [];
        private readonly Dictionary<string, string> _alias = new(StringComparer.Ordinal);   // an identity-like node's output → its input

        private InvalidDataException Error(string message) => new($"{source}: {message}");

        private InvalidDataException Error(OnnxProto.NodeProto node, string message) =>
            new($"{source}: node '{(node.Name.Length > 0 ? node.Name : node.Output.FirstOrDefault())}' ({node.OpType}): {message}");

        public Graph<float> Read()
        {
            OnnxProto.GraphProto graph = model.Graph ?? throw Error("the model has no graph.");
            long opset = -1;
            foreach (var import in model.OpsetImport)
            {
                if (import.Domain is "" or "ai.onnx") opset = import.Version;
                else throw Error($"operator set domain '{import.Domain}' is not supported (the default domain only).");
            }
            if (opset is < MinOpset or > MaxOpset) throw Error($"opset {opset} is not supported; expected {MinOpset} to {MaxOpset}.");
            foreach (OnnxProto.TensorProto tensor in graph.Initializer)
            {
                if (tensor.DataLocation == OnnxProto.TensorProto.Types.DataLocation.External || tensor.ExternalData.Count > 0)
                    throw Error($"initializer '{tensor.Name}' keeps its data in an external file, which is not supported.");
                if (!_initializers.TryAdd(tensor.Name, tensor)) throw Error($"two initializers are named '{tensor.Name}'.");
            }
            var inputs = graph.Input.Where(i => !_initializers.ContainsKey(i.Name)).ToList();
            if (inputs.Count != 1) throw Error($"the graph must have one input; it has {inputs.Count} ({string.Join(", ", inputs.Select(i => i.Name))}).");
            OnnxProto.ValueInfoProto input = inputs[0];
            _shapes[input.Name] = InputShape(input);
            if (graph.Output.Count == 0) throw Error("the graph has no output.");
            foreach (var node in graph.Node)
                foreach (string name in node.Input)
                    if (name.Length > 0) (_consumers.TryGetValue(name, out var list) ? list : _consumers[name] = []).Add(node);
            foreach (var node in graph.Node)
                foreach (string name in node.Output)
                    if (!_producers.TryAdd(name, node)) throw Error(node, $"its output '{name}' is also written by another node.");

            foreach (OnnxProto.NodeProto node in graph.Node)
            {
                if (_absorbed.Contains(node)) continue;
                if (!string.IsNullOrEmpty(node.Domain) && node.Domain != "ai.onnx") throw Error(node, $"domain '{node.Domain}' is not supported.");
                foreach (string name in node.Input)
                    if (name.Length > 0 && !_initializers.ContainsKey(name) && !_shapes.ContainsKey(Resolve(name)))
                        throw Error(node, _producers.ContainsKey(name)
                            ? $"reads '{name}' before the node that writes it (the graph is not in topological order, or has a cycle)."
                            : $"reads '{name}', which is neither the input, an initializer nor a node's output.");
                try
                {
                    Add(node, opset);
                }
                catch (ArgumentException e)   // a layer's own check of values the file gave it
                {
                    throw Error(node, e.Message);
                }
            }
            string[] outputs = graph.Output.Select(o => Resolve(o.Name)).ToArray();
            foreach (var (output, info) in outputs.Zip(graph.Output))
                if (!_shapes.ContainsKey(output)) throw Error($"output '{info.Name}' is not computed by any node.");
            Graph<float> result;
            try
            {
                result = new Graph<float>(input.Name, _nodes, outputs);
            }
            catch (ArgumentException e)
            {
                throw Error(e.Message);
            }
            result.Training = false;
            return result;
        }

        private string Resolve(string name) => _alias.TryGetValue(name, out string? to) ? Resolve(to) : name;

        private nint[] InputShape(OnnxProto.ValueInfoProto input)
        {
            var type = input.Type?.TensorType ?? throw Error($"input '{input.Name}' is not a tensor.");
            if (type.ElemType != (int)OnnxProto.TensorProto.Types.DataType.Float)
                throw Error($"input '{input.Name}' is of element type {(OnnxProto.TensorProto.Types.DataType)type.ElemType}; float32 models only.");
            if (type.Shape is null || type.Shape.Dim.Count < 2) throw Error($"input '{input.Name}' needs a known shape (N, ...) of rank 2 or more.");
            var shape = new nint[type.Shape.Dim.Count];
            shape[0] = 1;
            for (int d = 1; d < shape.Length; d++)
            {
                var dim = type.Shape.Dim[d];
                if (dim.ValueCase != OnnxProto.TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue || dim.DimValue is < 1 or > int.MaxValue)
                    throw Error($"input '{input.Name}' dimension {d} must be a fixed positive size (only the batch may be symbolic).");
                shape[d] = (nint)dim.DimValue;
            }
            long values = 1;
            foreach (nint d in shape) values = values > Array.MaxLength / d ? long.MaxValue : values * d;
            if (values > Array.MaxLength) throw Error($"input '{input.Name}' of shape {TensorData.Format(shape)} holds more values per image than an array holds.");
            return shape;
        }

        /// <summary>A float32 initializer's values, its size checked against its dimensions before anything is allocated.</summary>
        private float[] Floats(OnnxProto.NodeProto node, string name, out long[] dims)
        {
            OnnxProto.TensorProto tensor = Initializer(node, name);
            dims = [.. tensor.Dims];
            if (tensor.DataType != (int)OnnxProto.TensorProto.Types.DataType.Float)
                throw Error(node, $"initializer '{name}' is {(OnnxProto.TensorProto.Types.DataType)tensor.DataType}; float32 expected.");
            long count = Count(node, name, dims);
            if (tensor.RawData.Length > 0)
            {
                if (tensor.RawData.Length != count * sizeof(float))
                    throw Error(node, $"initializer '{name}' of dimensions ({string.Join(", ", dims)}) needs {count * sizeof(float)} bytes; it has {tensor.RawData.Length}.");
                var values = new float[count];
                ReadOnlySpan<byte> raw = tensor.RawData.Span;
                for (int i = 0; i < values.Length; i++) values[i] = BinaryPrimitives.ReadSingleLittleEndian(raw[(i * 4)..]);
                return values;
            }
            if (tensor.FloatData.Count != count)
                throw Error(node, $"initializer '{name}' of dimensions ({string.Join(", ", dims)}) needs {count} values; it has {tensor.FloatData.Count}.");
            return [.. tensor.FloatData];
        }

        private long[] Int64s(OnnxProto.NodeProto node, string name)
        {
            OnnxProto.TensorProto tensor = Initializer(node, name);
            if (tensor.DataType != (int)OnnxProto.TensorProto.Types.DataType.Int64)
                throw Error(node, $"initializer '{name}' is {(OnnxProto.TensorProto.Types.DataType)tensor.DataType}; int64 expected.");
            long count = Count(node, name, [.. tensor.Dims]);
            if (count > 64) throw Error(node, $"initializer '{name}' holds {count} values; a shape or index list of at most 64 expected.");
            if (tensor.RawData.Length > 0)
            {
                if (tensor.RawData.Length != count * sizeof(long)) throw Error(node, $"initializer '{name}' needs {count * sizeof(long)} bytes; it has {tensor.RawData.Length}.");
                return Enumerable.Range(0, (int)count).Select(i => BinaryPrimitives.ReadInt64LittleEndian(tensor.RawData.Span[(i * 8)..])).ToArray();
            }
            if (tensor.Int64Data.Count != count) throw Error(node, $"initializer '{name}' needs {count} values; it has {tensor.Int64Data.Count}.");
            return [.. tensor.Int64Data];
        }

        private OnnxProto.TensorProto Initializer(OnnxProto.NodeProto node, string name) =>
            _initializers.TryGetValue(name, out var tensor) ? tensor : throw Error(node, $"input '{name}' must be an initializer (a constant).");

        private long Count(OnnxProto.NodeProto node, string name, long[] dims)
        {
            long count = 1;
            foreach (long d in dims)
            {
                if (d < 0) throw Error(node, $"initializer '{name}' has a negative dimension {d}.");
                count = d == 0 ? 0 : count > Array.MaxLength / d ? throw Error(node, $"initializer '{name}' of dimensions ({string.Join(", ", dims)}) is larger than an array holds.") : count * d;
            }
            return count;
        }

        private static OnnxProto.AttributeProto? Attribute(OnnxProto.NodeProto node, string name) => node.Attribute.FirstOrDefault(a => a.Name == name);

        private long Int(OnnxProto.NodeProto node, string name, long fallback) => Attribute(node, name) is { } a ? a.I : fallback;

        private float Float(OnnxProto.NodeProto node, string name, float fallback) => Attribute(node, name) is { } a ? a.F : fallback;

        private string Text(OnnxProto.NodeProto node, string name, string fallback) => Attribute(node, name) is { } a ? a.S.ToStringUtf8() : fallback;

        private long[]? Ints(OnnxProto.NodeProto node, string name) => Attribute(node, name) is { } a ? [.. a.Ints] : null;

        private int Small(OnnxProto.NodeProto node, string what, long value, long min = 0, long max = 1 << 20) =>
            value >= min && value <= max ? (int)value : throw Error(node, $"{what} {value} is out of range [{min}, {max}].");

        private void Only(OnnxProto.NodeProto node, params string[] known)
        {
            foreach (var a in node.Attribute)
                if (!known.Contains(a.Name)) throw Error(node, $"attribute '{a.Name}' is not supported.");
        }

        private void Inputs(OnnxProto.NodeProto node, int min, int max)
        {
            int count = node.Input.Count;
            while (count > 0 && node.Input[count - 1].Length == 0) count--;
            if (count < min || count > max) throw Error(node, $"expected {(min == max ? $"{min}" : $"{min} to {max}")} inputs; got {count}.");
            if (node.Output.Count != 1) throw Error(node, $"expected one output; got {node.Output.Count}.");
        }

        private string In(OnnxProto.NodeProto node, int k) => Resolve(node.Input[k]);

        private void Layer(OnnxProto.NodeProto node, ILayer<float> layer, string input) => Named(node.Output[0], layer, input, node);

        private void Join(OnnxProto.NodeProto node, IJoinLayer<float> join, string[] inputs)
        {
            string output = node.Output[0];
            try
            {
                _shapes[output] = join.OutputShape(inputs.Select(i => _shapes[i]).ToArray());
            }
            catch (ArgumentException e)
            {
                throw Error(node, e.Message);
            }
            _nodes.Add(new GraphNode<float>(output, join, inputs));
        }

        /// <summary>The only consumer of <paramref name="tensor"/>, or null.</summary>
        private OnnxProto.NodeProto? SoleConsumer(string tensor) =>
            _consumers.TryGetValue(tensor, out var list) && list.Count == 1 && !model.Graph.Output.Any(o => o.Name == tensor) ? list[0] : null;

        private bool IsScalar(string name, out float value)
        {
            value = 0;
            if (!_initializers.TryGetValue(name, out var t) || t.DataType != (int)OnnxProto.TensorProto.Types.DataType.Float || t.Dims.Any(d => d != 1)) return false;
            if (t.RawData.Length == 4) value = BinaryPrimitives.ReadSingleLittleEndian(t.RawData.Span);
            else if (t.FloatData.Count == 1) value = t.FloatData[0];
            else return false;
            return true;
        }

        private void Add(OnnxProto.NodeProto node, long opset)
        {
            switch (node.OpType)
            {
                case "Conv": Conv(node); break;
                case "BatchNormalization": BatchNormalization(node); break;
                case "InstanceNormalization":
                {
                    Inputs(node, 3, 3);
                    Only(node, "epsilon");
                    float[] scale = Floats(node, node.Input[1], out _), bias = Floats(node, node.Input[2], out _);
                    var norm = new InstanceNorm<float>(scale.Length, eps: Float(node, "epsilon", 1e-5f), affine: true);
                    scale.CopyTo(TensorData.Flat(norm.Weight!.Value));
                    bias.CopyTo(TensorData.Flat(norm.Bias!.Value));
                    Layer(node, norm, In(node, 0));
                    break;
                }
                case "GroupNormalization":
                {
                    Inputs(node, 3, 3);
                    Only(node, "epsilon", "num_groups", "stash_type");
                    nint[] shape = _shapes[In(node, 0)];
                    float[] scale = Floats(node, node.Input[1], out _), bias = Floats(node, node.Input[2], out _);
                    if (scale.Length != shape[1] || bias.Length != shape[1])
                        throw Error(node, $"scale and bias must have one value per channel ({shape[1]}, opset 21's GroupNormalization); got {scale.Length} and {bias.Length}.");
                    var norm = new GroupNorm<float>(Small(node, "num_groups", Int(node, "num_groups", 0), 1), (int)shape[1], eps: Float(node, "epsilon", 1e-5f));
                    scale.CopyTo(TensorData.Flat(norm.Weight!.Value));
                    bias.CopyTo(TensorData.Flat(norm.Bias!.Value));
                    Layer(node, norm, In(node, 0));
                    break;
                }
                case "LayerNormalization" or "RMSNormalization": LastDimensionsNorm(node); break;
                case "Relu": Simple(node, new ReLU<float>()); break;
                case "LeakyRelu": Inputs(node, 1, 1); Only(node, "alpha"); Layer(node, new LeakyReLU<float>(Float(node, "alpha", 0.01f)), In(node, 0)); break;
                case "Sigmoid": Sigmoid(node); break;
                case "Softplus": Softplus(node); break;
                case "Tanh": Simple(node, new Tanh<float>()); break;
                case "Elu":
                    Inputs(node, 1, 1);
                    Only(node, "alpha");
                    if (Float(node, "alpha", 1) != 1) throw Error(node, $"alpha {Float(node, "alpha", 1)}: only ELU with alpha 1 is supported.");
                    Layer(node, new ELU<float>(), In(node, 0));
                    break;
                case "Softmax":
                {
                    Inputs(node, 1, 1);
                    Only(node, "axis");
                    int rank = _shapes[In(node, 0)].Length;
                    long axis = Int(node, "axis", -1);
                    if (axis < 0) axis += rank;
                    Layer(node, new Softmax<float>(Small(node, "axis", axis, 1, rank - 1)), In(node, 0));
                    break;
                }
                case "Identity": Inputs(node, 1, 1); Only(node); _alias[node.Output[0]] = In(node, 0); break;
                case "Dropout":
                    if (node.Input.Count > 2 && node.Input[2].Length > 0) throw Error(node, "a training_mode input is not supported (inference graphs only).");
                    if (node.Output.Count > 1 && node.Output[1].Length > 0) throw Error(node, "the mask output is not supported.");
                    Only(node, "seed");
                    _alias[node.Output[0]] = In(node, 0);
                    break;
                case "Flatten":
                    Inputs(node, 1, 1);
                    Only(node, "axis");
                    if (Int(node, "axis", 1) != 1) throw Error(node, $"axis {Int(node, "axis", 1)}: only Flatten after the batch (axis 1) is supported.");
                    Layer(node, new Flatten<float>(), In(node, 0));
                    break;
                case "MaxPool" or "AveragePool": Pool(node); break;
                case "GlobalAveragePool": Simple(node, new GlobalAvgPool2d<float>()); break;
                case "Gemm": Gemm(node); break;
                case "MatMul": MatMul(node); break;
                case "Concat":
                {
                    Only(node, "axis");
                    if (node.Input.Count == 0 || node.Output.Count != 1) throw Error(node, "expected inputs and one output.");
                    string[] inputs = node.Input.Select(Resolve).ToArray();
                    foreach (string i in inputs) if (!_shapes.ContainsKey(i)) throw Error(node, $"input '{i}' must be computed, not a constant.");
                    long axis = Int(node, "axis", 1);
                    if (axis < 0) axis += _shapes[inputs[0]].Length;
                    Join(node, new Concat<float>(Small(node, "axis", axis, 1, _shapes[inputs[0]].Length - 1)), inputs);
                    break;
                }
                case "Add" or "Sum":
                {
                    if (node.OpType == "Add" && ScalarAffine(node)) break;
                    Only(node);
                    string[] inputs = node.Input.Select(Resolve).ToArray();
                    if (inputs.Any(i => !_shapes.ContainsKey(i)))
                        throw Error(node, "adds a constant that is not a scalar; only sums of computed tensors of one shape, a scalar constant and a MatMul's bias are supported.");
                    Join(node, new Add<float>(), inputs);
                    break;
                }
                case "Sub": Sub(node); break;
                case "Slice": Slice(node); break;
                case "Reshape": Reshape(node); break;
                case "Mul": if (!ScalarAffine(node)) Square(node, opset); break;
                case "Transpose":
                {
                    Inputs(node, 1, 1);
                    Only(node, "perm");
                    long[] perm = Ints(node, "perm") ?? throw Error(node, "a perm attribute is needed (the default reverses the batch dimension).");
                    if (perm.Length != _shapes[In(node, 0)].Length || perm.Any(p => p < 0 || p >= perm.Length) || perm.Distinct().Count() != perm.Length || perm[0] != 0)
                        throw Error(node, $"perm ({string.Join(", ", perm)}) must reorder the {_shapes[In(node, 0)].Length} dimensions and keep the batch first.");
                    Layer(node, new Permute<float>(perm.Select(p => (int)p).ToArray()), In(node, 0));
                    break;
                }
                case "Split": Split(node, opset); break;
                case "DepthToSpace":
                {
                    Inputs(node, 1, 1);
                    Only(node, "blocksize", "mode");
                    if (Text(node, "mode", "DCR") != "DCR") throw Error(node, $"mode {Text(node, "mode", "DCR")}: only DCR is supported.");
                    Layer(node, new SharpNorm.Darknet.Reorg<float>(Small(node, "blocksize", Int(node, "blocksize", 0), 1, 1024), reverse: true), In(node, 0));
                    break;
                }
                case "Resize": Resize(node); break;
                default:
                    throw Error(node, $"op {node.OpType} is not supported (supported: Conv, BatchNormalization, InstanceNormalization, GroupNormalization, " +
                        "LayerNormalization, RMSNormalization, Relu, LeakyRelu, Sigmoid, Tanh, Elu, Softmax, Identity, Dropout, Flatten, MaxPool, AveragePool, " +
                        "GlobalAveragePool, Gemm, MatMul, Concat, Add, Sum, Slice, Resize; x*Tanh(Softplus(x)) and (x - a) / b).");
            }
        }

        private void Simple(OnnxProto.NodeProto node, ILayer<float> layer)
        {
            Inputs(node, 1, 1);
            Only(node);
            Layer(node, layer, In(node, 0));
        }

        private (int H, int W) Pair(OnnxProto.NodeProto node, string name, long[]? values, int fallback, int min)
        {
            if (values is null) return (fallback, fallback);
            if (values.Length != 2) throw Error(node, $"{name} must have two values (2-d only); got {values.Length}.");
            return (Small(node, name, values[0], min), Small(node, name, values[1], min));
        }

        private (int Top, int Left, int Bottom, int Right) Pads(OnnxProto.NodeProto node)
        {
            if (Text(node, "auto_pad", "NOTSET") != "NOTSET") throw Error(node, $"auto_pad {Text(node, "auto_pad", "")} is not supported (explicit pads only).");
            long[]? pads = Ints(node, "pads");
            if (pads is null) return (0, 0, 0, 0);
            if (pads.Length != 4) throw Error(node, $"pads must have four values; got {pads.Length}.");
            return (Small(node, "pads", pads[0]), Small(node, "pads", pads[1]), Small(node, "pads", pads[2]), Small(node, "pads", pads[3]));
        }

        private void Conv(OnnxProto.NodeProto node)
        {
            Inputs(node, 2, 3);
            Only(node, "kernel_shape", "strides", "pads", "dilations", "group", "auto_pad");
            float[] weight = Floats(node, node.Input[1], out long[] dims);
            if (dims.Length != 4) throw Error(node, $"the weight must be (O, I/groups, kH, kW); got dimensions ({string.Join(", ", dims)}).");
            int groups = Small(node, "group", Int(node, "group", 1), 1);
            int outChannels = Small(node, "output channels", dims[0], 1), inChannels = Small(node, "input channels", dims[1] * groups, 1);
            (int kh, int kw) = (Small(node, "kernel height", dims[2], 1), Small(node, "kernel width", dims[3], 1));
            if (Ints(node, "kernel_shape") is { } kernel && (kernel.Length != 2 || kernel[0] != kh || kernel[1] != kw))
                throw Error(node, $"kernel_shape ({string.Join(", ", kernel)}) does not match the weight's ({kh}, {kw}).");
            var (top, left, bottom, right) = Pads(node);
            if (top != bottom || left != right) throw Error(node, $"asymmetric pads ({top}, {left}, {bottom}, {right}) are not supported for Conv.");
            var (sh, sw) = Pair(node, "strides", Ints(node, "strides"), 1, 1);
            var (dh, dw) = Pair(node, "dilations", Ints(node, "dilations"), 1, 1);
            float[]? bias = node.Input.Count > 2 && node.Input[2].Length > 0 ? Floats(node, node.Input[2], out _) : null;
            if (bias is null && groups == 1 && sh == sw && top == left && dh == 1 && dw == 1 && kh == kw && LocallyConnected(node, weight, dims, sh, top)) return;
            if (bias is not null && bias.Length != outChannels) throw Error(node, $"the bias has {bias.Length} values; the convolution writes {outChannels} channels.");
            var conv = new Conv2d<float>(inChannels, outChannels, [kh, kw], [sh, sw], [top, left], [dh, dw], groups, bias: bias is not null);
            weight.CopyTo(TensorData.Flat(conv.Weight.Value));
            bias?.CopyTo(TensorData.Flat(conv.Bias!.Value));
            Layer(node, conv, In(node, 0));
        }

        private void BatchNormalization(OnnxProto.NodeProto node)
        {
            Inputs(node, 5, 5);
            Only(node, "epsilon", "momentum", "training_mode");
            if (Int(node, "training_mode", 0) != 0) throw Error(node, "training_mode 1 is not supported (inference graphs only).");
            float[] scale = Floats(node, node.Input[1], out _), bias = Floats(node, node.Input[2], out _);
            float[] mean = Floats(node, node.Input[3], out _), variance = Floats(node, node.Input[4], out _);
            int c = scale.Length;
            if (bias.Length != c || mean.Length != c || variance.Length != c)
                throw Error(node, $"scale, bias, mean and var must have one value per channel; got {scale.Length}, {bias.Length}, {mean.Length}, {variance.Length}.");
            // ONNX's momentum weighs the running value (0.9), PyTorch's the batch's (0.1).
            var norm = new BatchNorm<float>(c, eps: Float(node, "epsilon", 1e-5f), momentum: 1 - Float(node, "momentum", 0.9f));
            scale.CopyTo(TensorData.Flat(norm.Weight!.Value));
            bias.CopyTo(TensorData.Flat(norm.Bias!.Value));
            mean.CopyTo(TensorData.Flat(norm.RunningMean!));
            variance.CopyTo(TensorData.Flat(norm.RunningVar!));
            Layer(node, norm, In(node, 0));
        }

        private void LastDimensionsNorm(OnnxProto.NodeProto node)
        {
            bool rms = node.OpType == "RMSNormalization";
            Inputs(node, 2, rms ? 2 : 3);
            Only(node, "axis", "epsilon", "stash_type");
            if (node.Output.Count > 1) throw Error(node, "only the first output (Y) is supported.");
            nint[] shape = _shapes[In(node, 0)];
            float[] scale = Floats(node, node.Input[1], out long[] dims);
            long axis = Int(node, "axis", -1);
            if (axis < 0) axis += shape.Length;
            if (axis < 1 || axis + dims.Length != shape.Length || dims.Where((d, i) => d != shape[axis + i]).Any())
                throw Error(node, $"the scale ({string.Join(", ", dims)}) must be the input's dimensions from axis {axis} on ({TensorData.Format(shape[(int)Math.Clamp(axis, 0, shape.Length)..])}).");
            int[] normalized = [.. dims.Select(d => (int)d)];
            float[]? bias = !rms && node.Input.Count > 2 && node.Input[2].Length > 0 ? Floats(node, node.Input[2], out _) : null;
            if (bias is not null && bias.Length != scale.Length) throw Error(node, $"the bias has {bias.Length} values; the scale {scale.Length}.");
            NormLayer<float> norm = rms
                ? new RMSNorm<float>(normalized, Float(node, "epsilon", 1e-5f))
                : new LayerNorm<float>(normalized, Float(node, "epsilon", 1e-5f), bias: bias is not null);
            scale.CopyTo(TensorData.Flat(norm.Weight!.Value));
            bias?.CopyTo(TensorData.Flat(norm.Bias!.Value));
            Layer(node, norm, In(node, 0));
        }

        private void Pool(OnnxProto.NodeProto node)
        {
            bool max = node.OpType == "MaxPool";
            if (node.Output.Count > 1 && node.Output[1].Length > 0) throw Error(node, "the Indices output is not supported.");
            if (node.Input.Count != 1) throw Error(node, $"expected 1 input; got {node.Input.Count}.");
            Only(node, max ? ["kernel_shape", "strides", "pads", "ceil_mode", "auto_pad", "dilations", "storage_order"] : ["kernel_shape", "strides", "pads", "ceil_mode", "auto_pad", "count_include_pad"]);
            var (kh, kw) = Pair(node, "kernel_shape", Ints(node, "kernel_shape") ?? throw Error(node, "kernel_shape is required."), 1, 1);
            var (sh, sw) = Pair(node, "strides", Ints(node, "strides"), 1, 1);
            if (Ints(node, "dilations") is { } d && d.Any(v => v != 1)) throw Error(node, "dilations other than 1 are not supported.");
            if (Int(node, "storage_order", 0) != 0) throw Error(node, "storage_order 1 is not supported.");
            var (top, left, bottom, right) = Pads(node);
            bool ceil = Int(node, "ceil_mode", 0) != 0, symmetric = top == bottom && left == right;
            ILayer<float> layer;
            try
            {
                layer = max
                    ? new MaxPool2d<float>([kh, kw], [sh, sw], symmetric ? [top, left] : [top, left, bottom, right], ceil)
                    : symmetric ? new AvgPool2d<float>([kh, kw], [sh, sw], [top, left], ceil, Int(node, "count_include_pad", 0) != 0)
                    : throw Error(node, $"asymmetric pads ({top}, {left}, {bottom}, {right}) are not supported for AveragePool.");
            }
            catch (ArgumentException e)
            {
                throw Error(node, e.Message);
            }
            Layer(node, layer, In(node, 0));
        }

        private void Gemm(OnnxProto.NodeProto node)
        {
            Inputs(node, 2, 3);
            Only(node, "alpha", "beta", "transA", "transB");
            if (Int(node, "transA", 0) != 0 || Float(node, "alpha", 1) != 1 || Float(node, "beta", 1) != 1)
                throw Error(node, "only transA 0, alpha 1 and beta 1 are supported.");
            float[] b = Floats(node, node.Input[1], out long[] dims);
            if (dims.Length != 2) throw Error(node, $"B must be a matrix; got dimensions ({string.Join(", ", dims)}).");
            bool transposed = Int(node, "transB", 0) != 0;
            int outFeatures = Small(node, "output features", transposed ? dims[0] : dims[1], 1), inFeatures = Small(node, "input features", transposed ? dims[1] : dims[0], 1);
            float[]? bias = node.Input.Count > 2 && node.Input[2].Length > 0 ? Floats(node, node.Input[2], out _) : null;
            if (bias is not null && bias.Length != outFeatures) throw Error(node, $"C has {bias.Length} values; one per output ({outFeatures}) expected.");
            Layer(node, Linear(b, transposed, inFeatures, outFeatures, bias), In(node, 0));
        }

        /// <summary>MatMul by a constant, with the bias of an Add that alone reads it folded in: a Linear.</summary>
        private void MatMul(OnnxProto.NodeProto node)
        {
            Inputs(node, 2, 2);
            Only(node);
            float[] b = Floats(node, node.Input[1], out long[] dims);
            if (dims.Length != 2) throw Error(node, $"only a product with a constant matrix is supported; got dimensions ({string.Join(", ", dims)}).");
            int inFeatures = Small(node, "input features", dims[0], 1), outFeatures = Small(node, "output features", dims[1], 1);
            float[]? bias = null;
            string output = node.Output[0];
            if (SoleConsumer(output) is { OpType: "Add" } add && add.Input.Count == 2)
            {
                string other = add.Input[0] == output ? add.Input[1] : add.Input[0];
                if (_initializers.TryGetValue(other, out var c) && c.Dims.Count == 1 && c.Dims[0] == outFeatures)
                {
                    bias = Floats(add, other, out _);
                    _absorbed.Add(add);
                    output = add.Output[0];
                }
            }
            Named(output, Linear(b, transposed: false, inFeatures, outFeatures, bias), In(node, 0), node);
        }

        private static Linear<float> Linear(float[] b, bool transposed, int inFeatures, int outFeatures, float[]? bias)
        {
            var linear = new Linear<float>(inFeatures, outFeatures, bias: bias is not null);
            Span<float> weight = TensorData.Flat(linear.Weight.Value);
            if (transposed) b.CopyTo(weight);
            else
                for (int o = 0; o < outFeatures; o++)
                    for (int i = 0; i < inFeatures; i++) weight[o * inFeatures + i] = b[(long)i * outFeatures + o];
            bias?.CopyTo(TensorData.Flat(linear.Bias!.Value));
            return linear;
        }

        /// <summary>The Mul that alone reads <paramref name="factor"/> and multiplies it by <paramref name="x"/>, or null.</summary>
        private OnnxProto.NodeProto? Product(string factor, string x) =>
            SoleConsumer(factor) is { OpType: "Mul" } mul && mul.Input.Count == 2 && mul.Output.Count == 1
            && (mul.Input[0] == x && mul.Input[1] == factor || mul.Input[1] == x && mul.Input[0] == factor) ? mul : null;

        /// <summary>Sigmoid(x), or x·Sigmoid(x) as SiLU when a Mul alone reads it.</summary>
        private void Sigmoid(OnnxProto.NodeProto node)
        {
            Inputs(node, 1, 1);
            Only(node);
            if (Product(node.Output[0], node.Input[0]) is { } mul)
            {
                _absorbed.Add(mul);
                Named(mul.Output[0], new SiLU<float>(), In(node, 0), node);
            }
            else Layer(node, new Sigmoid<float>(), In(node, 0));
        }

        /// <summary>x·Tanh(Softplus(x)) as Mish; Softplus alone is not supported.</summary>
        private void Softplus(OnnxProto.NodeProto node)
        {
            Inputs(node, 1, 1);
            Only(node);
            if (SoleConsumer(node.Output[0]) is { OpType: "Tanh" } tanh && tanh.Output.Count == 1 && Product(tanh.Output[0], node.Input[0]) is { } mul)
            {
                _absorbed.Add(tanh);
                _absorbed.Add(mul);
                Named(mul.Output[0], new Mish<float>(), In(node, 0), node);
                return;
            }
            throw Error(node, "Softplus is supported only in x*Tanh(Softplus(x)) (Mish).");
        }

        private void Named(string output, ILayer<float> layer, string input, OnnxProto.NodeProto node)
        {
            try
            {
                _shapes[output] = layer.OutputShape(_shapes[input]);
            }
            catch (ArgumentException e)
            {
                throw Error(node, e.Message);
            }
            _nodes.Add(new GraphNode<float>(output, layer, input));
        }

        /// <summary>
        /// Mul by a scalar constant, and an Add of one after it (darknet's scale_x_y as the exporter writes it), or an
        /// Add of a scalar constant alone: ScaleShift. False (nothing changed) where neither input is such a constant.
        /// </summary>
        private bool ScalarAffine(OnnxProto.NodeProto node)
        {
            if (node.Input.Count != 2) return false;
            if (node.Output.Count != 1) return false;
            int k = Constant(node, 1, In(node, 0), out float c) ? 1 : Constant(node, 0, In(node, 1), out c) ? 0 : -1;
            if (k < 0) return false;
            Only(node);
            string input = In(node, 1 - k), output = node.Output[0];
            if (!float.IsFinite(c)) throw Error(node, $"the constant {c} is not finite.");
            double scale = 1, shift = c;
            if (node.OpType == "Mul")
            {
                (scale, shift) = (c, 0);
                // the Add's other input is the Mul's output, of the Mul's input's shape (not registered yet)
                if (SoleConsumer(output) is { OpType: "Add" } add && add.Input.Count == 2 && add.Output.Count == 1 && add.Attribute.Count == 0
                    && (add.Input[0] == output && Constant(add, 1, input, out float b) || add.Input[1] == output && Constant(add, 0, input, out b)))
                {
                    if (!float.IsFinite(b)) throw Error(add, $"the constant {b} is not finite.");
                    _absorbed.Add(add);
                    (shift, output) = (b, add.Output[0]);
                }
            }
            Named(output, new ScaleShift<float>(scale, shift), input, node);
            return true;

            // input `index` a scalar constant and `other` a computed tensor of at least its rank (so broadcasting keeps the shape)
            bool Constant(OnnxProto.NodeProto n, int index, string other, out float value) =>
                IsScalar(n.Input[index], out value) && _shapes.TryGetValue(other, out nint[]? shape)
                && _initializers[n.Input[index]].Dims.Count <= shape.Length;
        }

        /// <summary>(x − a) / b of scalar constants: Normalize.</summary>
        private void Sub(OnnxProto.NodeProto node)
        {
            Inputs(node, 2, 2);
            Only(node);
            if (IsScalar(node.Input[1], out float mean) && SoleConsumer(node.Output[0]) is { OpType: "Div" } div && div.Input.Count == 2
                && div.Input[0] == node.Output[0] && IsScalar(div.Input[1], out float std) && std > 0)
            {
                _absorbed.Add(div);
                string input = In(node, 0);
                Named(div.Output[0], new Normalize<float>(mean, std), input, node);
                return;
            }
            throw Error(node, "only (x - a) / b with scalar constants a and b (an input normalization) is supported.");
        }

        private void Slice(OnnxProto.NodeProto node)
        {
            Inputs(node, 3, 5);
            Only(node);
            long[] starts = Int64s(node, node.Input[1]), ends = Int64s(node, node.Input[2]);
            long[] axes = node.Input.Count > 3 && node.Input[3].Length > 0 ? Int64s(node, node.Input[3]) : [0];
            long[] steps = node.Input.Count > 4 && node.Input[4].Length > 0 ? Int64s(node, node.Input[4]) : [1];
            nint[] shape = _shapes[In(node, 0)];
            if (starts.Length != 1 || ends.Length != 1 || axes.Length != 1 || axes[0] != 1 || steps.Length != 1 || steps[0] != 1)
                throw Error(node, "only a slice of the channels (one axis, 1, step 1) is supported.");
            long start = Math.Clamp(starts[0] < 0 ? starts[0] + shape[1] : starts[0], 0, shape[1]), end = Math.Clamp(ends[0] < 0 ? ends[0] + shape[1] : ends[0], 0, shape[1]);
            if (end <= start) throw Error(node, $"the slice [{starts[0]}, {ends[0]}) of {shape[1]} channels is empty.");
            Layer(node, new ChannelSlice<float>((int)start, (int)(end - start)), In(node, 0));
        }

        /// <summary>Reshape to a constant shape that keeps the batch: (0, ...), or (-1, ...) where the rest is one sample's values.</summary>
        private void Reshape(OnnxProto.NodeProto node)
        {
            Inputs(node, 2, 2);
            Only(node, "allowzero");
            if (Int(node, "allowzero", 0) != 0) throw Error(node, "allowzero=1 is not supported.");
            long[] target = Int64s(node, node.Input[1]);
            nint[] shape = _shapes[In(node, 0)];
            if (target.Length == 3 && target[0] == 0 && target[2] == -1 && target[1] > 0 && GroupNormalization(node, shape, target[1])) return;
            if (target.Length > 0 && target[0] == -1 && target.Skip(1).All(d => d > 0))
            {
                long perSample = 1, rest = 1;
                foreach (nint d in shape.AsSpan(1)) perSample *= d;
                foreach (long d in target.Skip(1)) rest = rest > int.MaxValue / d ? long.MaxValue : rest * d;
                if (rest == perSample) target[0] = 0;
            }
            if (target.Length == 0 || target[0] != 0 || target.Any(d => d < -1))
                throw Error(node, $"shape ({string.Join(", ", target)}): only a reshape that keeps the batch (first entry 0) is supported.");
            Layer(node, new Reshape<float>(target), In(node, 0));
        }

        /// <summary>
        /// GroupNormalization as opsets before 21 write it: Reshape (0, G, -1) → InstanceNormalization with unit scale and
        /// zero shift → Reshape back → Mul by γ and Add β per channel (or neither). False (nothing changed) otherwise.
        /// </summary>
        private bool GroupNormalization(OnnxProto.NodeProto reshape, nint[] shape, long groups)
        {
            if (shape.Length < 3 || groups > shape[1] || shape[1] % groups != 0) return false;
            OnnxProto.NodeProto? instance = SoleConsumer(reshape.Output[0]);
            if (instance is not { OpType: "InstanceNormalization" } || instance.Input.Count != 3 || instance.Input[0] != reshape.Output[0]
                || !_initializers.ContainsKey(instance.Input[1]) || !_initializers.ContainsKey(instance.Input[2])) return false;
            float[] ones = Floats(instance, instance.Input[1], out _), zeros = Floats(instance, instance.Input[2], out _);
            if (ones.Length != groups || zeros.Length != groups || ones.Any(v => v != 1) || zeros.Any(v => v != 0)) return false;
            OnnxProto.NodeProto? back = SoleConsumer(instance.Output[0]);
            if (back is not { OpType: "Reshape" } || back.Input.Count != 2 || !_initializers.ContainsKey(back.Input[1])) return false;
            long[] restored = Int64s(back, back.Input[1]);
            if (restored.Length != shape.Length || restored[0] != 0 || restored.Skip(1).Where((d, i) => d != shape[i + 1]).Any()) return false;
            int channels = (int)shape[1];
            bool PerChannel(OnnxProto.NodeProto? n, string op, string from, out float[] values)
            {
                values = [];
                if (n is null || n.OpType != op || n.Input.Count != 2 || n.Input[0] != from || !_initializers.TryGetValue(n.Input[1], out var t)) return false;
                if (t.Dims.Count(d => d != 1) > 1 || t.Dims.Aggregate(1L, (a, d) => a * d) != channels || t.Dims.Count > shape.Length) return false;
                int at = t.Dims.Count - 1;
                while (at >= 0 && t.Dims[at] == 1) at--;
                if (channels > 1 && at != t.Dims.Count - (shape.Length - 1)) return false;   // the channel axis, broadcast from the right
                values = Floats(n, n.Input[1], out _);
                return true;
            }
            OnnxProto.NodeProto? mul = SoleConsumer(back.Output[0]);
            bool affine = PerChannel(mul, "Mul", back.Output[0], out float[] gamma) && PerChannel(SoleConsumer(mul!.Output[0]), "Add", mul.Output[0], out _);
            var norm = new GroupNorm<float>((int)groups, channels, eps: Float(instance, "epsilon", 1e-5f), affine: affine);
            string output = back.Output[0];
            var absorbed = new List<OnnxProto.NodeProto> { instance, back };
            if (affine)
            {
                OnnxProto.NodeProto add = SoleConsumer(mul!.Output[0])!;
                PerChannel(add, "Add", mul.Output[0], out float[] beta);
                gamma.CopyTo(TensorData.Flat(norm.Weight!.Value));
                beta.CopyTo(TensorData.Flat(norm.Bias!.Value));
                absorbed.AddRange([mul, add]);
                output = add.Output[0];
            }
            _absorbed.UnionWith(absorbed);
            Named(output, norm, In(reshape, 0), reshape);
            return true;
        }

        /// <summary>
        /// RMSNormalization as opsets before 23 write it: Mul(x, x) → ReduceMean over the last axes (keepdims) → Add ε →
        /// Sqrt → Div(x, ·) → Mul by γ of the normalized shape (or no Mul).
        /// </summary>
        private void Square(OnnxProto.NodeProto node, long opset)
        {
            Inputs(node, 2, 2);
            Only(node);
            if (node.Input[0] != node.Input[1] || !_shapes.ContainsKey(In(node, 0)))
                throw Error(node, "only x·x of an RMS norm, x·sigmoid(x) and x·tanh(softplus(x)) are supported.");
            string x = node.Input[0];
            nint[] shape = _shapes[In(node, 0)];
            InvalidDataException NotRms() => Error(node, "x·x is supported as the start of an RMS norm (ReduceMean, Add ε, Sqrt, Div, Mul γ) only.");
            OnnxProto.NodeProto mean = SoleConsumer(node.Output[0]) is { OpType: "ReduceMean" } m && m.Input[0] == node.Output[0] && Int(m, "keepdims", 1) == 1 ? m : throw NotRms();
            long[] axes = opset >= 18 ? (mean.Input.Count > 1 && mean.Input[1].Length > 0 ? Int64s(mean, mean.Input[1]) : throw NotRms()) : Ints(mean, "axes") ?? throw NotRms();
            axes = axes.Select(a => a < 0 ? a + shape.Length : a).ToArray();
            int first = shape.Length - axes.Length;
            if (first < 1 || !axes.SequenceEqual(Enumerable.Range(first, axes.Length).Select(a => (long)a)))
                throw Error(mean, $"axes ({string.Join(", ", axes)}) must be the input's last dimensions (not the batch).");
            OnnxProto.NodeProto shift = SoleConsumer(mean.Output[0]) is { OpType: "Add" } a && a.Input.Count == 2 && a.Input[0] == mean.Output[0] && IsScalar(a.Input[1], out _) ? a : throw NotRms();
            IsScalar(shift.Input[1], out float eps);
            OnnxProto.NodeProto root = SoleConsumer(shift.Output[0]) is { OpType: "Sqrt" } r ? r : throw NotRms();
            OnnxProto.NodeProto divide = SoleConsumer(root.Output[0]) is { OpType: "Div" } d && d.Input.Count == 2 && d.Input[0] == x && d.Input[1] == root.Output[0] ? d : throw NotRms();
            if (!(eps >= 0)) throw Error(shift, $"epsilon {eps} must be >= 0.");
            int[] normalized = [.. shape[first..].Select(v => (int)v)];
            float[]? gamma = null;
            string output = divide.Output[0];
            var absorbed = new List<OnnxProto.NodeProto> { mean, shift, root, divide };
            if (SoleConsumer(divide.Output[0]) is { OpType: "Mul" } scale && scale.Input.Count == 2 && scale.Input[0] == divide.Output[0]
                && _initializers.TryGetValue(scale.Input[1], out var g) && g.Dims.SequenceEqual(normalized.Select(v => (long)v)))
            {
                gamma = Floats(scale, scale.Input[1], out _);
                absorbed.Add(scale);
                output = scale.Output[0];
            }
            var norm = new RMSNorm<float>(normalized, eps, elementwiseAffine: gamma is not null);
            gamma?.CopyTo(TensorData.Flat(norm.Weight!.Value));
            _absorbed.UnionWith(absorbed);
            Named(output, norm, In(node, 0), node);
        }

        /// <summary>Split along one axis (not the batch): one slice node per output.</summary>
        private void Split(OnnxProto.NodeProto node, long opset)
        {
            Only(node, "axis", "split", "num_outputs");
            if (node.Input.Count is < 1 or > 2 || node.Output.Count < 1 || node.Output.Count > 4096) throw Error(node, "expected one or two inputs and one to 4096 outputs.");
            nint[] shape = _shapes[In(node, 0)];
            long axis = Int(node, "axis", 0);
            if (axis < 0) axis += shape.Length;
            int dimension = Small(node, "axis", axis, 1, shape.Length - 1);
            long length = shape[dimension];
            long[] sizes = node.Input.Count == 2 && node.Input[1].Length > 0 ? Int64s(node, node.Input[1])
                : Ints(node, "split") is { } attribute ? attribute
                : length % node.Output.Count == 0 ? Enumerable.Repeat(length / node.Output.Count, node.Output.Count).ToArray()
                : throw Error(node, $"{length} values along axis {axis} do not split evenly into {node.Output.Count} outputs.");
            if (sizes.Length != node.Output.Count || sizes.Any(v => v < 1) || sizes.Sum() != length)
                throw Error(node, $"split ({string.Join(", ", sizes)}) must give each of the {node.Output.Count} outputs a positive part of the {length} values along axis {axis}.");
            long start = 0;
            for (int k = 0; k < sizes.Length; k++)
            {
                if (node.Output[k].Length > 0) Named(node.Output[k], new ChannelSlice<float>((int)start, (int)sizes[k], dimension), In(node, 0), node);
                start += sizes[k];
            }
        }

        /// <summary>
        /// The exporter's locally connected layer: Conv with one-hot filters (the windows) → Reshape (0, K, P) →
        /// Transpose (2, 1, 0) → MatMul with (P, O, K) weights → Transpose (2, 1, 0) → Reshape (0, O, OH, OW) → Add of a
        /// (O, OH, OW) bias. Returns false (nothing changed) where the nodes are not that chain.
        /// </summary>
        private bool LocallyConnected(OnnxProto.NodeProto conv, float[] filters, long[] dims, int stride, int padding)
        {
            int window = (int)dims[0], channels = (int)dims[1], k = (int)dims[2];
            if (dims[3] != k || (long)channels * k * k != window) return false;
            for (int row = 0; row < window; row++)
                for (int i = 0; i < window; i++)
                    if (filters[(long)row * window + i] != (row == i ? 1 : 0)) return false;
            nint[] input = _shapes[In(conv, 0)];
            if (input.Length != 4 || input[1] != channels) return false;
            long outH = (input[2] + 2L * padding - k) / stride + 1, outW = (input[3] + 2L * padding - k) / stride + 1, positions = outH * outW;
            bool Shape(OnnxProto.NodeProto? n, string from, params long[] target) => n is { OpType: "Reshape" } && n.Input.Count == 2 && n.Input[0] == from
                && _initializers.ContainsKey(n.Input[1]) && Int64s(n, n.Input[1]).SequenceEqual(target);
            bool Swap(OnnxProto.NodeProto? n, string from) => n is { OpType: "Transpose" } && n.Input.Count == 1 && n.Input[0] == from && (Ints(n, "perm") ?? []).SequenceEqual([2L, 1, 0]);
            OnnxProto.NodeProto? columns = SoleConsumer(conv.Output[0]);
            if (!Shape(columns, conv.Output[0], 0, window, positions)) return false;
            OnnxProto.NodeProto? byPosition = SoleConsumer(columns!.Output[0]);
            if (!Swap(byPosition, columns.Output[0])) return false;
            OnnxProto.NodeProto? product = SoleConsumer(byPosition!.Output[0]);
            if (product is not { OpType: "MatMul" } || product.Input.Count != 2 || product.Input[1] != byPosition.Output[0] || !_initializers.ContainsKey(product.Input[0])) return false;
            float[] weight = Floats(product, product.Input[0], out long[] weightDims);
            if (weightDims.Length != 3 || weightDims[0] != positions || weightDims[2] != window || weightDims[1] is < 1 or > 1 << 20) return false;
            int outputs = (int)weightDims[1];
            OnnxProto.NodeProto? back = SoleConsumer(product.Output[0]);
            if (!Swap(back, product.Output[0])) return false;
            OnnxProto.NodeProto? shaped = SoleConsumer(back!.Output[0]);
            if (!Shape(shaped, back.Output[0], 0, outputs, outH, outW)) return false;
            float[]? bias = null;
            string output = shaped!.Output[0];
            OnnxProto.NodeProto? add = SoleConsumer(output);
            if (add is { OpType: "Add" } && add.Input.Count == 2 && add.Input[0] == output && _initializers.TryGetValue(add.Input[1], out var b)
                && b.Dims.SequenceEqual([(long)outputs, outH, outW]))
            {
                bias = Floats(add, add.Input[1], out _);
                output = add.Output[0];
            }
            var local = new LocallyConnected2d<float>(channels, outputs, (int)input[2], (int)input[3], k, stride, padding, bias: bias is not null);
            weight.CopyTo(TensorData.Flat(local.Weight.Value));
            bias?.CopyTo(TensorData.Flat(local.Bias!.Value));
            _absorbed.UnionWith(new[] { columns, byPosition, product, back, shaped }.Concat(bias is null ? [] : [add!]));
            Named(output, local, In(conv, 0), conv);
            return true;
        }

        private void Resize(OnnxProto.NodeProto node)
        {
            Inputs(node, 3, 4);
            Only(node, "mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a", "exclude_outside", "extrapolation_value", "antialias", "keep_aspect_ratio_policy", "axes");
            if (Text(node, "mode", "nearest") != "nearest" || Text(node, "coordinate_transformation_mode", "half_pixel") != "asymmetric" || Text(node, "nearest_mode", "round_prefer_floor") != "floor")
                throw Error(node, "only nearest, asymmetric, floor resizing (an integer upsample) is supported.");
            if (node.Input.Count > 3 && node.Input[3].Length > 0) throw Error(node, "sizes are not supported; give scales.");
            float[] scales = Floats(node, node.Input[2], out _);
            if (scales.Length != 4 || scales[0] != 1 || scales[1] != 1 || scales[2] != scales[3] || scales[2] < 1 || scales[2] != MathF.Floor(scales[2]) || scales[2] > 1024)
                throw Error(node, $"scales ({string.Join(", ", scales)}) must be (1, 1, s, s) with a whole s from 1 to 1024.");
            Layer(node, new Upsample<float>((int)scales[2]), In(node, 0));
        }
    }
}
