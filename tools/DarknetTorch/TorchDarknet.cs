// TorchDarknet: an independent libtorch (TorchSharp) reference of darknet inference, for fixtures, tests and the bench.
// It takes the network's shape from SharpNorm's cfg parser and sizing (DarknetConfig / DarknetSummary) and its arrays
// from DarknetWeights, but all layer math is done with libtorch ops. Semantics: pjreddie darknet's forward pass at
// inference (batch norm with rolling statistics), AlexeyAB's for grouped convolutions, route groups, mish and swish.
// Linked (Compile Include ... Link) into tools/FixtureGen, bench/SharpNorm.Bench and tests/SharpNorm.Tests; it is not
// part of src/ (src/ never references TorchSharp).

using SharpNorm.Darknet;
using TorchSharp;
using static TorchSharp.torch;

namespace SharpNorm.Tools;

/// <summary>
/// A darknet network built in libtorch: <see cref="Forward"/> returns every layer's output (NCHW float32; connected,
/// avgpool and softmax layers as N x C x 1 x 1) for an N x C x H x W input of the network's size.
/// </summary>
/// <remarks>
/// Layers: [convolutional] (conv2d with darknet's padding, groups, bias only without batch norm; batch norm in eval
/// from the rolling statistics; activation, default logistic), [maxpool] (darknet's window placement: starts at
/// out*stride - padding/2, default padding size-1, max over in-bounds elements: -inf padding then max_pool2d),
/// [avgpool] (global mean), [route] (channel concat; groups/group_id take a channel slice of each input), [shortcut]
/// (previous + from, then activation, default linear; with fewer or more channels in from, darknet's: the first min(C)
/// channels added, the rest of the previous output passed), [upsample] (nearest, times scale; a negative
/// stride sums stride x stride blocks), [connected] (flatten CHW, x W^T, then batch norm or bias; activation, default
/// logistic), [dropout] and [cost] (identity), [softmax] (over each of groups contiguous slices of a sample's values,
/// divided by temperature first), [yolo] (sigmoid on x, y, objectness and class scores of each anchor's block; x and y
/// then times scale_x_y minus (scale_x_y - 1) / 2, AlexeyAB's).
/// Batch norm: <c>darknetCpuBatchNorm</c> false: (x - mean) / sqrt(var + 1e-5) * gamma + beta (libtorch's
/// batch_norm in eval, eps 1e-5: darknet's GPU formula, PyTorch's); true: (x - mean) / (sqrt(var) + 1e-6) * gamma +
/// beta (pjreddie's normalize_cpu).
/// </remarks>
public sealed class TorchDarknet : IDisposable
{
    /// <summary>||actual - expected|| / ||expected||, in double: how the darknet references compare layer outputs.</summary>
    public static double Normwise(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        if (actual.Length != expected.Length) throw new InvalidOperationException($"{actual.Length} values against {expected.Length}.");
        double difference = 0, norm = 0;
        for (int k = 0; k < expected.Length; k++)
        {
            double e = expected[k], d = actual[k] - e;
            difference += d * d;
            norm += e * e;
        }
        return Math.Sqrt(difference / norm);
    }

    /// <summary>
    /// Test weights that tell the two batch-norm formulas apart: every fourth channel (c % 4 == 1) gets a rolling
    /// variance 1000 times smaller and a scale sqrt(1000) times smaller, so its output keeps its size but
    /// sqrt(var + 1e-5) and sqrt(var) + 1e-6 then differ by some 0.5% there. Used by FixtureGen and the parity tests.
    /// </summary>
    public static DarknetWeights SmallVariances(DarknetWeights weights) => weights with
    {
        Layers = weights.Layers.Select(l =>
        {
            if (l?.Scales is null || l.RollingVariance is null) return l;
            float[] scales = (float[])l.Scales.Clone(), variance = (float[])l.RollingVariance.Clone();
            for (int c = 1; c < variance.Length; c += 4)
            {
                variance[c] *= 1e-3f;
                scales[c] *= MathF.Sqrt(1e-3f);
            }
            return l with { Scales = scales, RollingVariance = variance };
        }).ToArray(),
    };

    private readonly Layer[] _layers;
    private readonly bool _darknetCpuBatchNorm;
    private readonly ScalarType _dtype;
    private readonly List<Tensor> _parameters = [];

    public IReadOnlyList<DarknetLayerInfo> Layers { get; }
    public int InputChannels { get; }
    public int InputHeight { get; }
    public int InputWidth { get; }

    /// <summary>The [yolo] layers, else the last layer (as SharpNorm's DarknetNetwork.OutputLayers).</summary>
    public IReadOnlyList<int> OutputLayers { get; }

    /// <summary>The type it computes in: float32, or float64 for a more exact reference of the same network.</summary>
    public ScalarType DType => _dtype;

    public static TorchDarknet Load(string cfgPath, string weightsPath, bool darknetCpuBatchNorm = false, ScalarType dtype = ScalarType.Float32)
    {
        IReadOnlyList<DarknetSection> sections = DarknetConfig.ReadFile(cfgPath);
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        return new TorchDarknet(sections, layers, DarknetWeightsFile.Read(weightsPath, layers), darknetCpuBatchNorm, dtype);
    }

    /// <param name="sections">The cfg sections, [net] first.</param>
    /// <param name="layers">DarknetSummary.Describe(sections).</param>
    /// <param name="weights">Arrays of every convolutional and connected layer.</param>
    /// <param name="darknetCpuBatchNorm">Batch norm as pjreddie's CPU code computes it (see the remarks).</param>
    /// <param name="dtype">Float32 (darknet's type), or Float64: the float32 weights widened, every op in float64.</param>
    public TorchDarknet(IReadOnlyList<DarknetSection> sections, IReadOnlyList<DarknetLayerInfo> layers, DarknetWeights weights, bool darknetCpuBatchNorm = false,
        ScalarType dtype = ScalarType.Float32)
    {
        if (dtype is not (ScalarType.Float32 or ScalarType.Float64)) throw new ArgumentException($"dtype {dtype}: Float32 or Float64.");
        _dtype = dtype;
        ArgumentNullException.ThrowIfNull(sections);
        ArgumentNullException.ThrowIfNull(layers);
        ArgumentNullException.ThrowIfNull(weights);
        if (sections.Count != layers.Count + 1) throw new ArgumentException($"{sections.Count} sections ([net] included) for {layers.Count} layers.");
        if (weights.Layers.Count != layers.Count) throw new ArgumentException($"weights for {weights.Layers.Count} layers, the network has {layers.Count}.");
        Layers = layers;
        _darknetCpuBatchNorm = darknetCpuBatchNorm;
        DarknetSection net = sections[0];
        (InputChannels, InputHeight, InputWidth) = (net.Int("channels", 0), net.Int("height", 0), net.Int("width", 0));
        _layers = new Layer[layers.Count];
        for (int i = 0; i < layers.Count; i++)
        {
            DarknetLayerInfo info = layers[i];
            if (info.Type != sections[i + 1].Type) throw new ArgumentException($"layer {i} is [{info.Type}] but section {i + 1} is [{sections[i + 1].Type}].");
            _layers[i] = BuildLayer(sections[i + 1], info, i == 0 ? (InputChannels, InputHeight, InputWidth) : Shape(layers[i - 1]), weights.Layers[i]);
        }
        int[] heads = layers.Where(l => l.Type is "yolo" or "region" or "detection").Select(l => l.Index).ToArray();
        OutputLayers = heads.Length > 0 ? heads : [layers.Count - 1];
    }

    private static (int C, int H, int W) Shape(DarknetLayerInfo l) => (l.Channels, l.Height, l.Width);

    /// <summary>
    /// Every layer's output for <paramref name="input"/> (N x C x H x W of <see cref="DType"/>, the network's C, H, W), computed under
    /// no_grad. The caller owns the returned tensors (each a tensor of its own, outside any dispose scope).
    /// </summary>
    public Tensor[] Forward(Tensor input)
    {
        ArgumentNullException.ThrowIfNull(input);
        if (input.dim() != 4 || input.shape[1] != InputChannels || input.shape[2] != InputHeight || input.shape[3] != InputWidth)
            throw new ArgumentException($"input of shape [{string.Join(", ", input.shape)}]; the network takes N x {InputChannels} x {InputHeight} x {InputWidth}.");
        if (input.dtype != _dtype) throw new ArgumentException($"input is {input.dtype}; the network computes in {_dtype}.");
        using var noGrad = torch.no_grad();
        var outputs = new Tensor[_layers.Length];
        using (var scope = torch.NewDisposeScope())
        {
            for (int i = 0; i < _layers.Length; i++)
            {
                Tensor x = i == 0 ? input : outputs[i - 1];
                Tensor y = _layers[i].Forward(x, outputs);
                // Each layer's output its own tensor object (identity layers return a view), kept past the scope.
                outputs[i] = ReferenceEquals(y, x) || outputs.Take(i).Any(o => ReferenceEquals(o, y)) || ReferenceEquals(y, input) ? y.alias() : y;
                long[] expected = [input.shape[0], Layers[i].Channels, Layers[i].Height, Layers[i].Width];
                if (!outputs[i].shape.SequenceEqual(expected))
                    throw new InvalidOperationException($"layer {i} ({Layers[i].Type}) gave [{string.Join(", ", outputs[i].shape)}]; darknet sizes it [{string.Join(", ", expected)}].");
            }
            foreach (Tensor o in outputs) o.MoveToOuterDisposeScope();
        }
        return outputs;
    }

    /// <summary>Every layer's output as float arrays (N x C x H x W, row-major) for a row-major NCHW float32 input.</summary>
    public float[][] Forward(float[] input, int batch)
    {
        ArgumentNullException.ThrowIfNull(input);
        long expected = (long)batch * InputChannels * InputHeight * InputWidth;
        if (batch <= 0 || input.Length != expected) throw new ArgumentException($"input holds {input.Length} floats; batch {batch} x {InputChannels} x {InputHeight} x {InputWidth} is {expected}.");
        using var scope = torch.NewDisposeScope();
        using Tensor view = torch.tensor(input, [batch, InputChannels, InputHeight, InputWidth], ScalarType.Float32);
        using Tensor x = view.to_type(_dtype);
        Tensor[] outputs = Forward(x);
        try
        {
            return outputs.Select(ToArray).ToArray();
        }
        finally
        {
            foreach (Tensor o in outputs) o.Dispose();
        }
    }

    /// <summary>A tensor's values, row-major, as a new float array (float64 tensors rounded to float32).</summary>
    public static float[] ToArray(Tensor t)
    {
        using var c = t.detach().to_type(ScalarType.Float32).contiguous();
        return c.data<float>().ToArray();
    }

    /// <summary>A tensor's values, row-major, as a new double array.</summary>
    public static double[] ToDoubleArray(Tensor t)
    {
        using var c = t.detach().to_type(ScalarType.Float64).contiguous();
        return c.data<double>().ToArray();
    }

    public void Dispose()
    {
        foreach (Tensor t in _parameters) t.Dispose();
        _parameters.Clear();
    }

    /// <summary>
    /// torch.backends.mkldnn.enabled (TorchSharp 0.107 does not expose it): at::globalContext().userEnabledMkldnn() and
    /// setUserEnabledMkldnn(bool) through their exported symbols in libtorch_cpu. Off, float32 convolutions run
    /// libtorch's own slow_conv2d (im2col + GEMM). Seen on an AMD EPYC (AVX-512) with libtorch 2.10: oneDNN 3.7's
    /// float32 forward convolution (jit:avx512_core) gives wrong results (normwise errors 0.1 to 0.5) for a batch of 2
    /// and input channels that are not a multiple of 16 (e.g. 2x24x16x16 with 16 3x3 filters); batch 1 was right.
    /// </summary>
    public static bool MkldnnEnabled
    {
        get => Mkldnn.UserEnabledMkldnn(Mkldnn.GlobalContext());
        set
        {
            Mkldnn.SetUserEnabledMkldnn(Mkldnn.GlobalContext(), value);
            if (Mkldnn.UserEnabledMkldnn(Mkldnn.GlobalContext()) != value) throw new InvalidOperationException("could not set mkldnn enabled");
        }
    }

    private static class Mkldnn
    {
        [System.Runtime.InteropServices.DllImport("torch_cpu", EntryPoint = "_ZN2at13globalContextEv")]
        public static extern IntPtr GlobalContext();

        [System.Runtime.InteropServices.DllImport("torch_cpu", EntryPoint = "_ZNK2at7Context17userEnabledMkldnnEv")]
        [return: System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.U1)]
        public static extern bool UserEnabledMkldnn(IntPtr context);

        [System.Runtime.InteropServices.DllImport("torch_cpu", EntryPoint = "_ZN2at7Context20setUserEnabledMkldnnEb")]
        public static extern void SetUserEnabledMkldnn(IntPtr context, [System.Runtime.InteropServices.MarshalAs(System.Runtime.InteropServices.UnmanagedType.U1)] bool enabled);
    }

    // ---- layers ----

    private abstract class Layer
    {
        /// <param name="x">The previous layer's output (the network input for layer 0).</param>
        /// <param name="outputs">Outputs of the layers before this one.</param>
        public abstract Tensor Forward(Tensor x, Tensor[] outputs);
    }

    private sealed class Lambda(Func<Tensor, Tensor[], Tensor> forward) : Layer
    {
        public override Tensor Forward(Tensor x, Tensor[] outputs) => forward(x, outputs);
    }

    private Tensor Parameter(float[] values, params long[] shape)
    {
        long count = shape.Aggregate(1L, (a, b) => a * b);
        if (values.LongLength != count) throw new ArgumentException($"{values.Length} values for shape [{string.Join(", ", shape)}].");
        using Tensor view = torch.tensor(values, shape, ScalarType.Float32);
        Tensor t = view.to_type(_dtype, copy: true); // a copy of its own, not the managed array's memory
        t.DetachFromDisposeScope();
        _parameters.Add(t);
        return t;
    }

    /// <summary>Eval batch norm over dim 1 of x (N x C [x H x W]) from the rolling statistics, beta = darknet's biases.</summary>
    private Func<Tensor, Tensor> BatchNorm(DarknetLayerWeights w, int channels)
    {
        if (w.Scales is null || w.RollingMean is null || w.RollingVariance is null)
            throw new ArgumentException($"layer {w.Layer} has batch_normalize but no scales / rolling statistics in its weights.");
        Tensor gamma = Parameter(w.Scales, channels), beta = Parameter(w.Biases, channels);
        Tensor mean = Parameter(w.RollingMean, channels), variance = Parameter(w.RollingVariance, channels);
        if (!_darknetCpuBatchNorm)
            return x => nn.functional.batch_norm(x, mean, variance, gamma, beta, training: false, momentum: 0.1, eps: 1e-5);
        // pjreddie's normalize_cpu, scale_bias, add_bias: ((x - mean) / (sqrt(var) + .000001f)) * scales + biases.
        Tensor denominator = variance.sqrt().add(1e-6);
        denominator.DetachFromDisposeScope();
        _parameters.Add(denominator);
        return x =>
        {
            long[] view = x.dim() == 4 ? [1, channels, 1, 1] : [1, channels];
            using Tensor centered = x - mean.view(view);
            using Tensor normalized = centered / denominator.view(view);
            using Tensor scaled = normalized * gamma.view(view);
            return scaled + beta.view(view);
        };
    }

    private static Func<Tensor, Tensor> Activation(DarknetSection section, string fallback)
    {
        string name = section.String("activation", fallback);
        return name switch
        {
            "linear" => x => x,
            "logistic" => x => x.sigmoid(),
            "leaky" => x => nn.functional.leaky_relu(x, 0.1),
            "relu" => x => x.relu(),
            "tanh" => x => x.tanh(),
            "elu" => x => nn.functional.elu(x, 1.0),
            // AlexeyAB: x * tanh(softplus(x)), softplus with threshold 20 (libtorch's default threshold is 20 too)
            "mish" => x =>
            {
                using Tensor softplus = nn.functional.softplus(x, 1, 20);
                using Tensor tanh = softplus.tanh();
                return x * tanh;
            },
            "swish" => x =>
            {
                using Tensor sigmoid = x.sigmoid();
                return x * sigmoid;
            },
            _ => throw section.Error($"activation={name} is not implemented by the libtorch reference.", "activation"),
        };
    }

    private static Tensor Apply(Func<Tensor, Tensor> activation, Tensor y)
    {
        Tensor a = activation(y);
        if (!ReferenceEquals(a, y)) y.Dispose();
        return a;
    }

    private Layer BuildLayer(DarknetSection section, DarknetLayerInfo info, (int C, int H, int W) input, DarknetLayerWeights? w)
    {
        switch (info.Type)
        {
            case "convolutional":
            {
                if (w is null) throw new ArgumentException($"layer {info.Index} (convolutional) has no weights.");
                int filters = info.Channels, size = section.Int("size", 1), stride = section.Int("stride", 1), groups = section.Int("groups", 1);
                int padding = section.Int("pad", 0) != 0 ? size / 2 : section.Int("padding", 0);
                if (section.Int("dilation", 1) != 1) throw section.Error("dilation is not implemented by the libtorch reference.", "dilation");
                Tensor weight = Parameter(w.Weights, filters, input.C / groups, size, size);
                Tensor? bias = info.BatchNormalize ? null : Parameter(w.Biases, filters);
                Func<Tensor, Tensor>? batchNorm = info.BatchNormalize ? BatchNorm(w, filters) : null;
                Func<Tensor, Tensor> activation = Activation(section, "logistic");
                return new Lambda((x, _) =>
                {
                    Tensor y = nn.functional.conv2d(x, weight, bias, [stride, stride], [padding, padding], [1, 1], groups);
                    if (batchNorm is not null)
                    {
                        Tensor normalized = batchNorm(y);
                        y.Dispose();
                        y = normalized;
                    }
                    return Apply(activation, y);
                });
            }
            case "maxpool":
            {
                int stride = section.Int("stride", 1), size = section.Int("size", stride), padding = section.Int("padding", size - 1);
                int outH = info.Height, outW = info.Width, left = padding / 2;
                // darknet: out[i] = max over in-bounds input rows i*stride - padding/2 + n, n < size. Pad the top/left by
                // padding/2 and the bottom/right up to the last window's end with -inf, then an unpadded max_pool2d.
                int bottom = Math.Max(0, (outH - 1) * stride + size - left - input.H);
                int right = Math.Max(0, (outW - 1) * stride + size - left - input.W);
                return new Lambda((x, _) =>
                {
                    using Tensor padded = left + bottom + right == 0 ? x.alias()
                        : nn.functional.pad(x, [left, right, left, bottom], PaddingModes.Constant, double.NegativeInfinity);
                    using Tensor pooled = nn.functional.max_pool2d(padded, [size, size], [stride, stride]);
                    return pooled.narrow(2, 0, outH).narrow(3, 0, outW).contiguous();
                });
            }
            case "avgpool":
                return new Lambda((x, _) => x.mean([2, 3], keepdim: true));
            case "route":
            {
                int groups = section.Int("groups", 1), groupId = section.Int("group_id", 0);
                int[] inputs = info.Inputs;
                return new Lambda((_, outputs) =>
                {
                    var parts = inputs.Select(i =>
                    {
                        Tensor source = outputs[i];
                        if (groups == 1) return source;
                        long part = source.shape[1] / groups;
                        return source.narrow(1, groupId * part, part);
                    }).ToArray();
                    return parts.Length == 1 ? parts[0].contiguous() : torch.cat(parts, 1);
                });
            }
            case "shortcut":
            {
                int from = info.Inputs[1];
                Func<Tensor, Tensor> activation = Activation(section, "linear");
                return new Lambda((x, outputs) =>
                {
                    Tensor source = outputs[from];
                    if (source.shape[2] != x.shape[2] || source.shape[3] != x.shape[3])
                        throw new InvalidOperationException($"shortcut layer {info.Index}: layer {from} is [{string.Join(", ", source.shape)}], the previous layer [{string.Join(", ", x.shape)}]; the reference adds equal sizes only.");
                    if (source.shape[1] == x.shape[1]) return Apply(activation, x + source);
                    // darknet's shortcut_cpu: the first min(C) channels are added, the rest of the previous output passes
                    long common = Math.Min(source.shape[1], x.shape[1]);
                    using Tensor sum = x.narrow(1, 0, common) + source.narrow(1, 0, common);
                    Tensor y = common == x.shape[1] ? sum.alias() : torch.cat([sum, x.narrow(1, common, x.shape[1] - common)], 1);
                    return Apply(activation, y);
                });
            }
            case "upsample":
            {
                int stride = section.Int("stride", 2);
                double scale = section.Float("scale", 1);
                return new Lambda((x, _) =>
                {
                    Tensor y;
                    if (stride > 0)
                    {
                        // nearest neighbour: each value repeated stride x stride times
                        using Tensor rows = x.repeat_interleave(stride, 2);
                        y = rows.repeat_interleave(stride, 3);
                    }
                    else
                    {
                        // darknet's reverse upsample: sum of each (-stride) x (-stride) block
                        int s = -stride;
                        using Tensor mean = nn.functional.avg_pool2d(x, [s, s], [s, s]);
                        y = mean * (double)(s * s);
                    }
                    if (scale == 1) return y;
                    Tensor scaled = y * scale;
                    y.Dispose();
                    return scaled;
                });
            }
            case "connected":
            {
                if (w is null) throw new ArgumentException($"layer {info.Index} (connected) has no weights.");
                int outputs = info.Channels, inputs = input.C * input.H * input.W;
                Tensor weight = Parameter(w.Weights, outputs, inputs);
                Tensor? bias = info.BatchNormalize ? null : Parameter(w.Biases, outputs);
                Func<Tensor, Tensor>? batchNorm = info.BatchNormalize ? BatchNorm(w, outputs) : null;
                Func<Tensor, Tensor> activation = Activation(section, "logistic");
                return new Lambda((x, _) =>
                {
                    using Tensor flat = x.reshape(x.shape[0], inputs);
                    Tensor y = nn.functional.linear(flat, weight, bias);
                    if (batchNorm is not null)
                    {
                        Tensor normalized = batchNorm(y);
                        y.Dispose();
                        y = normalized;
                    }
                    y = Apply(activation, y);
                    Tensor shaped = y.reshape(x.shape[0], outputs, 1, 1);
                    return shaped;
                });
            }
            case "dropout":
            case "cost":
                return new Lambda((x, _) => x.alias());
            case "softmax":
            {
                int groups = section.Int("groups", 1);
                double temperature = section.Float("temperature", 1);
                long n = (long)input.C * input.H * input.W;
                if (n % groups != 0) throw section.Error($"groups={groups} must divide the {n} inputs.", "groups");
                return new Lambda((x, _) =>
                {
                    using Tensor grouped = x.reshape(x.shape[0], groups, n / groups);
                    using Tensor scaled = temperature == 1 ? grouped.alias() : grouped / temperature;
                    using Tensor soft = scaled.softmax(2);
                    return soft.reshape(x.shape[0], input.C, input.H, input.W);
                });
            }
            case "yolo":
            {
                int classes = section.Int("classes", 20);
                int anchors = (section.IntList("mask") ?? Enumerable.Range(0, section.Int("num", 1)).ToArray()).Length;
                int block = classes + 5;
                double scaleXY = section.Float("scale_x_y", 1);
                // x, y (entries 0, 1), objectness and class scores (entries 4 ..) of each anchor's block go through the
                // logistic; w, h (entries 2, 3) stay raw. AlexeyAB's scale_x_y: x, y = sigmoid * s - (s - 1) / 2.
                var logistic = new bool[anchors * block];
                var multiplier = new float[anchors * block];
                var offset = new float[anchors * block];
                for (int a = 0; a < anchors; a++)
                    for (int e = 0; e < block; e++)
                    {
                        logistic[a * block + e] = e is not (2 or 3);
                        bool xy = e is 0 or 1;
                        multiplier[a * block + e] = xy ? (float)scaleXY : 1f;
                        offset[a * block + e] = xy ? (float)(-0.5 * (scaleXY - 1)) : 0f;
                    }
                Tensor mask = torch.tensor(logistic, [1, anchors * block, 1, 1]);
                mask.DetachFromDisposeScope();
                _parameters.Add(mask);
                Tensor scale = Parameter(multiplier, 1, anchors * block, 1, 1), shift = Parameter(offset, 1, anchors * block, 1, 1);
                return new Lambda((x, _) =>
                {
                    using Tensor sigmoid = x.sigmoid();
                    if (scaleXY == 1) return torch.where(mask, sigmoid, x);
                    using Tensor scaled = sigmoid * scale + shift;
                    return torch.where(mask, scaled, x);
                });
            }
            case "reorg":
            {
                int st = section.Int("stride", 1);
                bool reverse = section.Int("reverse", 0) != 0;
                (int c, int h, int wd) = input;
                int oc = c / (st * st);
                return new Lambda((x, _) =>
                {
                    long n = x.shape[0];
                    if (reverse)
                    {
                        // depth_to_space (DCR): channel (dy·s + dx)·oc + c2 goes to (c2, j·s + dy, i·s + dx)
                        using Tensor split = x.reshape(n, st, st, oc, h, wd);
                        using Tensor moved = split.permute(0, 3, 4, 1, 5, 2);
                        return moved.reshape(n, oc, h * st, wd * st);
                    }
                    // darknet reads the (c, h, w) input as (c/s², h·s, w·s); (c2, j·s + dy, i·s + dx) becomes channel (dy·s + dx)·oc + c2 of (c, h, w)
                    using Tensor view = x.reshape(n, oc, h, st, wd, st);
                    using Tensor permuted = view.permute(0, 3, 5, 1, 2, 4);
                    return permuted.reshape(n, c * st * st, h / st, wd / st);
                });
            }
            case "local":
            {
                if (w is null) throw new ArgumentException($"layer {info.Index} (local) has no weights.");
                int size = section.Int("size", 1), stride = section.Int("stride", 1), pad = section.Int("pad", 0) != 0 ? 1 : 0;
                int positions = info.Height * info.Width, window = input.C * size * size;
                Tensor weight = Parameter(w.Weights, positions, info.Channels, window);
                Tensor bias = Parameter(w.Biases, 1, info.Channels, positions);
                Func<Tensor, Tensor> activation = Activation(section, "logistic");
                return new Lambda((x, _) =>
                {
                    // each output position p has its own filters: y[n, o, p] = Σ_k weight[p, o, k] · columns[n, k, p]
                    using Tensor columns = nn.functional.unfold(x, (size, size), (1, 1), (pad, pad), (stride, stride));
                    using Tensor products = torch.einsum("nkp,pok->nop", columns, weight);
                    using Tensor biased = products + bias;
                    return Apply(activation, biased.reshape(x.shape[0], info.Channels, info.Height, info.Width));
                });
            }
            case "region":
            {
                int classes = section.Int("classes", 20), boxes = section.Int("num", 1);
                bool softmax = section.Int("softmax", 0) != 0;
                return new Lambda((x, _) =>
                {
                    using Tensor blocks = x.reshape(x.shape[0], boxes, classes + 5, x.shape[2], x.shape[3]);
                    using Tensor xy = blocks.narrow(2, 0, 2).sigmoid();
                    using Tensor wh = blocks.narrow(2, 2, 2).alias();
                    using Tensor objectness = blocks.narrow(2, 4, 1).sigmoid();
                    using Tensor scores = softmax ? blocks.narrow(2, 5, classes).softmax(2) : blocks.narrow(2, 5, classes).sigmoid();
                    using Tensor joined = torch.cat([xy, wh, objectness, scores], 2);
                    return joined.reshape(x.shape);
                });
            }
            case "detection":
            {
                int classes = section.Int("classes", 1), side = section.Int("side", 7);
                bool softmax = section.Int("softmax", 0) != 0;
                return new Lambda((x, _) =>
                {
                    if (!softmax) return x.alias();
                    using Tensor flat = x.reshape(x.shape[0], -1);
                    using Tensor scores = flat.narrow(1, 0, side * side * classes).reshape(x.shape[0], side * side, classes).softmax(2);
                    using Tensor rest = flat.narrow(1, side * side * classes, flat.shape[1] - side * side * classes);
                    using Tensor joined = torch.cat([scores.reshape(x.shape[0], -1), rest], 1);
                    return joined.reshape(x.shape);
                });
            }
            default:
                throw section.Error("is not implemented by the libtorch reference.");
        }
    }
}
