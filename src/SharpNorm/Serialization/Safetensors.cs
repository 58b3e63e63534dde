using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using SharpNorm.Layers;
using SharpNorm.Tensors;

namespace SharpNorm.Serialization;

/// <summary>One tensor of a safetensors file: dtype name (F32, F64, I64, ...), shape and raw little-endian bytes.</summary>
public sealed record SafetensorsEntry(string DType, long[] Shape, byte[] Data);

/// <summary>
/// The safetensors format (what PyTorch's <c>safetensors.torch.save_file/load_file</c> read and write): an 8-byte
/// little-endian header length, a JSON header naming each tensor's dtype, shape and byte range, then the data.
/// </summary>
public static class Safetensors
{
    private const long MaxHeaderBytes = 100_000_000;

    public static void Write(string path, IEnumerable<(string Name, SafetensorsEntry Entry)> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tensors);
        var list = tensors.ToList();
        var names = new HashSet<string>();
        foreach (var (name, _) in list)
            if (!names.Add(name)) throw new ArgumentException($"Tensor name {name} appears twice.", nameof(tensors));

        using var header = new MemoryStream();
        using (var json = new Utf8JsonWriter(header))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject("__metadata__");
                foreach (var (key, value) in metadata) json.WriteString(key, value);
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, entry) in list)
            {
                json.WriteStartObject(name);
                json.WriteString("dtype", entry.DType);
                json.WriteStartArray("shape");
                foreach (long d in entry.Shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + entry.Data.Length);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += entry.Data.Length;
            }
            json.WriteEndObject();
        }
        // The header is padded with spaces so that the data starts 8-byte aligned, as the reference writer does.
        while (header.Length % 8 != 0) header.WriteByte((byte)' ');

        string temporary = path + ".partial";
        using (var file = new FileStream(temporary, FileMode.Create, FileAccess.Write))
        {
            Span<byte> length = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
            file.Write(length);
            header.Position = 0;
            header.CopyTo(file);
            foreach (var (_, entry) in list) file.Write(entry.Data);
            file.Flush(flushToDisk: true);   // on disk before the rename: a crash leaves the old file or the new, whole
        }
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>The metadata alone (the header is read, the tensors are not).</summary>
    public static Dictionary<string, string> ReadMetadata(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"Checkpoint not found: {path}", path);
        using FileStream file = File.OpenRead(path);
        Span<byte> length = stackalloc byte[8];
        if (file.ReadAtLeast(length, 8, throwOnEndOfStream: false) < 8)
            throw new InvalidDataException($"{path}: {file.Length} bytes is too short for a safetensors file.");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(length);
        if (headerLength > MaxHeaderBytes || (long)headerLength > file.Length - 8)
            throw new InvalidDataException($"{path}: header length {headerLength} does not fit the file of {file.Length} bytes (not a safetensors file?).");
        var header = new byte[headerLength];
        file.ReadExactly(header);
        var metadata = new Dictionary<string, string>();
        try
        {
            using JsonDocument document = JsonDocument.Parse(header);
            if (document.RootElement.TryGetProperty("__metadata__", out JsonElement items))
                foreach (JsonProperty item in items.EnumerateObject()) metadata[item.Name] = item.Value.GetString() ?? "";
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        {
            throw new InvalidDataException($"{path}: the safetensors header is not valid: {e.Message}", e);
        }
        return metadata;
    }

    /// <summary>Reads every tensor and the metadata; a malformed file gives an InvalidDataException saying what is wrong.</summary>
    public static (Dictionary<string, SafetensorsEntry> Tensors, Dictionary<string, string> Metadata) Read(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"Checkpoint not found: {path}", path);
        byte[] bytes = File.ReadAllBytes(path);
        if (bytes.Length < 8) throw new InvalidDataException($"{path}: {bytes.Length} bytes is too short for a safetensors file.");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        if (headerLength > MaxHeaderBytes || (long)headerLength > bytes.Length - 8)
            throw new InvalidDataException($"{path}: header length {headerLength} does not fit the file of {bytes.Length} bytes (not a safetensors file?).");
        int dataStart = 8 + (int)headerLength;
        var tensors = new Dictionary<string, SafetensorsEntry>();
        var metadata = new Dictionary<string, string>();
        var ranges = new List<(long Begin, long End, string Name)>();
        try
        {
            using JsonDocument document = JsonDocument.Parse(bytes.AsMemory(8, (int)headerLength));
            foreach (JsonProperty property in document.RootElement.EnumerateObject())
            {
                if (property.Name == "__metadata__")
                {
                    foreach (JsonProperty item in property.Value.EnumerateObject()) metadata[item.Name] = item.Value.GetString() ?? "";
                    continue;
                }
                JsonElement Field(string field) => property.Value.ValueKind == JsonValueKind.Object && property.Value.TryGetProperty(field, out JsonElement value)
                    ? value : throw new InvalidDataException($"{path}: tensor {property.Name} has no \"{field}\" field (each tensor needs dtype, shape and data_offsets).");
                string dtype = Field("dtype").GetString() ?? "";
                long[] shape = Field("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                long[] offsets = Field("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                long dataBytes = bytes.Length - dataStart;
                if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] < offsets[0] || offsets[1] > dataBytes)
                    throw new InvalidDataException($"{path}: tensor {property.Name} has data offsets [{string.Join(", ", offsets)}] outside the {dataBytes} data bytes.");
                int size = ElementSize(dtype);
                if (size == 0)
                    throw new InvalidDataException($"{path}: tensor {property.Name} has dtype \"{dtype}\"; expected one of F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8_E4M3, F8_E5M2.");
                // the element count, checked against the bytes of the range as it grows: no product can overflow
                long elements = 1;
                foreach (long d in shape)
                {
                    if (d < 0) throw new InvalidDataException($"{path}: tensor {property.Name} has a negative dimension {d}.");
                    elements = d == 0 ? 0 : elements > dataBytes / d ? long.MaxValue : elements * d;
                }
                if (elements == long.MaxValue || elements * size != offsets[1] - offsets[0])
                    throw new InvalidDataException($"{path}: tensor {property.Name} ({dtype}, shape [{string.Join(", ", shape)}]) needs {(elements == long.MaxValue ? "more than the file's" : (elements * size).ToString(System.Globalization.CultureInfo.InvariantCulture))} bytes; its range holds {offsets[1] - offsets[0]}.");
                tensors[property.Name] = new SafetensorsEntry(dtype, shape, bytes.AsSpan(dataStart + (int)offsets[0], (int)(offsets[1] - offsets[0])).ToArray());
                ranges.Add((offsets[0], offsets[1], property.Name));
            }
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"{path}: the safetensors header is not valid: {e.Message}", e);
        }
        // As the reference reader: the ranges tile the data exactly, with no holes or overlaps.
        long expected = 0;
        foreach (var (begin, end, name) in ranges.OrderBy(r => r.Begin))
        {
            if (begin != expected) throw new InvalidDataException($"{path}: tensor {name} starts at byte {begin}; expected {expected} (holes or overlaps in the data).");
            expected = end;
        }
        if (dataStart + expected != bytes.Length)
            throw new InvalidDataException($"{path}: {bytes.Length - dataStart - expected} bytes after the last tensor.");
        return (tensors, metadata);
    }

    /// <summary>Bytes per element of a safetensors dtype; 0 for a name that is not one (such a file is refused).</summary>
    public static int ElementSize(string dtype) => dtype switch
    {
        "F64" or "I64" or "U64" => 8,
        "F32" or "I32" or "U32" => 4,
        "F16" or "BF16" or "I16" or "U16" => 2,
        "I8" or "U8" or "BOOL" or "F8_E4M3" or "F8_E5M2" => 1,
        _ => 0,
    };

    /// <summary>The safetensors dtype of T: F32 for float, F64 for double.</summary>
    public static string DTypeOf<T>() =>
        typeof(T) == typeof(float) ? "F32" : typeof(T) == typeof(double) ? "F64" : throw new NotSupportedException($"No safetensors dtype for {typeof(T).Name}.");
}

/// <summary>
/// Saves a model's parameters and buffers under their state_dict names (what PyTorch's model.state_dict() holds for the
/// same network) and loads them back. Loading checks everything first: a file whose names, dtypes or shapes do not
/// match the model gives one exception listing every mismatch, and the model is left unchanged.
/// </summary>
public static class Checkpoint
{
    public static void Save<T>(string path, Sequential<T> model, IReadOnlyDictionary<string, string>? metadata = null)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        ArgumentNullException.ThrowIfNull(model);
        Safetensors.Write(path, StateDict(model).Select(e => (e.Name, e.Entry)), metadata);
    }

    /// <summary>The model's state as safetensors entries, in state_dict order (parameters then buffers, per layer).</summary>
    public static IEnumerable<(string Name, SafetensorsEntry Entry)> StateDict<T>(Sequential<T> model) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var entries = model.NamedParameters.Select(p => (p.Name, Tensor(p.Parameter.Value)))
            .Concat(model.NamedBuffers.Select(b => (b.Name, b.Buffer.IsCount ? Count(b.Buffer.Count) : Tensor(b.Buffer.Values!))));
        // PyTorch's state_dict lists each module's parameters then its buffers, module by module.
        return entries.OrderBy(e => LayerIndexPath(e.Name), LayerPathComparer.Instance);
    }

    /// <returns>The file's metadata.</returns>
    public static Dictionary<string, string> Load<T>(string path, Sequential<T> model) where T : unmanaged, IFloatingPointIeee754<T>
    {
        ArgumentNullException.ThrowIfNull(model);
        var (tensors, metadata) = Safetensors.Read(path);
        Load(tensors, model, path);
        return metadata;
    }

    /// <summary>
    /// Loads <paramref name="tensors"/> (a state dict read elsewhere; <paramref name="source"/> names it in messages)
    /// into the model, after checking every name, dtype and shape: a mismatch throws and changes nothing.
    /// </summary>
    public static void Load<T>(IReadOnlyDictionary<string, SafetensorsEntry> tensors, Sequential<T> model, string source) where T : unmanaged, IFloatingPointIeee754<T>
    {
        ArgumentNullException.ThrowIfNull(tensors);
        ArgumentNullException.ThrowIfNull(model);
        string path = source;
        string dtype = Safetensors.DTypeOf<T>();
        var problems = new List<string>();
        var expected = new Dictionary<string, (string DType, long[] Shape)>();
        foreach (var (name, p) in model.NamedParameters) expected[name] = (dtype, Shape(p.Value.Lengths));
        foreach (var (name, b) in model.NamedBuffers) expected[name] = b.IsCount ? ("I64", []) : (dtype, Shape(b.Values!.Lengths));

        foreach (var (name, want) in expected)
        {
            if (!tensors.TryGetValue(name, out SafetensorsEntry? entry)) { problems.Add($"missing {name} ({want.DType}, shape [{string.Join(", ", want.Shape)}])"); continue; }
            if (entry.DType != want.DType) problems.Add($"{name}: dtype {entry.DType}, expected {want.DType}");
            if (!entry.Shape.SequenceEqual(want.Shape)) problems.Add($"{name}: shape [{string.Join(", ", entry.Shape)}], expected [{string.Join(", ", want.Shape)}]");
        }
        foreach (string name in tensors.Keys.Where(n => !expected.ContainsKey(n))) problems.Add($"unexpected {name}");
        if (problems.Count > 0)
            throw new InvalidDataException($"{path} does not match the model ({problems.Count} mismatch{(problems.Count == 1 ? "" : "es")}): {string.Join("; ", problems)}.");

        foreach (var (name, p) in model.NamedParameters) MemoryMarshal.Cast<byte, T>(tensors[name].Data).CopyTo(TensorData.Flat(p.Value));
        foreach (var (name, b) in model.NamedBuffers)
        {
            if (b.IsCount) b.Count = BinaryPrimitives.ReadInt64LittleEndian(tensors[name].Data);
            else MemoryMarshal.Cast<byte, T>(tensors[name].Data).CopyTo(TensorData.Flat(b.Values!));
        }
    }

    private static SafetensorsEntry Tensor<T>(System.Numerics.Tensors.Tensor<T> tensor) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("safetensors data is little-endian.");
        return new SafetensorsEntry(Safetensors.DTypeOf<T>(), Shape(tensor.Lengths), MemoryMarshal.AsBytes(TensorData.Flat(tensor)).ToArray());
    }

    private static SafetensorsEntry Count(long value)
    {
        var data = new byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(data, value);
        return new SafetensorsEntry("I64", [], data);
    }

    private static long[] Shape(ReadOnlySpan<nint> lengths) => lengths.ToArray().Select(d => (long)d).ToArray();

    private static int[] LayerIndexPath(string name) =>
        name.Split('.').TakeWhile(part => part.All(char.IsAsciiDigit) && part.Length > 0).Select(int.Parse).ToArray();

    private sealed class LayerPathComparer : IComparer<int[]>
    {
        public static readonly LayerPathComparer Instance = new();

        public int Compare(int[]? a, int[]? b)
        {
            for (int i = 0; i < Math.Min(a!.Length, b!.Length); i++)
                if (a[i] != b[i]) return a[i].CompareTo(b[i]);
            return a.Length.CompareTo(b.Length);
        }
    }
}
