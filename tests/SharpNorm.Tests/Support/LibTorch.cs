using System.Buffers.Binary;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Text;
using TorchSharp;
using Xunit;

namespace SharpNorm.Tests.Support;

/// <summary>
/// libtorch (TorchSharp-cpu 0.107.0, libtorch 2.10) in the test process, for the live parity tests: loaded once, on
/// first use; <see cref="Unavailable"/> says why not where it does not load (those tests are then skipped, with that
/// reason). Set SHARPNORM_NO_LIBTORCH=1 to skip them on purpose.
/// </summary>
/// <remarks>
/// TorchSharp's native wrapper libLibTorchSharp.so is linked against GCC 13's libstdc++ and asks for the symbol
/// version GLIBCXX_3.4.32, which Debian 12's libstdc++ (GCC 12) lacks, so the dynamic loader refuses it (TorchSharp
/// then reports a missing libtorch-cpu-linux-x64 reference). Its only symbol of that version,
/// std::ios_base_library_init, is a link-time marker that nothing calls (no relocation refers to it), so marking the
/// version reference weak (VER_FLG_WEAK in .gnu.version_r, as tools/libtorch-compat.sh does) is enough: the library
/// then loads without an LD_PRELOAD shim. The copy under this test run's bin/ is patched here, in place and
/// idempotently, before TorchSharp first loads it.
/// </remarks>
public static class LibTorch
{
    private static readonly Lazy<string?> s_unavailable = new(Load, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>Null when libtorch is loaded and works; else why it is not.</summary>
    public static string? Unavailable => s_unavailable.Value;

    private static string? Load()
    {
        if (Environment.GetEnvironmentVariable("SHARPNORM_NO_LIBTORCH") == "1") return "SHARPNORM_NO_LIBTORCH=1";
        try
        {
            if (OperatingSystem.IsLinux())
                foreach (string library in Directory.EnumerateFiles(Path.Combine(AppContext.BaseDirectory, "runtimes"), "libLibTorchSharp.so", SearchOption.AllDirectories))
                    MarkVersionWeak(library, "GLIBCXX_3.4.32");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidDataException)
        {
            return $"could not patch libLibTorchSharp.so: {e.Message}";
        }
        // TorchSharp prints a long load trace to the console when the native library fails to load; keep it out.
        TextWriter stdout = Console.Out, stderr = Console.Error;
        Console.SetOut(TextWriter.Null);
        Console.SetError(TextWriter.Null);
        try
        {
            return Probe();
        }
        catch (Exception e)
        {
            Exception inner = e;
            while (inner is TypeInitializationException or TargetInvocationException && inner.InnerException is not null) inner = inner.InnerException;
            string message = inner.Message.ReplaceLineEndings(" ").Trim();
            return $"{inner.GetType().Name}: {(message.Length > 300 ? message[..300] + "..." : message)}";
        }
        finally
        {
            Console.SetOut(stdout);
            Console.SetError(stderr);
        }
    }

    // Separate and not inlined, so that a missing TorchSharp assembly surfaces as an exception caught above.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static string? Probe()
    {
        using var ones = torch.ones(4, torch.ScalarType.Float32);
        using var sum = ones.sum();
        return sum.item<float>() == 4f ? null : "a trivial sum returned a wrong value";
    }

    /// <summary>
    /// Sets VER_FLG_WEAK on the version need entry named <paramref name="version"/> of a 64-bit little-endian ELF file
    /// (writes only if it was not set yet). Returns true if the file was changed, false if the reference was weak
    /// already, null if the file needs no such version.
    /// </summary>
    internal static bool? MarkVersionWeak(string path, string version)
    {
        const uint ShtGnuVerneed = 0x6ffffffe;
        const ushort VerFlgWeak = 0x2;
        byte[] b = File.ReadAllBytes(path);
        if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[2] != (byte)'L' || b[3] != (byte)'F' || b[4] != 2 || b[5] != 1)
            throw new InvalidDataException($"{path}: not a 64-bit little-endian ELF file.");
        ulong sectionHeaders = BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(0x28));
        int entrySize = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(0x3A)), count = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(0x3C));
        uint hash = ElfHash(version);
        bool changed = false, found = false;
        for (int i = 0; i < count; i++)
        {
            Span<byte> header = b.AsSpan(checked((int)sectionHeaders + i * entrySize), 64);
            if (BinaryPrimitives.ReadUInt32LittleEndian(header[4..]) != ShtGnuVerneed) continue;
            int offset = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(header[24..]));
            uint link = BinaryPrimitives.ReadUInt32LittleEndian(header[40..]), entries = BinaryPrimitives.ReadUInt32LittleEndian(header[44..]);
            int strings = checked((int)BinaryPrimitives.ReadUInt64LittleEndian(b.AsSpan(checked((int)sectionHeaders + (int)link * entrySize + 24))));
            int need = offset;
            for (uint n = 0; n < entries; n++)
            {
                int auxCount = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(need + 2));
                int aux = need + (int)BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(need + 8));
                for (int a = 0; a < auxCount; a++)
                {
                    if (BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(aux)) == hash && Name(b, strings + (int)BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(aux + 8))) == version)
                    {
                        found = true;
                        ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(aux + 4));
                        if ((flags & VerFlgWeak) == 0)
                        {
                            BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(aux + 4), (ushort)(flags | VerFlgWeak));
                            changed = true;
                        }
                    }
                    aux += (int)BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(aux + 12));
                }
                uint next = BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(need + 12));
                if (next == 0) break;
                need += (int)next;
            }
        }
        if (!found) return null;
        if (!changed) return false;
        // Write beside and rename over: a process that has the old file mapped keeps it.
        string temporary = path + ".patching";
        File.WriteAllBytes(temporary, b);
        File.Move(temporary, path, overwrite: true);
        return true;
    }

    private static string Name(byte[] b, int at)
    {
        int end = Array.IndexOf(b, (byte)0, at);
        return Encoding.ASCII.GetString(b, at, end - at);
    }

    private static uint ElfHash(string name)
    {
        uint h = 0;
        foreach (char c in name)
        {
            h = (h << 4) + c;
            uint g = h & 0xf0000000;
            if (g != 0) h ^= g >> 24;
            h &= ~g;
        }
        return h;
    }
}

/// <summary>A [Theory] that is skipped, with the reason, where libtorch does not load in this process (see <see cref="LibTorch"/>).</summary>
public sealed class LibTorchTheoryAttribute : TheoryAttribute
{
    public LibTorchTheoryAttribute()
    {
        if (LibTorch.Unavailable is { } why) Skip = $"libtorch (TorchSharp-cpu) is unavailable: {why}";
    }
}

/// <summary>A [Fact] that is skipped, with the reason, where libtorch does not load in this process (see <see cref="LibTorch"/>).</summary>
public sealed class LibTorchFactAttribute : FactAttribute
{
    public LibTorchFactAttribute()
    {
        if (LibTorch.Unavailable is { } why) Skip = $"libtorch (TorchSharp-cpu) is unavailable: {why}";
    }
}
