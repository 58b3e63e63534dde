using System.Numerics;
using SharpNorm.Layers;
using SharpNorm.Tensors;
using static SharpNorm.Onnx.OnnxGraphWriter;

namespace SharpNorm.Onnx;

/// <summary>
/// Emits the ONNX nodes of each layer, in eval-mode semantics: one method per layer kind, each taking the name and
/// shape of its input tensor and returning the name of its output tensor. Names follow the state_dict ("3.weight");
/// a layer's nodes are named by its path ("3", "3/ReduceMean").
/// </summary>
internal sealed class OnnxLayerWriter<T>(OnnxGraphWriter graph, bool foldBatchNorm) where T : unmanaged, IFloatingPointIeee754<T>
{
    public string Write(ILayer<T> layer, string path, string input, nint[] shape) => layer switch
    {
        Sequential<T> sequential => Sequential(sequential, path, input, shape),
        Graph<T> g => g.OutputNames.Count == 1 ? Graph(g, path, input, shape)[0]
            : throw new NotSupportedException($"ONNX export: graph '{path}' inside the model has {g.OutputNames.Count} outputs; a nested graph must have one."),
        Sigmoid<T> => graph.Node("Sigmoid", NodeName(path, "Sigmoid"), OutputName(path), [input]),
        Tanh<T> => graph.Node("Tanh", NodeName(path, "Tanh"), OutputName(path), [input]),
        ELU<T> => graph.Node("Elu", NodeName(path, "Elu"), OutputName(path), [input], Float("alpha", 1f)),
        SiLU<T> => graph.Node("Mul", NodeName(path, "Mul"), OutputName(path), [input, graph.Node("Sigmoid", Join(path, "Sigmoid"), OutputName(path) + "_sigmoid", [input])]),
        Mish<T> => Mish(path, input),
        Softmax<T> softmax => graph.Node("Softmax", NodeName(path, "Softmax"), OutputName(path), [input], Int("axis", softmax.Dimension)),
        Normalize<T> normalize => graph.Node("Div", NodeName(path, "Div"), OutputName(path),
            [graph.Node("Sub", Join(path, "Sub"), OutputName(path) + "_centered", [input, graph.Floats(Join(path, "mean"), [], [(float)normalize.Mean])]),
             graph.Floats(Join(path, "std"), [], [(float)normalize.Std])]),
        ScaleShift<T> affine => ScaleShift(affine, path, input),
        Identity<T> => graph.Node("Identity", NodeName(path, "Identity"), OutputName(path), [input]),
        ChannelSlice<T> slice => ChannelSlice(slice, path, input),
        Upsample<T> upsample => graph.Node("Resize", NodeName(path, "Resize"), OutputName(path),
            [input, "", graph.Floats(Join(path, "scales"), [4], [1f, 1f, upsample.ScaleFactor, upsample.ScaleFactor])],
            String("mode", "nearest"), String("coordinate_transformation_mode", "asymmetric"), String("nearest_mode", "floor")),
        SharpNorm.Darknet.YoloLayer<T> yolo => Yolo(yolo, path, input, shape),
        SharpNorm.Darknet.RegionLayer<T> region => Region(region, path, input, shape),
        SharpNorm.Darknet.DetectionLayer<T> detection => Detection(detection, path, input, shape),
        SharpNorm.Darknet.Reorg<T> reorg => Reorg(reorg, path, input, shape),
        LocallyConnected2d<T> local => Local(local, path, input),
        Conv2d<T> conv => Conv(conv, path, input, conv.Weight.Value, conv.Bias?.Value is { } b ? Floats(b) : null),
        BatchNorm<T> bn => RunningStatistics(bn, path, input, shape),
        InstanceNorm<T> instance => instance.TrackRunningStats ? RunningStatistics(instance, path, input, shape) : InstanceNorm(instance, path, input, shape),
        GroupNorm<T> group => GroupNorm(group, path, input, shape),
        LayerNorm<T> layerNorm => LayerNorm(layerNorm, path, input, shape),
        RMSNorm<T> rms => RmsNorm(rms, path, input, shape),
        LeakyReLU<T> leaky => graph.Node("LeakyRelu", NodeName(path, "LeakyRelu"), OutputName(path), [input], Float("alpha", (float)leaky.NegativeSlope)),
        ReLU<T> => graph.Node("Relu", NodeName(path, "Relu"), OutputName(path), [input]),
        MaxPool2d<T> pool => graph.Node("MaxPool", NodeName(path, "MaxPool"), OutputName(path), [input], PoolAttributes(pool, countIncludePad: null)),
        AvgPool2d<T> pool => graph.Node("AveragePool", NodeName(path, "AveragePool"), OutputName(path), [input], PoolAttributes(pool, pool.CountIncludePad)),
        GlobalAvgPool2d<T> => graph.Node("GlobalAveragePool", NodeName(path, "GlobalAveragePool"), OutputName(path), [input]),
        Flatten<T> => shape.Length == 1 ? input : graph.Node("Flatten", NodeName(path, "Flatten"), OutputName(path), [input], Int("axis", 1)),
        Linear<T> linear => Linear(linear, path, input, shape),
        Dropout<T> => input,   // the identity at inference, as torch.onnx.export writes it in eval mode
        _ => throw new NotSupportedException(
            $"ONNX export: layer '{(path.Length == 0 ? "(the model)" : path)}' is a {TypeName(layer)}, which the exporter cannot express " +
            "(it writes Sequential, Graph, Conv2d, BatchNorm, InstanceNorm, GroupNorm, LayerNorm, RMSNorm, LeakyReLU, ReLU, Sigmoid, Tanh, ELU, SiLU, Mish, " +
            "Softmax, Identity, Normalize, ScaleShift, MaxPool2d, AvgPool2d, GlobalAvgPool2d, Flatten, Linear, Dropout, ChannelSlice, Upsample, LocallyConnected2d, Reorg, YoloLayer, RegionLayer and DetectionLayer; Concat and Add joins)."),
    };

    /// <summary>A graph's nodes in order (joins as Concat, Add or Sum); returns the names of its output tensors.</summary>
    public string[] Graph(Graph<T> g, string path, string input, nint[] shape)
    {
        var names = new Dictionary<string, string>(StringComparer.Ordinal) { [g.InputName] = input };
        var shapes = new Dictionary<string, nint[]>(StringComparer.Ordinal) { [g.InputName] = shape };
        foreach (GraphNode<T> node in g.Nodes)
        {
            string nodePath = Join(path, node.Name);
            string[] inputs = node.Inputs.Select(i => names[i]).ToArray();
            if (node.Layer is { } layer)
            {
                nint[] inputShape = shapes[node.Inputs[0]];
                names[node.Name] = Write(layer, nodePath, inputs[0], inputShape);
                shapes[node.Name] = layer.OutputShape(inputShape);
                continue;
            }
            nint[][] inputShapes = node.Inputs.Select(i => shapes[i]).ToArray();
            shapes[node.Name] = node.Join!.OutputShape(inputShapes);
            names[node.Name] = node.Join switch
            {
                Concat<T> concat => graph.Node("Concat", NodeName(nodePath, "Concat"), OutputName(nodePath), inputs, Int("axis", concat.Dimension)),
                Add<T> when inputs.Length == 2 => graph.Node("Add", NodeName(nodePath, "Add"), OutputName(nodePath), inputs),
                Add<T> => graph.Node("Sum", NodeName(nodePath, "Sum"), OutputName(nodePath), inputs),
                _ => throw new NotSupportedException($"ONNX export: node '{nodePath}' is a {TypeName(node.Join!)} join, which the exporter cannot express (it writes Concat and Add)."),
            };
        }
        return g.OutputNames.Select(o => names[o]).ToArray();
    }

    /// <summary>x·tanh(softplus(x)): Mish as its decomposition (ONNX Runtime has Softplus everywhere, Mish only from opset 18).</summary>
    private string Mish(string path, string input)
    {
        string softplus = graph.Node("Softplus", Join(path, "Softplus"), OutputName(path) + "_softplus", [input]);
        string tanh = graph.Node("Tanh", Join(path, "Tanh"), OutputName(path) + "_tanh", [softplus]);
        return graph.Node("Mul", NodeName(path, "Mul"), OutputName(path), [input, tanh]);
    }

    /// <summary>x · scale + shift: Mul and Add by scalar constants (either left out where it changes nothing).</summary>
    private string ScaleShift(ScaleShift<T> affine, string path, string input)
    {
        if (affine.Scale == 1 && affine.Shift == 0) return graph.Node("Identity", NodeName(path, "Identity"), OutputName(path), [input]);
        string scaled = affine.Scale == 1 ? input
            : graph.Node("Mul", affine.Shift == 0 ? NodeName(path, "Mul") : Join(path, "Mul"), affine.Shift == 0 ? OutputName(path) : OutputName(path) + "_scaled",
                [input, graph.Floats(Join(path, "scale"), [], [(float)affine.Scale])]);
        return affine.Shift == 0 ? scaled
            : graph.Node("Add", NodeName(path, "Add"), OutputName(path), [scaled, graph.Floats(Join(path, "shift"), [], [(float)affine.Shift])]);
    }

    /// <summary>A range of the channels: Slice along axis 1.</summary>
    private string ChannelSlice(ChannelSlice<T> slice, string path, string input) =>
        graph.Node("Slice", NodeName(path, "Slice"), OutputName(path),
            [input, graph.Int64s(Join(path, "starts"), [slice.Start]), graph.Int64s(Join(path, "ends"), [(long)slice.Start + slice.Length]), graph.Int64s(Join(path, "axes"), [1])]);

    /// <summary>
    /// darknet's [yolo]: (N, A·(5+C), H, W) as (N, A, 5+C, H, W), split into x y | w h | objectness and classes, the
    /// logistic on the first part (scaled about the centre by scale_x_y) and the last, joined and shaped back.
    /// </summary>
    private string Yolo(SharpNorm.Darknet.YoloLayer<T> yolo, string path, string input, nint[] shape)
    {
        long anchors = yolo.Head.Mask.Length, entries = yolo.Head.Classes + 5;
        string out0 = OutputName(path);
        string split5 = graph.Node("Reshape", Join(path, "Reshape"), out0 + "_anchors", [input, graph.Int64s(Join(path, "anchor_shape"), [0, anchors, entries, shape[2], shape[3]])]);
        string[] parts = graph.Node("Split", Join(path, "Split"), [out0 + "_xy", out0 + "_wh", out0 + "_scores"],
            [split5, graph.Int64s(Join(path, "split"), [2, 2, entries - 4])], Int("axis", 2));
        string xy = graph.Node("Sigmoid", Join(path, "Sigmoid_xy"), out0 + "_xy_logistic", [parts[0]]);
        if (yolo.Head.ScaleXY != 1)
        {
            string scaled = graph.Node("Mul", Join(path, "Mul"), out0 + "_xy_scaled", [xy, graph.Floats(Join(path, "scale_x_y"), [], [(float)yolo.Head.ScaleXY])]);
            xy = graph.Node("Add", Join(path, "Add"), out0 + "_xy_shifted", [scaled, graph.Floats(Join(path, "shift_x_y"), [], [(float)(-0.5 * (yolo.Head.ScaleXY - 1))])]);
        }
        string scores = graph.Node("Sigmoid", Join(path, "Sigmoid_scores"), out0 + "_scores_logistic", [parts[2]]);
        string joined = graph.Node("Concat", Join(path, "Concat"), out0 + "_joined", [xy, parts[1], scores], Int("axis", 2));
        return graph.Node("Reshape", NodeName(path, "Reshape_back"), out0, [joined, graph.Int64s(Join(path, "shape"), [0, shape[1], shape[2], shape[3]])]);
    }

    /// <summary>
    /// darknet's [region]: (N, A·(5+C), H, W) as (N, A, 5+C, H, W), split into x y | w h | objectness | classes, the
    /// logistic on x, y and objectness, a softmax over the classes (axis 2) or the logistic, joined and shaped back.
    /// </summary>
    private string Region(SharpNorm.Darknet.RegionLayer<T> region, string path, string input, nint[] shape)
    {
        long anchors = region.Head.Boxes, classes = region.Head.Classes;
        string out0 = OutputName(path);
        string blocks = graph.Node("Reshape", Join(path, "Reshape"), out0 + "_anchors", [input, graph.Int64s(Join(path, "anchor_shape"), [0, anchors, classes + 5, shape[2], shape[3]])]);
        string[] parts = graph.Node("Split", Join(path, "Split"), [out0 + "_xy", out0 + "_wh", out0 + "_objectness", out0 + "_classes"],
            [blocks, graph.Int64s(Join(path, "split"), [2, 2, 1, classes])], Int("axis", 2));
        string xy = graph.Node("Sigmoid", Join(path, "Sigmoid_xy"), out0 + "_xy_logistic", [parts[0]]);
        string objectness = graph.Node("Sigmoid", Join(path, "Sigmoid_objectness"), out0 + "_objectness_logistic", [parts[2]]);
        string scores = region.Head.Softmax
            ? graph.Node("Softmax", Join(path, "Softmax"), out0 + "_classes_softmax", [parts[3]], Int("axis", 2))
            : graph.Node("Sigmoid", Join(path, "Sigmoid_classes"), out0 + "_classes_logistic", [parts[3]]);
        string joined = graph.Node("Concat", Join(path, "Concat"), out0 + "_joined", [xy, parts[1], objectness, scores], Int("axis", 2));
        return graph.Node("Reshape", NodeName(path, "Reshape_back"), out0, [joined, graph.Int64s(Join(path, "shape"), [0, shape[1], shape[2], shape[3]])]);
    }

    /// <summary>darknet's [detection]: the values as they are, or with softmax=1 the first side²·classes as (N, side², classes) through a softmax.</summary>
    private string Detection(SharpNorm.Darknet.DetectionLayer<T> detection, string path, string input, nint[] shape)
    {
        string out0 = OutputName(path);
        if (!detection.Head.Softmax) return graph.Node("Identity", NodeName(path, "Identity"), out0, [input]);
        long cells = (long)detection.Head.Side * detection.Head.Side, classes = detection.Head.Classes, values = detection.Head.Values;
        string flat = graph.Node("Reshape", Join(path, "Reshape"), out0 + "_flat", [input, graph.Int64s(Join(path, "flat_shape"), [0, values])]);
        string[] parts = graph.Node("Split", Join(path, "Split"), [out0 + "_classes", out0 + "_boxes"],
            [flat, graph.Int64s(Join(path, "split"), [cells * classes, values - cells * classes])], Int("axis", 1));
        string perCell = graph.Node("Reshape", Join(path, "Reshape_cells"), out0 + "_cells", [parts[0], graph.Int64s(Join(path, "cell_shape"), [0, cells, classes])]);
        string soft = graph.Node("Softmax", Join(path, "Softmax"), out0 + "_softmax", [perCell], Int("axis", 2));
        string back = graph.Node("Reshape", Join(path, "Reshape_scores"), out0 + "_scores", [soft, graph.Int64s(Join(path, "scores_shape"), [0, cells * classes])]);
        string joined = graph.Node("Concat", Join(path, "Concat"), out0 + "_joined", [back, parts[1]], Int("axis", 1));
        long[] outputShape = [0, .. shape[1..].ToArray().Select(d => (long)d)];
        return graph.Node("Reshape", NodeName(path, "Reshape_back"), out0, [joined, graph.Int64s(Join(path, "shape"), outputShape)]);
    }

    /// <summary>
    /// darknet's [reorg]: the (C, H, W) input read as (C/s², H, s, W, s), the two s axes moved before the channels, read
    /// as (C·s², H/s, W/s); reverse=1 is DepthToSpace in DCR mode.
    /// </summary>
    private string Reorg(SharpNorm.Darknet.Reorg<T> reorg, string path, string input, nint[] shape)
    {
        long s = reorg.Stride, c = shape[1], h = shape[2], w = shape[3];
        if (reorg.Reverse)
            return graph.Node("DepthToSpace", NodeName(path, "DepthToSpace"), OutputName(path), [input], Int("blocksize", s), String("mode", "DCR"));
        string out0 = OutputName(path);
        string view = graph.Node("Reshape", Join(path, "Reshape"), out0 + "_view", [input, graph.Int64s(Join(path, "view_shape"), [0, c / (s * s), h, s, w, s])]);
        string moved = graph.Node("Transpose", Join(path, "Transpose"), out0 + "_moved", [view], Ints("perm", 0, 3, 5, 1, 2, 4));
        return graph.Node("Reshape", NodeName(path, "Reshape_back"), out0, [moved, graph.Int64s(Join(path, "shape"), [0, c * s * s, h / s, w / s])]);
    }

    /// <summary>
    /// A locally connected layer: the windows gathered by a Conv with one-hot filters (exact: each output is one input
    /// value times 1 plus zeros), as (positions, window, N); a batched MatMul of each position's (out, window) weights
    /// with them; back to (N, out, OH, OW), plus the bias.
    /// </summary>
    private string Local(LocallyConnected2d<T> local, string path, string input)
    {
        int k = local.KernelSize, c = local.InChannels, window = c * k * k, positions = local.OutputHeight * local.OutputWidth, outputs = local.OutChannels;
        string out0 = OutputName(path);
        var gather = new float[(long)window * window];
        for (int row = 0; row < window; row++) gather[(long)row * window + row] = 1;   // filter (c, ki, kj) picks input (c, ki, kj)
        string columns = graph.Node("Conv", Join(path, "Conv_windows"), out0 + "_windows",
            [input, graph.Floats(Join(path, "window_filters"), [window, c, k, k], gather)],
            Ints("kernel_shape", k, k), Ints("strides", local.Stride, local.Stride), Ints("pads", local.Padding, local.Padding, local.Padding, local.Padding));
        string flat = graph.Node("Reshape", Join(path, "Reshape_windows"), out0 + "_columns", [columns, graph.Int64s(Join(path, "columns_shape"), [0, window, positions])]);
        string byPosition = graph.Node("Transpose", Join(path, "Transpose_windows"), out0 + "_by_position", [flat], Ints("perm", 2, 1, 0));
        // (positions, out, window) · (positions, window, N): the weight initializer keeps the state_dict's order
        string weight = graph.Floats(Join(path, "weight"), [positions, outputs, window], Floats(local.Weight.Value));
        string products = graph.Node("MatMul", Join(path, "MatMul"), out0 + "_products", [weight, byPosition]);
        string back = graph.Node("Transpose", Join(path, "Transpose_back"), out0 + "_outputs", [products], Ints("perm", 2, 1, 0));
        string shaped = graph.Node("Reshape", local.Bias is null ? NodeName(path, "Reshape") : Join(path, "Reshape"), local.Bias is null ? out0 : out0 + "_shaped",
            [back, graph.Int64s(Join(path, "shape"), [0, outputs, local.OutputHeight, local.OutputWidth])]);
        if (local.Bias is null) return shaped;
        return graph.Node("Add", NodeName(path, "Add"), out0, [shaped, graph.Floats(Join(path, "bias"), [outputs, local.OutputHeight, local.OutputWidth], Floats(local.Bias.Value))]);
    }

    private string Sequential(Sequential<T> sequential, string path, string input, nint[] shape)
    {
        string current = input;
        for (int i = 0; i < sequential.Count; i++)
        {
            string childPath = Join(path, i.ToString(System.Globalization.CultureInfo.InvariantCulture));
            ILayer<T> layer = sequential[i];
            nint[] outputShape = layer.OutputShape(shape);
            if (foldBatchNorm && layer is Conv2d<T> conv && i + 1 < sequential.Count && sequential[i + 1] is BatchNorm<T> bn)
            {
                current = FoldedConv(conv, bn, childPath, Join(path, (i + 1).ToString(System.Globalization.CultureInfo.InvariantCulture)), current);
                i++;
            }
            else current = Write(layer, childPath, current, shape);
            shape = outputShape;
        }
        return current;
    }

    private string Conv(Conv2d<T> conv, string path, string input, System.Numerics.Tensors.Tensor<T> weight, float[]? bias) =>
        Conv(conv, path, input, Floats(weight), bias);

    private string Conv(Conv2d<T> conv, string path, string input, float[] weight, float[]? bias)
    {
        List<string> inputs = [input, graph.Floats(Join(path, "weight"), Dims(conv.Weight.Value.Lengths), weight)];
        if (bias is not null) inputs.Add(graph.Floats(Join(path, "bias"), [bias.Length], bias));
        return graph.Node("Conv", NodeName(path, "Conv"), OutputName(path), inputs,
            Ints("kernel_shape", conv.KernelHeight, conv.KernelWidth),
            Ints("strides", conv.StrideHeight, conv.StrideWidth),
            Ints("pads", conv.PadHeight, conv.PadWidth, conv.PadHeight, conv.PadWidth),
            Ints("dilations", conv.DilationHeight, conv.DilationWidth),
            Int("group", conv.Groups));
    }

    /// <summary>Conv2d then BatchNorm as one Conv: w' = w·γ/√(var+ε) per output channel, b' = (b − μ)·γ/√(var+ε) + β, in double.</summary>
    private string FoldedConv(Conv2d<T> conv, BatchNorm<T> bn, string convPath, string bnPath, string input)
    {
        RequireChannelsFirst(bn.Layout, bn, bnPath);
        RequireEvalStatistics(bn, bnPath);
        if (bn.NumFeatures != conv.OutChannels)
            throw new NotSupportedException($"ONNX export: BatchNorm '{bnPath}' has {bn.NumFeatures} channels but the Conv2d '{convPath}' before it writes {conv.OutChannels}.");
        ReadOnlySpan<T> w = TensorData.Flat(conv.Weight.Value);
        ReadOnlySpan<T> mean = TensorData.Flat(bn.RunningMean!), variance = TensorData.Flat(bn.RunningVar!);
        int channels = conv.OutChannels, perChannel = w.Length / channels;
        var weight = new float[w.Length];
        var bias = new float[channels];
        for (int o = 0; o < channels; o++)
        {
            double gamma = bn.Weight is null ? 1 : double.CreateTruncating(TensorData.Flat(bn.Weight.Value)[o]);
            double beta = bn.Bias is null ? 0 : double.CreateTruncating(TensorData.Flat(bn.Bias.Value)[o]);
            double b = conv.Bias is null ? 0 : double.CreateTruncating(TensorData.Flat(conv.Bias.Value)[o]);
            double scale = gamma / Math.Sqrt(double.CreateTruncating(variance[o]) + bn.Eps);
            for (int k = 0; k < perChannel; k++) weight[o * perChannel + k] = (float)(double.CreateTruncating(w[o * perChannel + k]) * scale);
            bias[o] = (float)((b - double.CreateTruncating(mean[o])) * scale + beta);
        }
        return Conv(conv, convPath, input, weight, bias);
    }

    /// <summary>BatchNorm, or InstanceNorm with running statistics, in eval mode: BatchNormalization with the running statistics.</summary>
    private string RunningStatistics(RunningStatsNorm<T> norm, string path, string input, nint[] shape)
    {
        RequireChannelsFirst(norm.Layout, norm, path);
        RequireEvalStatistics(norm, path);
        int c = norm.NumFeatures;
        return graph.Node("BatchNormalization", NodeName(path, "BatchNormalization"), OutputName(path),
            [input, Scale(norm, path, c), Shift(norm, path, c),
             graph.Floats(Join(path, "running_mean"), [c], Floats(norm.RunningMean!)),
             graph.Floats(Join(path, "running_var"), [c], Floats(norm.RunningVar!))],
            Float("epsilon", (float)norm.Eps));
    }

    private string InstanceNorm(InstanceNorm<T> norm, string path, string input, nint[] shape)
    {
        RequireChannelsFirst(norm.Layout, norm, path);
        int c = norm.NumFeatures;
        return graph.Node("InstanceNormalization", NodeName(path, "InstanceNormalization"), OutputName(path),
            [input, Scale(norm, path, c), Shift(norm, path, c)], Float("epsilon", (float)norm.Eps));
    }

    /// <summary>
    /// GroupNormalization (opset 21, per-channel scale); before it, the standard decomposition: (N, C, ...) reshaped to
    /// (N, G, C/G·...), InstanceNormalization over each group, reshaped back, then γ and β per channel.
    /// </summary>
    private string GroupNorm(GroupNorm<T> norm, string path, string input, nint[] shape)
    {
        RequireChannelsFirst(norm.Layout, norm, path);
        int c = norm.NumChannels, g = norm.NumGroups;
        if (graph.Opset >= 21)
            return graph.Node("GroupNormalization", NodeName(path, "GroupNormalization"), OutputName(path),
                [input, Scale(norm, path, c), Shift(norm, path, c)], Float("epsilon", (float)norm.Eps), Int("num_groups", g));

        string grouped = graph.Node("Reshape", NodeName(path, "Reshape"), OutputName(path) + "_grouped", [input, graph.Int64s(Join(path, "grouped_shape"), [0, g, -1])]);
        string normalized = graph.Node("InstanceNormalization", NodeName(path, "InstanceNormalization"), OutputName(path) + "_normalized",
            [grouped, graph.Floats(Join(path, "group_ones"), [g], Filled(g, 1)), graph.Floats(Join(path, "group_zeros"), [g], Filled(g, 0))],
            Float("epsilon", (float)norm.Eps));
        long[] back = new long[shape.Length];
        for (int d = 1; d < shape.Length; d++) back[d] = shape[d];      // back[0] = 0: the batch copied from the input
        string restored = graph.Node("Reshape", NodeName(path, "Reshape"), norm.Affine ? OutputName(path) + "_restored" : OutputName(path),
            [normalized, graph.Int64s(Join(path, "shape"), back)]);
        if (!norm.Affine) return restored;
        long[] perChannel = PerChannelDims(c, shape.Length);
        string scaled = graph.Node("Mul", NodeName(path, "Mul"), OutputName(path) + "_scaled",
            [restored, graph.Floats(Join(path, "weight"), perChannel, Floats(norm.Weight!.Value))]);
        return graph.Node("Add", NodeName(path, "Add"), OutputName(path), [scaled, graph.Floats(Join(path, "bias"), perChannel, Floats(norm.Bias!.Value))]);
    }

    /// <summary>LayerNormalization over the last dimensions (opset 17); no bias input when the layer has none.</summary>
    private string LayerNorm(LayerNorm<T> norm, string path, string input, nint[] shape)
    {
        int[] normalized = [.. norm.NormalizedShape];
        long[] dims = [.. normalized.Select(d => (long)d)];
        List<string> inputs = [input, norm.Weight is { } weight
            ? graph.Floats(Join(path, "weight"), dims, Floats(weight.Value))
            : graph.Floats(Join(path, "ones"), dims, Filled(norm.NormalizedSize, 1))];
        if (norm.Bias is { } bias) inputs.Add(graph.Floats(Join(path, "bias"), dims, Floats(bias.Value)));
        return graph.Node("LayerNormalization", NodeName(path, "LayerNormalization"), OutputName(path), inputs,
            Int("axis", shape.Length - normalized.Length), Float("epsilon", (float)norm.Eps));
    }

    /// <summary>RMSNormalization (opset 23); before it y = x / √(mean(x²) + ε) · γ over the last dimensions.</summary>
    private string RmsNorm(RMSNorm<T> norm, string path, string input, nint[] shape)
    {
        int[] normalized = [.. norm.NormalizedShape];
        long[] dims = [.. normalized.Select(d => (long)d)];
        int axis = shape.Length - normalized.Length;
        if (graph.Opset >= 23)
            return graph.Node("RMSNormalization", NodeName(path, "RMSNormalization"), OutputName(path),
                [input, norm.Weight is { } weight ? graph.Floats(Join(path, "weight"), dims, Floats(weight.Value)) : graph.Floats(Join(path, "ones"), dims, Filled(norm.NormalizedSize, 1))],
                Int("axis", axis), Float("epsilon", (float)norm.Eps));

        long[] axes = [.. Enumerable.Range(axis, normalized.Length).Select(a => (long)a)];
        string squared = graph.Node("Mul", NodeName(path, "Mul"), OutputName(path) + "_squared", [input, input]);
        string mean = graph.Opset >= 18
            ? graph.Node("ReduceMean", NodeName(path, "ReduceMean"), OutputName(path) + "_mean", [squared, graph.Int64s(Join(path, "axes"), axes)], Int("keepdims", 1))
            : graph.Node("ReduceMean", NodeName(path, "ReduceMean"), OutputName(path) + "_mean", [squared], Ints("axes", axes), Int("keepdims", 1));
        string shifted = graph.Node("Add", NodeName(path, "Add"), OutputName(path) + "_shifted", [mean, graph.Floats(Join(path, "eps"), [], [(float)norm.Eps])]);
        string rms = graph.Node("Sqrt", NodeName(path, "Sqrt"), OutputName(path) + "_rms", [shifted]);
        string divided = graph.Node("Div", NodeName(path, "Div"), norm.Weight is null ? OutputName(path) : OutputName(path) + "_normalized", [input, rms]);
        if (norm.Weight is not { } gamma) return divided;
        return graph.Node("Mul", NodeName(path, "Mul"), OutputName(path), [divided, graph.Floats(Join(path, "weight"), dims, Floats(gamma.Value))]);
    }

    /// <summary>Gemm on (N, in); MatMul then Add on higher ranks (Linear acts on the last dimension).</summary>
    private string Linear(Linear<T> linear, string path, string input, nint[] shape)
    {
        float[] weight = Floats(linear.Weight.Value);
        if (shape.Length == 2)
        {
            List<string> inputs = [input, graph.Floats(Join(path, "weight"), [linear.OutFeatures, linear.InFeatures], weight)];
            if (linear.Bias is { } b) inputs.Add(graph.Floats(Join(path, "bias"), [linear.OutFeatures], Floats(b.Value)));
            return graph.Node("Gemm", NodeName(path, "Gemm"), OutputName(path), inputs, Int("transB", 1));
        }
        var transposed = new float[weight.Length];
        for (int o = 0; o < linear.OutFeatures; o++)
            for (int i = 0; i < linear.InFeatures; i++) transposed[i * linear.OutFeatures + o] = weight[o * linear.InFeatures + i];
        string product = graph.Node("MatMul", NodeName(path, "MatMul"), linear.Bias is null ? OutputName(path) : OutputName(path) + "_product",
            [input, graph.Floats(Join(path, "weight_transposed"), [linear.InFeatures, linear.OutFeatures], transposed)]);
        if (linear.Bias is not { } bias) return product;
        return graph.Node("Add", NodeName(path, "Add"), OutputName(path), [product, graph.Floats(Join(path, "bias"), [linear.OutFeatures], Floats(bias.Value))]);
    }

    private static global::Onnx.AttributeProto[] PoolAttributes(Pool2d<T> pool, bool? countIncludePad)
    {
        List<global::Onnx.AttributeProto> attributes =
        [
            Ints("kernel_shape", pool.KernelHeight, pool.KernelWidth),
            Ints("strides", pool.StrideHeight, pool.StrideWidth),
            Ints("pads", pool.PadHeight, pool.PadWidth, pool.PadBottom, pool.PadRight),
            Int("ceil_mode", pool.CeilMode ? 1 : 0),
        ];
        if (countIncludePad is bool include) attributes.Add(Int("count_include_pad", include ? 1 : 0));
        return [.. attributes];
    }

    private string Scale(NormLayer<T> norm, string path, int c) =>
        norm.Weight is { } w ? graph.Floats(Join(path, "weight"), [c], Floats(w.Value)) : graph.Floats(Join(path, "ones"), [c], Filled(c, 1));

    private string Shift(NormLayer<T> norm, string path, int c) =>
        norm.Bias is { } b ? graph.Floats(Join(path, "bias"), [c], Floats(b.Value)) : graph.Floats(Join(path, "zeros"), [c], Filled(c, 0));

    private static void RequireEvalStatistics(RunningStatsNorm<T> norm, string path)
    {
        if (norm.RunningMean is null || norm.RunningVar is null)
            throw new NotSupportedException(
                $"ONNX export: {TypeName(norm)} '{path}' keeps no running statistics (trackRunningStats: false), so in eval mode it normalizes by each batch's statistics; the exporter writes inference graphs with running statistics only.");
    }

    private static void RequireChannelsFirst(ChannelLayout layout, ILayer<T> layer, string path)
    {
        if (layout != ChannelLayout.First)
            throw new NotSupportedException($"ONNX export: {TypeName(layer)} '{path}' is channels last; ONNX's normalizations take channels first (N, C, ...).");
    }

    private static long[] PerChannelDims(int channels, int rank)
    {
        long[] dims = new long[Math.Max(1, rank - 1)];
        Array.Fill(dims, 1L);
        dims[0] = channels;
        return dims;
    }

    private static float[] Floats(System.Numerics.Tensors.Tensor<T> tensor)
    {
        ReadOnlySpan<T> values = TensorData.Flat(tensor);
        var result = new float[values.Length];
        for (int i = 0; i < values.Length; i++) result[i] = float.CreateTruncating(values[i]);
        return result;
    }

    private static float[] Filled(int count, float value)
    {
        var result = new float[count];
        Array.Fill(result, value);
        return result;
    }

    private static long[] Dims(ReadOnlySpan<nint> lengths)
    {
        var dims = new long[lengths.Length];
        for (int i = 0; i < lengths.Length; i++) dims[i] = lengths[i];
        return dims;
    }

    private static string Join(string path, string name) => path.Length == 0 ? name : path + "." + name;

    private static string NodeName(string path, string op) => path.Length == 0 ? op : path;

    private static string OutputName(string path) => path.Length == 0 ? "y" : path;

    private static string TypeName(object layer) => layer.GetType().Name.Split('`')[0];
}
