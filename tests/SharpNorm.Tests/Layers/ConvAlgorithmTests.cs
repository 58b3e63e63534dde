using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tensors;
using SharpNorm.Tests.Support;
using Xunit;
using Xunit.Abstractions;

namespace SharpNorm.Tests.Layers;

/// <summary>Conv2d's algorithms: Winograd against im2col and the float64 definition; the choice and its errors.</summary>
public class ConvAlgorithmTests(ITestOutputHelper output)
{
    private static Conv2d<T> Layer<T>(int c, int o, int padding, bool bias, ConvAlgorithm algorithm, int threads = -1) where T : unmanaged, System.Numerics.IFloatingPointIeee754<T> =>
        new(c, o, 3, padding: padding, bias: bias, random: new Random(c * 31 + o)) { Algorithm = algorithm, MaxDegreeOfParallelism = threads };

    public static TheoryData<int, int, int, int, int, int, bool> Shapes() => new()
    {
        // batch, C, O, H, W, padding, bias
        { 1, 16, 16, 7, 7, 1, true },
        { 3, 17, 20, 9, 6, 1, false },
        { 2, 16, 18, 5, 8, 0, true },
        { 1, 20, 16, 6, 5, 2, false },
        { 5, 24, 32, 14, 14, 1, true },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void WinogradForwardAndInputGradientMatchIm2ColInDouble(int batch, int c, int o, int h, int w, int padding, bool bias)
    {
        var random = new Gaussian(batch * 100 + c + h);
        Tensor<double> x = random.Tensor<double>([batch, c, h, w]);
        var im2col = Layer<double>(c, o, padding, bias, ConvAlgorithm.Im2ColGemm);
        var winograd = Layer<double>(c, o, padding, bias, ConvAlgorithm.Winograd);
        double[] want = im2col.Forward(x).ToArray(), got = winograd.Forward(x).ToArray();
        double scale = want.Max(Math.Abs);
        for (int i = 0; i < want.Length; i++) Assert.True(Math.Abs(got[i] - want[i]) <= 1e-12 * scale, $"y[{i}] = {got[i]}, want {want[i]}");
        Tensor<double> dy = random.Tensor<double>(im2col.OutputShape(x.Lengths));
        double[] dxWant = im2col.Backward(x, dy).ToArray(), dxGot = winograd.Backward(x, dy).ToArray();
        scale = dxWant.Max(Math.Abs);
        for (int i = 0; i < dxWant.Length; i++) Assert.True(Math.Abs(dxGot[i] - dxWant[i]) <= 1e-12 * scale, $"dx[{i}] = {dxGot[i]}, want {dxWant[i]}");
        // Gradient accumulates: twice from zero is twice once.
        foreach (Conv2d<double> conv in new[] { im2col, winograd })
        {
            foreach (var p in conv.Parameters) p.ZeroGrad();
            conv.Gradient(x, dy);
            conv.Gradient(x, dy);
        }
        foreach (var (reference, candidate) in im2col.Parameters.Zip(winograd.Parameters))
        {
            double[] a = reference.Gradient.ToArray(), b = candidate.Gradient.ToArray();
            scale = a.Max(Math.Abs);
            for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(b[i] - a[i]) <= 1e-12 * scale, $"{reference.Name}.grad[{i}] = {b[i]}, want {a[i]}");
        }
    }

    [Fact]
    public void WinogradIsBitIdenticalForAnyThreadCount()
    {
        var random = new Gaussian(3);
        Tensor<float> x = random.Tensor<float>([6, 24, 11, 13]);
        string? forward = null, backward = null;
        foreach (int threads in new[] { 1, 2, 3, 4 })
        {
            var conv = Layer<float>(24, 40, 1, true, ConvAlgorithm.Winograd, threads);
            Tensor<float> dy = new Gaussian(4).Tensor<float>(conv.OutputShape(x.Lengths));
            string f = string.Join(",", conv.Forward(x).ToArray().Select(BitConverter.SingleToInt32Bits));
            conv.Gradient(x, dy);
            string b = string.Join(",", conv.Backward(x, dy).ToArray().Concat(conv.Weight.Gradient.ToArray()).Concat(conv.Bias!.Gradient.ToArray())
                .Select(BitConverter.SingleToInt32Bits));
            forward ??= f;
            backward ??= b;
            Assert.True(forward == f, $"{threads} threads: forward bits differ from 1 thread");
            Assert.True(backward == b, $"{threads} threads: dx, dW or db bits differ from 1 thread");
        }
    }

    /// <summary>
    /// The float32 error of Winograd F(4x4, 3x3) against the float64 result stays within 10x the im2col product's, on the
    /// DarkNetClassifier's 3x3 shapes (PyTorch's initialization, inputs of unit scale).
    /// </summary>
    [Theory]
    [InlineData(4, 48, 96, 14)]
    [InlineData(4, 96, 192, 7)]
    public void WinogradFloatErrorStaysWithinTenTimesIm2Cols(int batch, int c, int o, int size)
    {
        var random = new Gaussian(size);
        Tensor<double> x = random.Tensor<double>([batch, c, size, size]);
        var exact = Layer<double>(c, o, 1, false, ConvAlgorithm.Im2ColGemm);
        Tensor<double> dy = random.Tensor<double>(exact.OutputShape(x.Lengths));
        double[] y64 = exact.Forward(x).ToArray(), dx64 = exact.Backward(x, dy).ToArray();
        exact.Gradient(x, dy);
        double[] dw64 = exact.Weight.Gradient.ToArray();
        Tensor<float> xf = Tensor.Create(x.ToArray().Select(v => (float)v).ToArray(), x.Lengths);
        Tensor<float> dyf = Tensor.Create(dy.ToArray().Select(v => (float)v).ToArray(), dy.Lengths);
        double Rms(float[] got, double[] want) => Math.Sqrt(got.Select((v, i) => (v - want[i]) * (v - want[i])).Average() / want.Select(v => v * v).Average());
        var errors = new Dictionary<ConvAlgorithm, (double Y, double Dx, double Dw)>();
        foreach (ConvAlgorithm algorithm in new[] { ConvAlgorithm.Im2ColGemm, ConvAlgorithm.Winograd })
        {
            var conv = Layer<float>(c, o, 1, false, algorithm);
            // The float layer's weights are the double layer's, rounded.
            Span<float> weights = TensorData.Flat(conv.Weight.Value);
            ReadOnlySpan<double> exactWeights = TensorData.Flat(exact.Weight.Value);
            for (int i = 0; i < weights.Length; i++) weights[i] = (float)exactWeights[i];
            float[] y = conv.Forward(xf).ToArray(), dx = conv.Backward(xf, dyf).ToArray();
            conv.Gradient(xf, dyf);
            errors[algorithm] = (Rms(y, y64), Rms(dx, dx64), Rms(conv.Weight.Gradient.ToArray(), dw64));
        }
        var (im2colY, im2colDx, im2colDw) = errors[ConvAlgorithm.Im2ColGemm];
        var (winogradY, winogradDx, winogradDw) = errors[ConvAlgorithm.Winograd];
        output.WriteLine($"{batch}x{c}x{size}x{size} -> {o}: relative RMS error y: im2col {im2colY:E2}, Winograd {winogradY:E2} ({winogradY / im2colY:F1}x); " +
                         $"dx: im2col {im2colDx:E2}, Winograd {winogradDx:E2} ({winogradDx / im2colDx:F1}x); " +
                         $"dW: im2col {im2colDw:E2}, Winograd {winogradDw:E2} ({winogradDw / im2colDw:F1}x)");
        Assert.True(winogradY <= 10 * im2colY, $"y: Winograd error {winogradY:E2} is over 10x im2col's {im2colY:E2}");
        Assert.True(winogradDx <= 10 * im2colDx, $"dx: Winograd error {winogradDx:E2} is over 10x im2col's {im2colDx:E2}");
        Assert.True(winogradDw <= 10 * im2colDw, $"dW: Winograd error {winogradDw:E2} is over 10x im2col's {im2colDw:E2}");
    }

    [Fact]
    public void AutoChoosesByShapeAndWinogradRefusesOtherKernels()
    {
        var fiveByFive = new Conv2d<float>(16, 16, 5, padding: 2);
        Assert.Equal(ConvAlgorithm.Auto, fiveByFive.Algorithm);
        var e = Assert.Throws<ArgumentException>(() => fiveByFive.Algorithm = ConvAlgorithm.Winograd);
        Assert.Contains("3x3 kernel", e.Message);
        Assert.Contains("kernel (5, 5)", e.Message);
        Assert.Equal(ConvAlgorithm.Auto, fiveByFive.Algorithm);
        Assert.Throws<ArgumentException>(() => new Conv2d<float>(16, 16, 3, stride: 2) { Algorithm = ConvAlgorithm.Winograd });
        Assert.Throws<ArgumentException>(() => new Conv2d<float>(16, 16, 3, groups: 2) { Algorithm = ConvAlgorithm.Winograd });
        Assert.Throws<ArgumentOutOfRangeException>(() => new Conv2d<float>(16, 16, 3) { Algorithm = (ConvAlgorithm)7 });
        // Auto on a 5x5 layer runs im2col and matches it exactly.
        Tensor<float> x = new Gaussian(1).Tensor<float>([2, 16, 6, 6]);
        var explicitIm2Col = new Conv2d<float>(16, 16, 5, padding: 2) { Algorithm = ConvAlgorithm.Im2ColGemm };
        Assert.Equal(explicitIm2Col.Forward(x).ToArray(), fiveByFive.Forward(x).ToArray());
    }

    [Theory]
    [InlineData(1, 8, false)]     // 4 tiles: im2col
    [InlineData(2, 16, true)]     // 32 tiles: Winograd
    [InlineData(8, 8, true)]
    [InlineData(16, 5, false)]    // 64 tiles, 39% of their outputs inside the map: im2col
    [InlineData(16, 7, true)]     // 77%
    public void AutoTakesWinogradFromThirtyTwoWellFilledTilesOn(int batch, int size, bool winograd)
    {
        Tensor<float> x = new Gaussian(size).Tensor<float>([batch, 16, size, size]);
        int[] Bits(ConvAlgorithm algorithm) => Layer<float>(16, 16, 1, true, algorithm).Forward(x).ToArray().Select(BitConverter.SingleToInt32Bits).ToArray();
        int[] auto = Bits(ConvAlgorithm.Auto), expected = Bits(winograd ? ConvAlgorithm.Winograd : ConvAlgorithm.Im2ColGemm);
        Assert.Equal(expected, auto);
        Assert.NotEqual(Bits(winograd ? ConvAlgorithm.Im2ColGemm : ConvAlgorithm.Winograd), auto);
    }

    /// <summary>
    /// With the weights frozen (a loaded network's inference: the transformed filters are kept), Auto takes Winograd
    /// from 9 well-filled tiles; with weights that may change it keeps the 32-tile threshold.
    /// </summary>
    [Theory]
    [InlineData(12, false, false)]  // 9 tiles, weights free: im2col
    [InlineData(12, true, true)]    // 9 tiles, frozen: Winograd
    [InlineData(13, true, true)]    // 16 tiles, 66% inside
    [InlineData(8, true, false)]    // 4 tiles: im2col even frozen
    [InlineData(9, true, false)]    // 9 tiles, 56% inside: im2col
    public void AutoTakesWinogradFromNineTilesWhenTheWeightsAreFrozen(int size, bool frozen, bool winograd)
    {
        Tensor<float> x = new Gaussian(size).Tensor<float>([1, 16, size, size]);
        int[] Bits(ConvAlgorithm algorithm, bool frozenLayer)
        {
            Conv2d<float> conv = Layer<float>(16, 16, 1, true, algorithm);
            conv.WeightsFrozen = frozenLayer;
            // Twice: the second call is the one that reuses what the first kept.
            conv.Forward(x);
            return conv.Forward(x).ToArray().Select(BitConverter.SingleToInt32Bits).ToArray();
        }
        int[] auto = Bits(ConvAlgorithm.Auto, frozen);
        Assert.Equal(Bits(winograd ? ConvAlgorithm.Winograd : ConvAlgorithm.Im2ColGemm, false), auto);
        Assert.NotEqual(Bits(winograd ? ConvAlgorithm.Im2ColGemm : ConvAlgorithm.Winograd, false), auto);
    }

    [Theory]
    [InlineData(16, 32, false)]   // 512 filters: im2col's weight gradient
    [InlineData(48, 96, true)]    // 4608: Winograd's
    public void AutoTakesTheWinogradWeightGradientFromFourThousandFiltersOn(int c, int o, bool winograd)
    {
        var random = new Gaussian(c);
        // 8 images of 8x8: 32 tiles, all inside; only the filter count decides.
        Tensor<float> x = random.Tensor<float>([8, c, 8, 8]);
        Tensor<float> dy = random.Tensor<float>([8, o, 8, 8]);
        int[] Bits(ConvAlgorithm algorithm)
        {
            Conv2d<float> conv = Layer<float>(c, o, 1, false, algorithm);
            conv.Gradient(x, dy);
            return conv.Weight.Gradient.ToArray().Select(BitConverter.SingleToInt32Bits).ToArray();
        }
        Assert.Equal(Bits(winograd ? ConvAlgorithm.Winograd : ConvAlgorithm.Im2ColGemm), Bits(ConvAlgorithm.Auto));
    }
}

/// <summary>The direct forward for few input channels against im2col's product: the same sums in the same order, so the same bits.</summary>
public class DirectConvTests
{
    public static TheoryData<int, int, int, int, int, int, bool, int> Cases() => new()
    {
        // channels, out channels, kernel, padding, height, width, bias, vector bits
        { 1, 48, 3, 1, 28, 28, false, 512 },
        { 3, 16, 3, 1, 37, 70, true, 512 },     // 70 columns: a full pair and a short one
        { 3, 13, 5, 2, 20, 33, true, 256 },     // out channels not a multiple of the register block
        { 2, 8, 7, 3, 9, 40, false, 128 },
        { 4, 5, 1, 0, 6, 35, true, 0 },
        { 3, 9, 3, 0, 11, 34, false, 512 },     // no padding
        { 1, 4, 2, 1, 8, 33, true, 512 },       // even kernel, output one wider than the input
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void DirectForwardHasIm2ColsBits(int c, int o, int k, int padding, int height, int width, bool bias, int bits)
    {
        Conv2d<float> Make(ConvAlgorithm algorithm) => new(c, o, k, padding: padding, bias: bias, random: new Random(4))
        { Algorithm = algorithm, MaxVectorBits = bits };
        foreach (int batch in new[] { 1, 3 })
            foreach (int threads in new[] { 1, 2, 3 })
            {
                Tensor<float> x = new Gaussian(batch * 10 + threads).Tensor<float>([batch, c, height, width]);
                Conv2d<float> direct = Make(ConvAlgorithm.Direct), im2col = Make(ConvAlgorithm.Im2ColGemm);
                direct.MaxDegreeOfParallelism = im2col.MaxDegreeOfParallelism = threads;
                float[] expected = im2col.Forward(x).ToArray(), actual = direct.Forward(x).ToArray();
                Assert.Equal(expected.Select(BitConverter.SingleToInt32Bits), actual.Select(BitConverter.SingleToInt32Bits));
            }
    }

    [Fact]
    public void DirectForwardMatchesTheDoubleSum()
    {
        var conv = new Conv2d<double>(3, 10, 3, padding: 1, random: new Random(5)) { Algorithm = ConvAlgorithm.Direct };
        Tensor<double> x = new Gaussian(6).Tensor<double>([2, 3, 9, 40]);
        double[] y = conv.Forward(x).ToArray(), xs = x.ToArray(), w = conv.Weight.Value.ToArray(), b = conv.Bias!.Value.ToArray();
        for (int n = 0; n < 2; n++)
            for (int oc = 0; oc < 10; oc++)
                for (int i = 0; i < 9; i++)
                    for (int j = 0; j < 40; j++)
                    {
                        double sum = b[oc];
                        for (int ic = 0; ic < 3; ic++)
                            for (int di = 0; di < 3; di++)
                                for (int dj = 0; dj < 3; dj++)
                                {
                                    int r = i + di - 1, q = j + dj - 1;
                                    if (r >= 0 && r < 9 && q >= 0 && q < 40) sum += w[((oc * 3 + ic) * 3 + di) * 3 + dj] * xs[((n * 3 + ic) * 9 + r) * 40 + q];
                                }
                        Assert.Equal(sum, y[((n * 10 + oc) * 9 + i) * 40 + j], 1e-12);
                    }
    }

    [Fact]
    public void DirectIsRefusedWhereItDoesNotFit()
    {
        var e = Assert.Throws<ArgumentException>(() => new Conv2d<float>(8, 4, 3) { Algorithm = ConvAlgorithm.Direct });
        Assert.Contains("at most 4 input channels", e.Message);
        Assert.Throws<ArgumentException>(() => new Conv2d<float>(3, 4, 3, stride: 2) { Algorithm = ConvAlgorithm.Direct });
        Assert.Throws<ArgumentException>(() => new Conv2d<float>(32, 4, 3, groups: 2) { Algorithm = ConvAlgorithm.Direct });  // 16 channels per group
        Assert.Throws<ArgumentException>(() => new Conv2d<float>(3, 4, 9) { Algorithm = ConvAlgorithm.Direct });
    }
}
