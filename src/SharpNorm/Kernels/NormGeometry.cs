namespace SharpNorm.Kernels;

/// <summary>
/// How a contiguous (row-major) input is seen by the normalization engine: five axes
/// <c>x[a, r, b, j, s]</c>, <c>s</c> fastest. Statistics are taken per group <c>(a, b)</c> over
/// <c>(r, j, s)</c>; affine parameters are indexed by <c>(b, j)</c>.
/// </summary>
/// <remarks>
/// BatchNorm (N,C,*spatial) is (1, N, C, 1, prod(spatial)); InstanceNorm is (N, 1, C, 1, prod(spatial)).
/// See shared/design/norm-engine.md for the other layers.
/// </remarks>
public readonly record struct NormGeometry(int A, int R, int B, int J, int S)
{
    /// <summary>Number of statistics groups, A*B.</summary>
    public int GroupCount => A * B;

    /// <summary>Elements reduced into one group's statistics, R*J*S.</summary>
    public long GroupSize => (long)R * J * S;

    /// <summary>Number of affine parameters, B*J.</summary>
    public int ParameterCount => B * J;

    /// <summary>Number of (a, b, j) triples: one scale/shift pair each.</summary>
    public int CoefficientCount => A * B * J;

    /// <summary>Total number of elements.</summary>
    public long Length => (long)A * R * B * J * S;

    /// <summary>
    /// True when the contiguous run of one group is a single element and rows repeat (BatchNorm1d on (N,C),
    /// channels-last): kernels then vectorize across the row instead of along runs.
    /// </summary>
    internal bool IsColumnShape => S == 1 && R > 1;

    /// <summary>
    /// True when each group is one contiguous row of J elements whose parameters change along the row (LayerNorm,
    /// RMSNorm): kernels then normalize row by row, reading gamma and beta alongside x.
    /// </summary>
    internal bool IsRowShape => R == 1 && B == 1 && S == 1;

    /// <summary>Offset of element (a, r, b, j, 0).</summary>
    internal nint Offset(int a, int r, int b, int j) => ((((nint)a * R + r) * B + b) * J + j) * S;
}
