using System.Numerics;
using SharpNorm.Layers;

namespace SharpNorm.Models;

/// <summary>Which normalization follows each convolution of a model.</summary>
public enum NormChoice { Batch, Instance, Group, Layer, None }

/// <summary>
/// A small DarkNet-style classifier (DarkNet-19's pattern: 3x3 conv - norm - leaky blocks, max pools, 1x1 bottlenecks,
/// a 1x1 convolution to the classes and a global average pool) for 28x28 grayscale images, under 1M parameters.
/// </summary>
public static class DarkNetClassifier
{
    /// <summary>Output channels, kernel size and whether a 2x2 max pool follows, per block.</summary>
    private static readonly (int Channels, int Kernel, bool Pool)[] Blocks =
    [
        (48, 3, true),     // 28x28 -> 14x14
        (96, 3, true),     // 14x14 -> 7x7
        (192, 3, false),
        (96, 1, false),
        (192, 3, false),
    ];

    /// <param name="norm">The normalization after each convolution; with none the convolutions get a bias.</param>
    /// <param name="classes">Number of classes.</param>
    /// <param name="seed">Seeds the initial weights.</param>
    /// <param name="inputHeight">Input height (and width), needed by LayerNorm's normalized shape.</param>
    public static Sequential<T> Create<T>(NormChoice norm = NormChoice.Batch, int classes = 10, int seed = 0, int inputHeight = 28)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (!Enum.IsDefined(norm)) throw new ArgumentOutOfRangeException(nameof(norm), norm, "Unknown normalization.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(classes);
        var random = new Random(seed);
        var layers = new List<ILayer<T>>();
        int channels = 1, size = inputHeight;
        foreach (var (outChannels, kernel, pool) in Blocks)
        {
            layers.Add(new Conv2d<T>(channels, outChannels, kernel, padding: kernel / 2, bias: norm == NormChoice.None, random: random));
            ILayer<T>? normalization = norm switch
            {
                NormChoice.Batch => new BatchNorm<T>(outChannels),
                NormChoice.Instance => new InstanceNorm<T>(outChannels, affine: true),
                NormChoice.Group => new GroupNorm<T>(Math.Min(8, outChannels), outChannels),
                NormChoice.Layer => new LayerNorm<T>([outChannels, size, size]),
                _ => null,
            };
            if (normalization is not null) layers.Add(normalization);
            layers.Add(new LeakyReLU<T>(0.1));
            if (pool)
            {
                layers.Add(new MaxPool2d<T>(2));
                size /= 2;
            }
            channels = outChannels;
        }
        layers.Add(new Conv2d<T>(channels, classes, 1, random: random));
        layers.Add(new GlobalAvgPool2d<T>());
        layers.Add(new Flatten<T>());
        return new Sequential<T>(layers.ToArray());
    }

    /// <summary>Number of learnable values of a model.</summary>
    public static long ParameterCount<T>(ILayer<T> model) where T : unmanaged, IFloatingPointIeee754<T> =>
        model.Parameters.Sum(p => p.Value.FlattenedLength);
}
