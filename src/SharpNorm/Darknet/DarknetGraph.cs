using SharpNorm.Layers;
using SharpNorm.Tensors;

namespace SharpNorm.Darknet;

/// <summary>
/// A darknet network (.cfg and .weights) as a trainable <see cref="Graph{T}"/> of SharpNorm layers: node "i" is
/// darknet's layer i. [convolutional] and [connected] are Sequentials (Conv2d or Flatten + Linear, then BatchNorm
/// unless folded, then the activation: LeakyReLU(0.1), ReLU, Sigmoid, Tanh, ELU, Mish, SiLU); [maxpool] MaxPool2d with
/// darknet's padding (padding/2 before, the rest after); [avgpool] GlobalAvgPool2d; [route] Concat, with groups a
/// ChannelChunk of each input; [shortcut] Add (then its activation); [upsample] Upsample; [softmax] Softmax over each
/// sample's values; [dropout] Dropout; [cost] Identity; [yolo] <see cref="YoloLayer{T}"/>. The outputs are the [yolo]
/// layers, else the last layer.
/// </summary>
public static class DarknetGraph
{
    /// <summary>Builds the graph of <paramref name="sections"/> with <paramref name="weights"/>'s arrays.</summary>
    /// <param name="sections">The cfg.</param>
    /// <param name="weights">The arrays (from a .weights file or random).</param>
    /// <param name="options">
    /// FoldBatchNorm (inference: each batch norm folded into its layer, the formula of BatchNorm) or not (the batch
    /// norms as BatchNorm layers, trainable; darknet-cpu's formula has no BatchNorm twin, so it needs folding).
    /// </param>
    public static Graph<float> Create(IReadOnlyList<DarknetSection> sections, DarknetWeights weights, DarknetNetworkOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(sections);
        ArgumentNullException.ThrowIfNull(weights);
        options ??= new DarknetNetworkOptions();
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        if (layers.Count == 0) throw sections[0].Error("the network has no layers after [net].");
        if (weights.Layers.Count != layers.Count)
            throw new ArgumentException($"The weights are for {weights.Layers.Count} layers; the network has {layers.Count}.", nameof(weights));
        if (!options.FoldBatchNorm && options.BatchNorm != DarknetBatchNormMode.PyTorch)
            throw new ArgumentException("darknet-cpu's batch norm, (x - mean) / (sqrt(var) + 1e-6), has no BatchNorm twin: fold it (FoldBatchNorm) or use the PyTorch formula.", nameof(options));

        DarknetSection net = sections[0];
        (int c, int h, int w) = (net.Int("channels", 0), net.Int("height", 0), net.Int("width", 0));
        var nodes = new List<GraphNode<float>>();
        string Name(int layer) => layer < 0 ? "input" : layer.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var outputs = new List<string>();
        foreach (DarknetLayerInfo info in layers)
        {
            DarknetSection section = sections[info.Index + 1];
            string name = Name(info.Index), previous = Name(info.Index - 1);
            switch (info.Type)
            {
                case "convolutional":
                {
                    int size = section.Int("size", 1), stride = section.Int("stride", 1), groups = section.Int("groups", 1);
                    int padding = section.Int("pad", 0) != 0 ? size / 2 : section.Int("padding", 0);
                    if (section.Int("dilation", 1) != 1) throw section.Error("dilation is not supported.", "dilation");
                    Refuse(section, "stride_x", "stride_y", "binary", "xnor", "deform", "antialiasing", "share_index", "assisted_excitation");
                    bool fold = info.BatchNormalize && options.FoldBatchNorm;
                    // Folded is the inference build: its convolutions pack their weights once, until a Gradient call.
                    var conv = new Conv2d<float>(c, info.Channels, size, stride, padding, groups: groups, bias: !info.BatchNormalize || fold) { WeightsFrozen = options.FoldBatchNorm };
                    nodes.Add(new GraphNode<float>(name, Weighted(conv, conv.Weight, conv.Bias, DarknetNetwork.Arrays(weights, info), section, info, options, []), previous));
                    break;
                }
                case "connected":
                {
                    bool fold = info.BatchNormalize && options.FoldBatchNorm;
                    var linear = new Linear<float>(c * h * w, info.Channels, bias: !info.BatchNormalize || fold);
                    nodes.Add(new GraphNode<float>(name, Weighted(linear, linear.Weight, linear.Bias, DarknetNetwork.Arrays(weights, info), section, info, options, [new Flatten<float>()]), previous));
                    break;
                }
                case "maxpool":
                {
                    Refuse(section, "stride_x", "stride_y", "maxpool_depth", "antialiasing");
                    int stride = section.Int("stride", 1), size = section.Int("size", stride), padding = section.Int("padding", size - 1);
                    int before = padding / 2, after = padding - padding / 2;
                    if (2 * Math.Max(before, after) > size)
                        throw section.Error($"padding={padding} pads more than half the window (size {size}) on one side; MaxPool2d cannot express it.", "padding");
                    var pool = new MaxPool2d<float>([size], [stride], [before, before, after, after]);
                    nint[] shape = pool.OutputShape([1, c, h, w]);
                    if (shape[2] != info.Height || shape[3] != info.Width)
                        throw section.Error($"this max pool gives {shape[2]}x{shape[3]} where darknet sizes it {info.Height}x{info.Width}.");
                    nodes.Add(new GraphNode<float>(name, pool, previous));
                    break;
                }
                case "avgpool":
                    nodes.Add(new GraphNode<float>(name, new GlobalAvgPool2d<float>(), previous));
                    break;
                case "route":
                {
                    int groups = section.Int("groups", 1), groupId = section.Int("group_id", 0);
                    var sources = new List<string>();
                    foreach (int input in info.Inputs)
                    {
                        if (groups == 1) sources.Add(Name(input));
                        else
                        {
                            string chunk = sources.Count == 0 && info.Inputs.Length == 1 ? name : $"{name}.{sources.Count}";
                            nodes.Add(new GraphNode<float>(chunk, new ChannelChunk<float>(groups, groupId), Name(input)));
                            sources.Add(chunk);
                        }
                    }
                    if (!(groups > 1 && info.Inputs.Length == 1)) nodes.Add(new GraphNode<float>(name, new Concat<float>(), [.. sources]));
                    break;
                }
                case "shortcut":
                {
                    DarknetLayerInfo from = layers[info.Inputs[1]];
                    if (from.Channels != c || from.Height != h || from.Width != w)
                        throw section.Error($"adds layer {from.Index} ({from.Channels} x {from.Height} x {from.Width}) to the previous output ({c} x {h} x {w}); the graph adds tensors of one shape.", "from");
                    if (section.Float("alpha", 1) != 1 || section.Float("beta", 1) != 1) throw section.Error("alpha and beta other than 1 are not supported.");
                    Refuse(section, "weights_type", "weights_normalization");
                    ILayer<float>? activation = Activation(section, "linear");
                    nodes.Add(new GraphNode<float>(activation is null ? name : name + ".add", new Add<float>(), previous, Name(from.Index)));
                    if (activation is not null) nodes.Add(new GraphNode<float>(name, activation, name + ".add"));
                    break;
                }
                case "upsample":
                {
                    int stride = section.Int("stride", 2);
                    if (stride < 1) throw section.Error("a stride below 1 (downsampling) is not supported.", "stride");
                    if (section.Float("scale", 1) != 1) throw section.Error("scale other than 1 is not supported.", "scale");
                    nodes.Add(new GraphNode<float>(name, new Upsample<float>(stride), previous));
                    break;
                }
                case "softmax":
                {
                    Refuse(section, "tree");
                    if (section.Int("groups", 1) != 1 || section.Float("temperature", 1) != 1) throw section.Error("groups and temperature other than 1 are not supported.");
                    nodes.Add(new GraphNode<float>(name, new Sequential<float>(new Flatten<float>(), new Softmax<float>(1)), previous));
                    break;
                }
                case "dropout":
                    if (info.Index == 0) throw section.Error("cannot be the first layer.");
                    nodes.Add(new GraphNode<float>(name, new Dropout<float>(section.Float("probability", 0.5)), previous));
                    break;
                case "cost":
                    if (info.Index == 0) throw section.Error("cannot be the first layer.");
                    nodes.Add(new GraphNode<float>(name, new Identity<float>(), previous));
                    break;
                case "yolo":
                {
                    int classes = section.Int("classes", 20);
                    double[] anchors = section.FloatList("anchors") ?? [];
                    int[] mask = section.IntList("mask") ?? Enumerable.Range(0, section.Int("num", 1)).ToArray();
                    if (section.Int("new_coords", 0) != 0) throw section.Error("new_coords=1 is not supported.", "new_coords");
                    nodes.Add(new GraphNode<float>(name, new YoloLayer<float>(new YoloHead(classes, mask, anchors, section.Float("scale_x_y", 1))), previous));
                    outputs.Add(name);
                    break;
                }
                default:
                    throw section.Error("is not supported.");
            }
            (c, h, w) = (info.Channels, info.Height, info.Width);
        }
        if (outputs.Count == 0) outputs.Add(Name(layers.Count - 1));
        var graph = new Graph<float>("input", nodes, [.. outputs]);
        graph.Training = false;
        graph.MaxDegreeOfParallelism = options.MaxDegreeOfParallelism;
        return graph;
    }

    /// <summary>The layer with darknet's arrays (its norm folded in, or a BatchNorm after it), then its activation, as one Sequential.</summary>
    private static Sequential<float> Weighted(ILayer<float> layer, Parameter<float> weight, Parameter<float>? bias, DarknetLayerWeights arrays,
        DarknetSection section, DarknetLayerInfo info, DarknetNetworkOptions options, ILayer<float>[] before)
    {
        var layers = new List<ILayer<float>>(before) { layer };
        arrays.Weights.CopyTo(TensorData.Flat(weight.Value));
        if (!info.BatchNormalize) arrays.Biases.CopyTo(TensorData.Flat(bias!.Value));
        else if (options.FoldBatchNorm)
        {
            (double[] scales, double[] shifts) = ConvolutionalNode.FoldedNorm(arrays, options.BatchNorm);
            ConvolutionalNode.Fold(arrays, scales, shifts, TensorData.Flat(weight.Value), TensorData.Flat(bias!.Value));
        }
        else
        {
            var norm = new BatchNorm<float>(arrays.Biases.Length, eps: 1e-5);
            ConvolutionalNode.LoadNorm(norm, arrays);
            layers.Add(norm);
        }
        if (Activation(section, "logistic") is { } activation) layers.Add(activation);
        return new Sequential<float>([.. layers]);
    }

    private static ILayer<float>? Activation(DarknetSection section, string fallback) => DarknetActivations.Parse(section, fallback) switch
    {
        DarknetActivation.Linear => null,
        DarknetActivation.Leaky => new LeakyReLU<float>(0.1),
        DarknetActivation.Relu => new ReLU<float>(),
        DarknetActivation.Logistic => new Sigmoid<float>(),
        DarknetActivation.Tanh => new Tanh<float>(),
        DarknetActivation.Mish => new Mish<float>(),
        DarknetActivation.Swish => new SiLU<float>(),
        DarknetActivation.Elu => new ELU<float>(),
        _ => throw section.Error($"activation={section.String("activation", fallback)} has no layer yet (supported: linear, leaky, relu, logistic, tanh, elu, mish, swish).", "activation"),
    };

    private static void Refuse(DarknetSection section, params string[] keys)
    {
        foreach (string key in keys)
            if (section.Has(key)) throw section.Error($"{key} is not supported.", key);
    }
}
