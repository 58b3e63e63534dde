using SharpNorm.Layers;
using SharpNorm.Tensors;

namespace SharpNorm.Darknet;

/// <summary>
/// A darknet network (.cfg and .weights) as a trainable <see cref="Graph{T}"/> of SharpNorm layers: node "i" is
/// darknet's layer i. [convolutional] and [connected] are Sequentials (Conv2d or Flatten + Linear, then BatchNorm
/// unless folded, then the activation: LeakyReLU(0.1), ReLU, Sigmoid, Tanh, ELU, Mish, SiLU); [maxpool] MaxPool2d with
/// darknet's padding (padding/2 before, the rest after); [avgpool] GlobalAvgPool2d; [route] Concat, with groups a
/// ChannelSlice of each input; [shortcut] Add (then its activation); [upsample] Upsample; [softmax] Softmax over each
/// sample's values; [dropout] Dropout; [cost] Identity; [yolo] <see cref="YoloLayer{T}"/>; [region]
/// <see cref="RegionLayer{T}"/>; [detection] <see cref="DetectionLayer{T}"/>; [reorg] <see cref="Reorg{T}"/>; [local]
/// LocallyConnected2d and its activation. The outputs are the [yolo], [region] and [detection] layers, else the last layer. A [shortcut] of inputs with different channel counts adds the first min(C) channels
/// and passes the rest of the previous output through, as darknet does.
/// </summary>
public static class DarknetGraph
{
    /// <summary>Builds the graph of <paramref name="sections"/> with <paramref name="weights"/>'s arrays.</summary>
    /// <param name="sections">The cfg.</param>
    /// <param name="weights">The arrays (from a .weights file or random).</param>
    /// <param name="options">
    /// FoldBatchNorm (inference: each batch norm folded into its layer, in double, with the BatchNorm option's formula)
    /// or not (the batch norms as BatchNorm layers, trainable; darknet-cpu's formula as BatchNorm with eps 0).
    /// </param>
    /// <param name="logits">
    /// Leave out a classifier's trailing [softmax] (and [cost]): the graph's output, node "logits", is the last layer
    /// before them flattened to (N, classes), as CrossEntropyLoss takes it for fine-tuning.
    /// </param>
    /// <param name="darknetTraining">
    /// Train the batch norms as darknet does: normalized by the unbiased batch variance, running statistics updated
    /// with momentum 0.01 (darknet's .99/.01). False (default): torch.nn.BatchNorm2d's (biased, momentum 0.1).
    /// </param>
    public static Graph<float> Create(IReadOnlyList<DarknetSection> sections, DarknetWeights weights, DarknetNetworkOptions? options = null,
        bool logits = false, bool darknetTraining = false)
    {
        ArgumentNullException.ThrowIfNull(sections);
        ArgumentNullException.ThrowIfNull(weights);
        options ??= new DarknetNetworkOptions();
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        if (layers.Count == 0) throw sections[0].Error("the network has no layers after [net].");
        if (weights.Layers.Count != layers.Count)
            throw new ArgumentException($"The weights are for {weights.Layers.Count} layers; the network has {layers.Count}.", nameof(weights));
        if (!Enum.IsDefined(options.BatchNorm))
            throw new ArgumentOutOfRangeException(nameof(options), options.BatchNorm, "BatchNorm must be a DarknetBatchNormMode.");
        if (options.MaxDegreeOfParallelism is 0 or < -1)
            throw new ArgumentOutOfRangeException(nameof(options), options.MaxDegreeOfParallelism, "MaxDegreeOfParallelism must be -1 (all cores) or positive.");

        DarknetSection net = sections[0];
        (int c, int h, int w) = (net.Int("channels", 0), net.Int("height", 0), net.Int("width", 0));
        var nodes = new List<GraphNode<float>>();
        string Name(int layer) => layer < 0 ? "input" : layer.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var outputs = new List<string>();
        string last = "input";
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
                    var conv = new Conv2d<float>(c, info.Channels, size, stride, padding, groups: groups, bias: !info.BatchNormalize || fold);
                    nodes.Add(new GraphNode<float>(name, Weighted(conv, conv.Weight, conv.Bias, DarknetNetwork.Arrays(weights, info), section, info, options, darknetTraining, []), previous));
                    break;
                }
                case "connected":
                {
                    bool fold = info.BatchNormalize && options.FoldBatchNorm;
                    var linear = new Linear<float>(c * h * w, info.Channels, bias: !info.BatchNormalize || fold);
                    nodes.Add(new GraphNode<float>(name, Weighted(linear, linear.Weight, linear.Bias, DarknetNetwork.Arrays(weights, info), section, info, options, darknetTraining, [new Flatten<float>()]), previous));
                    break;
                }
                case "local":
                {
                    int size = section.Int("size", 1), stride = section.Int("stride", 1), padding = section.Int("pad", 0) != 0 ? 1 : 0;
                    var local = new LocallyConnected2d<float>(c, info.Channels, h, w, size, stride, padding);
                    DarknetLayerWeights arrays = DarknetNetwork.Arrays(weights, info);
                    arrays.Weights.CopyTo(TensorData.Flat(local.Weight.Value));
                    arrays.Biases.CopyTo(TensorData.Flat(local.Bias!.Value));
                    ILayer<float>? activation = Activation(section, "logistic");
                    nodes.Add(new GraphNode<float>(name, activation is null ? new Sequential<float>(local) : new Sequential<float>(local, activation), previous));
                    break;
                }
                case "reorg":
                    Refuse(section, "flatten", "extra");
                    nodes.Add(new GraphNode<float>(name, new Reorg<float>(section.Int("stride", 1), section.Int("reverse", 0) != 0), previous));
                    break;
                case "region":
                    nodes.Add(new GraphNode<float>(name, new RegionLayer<float>((RegionHead)Head(section)!), previous));
                    outputs.Add(name);
                    break;
                case "detection":
                    nodes.Add(new GraphNode<float>(name, new DetectionLayer<float>((DetectionHead)Head(section)!), previous));
                    outputs.Add(name);
                    break;
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
                            int part = layers[input].Channels / groups;
                            string slice = info.Inputs.Length == 1 ? name : $"{name}.{sources.Count}";
                            nodes.Add(new GraphNode<float>(slice, new ChannelSlice<float>(groupId * part, part), Name(input)));
                            sources.Add(slice);
                        }
                    }
                    if (!(groups > 1 && info.Inputs.Length == 1)) nodes.Add(new GraphNode<float>(name, new Concat<float>(), [.. sources]));
                    break;
                }
                case "shortcut":
                {
                    DarknetLayerInfo from = layers[info.Inputs[1]];
                    if (from.Height != h || from.Width != w)
                        throw section.Error($"adds layer {from.Index} ({from.Channels} x {from.Height} x {from.Width}) to the previous output ({c} x {h} x {w}); their sizes must match.", "from");
                    if (section.Float("alpha", 1) != 1 || section.Float("beta", 1) != 1) throw section.Error("alpha and beta other than 1 are not supported.");
                    Refuse(section, "weights_type", "weights_normalization");
                    ILayer<float>? activation = Activation(section, "linear");
                    string sum = activation is null ? name : name + ".add", other = Name(from.Index);
                    // As darknet: where the channel counts differ, the first min(C) channels are added and the rest of
                    // the previous output passes through.
                    if (from.Channels > c)
                    {
                        nodes.Add(new GraphNode<float>(name + ".from", new ChannelSlice<float>(0, c), other));
                        nodes.Add(new GraphNode<float>(sum, new Add<float>(), previous, name + ".from"));
                    }
                    else if (from.Channels < c)
                    {
                        nodes.Add(new GraphNode<float>(name + ".head", new ChannelSlice<float>(0, from.Channels), previous));
                        nodes.Add(new GraphNode<float>(name + ".rest", new ChannelSlice<float>(from.Channels, c - from.Channels), previous));
                        nodes.Add(new GraphNode<float>(name + ".sum", new Add<float>(), name + ".head", other));
                        nodes.Add(new GraphNode<float>(sum, new Concat<float>(), name + ".sum", name + ".rest"));
                    }
                    else nodes.Add(new GraphNode<float>(sum, new Add<float>(), previous, other));
                    if (activation is not null) nodes.Add(new GraphNode<float>(name, activation, sum));
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
                case "softmax" when logits && IsTail(layers, info.Index):
                case "cost" when logits && IsTail(layers, info.Index):
                    continue;   // the classifier's logits are the output, for CrossEntropyLoss
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
                    nodes.Add(new GraphNode<float>(name, new YoloLayer<float>((YoloHead)Head(section)!), previous));
                    outputs.Add(name);
                    break;
                default:
                    throw section.Error("is not supported.");
            }
            (c, h, w) = (info.Channels, info.Height, info.Width);
            last = name;
        }
        if (logits)
        {
            nodes.Add(new GraphNode<float>("logits", new Flatten<float>(), last));   // (N, C, 1, 1) as (N, C), as the loss takes them
            last = "logits";
        }
        if (outputs.Count == 0) outputs.Add(last);
        var graph = new Graph<float>("input", nodes, [.. outputs]);
        graph.Training = false;
        graph.MaxDegreeOfParallelism = options.MaxDegreeOfParallelism;
        return graph;
    }

    /// <summary>A [yolo], [region] or [detection] section's head (null for other sections), its unsupported options refused.</summary>
    internal static object? Head(DarknetSection section)
    {
        switch (section.Type)
        {
            case "yolo":
            {
                if (section.Int("new_coords", 0) != 0) throw section.Error("new_coords=1 is not supported.", "new_coords");
                int[] mask = section.IntList("mask") ?? Enumerable.Range(0, section.Int("num", 1)).ToArray();
                return new YoloHead(section.Int("classes", 20), mask, section.FloatList("anchors") ?? [], section.Float("scale_x_y", 1));
            }
            case "region":
                Refuse(section, "tree", "map");
                if (section.Int("background", 0) != 0) throw section.Error("background=1 is not supported.", "background");
                return new RegionHead(section.Int("classes", 20), section.FloatList("anchors")!, section.Int("softmax", 0) != 0);
            case "detection":
                return new DetectionHead(section.Int("classes", 1), section.Int("num", 1), section.Int("side", 7), section.Int("softmax", 0) != 0, section.Int("sqrt", 0) != 0);
            default:
                return null;
        }
    }

    /// <summary>The layer with darknet's arrays (its norm folded in, or a BatchNorm after it), then its activation, as one Sequential.</summary>
    private static Sequential<float> Weighted(ILayer<float> layer, Parameter<float> weight, Parameter<float>? bias, DarknetLayerWeights arrays,
        DarknetSection section, DarknetLayerInfo info, DarknetNetworkOptions options, bool darknetTraining, ILayer<float>[] before)
    {
        var layers = new List<ILayer<float>>(before) { layer };
        arrays.Weights.CopyTo(TensorData.Flat(weight.Value));
        if (!info.BatchNormalize) arrays.Biases.CopyTo(TensorData.Flat(bias!.Value));
        else if (options.FoldBatchNorm)
        {
            (double[] scales, double[] shifts) = DarknetBatchNorms.Folded(arrays, options.BatchNorm);
            DarknetBatchNorms.Fold(arrays, scales, shifts, TensorData.Flat(weight.Value), TensorData.Flat(bias!.Value));
        }
        else if (options.BatchNorm == DarknetBatchNormMode.DarknetCpu)
        {
            // (x - mean) / (sqrt(var) + 1e-6) is BatchNorm with eps 0 and variance (sqrt(var) + 1e-6)^2.
            var norm = new BatchNorm<float>(arrays.Biases.Length, eps: 0);
            DarknetBatchNorms.Load(norm, arrays);
            Span<float> variance = TensorData.Flat(norm.RunningVar!);
            for (int o = 0; o < variance.Length; o++) variance[o] = (float)Math.Pow(Math.Sqrt(arrays.RollingVariance![o]) + 1e-6, 2);
            layers.Add(norm);
        }
        else
        {
            var norm = darknetTraining ? new BatchNorm<float>(arrays.Biases.Length, eps: 1e-5, momentum: 0.01, unbiasedNormalization: true) : new BatchNorm<float>(arrays.Biases.Length, eps: 1e-5);
            DarknetBatchNorms.Load(norm, arrays);
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

    /// <summary>Whether only [softmax] and [cost] layers follow layer <paramref name="index"/> (itself one of them).</summary>
    private static bool IsTail(IReadOnlyList<DarknetLayerInfo> layers, int index) =>
        layers.Skip(index).All(l => l.Type is "softmax" or "cost");

    private static void Refuse(DarknetSection section, params string[] keys)
    {
        foreach (string key in keys)
            if (section.Has(key)) throw section.Error($"{key} is not supported.", key);
    }
}
