using System.IO.Compression;
using System.Text;
using System.Text.RegularExpressions;
using SharpNorm.Darknet;
using SharpNorm.Data;
using SharpNorm.Layers;
using SharpNorm.Serialization;
using Xunit;
using Xunit.Abstractions;

namespace SharpNorm.Tests.Hostile;

/// <summary>
/// Seeded mutations of valid files for the four parsers (darknet .cfg and .weights, safetensors, IDX): bit flips,
/// byte changes, truncation at every length of small files, boundary integers in every numeric field of a cfg. Each
/// input loads or fails with its format's one exception type (DarknetConfigException, InvalidDataException), without
/// allocating 2 GB. SHARPNORM_FUZZ=N runs N mutations per seed instead of 300 (issue 18's long mode: 10,000).
/// </summary>
public class ParserFuzzTests(ITestOutputHelper output)
{
    private static int Mutations => int.TryParse(Environment.GetEnvironmentVariable("SHARPNORM_FUZZ"), out int n) && n > 0 ? n : 300;

    private const long MaxAllocation = 2L << 30;

    private static string Cfg(string name) => Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", name);

    /// <summary>Counts outcomes; anything but the expected exception type (or an allocation of 2 GB) fails the test with the input's description.</summary>
    private sealed class Tally(ITestOutputHelper output, string parser, params Type[] expected)
    {
        private readonly Dictionary<string, int> _counts = [];

        public void Run(string what, Action parse)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            string outcome;
            try
            {
                parse();
                outcome = "loaded";
            }
            catch (Exception e) when (expected.Contains(e.GetType()))
            {
                outcome = e.GetType().Name;
            }
            catch (Exception e)
            {
                throw new Xunit.Sdk.XunitException($"{parser}: {what} threw {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
            }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.True(allocated < MaxAllocation, $"{parser}: {what} allocated {allocated:N0} bytes");
            _counts[outcome] = _counts.GetValueOrDefault(outcome) + 1;
        }

        public void Report() => output.WriteLine($"{parser}: {_counts.Values.Sum()} inputs: {string.Join(", ", _counts.OrderBy(c => c.Key).Select(c => $"{c.Value} {c.Key}"))}");
    }

    private static readonly string[] Boundaries = ["0", "-1", "1", "2", "3", "65535", "65536", "65537", "2147483647", "-2147483648", "2147483648", "1073741824", "536870912", "1000000000", "99999999999", "1e9", "nan", "-0", ""];

    [Theory]
    [InlineData("yolov3-tiny.cfg")]
    [InlineData("small-detector.cfg")]
    [InlineData("small-region.cfg")]
    [InlineData("small-detection.cfg")]
    [InlineData("small-classifier.cfg")]
    public void CfgMutationsParseOrFailCleanly(string seed)
    {
        string text = File.ReadAllText(Cfg(seed));
        var tally = new Tally(output, $"cfg {seed}", typeof(DarknetConfigException));
        var random = new Random(seed.GetHashCode(StringComparison.Ordinal) & 0xffff);
        MatchCollection numbers = Regex.Matches(text, @"(?<==\s*)[-\d.,\s]+$", RegexOptions.Multiline);
        void Try(string what, string cfg) => tally.Run(what, () =>
        {
            IReadOnlyList<DarknetSection> sections = DarknetConfig.Parse(cfg, "fuzz.cfg");
            IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
            // small enough to build and run: random weights, one forward pass
            if (layers.Count > 0 && layers.Sum(l => l.Parameters) < 2_000_000 && layers.Max(l => (long)l.Channels * l.Height * l.Width) < 1_000_000)
            {
                var network = DarknetNetwork.Build(sections, DarknetWeightsFile.Random(layers, 1));
                network.Forward(new float[network.InputChannels * network.InputHeight * network.InputWidth], 1);
            }
        });
        // every numeric value replaced by each boundary value, one at a time
        foreach (Match number in numbers)
            foreach (string boundary in Boundaries)
                Try($"value at {number.Index} = '{boundary}'", text[..number.Index] + boundary + text[(number.Index + number.Length)..]);
        for (int i = 0; i < Mutations; i++)
        {
            char[] chars = text.ToCharArray();
            for (int k = random.Next(1, 4); k > 0; k--) chars[random.Next(chars.Length)] = "0123456789-=[],.#\n x"[random.Next(20)];
            string mutated = new(chars);
            if (random.Next(4) == 0) mutated = mutated[..random.Next(mutated.Length)];
            Try($"mutation {i}", mutated);
        }
        tally.Report();
    }

    [Fact]
    public void WeightsMutationsReadOrFailCleanly()
    {
        IReadOnlyList<DarknetSection> sections = DarknetConfig.ReadFile(Cfg("small-detection.cfg"));
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        string path = Path.Combine(Path.GetTempPath(), $"fuzz-{Environment.ProcessId}.weights");
        DarknetWeightsFile.Write(path, DarknetWeightsFile.Random(layers, 2));
        byte[] valid = File.ReadAllBytes(path);
        var tally = new Tally(output, "weights", typeof(InvalidDataException));
        var random = new Random(3);
        void Try(string what, byte[] bytes)
        {
            File.WriteAllBytes(path, bytes);
            tally.Run(what, () => DarknetWeightsFile.Read(path, layers));
        }
        try
        {
            for (int length = 0; length < 64; length++) Try($"first {length} bytes", valid[..length]);
            for (int length = 64; length < valid.Length; length += Math.Max(1, valid.Length / 200)) Try($"first {length} bytes", valid[..length]);
            Try("four bytes more", [.. valid, 0, 0, 0, 0]);
            for (int i = 0; i < Mutations; i++)
            {
                byte[] mutated = (byte[])valid.Clone();
                // mostly the header (version, seen), where sizes are decided
                for (int k = random.Next(1, 4); k > 0; k--) mutated[random.Next(2) == 0 ? random.Next(20) : random.Next(mutated.Length)] ^= (byte)(1 << random.Next(8));
                Try($"mutation {i}", mutated);
            }
        }
        finally
        {
            File.Delete(path);
        }
        tally.Report();
    }

    [Fact]
    public void SafetensorsMutationsReadOrFailCleanly()
    {
        var model = new Sequential<float>(new Conv2d<float>(1, 2, 3), new BatchNorm<float>(2), new ReLU<float>(), new Flatten<float>(), new Linear<float>(2 * 4 * 4, 3));
        string path = Path.Combine(Path.GetTempPath(), $"fuzz-{Environment.ProcessId}.safetensors");
        Checkpoint.Save(path, model, new Dictionary<string, string> { ["model"] = "fuzz" });
        byte[] valid = File.ReadAllBytes(path);
        int headerEnd = 8 + BitConverter.ToInt32(valid, 0);
        var tally = new Tally(output, "safetensors", typeof(InvalidDataException));
        var random = new Random(4);
        void Try(string what, byte[] bytes)
        {
            File.WriteAllBytes(path, bytes);
            tally.Run(what, () =>
            {
                Safetensors.Read(path);
                Checkpoint.Load(path, new Sequential<float>(new Conv2d<float>(1, 2, 3), new BatchNorm<float>(2), new ReLU<float>(), new Flatten<float>(), new Linear<float>(2 * 4 * 4, 3)));
            });
        }
        string header = Encoding.UTF8.GetString(valid, 8, headerEnd - 8);
        MatchCollection numbers = Regex.Matches(header, @"\d+");
        try
        {
            for (int length = 0; length < valid.Length; length += length < 64 ? 1 : Math.Max(1, valid.Length / 200)) Try($"first {length} bytes", valid[..length]);
            foreach (Match number in numbers)
                foreach (string boundary in new[] { "0", "1", "9223372036854775807", "9223372036854775800", "4611686018427387904", "-1", "18446744073709551615", "2147483648" })
                {
                    string changed = header[..number.Index] + boundary + header[(number.Index + number.Length)..];
                    byte[] json = Encoding.UTF8.GetBytes(changed);
                    byte[] bytes = [.. BitConverter.GetBytes((ulong)json.Length), .. json, .. valid[headerEnd..]];
                    Try($"header number at {number.Index} = {boundary}", bytes);
                }
            for (int i = 0; i < Mutations; i++)
            {
                byte[] mutated = (byte[])valid.Clone();
                for (int k = random.Next(1, 4); k > 0; k--) mutated[random.Next(headerEnd)] = random.Next(3) switch { 0 => (byte)random.Next(256), 1 => (byte)'9', _ => (byte)(mutated[random.Next(mutated.Length)] ^ (1 << random.Next(8))) };
                Try($"mutation {i}", mutated);
            }
        }
        finally
        {
            File.Delete(path);
        }
        tally.Report();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void IdxMutationsReadOrFailCleanly(bool gzip)
    {
        byte[] raw = [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, .. Enumerable.Range(0, 24).Select(i => (byte)i)];
        byte[] valid = raw;
        if (gzip)
        {
            using var compressed = new MemoryStream();
            using (var stream = new GZipStream(compressed, CompressionLevel.Fastest, leaveOpen: true)) stream.Write(raw);
            valid = compressed.ToArray();
        }
        var tally = new Tally(output, gzip ? "idx.gz" : "idx", typeof(InvalidDataException));
        var random = new Random(gzip ? 6 : 5);
        void Try(string what, byte[] bytes) => tally.Run(what, () => Idx.Read(new MemoryStream(bytes), "fuzz.idx"));
        for (int length = 0; length <= valid.Length; length++) Try($"first {length} bytes", valid[..length]);
        for (int i = 0; i < Mutations; i++)
        {
            byte[] mutated = (byte[])valid.Clone();
            for (int k = random.Next(1, 4); k > 0; k--) mutated[random.Next(Math.Min(mutated.Length, gzip ? mutated.Length : 16))] = random.Next(2) == 0 ? (byte)random.Next(256) : (byte)0xff;
            Try($"mutation {i}", mutated);
        }
        tally.Report();
    }
}
