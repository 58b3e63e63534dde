using System.Numerics;

namespace SharpNorm.Kernels;

/// <summary>
/// The normalization engine shared by every norm layer: statistics, the fused normalize + affine pass,
/// and the closed-form backward with its two reductions. It owns the statistics of the last forward
/// and all scratch buffers, so after the first call at a given size no call allocates.
/// </summary>
/// <remarks>
/// Per group g = (a, b) the engine keeps a center c (a value of the group, or the running mean),
/// the mean and 1/sqrt(var + eps). Kernels work on x - c, which keeps float sums and the
/// normalized output accurate even when the mean is large against the spread.
/// </remarks>
public sealed class NormEngine<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private double[] _groupMean = [];
    private double[] _groupVariance = [];
    private double[] _groupInvStd = [];
    private T[] _center = [];   // per (a, b, j): the group's center, repeated over j
    private T[] _p = [];        // per (a, b, j) coefficients of the apply kernels
    private T[] _q = [];
    private T[] _w = [];
    private double[] _sumDy = [];      // per (a, b, j): Σ dy
    private double[] _sumDyXhat = [];  // per (a, b, j): Σ dy * xhat
    private T[] _rowScratch = [];

    /// <summary>Widest vector the kernels may use, in bits (512, 256, 128; 0 for scalar code). Lower it to exercise narrower paths.</summary>
    public int MaxVectorBits { get; set; } = 512;

    /// <summary>Most threads a call may use; -1 for all cores.</summary>
    public int MaxDegreeOfParallelism { get; set; } = -1;

    /// <summary>The geometry of the statistics currently held.</summary>
    public NormGeometry Geometry { get; private set; }

    /// <summary>Per-group means of the last statistics computed or loaded.</summary>
    public ReadOnlySpan<double> GroupMean => _groupMean.AsSpan(0, Geometry.GroupCount);

    /// <summary>Per-group biased variances of the last batch statistics.</summary>
    public ReadOnlySpan<double> GroupVariance => _groupVariance.AsSpan(0, Geometry.GroupCount);

    /// <summary>Per-group 1/sqrt(var + eps) in use.</summary>
    public ReadOnlySpan<double> GroupInvStd => _groupInvStd.AsSpan(0, Geometry.GroupCount);

    /// <summary>
    /// Computes the batch statistics of x (mean and biased variance per group) and makes them the
    /// statistics in use with the given eps.
    /// </summary>
    public void UseBatchStatistics(in NormGeometry g, ReadOnlySpan<T> x, double eps)
    {
        Prepare(g);
        // The first element of each group is its center: close to the mean for any sane data.
        for (int a = 0; a < g.A; a++)
            for (int b = 0; b < g.B; b++)
            {
                T c = x[(int)g.Offset(a, 0, b, 0)];
                _center.AsSpan(((a * g.B) + b) * g.J, g.J).Fill(c);
            }

        NormKernels<T>.PairSums<MomentsOp>(MaxVectorBits, g, x, default, _center, _sumDy, _sumDyXhat, _rowScratch);

        double count = g.GroupSize;
        for (int group = 0; group < g.GroupCount; group++)
        {
            double shiftedSum = 0, shiftedSquares = 0;
            for (int j = 0; j < g.J; j++)
            {
                shiftedSum += _sumDy[group * g.J + j];
                shiftedSquares += _sumDyXhat[group * g.J + j];
            }
            double shiftedMean = shiftedSum / count;
            double variance = (shiftedSquares - shiftedSum * shiftedMean) / count;
            _groupMean[group] = double.CreateTruncating(_center[group * g.J]) + shiftedMean;
            _groupVariance[group] = variance < 0 ? 0 : variance; // rounding can dip below zero; NaN stays NaN
            _groupInvStd[group] = 1.0 / Math.Sqrt(_groupVariance[group] + eps);
        }
    }

    /// <summary>
    /// Makes given per-b statistics (running mean and variance) the statistics in use for every group (a, b).
    /// </summary>
    public void UseFixedStatistics(in NormGeometry g, ReadOnlySpan<T> mean, ReadOnlySpan<T> variance, double eps)
    {
        Prepare(g);
        for (int a = 0; a < g.A; a++)
            for (int b = 0; b < g.B; b++)
            {
                int group = a * g.B + b;
                _groupMean[group] = double.CreateTruncating(mean[b]);
                _groupVariance[group] = double.CreateTruncating(variance[b]);
                _groupInvStd[group] = 1.0 / Math.Sqrt(_groupVariance[group] + eps);
                _center.AsSpan(group * g.J, g.J).Fill(mean[b]);
            }
    }

    /// <summary>y = (x - mean) * invstd * gamma + beta in one pass; gamma/beta (length B*J) may be empty for no affine.</summary>
    public void Normalize(ReadOnlySpan<T> x, Span<T> y, ReadOnlySpan<T> gamma, ReadOnlySpan<T> beta)
    {
        NormGeometry g = Geometry;
        for (int group = 0; group < g.GroupCount; group++)
        {
            double invStd = _groupInvStd[group];
            for (int j = 0; j < g.J; j++)
            {
                int k = group * g.J + j, parameter = (group % g.B) * g.J + j;
                double scale = gamma.IsEmpty ? invStd : double.CreateTruncating(gamma[parameter]) * invStd;
                double shift = beta.IsEmpty ? 0 : double.CreateTruncating(beta[parameter]);
                // y = (x - c) * scale + (beta + (c - mean) * scale)
                _p[k] = T.CreateTruncating(scale);
                _q[k] = T.CreateTruncating(shift + (double.CreateTruncating(_center[k]) - _groupMean[group]) * scale);
            }
        }
        NormKernels<T>.Apply<NormalizeOp>(MaxVectorBits, g, x, default, y, _center, _p, _q, _q);
    }

    /// <summary>
    /// The backward reductions Σ dy and Σ dy * xhat per (a, b, j), in one pass over x and dy.
    /// They are both the parameter gradients (summed over a) and the terms of the input gradient.
    /// </summary>
    public void ComputeGradientSums(ReadOnlySpan<T> x, ReadOnlySpan<T> dy)
    {
        NormGeometry g = Geometry;
        NormKernels<T>.PairSums<GradientSumsOp>(MaxVectorBits, g, x, dy, _center, _sumDy, _sumDyXhat, _rowScratch);
        for (int k = 0; k < g.CoefficientCount; k++)
        {
            int group = k / g.J;
            // Σ dy * xhat = invstd * (Σ dy * (x - c) + (c - mean) * Σ dy)
            double offset = double.CreateTruncating(_center[k]) - _groupMean[group];
            _sumDyXhat[k] = _groupInvStd[group] * (_sumDyXhat[k] + offset * _sumDy[k]);
        }
    }

    /// <summary>
    /// dx for the statistics in use. With <paramref name="throughStatistics"/> (statistics of this batch) the full
    /// closed form dx = gamma*invstd/M * (M*dy - Σdy - xhat*Σ dy*xhat), which needs <see cref="ComputeGradientSums"/>
    /// first; otherwise (fixed statistics) dx = gamma*invstd*dy.
    /// </summary>
    public void InputGradient(ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx, ReadOnlySpan<T> gamma, bool throughStatistics)
    {
        NormGeometry g = Geometry;
        double count = g.GroupSize;
        for (int group = 0; group < g.GroupCount; group++)
        {
            double invStd = _groupInvStd[group];
            double sumG = 0, sumGXhat = 0; // Σ gamma*dy and Σ gamma*dy*xhat over the group
            if (throughStatistics)
            {
                for (int j = 0; j < g.J; j++)
                {
                    int k = group * g.J + j;
                    double gammaJ = gamma.IsEmpty ? 1 : double.CreateTruncating(gamma[(group % g.B) * g.J + j]);
                    sumG += gammaJ * _sumDy[k];
                    sumGXhat += gammaJ * _sumDyXhat[k];
                }
            }
            // dx = invstd * (gamma*dy - Σg/M - xhat * Σg*xhat/M), xhat = (x - c)*invstd + (c - mean)*invstd
            double slope = -invStd * invStd * sumGXhat / count;
            for (int j = 0; j < g.J; j++)
            {
                int k = group * g.J + j;
                double gammaJ = gamma.IsEmpty ? 1 : double.CreateTruncating(gamma[(group % g.B) * g.J + j]);
                double offset = double.CreateTruncating(_center[k]) - _groupMean[group];
                _p[k] = T.CreateTruncating(gammaJ * invStd);
                _q[k] = T.CreateTruncating(slope);
                _w[k] = T.CreateTruncating(-invStd * sumG / count + slope * offset);
            }
        }

        if (throughStatistics)
        {
            NormKernels<T>.Apply<InputGradientOp>(MaxVectorBits, g, x, dy, dx, _center, _p, _q, _w);
        }
        else
        {
            // Fixed statistics: dx = p * dy, the normalize kernel on dy with a zero center and shift.
            _center.AsSpan(0, g.CoefficientCount).CopyTo(_rowScratch.AsSpan(0, g.CoefficientCount));
            _center.AsSpan(0, g.CoefficientCount).Clear();
            _q.AsSpan(0, g.CoefficientCount).Clear();
            NormKernels<T>.Apply<NormalizeOp>(MaxVectorBits, g, dy, default, dx, _center, _p, _q, _q);
            _rowScratch.AsSpan(0, g.CoefficientCount).CopyTo(_center.AsSpan(0, g.CoefficientCount));
        }
    }

    /// <summary>Adds the parameter gradients from the last <see cref="ComputeGradientSums"/>: dgamma += Σ dy*xhat, dbeta += Σ dy, summed over a.</summary>
    public void AccumulateParameterGradients(Span<T> gammaGradient, Span<T> betaGradient)
    {
        NormGeometry g = Geometry;
        for (int parameter = 0; parameter < g.ParameterCount; parameter++)
        {
            int b = parameter / g.J, j = parameter % g.J;
            double dGamma = 0, dBeta = 0;
            for (int a = 0; a < g.A; a++)
            {
                int k = (a * g.B + b) * g.J + j;
                dGamma += _sumDyXhat[k];
                dBeta += _sumDy[k];
            }
            gammaGradient[parameter] += T.CreateTruncating(dGamma);
            betaGradient[parameter] += T.CreateTruncating(dBeta);
        }
    }

    private void Prepare(in NormGeometry g)
    {
        Geometry = g;
        Grow(ref _groupMean, g.GroupCount);
        Grow(ref _groupVariance, g.GroupCount);
        Grow(ref _groupInvStd, g.GroupCount);
        int coefficients = g.CoefficientCount;
        Grow(ref _center, coefficients);
        Grow(ref _p, coefficients);
        Grow(ref _q, coefficients);
        Grow(ref _w, coefficients);
        Grow(ref _sumDy, coefficients);
        Grow(ref _sumDyXhat, coefficients);
        Grow(ref _rowScratch, Math.Max(2 * g.B * g.J, coefficients));
    }

    private static void Grow<TElement>(ref TElement[] buffer, int length)
    {
        if (buffer.Length < length) buffer = new TElement[length];
    }
}
