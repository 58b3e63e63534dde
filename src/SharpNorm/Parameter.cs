using System.Numerics.Tensors;

namespace SharpNorm;

/// <summary>A learnable tensor and the gradient accumulated for it.</summary>
public sealed class Parameter<T>
{
    internal Parameter(string name, ReadOnlySpan<nint> lengths, T initialValue)
    {
        Name = name;
        Value = Tensor.CreateFromShape<T>(lengths);
        Value.Fill(initialValue);
        Gradient = Tensor.CreateFromShape<T>(lengths);
    }

    /// <summary>The parameter's name in its layer, as in PyTorch's state_dict ("weight", "bias").</summary>
    public string Name { get; }

    /// <summary>The current value; update it in place.</summary>
    public Tensor<T> Value { get; }

    /// <summary>The accumulated gradient; layers add to it, <c>ZeroGrad</c> clears it.</summary>
    public Tensor<T> Gradient { get; }

    /// <summary>Sets the gradient to zero.</summary>
    public void ZeroGrad() => Gradient.Clear();
}
