using System.Numerics;
using SharpNorm.Kernels;

namespace SharpNorm.Tests.Support;

/// <summary>Which of the row shape's paths a test forces (LayerNorm, RMSNorm), whatever the row length.</summary>
public enum RowPath
{
    /// <summary>One thread per row, forward and backward.</summary>
    Narrow,
    /// <summary>All threads on one block of rows, each on its own columns, forward and backward.</summary>
    Wide,
    /// <summary>
    /// The narrow forward with the wide backward: what wide rows under <see cref="NormEngine{T}.WideForwardRowBytes"/>
    /// get. Only with at least <see cref="NormEngine{T}.NarrowForwardMinRows"/> rows; fewer take the wide forward.
    /// </summary>
    NarrowForwardWideBackward,
}

public static class RowPaths
{
    public static readonly RowPath[] All = [RowPath.Narrow, RowPath.Wide, RowPath.NarrowForwardWideBackward];

    /// <summary>Sets the engine's row-length thresholds so that every row takes <paramref name="path"/>.</summary>
    public static void Force<T>(NormEngine<T> engine, RowPath path) where T : unmanaged, IFloatingPointIeee754<T>
    {
        engine.WideRowMinBytes = path == RowPath.Narrow ? long.MaxValue : 0;
        engine.WideForwardMinBytes = path == RowPath.Wide ? 0 : long.MaxValue;
    }
}
