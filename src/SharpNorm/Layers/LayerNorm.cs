using System.Numerics;

namespace SharpNorm.Layers;

/// <summary>
/// Layer normalization, the twin of torch.nn.LayerNorm: statistics (mean, biased variance) per input row over the
/// trailing dimensions of <see cref="NormalizedShapeNorm{T}.NormalizedShape"/>; Weight and Bias of that shape.
/// Training and eval compute the same.
/// </summary>
public sealed class LayerNorm<T> : NormalizedShapeNorm<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <param name="normalizedShape">The trailing dimensions normalized together, e.g. [C, H, W] or [hidden].</param>
    /// <param name="eps">Added to the variance for numerical stability.</param>
    /// <param name="elementwiseAffine">Whether the layer has learnable Weight (gamma) and, with <paramref name="bias"/>, Bias (beta).</param>
    /// <param name="bias">Whether an affine layer has Bias (PyTorch's bias argument).</param>
    public LayerNorm(int[] normalizedShape, double eps = 1e-5, bool elementwiseAffine = true, bool bias = true)
        : base(normalizedShape, eps, elementwiseAffine, bias)
    {
    }

    /// <summary>LayerNorm over the last dimension, of size <paramref name="normalizedSize"/>.</summary>
    public LayerNorm(int normalizedSize, double eps = 1e-5, bool elementwiseAffine = true, bool bias = true)
        : this([normalizedSize], eps, elementwiseAffine, bias)
    {
    }

    protected override string LayerName => "LayerNorm";
}
