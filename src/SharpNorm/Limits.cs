namespace SharpNorm;

/// <summary>
/// The largest tensor a layer builds for one parameter or statistic. Sizes come from callers and files: a layer of
/// 2^30 features or a (65536, 65536, 3, 3) weight is refused with its shape named instead of exhausting memory.
/// </summary>
public static class Limits
{
    private static long _maxParameterValues = 1L << 28;

    /// <summary>
    /// Most values one parameter or buffer may hold: 2^28 by default (1 GiB of float32, as much again for its
    /// gradient). Raise it, up to what an array holds, to build larger layers.
    /// </summary>
    public static long MaxParameterValues
    {
        get => _maxParameterValues;
        set => _maxParameterValues = value is > 0 && value <= 0x7FFFFFC7
            ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, $"MaxParameterValues must be in [1, {Array.MaxLength}].");
    }

    /// <summary>Refuses a parameter or buffer of more values than <see cref="MaxParameterValues"/>, before anything is allocated.</summary>
    internal static void RequireParameter(string name, ReadOnlySpan<nint> shape)
    {
        double values = 1;
        foreach (nint d in shape)
        {
            if (d < 0) throw new ArgumentOutOfRangeException(nameof(shape), $"The {name} of shape ({string.Join(", ", shape.ToArray())}) has a negative length.");
            values *= d;
        }
        if (values > Math.Min(MaxParameterValues, Array.MaxLength))
            throw new ArgumentOutOfRangeException(nameof(shape),
                $"The {name} of shape ({string.Join(", ", shape.ToArray())}) would hold {values:N0} values; the limit is Limits.MaxParameterValues = {MaxParameterValues:N0}.");
    }
}
