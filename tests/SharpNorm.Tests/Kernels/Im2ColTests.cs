using SharpNorm.Kernels;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Kernels;

/// <summary>The column matrix against its definition, on the geometries whose rows go by shifted contiguous copies and others.</summary>
public class Im2ColTests
{
    [Theory]
    [InlineData(3, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1)]      // 3x3 "same"
    [InlineData(2, 14, 9, 3, 3, 1, 1, 1, 1, 1, 1)]
    [InlineData(2, 6, 5, 5, 5, 1, 1, 2, 2, 1, 1)]      // 5x5 "same"
    [InlineData(2, 2, 2, 5, 5, 1, 1, 2, 2, 1, 1)]      // shifts wider than the image
    [InlineData(1, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1)]
    [InlineData(2, 8, 9, 3, 3, 1, 1, 2, 2, 2, 2)]      // dilated "same"
    [InlineData(2, 5, 9, 1, 3, 1, 1, 0, 1, 1, 1)]
    [InlineData(2, 5, 4, 3, 1, 1, 1, 1, 0, 1, 1)]
    [InlineData(2, 6, 7, 3, 3, 1, 1, 3, 1, 1, 1)]      // taller padding: more output rows than input rows
    [InlineData(2, 9, 8, 3, 3, 2, 2, 1, 1, 1, 1)]      // strided: the row-by-row path
    [InlineData(2, 7, 7, 3, 3, 1, 1, 0, 0, 1, 1)]      // "valid": small maps
    [InlineData(2, 5, 20, 3, 3, 1, 1, 1, 1, 1, 1)]     // rows of 16 and more: the shifted copies
    [InlineData(1, 3, 70, 3, 3, 1, 1, 1, 1, 1, 1)]
    [InlineData(2, 9, 17, 5, 3, 1, 1, 2, 1, 1, 1)]
    [InlineData(1, 400, 12, 3, 3, 1, 1, 1, 1, 1, 1)]   // a padded plane too large for the stack: the shifted copies
    [InlineData(2, 4, 3, 3, 3, 1, 1, 1, 1, 1, 1)]      // small rows of every length class: 3, 4-7, 8-15 elements
    [InlineData(2, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1)]
    [InlineData(2, 5, 10, 3, 3, 1, 1, 1, 1, 1, 1)]
    [InlineData(2, 5, 15, 3, 3, 1, 1, 1, 1, 1, 1)]
    [InlineData(2, 5, 16, 3, 3, 1, 1, 1, 1, 1, 1)]
    public void GatherMatchesTheDefinition(int channels, int height, int width, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw)
    {
        Check<double>(channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw);
        Check<float>(channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw);
    }

    private static void Check<T>(int channels, int height, int width, int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw)
        where T : unmanaged, System.Numerics.IFloatingPointIeee754<T>
    {
        int oh = WindowGeometry.OutputSize(height, kh, sh, ph, dh), ow = WindowGeometry.OutputSize(width, kw, sw, pw, dw);
        var g = new WindowGeometry(channels, height, width, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow);
        var random = new Gaussian(height * 100 + width);
        T[] image = random.Array<T>(channels * height * width);
        int rowStride = g.OutputPlane + 5;
        T[] columns = Enumerable.Repeat(T.NaN, g.ColumnRows * rowStride).ToArray();
        Im2Col<T>.Gather(g, image, columns, rowStride);
        for (int c = 0; c < channels; c++)
            for (int ki = 0; ki < kh; ki++)
                for (int kj = 0; kj < kw; kj++)
                    for (int y = 0; y < oh; y++)
                        for (int x = 0; x < ow; x++)
                        {
                            int ih = y * sh - ph + ki * dh, iw = x * sw - pw + kj * dw;
                            T want = ih >= 0 && ih < height && iw >= 0 && iw < width ? image[(c * height + ih) * width + iw] : T.Zero;
                            Assert.Equal(want, columns[((c * kh + ki) * kw + kj) * rowStride + y * ow + x]);
                        }
        // Columns past the image's plane (the next image's place) are never written.
        for (int r = 0; r < g.ColumnRows; r++)
            for (int x = g.OutputPlane; x < rowStride; x++) Assert.True(T.IsNaN(columns[r * rowStride + x]));
    }
}
