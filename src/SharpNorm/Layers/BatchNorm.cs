using System.Numerics;
using SharpNorm.Kernels;

namespace SharpNorm.Layers;

/// <summary>
/// Batch normalization, the twin of torch.nn.BatchNorm1d/2d/3d in one class: input (N,C), (N,C,L),
/// (N,C,H,W) or (N,C,D,H,W) (or channels last); statistics per channel over the batch and all spatial positions.
/// </summary>
public sealed class BatchNorm<T> : RunningStatsNorm<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <param name="numFeatures">C, the number of channels (dimension 1 of the input).</param>
    /// <param name="eps">Added to the variance for numerical stability.</param>
    /// <param name="momentum">Weight of the batch statistics in the running update; null for a cumulative moving average.</param>
    /// <param name="affine">Whether the layer has learnable gamma (Weight) and beta (Bias).</param>
    /// <param name="trackRunningStats">Whether the layer keeps running statistics and uses them in eval mode.</param>
    /// <param name="layout">Channels in dimension 1 (default) or last, as PyTorch's channels_last tensors.</param>
    /// <param name="unbiasedNormalization">
    /// Training normalizes by the unbiased batch variance, as darknet's BatchNorm does, instead of the biased one
    /// (PyTorch's, the default). The running variance is the unbiased one either way; eval mode is unchanged.
    /// </param>
    public BatchNorm(int numFeatures, double eps = 1e-5, double? momentum = 0.1, bool affine = true, bool trackRunningStats = true,
        ChannelLayout layout = ChannelLayout.First, bool unbiasedNormalization = false)
        : base(numFeatures, eps, momentum, affine, trackRunningStats, layout)
    {
        UnbiasedNormalization = unbiasedNormalization;
    }

    /// <summary>Whether training normalizes by the unbiased batch variance (darknet) rather than the biased one (PyTorch).</summary>
    public bool UnbiasedNormalization { get; }

    protected override bool NormalizesByUnbiasedVariance => UnbiasedNormalization;

    protected override string LayerName => "BatchNorm";
    protected override int MinRank => 2;
    protected override string ShapeDescription =>
        Layout == ChannelLayout.Last ? "(N,C), (N,L,C), (N,H,W,C) or (N,D,H,W,C)" : "(N,C), (N,C,L), (N,C,H,W) or (N,C,D,H,W)";
    protected override bool CountsBatches => true;
    protected override string TooFewValuesMessage => "Expected more than 1 value per channel when training";

    // Statistics per channel over batch and space: x[1, N, C, 1, spatial], or channels last x[1, N*spatial, C, 1, 1].
    protected override NormGeometry MapGeometry(int batch, int channels, int spatial) =>
        Layout == ChannelLayout.Last ? new(1, batch * spatial, channels, 1, 1) : new(1, batch, channels, 1, spatial);
}
