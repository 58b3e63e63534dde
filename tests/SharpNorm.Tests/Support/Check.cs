using System.Numerics;
using System.Numerics.Tensors;
using Xunit;

namespace SharpNorm.Tests.Support;

public static class Check
{
    /// <summary>|actual - expected| &lt;= atol + rtol*|expected| elementwise; NaN where NaN is expected, equal infinities.</summary>
    public static void Close<T>(ReadOnlySpan<T> expected, ReadOnlySpan<T> actual, double rtol, double atol, string what)
        where T : IFloatingPointIeee754<T>
    {
        Assert.True(expected.Length == actual.Length, $"{what}: length {actual.Length}, expected {expected.Length}");
        for (int i = 0; i < expected.Length; i++)
        {
            double e = double.CreateTruncating(expected[i]), a = double.CreateTruncating(actual[i]);
            if (double.IsNaN(e) || double.IsInfinity(e))
            {
                Assert.True(e.Equals(a), $"{what}[{i}]: got {a}, expected {e}");
                continue;
            }
            Assert.True(Math.Abs(a - e) <= atol + rtol * Math.Abs(e), $"{what}[{i}]: got {a:R}, expected {e:R} (diff {Math.Abs(a - e):E2})");
        }
    }

    public static void Close<T>(ReadOnlySpan<T> expected, Tensor<T> actual, double rtol, double atol, string what)
        where T : IFloatingPointIeee754<T> => Close(expected, Values(actual), rtol, atol, what);

    public static T[] Values<T>(Tensor<T> tensor) => tensor.ToArray();

    public static T[] ToArray<T>(this Tensor<T> tensor)
    {
        var values = new T[tensor.FlattenedLength];
        int i = 0;
        foreach (T v in tensor) values[i++] = v;
        return values;
    }
}

/// <summary>Seeded normal samples for test inputs.</summary>
public sealed class Gaussian(int seed)
{
    private readonly Random _random = new(seed);

    public double Next()
    {
        double u1 = 1.0 - _random.NextDouble(), u2 = _random.NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
    }

    public double Uniform(double low, double high) => low + (high - low) * _random.NextDouble();

    public T[] Array<T>(long length, double scale = 1, double offset = 0) where T : IFloatingPointIeee754<T>
    {
        var values = new T[length];
        for (long i = 0; i < length; i++) values[i] = T.CreateTruncating(offset + scale * Next());
        return values;
    }

    public Tensor<T> Tensor<T>(nint[] shape, double scale = 1, double offset = 0) where T : IFloatingPointIeee754<T>
    {
        long length = shape.Aggregate(1L, (p, d) => p * d);
        return System.Numerics.Tensors.Tensor.Create(Array<T>(length, scale, offset), shape);
    }
}
