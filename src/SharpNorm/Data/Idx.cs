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
        var buffered = new BufferedStream(stream, 1 << 16);
        Span<byte> magic = stackalloc byte[2];
        int got = ReadFully(buffered, magic);
        if (got == 2 && magic[0] == 0x1f && magic[1] == 0x8b)
        {
            stream.Seek(0, SeekOrigin.Begin);
            using var gzip = new GZipStream(stream, CompressionMode.Decompress, leaveOpen: true);
            return ReadRaw(new BufferedStream(gzip, 1 << 16), name, []);
        }
        return ReadRaw(buffered, name, magic[..got].ToArray());
    }

    private static IdxArray ReadRaw(Stream stream, string name, byte[] alreadyRead)
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
            length *= dimensions[d];
        }
        if (length > Array.MaxLength) throw new InvalidDataException($"{name}: IDX array of {length} bytes is too large.");
        var data = new byte[length];
        int read = ReadFully(stream, data);
        if (read < length)
            throw new InvalidDataException($"{name}: truncated IDX data: dimensions ({string.Join(", ", dimensions)}) need {length} bytes, the file holds {read}.");
        if (stream.ReadByte() != -1)
            throw new InvalidDataException($"{name}: IDX data longer than its dimensions ({string.Join(", ", dimensions)}) say.");
        return new IdxArray(dimensions, data);
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
