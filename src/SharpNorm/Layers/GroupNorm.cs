using System.Numerics;
using SharpNorm.Kernels;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// Group normalization, the twin of torch.nn.GroupNorm: input (N, C, *); statistics per sample over each group of
/// C/G consecutive channels and all positions; Weight and Bias per channel. Training and eval compute the same.
/// </summary>
public sealed class GroupNorm<T> : NormLayer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <param name="numGroups">G, the number of groups the channels are split into.</param>
    /// <param name="numChannels">C, the number of channels (dimension 1 of the input); a multiple of G.</param>
    /// <param name="eps">Added to the variance for numerical stability.</param>
    /// <param name="affine">Whether the layer has learnable per-channel gamma (Weight) and beta (Bias).</param>
    /// <param name="layout">Channels in dimension 1 (default) or last, as PyTorch's channels_last tensors.</param>
    public GroupNorm(int numGroups, int numChannels, double eps = 1e-5, bool affine = true, ChannelLayout layout = ChannelLayout.First)
        : base(ValidChannelShape(numGroups, numChannels), eps, affine)
    {
        if (!Enum.IsDefined(layout)) throw new ArgumentOutOfRangeException(nameof(layout), layout, "layout must be First or Last.");
        Layout = layout;
        NumGroups = numGroups;
        NumChannels = numChannels;
    }

    public int NumGroups { get; }
    public int NumChannels { get; }

    /// <summary>Whether channels are dimension 1 (N, C, *) or the last dimension (N, *, C).</summary>
    public ChannelLayout Layout { get; }

    protected override string LayerName => "GroupNorm";

    // Statistics per (sample, group) over the group's channels and all positions: x[N, 1, G, C/G, spatial],
    // or channels last x[N, spatial, G, C/G, 1].
    protected override NormGeometry MapInput(ReadOnlySpan<nint> lengths)
    {
        if (lengths.Length < 2)
            throw new ArgumentException(
                $"GroupNorm expects input of rank 2 or more, {ExpectedShape(Layout, NumChannels)}; got rank {lengths.Length} input of shape {TensorData.Format(lengths)}.", "x");
        int channel = ChannelDimension(lengths, Layout);
        if (lengths[channel] != NumChannels)
            throw new ArgumentException(
                $"GroupNorm(numGroups: {NumGroups}, numChannels: {NumChannels}) expects {NumChannels} channels in dimension {channel}, shape {ExpectedShape(Layout, NumChannels)}; got shape {TensorData.Format(lengths)}.", "x");
        int batch = (int)lengths[0], spatial = SpatialSize(lengths, Layout), perGroup = NumChannels / NumGroups;
        return Layout == ChannelLayout.Last
            ? new NormGeometry(batch, spatial, NumGroups, perGroup, 1)
            : new NormGeometry(batch, 1, NumGroups, perGroup, spatial);
    }

    // PyTorch's F.group_norm checks the input as if it were (N*C/G, G, *spatial) batch-normalized.
    protected override void ValidateBatchStatistics(in NormGeometry g, ReadOnlySpan<nint> lengths)
    {
        if ((long)g.A * g.R * g.J * g.S == 1)
            throw new ArgumentException(
                $"Expected more than 1 value per channel when training, got input size {TensorData.Format(lengths)}.", "x");
    }

    private static nint[] ValidChannelShape(int numGroups, int numChannels)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numGroups);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(numChannels);
        if (numChannels % numGroups != 0)
            throw new ArgumentException($"numChannels must be divisible by numGroups; got numChannels {numChannels} and numGroups {numGroups}.", nameof(numChannels));
        return [numChannels];
    }
}
