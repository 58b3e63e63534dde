using System.Buffers.Binary;
using System.IO.Compression;
using SharpNorm.Data;
using Xunit;

namespace SharpNorm.Tests.Training;

/// <summary>The IDX reader, Fashion-MNIST loading and the batch loader.</summary>
public class DataTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("sharpnorm-idx-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static byte[] IdxBytes(int[] dimensions, byte[] data, int dataBytes = -1)
    {
        var bytes = new List<byte> { 0, 0, 0x08, (byte)dimensions.Length };
        foreach (int d in dimensions)
        {
            var b = new byte[4];
            BinaryPrimitives.WriteInt32BigEndian(b, d);
            bytes.AddRange(b);
        }
        bytes.AddRange(dataBytes < 0 ? data : data.Take(dataBytes));
        return bytes.ToArray();
    }

    private static byte[] Gzip(byte[] raw)
    {
        using var output = new MemoryStream();
        using (var gzip = new GZipStream(output, CompressionLevel.Fastest)) gzip.Write(raw);
        return output.ToArray();
    }

    [Fact]
    public void ReadsRawAndGzipIdx()
    {
        byte[] data = Enumerable.Range(0, 24).Select(i => (byte)i).ToArray();
        foreach (byte[] file in new[] { IdxBytes([2, 3, 4], data), Gzip(IdxBytes([2, 3, 4], data)) })
        {
            IdxArray array = Idx.Read(new MemoryStream(file));
            Assert.Equal([2, 3, 4], array.Dimensions);
            Assert.Equal(data, array.Data);
        }
    }

    [Fact]
    public void TruncatedOrForeignIdxIsRejectedClearly()
    {
        byte[] data = new byte[24];
        var truncated = Assert.Throws<InvalidDataException>(() => Idx.Read(new MemoryStream(IdxBytes([2, 3, 4], data, 20)), "images"));
        Assert.Contains("need 24 bytes, the file holds 20", truncated.Message);
        Assert.Contains("truncated", Assert.Throws<InvalidDataException>(() => Idx.Read(new MemoryStream(Gzip(IdxBytes([2, 3, 4], data, 10))))).Message);
        Assert.Contains("longer", Assert.Throws<InvalidDataException>(() => Idx.Read(new MemoryStream(IdxBytes([2, 3, 4], new byte[25])))).Message);
        Assert.Contains("not an IDX file", Assert.Throws<InvalidDataException>(() => Idx.Read(new MemoryStream("PK\u0003\u0004hello"u8.ToArray()))).Message);
        byte[] floats = IdxBytes([2], new byte[8]);
        floats[2] = 0x0D;
        Assert.Contains("type code 0x0d", Assert.Throws<InvalidDataException>(() => Idx.Read(new MemoryStream(floats))).Message);
    }

    private void WriteSplit(string prefix, int images, int labels, int size = 4)
    {
        File.WriteAllBytes(Path.Combine(_directory, $"{prefix}-images-idx3-ubyte"), IdxBytes([images, size, size], new byte[images * size * size]));
        File.WriteAllBytes(Path.Combine(_directory, $"{prefix}-labels-idx1-ubyte.gz"), Gzip(IdxBytes([labels], Enumerable.Range(0, labels).Select(i => (byte)(i % 10)).ToArray())));
    }

    [Fact]
    public void LoadsFashionMnistFilesAndNamesWhatIsMissingOrMismatched()
    {
        var missing = Assert.Throws<FileNotFoundException>(() => FashionMnist.Load(_directory, train: true));
        Assert.Contains("train-images-idx3-ubyte", missing.Message);
        Assert.Contains("dataset-fashion-mnist", missing.Message);
        Assert.Contains("--data", missing.Message);

        WriteSplit("train", 12, 12);
        ImageDataset data = FashionMnist.Load(_directory, train: true);
        Assert.Equal(12, data.Count);
        Assert.Equal((4, 4), (data.Height, data.Width));

        WriteSplit("t10k", 5, 6);
        Assert.Contains("5 images but", Assert.Throws<InvalidDataException>(() => FashionMnist.Load(_directory, train: false)).Message);
        // Labels in the images file's place: the wrong rank.
        File.Copy(Path.Combine(_directory, "t10k-labels-idx1-ubyte.gz"), Path.Combine(_directory, "t10k-images-idx3-ubyte"), overwrite: true);
        Assert.Contains("expected images (count, height, width)", Assert.Throws<InvalidDataException>(() => FashionMnist.Load(_directory, train: false)).Message);
    }

    private static ImageDataset Synthetic(int count)
    {
        var random = new Random(3);
        var pixels = new byte[count * 16];
        random.NextBytes(pixels);
        return new ImageDataset(pixels, Enumerable.Range(0, count).Select(i => (byte)(i % 3)).ToArray(), 4, 4, 3);
    }

    [Fact]
    public void BatchesNormalizeAndAreReproducibleFromTheSeed()
    {
        ImageDataset data = Synthetic(10);
        var plain = new BatchLoader<float>(data, 4, shuffle: false, seed: 1, mean: 0.5, std: 0.25);
        Assert.Equal(3, plain.BatchCount);
        plain.StartEpoch(0);
        var images = new float[64];
        var labels = new int[4];
        Assert.Equal(2, plain.Fill(2, images, labels));
        Assert.Equal([2, 0], labels[..2]);
        Assert.Equal((data.Pixels[8 * 16] / 255.0 - 0.5) / 0.25, images[0], 1e-5);

        float[] Epoch(int seed, int epoch)
        {
            var loader = new BatchLoader<float>(data, 4, shuffle: true, seed: seed, mean: 0.5, std: 0.25, new Augmentation(1, true));
            loader.StartEpoch(epoch);
            var all = new List<float>();
            for (int b = 0; b < loader.BatchCount; b++)
            {
                int n = loader.Fill(b, images, labels);
                all.AddRange(images.Take(n * 16));
                all.AddRange(labels.Take(n).Select(l => (float)l));
            }
            return all.ToArray();
        }
        Assert.Equal(Epoch(7, 2), Epoch(7, 2));
        Assert.NotEqual(Epoch(7, 2), Epoch(7, 3));
        Assert.NotEqual(Epoch(7, 2), Epoch(8, 2));
    }

    [Fact]
    public void FlipAndCropMoveThePixelsAsTheySay()
    {
        ImageDataset data = Synthetic(1);
        var flipOnly = new BatchLoader<double>(data, 1, shuffle: false, seed: 0, mean: 0, std: 1, new Augmentation(0, true));
        var images = new double[16];
        var labels = new int[1];
        bool sawFlip = false, sawPlain = false;
        for (int epoch = 0; epoch < 20; epoch++)
        {
            flipOnly.StartEpoch(epoch);
            flipOnly.Fill(0, images, labels);
            bool flipped = Enumerable.Range(0, 16).All(i => Math.Abs(images[i] - data.Pixels[i / 4 * 4 + 3 - i % 4] / 255.0) < 1e-12);
            bool plain = Enumerable.Range(0, 16).All(i => Math.Abs(images[i] - data.Pixels[i] / 255.0) < 1e-12);
            Assert.True(flipped || plain);
            sawFlip |= flipped && !plain;
            sawPlain |= plain;
        }
        Assert.True(sawFlip && sawPlain);

        // A crop of the image padded by one zero: every value is either a pixel of the image or the padding.
        var crop = new BatchLoader<double>(data, 1, shuffle: false, seed: 0, mean: 0, std: 1, new Augmentation(1, false));
        crop.StartEpoch(4);
        crop.Fill(0, images, labels);
        double[] allowed = data.Pixels.Select(p => p / 255.0).Append(0).ToArray();
        Assert.All(images, v => Assert.Contains(allowed, a => Math.Abs(a - v) < 1e-12));
    }
}
