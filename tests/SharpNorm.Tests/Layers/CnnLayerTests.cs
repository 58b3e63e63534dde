using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tensors;
using SharpNorm.Tests.Support;
using SharpNorm.Training;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>
/// The layers around the norm layers (convolution, pooling, activations, Linear, Flatten, Sequential) and the loss:
/// double-precision central-difference checks of Backward and Gradient, and their contracts.
/// </summary>
public class CnnLayerTests
{
    /// <summary>Backward's dx and Gradient's parameter gradients against central differences of L = Σ y·r.</summary>
    internal static void CheckGradients(ILayer<double> layer, nint[] shape, int seed, double scale = 1)
    {
        var random = new Gaussian(seed);
        Tensor<double> x = random.Tensor<double>(shape, scale);
        nint[] outShape = layer.OutputShape(shape);
        Tensor<double> r = random.Tensor<double>(outShape);
        var y = Tensor.Create(new double[r.FlattenedLength], outShape);
        var dx = Tensor.Create(new double[x.FlattenedLength], shape);
        foreach (Parameter<double> p in layer.Parameters) p.ZeroGrad();
        layer.Forward(x.AsReadOnlyTensorSpan(), y.AsTensorSpan());
        layer.Backward(x.AsReadOnlyTensorSpan(), r.AsReadOnlyTensorSpan(), dx.AsTensorSpan());
        layer.Gradient(x.AsReadOnlyTensorSpan(), r.AsReadOnlyTensorSpan());

        double[] weights = r.ToArray();
        double Loss()
        {
            layer.Forward(x.AsReadOnlyTensorSpan(), y.AsTensorSpan());
            double[] values = y.ToArray();
            return values.Select((v, i) => v * weights[i]).Sum();
        }

        Assert.Equal(NumericalGradient.Central(TensorData.Flat(x), Loss), dx.ToArray(), NumericalGradient.Agrees);
        foreach (Parameter<double> p in layer.Parameters)
            Assert.Equal(NumericalGradient.Central(TensorData.Flat(p.Value), Loss), p.Gradient.ToArray(), NumericalGradient.Agrees);
    }

    public static TheoryData<string, int, int, int[], int[], int[], int[], int, bool, nint[]> ConvCases() => new()
    {
        // name, C, O, kernel, stride, padding, dilation, groups, bias, input
        { "3x3 pad 1", 3, 4, [3], [1], [1], [1], 1, true, [2, 3, 6, 5] },
        { "1x1 pointwise", 4, 3, [1], [1], [0], [1], 1, true, [2, 4, 3, 5] },
        { "1x1 stride 2", 4, 3, [1], [2], [0], [1], 1, false, [1, 4, 5, 5] },
        { "3x2 stride (2,1) pad (1,0)", 2, 3, [3, 2], [2, 1], [1, 0], [1], 1, true, [2, 2, 7, 6] },
        { "dilation 2", 2, 2, [3], [1], [2], [2], 1, false, [1, 2, 7, 7] },
        { "groups 2", 4, 6, [3], [1], [1], [1], 2, true, [2, 4, 5, 4] },
        { "depthwise", 3, 3, [3], [2], [1], [1], 3, true, [2, 3, 6, 7] },
        { "5x5 no pad", 1, 2, [5], [1], [0], [1], 1, true, [3, 1, 6, 5] },
        // 16 input channels per group and more: dx by the rotated weights' forward (no col2im).
        { "3x3 pad 1, 16 channels", 16, 3, [3], [1], [1], [1], 1, true, [3, 16, 4, 5] },
        { "3x3 pad (0,2), 16 channels", 16, 3, [3], [1], [0, 2], [1], 1, false, [2, 16, 5, 4] },
        { "3x2 dilation 2 pad (1,2), groups 2 of 16", 32, 4, [3, 2], [1], [1, 2], [2], 2, false, [2, 32, 5, 4] },
        { "3x3 pad 3, beyond the kernel's reach", 2, 2, [3], [1], [3], [1], 1, false, [2, 2, 4, 5] },
    };

    [Theory]
    [MemberData(nameof(ConvCases))]
    public void Conv2dGradientsMatchCentralDifferences(string name, int c, int o, int[] kernel, int[] stride, int[] padding, int[] dilation, int groups, bool bias, nint[] input)
    {
        _ = name;
        // Batch larger and smaller than the thread count: image-parallel and product-parallel paths.
        foreach (int threads in new[] { 1, 4 })
        {
            var conv = new Conv2d<double>(c, o, kernel, stride, padding, dilation, groups, bias, new Random(3)) { MaxDegreeOfParallelism = threads };
            CheckGradients(conv, input, seed: c * 7 + o);
        }
    }

    [Fact]
    public void Conv2dIsBitIdenticalForAnyThreadCountAndVectorWidthAgrees()
    {
        nint[] shape = [5, 8, 13, 11];
        var random = new Gaussian(1);
        Tensor<float> x = random.Tensor<float>(shape), dy = random.Tensor<float>([5, 16, 7, 6]);
        string? reference = null;
        float[]? referenceValues = null;
        foreach (int bits in new[] { 512, 256, 0 })
            foreach (int threads in new[] { 1, 2, 3, 8 })
            {
                var conv = new Conv2d<float>(8, 16, 3, stride: 2, padding: 1, random: new Random(5)) { MaxDegreeOfParallelism = threads };
                conv.MaxVectorBits = bits;
                float[] values = [.. conv.Forward(x).ToArray(), .. conv.Backward(x, dy).ToArray()];
                conv.Gradient(x, dy);
                values = [.. values, .. conv.Weight.Gradient.ToArray(), .. conv.Bias!.Gradient.ToArray()];
                if (bits == 512)
                {
                    string fingerprint = string.Join(",", values.Select(BitConverter.SingleToInt32Bits));
                    reference ??= fingerprint;
                    Assert.True(reference == fingerprint, $"{threads} threads: bits differ from 1 thread");
                }
                referenceValues ??= values;
                Check.Close(referenceValues, values, 1e-4, 1e-4, $"{bits}-bit {threads} threads");
            }
    }

    [Theory]
    [InlineData(3, 16, 3, 1, 1, 1, true, 1, 70, 70)]    // 4900 outputs: two bands of 2400 and a rest
    [InlineData(16, 8, 3, 2, 2, 2, false, 2, 81, 77)]   // bands of 448 outputs start and end inside output rows
    [InlineData(8, 4, 5, 1, 0, 1, true, 3, 40, 37)]
    public void Conv2dBandsOfALargeImageGiveTheUnbandedResult(int c, int o, int kernel, int stride, int padding, int dilation, bool bias, int batch, int height, int width)
    {
        // Fewer images than threads and large maps: the forward splits each image's output into bands (threads > 1).
        var random = new Gaussian(7);
        Tensor<float> x = random.Tensor<float>([batch, c, height, width]);
        float[]? reference = null;
        foreach (int threads in new[] { 1, 2, 4, 8 })
            foreach (bool frozen in new[] { false, true })
            {
                var conv = new Conv2d<float>(c, o, kernel, stride, padding, dilation, bias: bias, random: new Random(5)) { MaxDegreeOfParallelism = threads };
                conv.WeightsFrozen = frozen;
                float[] values = conv.Forward(x).ToArray();
                float[] again = conv.Forward(x).ToArray(); // frozen: the packed weights reused
                Assert.Equal(values, again);
                reference ??= values;
                Assert.True(reference.AsSpan().SequenceEqual(values), $"{threads} threads, frozen {frozen}: bits differ from 1 thread");
            }
        var exact = new Conv2d<double>(c, o, kernel, stride, padding, dilation, bias: bias, random: new Random(5));
        double[] expected = exact.Forward(Tensor.Create(x.ToArray().Select(v => (double)v).ToArray(), x.Lengths)).ToArray();
        Check.Close(expected.Select(v => (float)v).ToArray(), reference!, 1e-4, 1e-4, "float against double");
    }

    [Fact]
    public void LinearGradientsMatchCentralDifferences()
    {
        CheckGradients(new Linear<double>(7, 5, random: new Random(2)), [4, 7], seed: 3);
        CheckGradients(new Linear<double>(3, 4, bias: false, random: new Random(2)), [2, 3, 3], seed: 4);
    }

    /// <summary>Batches of up to 4 rows go by dot products of the weight rows (MatrixVector), larger ones by the matrix product: both against double sums, the same bits for any thread count.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    public void LinearForwardAgreesWithDoubleSumsAtEveryBatchSize(int rows)
    {
        const int inFeatures = 301, outFeatures = 250;   // 75K multiply-adds: two threads take part
        var x = new Gaussian(11).Tensor<float>([rows, inFeatures]);
        float[]? reference = null;
        foreach (int threads in new[] { 1, 2, -1 })
        {
            var layer = new Linear<float>(inFeatures, outFeatures, random: new Random(3)) { MaxDegreeOfParallelism = threads };
            float[] y = layer.Forward(x).ToArray();
            if (reference is null)
            {
                reference = y;
                float[] w = layer.Weight.Value.ToArray(), b = layer.Bias!.Value.ToArray(), input = x.ToArray();
                var expected = new float[rows * outFeatures];
                for (int r = 0; r < rows; r++)
                    for (int o = 0; o < outFeatures; o++)
                    {
                        double sum = b[o];
                        for (int k = 0; k < inFeatures; k++) sum += (double)input[r * inFeatures + k] * w[o * inFeatures + k];
                        expected[r * outFeatures + o] = (float)sum;
                    }
                Check.Close(expected, y, 1e-5, 1e-5, $"{rows} rows against double");
            }
            else Assert.True(reference.AsSpan().SequenceEqual(y), $"{rows} rows, {threads} threads: bits differ from 1 thread");
        }
    }

    [Fact]
    public void ActivationGradientsMatchCentralDifferences()
    {
        CheckGradients(new LeakyReLU<double>(), [3, 4, 5], seed: 5);
        CheckGradients(new LeakyReLU<double>(0.01), [2, 37], seed: 6);
        CheckGradients(new ReLU<double>(), [3, 41], seed: 7);
    }

    [Fact]
    public void LeakyReLUMatchesItsDefinition()
    {
        var layer = new LeakyReLU<float>();
        Assert.Equal(0.1, layer.NegativeSlope);
        float[] x = [-2f, -0.5f, 0f, 0.5f, 3f, float.NaN, float.NegativeInfinity];
        float[] y = layer.Forward(Tensor.Create(x, [7])).ToArray();
        Assert.Equal([-0.2f, -0.05f, 0f, 0.5f, 3f, float.NaN, float.NegativeInfinity], y);
        float[] dx = layer.Backward(Tensor.Create(x, [7]), Tensor.Create(Enumerable.Repeat(2f, 7).ToArray(), [7])).ToArray();
        Assert.Equal([0.2f, 0.2f, 0.2f, 2f, 2f, 0.2f, 0.2f], dx);
    }

    public static TheoryData<bool, int[], int[]?, int[], bool, nint[]> PoolCases() => new()
    {
        // max?, kernel, stride, padding, ceil, input
        { true, [2], null, [0], false, [2, 3, 6, 6] },
        { true, [2], null, [0], true, [1, 2, 7, 7] },       // ceil mode: a last partial window
        { true, [3], [2], [1], false, [2, 2, 7, 6] },
        { true, [2], [1], [0], false, [1, 2, 5, 5] },       // yolov3-tiny's stride-1 pool
        { true, [3, 2], [2, 1], [1, 0], true, [1, 1, 8, 5] },
        { false, [2], null, [0], false, [2, 3, 6, 6] },
        { false, [3], [2], [1], true, [1, 2, 8, 7] },
        { false, [2], [2], [1], true, [1, 1, 5, 5] },
    };

    [Theory]
    [MemberData(nameof(PoolCases))]
    public void PoolGradientsMatchCentralDifferences(bool max, int[] kernel, int[]? stride, int[] padding, bool ceil, nint[] input)
    {
        CheckGradients(max ? new MaxPool2d<double>(kernel, stride, padding, ceil) : new AvgPool2d<double>(kernel, stride, padding, ceil), input, seed: 11);
        if (!max) CheckGradients(new AvgPool2d<double>(kernel, stride, padding, ceil, countIncludePad: false), input, seed: 12);
    }

    [Fact]
    public void PoolOutputSizesFollowPyTorch()
    {
        // torch: MaxPool2d(2, 2, ceil_mode=True) on 7x7 gives 4x4; floor gives 3x3; kernel 3 stride 2 pad 1 on 7 gives 4.
        Assert.Equal(new nint[] { 1, 1, 4, 4 }, new MaxPool2d<float>(2, ceilMode: true).OutputShape([1, 1, 7, 7]));
        Assert.Equal(new nint[] { 1, 1, 3, 3 }, new MaxPool2d<float>(2).OutputShape([1, 1, 7, 7]));
        Assert.Equal(new nint[] { 1, 1, 4, 4 }, new MaxPool2d<float>(3, 2, 1).OutputShape([1, 1, 7, 7]));
        // The last window must start inside the input or left padding: 6 with kernel 2 stride 2 pad 1 ceil gives 4, not 5.
        Assert.Equal(new nint[] { 1, 1, 4, 4 }, new AvgPool2d<float>(2, 2, 1, ceilMode: true).OutputShape([1, 1, 6, 6]));
        Assert.Equal(new nint[] { 2, 3, 1, 1 }, new GlobalAvgPool2d<float>().OutputShape([2, 3, 5, 4]));
    }

    [Fact]
    public void MaxPoolGivesTheGradientToTheFirstMaximum()
    {
        var pool = new MaxPool2d<float>(2);
        var x = Tensor.Create([1f, 3f, 3f, 2f], [1, 1, 2, 2]);
        Assert.Equal([3f], pool.Forward(x).ToArray());
        Assert.Equal([0f, 5f, 0f, 0f], pool.Backward(x, Tensor.Create([5f], [1, 1, 1, 1])).ToArray());
    }

    /// <summary>
    /// The vector path of 2x2 stride-2 float max pooling against the scalar first-maximum search, bit for bit: ties,
    /// +0 and -0, NaNs and infinities; rows of 16 outputs and more, short rows staged side by side, odd sizes.
    /// </summary>
    [Theory]
    [InlineData(2, 2)]
    [InlineData(5, 7)]
    [InlineData(14, 14)]
    [InlineData(28, 28)]
    [InlineData(9, 31)]
    [InlineData(6, 32)]
    [InlineData(7, 33)]
    [InlineData(4, 66)]
    [InlineData(3, 100)]
    public void MaxPoolVectorPathMatchesTheScalarSearch(int height, int width)
    {
        var random = new Random(height * 1000 + width);
        float[] pool = [0f, -0f, 1f, 1f, 2f, -1f, float.NaN, float.PositiveInfinity, float.NegativeInfinity, 3f, 3f, 0.5f];
        nint[] shape = [2, 3, height, width];
        var x = Tensor.Create(Enumerable.Range(0, 6 * height * width).Select(_ => pool[random.Next(pool.Length)]).ToArray(), shape);
        var vector = new MaxPool2d<float>(2);
        var scalar = new MaxPool2d<float>(2) { Vectorized = false };
        nint[] outShape = vector.OutputShape(shape);
        var dy = Tensor.Create(Enumerable.Range(0, (int)outShape.Aggregate((nint)1, (a, b) => a * b))
            .Select(i => i % 7 == 0 ? -0f : (float)(random.NextDouble() - 0.5)).ToArray(), outShape);
        static int[] Bits(Tensor<float> t) => t.ToArray().Select(BitConverter.SingleToInt32Bits).ToArray();
        Assert.Equal(Bits(scalar.Forward(x)), Bits(vector.Forward(x)));
        Assert.Equal(Bits(scalar.Backward(x, dy)), Bits(vector.Backward(x, dy)));
    }

    /// <summary>darknet's 2x2 stride-1 pool (padded after): the vector path gives the scalar search's bits, NaN, ±0 and ties included.</summary>
    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 16)]
    [InlineData(2, 17)]
    [InlineData(5, 18)]
    [InlineData(13, 13)]
    [InlineData(3, 33)]
    [InlineData(26, 26)]
    [InlineData(4, 70)]
    public void StrideOneMaxPoolVectorPathMatchesTheScalarSearch(int height, int width)
    {
        var random = new Random(height * 1000 + width);
        float[] pool = [0f, -0f, 1f, 1f, 2f, -1f, float.NaN, float.PositiveInfinity, float.NegativeInfinity, 3f, 3f, 0.5f];
        nint[] shape = [2, 3, height, width];
        var x = Tensor.Create(Enumerable.Range(0, 6 * height * width).Select(_ => pool[random.Next(pool.Length)]).ToArray(), shape);
        var vector = new MaxPool2d<float>([2], [1], [0, 0, 1, 1]);
        var scalar = new MaxPool2d<float>([2], [1], [0, 0, 1, 1]) { Vectorized = false };
        Assert.Equal(shape, vector.OutputShape(shape));
        static int[] Bits(Tensor<float> t) => t.ToArray().Select(BitConverter.SingleToInt32Bits).ToArray();
        Assert.Equal(Bits(scalar.Forward(x)), Bits(vector.Forward(x)));
        // padded on the right only: one row fewer
        var right = new MaxPool2d<float>([2], [1], [0, 0, 0, 1]);
        var rightScalar = new MaxPool2d<float>([2], [1], [0, 0, 0, 1]) { Vectorized = false };
        if (height > 1) Assert.Equal(Bits(rightScalar.Forward(x)), Bits(right.Forward(x)));
    }

    /// <summary>Rectifiers over many pieces (several threads) against the element-wise definition, forward and backward.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void LeakyReLUOverManyPiecesMatchesItsDefinition(int threads)
    {
        var random = new Gaussian(21);
        nint[] shape = [5, 7, 100, 97];
        Tensor<float> x = random.Tensor<float>(shape), dy = random.Tensor<float>(shape);
        var relu = new LeakyReLU<float>(0.1) { MaxDegreeOfParallelism = threads };
        float[] xs = x.ToArray(), dys = dy.ToArray(), y = relu.Forward(x).ToArray(), dx = relu.Backward(x, dy).ToArray();
        for (int i = 0; i < xs.Length; i++)
        {
            Assert.Equal(xs[i] <= 0 ? xs[i] * 0.1f : xs[i], y[i]);
            Assert.Equal(xs[i] > 0 ? dys[i] : dys[i] * 0.1f, dx[i]);
        }
    }

    [Fact]
    public void GlobalAvgPoolAndFlattenGradientsMatchCentralDifferences()
    {
        CheckGradients(new GlobalAvgPool2d<double>(), [2, 3, 4, 5], seed: 13);
        CheckGradients(new Flatten<double>(), [2, 3, 4], seed: 14);
        Assert.Equal(new nint[] { 2, 12 }, new Flatten<float>().OutputShape([2, 3, 4]));
    }

    [Fact]
    public void DropoutMasksScaleAndPassGradientsThroughTheSameMask()
    {
        var dropout = new Dropout<double>(0.25, seed: 4);
        var x = new Gaussian(15).Tensor<double>([64, 100], 1, 3);
        double[] xs = x.ToArray(), y = dropout.Forward(x).ToArray();
        var dy = new Gaussian(16).Tensor<double>([64, 100]);
        double[] dys = dy.ToArray(), dx = dropout.Backward(x, dy).ToArray();
        int dropped = 0;
        for (int i = 0; i < xs.Length; i++)
        {
            if (y[i] == 0) { dropped++; Assert.Equal(0, dx[i]); }
            else
            {
                Assert.Equal(xs[i] / 0.75, y[i], 1e-12);
                Assert.Equal(dys[i] / 0.75, dx[i], 1e-12);
            }
        }
        Assert.InRange(dropped / (double)xs.Length, 0.22, 0.28);
        dropout.Training = false;
        Assert.Equal(xs, dropout.Forward(x).ToArray());
        Assert.Equal(dys, dropout.Backward(x, dy).ToArray());
        Assert.Throws<ArgumentOutOfRangeException>(() => new Dropout<float>(1.5));
    }

    private static Sequential<double> SmallNetwork(bool withDropout = false)
    {
        var random = new Random(7);
        var layers = new List<ILayer<double>>
        {
            new Conv2d<double>(2, 4, 3, padding: 1, bias: false, random: random),
            new BatchNorm<double>(4),
            new LeakyReLU<double>(),
            new MaxPool2d<double>(2),
            new Conv2d<double>(4, 6, 3, padding: 1, random: random),
            new GroupNorm<double>(2, 6),
            new ReLU<double>(),
            new GlobalAvgPool2d<double>(),
            new Flatten<double>(),
            new Linear<double>(6, 3, random: random),
        };
        if (withDropout) layers.Insert(9, new Dropout<double>(0.5));
        return new Sequential<double>(layers.ToArray());
    }

    [Fact]
    public void SequentialGradientsMatchCentralDifferences()
    {
        Sequential<double> network = SmallNetwork();
        // Gradient is the training sweep (parameters only); Backward gives dx. Check both against central differences.
        CheckGradients(network, [3, 2, 6, 6], seed: 17);
    }

    [Fact]
    public void SequentialNamesParametersAndBuffersAsPyTorch()
    {
        Sequential<double> network = SmallNetwork();
        Assert.Equal(
            ["0.weight", "1.weight", "1.bias", "4.weight", "4.bias", "5.weight", "5.bias", "9.weight", "9.bias"],
            network.NamedParameters.Select(p => p.Name));
        Assert.Equal(["1.running_mean", "1.running_var", "1.num_batches_tracked"], network.NamedBuffers.Select(b => b.Name));
        var nested = new Sequential<float>(new Sequential<float>(new Linear<float>(2, 2)), new BatchNorm<float>(2));
        Assert.Equal(["0.0.weight", "0.0.bias", "1.weight", "1.bias"], nested.NamedParameters.Select(p => p.Name));
        network.Training = false;
        Assert.All(network.Layers, l => Assert.False(l.Training));
    }

    [Fact]
    public void SequentialNamesTheLayerThatRefusesItsInput()
    {
        var network = new Sequential<float>(new Conv2d<float>(3, 4, 3), new Linear<float>(5, 2));
        var e = Assert.Throws<ArgumentException>(() => network.OutputShape([1, 3, 8, 8]));
        Assert.Contains("Layer 1 (Linear)", e.Message);
        Assert.Contains("(1, 4, 6, 6)", e.Message);
        Assert.Throws<InvalidOperationException>(() => new Sequential<float>(new ReLU<float>()).Backward(Tensor.Create(new float[2], [2]), Tensor.Create(new float[2], [2])));
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(0.1)]
    public void CrossEntropyMatchesLogSoftmaxDefinitionAndItsGradient(double smoothing)
    {
        var loss = new CrossEntropyLoss<double>(smoothing);
        var logits = new Gaussian(18).Tensor<double>([5, 4], 2);
        int[] labels = [0, 3, 1, 1, 2];
        double[] z = logits.ToArray();
        double expected = 0;
        for (int n = 0; n < 5; n++)
        {
            double[] row = z.Skip(n * 4).Take(4).ToArray();
            double logSum = Math.Log(row.Sum(Math.Exp));
            for (int c = 0; c < 4; c++)
            {
                double target = smoothing / 4 + (c == labels[n] ? 1 - smoothing : 0);
                expected -= target * (row[c] - logSum);
            }
        }
        Assert.Equal(expected / 5, loss.Forward(logits, labels), 12);
        double[] gradient = loss.Backward(logits, labels).ToArray();
        Assert.Equal(NumericalGradient.Central(TensorData.Flat(logits), () => loss.Forward(logits, labels)), gradient, NumericalGradient.Agrees);

        Assert.Throws<ArgumentOutOfRangeException>(() => loss.Forward(logits, new[] { 0, 4, 1, 1, 2 }));
        Assert.Throws<ArgumentException>(() => loss.Forward(logits, new[] { 0, 1 }));
    }

    [Fact]
    public void LayersRejectBadInputWithTheShapes()
    {
        var conv = new Conv2d<float>(3, 4, 3);
        Assert.Contains("(N, 3, H, W)", Assert.Throws<ArgumentException>(() => conv.Forward(Tensor.Create(new float[32], [2, 4, 2, 2]))).Message);
        Assert.Contains("too small", Assert.Throws<ArgumentException>(() => conv.Forward(Tensor.Create(new float[12], [1, 3, 2, 2]))).Message);
        Assert.Throws<ArgumentException>(() => new Conv2d<float>(3, 4, 3, groups: 2));
        Assert.Throws<ArgumentException>(() => new Conv2d<float>(3, 4, [3, 3, 3]));
        Assert.Contains("(*, 5)", Assert.Throws<ArgumentException>(() => new Linear<float>(5, 2).Forward(Tensor.Create(new float[4], [1, 4]))).Message);
        Assert.Throws<ArgumentException>(() => new MaxPool2d<float>(2, padding: 2));
        Assert.Contains("(N, C, H, W)", Assert.Throws<ArgumentException>(() => new MaxPool2d<float>(2).Forward(Tensor.Create(new float[4], [2, 2]))).Message);
        var y = Tensor.Create(new float[10], [1, 10]);
        Assert.Throws<ArgumentException>(() => new Linear<float>(5, 2).Forward(Tensor.Create(new float[5], [1, 5]).AsReadOnlyTensorSpan(), y.AsTensorSpan()));
    }
}
