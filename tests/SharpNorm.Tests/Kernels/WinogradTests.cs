using SharpNorm.Kernels;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Kernels;

/// <summary>F(4x4, 3x3) Winograd against the direct definition of the convolution, summed in double.</summary>
public class WinogradTests
{
    /// <summary>y[n,o,i,j] = bias[o] + Σ_c,ki,kj x[n,c,i-pt+ki,j-pl+kj] · w[o,c,ki,kj], zero outside x.</summary>
    internal static double[] Direct(double[] x, int batch, int c, int h, int w, double[] filters, int o, double[]? bias, int pt, int pl, int oh, int ow)
    {
        var y = new double[batch * o * oh * ow];
        for (int n = 0; n < batch; n++)
            for (int k = 0; k < o; k++)
                for (int i = 0; i < oh; i++)
                    for (int j = 0; j < ow; j++)
                    {
                        double sum = bias?[k] ?? 0;
                        for (int ch = 0; ch < c; ch++)
                            for (int ki = 0; ki < 3; ki++)
                                for (int kj = 0; kj < 3; kj++)
                                {
                                    int ih = i - pt + ki, iw = j - pl + kj;
                                    if (ih >= 0 && ih < h && iw >= 0 && iw < w)
                                        sum += x[((n * c + ch) * h + ih) * w + iw] * filters[((k * c + ch) * 3 + ki) * 3 + kj];
                                }
                        y[((n * o + k) * oh + i) * ow + j] = sum;
                    }
        return y;
    }

    public static TheoryData<int, int, int, int, int, int, int, bool> Cases() => new()
    {
        // batch, C, O, H, W, pad top, pad left, bias
        { 1, 1, 1, 3, 3, 0, 0, false },        // one output
        { 1, 3, 2, 6, 6, 0, 0, true },         // exactly one tile
        { 2, 4, 5, 7, 7, 1, 1, false },        // 7x7 "same": partial tiles on both edges
        { 3, 5, 3, 8, 9, 1, 1, true },         // even height, odd width
        { 1, 2, 3, 5, 10, 2, 2, false },       // padding 2: output larger than input
        { 2, 3, 4, 9, 6, 1, 0, true },         // padding on one axis only
        { 1, 4, 4, 13, 11, 0, 0, false },      // every tile remainder
        { 7, 17, 9, 4, 5, 1, 1, true },        // many images, channels off the vector width
        { 20, 2, 3, 14, 14, 1, 1, false },     // 320 tiles: several chunks
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesTheDirectSumInDoubleForEveryWidthAndThreadCount(int batch, int c, int o, int h, int w, int pt, int pl, bool withBias)
    {
        int oh = h + 2 * pt - 2, ow = w + 2 * pl - 2;
        var random = new Gaussian(batch * 1000 + c * 100 + h * 10 + w);
        double[] x = random.Array<double>(batch * c * h * w), filters = random.Array<double>(o * c * 9);
        double[]? bias = withBias ? random.Array<double>(o) : null;
        double[] want = Direct(x, batch, c, h, w, filters, o, bias, pt, pl, oh, ow);
        double scale = want.Max(Math.Abs);
        foreach (int bits in new[] { 512, 256, 128, 0 })
            foreach (int threads in new[] { 1, 2, 3 })
            {
                var winograd = new Winograd<double> { MaxVectorBits = bits };
                double[] y = Enumerable.Repeat(double.NaN, want.Length).ToArray();
                winograd.Forward(x, batch, c, h, w, filters, o, bias, pt, pl, oh, ow, y, threads);
                for (int i = 0; i < y.Length; i++)
                    Assert.True(Math.Abs(y[i] - want[i]) <= 1e-12 * scale, $"{bits}-bit, {threads} threads: y[{i}] = {y[i]}, want {want[i]}");
            }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void WeightGradientMatchesTheDirectSumInDouble(int batch, int c, int o, int h, int w, int pt, int pl, bool accumulate)
    {
        int oh = h + 2 * pt - 2, ow = w + 2 * pl - 2;
        var random = new Gaussian(batch * 1000 + c * 100 + h * 10 + w + 1);
        double[] x = random.Array<double>(batch * c * h * w), dy = random.Array<double>(batch * o * oh * ow);
        double[] start = accumulate ? random.Array<double>(o * c * 9) : new double[o * c * 9];
        // dW[k,ch,ki,kj] = Σ_n,i,j dy[n,k,i,j] · x[n,ch,i-pt+ki,j-pl+kj]
        var want = (double[])start.Clone();
        for (int n = 0; n < batch; n++)
            for (int k = 0; k < o; k++)
                for (int ch = 0; ch < c; ch++)
                    for (int ki = 0; ki < 3; ki++)
                        for (int kj = 0; kj < 3; kj++)
                        {
                            double sum = 0;
                            for (int i = 0; i < oh; i++)
                                for (int j = 0; j < ow; j++)
                                {
                                    int ih = i - pt + ki, iw = j - pl + kj;
                                    if (ih >= 0 && ih < h && iw >= 0 && iw < w)
                                        sum += dy[((n * o + k) * oh + i) * ow + j] * x[((n * c + ch) * h + ih) * w + iw];
                                }
                            want[((k * c + ch) * 3 + ki) * 3 + kj] += sum;
                        }
        double scale = want.Max(Math.Abs);
        foreach (int bits in new[] { 512, 256, 128, 0 })
            foreach (int threads in new[] { 1, 2, 3 })
            {
                var winograd = new Winograd<double> { MaxVectorBits = bits };
                var dw = (double[])start.Clone();
                winograd.WeightGradient(x, batch, c, h, w, dy, o, pt, pl, oh, ow, dw, threads);
                for (int i = 0; i < dw.Length; i++)
                    Assert.True(Math.Abs(dw[i] - want[i]) <= 1e-12 * scale, $"{bits}-bit, {threads} threads: dW[{i}] = {dw[i]}, want {want[i]}");
            }
    }

    [Fact]
    public void FloatResultsAreBitIdenticalForAnyThreadCountAndAgreeAcrossWidths()
    {
        int batch = 9, c = 19, o = 21, h = 14, w = 13;
        var random = new Gaussian(77);
        float[] x = random.Array<float>(batch * c * h * w), filters = random.Array<float>(o * c * 9), bias = random.Array<float>(o);
        string? bits1 = null;
        float[]? first = null;
        foreach (int vectorBits in new[] { 512, 256, 0 })
            foreach (int threads in new[] { 1, 2, 4 })
            {
                var winograd = new Winograd<float> { MaxVectorBits = vectorBits };
                var y = new float[batch * o * h * w];
                winograd.Forward(x, batch, c, h, w, filters, o, bias, 1, 1, h, w, y, threads);
                string fingerprint = string.Join(",", y.Select(BitConverter.SingleToInt32Bits));
                if (vectorBits == 512)
                {
                    bits1 ??= fingerprint;
                    Assert.True(bits1 == fingerprint, $"{threads} threads: bits differ from 1 thread");
                }
                first ??= y;
                for (int i = 0; i < y.Length; i++) Assert.True(Math.Abs(y[i] - first[i]) <= 1e-4f * (1 + Math.Abs(first[i])), $"{vectorBits}-bit: y[{i}]");
            }
    }
}
