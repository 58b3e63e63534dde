namespace SharpNorm.Darknet;

/// <summary>
/// Darknet's image preparation on planar float images (C x H x W, values in [0, 1]): its bilinear resize and its
/// letterbox (aspect kept, centred on a 0.5 grey canvas), written as image.c writes them so inputs match darknet's.
/// </summary>
public static class DarknetImage
{
    /// <summary>
    /// Planar RGB in [0, 1] from interleaved 8-bit pixels (RGB or RGBA rows, <paramref name="stride"/> bytes apart), as
    /// darknet's load_image_color gives it.
    /// </summary>
    public static float[] FromInterleaved(ReadOnlySpan<byte> pixels, int width, int height, int bytesPerPixel, int stride)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(width);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(height);
        if (bytesPerPixel is not (3 or 4)) throw new ArgumentOutOfRangeException(nameof(bytesPerPixel), bytesPerPixel, "Expected 3 (RGB) or 4 (RGBA) bytes per pixel.");
        if (stride < (long)width * bytesPerPixel || pixels.Length < (long)stride * (height - 1) + (long)width * bytesPerPixel)
            throw new ArgumentException($"{pixels.Length} bytes with stride {stride} is too few for {width} x {height} pixels of {bytesPerPixel} bytes.", nameof(pixels));
        if (3L * width * height > Array.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(width), $"A {width} x {height} image has {3L * width * height:N0} planar values, more than an array holds ({Array.MaxLength:N0}).");
        int plane = width * height;
        var image = new float[3 * plane];
        for (int y = 0; y < height; y++)
        {
            ReadOnlySpan<byte> row = pixels.Slice(y * stride, width * bytesPerPixel);
            for (int x = 0; x < width; x++)
                for (int k = 0; k < 3; k++)
                    image[k * plane + y * width + x] = row[x * bytesPerPixel + k] / 255f;
        }
        return image;
    }

    /// <summary>darknet's resize_image: bilinear, first along rows then along columns, corners aligned.</summary>
    public static float[] Resize(ReadOnlySpan<float> image, int channels, int height, int width, int newHeight, int newWidth)
    {
        Check(image, channels, height, width);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(newWidth);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(newHeight);
        RequireArray(channels, Math.Max(height, newHeight), newWidth);
        var part = new float[channels * height * newWidth];
        var resized = new float[channels * newHeight * newWidth];
        // darknet divides by (new - 1); a one-pixel side takes the first row or column instead of dividing by zero.
        float wScale = newWidth == 1 ? 0 : (float)(width - 1) / (newWidth - 1), hScale = newHeight == 1 ? 0 : (float)(height - 1) / (newHeight - 1);
        for (int k = 0; k < channels; k++)
            for (int r = 0; r < height; r++)
            {
                ReadOnlySpan<float> row = image.Slice((k * height + r) * width, width);
                Span<float> target = part.AsSpan((k * height + r) * newWidth, newWidth);
                for (int c = 0; c < newWidth; c++)
                {
                    if (c == newWidth - 1 || width == 1)
                    {
                        target[c] = row[width - 1];
                        continue;
                    }
                    float sx = c * wScale;
                    int ix = (int)sx;
                    float dx = sx - ix;
                    target[c] = (1 - dx) * row[ix] + dx * row[ix + 1];
                }
            }
        for (int k = 0; k < channels; k++)
            for (int r = 0; r < newHeight; r++)
            {
                float sy = r * hScale;
                int iy = (int)sy;
                float dy = sy - iy;
                Span<float> target = resized.AsSpan((k * newHeight + r) * newWidth, newWidth);
                ReadOnlySpan<float> upper = part.AsSpan((k * height + iy) * newWidth, newWidth);
                for (int c = 0; c < newWidth; c++) target[c] = (1 - dy) * upper[c];
                if (r == newHeight - 1 || height == 1) continue;
                ReadOnlySpan<float> lower = part.AsSpan((k * height + iy + 1) * newWidth, newWidth);
                for (int c = 0; c < newWidth; c++) target[c] += dy * lower[c];
            }
        return resized;
    }

    /// <summary>The size darknet's letterbox resizes an image to (aspect kept, fitting netWidth x netHeight).</summary>
    public static (int Height, int Width) LetterboxSize(int height, int width, int netHeight, int netWidth)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(height);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(width);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(netHeight);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(netWidth);
        return (float)netWidth / width < (float)netHeight / height
            ? ((int)((long)height * netWidth / width), netWidth)
            : (netHeight, (int)((long)width * netHeight / height));
    }

    /// <summary>darknet's letterbox_image: resized with the aspect kept, centred on a canvas of 0.5.</summary>
    public static float[] Letterbox(ReadOnlySpan<float> image, int channels, int height, int width, int netHeight, int netWidth)
    {
        Check(image, channels, height, width);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(netHeight);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(netWidth);
        RequireArray(channels, netHeight, netWidth);
        (int newHeight, int newWidth) = LetterboxSize(height, width, netHeight, netWidth);
        if (newHeight == 0 || newWidth == 0)
            throw new ArgumentException($"A {width} x {height} image is too narrow to letterbox into {netWidth} x {netHeight}: one side would be 0 pixels.", nameof(image));
        float[] resized = Resize(image, channels, height, width, newHeight, newWidth);
        var boxed = new float[channels * netHeight * netWidth];
        Array.Fill(boxed, 0.5f);
        int top = (netHeight - newHeight) / 2, left = (netWidth - newWidth) / 2;
        for (int k = 0; k < channels; k++)
            for (int r = 0; r < newHeight; r++)
                resized.AsSpan((k * newHeight + r) * newWidth, newWidth).CopyTo(boxed.AsSpan((k * netHeight + top + r) * netWidth + left, newWidth));
        return boxed;
    }

    private static void RequireArray(int channels, int height, int width)
    {
        if ((long)channels * height * width > Array.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(width), $"A {channels} x {height} x {width} image has {(long)channels * height * width:N0} values, more than an array holds ({Array.MaxLength:N0}).");
    }

    private static void Check(ReadOnlySpan<float> image, int channels, int height, int width)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(channels);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(height);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(width);
        if (image.Length != (long)channels * height * width)
            throw new ArgumentException($"Expected {channels} x {height} x {width} = {(long)channels * height * width} values; got {image.Length}.", nameof(image));
    }
}
