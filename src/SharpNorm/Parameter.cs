using System.Numerics.Tensors;
using SharpNorm.Tensors;

namespace SharpNorm;

/// <summary>A learnable tensor and the gradient accumulated for it.</summary>
public sealed class Parameter<T>
{
    internal Parameter(string name, ReadOnlySpan<nint> lengths, T initialValue)
    {
        Limits.RequireParameter($"parameter '{name}'", lengths);
        Name = name;
        Value = Tensor.CreateFromShape<T>(lengths);
        TensorData.Flat(Value).Fill(initialValue);
        Gradient = Tensor.CreateFromShape<T>(lengths);
    }

    /// <summary>The parameter's name in its layer, as in PyTorch's state_dict ("weight", "bias").</summary>
    public string Name { get; }

    /// <summary>The current value; update it in place.</summary>
    public Tensor<T> Value { get; }

    /// <summary>The accumulated gradient; layers add to it, <c>ZeroGrad</c> clears it.</summary>
    public Tensor<T> Gradient { get; }

    /// <summary>Sets the gradient to zero.</summary>
    /// <remarks>Through the flat span: Tensor&lt;T&gt;.Clear walks a tensor of rank 2 or more element by element, 50x slower.</remarks>
    public void ZeroGrad() => TensorData.Flat(Gradient).Clear();
}
