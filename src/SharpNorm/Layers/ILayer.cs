using System.Numerics;
using System.Numerics.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// The contract every layer shares, norm layers included (mlpack's ann layers, PyTorch's modules):
/// <see cref="Forward"/> writes the output, <see cref="Backward"/> the gradient with respect to the input, and
/// <see cref="Gradient"/> accumulates the gradients with respect to the layer's parameters. Backward and Gradient take
/// the input of the last Forward and dL/dy. Layers own their buffers: the span overloads allocate nothing per call.
/// </summary>
public interface ILayer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>The shape Forward writes for an input of <paramref name="inputShape"/>; throws ArgumentException (naming the expected and the actual shape) for an input the layer cannot take.</summary>
    nint[] OutputShape(ReadOnlySpan<nint> inputShape);

    /// <summary>Writes the layer's output for x into y (of <see cref="OutputShape"/>).</summary>
    void Forward(ReadOnlyTensorSpan<T> x, TensorSpan<T> y);

    /// <summary>Writes dL/dx into dx for the last Forward on x, given dy = dL/dy.</summary>
    void Backward(ReadOnlyTensorSpan<T> x, ReadOnlyTensorSpan<T> dy, TensorSpan<T> dx);

    /// <summary>Adds dL/dparameter for the last Forward on x into each parameter's Gradient.</summary>
    void Gradient(ReadOnlyTensorSpan<T> x, ReadOnlyTensorSpan<T> dy);

    /// <summary>Training mode (default) or eval mode.</summary>
    bool Training { get; set; }

    /// <summary>Most threads a call may use; -1 for all cores. Results are bit-identical for any value.</summary>
    int MaxDegreeOfParallelism { get; set; }

    /// <summary>Learnable parameters, named as in PyTorch's state_dict ("weight", "bias").</summary>
    IEnumerable<Parameter<T>> Parameters { get; }

    /// <summary>State that is saved but not learned (running statistics), named as in PyTorch's state_dict.</summary>
    IEnumerable<LayerBuffer<T>> Buffers { get; }
}

/// <summary>
/// A named buffer of a layer: a tensor of T (running_mean, running_var) or an integer counter
/// (num_batches_tracked, saved as int64).
/// </summary>
public sealed class LayerBuffer<T>
{
    private readonly Func<long>? _getCount;
    private readonly Action<long>? _setCount;

    public LayerBuffer(string name, Tensor<T> values)
    {
        Name = name;
        Values = values;
    }

    public LayerBuffer(string name, Func<long> getCount, Action<long> setCount)
    {
        Name = name;
        _getCount = getCount;
        _setCount = setCount;
    }

    public string Name { get; }

    /// <summary>The values of a tensor buffer; null for a counter.</summary>
    public Tensor<T>? Values { get; }

    /// <summary>Whether this is an integer counter rather than a tensor.</summary>
    public bool IsCount => Values is null;

    /// <summary>The counter's value (counters only).</summary>
    public long Count
    {
        get => _getCount?.Invoke() ?? throw new InvalidOperationException($"Buffer {Name} is a tensor, not a counter.");
        set
        {
            if (_setCount is null) throw new InvalidOperationException($"Buffer {Name} is a tensor, not a counter.");
            _setCount(value);
        }
    }
}
