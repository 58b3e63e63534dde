using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>GroupNorm: gradient checks, every kernel path against the double reference, threads, bad input.</summary>
public class GroupNormTests
{
    public static TheoryData<nint[], int, bool> Configurations() => new()
    {
        { [4, 6], 3, true },
        { [3, 6, 5], 2, true },
        { [2, 6, 4, 5], 3, false },
        { [2, 6, 4, 5], 6, true },
        { [2, 6, 4, 5], 1, true },
        { [2, 4, 2, 3, 3], 2, true },
        { [5, 6], 1, true },         // one group, no spatial dimensions: the engine's row shape
    };

    [Theory]
    [MemberData(nameof(Configurations))]
    public void BackwardAndGradientMatchCentralDifferences(nint[] shape, int groups, bool affine)
    {
        int channels = (int)shape[1];
        var random = new Gaussian(channels * 10 + groups);
        var layer = new GroupNorm<double>(groups, channels, eps: 1e-3, affine: affine);
        if (affine)
        {
            random.Array<double>(channels, 0.5, 1).CopyTo(Span(layer.Weight!.Value));
            random.Array<double>(channels, 0.3).CopyTo(Span(layer.Bias!.Value));
        }
        Tensor<double> x = random.Tensor<double>(shape, 1.5, 0.2), r = random.Tensor<double>(shape);
        layer.Forward(x);
        double[] dx = layer.Backward(x, r).ToArray();
        layer.Gradient(x, r);

        double Loss()
        {
            double[] y = layer.Forward(x).ToArray(), weights = r.ToArray();
            return y.Select((v, i) => v * weights[i]).Sum();
        }

        Assert.Equal(dx, NumericalGradient.Central(Span(x), Loss), NumericalGradient.Agrees);
        if (affine)
        {
            Assert.Equal(layer.Weight!.Gradient.ToArray(), NumericalGradient.Central(Span(layer.Weight.Value), Loss), NumericalGradient.Agrees);
            Assert.Equal(layer.Bias!.Gradient.ToArray(), NumericalGradient.Central(Span(layer.Bias.Value), Loss), NumericalGradient.Agrees);
        }
    }

    public static TheoryData<nint[], int> LargerShapes() => new()
    {
        { [2, 32, 9, 7], 8 },        // many groups, channels inside a group span several runs
        { [2, 4, 260, 260], 2 },     // few huge groups: runs sliced, unit-parallel
        { [5, 12, 33], 4 },          // odd run length: vector tails
        { [64, 32], 4 },             // no spatial dimensions
        { [70, 32], 1 },             // one group, no spatial dimensions: the engine's row shape
    };

    [Theory]
    [MemberData(nameof(LargerShapes))]
    public void FloatMatchesDoubleReferenceAtEveryWidthAndThreadCount(nint[] shape, int groups)
    {
        int channels = (int)shape[1];
        long length = shape.Aggregate(1L, (p, d) => p * d);
        var random = new Gaussian(groups + channels);
        float[] x = random.Array<float>(length, 1.7, 0.4), dy = random.Array<float>(length);
        float[] gamma = random.Array<float>(channels, 0.3, 1), beta = random.Array<float>(channels, 0.5);
        int[] channelOf = ReferenceNorm.ChannelOf(shape);
        int perSample = (int)(length / shape[0]);
        int[] groupOf = Enumerable.Range(0, (int)length).Select(i => i / perSample * groups + channelOf[i] / (channels / groups)).ToArray();
        var reference = ReferenceNorm.TrainingStep(x.Select(v => (double)v).ToArray(), dy.Select(v => (double)v).ToArray(), groupOf,
            channelOf, gamma.Select(v => (double)v).ToArray(), beta.Select(v => (double)v).ToArray(), 1e-5);

        string? firstBits = null;
        foreach (int bits in new[] { 512, 256, 128, 0 })
            foreach (int threads in new[] { 1, 2, 3 })
            {
                string at = $"GroupNorm({groups}) ({string.Join(", ", shape)}) {bits}-bit {threads} threads";
                var layer = new GroupNorm<float>(groups, channels) { MaxDegreeOfParallelism = threads };
                layer.Engine.MaxVectorBits = bits;
                gamma.CopyTo(Span(layer.Weight!.Value));
                beta.CopyTo(Span(layer.Bias!.Value));
                var xt = Tensor.Create(x, shape);
                var dyt = Tensor.Create(dy, shape);
                float[] y = layer.Forward(xt).ToArray();
                float[] dx = layer.Backward(xt, dyt).ToArray();
                layer.Gradient(xt, dyt);
                Check.Close(reference.y.Select(v => (float)v).ToArray(), y, 1e-4, 1e-4, $"{at} y");
                Check.Close(reference.dx.Select(v => (float)v).ToArray(), dx, 1e-3, 2e-4, $"{at} dx");
                double sumTolerance = 1e-5 * length / channels + 1e-4;
                Check.Close(reference.dgamma.Select(v => (float)v).ToArray(), layer.Weight.Gradient, 1e-4, sumTolerance, $"{at} dgamma");
                Check.Close(reference.dbeta.Select(v => (float)v).ToArray(), layer.Bias.Gradient, 1e-4, sumTolerance, $"{at} dbeta");
                if (bits == 512)
                {
                    string fingerprint = string.Join(",", y.Concat(dx).Select(BitConverter.SingleToInt32Bits));
                    firstBits ??= fingerprint;
                    Assert.True(firstBits == fingerprint, $"{at}: bits differ from 1 thread");
                }
            }
    }

    public static TheoryData<string, int> FixtureCases()
    {
        var data = new TheoryData<string, int>();
        foreach (FixtureCase c in Fixtures.Load("groupnorm.json").Cases)
            foreach (int bits in new[] { 512, 128, 0 })
                data.Add(c.Name, bits);
        return data;
    }

    /// <summary>Every libtorch case (tools/FixtureGen): ranks 2-5, 1 to C groups, affine on/off, several eps, float and double.</summary>
    [Theory]
    [MemberData(nameof(FixtureCases))]
    public void MatchesLibtorch(string caseName, int maxVectorBits)
    {
        FixtureCase c = Fixtures.Case("groupnorm.json", caseName);
        if (c.Dtype == "float32") RunFixture<float>(c, maxVectorBits, rtol: 2e-4, atol: 2e-5);
        else RunFixture<double>(c, maxVectorBits, rtol: 1e-10, atol: 1e-11);
    }

    private static void RunFixture<T>(FixtureCase c, int maxVectorBits, double rtol, double atol)
        where T : unmanaged, System.Numerics.IFloatingPointIeee754<T>
    {
        var layer = new GroupNorm<T>(c.NumGroups, c.NumChannels, c.Eps, c.Affine);
        layer.Engine.MaxVectorBits = maxVectorBits;
        if (c.Affine)
        {
            c.Weight!.Values<T>(c.Dtype).CopyTo(Span(layer.Weight!.Value));
            c.Bias!.Values<T>(c.Dtype).CopyTo(Span(layer.Bias!.Value));
        }
        for (int s = 0; s < c.Steps.Count; s++)
        {
            FixtureStep step = c.Steps[s];
            string at = $"{c.Name} step {s}";
            var x = step.X.ToTensor<T>(c.Dtype);
            var dy = step.Dy.ToTensor<T>(c.Dtype);
            Check.Close(step.Y.Values<T>(c.Dtype), layer.Forward(x), rtol, atol, $"{at} y");
            Check.Close(step.Dx.Values<T>(c.Dtype), layer.Backward(x, dy), rtol, atol, $"{at} dx");
            if (!c.Affine) continue;
            layer.ZeroGrad();
            layer.Gradient(x, dy);
            double sumAtol = atol * x.FlattenedLength;
            Check.Close(step.Dweight!.Values<T>(c.Dtype), layer.Weight!.Gradient, rtol, sumAtol, $"{at} dweight");
            Check.Close(step.Dbias!.Values<T>(c.Dtype), layer.Bias!.Gradient, rtol, sumAtol, $"{at} dbias");
        }
    }

    [Fact]
    public void BadArgumentsAreRejected()
    {
        Assert.Throws<ArgumentOutOfRangeException>("numGroups", () => new GroupNorm<float>(0, 4));
        Assert.Throws<ArgumentOutOfRangeException>("numChannels", () => new GroupNorm<float>(2, 0));
        var notDivisible = Assert.Throws<ArgumentException>("numChannels", () => new GroupNorm<float>(3, 4));
        Assert.Contains("divisible", notDivisible.Message);
        Assert.Throws<ArgumentOutOfRangeException>("eps", () => new GroupNorm<float>(2, 4, eps: -1));
    }

    [Fact]
    public void BadInputIsRejectedAndChangesNothing()
    {
        var layer = new GroupNorm<float>(2, 4);
        var x = new Gaussian(1).Tensor<float>([3, 4, 5]);
        layer.Forward(x);
        float[] expected = layer.Backward(x, x).ToArray();

        Assert.Contains("(3, 6, 5)", Assert.Throws<ArgumentException>(() => layer.Forward(Tensor.Create(new float[90], [3, 6, 5]))).Message);
        Assert.Contains("(12,)", Assert.Throws<ArgumentException>(() => layer.Forward(Tensor.Create(new float[12], [12]))).Message);
        // One value per group and sample: PyTorch refuses it the way BatchNorm does.
        var single = new GroupNorm<float>(4, 4);
        Assert.Contains("Expected more than 1 value per channel when training",
            Assert.Throws<ArgumentException>(() => single.Forward(Tensor.Create(new float[4], [1, 4]))).Message);
        Assert.Throws<InvalidOperationException>(() => single.Backward(Tensor.Create(new float[4], [1, 4]), Tensor.Create(new float[4], [1, 4])));
        Assert.Throws<ArgumentException>(() => layer.Backward(x, Tensor.Create(new float[60], [3, 4, 5, 1])));

        Assert.Equal(expected, layer.Backward(x, x).ToArray());
    }

    [Fact]
    public void TrainingAndEvalComputeTheSame()
    {
        var layer = new GroupNorm<float>(2, 4);
        var x = new Gaussian(2).Tensor<float>([3, 4, 5], 3, 1);
        float[] train = layer.Forward(x).ToArray();
        layer.Training = false;
        Assert.Equal(train, layer.Forward(x).ToArray());
    }



    private static Span<T> Span<T>(Tensor<T> tensor) => tensor.AsTensorSpan().GetSpan(new nint[tensor.Rank], (int)tensor.FlattenedLength);
}
