using System.Buffers.Binary;
using System.IO.Compression;
using System.Text;
using SharpNorm.Darknet;
using SharpNorm.Data;
using SharpNorm.Serialization;
using Xunit;

namespace SharpNorm.Tests.Hostile;

/// <summary>
/// The reproducers of issue 18: sizes from a file or a caller whose arithmetic overflowed, wrapped or allocated before
/// checking. Each now fails with the parser's exception naming the file (or works), fast and without a large allocation.
/// </summary>
public class HostileInputTests
{
    private static DarknetConfigException Refused(string cfg) =>
        Assert.Throws<DarknetConfigException>(() => DarknetSummary.Describe(DarknetConfig.Parse(cfg, "x.cfg")));

    [Theory]
    [InlineData("[net]\nwidth=4\nheight=4\nchannels=6\n[yolo]\nmask=1073741824\nanchors=1,1\nclasses=1", "mask index 1073741824 has no anchor")]
    [InlineData("[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=1\nsize=65536", "too small for this window")]
    [InlineData("[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=16\nsize=536870912\npad=1", "size=536870912 exceeds the limit of 65536")]
    [InlineData("[net]\nwidth=4\nheight=4\nchannels=1\n[connected]\noutput=2147483647", "output=2147483647 exceeds the limit of 65536")]
    [InlineData("[net]\nwidth=4\nheight=4\nchannels=1\n[connected]\noutput=1000000000", "output=1000000000 exceeds the limit")]
    [InlineData("[net]\nwidth=4\nheight=4\nchannels=3\n[upsample]\nstride=1073741824", "stride=1073741824 exceeds the limit")]
    [InlineData("[net]\nwidth=4\nheight=4\nchannels=1\n[convolutional]\nfilters=1\nsize=1\npadding=1000000000", "padding=1000000000 exceeds the limit")]
    [InlineData("[net]\nwidth=65536\nheight=65536\nchannels=1", "values per image exceeds the limit")]
    [InlineData("[net]\nwidth=4096\nheight=4096\nchannels=3\n[convolutional]\nfilters=16\nsize=3\npad=1\n[upsample]\nstride=8", "values per image exceeds the limit")]
    [InlineData("[net]\nwidth=64\nheight=64\nchannels=64\n[convolutional]\nfilters=65536\nsize=64", "weights, more than the limit")]
    [InlineData("[net]\nwidth=4\nheight=4\nchannels=1\n[local]\nfilters=65536\nsize=4\n[local]\nfilters=65536\nsize=1", "weights, more than the limit")]
    [InlineData("[net]\nwidth=100000\nheight=4\nchannels=1", "width=100000 exceeds the limit of 65536")]
    public void CfgSizesBeyondTheLimitsAreRefusedNamingTheLine(string cfg, string message)
    {
        DarknetConfigException error = Refused(cfg);
        Assert.Contains(message, error.Message);
        Assert.StartsWith("x.cfg:", error.Message);
    }

    [Fact]
    public void AnEmptyCfgIsAnArgumentError() =>
        Assert.Throws<ArgumentException>(() => DarknetSummary.Describe([]));

    [Fact]
    public void LetterboxAndImageSizesAreChecked()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => DarknetImage.LetterboxSize(0, 0, 416, 416));
        Assert.Throws<ArgumentOutOfRangeException>(() => DarknetImage.LetterboxSize(-1, 10, 416, 416));
        Assert.Throws<ArgumentOutOfRangeException>(() => DarknetImage.LetterboxSize(10, 10, 0, 416));
        Assert.Throws<ArgumentException>(() => DarknetImage.FromInterleaved(new byte[16], 1 << 30, 1, 3, 3 << 30));
        Assert.Throws<ArgumentOutOfRangeException>(() => DarknetImage.Resize(new float[3], 3, 1, 1, 1 << 16, 1 << 16));
        Assert.Equal((208, 416), DarknetImage.LetterboxSize(100, 200, 416, 416));
    }

    [Fact]
    public void LayersOfAbsurdSizesAreRefusedNamingTheShapeAndTheLimit()
    {
        foreach (Func<object> create in new Func<object>[]
        {
            () => new SharpNorm.Layers.BatchNorm<float>(1 << 30),
            () => new SharpNorm.Layers.Conv2d<float>(65536, 65536, 3),
            () => new SharpNorm.Layers.Linear<float>(46341, 46341),
            () => new SharpNorm.Layers.InstanceNorm<float>(1 << 30, trackRunningStats: true),
            () => new SharpNorm.Layers.InstanceNorm<float>(1 << 30, affine: false, trackRunningStats: true),
            () => new SharpNorm.Layers.LayerNorm<float>([1 << 15, 1 << 15]),
        })
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            var error = Assert.Throws<ArgumentOutOfRangeException>(create);
            Assert.Contains("the limit is Limits.MaxParameterValues", error.Message);
            Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 16 << 20);
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => Limits.MaxParameterValues = 0);
        Assert.Equal(1L << 28, Limits.MaxParameterValues);
    }

    [Fact]
    public void AnEmptyInputOfHugeMapsIsAnArgumentError()
    {
        var empty = System.Numerics.Tensors.Tensor.CreateFromShape<float>([0, 4, 1 << 30, 1 << 30]);
        foreach (SharpNorm.Layers.ILayer<float> layer in new SharpNorm.Layers.ILayer<float>[]
        {
            new SharpNorm.Layers.BatchNorm<float>(4), new SharpNorm.Layers.GroupNorm<float>(2, 4), new SharpNorm.Layers.InstanceNorm<float>(4),
            new SharpNorm.Layers.Conv2d<float>(4, 4, 3), new SharpNorm.Layers.MaxPool2d<float>(2),
        })
            Assert.ThrowsAny<ArgumentException>(() => layer.Forward(empty.AsReadOnlyTensorSpan(), System.Numerics.Tensors.Tensor.CreateFromShape<float>([1]).AsTensorSpan()));
    }

    private static string Write(string name, byte[] bytes)
    {
        string path = Path.Combine(Path.GetTempPath(), $"hostile-{Environment.ProcessId}-{name}");
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private static byte[] SafetensorsFile(string header, int dataBytes)
    {
        byte[] json = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + json.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)json.Length);
        json.CopyTo(bytes, 8);
        return bytes;
    }

    [Theory]
    [InlineData("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,9223372036854775807]}}""", 4, "outside the 4 data bytes")]
    [InlineData("""{"w":{"dtype":"F32","shape":[1],"data_offsets":[9223372036854775800,9223372036854775807]}}""", 4, "outside the 4 data bytes")]
    [InlineData("""{"w":{"dtype":"X9","shape":[1],"data_offsets":[0,4]}}""", 4, "dtype \"X9\"")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}}""", 0, "needs more than the file's bytes")]
    [InlineData("""{"w":{"dtype":"F32","shape":[65536,65536,65536,65536],"data_offsets":[0,0]}}""", 0, "needs more than the file's bytes")]
    [InlineData("""{"w":{"shape":[1],"data_offsets":[0,4]}}""", 4, "has no \"dtype\" field")]
    [InlineData("""{"w":{"dtype":"F32","data_offsets":[0,4]}}""", 4, "has no \"shape\" field")]
    [InlineData("""{"w":[1,2]}""", 4, "has no \"dtype\" field")]
    public void SafetensorsHeadersThatLieAreRefused(string header, int dataBytes, string message)
    {
        string path = Write("bad.safetensors", SafetensorsFile(header, dataBytes));
        try
        {
            var error = Assert.Throws<InvalidDataException>(() => Safetensors.Read(path));
            Assert.Contains(message, error.Message);
            Assert.Contains(path, error.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static byte[] IdxHeader(params int[] dimensions)
    {
        var bytes = new byte[4 + 4 * dimensions.Length];
        bytes[2] = 0x08;
        bytes[3] = (byte)dimensions.Length;
        for (int d = 0; d < dimensions.Length; d++) BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(4 + 4 * d), dimensions[d]);
        return bytes;
    }

    [Theory]
    [InlineData(new[] { 65536, 65536, 65536, 65536 }, "hold more than")]   // 2^64: wrapped to 0 before
    [InlineData(new[] { int.MaxValue, int.MaxValue, 2 }, "hold more than")]
    [InlineData(new[] { 1 << 30, 2 }, "hold more than")]
    [InlineData(new[] { 1 << 30 }, "truncated IDX data")]                  // 8 bytes declaring 2^30: no 1 GB allocation
    public void IdxDimensionsAreCheckedBeforeAnythingIsAllocated(int[] dimensions, string message)
    {
        string path = Write("bad.idx", IdxHeader(dimensions));
        try
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            var error = Assert.Throws<InvalidDataException>(() => Idx.Read(path));
            Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 16 << 20, "allocated more than 16 MB to refuse it");
            Assert.Contains(message, error.Message);
            Assert.Contains(path, error.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>A stream that cannot seek, as a network or pipe stream.</summary>
    private sealed class Forward(Stream inner) : Stream
    {
        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    [Fact]
    public void GzipIdxReadsFromAStreamThatCannotSeekAndItsErrorsNameTheSource()
    {
        byte[] raw = [.. IdxHeader(2, 3), 1, 2, 3, 4, 5, 6];
        using var compressed = new MemoryStream();
        using (var gzip = new GZipStream(compressed, CompressionLevel.Fastest, leaveOpen: true)) gzip.Write(raw);
        byte[] gz = compressed.ToArray();
        IdxArray array = Idx.Read(new Forward(new MemoryStream(gz)), "labels.gz");
        Assert.Equal([2, 3], array.Dimensions);
        Assert.Equal([1, 2, 3, 4, 5, 6], array.Data);
        // a stream of unknown length declaring 2^30 bytes holds 6: refused with a buffer the size of what came
        byte[] lying = [.. IdxHeader(1 << 30), 1, 2, 3, 4, 5, 6];
        long before = GC.GetAllocatedBytesForCurrentThread();
        var truncated = Assert.Throws<InvalidDataException>(() => Idx.Read(new Forward(new MemoryStream(lying)), "pipe"));
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 16 << 20);
        Assert.StartsWith("pipe: truncated IDX data", truncated.Message);
        byte[] corrupt = (byte[])gz.Clone();
        corrupt[^9] ^= 0xff;   // the CRC
        corrupt[12] ^= 0x55;
        var error = Assert.Throws<InvalidDataException>(() => Idx.Read(new MemoryStream(corrupt), "images.gz"));
        Assert.StartsWith("images.gz: ", error.Message);
    }
}
