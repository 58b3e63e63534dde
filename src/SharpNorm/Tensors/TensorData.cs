using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace SharpNorm.Tensors;

/// <summary>Flat access to dense row-major tensors, and shape formatting for error messages.</summary>
internal static class TensorData
{
    /// <summary>The elements of a row-major contiguous tensor span as one flat span.</summary>
    public static ReadOnlySpan<T> Flat<T>(in ReadOnlyTensorSpan<T> tensor, string name)
    {
        RequireRowMajor(tensor.Lengths, tensor.Strides, name);
        int length = checked((int)tensor.FlattenedLength);
        if (length == 0) return [];
        return MemoryMarshal.CreateReadOnlySpan(ref Unsafe.AsRef(in tensor.GetPinnableReference()), length);
    }

    /// <inheritdoc cref="Flat{T}(in ReadOnlyTensorSpan{T}, string)"/>
    public static Span<T> Flat<T>(in TensorSpan<T> tensor, string name)
    {
        RequireRowMajor(tensor.Lengths, tensor.Strides, name);
        int length = checked((int)tensor.FlattenedLength);
        if (length == 0) return [];
        return MemoryMarshal.CreateSpan(ref tensor.GetPinnableReference(), length);
    }

    /// <summary>The elements of a tensor the library created itself (parameters, buffers).</summary>
    public static Span<T> Flat<T>(Tensor<T> tensor)
    {
        RequireRowMajor(tensor.Lengths, tensor.Strides, "tensor");
        return MemoryMarshal.CreateSpan(ref tensor.GetPinnableReference(), checked((int)tensor.FlattenedLength));
    }

    /// <summary>A dense row-major tensor of the given shape with uninitialized contents.</summary>
    public static Tensor<T> Create<T>(ReadOnlySpan<nint> lengths) => Tensor.CreateFromShapeUninitialized<T>(lengths);

    /// <summary>A dense row-major tensor holding the elements of a tensor that may be strided.</summary>
    public static Tensor<T> Contiguous<T>(Tensor<T> tensor)
    {
        if (IsRowMajor(tensor.Lengths, tensor.Strides)) return tensor;
        Tensor<T> copy = Create<T>(tensor.Lengths);
        tensor.CopyTo(copy);
        return copy;
    }

    public static bool IsRowMajor(ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides)
    {
        nint expected = 1;
        for (int d = lengths.Length - 1; d >= 0; d--)
        {
            if (lengths[d] != 1 && strides[d] != expected) return false;
            expected *= lengths[d];
        }
        return true;
    }

    public static bool SameShape(ReadOnlySpan<nint> a, ReadOnlySpan<nint> b) => a.SequenceEqual(b);

    /// <summary>"(2, 3, 4, 5)", as PyTorch prints torch.Size.</summary>
    public static string Format(ReadOnlySpan<nint> lengths)
    {
        if (lengths.Length == 1) return $"({lengths[0]},)";
        var parts = new string[lengths.Length];
        for (int d = 0; d < lengths.Length; d++) parts[d] = lengths[d].ToString();
        return "(" + string.Join(", ", parts) + ")";
    }

    private static void RequireRowMajor(ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides, string name)
    {
        if (!IsRowMajor(lengths, strides))
            throw new ArgumentException(
                $"Expected {name} to be a dense row-major (contiguous) tensor; got shape {Format(lengths)} with strides {Format(strides)}.", name);
    }
}
