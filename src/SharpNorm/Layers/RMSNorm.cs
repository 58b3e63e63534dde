using System.Numerics;

namespace SharpNorm.Layers;

/// <summary>
/// Root-mean-square normalization, the twin of torch.nn.RMSNorm: y = x / sqrt(mean(x²) + eps) * weight, the mean
/// square taken per input row over the trailing dimensions of <see cref="NormalizedShapeNorm{T}.NormalizedShape"/>.
/// No mean is subtracted and there is no bias. Training and eval compute the same.
/// </summary>
public sealed class RMSNorm<T> : NormalizedShapeNorm<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <param name="normalizedShape">The trailing dimensions normalized together.</param>
    /// <param name="eps">Added to the mean square; null (default) means the machine epsilon of T, as PyTorch (torch.finfo(dtype).eps).</param>
    /// <param name="elementwiseAffine">Whether the layer has a learnable Weight (gamma).</param>
    public RMSNorm(int[] normalizedShape, double? eps = null, bool elementwiseAffine = true)
        : base(normalizedShape, eps ?? MachineEpsilon, elementwiseAffine, bias: false)
    {
    }

    /// <summary>RMSNorm over the last dimension, of size <paramref name="normalizedSize"/>.</summary>
    public RMSNorm(int normalizedSize, double? eps = null, bool elementwiseAffine = true)
        : this([normalizedSize], eps, elementwiseAffine)
    {
    }

    /// <summary>The distance from 1 to the next larger T: 2^-23 for float, 2^-52 for double.</summary>
    public static double MachineEpsilon => double.CreateTruncating(T.BitIncrement(T.One) - T.One);

    protected override string LayerName => "RMSNorm";
    protected override bool SubtractsMean => false;
}
