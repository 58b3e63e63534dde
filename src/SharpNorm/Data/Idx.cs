using System.Buffers.Binary;
using System.IO.Compression;

namespace SharpNorm.Data;

/// <summary>An IDX array (the MNIST / Fashion-MNIST file format) of unsigned bytes: its dimensions and data.</summary>
public sealed record IdxArray(int[] Dimensions, byte[] Data);

/// <summary>
/// Reads IDX files: a big-endian header (two zero bytes, the type code 0x08 for unsigned bytes, the number of
/// dimensions), one big-endian int32 per dimension, then the data. Gzip-compressed files are recognized by their magic.
/// </summary>
public static class Idx
{
    private const byte UnsignedByte = 0x08;

    public static IdxArray Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"IDX file not found: {path}", path);
        using FileStream file = File.OpenRead(path);
        return Read(file, path);
    }

    /// <param name="stream">Raw or gzip-compressed IDX data.</param>
    /// <param name="name">Names the source in error messages.</param>
    public static IdxArray Read(Stream stream, string name = "IDX data")
    {
        ArgumentNullException.ThrowIfNull(stream);
        long? available = stream.CanSeek ? stream.Length - stream.Position : null;
        var buffered = new BufferedStream(stream, 1 << 16);
        var magic = new byte[2];
        int got = ReadFully(buffered, magic);
        if (got == 2 && magic[0] == 0x1f && magic[1] == 0x8b)
        {
            // the two bytes read go back in front: no Seek, so a network or pipe stream works too
            using var gzip = new GZipStream(new PrefixedStream(magic, buffered), CompressionMode.Decompress, leaveOpen: true);
            try
            {
                return ReadRaw(new BufferedStream(gzip, 1 << 16), name, [], knownLength: null);
            }
            catch (InvalidDataException e) when (!e.Message.StartsWith(name + ":", StringComparison.Ordinal))
            {
                throw new InvalidDataException($"{name}: not valid gzip data ({e.Message})", e);
            }
        }
        return ReadRaw(buffered, name, magic[..got], available);
    }

    /// <summary>The IDX header and data; <paramref name="knownLength"/>, the stream's length where known (a file), is checked against the declared size before anything is allocated.</summary>
    private static IdxArray ReadRaw(Stream stream, string name, byte[] alreadyRead, long? knownLength)
    {
        var header = new byte[4];
        alreadyRead.CopyTo(header, 0);
        int got = alreadyRead.Length + ReadFully(stream, header.AsSpan(alreadyRead.Length));
        if (got < 4) throw new InvalidDataException($"{name}: truncated IDX header ({got} of 4 bytes).");
        if (header[0] != 0 || header[1] != 0)
            throw new InvalidDataException($"{name}: not an IDX file (it starts with 0x{header[0]:x2} 0x{header[1]:x2}, expected 0x00 0x00).");
        if (header[2] != UnsignedByte)
            throw new InvalidDataException($"{name}: IDX type code 0x{header[2]:x2} is not supported; expected 0x08 (unsigned bytes).");
        int rank = header[3];
        if (rank is < 1 or > 4) throw new InvalidDataException($"{name}: IDX rank {rank}; expected 1 to 4 dimensions.");
        var dimensionBytes = new byte[4 * rank];
        if (ReadFully(stream, dimensionBytes) < dimensionBytes.Length) throw new InvalidDataException($"{name}: truncated IDX dimensions.");
        var dimensions = new int[rank];
        long length = 1;
        for (int d = 0; d < rank; d++)
        {
            dimensions[d] = BinaryPrimitives.ReadInt32BigEndian(dimensionBytes.AsSpan(4 * d));
            if (dimensions[d] < 0) throw new InvalidDataException($"{name}: negative IDX dimension {dimensions[d]}.");
        }
        foreach (int d in dimensions)
        {
            // checked as it grows: the product of four int32 could overflow a long
            if (d != 0 && length > Array.MaxLength / d)
                throw new InvalidDataException($"{name}: IDX dimensions ({string.Join(", ", dimensions)}) hold more than {Array.MaxLength:N0} bytes, the most an array holds.");
            length *= d;
        }
        long headerBytes = 4 + 4L * rank;
        if (knownLength is long fileLength && fileLength - headerBytes < length)
            throw new InvalidDataException($"{name}: truncated IDX data: dimensions ({string.Join(", ", dimensions)}) need {length} bytes, the file holds {fileLength - headerBytes}.");
        byte[] data = knownLength is null ? ReadGrowing(stream, length) : new byte[length];
        int read = knownLength is null ? data.Length : ReadFully(stream, data);
        if (read < length)
            throw new InvalidDataException($"{name}: truncated IDX data: dimensions ({string.Join(", ", dimensions)}) need {length} bytes, the file holds {read}.");
        if (stream.ReadByte() != -1)
            throw new InvalidDataException($"{name}: IDX data longer than its dimensions ({string.Join(", ", dimensions)}) say.");
        return new IdxArray(dimensions, data);
    }

    /// <summary>Up to <paramref name="length"/> bytes of a stream of unknown length, the buffer grown as data arrives (never more than twice what came).</summary>
    private static byte[] ReadGrowing(Stream stream, long length)
    {
        var buffer = new byte[Math.Min(length, 1 << 20)];
        int filled = 0;
        while (filled < length)
        {
            if (filled == buffer.Length) Array.Resize(ref buffer, (int)Math.Min(length, 2L * buffer.Length));
            int n = stream.Read(buffer, filled, buffer.Length - filled);
            if (n == 0) break;
            filled += n;
        }
        return filled == buffer.Length ? buffer : buffer[..filled];
    }

    /// <summary>A few bytes already read, then the rest of a stream: reads only.</summary>
    private sealed class PrefixedStream(byte[] prefix, Stream rest) : Stream
    {
        private int _at;

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            if (_at < prefix.Length)
            {
                int n = Math.Min(buffer.Length, prefix.Length - _at);
                prefix.AsSpan(_at, n).CopyTo(buffer);
                _at += n;
                return n;
            }
            return rest.Read(buffer);
        }

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

    private static int ReadFully(Stream stream, Span<byte> buffer)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = stream.Read(buffer[total..]);
            if (n == 0) break;
            total += n;
        }
        return total;
    }
}
