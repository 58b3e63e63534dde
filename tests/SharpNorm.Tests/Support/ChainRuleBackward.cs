using System.Numerics;
using SharpNorm.Kernels;

namespace SharpNorm.Tests.Support;

/// <summary>
/// The step-by-step computation-graph backward of batch statistics normalization, as mlpack's BatchNorm::Backward
/// and darknet's backward_batchnorm_layer write it: dxhat -> dvar -> dmean -> dx, one pass and one intermediate
/// each. The reference the compact closed form is checked against (tests) and timed against (bench).
/// </summary>
public static class ChainRuleBackward<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <param name="g">The engine geometry of x (groups (a, b), elements (r, j, s)).</param>
    /// <param name="mean">Per-group batch mean saved by the forward pass.</param>
    /// <param name="variance">Per-group biased batch variance saved by the forward pass.</param>
    /// <param name="gamma">Per-(b, j) scale; empty for no affine.</param>
    /// <param name="dxhat">Scratch of x's length.</param>
    /// <param name="dvar">Scratch, one per group.</param>
    /// <param name="dmean">Scratch, one per group.</param>
    public static void Backward(in NormGeometry g, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, ReadOnlySpan<T> gamma,
        ReadOnlySpan<T> mean, ReadOnlySpan<T> variance, T eps, Span<T> dx, Span<T> dxhat, Span<T> dvar, Span<T> dmean)
    {
        T m = T.CreateTruncating(g.GroupSize);
        T two = T.CreateTruncating(2), minusHalf = T.CreateTruncating(-0.5), threeHalves = T.CreateTruncating(1.5);
        int groups = g.GroupCount;

        // 1. dxhat = dy * gamma
        for (int a = 0; a < g.A; a++)
            for (int r = 0; r < g.R; r++)
                for (int b = 0; b < g.B; b++)
                    for (int j = 0; j < g.J; j++)
                    {
                        int offset = (int)g.Offset(a, r, b, j);
                        T scale = gamma.IsEmpty ? T.One : gamma[b * g.J + j];
                        for (int s = 0; s < g.S; s++) dxhat[offset + s] = dy[offset + s] * scale;
                    }

        // 2. dvar = Σ dxhat * (x - mean) * -1/2 * (var + eps)^(-3/2)
        dvar[..groups].Clear();
        for (int a = 0; a < g.A; a++)
            for (int r = 0; r < g.R; r++)
                for (int b = 0; b < g.B; b++)
                    for (int j = 0; j < g.J; j++)
                    {
                        int offset = (int)g.Offset(a, r, b, j), group = a * g.B + b;
                        for (int s = 0; s < g.S; s++) dvar[group] += dxhat[offset + s] * (x[offset + s] - mean[group]);
                    }
        for (int group = 0; group < groups; group++)
            dvar[group] *= minusHalf * T.Pow(variance[group] + eps, -threeHalves);

        // 3. dmean = Σ -dxhat / sqrt(var + eps) + dvar * Σ -2 (x - mean) / M
        dmean[..groups].Clear();
        for (int a = 0; a < g.A; a++)
            for (int r = 0; r < g.R; r++)
                for (int b = 0; b < g.B; b++)
                    for (int j = 0; j < g.J; j++)
                    {
                        int offset = (int)g.Offset(a, r, b, j), group = a * g.B + b;
                        T std = T.Sqrt(variance[group] + eps);
                        T dmeanHat = T.Zero, centered = T.Zero;
                        for (int s = 0; s < g.S; s++)
                        {
                            dmeanHat -= dxhat[offset + s] / std;
                            centered -= two * (x[offset + s] - mean[group]);
                        }
                        dmean[group] += dmeanHat + dvar[group] * centered / m;
                    }

        // 4. dx = dxhat / sqrt(var + eps) + dvar * 2 (x - mean) / M + dmean / M
        for (int a = 0; a < g.A; a++)
            for (int r = 0; r < g.R; r++)
                for (int b = 0; b < g.B; b++)
                    for (int j = 0; j < g.J; j++)
                    {
                        int offset = (int)g.Offset(a, r, b, j), group = a * g.B + b;
                        T std = T.Sqrt(variance[group] + eps);
                        for (int s = 0; s < g.S; s++)
                            dx[offset + s] = dxhat[offset + s] / std + dvar[group] * two * (x[offset + s] - mean[group]) / m + dmean[group] / m;
                    }
    }
}
