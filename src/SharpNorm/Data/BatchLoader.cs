using System.Numerics;

namespace SharpNorm.Data;

/// <summary>Training-time augmentation: a random crop of the image padded by <see cref="CropPadding"/> zeros, and a horizontal flip.</summary>
public sealed record Augmentation(int CropPadding = 2, bool HorizontalFlip = true)
{
    public static Augmentation None { get; } = new(0, false);
}

/// <summary>
/// Mini-batches of an <see cref="ImageDataset"/> as (N, 1, H, W) tensors normalized by (pixel/255 - mean) / std, with
/// labels. The order (shuffled or not) and the augmentation of each epoch follow from the seed and the epoch number
/// alone, so a run is reproducible.
/// </summary>
public sealed class BatchLoader<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly ImageDataset _data;
    private readonly int[] _order;
    private readonly Augmentation _augmentation;
    private readonly int _seed;
    private readonly bool _shuffle;
    private Random _random;
    private readonly T[] _padded;

    public BatchLoader(ImageDataset data, int batchSize, bool shuffle, int seed, double mean, double std, Augmentation? augmentation = null)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batchSize);
        if (!(std > 0)) throw new ArgumentOutOfRangeException(nameof(std), std, "std must be > 0.");
        _data = data;
        BatchSize = batchSize;
        _shuffle = shuffle;
        _seed = seed;
        Mean = mean;
        Std = std;
        _augmentation = augmentation ?? Augmentation.None;
        if (_augmentation.CropPadding < 0) throw new ArgumentOutOfRangeException(nameof(augmentation), "CropPadding must be >= 0.");
        _order = Enumerable.Range(0, data.Count).ToArray();
        _random = new Random(seed);
        int p = _augmentation.CropPadding;
        _padded = new T[(data.Height + 2 * p) * (data.Width + 2 * p)];
    }

    public int BatchSize { get; }
    public double Mean { get; }
    public double Std { get; }
    public int Count => _data.Count;
    public int BatchCount => (_data.Count + BatchSize - 1) / BatchSize;
    public nint[] ImageShape => [1, _data.Height, _data.Width];

    /// <summary>Sets the order and the random stream of epoch <paramref name="epoch"/>.</summary>
    public void StartEpoch(int epoch)
    {
        for (int i = 0; i < _order.Length; i++) _order[i] = i;
        _random = new Random(unchecked(_seed * 1_000_003 + epoch)); // not HashCode: its seed changes per process
        if (_shuffle) _random.Shuffle(_order);
    }

    /// <summary>
    /// Writes batch <paramref name="batch"/> of the current epoch: images (n, 1, H, W) into <paramref name="images"/>
    /// and labels into <paramref name="labels"/>; returns n (the last batch may be short).
    /// </summary>
    public int Fill(int batch, Span<T> images, Span<int> labels)
    {
        if ((uint)batch >= (uint)BatchCount) throw new ArgumentOutOfRangeException(nameof(batch), batch, $"Batch must be in [0, {BatchCount}).");
        int first = batch * BatchSize, count = Math.Min(BatchSize, _data.Count - first), size = _data.ImageSize;
        if (images.Length < count * size || labels.Length < count)
            throw new ArgumentException($"Batch {batch} needs room for {count} images of {size} pixels and {count} labels.");
        T scale = T.CreateTruncating(1 / (255 * Std)), shift = T.CreateTruncating(-Mean / Std);
        for (int i = 0; i < count; i++)
        {
            int index = _order[first + i];
            labels[i] = _data.Labels[index];
            ReadOnlySpan<byte> source = _data.Pixels.AsSpan(index * size, size);
            Span<T> target = images.Slice(i * size, size);
            if (_augmentation.CropPadding == 0 && !_augmentation.HorizontalFlip)
            {
                for (int k = 0; k < size; k++) target[k] = T.CreateTruncating(source[k]) * scale + shift;
                continue;
            }
            Augment(source, target, scale, shift);
        }
        return count;
    }

    private void Augment(ReadOnlySpan<byte> source, Span<T> target, T scale, T shift)
    {
        int h = _data.Height, w = _data.Width, p = _augmentation.CropPadding, paddedWidth = w + 2 * p;
        // The padded image: zeros (normalized) around the normalized pixels.
        _padded.AsSpan().Fill(shift);
        for (int r = 0; r < h; r++)
            for (int c = 0; c < w; c++) _padded[(r + p) * paddedWidth + c + p] = T.CreateTruncating(source[r * w + c]) * scale + shift;
        int top = _random.Next(2 * p + 1), left = _random.Next(2 * p + 1);
        bool flip = _augmentation.HorizontalFlip && _random.Next(2) == 1;
        for (int r = 0; r < h; r++)
            for (int c = 0; c < w; c++)
                target[r * w + c] = _padded[(r + top) * paddedWidth + left + (flip ? w - 1 - c : c)];
    }
}
