namespace SharpNorm.Tests.Support;

/// <summary>Double-precision central differences: the reference every analytic gradient is checked against.</summary>
public static class NumericalGradient
{
    private const double Step = 1e-6;

    /// <summary>Analytic and numerical derivatives agree to 1e-6, absolute and relative.</summary>
    public static IEqualityComparer<double> Agrees { get; } =
        EqualityComparer<double>.Create((analytic, numeric) => Math.Abs(analytic - numeric) <= 1e-6 + 1e-6 * Math.Abs(numeric));

    /// <summary>d loss / d variable[i] for every i, by (loss(v + h) - loss(v - h)) / 2h; variable is restored.</summary>
    public static double[] Central(Span<double> variable, Func<double> loss)
    {
        var gradient = new double[variable.Length];
        for (int i = 0; i < variable.Length; i++)
        {
            double saved = variable[i];
            variable[i] = saved + Step;
            double plus = loss();
            variable[i] = saved - Step;
            double minus = loss();
            variable[i] = saved;
            gradient[i] = (plus - minus) / (2 * Step);
        }
        return gradient;
    }
}
