using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tensors;

namespace SharpNorm.Darknet;

/// <summary>
/// How a darknet batch norm divides at inference. Darknet is inconsistent: pjreddie's CPU code divides by
/// sqrt(var) + 1e-6, its GPU code (which trains the published weights) and PyTorch by sqrt(var + 1e-5).
/// </summary>
public enum DarknetBatchNormMode
{
    /// <summary>(x - mean) / sqrt(var + 1e-5): darknet's GPU formula, identical to torch.nn.BatchNorm2d in eval mode. The default.</summary>
    PyTorch,

    /// <summary>(x - mean) / (sqrt(var) + 1e-6): pjreddie darknet's CPU formula (normalize_cpu), to reproduce its CPU outputs.</summary>
    DarknetCpu,
}

/// <summary>How <see cref="DarknetNetwork"/> builds a network.</summary>
public sealed record DarknetNetworkOptions
{
    /// <summary>The batch norm's formula; <see cref="DarknetBatchNormMode.PyTorch"/> by default (see the enum).</summary>
    public DarknetBatchNormMode BatchNorm { get; init; } = DarknetBatchNormMode.PyTorch;

    /// <summary>
    /// Fold each batch norm into the convolution (or connected layer) before it, as PyTorch's fuse_conv_bn_eval does:
    /// one pass less per layer. When false the batch norm runs as its own layer (BatchNorm in eval mode).
    /// </summary>
    public bool FoldBatchNorm { get; init; } = true;

    /// <summary>Most threads a forward pass may use; -1 for all cores. Results are bit-identical for any value.</summary>
    public int MaxDegreeOfParallelism { get; init; } = -1;
}

/// <summary>
/// A darknet network (.cfg and .weights) built for inference: its <see cref="DarknetGraph"/> (convolutional, connected,
/// maxpool, avgpool, route, shortcut, upsample, dropout, softmax, cost, yolo, region, reorg, local and detection layers, wired as darknet wires them)
/// run in eval mode, batch norms folded into the convolutions by default. Every layer's output is kept, as in
/// darknet, so <see cref="Output"/> shows any of them. Buffers are owned and reused: a forward pass allocates only
/// when the batch size changes.
/// </summary>
public sealed class DarknetNetwork
{
    private readonly int[] _nodeOfLayer;    // the graph node whose output is layer i's
    private readonly nint[] _inputShape;
    private long[]? _layerTicks, _nodeTicks;
    private int _batch;

    private DarknetNetwork(IReadOnlyList<DarknetLayerInfo> layers, Graph<float> graph, int channels, int height, int width, DarknetNetworkOptions options)
    {
        Layers = layers;
        Graph = graph;
        (InputChannels, InputHeight, InputWidth) = (channels, height, width);
        Options = options;
        int[] heads = layers.Where(l => l.Type is "yolo" or "region" or "detection").Select(l => l.Index).ToArray();
        OutputLayers = heads.Length > 0 ? heads : [layers.Count - 1];
        var index = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < graph.Nodes.Count; i++) index[graph.Nodes[i].Name] = i;
        _nodeOfLayer = layers.Select(l => index[l.Index.ToString(System.Globalization.CultureInfo.InvariantCulture)]).ToArray();
        _inputShape = [0, channels, height, width];
    }

    /// <summary>The layers as darknet sizes them (index, type, inputs, output shape).</summary>
    public IReadOnlyList<DarknetLayerInfo> Layers { get; }

    /// <summary>
    /// The graph that runs the network (node "i" gives layer i's output). Its convolutions keep their weights packed
    /// from the first run: to change weights, build a new network (or call the graph's Gradient first, which ends that).
    /// </summary>
    public Graph<float> Graph { get; }

    public int InputChannels { get; }
    public int InputHeight { get; }
    public int InputWidth { get; }
    public DarknetNetworkOptions Options { get; }

    /// <summary>The layers whose outputs are the network's results: every [yolo], [region] and [detection] layer, else the last layer.</summary>
    public IReadOnlyList<int> OutputLayers { get; }

    /// <summary>The anchors, mask and classes of a [yolo] layer (null for other layers).</summary>
    public YoloHead? Yolo(int layer) => Node(layer) is YoloLayer<float> yolo ? yolo.Head : null;

    /// <summary>The anchors and classes of a [region] layer (null for other layers).</summary>
    public RegionHead? Region(int layer) => Node(layer) is RegionLayer<float> region ? region.Head : null;

    /// <summary>The grid, boxes and classes of a [detection] layer (null for other layers).</summary>
    public DetectionHead? Detection(int layer) => Node(layer) is DetectionLayer<float> detection ? detection.Head : null;

    private ILayer<float>? Node(int layer) => (uint)layer < (uint)_nodeOfLayer.Length ? Graph.Nodes[_nodeOfLayer[layer]].Layer : null;

    /// <summary>Reads a cfg and its weights; <paramref name="weightsPath"/> null gives random weights (seed 0) for trying a network out.</summary>
    public static DarknetNetwork Load(string cfgPath, string? weightsPath, DarknetNetworkOptions? options = null)
    {
        IReadOnlyList<DarknetSection> sections = DarknetConfig.ReadFile(cfgPath);
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        DarknetWeights weights = weightsPath is null ? DarknetWeightsFile.Random(layers, 0) : DarknetWeightsFile.Read(weightsPath, layers);
        return Build(sections, weights, options);
    }

    /// <summary>Builds the network of <paramref name="sections"/> with <paramref name="weights"/> (null: random, seed 0).</summary>
    public static DarknetNetwork Build(IReadOnlyList<DarknetSection> sections, DarknetWeights? weights, DarknetNetworkOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(sections);
        options ??= new DarknetNetworkOptions();
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        if (layers.Count == 0) throw sections[0].Error("the network has no layers after [net].");
        weights ??= DarknetWeightsFile.Random(layers, 0);
        Graph<float> graph = DarknetGraph.Create(sections, weights, options);
        Freeze(graph.Nodes.Select(n => n.Layer));
        DarknetSection net = sections[0];
        return new DarknetNetwork(layers, graph, net.Int("channels", 0), net.Int("height", 0), net.Int("width", 0), options);
    }

    /// <summary>The network owns its graph and never changes its weights: each convolution packs them once (until a Gradient call).</summary>
    private static void Freeze(IEnumerable<ILayer<float>?> layers)
    {
        foreach (ILayer<float>? layer in layers)
        {
            if (layer is Conv2d<float> conv) conv.WeightsFrozen = true;
            else if (layer is Sequential<float> sequential) Freeze(sequential.Layers);
        }
    }

    internal static DarknetLayerWeights Arrays(DarknetWeights weights, DarknetLayerInfo info)
    {
        DarknetLayerWeights arrays = weights.Layers[info.Index]
            ?? throw new ArgumentException($"The weights have no arrays for layer {info.Index} ({info.Type}).", nameof(weights));
        void Check(float[]? values, long expected, string what)
        {
            if ((values?.LongLength ?? 0) != expected)
                throw new ArgumentException($"Layer {info.Index} ({info.Type}): {what} has {values?.Length ?? 0} values; the layer needs {expected}.", nameof(weights));
        }
        Check(arrays.Biases, info.BiasCount, "biases");
        Check(arrays.Weights, info.WeightCount, "weights");
        long bn = info.BatchNormalize ? info.Channels : 0;
        Check(arrays.Scales, bn, "scales");
        Check(arrays.RollingMean, bn, "rolling mean");
        Check(arrays.RollingVariance, bn, "rolling variance");
        if (arrays.RollingVariance is not null && arrays.RollingVariance.Any(v => !(v >= 0)))
            throw new ArgumentException($"Layer {info.Index} ({info.Type}): a rolling variance is negative or NaN.", nameof(weights));
        return arrays;
    }

    /// <summary>
    /// Runs the network on <paramref name="input"/>: <paramref name="batch"/> images of InputChannels x InputHeight x
    /// InputWidth (NCHW, float32, darknet's RGB in [0, 1]). Read results with <see cref="Output"/>.
    /// </summary>
    public void Forward(ReadOnlySpan<float> input, int batch)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batch);
        long expected = (long)batch * InputChannels * InputHeight * InputWidth;
        if (input.Length != expected)
            throw new ArgumentException(
                $"Expected {batch} x {InputChannels} x {InputHeight} x {InputWidth} = {expected} input values; got {input.Length}.", nameof(input));
        if (batch != _batch)
        {
            long largest = Layers.Max(l => (long)l.Channels * l.Height * l.Width) * batch;
            if (largest > Array.MaxLength)
                throw new ArgumentOutOfRangeException(nameof(batch), batch, $"A batch of {batch} needs a layer output of {largest} values, more than an array holds; use smaller batches.");
        }
        _batch = 0; // until the graph has run: a failed run (out of memory) leaves no results behind
        _inputShape[0] = batch;
        Graph.NodeTicks = _layerTicks is null ? null : _nodeTicks ??= new long[Graph.Nodes.Count];
        Graph.Run(new ReadOnlyTensorSpan<float>(input, _inputShape, []));
        _batch = batch;
        if (_layerTicks is not null) AddLayerTicks();
    }

    /// <summary>When set (one slot per layer), Forward adds each layer's time in Stopwatch ticks: the bench's per-layer profile.</summary>
    internal long[]? LayerTicks
    {
        get => _layerTicks;
        set
        {
            _layerTicks = value;
            _nodeTicks = null;
        }
    }

    /// <summary>A layer's time is that of its nodes: node "i" and the helper nodes "i.*" before it.</summary>
    private void AddLayerTicks()
    {
        int node = 0;
        for (int layer = 0; layer < Layers.Count; layer++)
        {
            for (; node <= _nodeOfLayer[layer]; node++) _layerTicks![layer] += _nodeTicks![node];
        }
        Array.Clear(_nodeTicks!);
    }

    /// <summary>Forward on a copy: returns the last output layer's values (batch x C x H x W).</summary>
    public float[] Predict(float[] input, int batch)
    {
        ArgumentNullException.ThrowIfNull(input);
        Forward(input, batch);
        return Output(OutputLayers[^1]).ToArray();
    }

    /// <summary>Layer <paramref name="layer"/>'s output of the last <see cref="Forward"/>: batch x C x H x W as <see cref="Layers"/> gives them.</summary>
    public ReadOnlySpan<float> Output(int layer)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(layer);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(layer, _nodeOfLayer.Length);
        if (_batch == 0) throw new InvalidOperationException("Forward has not run yet.");
        return Graph.NodeOutput(_nodeOfLayer[layer]);
    }
}

/// <summary>A [yolo] layer's settings: anchors (pixels of the network input), which of them this layer uses, classes.</summary>
public sealed record YoloHead(int Classes, int[] Mask, double[] Anchors, double ScaleXY);

/// <summary>Darknet's activations.</summary>
internal enum DarknetActivation { Linear, Leaky, Relu, Logistic, Tanh, Elu, Mish, Swish }

internal static class DarknetActivations
{
    public static DarknetActivation Parse(DarknetSection section, string fallback)
    {
        string name = section.String("activation", fallback);
        return name switch
        {
            "linear" => DarknetActivation.Linear,
            "leaky" => DarknetActivation.Leaky,
            "relu" => DarknetActivation.Relu,
            "logistic" => DarknetActivation.Logistic,
            "tanh" => DarknetActivation.Tanh,
            "elu" => DarknetActivation.Elu,
            "mish" => DarknetActivation.Mish,
            "swish" => DarknetActivation.Swish,
            _ => throw section.Error($"activation={name} is not supported (supported: linear, leaky, relu, logistic, tanh, elu, mish, swish).", "activation"),
        };
    }
}

/// <summary>darknet's batch-norm arrays: into a BatchNorm, or folded into the weights of the layer before it.</summary>
internal static class DarknetBatchNorms
{
    /// <summary>
    /// fuse_conv_bn_eval: W' = W * scale per output (row of <paramref name="weights"/>, from darknet's weights), b' = shift
    /// (darknet's layers with a norm have no bias of their own).
    /// </summary>
    internal static void Fold(DarknetLayerWeights arrays, double[] scales, double[] shifts, Span<float> weights, Span<float> bias)
    {
        int outputs = shifts.Length, perOutput = arrays.Weights.Length / outputs;
        for (int o = 0; o < outputs; o++)
        {
            ReadOnlySpan<float> source = arrays.Weights.AsSpan(o * perOutput, perOutput);
            Span<float> target = weights.Slice(o * perOutput, perOutput);
            for (int i = 0; i < perOutput; i++) target[i] = (float)(source[i] * scales[o]);
            bias[o] = (float)shifts[o];
        }
    }

    /// <summary>The norm as y = scale*x + shift per channel, in double: scale = gamma / denominator, shift = beta - mean*scale.</summary>
    internal static (double[] Scales, double[] Shifts) Folded(DarknetLayerWeights arrays, DarknetBatchNormMode mode)
    {
        int n = arrays.Biases.Length;
        var scales = new double[n];
        var shifts = new double[n];
        for (int o = 0; o < n; o++)
        {
            double variance = arrays.RollingVariance![o];
            double denominator = mode == DarknetBatchNormMode.PyTorch ? Math.Sqrt(variance + 1e-5) : Math.Sqrt(variance) + 1e-6;
            scales[o] = arrays.Scales![o] / denominator;
            shifts[o] = arrays.Biases[o] - arrays.RollingMean![o] * scales[o];
        }
        return (scales, shifts);
    }

    /// <summary>darknet's scales, biases (beta), rolling mean and variance into a BatchNorm.</summary>
    internal static void Load(BatchNorm<float> norm, DarknetLayerWeights arrays)
    {
        arrays.Scales!.CopyTo(TensorData.Flat(norm.Weight!.Value));
        arrays.Biases.CopyTo(TensorData.Flat(norm.Bias!.Value));
        arrays.RollingMean!.CopyTo(TensorData.Flat(norm.RunningMean!));
        arrays.RollingVariance!.CopyTo(TensorData.Flat(norm.RunningVar!));
    }
}
