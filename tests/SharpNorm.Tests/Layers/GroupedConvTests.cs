using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>
/// Grouped convolutions of few channels per group (depthwise included) by the direct kernel: the forward against the
/// per-group im2col product bit for bit, all three against the float64 definition, bits across thread counts and widths.
/// </summary>
public class GroupedConvTests
{
    public static IEnumerable<object[]> Cases() => new object[][]
    {
        // batch, groups, channels per group, filters per group, height, width, kernel, stride, padding, dilation, bias
        [2, 3, 1, 1, 9, 9, 3, 1, 1, 1, true],     // depthwise
        [1, 4, 1, 1, 7, 70, 3, 1, 1, 1, false],   // rows of four vectors and more, and a tail
        [3, 5, 1, 2, 11, 13, 3, 2, 1, 1, true],   // stride 2, two filters per channel
        [2, 2, 1, 1, 12, 10, 5, 1, 2, 1, false],
        [1, 3, 1, 3, 9, 37, 3, 1, 2, 2, true],    // dilated
        [2, 6, 1, 1, 8, 8, 1, 1, 0, 1, true],
        [1, 2, 1, 1, 6, 17, 3, 3, 0, 1, false],   // stride 3, no padding
        [2, 4, 4, 4, 10, 19, 3, 1, 1, 1, true],   // ResNeXt-like groups of 4
        [1, 2, 8, 3, 9, 40, 3, 2, 1, 1, false],   // 8 channels per group, stride 2
        [2, 3, 2, 5, 7, 7, 3, 1, 1, 2, true],
    };

    private static Conv2d<T> Layer<T>(int groups, int cg, int og, int k, int stride, int padding, int dilation, bool bias, ConvAlgorithm algorithm)
        where T : unmanaged, IFloatingPointIeee754<T> =>
        new(groups * cg, groups * og, k, stride: stride, padding: padding, dilation: dilation, groups: groups, bias: bias,
            random: new Random(groups * 7 + cg * 3 + og)) { Algorithm = algorithm };

    [Theory]
    [MemberData(nameof(Cases))]
    public void ForwardIsIm2ColsBitsAndAllThreeMatchTheDefinition(int n, int groups, int cg, int og, int h, int w, int k, int stride, int padding, int dilation, bool bias)
    {
        var random = new Gaussian(n * 1000 + groups * 100 + cg * 10 + h);
        Tensor<double> x64 = random.Tensor<double>([n, groups * cg, h, w]);
        var reference = Layer<double>(groups, cg, og, k, stride, padding, dilation, bias, ConvAlgorithm.Im2ColGemm);
        nint[] yShape = reference.OutputShape(x64.Lengths);
        Tensor<double> dy64 = random.Tensor<double>(yShape);
        var (y, dx, dw, db) = Definition(reference, x64, dy64, groups, k, stride, padding, dilation);

        // Double: the direct kernel against the definition.
        var direct64 = Layer<double>(groups, cg, og, k, stride, padding, dilation, bias, ConvAlgorithm.Auto);
        Check.Close<double>(y, direct64.Forward(x64), 1e-12, 1e-12, "y");
        Check.Close<double>(dx, direct64.Backward(x64, dy64), 1e-12, 1e-12, "dx");
        direct64.Gradient(x64, dy64);
        Check.Close<double>(dw, direct64.Weight.Gradient, 1e-12, 1e-12, "dW");
        if (bias) Check.Close<double>(db, direct64.Bias!.Gradient, 1e-12, 1e-12, "db");

        // Float: the forward is im2col's bits; every width and thread count gives the same bits.
        Tensor<float> x = Tensor.Create(x64.ToArray().Select(v => (float)v).ToArray(), x64.Lengths);
        Tensor<float> dy = Tensor.Create(dy64.ToArray().Select(v => (float)v).ToArray(), dy64.Lengths);
        int[] im2colBits = Bits(Layer<float>(groups, cg, og, k, stride, padding, dilation, bias, ConvAlgorithm.Im2ColGemm).Forward(x));
        (int[] Y, int[] Dx, int[] Dw)? first = null;
        foreach (int bits in new[] { 512, 256, 128, 0 })
            foreach (int threads in new[] { 1, 2, 3 })
            {
                var conv = Layer<float>(groups, cg, og, k, stride, padding, dilation, bias, ConvAlgorithm.Direct);
                conv.MaxVectorBits = bits;
                conv.MaxDegreeOfParallelism = threads;
                Tensor<float> yf = conv.Forward(x), dxf = conv.Backward(x, dy);
                conv.Gradient(x, dy);
                Assert.Equal(im2colBits, Bits(yf));
                Check.Close<double>(dx, dxf.ToArray().Select(v => (double)v).ToArray(), 1e-5, 1e-5, $"dx, {bits}-bit, {threads} threads");
                Check.Close<double>(dw, conv.Weight.Gradient.ToArray().Select(v => (double)v).ToArray(), 1e-4, 1e-4, $"dW, {bits}-bit, {threads} threads");
                // At one width, every thread count gives the first's dx and dW bits.
                if (bits != 512) continue;
                (int[] Y, int[] Dx, int[] Dw) now = (Bits(yf), Bits(dxf), Bits(conv.Weight.Gradient));
                first ??= now;
                Assert.Equal(first.Value.Dx, now.Dx);
                Assert.Equal(first.Value.Dw, now.Dw);
            }
    }

    [Fact]
    public void AutoTakesTheDirectKernelForUpToEightChannelsPerGroup()
    {
        var random = new Gaussian(3);
        Tensor<float> x = random.Tensor<float>([2, 32, 10, 10]), dy = random.Tensor<float>([2, 32, 10, 10]);
        int[] Dx(int groups, ConvAlgorithm algorithm) =>
            Bits(new Conv2d<float>(32, 32, 3, padding: 1, groups: groups, random: new Random(1)) { Algorithm = algorithm }.Backward(x, dy));
        // 16 channels per group: the per-group products, so Auto and im2col agree bit for bit.
        Assert.Equal(Dx(2, ConvAlgorithm.Im2ColGemm), Dx(2, ConvAlgorithm.Auto));
        // 8 and 1 (depthwise): the direct kernel, whose dx sums round differently from col2im's.
        Assert.NotEqual(Dx(4, ConvAlgorithm.Im2ColGemm), Dx(4, ConvAlgorithm.Auto));
        Assert.Equal(Dx(4, ConvAlgorithm.Direct), Dx(4, ConvAlgorithm.Auto));
        Assert.NotEqual(Dx(32, ConvAlgorithm.Im2ColGemm), Dx(32, ConvAlgorithm.Auto));
        var e = Assert.Throws<ArgumentException>(() => new Conv2d<float>(32, 32, 3, groups: 2) { Algorithm = ConvAlgorithm.Direct });
        Assert.Contains("at most 8 input channels each", e.Message);
    }

    private static int[] Bits(Tensor<float> t) => t.ToArray().Select(BitConverter.SingleToInt32Bits).ToArray();

    /// <summary>y, dx, dW, db of a grouped layer from its definition, in double.</summary>
    private static (double[] Y, double[] Dx, double[] Dw, double[] Db) Definition(Conv2d<double> layer, Tensor<double> xt, Tensor<double> dyt, int groups,
        int k, int stride, int padding, int dilation)
    {
        double[] x = xt.ToArray(), dy = dyt.ToArray(), w = layer.Weight.Value.ToArray();
        double[]? b = layer.Bias?.Value.ToArray();
        int n = (int)xt.Lengths[0], c = (int)xt.Lengths[1], h = (int)xt.Lengths[2], wd = (int)xt.Lengths[3];
        int o = (int)dyt.Lengths[1], oh = (int)dyt.Lengths[2], ow = (int)dyt.Lengths[3], cg = c / groups, og = o / groups;
        double[] y = new double[dy.Length], dx = new double[x.Length], dw = new double[w.Length], db = new double[o];
        for (int img = 0; img < n; img++)
            for (int f = 0; f < o; f++)
                for (int i = 0; i < oh; i++)
                    for (int j = 0; j < ow; j++)
                    {
                        int yi = ((img * o + f) * oh + i) * ow + j;
                        double sum = b?[f] ?? 0;
                        for (int ci = 0; ci < cg; ci++)
                            for (int ki = 0; ki < k; ki++)
                                for (int kj = 0; kj < k; kj++)
                                {
                                    int r = i * stride - padding + ki * dilation, q = j * stride - padding + kj * dilation;
                                    if (r < 0 || r >= h || q < 0 || q >= wd) continue;
                                    int xi = ((img * c + f / og * cg + ci) * h + r) * wd + q, wi = ((f * cg + ci) * k + ki) * k + kj;
                                    sum += w[wi] * x[xi];
                                    dx[xi] += w[wi] * dy[yi];
                                    dw[wi] += dy[yi] * x[xi];
                                }
                        y[yi] = sum;
                        db[f] += dy[yi];
                    }
        return (y, dx, dw, db);
    }
}
