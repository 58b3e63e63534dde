using SharpNorm.Layers;
using SharpNorm.Tensors;

namespace SharpNorm.Darknet;

/// <summary>
/// A chain-shaped darknet network (a classifier such as DarkNet-19: convolutional, maxpool, avgpool, connected, dropout,
/// then softmax/cost) as a trainable <see cref="Sequential{T}"/> of SharpNorm layers, for fine-tuning with
/// SharpNorm.Training.Trainer: Conv2d, BatchNorm2d (PyTorch's training semantics: momentum 0.1, biased batch
/// variance to normalize, unbiased for the running variance; or darknet's with <c>darknetBatchNorm</c>), LeakyReLU(0.1) /
/// ReLU, MaxPool2d, GlobalAvgPool2d, Flatten,
/// Linear, BatchNorm1d, Dropout. The trailing [softmax]/[cost] are left out: the model gives logits, the loss applies the
/// softmax. Networks with route, shortcut, upsample or yolo layers are not chains and are refused.
/// </summary>
public static class DarknetSequential
{
    /// <param name="sections">The cfg.</param>
    /// <param name="weights">The starting weights.</param>
    /// <param name="darknetBatchNorm">
    /// Train the batch norms as darknet does: normalized by the unbiased batch variance, running statistics updated
    /// with momentum 0.01 (darknet's .99/.01). False (default): PyTorch's BatchNorm2d defaults (biased, momentum 0.1).
    /// </param>
    public static Sequential<float> Create(IReadOnlyList<DarknetSection> sections, DarknetWeights weights, bool darknetBatchNorm = false)
    {
        ArgumentNullException.ThrowIfNull(sections);
        ArgumentNullException.ThrowIfNull(weights);
        IReadOnlyList<DarknetLayerInfo> infos = DarknetSummary.Describe(sections);
        if (weights.Layers.Count != infos.Count)
            throw new ArgumentException($"The weights are for {weights.Layers.Count} layers; the network has {infos.Count}.", nameof(weights));
        DarknetSection net = sections[0];
        (int c, int h, int w) = (net.Int("channels", 0), net.Int("height", 0), net.Int("width", 0));
        var layers = new List<ILayer<float>>();
        bool flat = false, ended = false;
        foreach (DarknetLayerInfo info in infos)
        {
            DarknetSection section = sections[info.Index + 1];
            if (ended && info.Type is not ("softmax" or "cost"))
                throw section.Error("follows the network's [softmax]: only a chain ending in softmax/cost can be fine-tuned.");
            switch (info.Type)
            {
                case "convolutional":
                {
                    if (flat) throw section.Error("a convolution after a connected layer is not supported.");
                    int size = section.Int("size", 1), stride = section.Int("stride", 1), groups = section.Int("groups", 1);
                    int padding = section.Int("pad", 0) != 0 ? size / 2 : section.Int("padding", 0);
                    var conv = new Conv2d<float>(c, info.Channels, size, stride, padding, groups: groups, bias: !info.BatchNormalize);
                    AddWeighted(layers, conv, conv.Weight, conv.Bias, DarknetNetwork.Arrays(weights, info), section, darknetBatchNorm);
                    break;
                }
                case "maxpool":
                {
                    int stride = section.Int("stride", 1), size = section.Int("size", stride), padding = section.Int("padding", size - 1);
                    var pool = new MaxPool2d<float>(size, stride, 0, ceilMode: padding == 1);
                    nint[] shape = pool.OutputShape([1, c, h, w]);
                    if (flat || padding > 1 || stride > size || shape[2] != info.Height || shape[3] != info.Width)
                        throw section.Error($"this max pool (size {size}, stride {stride}, padding {padding} on {h}x{w}) has no torch.nn.MaxPool2d twin.");
                    layers.Add(pool);
                    break;
                }
                case "avgpool":
                    if (flat) throw section.Error("an average pool after a connected layer is not supported.");
                    layers.Add(new GlobalAvgPool2d<float>());
                    break;
                case "connected":
                {
                    if (!flat) layers.Add(new Flatten<float>());
                    flat = true;
                    var linear = new Linear<float>(c * h * w, info.Channels, bias: !info.BatchNormalize);
                    AddWeighted(layers, linear, linear.Weight, linear.Bias, DarknetNetwork.Arrays(weights, info), section, darknetBatchNorm);
                    break;
                }
                case "dropout":
                    layers.Add(new Dropout<float>(section.Float("probability", 0.5)));
                    break;
                case "softmax" or "cost":
                    ended = true;
                    break;
                default:
                    throw section.Error($"makes the network a graph, not a chain: only chain networks (classifiers) can be fine-tuned as a Sequential.");
            }
            (c, h, w) = (info.Channels, info.Height, info.Width);
        }
        if (!flat) layers.Add(new Flatten<float>()); // (N, C, 1, 1) logits as (N, C), as the loss takes them
        return new Sequential<float>([.. layers]);
    }

    /// <summary>A convolutional or connected layer with darknet's arrays, then its norm (or its own bias), then its activation.</summary>
    private static void AddWeighted(List<ILayer<float>> layers, ILayer<float> layer, Parameter<float> weight, Parameter<float>? bias,
        DarknetLayerWeights arrays, DarknetSection section, bool darknetBatchNorm)
    {
        arrays.Weights.CopyTo(TensorData.Flat(weight.Value));
        layers.Add(layer);
        if (bias is null) layers.Add(Norm(arrays.Biases.Length, arrays, darknetBatchNorm));
        else arrays.Biases.CopyTo(TensorData.Flat(bias.Value));
        AddActivation(layers, section, "logistic");
    }

    private static BatchNorm<float> Norm(int channels, DarknetLayerWeights arrays, bool darknet)
    {
        var norm = darknet ? new BatchNorm<float>(channels, eps: 1e-5, momentum: 0.01, unbiasedNormalization: true) : new BatchNorm<float>(channels, eps: 1e-5);
        ConvolutionalNode.LoadNorm(norm, arrays);
        return norm;
    }

    private static void AddActivation(List<ILayer<float>> layers, DarknetSection section, string fallback)
    {
        switch (DarknetActivations.Parse(section, fallback))
        {
            case DarknetActivation.Linear: break;
            case DarknetActivation.Leaky: layers.Add(new LeakyReLU<float>(0.1)); break;
            case DarknetActivation.Relu: layers.Add(new ReLU<float>()); break;
            default: throw section.Error($"activation={section.String("activation", fallback)} has no trainable layer yet (fine-tuning supports linear, leaky, relu).", "activation");
        }
    }
}
