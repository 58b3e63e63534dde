using System.Numerics;
using System.Numerics.Tensors;

namespace SharpNorm.Layers;

/// <summary>A NaN or infinity where <see cref="Sequential{T}.CheckFinite"/> or <see cref="Graph{T}.CheckFinite"/> looked for one: which layer made it, where, what.</summary>
public sealed class NonFiniteValueException(string layer, long index, double value, string message) : ArithmeticException(message)
{
    /// <summary>The layer (or node) whose output held it; "input" for the input.</summary>
    public string Layer { get; } = layer;

    /// <summary>Its flat index in that output.</summary>
    public long Index { get; } = index;

    /// <summary>NaN, +infinity or -infinity.</summary>
    public double Value { get; } = value;
}

internal static class FiniteCheck
{
    /// <summary>Throws <see cref="NonFiniteValueException"/> at the first NaN or infinity of <paramref name="values"/>.</summary>
    public static void Require<T>(ReadOnlySpan<T> values, string layer) where T : unmanaged, IFloatingPointIeee754<T>
    {
        // One SIMD pass: a finite sum of magnitudes means every value is finite; else (or on overflow) find the first.
        if (T.IsFinite(TensorPrimitives.SumOfMagnitudes(values))) return;
        for (int i = 0; i < values.Length; i++)
        {
            if (T.IsFinite(values[i])) continue;
            double value = double.CreateTruncating(values[i]);
            string where = layer == "input" ? "The input holds" : $"Layer {layer} produced";
            throw new NonFiniteValueException(layer, i, value, $"{where} {value} at index {i} of {values.Length} values{(layer == "input" ? "" : ", from finite inputs")}.");
        }
    }
}
