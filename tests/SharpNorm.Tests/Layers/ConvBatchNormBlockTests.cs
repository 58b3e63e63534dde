using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Kernels;
using SharpNorm.Layers;
using SharpNorm.Models;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>
/// Sequential's fused Conv2d → BatchNorm → rectifier blocks against the same layers run one by one (the unfused
/// path, itself checked against libtorch): outputs, input gradients, every parameter gradient, running statistics,
/// eval mode; the moments the convolution gathers against the double moments of its output; thread-count bits,
/// allocations and refusals.
/// </summary>
public class ConvBatchNormBlockTests
{

    /// <summary>A network whose blocks take every convolution path: im2col image groups, pointwise, grouped, Winograd, bands, direct.</summary>
    public enum Net { Im2ColAndPointwise, Grouped, Winograd, Banded }

    private static Sequential<T> Build<T>(Net net, int seed, bool unbiased = false, bool affine = true, double? momentum = 0.1, bool convBias = false)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        var random = new Random(seed);
        BatchNorm<T> Norm(int c) => new(c, momentum: momentum, affine: affine, unbiasedNormalization: unbiased);
        ILayer<T>[] layers = net switch
        {
            Net.Im2ColAndPointwise =>
            [
                new Conv2d<T>(3, 8, 3, padding: 1, bias: convBias, random: random), Norm(8), new LeakyReLU<T>(0.1),
                new MaxPool2d<T>(2),
                new Conv2d<T>(8, 12, 3, padding: 1, bias: convBias, random: random), Norm(12), new ReLU<T>(),
                new Conv2d<T>(12, 6, 1, bias: convBias, random: random), Norm(6),    // no rectifier: a block of two
                new GlobalAvgPool2d<T>(), new Flatten<T>(),
            ],
            Net.Grouped =>
            [
                new Conv2d<T>(4, 8, 3, padding: 1, groups: 2, bias: convBias, random: random), Norm(8), new LeakyReLU<T>(0.2),
                new Conv2d<T>(8, 8, 3, stride: 2, padding: 1, bias: convBias, random: random), Norm(8), new LeakyReLU<T>(0.1),
                new Flatten<T>(),
            ],
            Net.Winograd =>
            [
                new Conv2d<T>(3, 16, 3, padding: 1, bias: convBias, random: random), Norm(16), new LeakyReLU<T>(0.1),
                new Conv2d<T>(16, 16, 3, padding: 1, bias: convBias, random: random) { Algorithm = ConvAlgorithm.Winograd }, Norm(16), new LeakyReLU<T>(0.1),
                new Conv2d<T>(16, 16, 3, padding: 0, bias: convBias, random: random) { Algorithm = ConvAlgorithm.Winograd }, Norm(16), new LeakyReLU<T>(0.1),
                new GlobalAvgPool2d<T>(), new Flatten<T>(),
            ],
            _ =>
            [
                new Conv2d<T>(3, 4, 3, padding: 1, bias: convBias, random: random) { Algorithm = ConvAlgorithm.Im2ColGemm }, Norm(4), new LeakyReLU<T>(0.1),   // im2col by bands
                new Conv2d<T>(4, 4, 3, padding: 1, bias: convBias, random: random), Norm(4), new LeakyReLU<T>(0.1),   // direct, on Auto
                new MaxPool2d<T>(2),
                new Conv2d<T>(4, 4, 3, padding: 1, bias: convBias, random: random) { Algorithm = ConvAlgorithm.Direct }, Norm(4), new LeakyReLU<T>(0.1),
                new GlobalAvgPool2d<T>(), new Flatten<T>(),
            ],
        };
        return new Sequential<T>(layers);
    }

    private static nint[] InputShape(Net net) => net switch
    {
        Net.Im2ColAndPointwise => [3, 3, 10, 9],
        Net.Grouped => [2, 4, 7, 7],
        Net.Winograd => [3, 3, 15, 13],   // tiles cut by the map's edges, 3 images
        _ => [1, 3, 72, 71],              // one image, a map large enough for bands
    };

    private sealed record Step<T>(T[] Output, T[] InputGradient, Dictionary<string, T[]> Gradients, Dictionary<string, double[]> Buffers);

    /// <summary>Two training steps (forward, Backward, Gradient, a parameter update between them), then eval's forward and gradients.</summary>
    private static List<Step<T>> Run<T>(Sequential<T> model, nint[] inputShape, int threads, int seed = 5, double learningRate = 0.05)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        model.MaxDegreeOfParallelism = threads;
        var random = new Gaussian(seed);
        Tensor<T> x = random.Tensor<T>(inputShape, scale: 1.5, offset: 0.3);
        nint[] outShape = model.OutputShape(inputShape);
        Tensor<T> dOut = random.Tensor<T>(outShape);
        var steps = new List<Step<T>>();
        foreach (bool training in new[] { true, true, false })
        {
            model.Training = training;
            model.ZeroGrad();
            Tensor<T> y = model.Forward(x);
            Tensor<T> dx = model.Backward(x, dOut);
            model.Gradient(x, dOut);
            steps.Add(new Step<T>(y.ToArray(), dx.ToArray(),
                model.NamedParameters.ToDictionary(p => p.Name, p => p.Parameter.Gradient.ToArray()),
                model.NamedBuffers.ToDictionary(b => b.Name, b => b.Buffer.IsCount
                    ? [b.Buffer.Count]
                    : b.Buffer.Values!.ToArray().Select(v => double.CreateTruncating(v)).ToArray())));
            // A plain SGD step, so the second step starts from other weights.
            foreach (var (_, p) in model.NamedParameters)
            {
                Span<T> value = TensorData(p.Value), gradient = TensorData(p.Gradient);
                for (int i = 0; i < value.Length; i++) value[i] -= T.CreateTruncating(learningRate) * gradient[i];
            }
        }
        return steps;
    }

    private static Span<T> TensorData<T>(Tensor<T> tensor) => SharpNorm.Tensors.TensorData.Flat(tensor);

    private static void Same<T>(List<Step<T>> expected, List<Step<T>> actual, double rtol, double atol)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        for (int s = 0; s < expected.Count; s++)
        {
            Check.Close<T>(expected[s].Output, actual[s].Output, rtol, atol, $"step {s} output");
            Check.Close<T>(expected[s].InputGradient, actual[s].InputGradient, rtol, atol, $"step {s} dx");
            Assert.Equal(expected[s].Gradients.Keys, actual[s].Gradients.Keys);
            foreach (var (name, g) in expected[s].Gradients) Check.Close<T>(g, actual[s].Gradients[name], rtol, atol, $"step {s} d{name}");
            Assert.Equal(expected[s].Buffers.Keys, actual[s].Buffers.Keys);
            foreach (var (name, b) in expected[s].Buffers) Check.Close<double>(b, actual[s].Buffers[name], rtol, atol, $"step {s} {name}");
        }
    }

    public static TheoryData<Net, bool, bool, bool> Cases() => new()
    {
        { Net.Im2ColAndPointwise, false, true, false },
        { Net.Im2ColAndPointwise, true, true, true },     // darknet's unbiased normalization, conv biases
        { Net.Im2ColAndPointwise, false, false, false },  // BatchNorm without affine
        { Net.Grouped, false, true, false },
        { Net.Winograd, false, true, false },
        { Net.Winograd, true, true, true },
        { Net.Banded, false, true, false },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void FusedBlocksMatchTheLayersOneByOneInDouble(Net net, bool unbiased, bool affine, bool convBias)
    {
        Sequential<double> fused = Build<double>(net, 1, unbiased, affine, convBias: convBias);
        Sequential<double> separate = Build<double>(net, 1, unbiased, affine, convBias: convBias);
        separate.FuseConvBatchNorm = false;
        Same(Run(separate, InputShape(net), 2), Run(fused, InputShape(net), 2), 1e-9, 1e-11);
    }

    [Fact]
    public void CumulativeAverageAndNoRunningStatisticsMatchToo()
    {
        Sequential<double> fused = Build<double>(Net.Im2ColAndPointwise, 2, momentum: null);
        Sequential<double> separate = Build<double>(Net.Im2ColAndPointwise, 2, momentum: null);
        separate.FuseConvBatchNorm = false;
        Same(Run(separate, InputShape(Net.Im2ColAndPointwise), 1), Run(fused, InputShape(Net.Im2ColAndPointwise), 1), 1e-9, 1e-11);

        static Sequential<double> Untracked(bool fuse) => new(new Conv2d<double>(2, 5, 3, padding: 1), new BatchNorm<double>(5, trackRunningStats: false),
            new LeakyReLU<double>(0.1), new Flatten<double>()) { FuseConvBatchNorm = fuse };
        Same(Run(Untracked(false), [2, 2, 5, 5], 1), Run(Untracked(true), [2, 2, 5, 5], 1), 1e-9, 1e-11);
    }

    [Fact]
    public void FusedDarkNetClassifierMatchesInFloat()
    {
        Sequential<float> fused = DarkNetClassifier.Create<float>(NormChoice.Batch, classes: 10, seed: 3);
        Sequential<float> separate = DarkNetClassifier.Create<float>(NormChoice.Batch, classes: 10, seed: 3);
        separate.FuseConvBatchNorm = false;
        // Float rounding differs between the two (statistics summed in another order; a rectifier mask may flip for a
        // value within rounding of zero and move its neighbours' gradients), so each tensor is compared as a whole:
        // relative RMS difference. No parameter update between the steps: after one SGD step at this rate the
        // network's gradients move by up to 1e-2 for a 3e-7 change of dL/dy, on either path (measured), which would
        // test the trajectory's conditioning, not the block.
        List<Step<float>> expected = Run(separate, [8, 1, 28, 28], 2, learningRate: 0), actual = Run(fused, [8, 1, 28, 28], 2, learningRate: 0);
        for (int s = 0; s < expected.Count; s++)
        {
            CloseOverall(expected[s].Output, actual[s].Output, 1e-5, $"step {s} output");
            CloseOverall(expected[s].InputGradient, actual[s].InputGradient, 1e-4, $"step {s} dx");
            foreach (var (name, g) in expected[s].Gradients) CloseOverall(g, actual[s].Gradients[name], 1e-4, $"step {s} d{name}");
            foreach (var (name, b) in expected[s].Buffers)
                CloseOverall(b.Select(v => (float)v).ToArray(), actual[s].Buffers[name].Select(v => (float)v).ToArray(), 1e-5, $"step {s} {name}");
        }
    }

    [Fact]
    public void FusedDarkNetClassifierMatchesInDoubleAcrossUpdates()
    {
        Sequential<double> fused = DarkNetClassifier.Create<double>(NormChoice.Batch, classes: 10, seed: 3);
        Sequential<double> separate = DarkNetClassifier.Create<double>(NormChoice.Batch, classes: 10, seed: 3);
        separate.FuseConvBatchNorm = false;
        Same(Run(separate, [4, 1, 28, 28], 2), Run(fused, [4, 1, 28, 28], 2), 1e-8, 1e-10);
    }

    private static void CloseOverall(float[] expected, float[] actual, double bound, string what)
    {
        double difference = 0, size = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            difference += Math.Pow((double)actual[i] - expected[i], 2);
            size += Math.Pow(expected[i], 2);
        }
        double relative = Math.Sqrt(difference / Math.Max(size, double.Epsilon));
        Assert.True(relative <= bound, $"{what}: relative RMS difference {relative:E2} (bound {bound:E0})");
    }

    [Theory]
    [InlineData(Net.Im2ColAndPointwise)]
    [InlineData(Net.Winograd)]
    [InlineData(Net.Banded)]
    public void FusedResultsAreBitIdenticalForAnyThreadCount(Net net)
    {
        List<Step<float>> one = Run(Build<float>(net, 4), InputShape(net), 1);
        foreach (int threads in new[] { 2, 3 })
        {
            List<Step<float>> many = Run(Build<float>(net, 4), InputShape(net), threads);
            Same(one, many, 0, 0);
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void GradientReadyReportsEachLayerOnceLastFirstWithItsGradientsComplete(bool fused)
    {
        Sequential<double> model = Build<double>(Net.Im2ColAndPointwise, 6);
        model.FuseConvBatchNorm = fused;
        nint[] shape = InputShape(Net.Im2ColAndPointwise);
        var random = new Gaussian(8);
        Tensor<double> x = random.Tensor<double>(shape), dOut = random.Tensor<double>(model.OutputShape(shape));
        model.Forward(x);
        var reported = new List<int>();
        var atReport = new Dictionary<Parameter<double>, double[]>();
        model.GradientReady = layer =>
        {
            reported.Add(layer);
            foreach (Parameter<double> p in model[layer].Parameters) atReport[p] = p.Gradient.ToArray();
        };
        model.Gradient(x, dOut);
        model.GradientReady = null;
        Assert.Equal(Enumerable.Range(0, model.Count).Reverse(), reported);
        // Nothing is added to a parameter's gradient after its layer was reported.
        foreach (Parameter<double> p in model.Parameters)
        {
            Assert.Equal(p.Gradient.ToArray(), atReport[p]);
            Assert.Contains(p.Gradient.ToArray(), v => v != 0);
        }
        // Backward alone computes no parameter gradient and reports nothing.
        model.GradientReady = layer => throw new InvalidOperationException($"layer {layer} reported by Backward");
        model.Backward(x, dOut);
    }

    [Fact]
    public void FusionKeepsTheLayersNamesAndIsTurnedOffByItsOption()
    {
        Sequential<float> model = Build<float>(Net.Im2ColAndPointwise, 1);
        Assert.True(model.FuseConvBatchNorm);
        Assert.Equal(["0.weight", "1.weight", "1.bias", "4.weight", "5.weight", "5.bias", "7.weight", "8.weight", "8.bias"],
            model.NamedParameters.Select(p => p.Name));
        Assert.Equal(["1.running_mean", "1.running_var", "1.num_batches_tracked", "5.running_mean", "5.running_var", "5.num_batches_tracked",
            "8.running_mean", "8.running_var", "8.num_batches_tracked"], model.NamedBuffers.Select(b => b.Name));
    }

    [Fact]
    public void ATrainingBatchOfOneValuePerChannelThrowsAndChangesNothing()
    {
        var model = new Sequential<float>(new Conv2d<float>(2, 3, 1), new BatchNorm<float>(3), new ReLU<float>());
        var norm = (BatchNorm<float>)model[1];
        Tensor<float> x = new Gaussian(1).Tensor<float>([1, 2, 1, 1]);
        var e = Assert.Throws<ArgumentException>(() => model.Forward(x));
        Assert.Contains("more than 1 value per channel", e.Message);
        Assert.Equal(0, norm.NumBatchesTracked);
        Assert.All(norm.RunningMean!.ToArray(), v => Assert.Equal(0f, v));
        Assert.All(norm.RunningVar!.ToArray(), v => Assert.Equal(1f, v));
        model.Training = false;
        Assert.Equal([1, 3, 1, 1], model.Forward(x).Lengths.ToArray());   // eval takes it, as BatchNorm does
    }

    [Fact]
    public void TheBlocksBatchNormAloneNeedsAForwardOfItsOwn()
    {
        var model = new Sequential<float>(new Conv2d<float>(2, 3, 3, padding: 1), new BatchNorm<float>(3), new LeakyReLU<float>());
        Tensor<float> x = new Gaussian(2).Tensor<float>([2, 2, 4, 4]);
        Tensor<float> y = model.Forward(x);
        var norm = (BatchNorm<float>)model[1];
        Assert.Throws<InvalidOperationException>(() => norm.Backward(y, y));
        Assert.Equal(1, norm.NumBatchesTracked);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(-1)]
    public void AFusedTrainingStepAllocatesNothing(int threads)
    {
        Sequential<float> model = DarkNetClassifier.Create<float>(NormChoice.Batch, classes: 10, seed: 1);
        model.MaxDegreeOfParallelism = threads;
        nint[] shape = [4, 1, 28, 28];
        Tensor<float> x = new Gaussian(3).Tensor<float>(shape), dOut = new Gaussian(4).Tensor<float>([4, 10]);
        var y = Tensor.Create(new float[40], [4, 10]);
        void Step()
        {
            model.Training = true;
            model.Forward(x.AsReadOnlyTensorSpan(), y.AsTensorSpan());
            model.Gradient(x.AsReadOnlyTensorSpan(), dOut.AsReadOnlyTensorSpan());
            model.Training = false;
            model.Forward(x.AsReadOnlyTensorSpan(), y.AsTensorSpan());
        }
        for (int i = 0; i < 40; i++) Step();
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 5; i++) Step();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated == 0, $"{allocated} bytes allocated in 5 steps");
    }

    public static TheoryData<string, int> MomentCases() => new()
    {
        { "im2col", 512 }, { "im2col", 256 }, { "im2col", 128 }, { "im2col", 0 },
        { "pointwise", 512 }, { "grouped", 512 }, { "banded", 512 }, { "banded", 0 }, { "direct", 512 }, { "direct", 128 },
        { "winograd", 512 }, { "winograd", 256 }, { "winograd", 128 }, { "winograd", 0 },
    };

    /// <summary>The moments each convolution path gathers against the mean and variance of its output, in double.</summary>
    [Theory]
    [MemberData(nameof(MomentCases))]
    public void ConvolutionMomentsAreTheMomentsOfItsOutput(string path, int bits)
    {
        (Conv2d<float> conv, nint[] shape) = path switch
        {
            "im2col" => (new Conv2d<float>(3, 5, 3, padding: 1), new nint[] { 5, 3, 7, 6 }),
            "pointwise" => (new Conv2d<float>(6, 5, 1), new nint[] { 3, 6, 9, 9 }),
            "grouped" => (new Conv2d<float>(6, 4, 3, stride: 2, groups: 2), new nint[] { 3, 6, 9, 11 }),
            "banded" => (new Conv2d<float>(5, 4, 3, padding: 1), new nint[] { 1, 5, 75, 70 }),
            "direct" => (new Conv2d<float>(3, 20, 3, padding: 1) { Algorithm = ConvAlgorithm.Direct }, new nint[] { 2, 3, 75, 70 }),
            _ => (new Conv2d<float>(16, 17, 3, padding: 1) { Algorithm = ConvAlgorithm.Winograd }, new nint[] { 3, 16, 13, 10 }),
        };
        conv.MaxVectorBits = bits;
        conv.MaxDegreeOfParallelism = 2;
        Tensor<float> x = new Gaussian(7).Tensor<float>(shape, scale: 2, offset: 3);
        nint[] outShape = conv.OutputShape(shape);
        var y = Tensor.Create(new float[outShape.Aggregate(1L, (a, b) => a * b)], outShape);
        var moments = new ChannelMoments<float> { MaxVectorBits = bits };
        conv.Forward(x.AsReadOnlyTensorSpan(), y.AsTensorSpan(), moments);
        var mean = new double[conv.OutChannels];
        var variance = new double[conv.OutChannels];
        moments.Combine(mean, variance);

        float[] values = y.ToArray();
        int n = (int)outShape[0], c = conv.OutChannels, plane = (int)(outShape[2] * outShape[3]);
        for (int o = 0; o < c; o++)
        {
            double sum = 0, squares = 0;
            for (int i = 0; i < n; i++)
                for (int k = 0; k < plane; k++) sum += values[(i * c + o) * plane + k];
            double m = sum / (n * plane);
            for (int i = 0; i < n; i++)
                for (int k = 0; k < plane; k++) squares += Math.Pow(values[(i * c + o) * plane + k] - m, 2);
            double v = squares / (n * plane);
            Assert.True(Math.Abs(mean[o] - m) <= 1e-6 * (Math.Abs(m) + Math.Sqrt(v)), $"channel {o}: mean {mean[o]} against {m}");
            Assert.True(Math.Abs(variance[o] - v) <= 1e-5 * v, $"channel {o}: variance {variance[o]} against {v}");
        }
    }
}
