using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace SharpNorm.Kernels;

/// <summary>
/// The few vector operations the normalization kernels need, over one vector width.
/// Kernels are written once, generic over an <see cref="ISimd{T, TVector}"/> struct, and the JIT
/// specializes them per width (512/256/128 bits, or one lane for the scalar tail and fallback).
/// </summary>
internal interface ISimd<T, TVector>
    where T : unmanaged, IFloatingPointIeee754<T>
    where TVector : struct
{
    static abstract int Count { get; }
    static abstract TVector Zero { get; }
    static abstract TVector Broadcast(T value);
    static abstract TVector Add(TVector a, TVector b);
    static abstract TVector Subtract(TVector a, TVector b);
    static abstract TVector Multiply(TVector a, TVector b);
    /// <summary>Per lane: z &gt; 0 ? ifPositive : otherwise (NaN is not positive).</summary>
    static abstract TVector PositiveOr(TVector z, TVector ifPositive, TVector otherwise);
    static abstract TVector Load(ref T source, nint index);
    static abstract void Store(TVector value, ref T destination, nint index);
    /// <summary>A store that bypasses the caches; the destination must be pinned and aligned to the vector size.</summary>
    static abstract void StoreStreaming(TVector value, ref T destination, nint index);
    /// <summary>a * b + c, fused where the hardware has it.</summary>
    static abstract TVector MultiplyAdd(TVector a, TVector b, TVector c);
    static abstract T Sum(TVector value);
}

internal readonly struct Simd512<T> : ISimd<T, Vector512<T>> where T : unmanaged, IFloatingPointIeee754<T>
{
    public static bool IsUsable => Vector512.IsHardwareAccelerated && Vector512<T>.IsSupported;
    public static int Count => Vector512<T>.Count;
    public static Vector512<T> Zero => Vector512<T>.Zero;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<T> Broadcast(T value) => Vector512.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<T> Add(Vector512<T> a, Vector512<T> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<T> Subtract(Vector512<T> a, Vector512<T> b) => a - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<T> Multiply(Vector512<T> a, Vector512<T> b) => a * b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<T> PositiveOr(Vector512<T> z, Vector512<T> ifPositive, Vector512<T> otherwise) =>
        Vector512.ConditionalSelect(Vector512.GreaterThan(z, Vector512<T>.Zero), ifPositive, otherwise);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<T> Load(ref T source, nint index) => Vector512.LoadUnsafe(ref source, (nuint)index);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector512<T> value, ref T destination, nint index) => value.StoreUnsafe(ref destination, (nuint)index);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void StoreStreaming(Vector512<T> value, ref T destination, nint index) =>
        value.StoreAlignedNonTemporal((T*)Unsafe.AsPointer(ref Unsafe.Add(ref destination, index)));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<T> MultiplyAdd(Vector512<T> a, Vector512<T> b, Vector512<T> c)
    {
        if (typeof(T) == typeof(float))
            return Vector512.FusedMultiplyAdd(a.As<T, float>(), b.As<T, float>(), c.As<T, float>()).As<float, T>();
        if (typeof(T) == typeof(double))
            return Vector512.FusedMultiplyAdd(a.As<T, double>(), b.As<T, double>(), c.As<T, double>()).As<double, T>();
        return Vector512.Add(Vector512.Multiply(a, b), c);
    }
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T Sum(Vector512<T> value) => Vector512.Sum(value);
}

internal readonly struct Simd256<T> : ISimd<T, Vector256<T>> where T : unmanaged, IFloatingPointIeee754<T>
{
    public static bool IsUsable => Vector256.IsHardwareAccelerated && Vector256<T>.IsSupported;
    public static int Count => Vector256<T>.Count;
    public static Vector256<T> Zero => Vector256<T>.Zero;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<T> Broadcast(T value) => Vector256.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<T> Add(Vector256<T> a, Vector256<T> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<T> Subtract(Vector256<T> a, Vector256<T> b) => a - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<T> Multiply(Vector256<T> a, Vector256<T> b) => a * b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<T> PositiveOr(Vector256<T> z, Vector256<T> ifPositive, Vector256<T> otherwise) =>
        Vector256.ConditionalSelect(Vector256.GreaterThan(z, Vector256<T>.Zero), ifPositive, otherwise);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<T> Load(ref T source, nint index) => Vector256.LoadUnsafe(ref source, (nuint)index);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector256<T> value, ref T destination, nint index) => value.StoreUnsafe(ref destination, (nuint)index);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void StoreStreaming(Vector256<T> value, ref T destination, nint index) =>
        value.StoreAlignedNonTemporal((T*)Unsafe.AsPointer(ref Unsafe.Add(ref destination, index)));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<T> MultiplyAdd(Vector256<T> a, Vector256<T> b, Vector256<T> c)
    {
        if (typeof(T) == typeof(float))
            return Vector256.FusedMultiplyAdd(a.As<T, float>(), b.As<T, float>(), c.As<T, float>()).As<float, T>();
        if (typeof(T) == typeof(double))
            return Vector256.FusedMultiplyAdd(a.As<T, double>(), b.As<T, double>(), c.As<T, double>()).As<double, T>();
        return Vector256.Add(Vector256.Multiply(a, b), c);
    }
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T Sum(Vector256<T> value) => Vector256.Sum(value);
}

internal readonly struct Simd128<T> : ISimd<T, Vector128<T>> where T : unmanaged, IFloatingPointIeee754<T>
{
    public static bool IsUsable => Vector128.IsHardwareAccelerated && Vector128<T>.IsSupported;
    public static int Count => Vector128<T>.Count;
    public static Vector128<T> Zero => Vector128<T>.Zero;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<T> Broadcast(T value) => Vector128.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<T> Add(Vector128<T> a, Vector128<T> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<T> Subtract(Vector128<T> a, Vector128<T> b) => a - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<T> Multiply(Vector128<T> a, Vector128<T> b) => a * b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<T> PositiveOr(Vector128<T> z, Vector128<T> ifPositive, Vector128<T> otherwise) =>
        Vector128.ConditionalSelect(Vector128.GreaterThan(z, Vector128<T>.Zero), ifPositive, otherwise);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<T> Load(ref T source, nint index) => Vector128.LoadUnsafe(ref source, (nuint)index);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(Vector128<T> value, ref T destination, nint index) => value.StoreUnsafe(ref destination, (nuint)index);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void StoreStreaming(Vector128<T> value, ref T destination, nint index) =>
        value.StoreAlignedNonTemporal((T*)Unsafe.AsPointer(ref Unsafe.Add(ref destination, index)));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<T> MultiplyAdd(Vector128<T> a, Vector128<T> b, Vector128<T> c)
    {
        if (typeof(T) == typeof(float))
            return Vector128.FusedMultiplyAdd(a.As<T, float>(), b.As<T, float>(), c.As<T, float>()).As<float, T>();
        if (typeof(T) == typeof(double))
            return Vector128.FusedMultiplyAdd(a.As<T, double>(), b.As<T, double>(), c.As<T, double>()).As<double, T>();
        return Vector128.Add(Vector128.Multiply(a, b), c);
    }
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T Sum(Vector128<T> value) => Vector128.Sum(value);
}

/// <summary>The widest usable vector width, in bits, up to a limit (512, 256, 128; 0 for scalar code).</summary>
internal static class SimdWidth
{
    public static int Bits<T>(int maxBits) where T : unmanaged, IFloatingPointIeee754<T> =>
        maxBits >= 512 && Simd512<T>.IsUsable ? 512
        : maxBits >= 256 && Simd256<T>.IsUsable ? 256
        : maxBits >= 128 && Simd128<T>.IsUsable ? 128 : 0;
}

/// <summary>One lane: the scalar tail of every kernel, and the path when no vector unit is usable.</summary>
internal readonly struct SimdScalar<T> : ISimd<T, T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public static int Count => 1;
    public static T Zero => T.Zero;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T Broadcast(T value) => value;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T Add(T a, T b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T Subtract(T a, T b) => a - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T Multiply(T a, T b) => a * b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T PositiveOr(T z, T ifPositive, T otherwise) => z > T.Zero ? ifPositive : otherwise;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T Load(ref T source, nint index) => Unsafe.Add(ref source, index);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store(T value, ref T destination, nint index) => Unsafe.Add(ref destination, index) = value;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StoreStreaming(T value, ref T destination, nint index) => Unsafe.Add(ref destination, index) = value;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T MultiplyAdd(T a, T b, T c) => T.FusedMultiplyAdd(a, b, c);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static T Sum(T value) => value;
}
