namespace SharpNorm.Darknet;

/// <summary>One layer of a darknet network as darknet sizes it: inputs (layer indices; -1 is the network input), output shape, learnable values, work.</summary>
public sealed record DarknetLayerInfo(int Index, string Type, int[] Inputs, int Channels, int Height, int Width, long Parameters, double Bflops, string Details)
{
    /// <summary>Convolutional and connected layers: whether a batch norm follows (its arrays are in the .weights file).</summary>
    public bool BatchNormalize { get; init; }

    /// <summary>Convolutional and connected layers: the number of weights (OIHW, or outputs x inputs); 0 for the others.</summary>
    public long WeightCount { get; init; }

    /// <summary>Convolutional and pooling layers: the (square) window size; 0 for the others.</summary>
    public int KernelSize { get; init; }

    /// <summary>Weighted layers: the number of biases (one per output channel; one per output value for [local]).</summary>
    public long BiasCount => Type == "local" ? (long)Channels * Height * Width : Channels;

    /// <summary>Whether the layer has arrays in a .weights file.</summary>
    public bool HasWeights => Type is "convolutional" or "connected" or "local";
}

/// <summary>
/// Sizes a darknet network from its cfg sections the way darknet's parser does (output sizes, route concatenation,
/// shortcut sources, maxpool's default padding of size-1) and counts its parameters and BFLOPs
/// (2 * multiply-adds / 1e9 of convolutional and connected layers, as darknet prints them).
/// </summary>
public static class DarknetSummary
{
    /// <summary>The largest count, size, stride or padding a cfg may give (filters, size, output, classes, height, ...).</summary>
    public const int MaxSize = 65536;

    /// <summary>The most values one layer's output (per image) or its weights may hold: what one array holds.</summary>
    public static long MaxValues => Array.MaxLength;

    public static IReadOnlyList<DarknetLayerInfo> Describe(IReadOnlyList<DarknetSection> sections)
    {
        ArgumentNullException.ThrowIfNull(sections);
        if (sections.Count == 0) throw new ArgumentException("A cfg has at least its [net] section; got no sections.", nameof(sections));
        DarknetSection net = sections[0];
        int height = net.Int("height", 0), width = net.Int("width", 0), channels = net.Int("channels", 0);
        if (height <= 0 || width <= 0 || channels <= 0)
            throw net.Error($"height, width and channels must be positive; got height={height}, width={width}, channels={channels}.");
        foreach (string key in new[] { "height", "width", "channels" }) Positive(net, key, 1);
        RequireFits(net, channels, height, width, "the input");

        var layers = new List<DarknetLayerInfo>();
        int c = channels, h = height, w = width;
        for (int s = 1; s < sections.Count; s++)
        {
            DarknetSection section = sections[s];
            int index = layers.Count;
            int[] inputs = [index - 1];
            long parameters = 0, weightCount = 0;
            double bflops = 0;
            string details;
            switch (section.Type)
            {
                case "convolutional":
                {
                    int filters = Positive(section, "filters", 1), size = Positive(section, "size", 1), stride = Positive(section, "stride", 1);
                    int groups = Positive(section, "groups", 1);
                    int padding = section.Int("pad", 0) != 0 ? size / 2 : NonNegative(section, "padding", 0);
                    if (c % groups != 0 || filters % groups != 0)
                        throw section.Error($"groups={groups} must divide the input channels ({c}) and filters ({filters}).", "groups");
                    bool batchNormalize = section.Int("batch_normalize", 0) != 0;
                    string activation = Activation(section, "logistic");
                    (int outH, int outW) = Output(section, h, w, 2L * padding - size, stride);
                    long weights = Weights(section, filters, c / groups, size, size);
                    weightCount = weights;
                    parameters = weights + filters + (batchNormalize ? filters : 0); // weights, biases (beta), scales (gamma)
                    bflops = 2.0 * weights * outH * outW / 1e9;
                    details = $"{filters} {size}x{size}/{stride}{(groups > 1 ? $" g{groups}" : "")}{(batchNormalize ? " bn" : "")} {activation}";
                    (c, h, w) = (filters, outH, outW);
                    break;
                }
                case "maxpool":
                {
                    int stride = Positive(section, "stride", 1), size = Positive(section, "size", stride);
                    int padding = NonNegative(section, "padding", size - 1);
                    (int outH, int outW) = Output(section, h, w, (long)padding - size, stride);
                    details = $"{size}x{size}/{stride}";
                    (h, w) = (outH, outW);
                    break;
                }
                case "avgpool":
                    details = "global";
                    (h, w) = (1, 1);
                    break;
                case "route":
                {
                    int[] references = section.IntList("layers") ?? throw section.Error("needs layers=.");
                    if (references.Length == 0) throw section.Error("layers= is empty.", "layers");
                    inputs = references.Select(r => Resolve(section, r, index, "layers")).ToArray();
                    int groups = Positive(section, "groups", 1), groupId = NonNegative(section, "group_id", 0);
                    if (groupId >= groups) throw section.Error($"group_id={groupId} must be below groups={groups}.", "group_id");
                    DarknetLayerInfo first = layers[inputs[0]];
                    int total = 0;
                    foreach (int input in inputs)
                    {
                        DarknetLayerInfo source = layers[input];
                        if (source.Height != first.Height || source.Width != first.Width)
                            throw section.Error($"layers {string.Join(", ", inputs)} differ in size ({first.Height}x{first.Width} and {source.Height}x{source.Width}); route concatenates channels of equal-sized maps.", "layers");
                        if (source.Channels % groups != 0) throw section.Error($"groups={groups} must divide the {source.Channels} channels of layer {input}.", "groups");
                        total += source.Channels / groups;
                    }
                    details = $"{string.Join(", ", inputs)}{(groups > 1 ? $" group {groupId}/{groups}" : "")}";
                    (c, h, w) = (total, first.Height, first.Width);
                    break;
                }
                case "shortcut":
                {
                    int from = section.Int("from", int.MinValue);
                    if (from == int.MinValue) throw section.Error("needs from=.");
                    int source = Resolve(section, from, index, "from");
                    inputs = [index - 1, source];
                    details = $"from {source}, {Activation(section, "linear")}";
                    break;
                }
                case "upsample":
                {
                    int stride = section.Int("stride", 2);
                    if (stride == 0) throw section.Error("stride must not be 0.", "stride");
                    if (Math.Abs((long)stride) > MaxSize) throw section.Error($"stride={stride} exceeds the limit of {MaxSize}.", "stride");
                    if (stride > 0)
                    {
                        RequireFits(section, c, (long)h * stride, (long)w * stride, "the output");
                        (h, w) = (h * stride, w * stride);
                    }
                    else
                    {
                        if (h % -stride != 0 || w % -stride != 0) throw section.Error($"a downsample by {-stride} needs sizes divisible by it; got {h}x{w}.", "stride");
                        (h, w) = (h / -stride, w / -stride);
                    }
                    details = $"{stride}x";
                    break;
                }
                case "connected":
                {
                    int output = Positive(section, "output", 1);
                    bool batchNormalize = section.Int("batch_normalize", 0) != 0;
                    long weights = (long)c * h * w * output;
                    weightCount = weights;
                    parameters = weights + output + (batchNormalize ? output : 0);
                    bflops = 2.0 * weights / 1e9;
                    details = $"{c * h * w} -> {output}{(batchNormalize ? " bn" : "")} {Activation(section, "logistic")}";
                    (c, h, w) = (output, 1, 1);
                    break;
                }
                case "dropout":
                {
                    double probability = section.Float("probability", 0.5);
                    if (probability is < 0 or > 1) throw section.Error($"probability={probability} must be in [0, 1].", "probability");
                    details = $"p = {probability}";
                    break;
                }
                case "softmax":
                    details = $"groups {Positive(section, "groups", 1)}";
                    break;
                case "yolo":
                {
                    int classes = Positive(section, "classes", 20);
                    double[] anchors = section.FloatList("anchors") ?? [];
                    int[] mask = section.IntList("mask") ?? Enumerable.Range(0, Positive(section, "num", 1)).ToArray();
                    if (anchors.Length % 2 != 0) throw section.Error("anchors must come in (width, height) pairs.", "anchors");
                    foreach (int m in mask)
                        if (m < 0 || 2L * m + 1 >= anchors.Length) throw section.Error($"mask index {m} has no anchor (there are {anchors.Length / 2}).", "mask");
                    if (c != mask.Length * (classes + 5))
                        throw section.Error($"expects {mask.Length} x (classes {classes} + 5) = {mask.Length * (classes + 5)} input channels; the layer before gives {c}.", "classes");
                    details = $"{classes} classes, anchors {string.Join(" ", mask.Select(m => $"{anchors[2 * m]}x{anchors[2 * m + 1]}"))}";
                    break;
                }
                case "reorg":
                {
                    int stride = Positive(section, "stride", 1);
                    bool reverse = section.Int("reverse", 0) != 0;
                    long s2 = (long)stride * stride;
                    if (reverse)
                    {
                        if (c % s2 != 0) throw section.Error($"a reverse reorg by {stride} needs channels divisible by {s2}; got {c}.", "stride");
                        RequireFits(section, c / s2, (long)h * stride, (long)w * stride, "the output");
                        (c, h, w) = ((int)(c / s2), h * stride, w * stride);
                    }
                    else
                    {
                        if (c % s2 != 0 || h % stride != 0 || w % stride != 0)
                            throw section.Error($"a reorg by {stride} needs channels divisible by {s2} and sizes by {stride}; got {c} x {h} x {w}.", "stride");
                        if (c * s2 > int.MaxValue) throw section.Error($"a reorg by {stride} of {c} channels gives more than 2^31 channels.", "stride");
                        (c, h, w) = ((int)(c * s2), h / stride, w / stride);
                    }
                    details = $"/{stride}{(reverse ? " reverse" : "")}";
                    break;
                }
                case "local":
                {
                    int filters = Positive(section, "filters", 1), size = Positive(section, "size", 1), stride = Positive(section, "stride", 1);
                    int pad = section.Int("pad", 0) != 0 ? 1 : 0;
                    // darknet sizes the output as (h - (pad ? 1 : size)) / stride + 1 but im2col pads one pixel: they agree when pad=0 or size=3
                    (int outH, int outW) = Output(section, h, w, pad != 0 ? -1 : -(long)size, stride);
                    if (pad != 0 && size != 3)
                        throw section.Error($"pad=1 with size={size}: darknet sizes this output {outH}x{outW} but its im2col computes {(h + 2 - size) / stride + 1}x{(w + 2 - size) / stride + 1}; only size=3 is consistent.", "size");
                    string activation = Activation(section, "logistic");
                    long weights = Weights(section, (long)outH * outW, filters, c, (long)size * size);
                    weightCount = weights;
                    parameters = weights + (long)filters * outH * outW;
                    bflops = 2.0 * weights / 1e9;
                    details = $"{filters} {size}x{size}/{stride} local {activation}";
                    (c, h, w) = (filters, outH, outW);
                    break;
                }
                case "region":
                {
                    int classes = Positive(section, "classes", 20), boxes = Positive(section, "num", 1), coords = section.Int("coords", 4);
                    if (coords != 4) throw section.Error($"coords={coords}: only 4 (x, y, w, h) is supported.", "coords");
                    double[] anchors = section.FloatList("anchors") ?? [];
                    if (anchors.Length != 2L * boxes) throw section.Error($"needs num={boxes} anchor pairs ({2L * boxes} values); got {anchors.Length}.", "anchors");
                    if ((long)boxes * (classes + 5L) != c)
                        throw section.Error($"expects num {boxes} x (classes {classes} + 5) = {(long)boxes * (classes + 5L)} input channels; the layer before gives {c}.", "classes");
                    details = $"{classes} classes, {boxes} anchors{(section.Int("softmax", 0) != 0 ? ", softmax" : "")}";
                    break;
                }
                case "detection":
                {
                    int classes = Positive(section, "classes", 1), boxes = Positive(section, "num", 1), side = Positive(section, "side", 7), coords = section.Int("coords", 1);
                    if (coords != 4) throw section.Error($"coords={coords}: only 4 (x, y, w, h) is supported.", "coords");
                    long values = (long)side * side * (classes + 5L * boxes);
                    if ((long)c * h * w != values)
                        throw section.Error($"expects side {side}² x (classes {classes} + 5 x num {boxes}) = {values} inputs; the layer before gives {(long)c * h * w}.", "side");
                    details = $"{side}x{side}, {boxes} boxes, {classes} classes{(section.Int("softmax", 0) != 0 ? ", softmax" : "")}";
                    break;
                }
                case "cost":
                    details = "";
                    break;
                case "net":
                    throw section.Error("a second [net] section.");
                default:
                    throw section.Error("is not supported.");
            }
            RequireFits(section, c, h, w, "the output");
            if (weightCount > MaxValues)
                throw section.Error($"needs {weightCount:N0} weights, more than the limit of {MaxValues:N0} (one array).");
            layers.Add(new DarknetLayerInfo(index, section.Type, inputs, c, h, w, parameters, bflops, details)
            {
                BatchNormalize = section.Type is "convolutional" or "connected" && section.Int("batch_normalize", 0) != 0,
                // [local] has no batch norm in darknet
                WeightCount = weightCount,
                KernelSize = section.Type is "convolutional" or "maxpool" or "local" ? section.Int("size", section.Type == "maxpool" ? section.Int("stride", 1) : 1) : 0,
            });
        }
        return layers;
    }

    private static int Resolve(DarknetSection section, int reference, int index, string key)
    {
        int target = reference < 0 ? index + reference : reference;
        if (target < 0 || target >= index)
            throw section.Error($"{key} refers to layer {reference} (layer {target}), which is not an earlier layer of the network (this is layer {index}).", key);
        return target;
    }

    private static string Activation(DarknetSection section, string fallback)
    {
        string activation = section.String("activation", fallback);
        return activation is "logistic" or "linear" or "leaky" or "relu" or "mish" or "swish" or "tanh" or "elu" or "relie" or "ramp" or "lhtan" or "hardtan" or "plse" or "stair" or "loggy"
            ? activation
            : throw section.Error($"activation={activation} is not a darknet activation.", "activation");
    }

    private static int Positive(DarknetSection section, string key, int fallback)
    {
        int value = section.Int(key, fallback);
        if (value > MaxSize) throw section.Error($"{key}={value} exceeds the limit of {MaxSize}.", key);
        return value > 0 ? value : throw section.Error($"{key}={value} must be positive.", key);
    }

    private static int NonNegative(DarknetSection section, string key, int fallback)
    {
        int value = section.Int(key, fallback);
        if (value > MaxSize) throw section.Error($"{key}={value} exceeds the limit of {MaxSize}.", key);
        return value >= 0 ? value : throw section.Error($"{key}={value} must be >= 0.", key);
    }

    /// <summary>A window's output size (h + <paramref name="extra"/>) / stride + 1 per axis, in long, refused unless positive.</summary>
    private static (int, int) Output(DarknetSection section, int h, int w, long extra, int stride)
    {
        long outH = (h + extra) / stride + 1, outW = (w + extra) / stride + 1;
        if (h + extra < 0 || w + extra < 0 || outH <= 0 || outW <= 0)
            throw section.Error($"the input {h}x{w} is too small for this window: the output would be {(h + extra < 0 ? "empty" : $"{outH}x{outW}")}.");
        if (outH > MaxValues || outW > MaxValues) throw section.Error($"the output {outH}x{outW} exceeds the limit of {MaxValues:N0} values.");
        return ((int)outH, (int)outW);
    }

    /// <summary>The product of the factors (each at most 2^32), refused above <see cref="MaxValues"/> before it could overflow.</summary>
    private static long Weights(DarknetSection section, params long[] factors)
    {
        double estimate = factors.Aggregate(1.0, (p, f) => p * f);
        if (estimate > MaxValues) throw section.Error($"needs {estimate:G4} weights, more than the limit of {MaxValues:N0} (one array).");
        return factors.Aggregate(1L, (p, f) => p * f);
    }

    /// <summary>Refuses a map of more values per image than <see cref="MaxValues"/>.</summary>
    private static void RequireFits(DarknetSection section, long c, long h, long w, string what)
    {
        // each factor is at most 2^31 and the first product is checked before the second
        long plane = h * w;
        if (plane > MaxValues || c * plane > MaxValues || c * plane <= 0)
            throw section.Error($"{what} {c} x {h} x {w} = {(plane > MaxValues ? (double)c * plane : c * plane):G4} values per image exceeds the limit of {MaxValues:N0} (one array).");
    }
}
