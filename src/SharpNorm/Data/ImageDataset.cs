namespace SharpNorm.Data;

/// <summary>Grayscale images of one size with class labels: pixels as bytes, row-major, one image after another.</summary>
public sealed class ImageDataset
{
    public ImageDataset(byte[] pixels, byte[] labels, int height, int width, int classes)
    {
        ArgumentNullException.ThrowIfNull(pixels);
        ArgumentNullException.ThrowIfNull(labels);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(height);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(width);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(classes);
        if (pixels.Length != (long)labels.Length * height * width)
            throw new ArgumentException($"{labels.Length} labels need {(long)labels.Length * height * width} pixels of {height}x{width} images; got {pixels.Length}.", nameof(pixels));
        for (int i = 0; i < labels.Length; i++)
            if (labels[i] >= classes)
                throw new InvalidDataException($"Label {i} is {labels[i]}; labels must be in [0, {classes}).");
        (Pixels, Labels, Height, Width, Classes) = (pixels, labels, height, width, classes);
    }

    public byte[] Pixels { get; }
    public byte[] Labels { get; }
    public int Height { get; }
    public int Width { get; }
    public int Classes { get; }
    public int Count => Labels.Length;
    public int ImageSize => Height * Width;

    /// <summary>Mean and standard deviation of all pixels scaled to [0, 1] (torchvision's Normalize constants).</summary>
    public (double Mean, double Std) PixelStatistics()
    {
        var histogram = new long[256];
        foreach (byte p in Pixels) histogram[p]++;
        double sum = 0, squares = 0;
        for (int v = 0; v < 256; v++)
        {
            sum += histogram[v] * (v / 255.0);
            squares += histogram[v] * (v / 255.0) * (v / 255.0);
        }
        double mean = sum / Pixels.Length;
        return (mean, Math.Sqrt(Math.Max(0, squares / Pixels.Length - mean * mean)));
    }

    /// <summary>The first <paramref name="count"/> images (for quick runs and tests).</summary>
    public ImageDataset Take(int count)
    {
        count = Math.Clamp(count, 0, Count);
        return new ImageDataset(Pixels.AsSpan(0, count * ImageSize).ToArray(), Labels.AsSpan(0, count).ToArray(), Height, Width, Classes);
    }
}

/// <summary>Fashion-MNIST (or MNIST) from its four IDX files, raw or gzip-compressed.</summary>
public static class FashionMnist
{
    /// <summary>Where Debian's dataset-fashion-mnist package puts the files.</summary>
    public const string DebianDirectory = "/usr/share/datasets/fashion-mnist";

    public static readonly string[] ClassNames =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    /// <summary>Loads the training or test split from <paramref name="directory"/>.</summary>
    /// <exception cref="FileNotFoundException">A file is missing (the message says which names were looked for and how to get them).</exception>
    /// <exception cref="InvalidDataException">A file is truncated or is not the IDX array it should be.</exception>
    public static ImageDataset Load(string directory, bool train)
    {
        ArgumentNullException.ThrowIfNull(directory);
        string prefix = train ? "train" : "t10k";
        string imagesPath = Find(directory, $"{prefix}-images-idx3-ubyte");
        string labelsPath = Find(directory, $"{prefix}-labels-idx1-ubyte");
        IdxArray images = Idx.Read(imagesPath), labels = Idx.Read(labelsPath);
        if (images.Dimensions.Length != 3)
            throw new InvalidDataException($"{imagesPath}: expected images (count, height, width); got dimensions ({string.Join(", ", images.Dimensions)}).");
        if (labels.Dimensions.Length != 1)
            throw new InvalidDataException($"{labelsPath}: expected labels (count); got dimensions ({string.Join(", ", labels.Dimensions)}).");
        if (images.Dimensions[0] != labels.Dimensions[0])
            throw new InvalidDataException($"{imagesPath} holds {images.Dimensions[0]} images but {labelsPath} holds {labels.Dimensions[0]} labels.");
        return new ImageDataset(images.Data, labels.Data, images.Dimensions[1], images.Dimensions[2], 10);
    }

    private static string Find(string directory, string name)
    {
        foreach (string candidate in new[] { name, name + ".gz", name.Replace("-idx", ".idx") , name.Replace("-idx", ".idx") + ".gz" })
        {
            string path = Path.Combine(directory, candidate);
            if (File.Exists(path)) return path;
        }
        throw new FileNotFoundException(
            $"Fashion-MNIST file {name}[.gz] not found in {directory}. Install Debian's package (sudo apt-get install dataset-fashion-mnist, files in {DebianDirectory}) " +
            "or point --data at a folder with the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, raw or .gz).",
            Path.Combine(directory, name));
    }
}
