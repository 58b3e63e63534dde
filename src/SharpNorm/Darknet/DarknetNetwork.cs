using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tensors;
using SharpNorm.Threading;
using SharpNorm.Kernels;

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
/// A darknet network (.cfg and .weights) built for inference: convolutional, connected, maxpool, avgpool, route,
/// shortcut, upsample, dropout, softmax, cost and yolo layers, wired as darknet wires them (a DAG: route and shortcut
/// read earlier layers). Each layer's output is kept, as in darknet, so routes and shortcuts read them and
/// <see cref="Output"/> shows any of them. Buffers are owned and reused: a forward pass allocates only when the batch
/// size changes.
/// </summary>
public sealed class DarknetNetwork
{
    private readonly DarknetNode[] _nodes;
    private readonly float[] _inputBuffer = [];
    private int _batch;

    private DarknetNetwork(IReadOnlyList<DarknetLayerInfo> layers, DarknetNode[] nodes, int channels, int height, int width, DarknetNetworkOptions options)
    {
        Layers = layers;
        _nodes = nodes;
        (InputChannels, InputHeight, InputWidth) = (channels, height, width);
        Options = options;
        int[] yolo = layers.Where(l => l.Type == "yolo").Select(l => l.Index).ToArray();
        OutputLayers = yolo.Length > 0 ? yolo : [layers.Count - 1];
    }

    /// <summary>The layers as darknet sizes them (index, type, inputs, output shape).</summary>
    public IReadOnlyList<DarknetLayerInfo> Layers { get; }

    public int InputChannels { get; }
    public int InputHeight { get; }
    public int InputWidth { get; }
    public DarknetNetworkOptions Options { get; }

    /// <summary>The layers whose outputs are the network's results: every [yolo] layer, else the last layer.</summary>
    public IReadOnlyList<int> OutputLayers { get; }

    /// <summary>The anchors, mask and classes of a [yolo] layer (null for other layers).</summary>
    public YoloHead? Yolo(int layer) => (uint)layer < (uint)_nodes.Length ? (_nodes[layer] as YoloNode)?.Head : null;

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
        if (!Enum.IsDefined(options.BatchNorm))
            throw new ArgumentOutOfRangeException(nameof(options), options.BatchNorm, "BatchNorm must be a DarknetBatchNormMode.");
        if (options.MaxDegreeOfParallelism is 0 or < -1)
            throw new ArgumentOutOfRangeException(nameof(options), options.MaxDegreeOfParallelism, "MaxDegreeOfParallelism must be -1 (all cores) or positive.");
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        if (layers.Count == 0) throw sections[0].Error("the network has no layers after [net].");
        weights ??= DarknetWeightsFile.Random(layers, 0);
        if (weights.Layers.Count != layers.Count)
            throw new ArgumentException($"The weights are for {weights.Layers.Count} layers; the network has {layers.Count}.", nameof(weights));

        DarknetSection net = sections[0];
        int channels = net.Int("channels", 0), height = net.Int("height", 0), width = net.Int("width", 0);
        var nodes = new DarknetNode[layers.Count];
        for (int i = 0; i < layers.Count; i++)
        {
            DarknetSection section = sections[i + 1];
            DarknetLayerInfo info = layers[i];
            (int c, int h, int w) = i == 0 ? (channels, height, width) : (layers[i - 1].Channels, layers[i - 1].Height, layers[i - 1].Width);
            nodes[i] = info.Type switch
            {
                "convolutional" => ConvolutionalNode.Create(section, info, c, h, w, Arrays(weights, info), options),
                "connected" => ConnectedNode.Create(section, info, c * h * w, Arrays(weights, info), options),
                "maxpool" => new MaxPoolNode(section, info, c, h, w),
                "avgpool" => new AvgPoolNode(info, c, h * w),
                "route" => new RouteNode(section, info, layers),
                "shortcut" => new ShortcutNode(section, info, layers, c, h, w),
                "upsample" => new UpsampleNode(section, info, c, h, w),
                "softmax" => new SoftmaxNode(section, info, c * h * w),
                "yolo" => new YoloNode(section, info),
                "dropout" or "cost" => i > 0 ? new IdentityNode(info, nodes[i - 1]) : throw section.Error("cannot be the first layer."),
                _ => throw section.Error("is not supported."),
            };
            nodes[i].MaxDegreeOfParallelism = options.MaxDegreeOfParallelism;
        }
        return new DarknetNetwork(layers, nodes, channels, height, width, options);
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
        Check(arrays.Biases, info.Channels, "biases");
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
            long largest = _nodes.Max(n => (long)n.Info.Channels * n.Info.Height * n.Info.Width) * batch;
            if (largest > Array.MaxLength)
                throw new ArgumentOutOfRangeException(nameof(batch), batch, $"A batch of {batch} needs a layer output of {largest} values, more than an array holds; use smaller batches.");
            _batch = 0; // until every layer has its buffers: a failed resize (out of memory) leaves no half-sized network behind
            foreach (DarknetNode node in _nodes) node.Resize(batch);
            _batch = batch;
        }
        long[]? ticks = LayerTicks;
        for (int i = 0; i < _nodes.Length; i++)
        {
            long start = ticks is null ? 0 : System.Diagnostics.Stopwatch.GetTimestamp();
            _nodes[i].Forward(i == 0 ? input : _nodes[i - 1].Output, _nodes, batch);
            if (ticks is not null) ticks[i] += System.Diagnostics.Stopwatch.GetTimestamp() - start;
        }
    }

    /// <summary>When set (one slot per layer), Forward adds each layer's time in Stopwatch ticks: the bench's per-layer profile.</summary>
    internal long[]? LayerTicks { get; set; }

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
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(layer, _nodes.Length);
        if (_batch == 0) throw new InvalidOperationException("Forward has not run yet.");
        return _nodes[layer].Output;
    }
}

/// <summary>A [yolo] layer's settings: anchors (pixels of the network input), which of them this layer uses, classes.</summary>
public sealed record YoloHead(int Classes, int[] Mask, double[] Anchors, double ScaleXY);

/// <summary>One layer of a built darknet network: owns its output buffer.</summary>
internal abstract class DarknetNode(DarknetLayerInfo info)
{
    /// <summary>
    /// Options of AlexeyAB's darknet that change a layer's results and are not implemented here: refused naming the
    /// line, never silently ignored (a wrong answer is worse than an error).
    /// </summary>
    protected static void RefuseUnsupported(DarknetSection section, params string[] keys)
    {
        foreach (string key in keys)
            if (section.Has(key)) throw section.Error($"{key} is not supported.", key);
    }

    private float[] _output = [];

    public DarknetLayerInfo Info { get; } = info;
    public int MaxDegreeOfParallelism { get; set; } = -1;
    protected int OutputSize => Info.Channels * Info.Height * Info.Width;
    protected int Batch { get; private set; }

    public virtual ReadOnlySpan<float> Output => _output.AsSpan(0, Batch * OutputSize);
    protected Span<float> OutputBuffer => _output.AsSpan(0, Batch * OutputSize);

    public virtual void Resize(int batch)
    {
        Batch = batch;
        if (_output.Length < batch * OutputSize) _output = new float[batch * OutputSize];
    }

    /// <param name="input">The previous layer's output (the network input for layer 0).</param>
    /// <param name="nodes">All layers, for routes and shortcuts.</param>
    /// <param name="batch">Images in the input.</param>
    public abstract void Forward(ReadOnlySpan<float> input, DarknetNode[] nodes, int batch);
}

/// <summary>Darknet's activations, applied in place.</summary>
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

    public static void Apply(DarknetActivation activation, Span<float> x)
    {
        switch (activation)
        {
            case DarknetActivation.Linear: break;
            case DarknetActivation.Leaky: Rectifier.Forward<float>(x, x, 0.1f); break;
            case DarknetActivation.Relu: Rectifier.Forward<float>(x, x, 0f); break;
            case DarknetActivation.Logistic: TensorPrimitives.Sigmoid(x, x); break;
            case DarknetActivation.Tanh: TensorPrimitives.Tanh(x, x); break;
            case DarknetActivation.Elu:
                foreach (ref float v in x) v = v >= 0 ? v : MathF.Exp(v) - 1;
                break;
            case DarknetActivation.Swish:
                foreach (ref float v in x) v /= 1 + MathF.Exp(-v);
                break;
            case DarknetActivation.Mish:
                // x tanh(softplus(x)), softplus with threshold 20 as darknet and torch.nn.functional.mish compute it.
                foreach (ref float v in x) v *= MathF.Tanh(v > 20 ? v : v < -20 ? MathF.Exp(v) : MathF.Log(1 + MathF.Exp(v)));
                break;
        }
    }
}

/// <summary>
/// [convolutional]: a Conv2d, then the batch norm (folded into the convolution, or its own eval-mode layer), then the
/// activation. Without batch_normalize darknet's biases are the convolution's bias; with it they are the norm's beta.
/// </summary>
internal sealed class ConvolutionalNode : DarknetNode
{
    private readonly Conv2d<float> _conv;
    private readonly BatchNorm<float>? _norm;
    private readonly float[]? _scale, _shift; // an unfused darknet-CPU norm: y = scale*x + shift per channel
    private readonly DarknetActivation _activation;
    private readonly nint[] _inputShape, _outputShape = new nint[4];
    private float[] _convolved = [];

    private ConvolutionalNode(DarknetLayerInfo info, Conv2d<float> conv, BatchNorm<float>? norm, float[]? scale, float[]? shift,
        DarknetActivation activation, int c, int h, int w) : base(info)
    {
        (_conv, _norm, _scale, _shift, _activation) = (conv, norm, scale, shift, activation);
        _inputShape = [0, c, h, w];
    }

    public static ConvolutionalNode Create(DarknetSection section, DarknetLayerInfo info, int c, int h, int w, DarknetLayerWeights arrays, DarknetNetworkOptions options)
    {
        int size = section.Int("size", 1), stride = section.Int("stride", 1), groups = section.Int("groups", 1);
        int padding = section.Int("pad", 0) != 0 ? size / 2 : section.Int("padding", 0);
        if (section.Int("dilation", 1) != 1) throw section.Error("dilation is not supported.", "dilation");
        RefuseUnsupported(section, "stride_x", "stride_y", "binary", "xnor", "deform", "antialiasing", "share_index", "assisted_excitation");
        DarknetActivation activation = DarknetActivations.Parse(section, "logistic");
        bool fold = info.BatchNormalize && options.FoldBatchNorm;
        var conv = new Conv2d<float>(c, info.Channels, size, stride, padding, groups: groups, bias: !info.BatchNormalize || fold);
        arrays.Weights.CopyTo(TensorData.Flat(conv.Weight.Value));
        BatchNorm<float>? norm = null;
        float[]? scale = null, shift = null;
        if (!info.BatchNormalize) arrays.Biases.CopyTo(TensorData.Flat(conv.Bias!.Value));
        else
        {
            (double[] scales, double[] shifts) = FoldedNorm(arrays, options.BatchNorm);
            if (fold) Fold(arrays, scales, shifts, TensorData.Flat(conv.Weight.Value), TensorData.Flat(conv.Bias!.Value));
            else if (options.BatchNorm == DarknetBatchNormMode.PyTorch) norm = EvalNorm(info.Channels, arrays);
            else (scale, shift) = (scales.Select(v => (float)v).ToArray(), shifts.Select(v => (float)v).ToArray());
        }
        conv.WeightsFrozen = true; // the network owns the layer and never changes its weights
        return new ConvolutionalNode(info, conv, norm, scale, shift, activation, c, h, w);
    }

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
    internal static (double[] Scales, double[] Shifts) FoldedNorm(DarknetLayerWeights arrays, DarknetBatchNormMode mode)
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

    /// <summary>torch.nn.BatchNorm in eval mode with darknet's arrays: the unfused PyTorch-mode norm.</summary>
    internal static BatchNorm<float> EvalNorm(int channels, DarknetLayerWeights arrays)
    {
        var norm = new BatchNorm<float>(channels, eps: 1e-5) { Training = false };
        LoadNorm(norm, arrays);
        return norm;
    }

    /// <summary>darknet's scales, biases (beta), rolling mean and variance into a BatchNorm.</summary>
    internal static void LoadNorm(BatchNorm<float> norm, DarknetLayerWeights arrays)
    {
        arrays.Scales!.CopyTo(TensorData.Flat(norm.Weight!.Value));
        arrays.Biases.CopyTo(TensorData.Flat(norm.Bias!.Value));
        arrays.RollingMean!.CopyTo(TensorData.Flat(norm.RunningMean!));
        arrays.RollingVariance!.CopyTo(TensorData.Flat(norm.RunningVar!));
    }

    public override void Resize(int batch)
    {
        base.Resize(batch);
        _inputShape[0] = batch;
        (_outputShape[0], _outputShape[1], _outputShape[2], _outputShape[3]) = (batch, Info.Channels, Info.Height, Info.Width);
        if (_norm is not null && _convolved.Length < batch * OutputSize) _convolved = new float[batch * OutputSize];
        _conv.MaxDegreeOfParallelism = MaxDegreeOfParallelism;
        if (_norm is not null) _norm.MaxDegreeOfParallelism = MaxDegreeOfParallelism;
    }

    public override void Forward(ReadOnlySpan<float> input, DarknetNode[] nodes, int batch)
    {
        Span<float> output = OutputBuffer;
        if (_norm is null) _conv.Forward(new ReadOnlyTensorSpan<float>(input, _inputShape, []), new TensorSpan<float>(output, _outputShape, []));
        else
        {
            Span<float> convolved = _convolved.AsSpan(0, output.Length);
            _conv.Forward(new ReadOnlyTensorSpan<float>(input, _inputShape, []), new TensorSpan<float>(convolved, _outputShape, []));
            _norm.Forward(new ReadOnlyTensorSpan<float>(convolved, _outputShape, []), new TensorSpan<float>(output, _outputShape, []));
        }
        if (_scale is not null)
        {
            int plane = Info.Height * Info.Width;
            for (int b = 0; b < batch; b++)
                for (int o = 0; o < Info.Channels; o++)
                {
                    Span<float> channel = output.Slice((b * Info.Channels + o) * plane, plane);
                    TensorPrimitives.Multiply(channel, _scale[o], channel);
                    TensorPrimitives.Add(channel, _shift![o], channel);
                }
        }
        DarknetActivations.Apply(_activation, output);
    }
}

/// <summary>[connected]: a Linear on the flattened (C*H*W) input, then the batch norm (folded or eval-mode), then the activation.</summary>
internal sealed class ConnectedNode : DarknetNode
{
    private readonly Linear<float> _linear;
    private readonly BatchNorm<float>? _norm;
    private readonly float[]? _scale, _shift;
    private readonly DarknetActivation _activation;
    private readonly nint[] _inputShape, _outputShape;
    private float[] _product = [];

    private ConnectedNode(DarknetLayerInfo info, Linear<float> linear, BatchNorm<float>? norm, float[]? scale, float[]? shift, DarknetActivation activation, int inputs)
        : base(info)
    {
        (_linear, _norm, _scale, _shift, _activation) = (linear, norm, scale, shift, activation);
        _inputShape = [0, inputs];
        _outputShape = [0, info.Channels];
    }

    public static ConnectedNode Create(DarknetSection section, DarknetLayerInfo info, int inputs, DarknetLayerWeights arrays, DarknetNetworkOptions options)
    {
        DarknetActivation activation = DarknetActivations.Parse(section, "logistic");
        var linear = new Linear<float>(inputs, info.Channels);
        arrays.Weights.CopyTo(TensorData.Flat(linear.Weight.Value));
        Span<float> weights = TensorData.Flat(linear.Weight.Value), bias = TensorData.Flat(linear.Bias!.Value);
        BatchNorm<float>? norm = null;
        float[]? scale = null, shift = null;
        if (!info.BatchNormalize) arrays.Biases.CopyTo(bias);
        else
        {
            (double[] scales, double[] shifts) = ConvolutionalNode.FoldedNorm(arrays, options.BatchNorm);
            if (options.FoldBatchNorm) ConvolutionalNode.Fold(arrays, scales, shifts, weights, bias);
            else
            {
                bias.Clear(); // darknet's connected layer with a norm adds only the norm's beta
                if (options.BatchNorm == DarknetBatchNormMode.PyTorch) norm = ConvolutionalNode.EvalNorm(info.Channels, arrays);
                else (scale, shift) = (scales.Select(v => (float)v).ToArray(), shifts.Select(v => (float)v).ToArray());
            }
        }
        return new ConnectedNode(info, linear, norm, scale, shift, activation, inputs);
    }

    public override void Resize(int batch)
    {
        base.Resize(batch);
        _inputShape[0] = _outputShape[0] = batch;
        if (_norm is not null && _product.Length < batch * OutputSize) _product = new float[batch * OutputSize];
        _linear.MaxDegreeOfParallelism = MaxDegreeOfParallelism;
        if (_norm is not null) _norm.MaxDegreeOfParallelism = MaxDegreeOfParallelism;
    }

    public override void Forward(ReadOnlySpan<float> input, DarknetNode[] nodes, int batch)
    {
        Span<float> output = OutputBuffer;
        Span<float> product = _norm is null ? output : _product.AsSpan(0, output.Length);
        _linear.Forward(new ReadOnlyTensorSpan<float>(input, _inputShape, []), new TensorSpan<float>(product, _outputShape, []));
        _norm?.Forward(new ReadOnlyTensorSpan<float>(product, _outputShape, []), new TensorSpan<float>(output, _outputShape, []));
        if (_scale is not null)
            for (int b = 0; b < batch; b++)
            {
                Span<float> row = output.Slice(b * Info.Channels, Info.Channels);
                TensorPrimitives.FusedMultiplyAdd(row, _scale, _shift!, row);
            }
        DarknetActivations.Apply(_activation, output);
    }
}

/// <summary>
/// [maxpool] as darknet computes it: windows start at out*stride - padding/2, and the maximum is over the window's
/// elements inside the input (padding never wins; as in darknet, which starts from -FLT_MAX and keeps x only when x &gt; max, a NaN never wins). yolov3-tiny's size-2 stride-1
/// pool keeps 13x13 this way. The common 2x2 stride-2 window is vectorized; any other combines each window's rows
/// first, then its columns. Planes are shared among threads (each output plane is written by one chunk).
/// </summary>
internal sealed class MaxPoolNode : DarknetNode, IChunkJob
{
    private const int PlanesPerChunk = 4;
    private readonly int _size, _stride, _offset, _channels, _height, _width;
    private readonly bool _pairs;
    private float[][] _rows = [];
    private unsafe float* _input, _output;

    public MaxPoolNode(DarknetSection section, DarknetLayerInfo info, int c, int h, int w) : base(info)
    {
        RefuseUnsupported(section, "stride_x", "stride_y", "maxpool_depth", "antialiasing");
        _stride = section.Int("stride", 1);
        _size = section.Int("size", _stride);
        _offset = section.Int("padding", _size - 1) / 2;
        (_channels, _height, _width) = (c, h, w);
        _pairs = _size == 2 && _stride == 2 && _offset == 0;
    }

    private int Threads => MaxDegreeOfParallelism == -1 ? Environment.ProcessorCount : MaxDegreeOfParallelism;

    public override void Resize(int batch)
    {
        base.Resize(batch);
        if (_rows.Length < Threads) _rows = Enumerable.Range(0, Threads).Select(_ => new float[_width]).ToArray();
    }

    public override unsafe void Forward(ReadOnlySpan<float> input, DarknetNode[] nodes, int batch)
    {
        fixed (float* x = input)
        fixed (float* y = OutputBuffer)
        {
            _input = x;
            _output = y;
            int planes = batch * _channels;
            ChunkRunner.Shared.Run(this, (planes + PlanesPerChunk - 1) / PlanesPerChunk, Math.Min(Threads, _rows.Length));
            _input = _output = null;
        }
    }

    unsafe void IChunkJob.Execute(int chunk, int worker)
    {
        int inPlane = _height * _width, outPlane = Info.Height * Info.Width;
        int first = chunk * PlanesPerChunk, end = Math.Min(first + PlanesPerChunk, Batch * _channels);
        for (int p = first; p < end; p++)
        {
            var plane = new ReadOnlySpan<float>(_input + (nint)p * inPlane, inPlane);
            var result = new Span<float>(_output + (nint)p * outPlane, outPlane);
            if (_pairs) Pairs(plane, result);
            else General(plane, result, _rows[worker]);
        }
    }

    /// <summary>2x2 windows, stride 2: each output row is the max of two input rows, then of adjacent pairs.</summary>
    private void Pairs(ReadOnlySpan<float> plane, Span<float> result)
    {
        int outW = Info.Width, fullPairs = _width / 2;
        for (int oy = 0; oy < Info.Height; oy++)
        {
            ReadOnlySpan<float> upper = plane.Slice(2 * oy * _width, _width);
            ReadOnlySpan<float> lower = 2 * oy + 1 < _height ? plane.Slice((2 * oy + 1) * _width, _width) : upper;
            Span<float> row = result.Slice(oy * outW, outW);
            int ox = PairMaxima.Vectorized(upper, lower, row, fullPairs);
            for (; ox < fullPairs; ox++)
                row[ox] = Max(Max(Max(Max(float.MinValue, upper[2 * ox]), upper[2 * ox + 1]), lower[2 * ox]), lower[2 * ox + 1]);
            if (outW > fullPairs) row[fullPairs] = Max(Max(float.MinValue, upper[_width - 1]), lower[_width - 1]); // an odd width's last column
        }
    }

    /// <summary>darknet's comparison: a NaN never replaces the running maximum.</summary>
    private static float Max(float max, float value) => value > max ? value : max;

    private void General(ReadOnlySpan<float> plane, Span<float> result, Span<float> rows)
    {
        int outW = Info.Width;
        for (int oy = 0; oy < Info.Height; oy++)
        {
            // The window's rows inside the input, combined: rows[x] = max over them of plane[y, x].
            int y0 = oy * _stride - _offset, yStart = Math.Max(y0, 0), yEnd = Math.Min(y0 + _size, _height);
            rows.Fill(float.MinValue); // darknet's -FLT_MAX: a NaN never wins, not even first
            for (int y = yStart; y < yEnd; y++)
            {
                ReadOnlySpan<float> next = plane.Slice(y * _width, _width);
                for (int x = 0; x < _width; x++) rows[x] = Max(rows[x], next[x]);
            }
            // Then its columns inside the input.
            Span<float> row = result.Slice(oy * outW, outW);
            for (int ox = 0; ox < outW; ox++)
            {
                int x0 = ox * _stride - _offset, xStart = Math.Max(x0, 0), xEnd = Math.Min(x0 + _size, _width);
                float max = float.MinValue;
                for (int x = xStart; x < xEnd; x++) max = Max(max, rows[x]);
                row[ox] = max;
            }
        }
    }
}

/// <summary>[avgpool]: the mean of each channel's plane.</summary>
internal sealed class AvgPoolNode(DarknetLayerInfo info, int channels, int plane) : DarknetNode(info)
{
    public override void Forward(ReadOnlySpan<float> input, DarknetNode[] nodes, int batch)
    {
        Span<float> output = OutputBuffer;
        for (int p = 0; p < batch * channels; p++) output[p] = TensorPrimitives.Sum(input.Slice(p * plane, plane)) / plane;
    }
}

/// <summary>[route]: the inputs' channels one after another (with groups, the group_id-th slice of each input's channels).</summary>
internal sealed class RouteNode : DarknetNode
{
    private readonly int _groups, _groupId;

    public RouteNode(DarknetSection section, DarknetLayerInfo info, IReadOnlyList<DarknetLayerInfo> layers) : base(info)
    {
        _groups = section.Int("groups", 1);
        _groupId = section.Int("group_id", 0);
    }

    public override void Forward(ReadOnlySpan<float> input, DarknetNode[] nodes, int batch)
    {
        Span<float> output = OutputBuffer;
        int at = 0;
        for (int b = 0; b < batch; b++)
            foreach (int source in Info.Inputs)
            {
                DarknetLayerInfo from = nodes[source].Info;
                int size = from.Channels * from.Height * from.Width, part = size / _groups;
                nodes[source].Output.Slice(b * size + _groupId * part, part).CopyTo(output[at..]);
                at += part;
            }
    }
}

/// <summary>
/// [shortcut]: the previous layer's output plus layer <c>from</c>'s, then the activation. As darknet, where the channel
/// counts differ the first min(C) channels are added and the rest of the previous output passes through.
/// </summary>
internal sealed class ShortcutNode : DarknetNode
{
    private readonly DarknetActivation _activation;
    private readonly int _channels, _plane;

    public ShortcutNode(DarknetSection section, DarknetLayerInfo info, IReadOnlyList<DarknetLayerInfo> layers, int c, int h, int w) : base(info)
    {
        DarknetLayerInfo from = layers[info.Inputs[1]];
        if (from.Height != h || from.Width != w)
            throw section.Error($"adds layer {from.Index} ({from.Channels} x {from.Height} x {from.Width}) to the previous output ({c} x {h} x {w}); their sizes must match.", "from");
        if (section.Float("alpha", 1) != 1 || section.Float("beta", 1) != 1)
            throw section.Error("alpha and beta other than 1 are not supported.");
        // AlexeyAB's weighted shortcut keeps weights in the .weights file: ignoring them would misread every later array.
        RefuseUnsupported(section, "weights_type", "weights_normalization");
        _activation = DarknetActivations.Parse(section, "linear");
        _channels = Math.Min(c, from.Channels);
        _plane = h * w;
    }

    public override void Forward(ReadOnlySpan<float> input, DarknetNode[] nodes, int batch)
    {
        Span<float> output = OutputBuffer;
        input.CopyTo(output);
        DarknetNode from = nodes[Info.Inputs[1]];
        int fromSize = from.Info.Channels * _plane, size = OutputSize, added = _channels * _plane;
        for (int b = 0; b < batch; b++)
        {
            Span<float> target = output.Slice(b * size, added);
            TensorPrimitives.Add(target, from.Output.Slice(b * fromSize, added), target);
        }
        DarknetActivations.Apply(_activation, output);
    }
}

/// <summary>[upsample]: nearest neighbour, each value repeated stride x stride times (times darknet's <c>scale</c>).</summary>
internal sealed class UpsampleNode : DarknetNode
{
    private readonly int _stride, _plane, _width;
    private readonly float _scale;

    public UpsampleNode(DarknetSection section, DarknetLayerInfo info, int c, int h, int w) : base(info)
    {
        _stride = section.Int("stride", 2);
        if (_stride < 0) throw section.Error("a negative stride (downsampling) is not supported.", "stride");
        _scale = (float)section.Float("scale", 1);
        (_plane, _width) = (h * w, w);
    }

    public override void Forward(ReadOnlySpan<float> input, DarknetNode[] nodes, int batch)
    {
        Span<float> output = OutputBuffer;
        int outW = Info.Width, outPlane = Info.Height * outW, planes = batch * Info.Channels;
        for (int p = 0; p < planes; p++)
        {
            ReadOnlySpan<float> source = input.Slice(p * _plane, _plane);
            Span<float> target = output.Slice(p * outPlane, outPlane);
            for (int oy = 0; oy < Info.Height; oy++)
            {
                ReadOnlySpan<float> row = source.Slice(oy / _stride * _width, _width);
                Span<float> outRow = target.Slice(oy * outW, outW);
                for (int ox = 0; ox < outW; ox++) outRow[ox] = row[ox / _stride] * _scale;
            }
        }
    }
}

/// <summary>[softmax]: a softmax over each sample's values (split into <c>groups</c> equal parts), with darknet's temperature.</summary>
internal sealed class SoftmaxNode : DarknetNode
{
    private readonly int _groups;
    private readonly float _temperature;

    public SoftmaxNode(DarknetSection section, DarknetLayerInfo info, int inputs) : base(info)
    {
        RefuseUnsupported(section, "tree");
        _groups = section.Int("groups", 1);
        if (inputs % _groups != 0) throw section.Error($"groups={_groups} must divide the {inputs} inputs.", "groups");
        _temperature = (float)section.Float("temperature", 1);
        if (_temperature <= 0) throw section.Error($"temperature={_temperature} must be positive.", "temperature");
    }

    public override void Forward(ReadOnlySpan<float> input, DarknetNode[] nodes, int batch)
    {
        Span<float> output = OutputBuffer;
        int part = OutputSize / _groups;
        for (int g = 0; g < batch * _groups; g++)
        {
            // darknet's softmax: exp(x/T - largest/T) / Σ, so that large logits cannot overflow exp.
            ReadOnlySpan<float> logits = input.Slice(g * part, part);
            Span<float> values = output.Slice(g * part, part);
            TensorPrimitives.Subtract(logits, TensorPrimitives.Max(logits), values);
            if (_temperature != 1) TensorPrimitives.Divide(values, _temperature, values);
            TensorPrimitives.Exp(values, values);
            TensorPrimitives.Divide(values, TensorPrimitives.Sum(values), values);
        }
    }
}

/// <summary>
/// [yolo]: the input with the logistic applied to each anchor's x, y, objectness and class scores (w and h stay raw,
/// as darknet leaves them); <see cref="YoloDetector"/> turns them into boxes.
/// </summary>
internal sealed class YoloNode : DarknetNode
{
    public YoloNode(DarknetSection section, DarknetLayerInfo info) : base(info)
    {
        int classes = section.Int("classes", 20);
        double[] anchors = section.FloatList("anchors") ?? [];
        int[] mask = section.IntList("mask") ?? Enumerable.Range(0, section.Int("num", 1)).ToArray();
        double scaleXY = section.Float("scale_x_y", 1);
        // new_coords (scaled YOLOv4, YOLOv7) decodes boxes differently, without the logistic.
        if (section.Int("new_coords", 0) != 0) throw section.Error("new_coords=1 is not supported.", "new_coords");
        Head = new YoloHead(classes, mask, anchors, scaleXY);
    }

    public YoloHead Head { get; }

    public override void Forward(ReadOnlySpan<float> input, DarknetNode[] nodes, int batch)
    {
        Span<float> output = OutputBuffer;
        input.CopyTo(output);
        int plane = Info.Height * Info.Width, entries = Head.Classes + 5;
        for (int b = 0; b < batch; b++)
            for (int a = 0; a < Head.Mask.Length; a++)
            {
                Span<float> anchor = output.Slice((b * Head.Mask.Length + a) * entries * plane, entries * plane);
                Span<float> xy = anchor[..(2 * plane)];
                TensorPrimitives.Sigmoid(xy, xy);
                if (Head.ScaleXY != 1)
                {
                    TensorPrimitives.Multiply(xy, (float)Head.ScaleXY, xy);
                    TensorPrimitives.Add(xy, (float)(-0.5 * (Head.ScaleXY - 1)), xy);
                }
                Span<float> scores = anchor[(4 * plane)..];
                TensorPrimitives.Sigmoid(scores, scores);
            }
    }
}

/// <summary>[dropout] and [cost] at inference: the input unchanged (no copy; the output is the previous layer's).</summary>
internal sealed class IdentityNode(DarknetLayerInfo info, DarknetNode source) : DarknetNode(info)
{
    public override ReadOnlySpan<float> Output => source.Output;

    public override void Resize(int batch)
    {
    }

    public override void Forward(ReadOnlySpan<float> input, DarknetNode[] nodes, int batch)
    {
    }
}
