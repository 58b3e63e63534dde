using SharpNorm.Kernels;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Kernels;

/// <summary>The matrix product against a plain double triple loop: transposes, strides, edge tiles, widths, threads.</summary>
public class GemmTests
{
    public static TheoryData<int, int, int> Sizes() => new()
    {
        { 1, 1, 1 }, { 5, 7, 3 }, { 6, 32, 256 }, { 7, 33, 257 }, { 97, 65, 300 }, { 13, 500, 40 }, { 200, 19, 600 }, { 32, 784, 9 },
    };

    [Theory]
    [MemberData(nameof(Sizes))]
    public void MatchesTripleLoopForEveryTransposeWidthAndThreadCount(int m, int n, int k)
    {
        var random = new Gaussian(m * 1000 + n * 10 + k);
        foreach (bool transA in new[] { false, true })
            foreach (bool transB in new[] { false, true })
            {
                // Leading dimensions larger than the rows need, to catch stride mistakes.
                int lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 2, ldc = n + 1;
                double[] a = random.Array<double>((transA ? k : m) * lda), b = random.Array<double>((transB ? n : k) * ldb);
                double[] c0 = random.Array<double>(m * ldc);
                var expected = new double[m * ldc];
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < n; j++)
                    {
                        double sum = 0;
                        for (int p = 0; p < k; p++)
                            sum += (transA ? a[p * lda + i] : a[i * lda + p]) * (transB ? b[j * ldb + p] : b[p * ldb + j]);
                        expected[i * ldc + j] = sum;
                    }

                string? firstBits = null;
                foreach (int bits in new[] { 512, 256, 128, 0 })
                    foreach (int threads in new[] { 1, 2, 3 })
                        foreach (bool accumulate in new[] { false, true })
                        {
                            string at = $"{m}x{n}x{k} transA={transA} transB={transB} {bits}-bit {threads} threads accumulate={accumulate}";
                            var gemm = new Gemm<float>{ MaxVectorBits = bits, MaxDegreeOfParallelism = threads };
                            float[] c = c0.Select(v => (float)v).ToArray();
                            gemm.Multiply(transA, transB, m, n, k, a.Select(v => (float)v).ToArray(), lda, b.Select(v => (float)v).ToArray(), ldb, c, ldc, accumulate);
                            for (int i = 0; i < m; i++)
                            {
                                for (int j = 0; j < n; j++)
                                {
                                    double want = expected[i * ldc + j] + (accumulate ? (float)c0[i * ldc + j] : 0);
                                    Assert.True(Math.Abs(c[i * ldc + j] - want) <= 1e-4 * Math.Sqrt(k) * (1 + Math.Abs(want)), $"{at}: C[{i},{j}] = {c[i * ldc + j]}, want {want}");
                                }
                                // Padding beyond n is never written.
                                if (n < ldc) Assert.Equal((float)c0[i * ldc + n], c[i * ldc + n]);
                            }
                            if (bits == 512 && !accumulate)
                            {
                                string fingerprint = string.Join(",", c.Select(BitConverter.SingleToInt32Bits));
                                firstBits ??= fingerprint;
                                Assert.True(firstBits == fingerprint, $"{at}: bits differ from 1 thread");
                            }
                        }
            }
    }

    /// <summary>
    /// Products of several rows of tiles pack B once into a shared block of columns; blocks of one panel, of a few and
    /// of all of B must give the reference's values and the same bits, for every width and thread count.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SharedBlocksOfBGiveTheSameBitsForAnyBlockSize(bool transB)
    {
        int m = 203, n = 150, k = 300;
        var random = new Gaussian(77);
        float[] a = random.Array<float>(m * k), b = random.Array<float>(k * n);
        foreach (int bits in new[] { 512, 256, 128, 0 })
        {
            int nr = 2 * (bits == 0 ? 1 : bits / 32);
            string? first = null;
            foreach (int blockBytes in new[] { 1, 3 * nr * k * sizeof(float), 4 << 20 })
                foreach (int threads in new[] { 1, 2, 3 })
                {
                    var gemm = new Gemm<float> { MaxVectorBits = bits, MaxDegreeOfParallelism = threads, SharedBlockBytes = blockBytes };
                    var c = new float[m * n];
                    gemm.Multiply(false, transB, m, n, k, a, k, b, transB ? k : n, c, n, false);
                    for (int i = 0; i < m; i += 7)
                        for (int j = 0; j < n; j++)
                        {
                            double want = 0;
                            for (int p = 0; p < k; p++) want += (double)a[i * k + p] * (transB ? b[j * k + p] : b[p * n + j]);
                            Assert.True(Math.Abs(c[i * n + j] - want) <= 1e-4 * Math.Sqrt(k) * (1 + Math.Abs(want)), $"{bits}-bit block {blockBytes} B, {threads} threads: C[{i},{j}] = {c[i * n + j]}, want {want}");
                        }
                    string fingerprint = string.Join(",", c.Select(BitConverter.SingleToInt32Bits));
                    first ??= fingerprint;
                    Assert.True(first == fingerprint, $"{bits}-bit block {blockBytes} B, {threads} threads: bits differ");
                }
        }
    }

    [Fact]
    public void DoubleMatchesTripleLoop()
    {
        var random = new Gaussian(9);
        int m = 23, n = 41, k = 517;
        double[] a = random.Array<double>(m * k), b = random.Array<double>(k * n), c = new double[m * n];
        new Gemm<double>().Multiply(false, false, m, n, k, a, k, b, n, c, n, false);
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0;
                for (int p = 0; p < k; p++) sum += a[i * k + p] * b[p * n + j];
                Assert.True(Math.Abs(c[i * n + j] - sum) <= 1e-12 * k, $"C[{i},{j}]");
            }
    }

    [Fact]
    public void BadSizesAreRejected()
    {
        var gemm = new Gemm<float>();
        Assert.Throws<ArgumentOutOfRangeException>(() => gemm.Multiply(false, false, -1, 2, 2, new float[4], 2, new float[4], 2, new float[4], 2, false));
        var tooShort = Assert.Throws<ArgumentException>(() => gemm.Multiply(false, false, 3, 2, 2, new float[5], 2, new float[4], 2, new float[6], 2, false));
        Assert.Contains("A is 3 x 2", tooShort.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => gemm.Multiply(false, false, 2, 2, 2, new float[4], 1, new float[4], 2, new float[4], 2, false));
    }
}
