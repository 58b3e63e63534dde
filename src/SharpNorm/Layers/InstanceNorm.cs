using System.Numerics;
using SharpNorm.Kernels;

namespace SharpNorm.Layers;

/// <summary>
/// Instance normalization, the twin of torch.nn.InstanceNorm1d/2d/3d in one class: input (N,C,L), (N,C,H,W)
/// or (N,C,D,H,W) (or channels last); statistics per sample and channel over the spatial positions.
/// </summary>
/// <remarks>
/// As in PyTorch: running statistics (when tracked) are updated with the batch mean of the per-instance means and
/// unbiased variances and used in eval mode; <c>momentum: null</c> leaves them unchanged (PyTorch passes 0 then);
/// <see cref="RunningStatsNorm{T}.NumBatchesTracked"/> is never incremented.
/// </remarks>
public sealed class InstanceNorm<T> : RunningStatsNorm<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <param name="numFeatures">C, the number of channels (dimension 1 of the input).</param>
    /// <param name="eps">Added to the variance for numerical stability.</param>
    /// <param name="momentum">Weight of the batch statistics in the running update; null leaves the running statistics unchanged, as in PyTorch.</param>
    /// <param name="affine">Whether the layer has learnable gamma (Weight) and beta (Bias).</param>
    /// <param name="trackRunningStats">Whether the layer keeps running statistics and uses them in eval mode.</param>
    /// <param name="layout">Channels in dimension 1 (default) or last, as PyTorch's channels_last tensors.</param>
    public InstanceNorm(int numFeatures, double eps = 1e-5, double? momentum = 0.1, bool affine = false, bool trackRunningStats = false,
        ChannelLayout layout = ChannelLayout.First)
        : base(numFeatures, eps, momentum, affine, trackRunningStats, layout)
    {
    }

    protected override string LayerName => "InstanceNorm";
    protected override int MinRank => 3;
    protected override string ShapeDescription =>
        Layout == ChannelLayout.Last ? "(N,L,C), (N,H,W,C) or (N,D,H,W,C)" : "(N,C,L), (N,C,H,W) or (N,C,D,H,W)";
    protected override bool CountsBatches => false;
    // PyTorch's F.instance_norm says "Expected more than 1 spatial element when training"; we say both.
    protected override string TooFewValuesMessage =>
        "Expected more than 1 value per channel when training (InstanceNorm needs more than 1 spatial element)";

    // Statistics per (sample, channel) over space: x[N, 1, C, 1, spatial], or channels last x[N, spatial, C, 1, 1].
    protected override NormGeometry MapGeometry(int batch, int channels, int spatial) =>
        Layout == ChannelLayout.Last ? new(batch, spatial, channels, 1, 1) : new(batch, 1, channels, 1, spatial);
}
