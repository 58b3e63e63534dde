using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Kernels;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>
/// LayerNorm and RMSNorm (the engine's row shape): libtorch fixtures, double-precision gradient checks, every kernel
/// path against the double reference at each vector width and thread count, bit-identical results across thread
/// counts, bad input.
/// </summary>
public class LayerNormTests
{
    public static TheoryData<string, string, int> FixtureCases()
    {
        var data = new TheoryData<string, string, int>();
        foreach (string file in new[] { "layernorm.json", "rmsnorm.json" })
            foreach (ShapeFixtureCase c in ShapeFixtures.Load(file).Cases)
                foreach (int bits in new[] { 512, 128, 0 })
                    data.Add(file, c.Name, bits);
        return data;
    }

    /// <summary>Every libtorch case (tools/FixtureGen): ranks 2-4, normalized shapes of 1-3 dims, affine/bias on and off, eps null (RMSNorm), float and double.</summary>
    [Theory]
    [MemberData(nameof(FixtureCases))]
    public void MatchesLibtorch(string file, string caseName, int maxVectorBits)
    {
        ShapeFixtureCase c = ShapeFixtures.Case(file, caseName);
        if (c.Dtype == "float32") RunFixture<float>(c, maxVectorBits, rtol: 2e-4, atol: 2e-5);
        else RunFixture<double>(c, maxVectorBits, rtol: 1e-10, atol: 1e-11);
    }

    private static void RunFixture<T>(ShapeFixtureCase c, int maxVectorBits, double rtol, double atol) where T : unmanaged, IFloatingPointIeee754<T>
    {
        bool rms = c.Name.StartsWith("RMSNorm", StringComparison.Ordinal);
        NormLayer<T> layer = rms
            ? new RMSNorm<T>(c.NormalizedShape, c.Eps, c.ElementwiseAffine)
            : new LayerNorm<T>(c.NormalizedShape, c.Eps!.Value, c.ElementwiseAffine, c.Bias);
        if (rms) Assert.Equal(c.EpsUsed, layer.Eps);
        Assert.Equal(c.ElementwiseAffine, layer.Weight is not null);
        Assert.Equal(c.ElementwiseAffine && c.Bias, layer.Bias is not null);
        layer.Engine.MaxVectorBits = maxVectorBits;
        if (layer.Weight is not null) c.Weight!.Values<T>(c.Dtype).CopyTo(Span(layer.Weight.Value));
        if (layer.Bias is not null) c.BiasValue!.Values<T>(c.Dtype).CopyTo(Span(layer.Bias.Value));
        for (int s = 0; s < c.Steps.Count; s++)
        {
            FixtureStep step = c.Steps[s];
            string at = $"{c.Name} step {s}";
            var x = step.X.ToTensor<T>(c.Dtype);
            var dy = step.Dy.ToTensor<T>(c.Dtype);
            Check.Close(step.Y.Values<T>(c.Dtype), layer.Forward(x), rtol, atol, $"{at} y");
            Check.Close(step.Dx.Values<T>(c.Dtype), layer.Backward(x, dy), rtol, atol, $"{at} dx");
            if (layer.Weight is null) continue;
            layer.ZeroGrad();
            layer.Gradient(x, dy);
            double sumAtol = atol * x.FlattenedLength;
            Check.Close(step.Dweight!.Values<T>(c.Dtype), layer.Weight.Gradient, rtol, sumAtol, $"{at} dweight");
            if (layer.Bias is not null) Check.Close(step.Dbias!.Values<T>(c.Dtype), layer.Bias.Gradient, rtol, sumAtol, $"{at} dbias");
        }
    }

    public static TheoryData<bool, nint[], int[], bool, bool, RowPath> GradientConfigurations() => new()
    {
        // rms, input shape, normalized shape, affine, bias, the row path forced
        { false, [4, 6], [6], true, true, RowPath.Narrow },
        { false, [3, 2, 5], [2, 5], true, false, RowPath.Narrow },
        { false, [2, 3, 4, 5], [3, 4, 5], false, false, RowPath.Narrow },
        { false, [40, 3], [3], true, true, RowPath.Narrow },         // two bands of rows
        { false, [3, 1], [1], true, true, RowPath.Narrow },          // one element per row
        { false, [37], [37], true, true, RowPath.Narrow },           // the input is one row
        { true, [4, 6], [6], true, false, RowPath.Narrow },
        { true, [3, 2, 5], [2, 5], false, false, RowPath.Narrow },
        { true, [40, 3], [3], true, false, RowPath.Narrow },
        { true, [2, 19], [19], true, false, RowPath.Narrow },
        { false, [42, 5], [5], true, true, RowPath.Wide },          // wide: two bands, a last block of two rows
        { false, [2, 3, 4, 5], [3, 4, 5], true, true, RowPath.Wide },
        { false, [37], [37], true, true, RowPath.Wide },
        { true, [42, 5], [5], true, false, RowPath.Wide },
        { false, [42, 5], [5], true, true, RowPath.NarrowForwardWideBackward },
        { false, [20, 3, 4], [3, 4], true, false, RowPath.NarrowForwardWideBackward },
        { true, [42, 5], [5], true, false, RowPath.NarrowForwardWideBackward },
    };

    [Theory]
    [MemberData(nameof(GradientConfigurations))]
    public void BackwardAndGradientMatchCentralDifferences(bool rms, nint[] shape, int[] normalizedShape, bool affine, bool bias, RowPath path)
    {
        var random = new Gaussian(shape.Aggregate(7, (h, d) => h * 31 + (int)d) + (rms ? 1 : 0));
        NormLayer<double> layer = rms
            ? new RMSNorm<double>(normalizedShape, 1e-3, affine)
            : new LayerNorm<double>(normalizedShape, 1e-3, affine, bias);
        RowPaths.Force(layer.Engine, path);
        int size = normalizedShape.Aggregate(1, (p, d) => p * d);
        if (layer.Weight is not null) random.Array<double>(size, 0.5, 1).CopyTo(Span(layer.Weight.Value));
        if (layer.Bias is not null) random.Array<double>(size, 0.3).CopyTo(Span(layer.Bias.Value));
        Tensor<double> x = random.Tensor<double>(shape, 1.5, rms ? 0 : 0.2), r = random.Tensor<double>(shape);
        layer.Forward(x);
        double[] dx = layer.Backward(x, r).ToArray();
        layer.Gradient(x, r);

        double Loss()
        {
            double[] y = layer.Forward(x).ToArray(), weights = r.ToArray();
            return y.Select((v, i) => v * weights[i]).Sum();
        }

        Assert.Equal(dx, NumericalGradient.Central(Span(x), Loss), NumericalGradient.Agrees);
        if (layer.Weight is not null)
            Assert.Equal(layer.Weight.Gradient.ToArray(), NumericalGradient.Central(Span(layer.Weight.Value), Loss), NumericalGradient.Agrees);
        if (layer.Bias is not null)
            Assert.Equal(layer.Bias.Gradient.ToArray(), NumericalGradient.Central(Span(layer.Bias.Value), Loss), NumericalGradient.Agrees);
    }

    public static TheoryData<bool, nint[], RowPath> LargerShapes()
    {
        var data = new TheoryData<bool, nint[], RowPath>();
        foreach (RowPath path in new[] { RowPath.Narrow, RowPath.Wide })
        {
            data.Add(false, [70, 33], path);        // three bands, vector tails; wide: a last block of two rows
            data.Add(false, [3, 40000], path);      // rows longer than a piece (narrow: 16384, wide: 4096 elements)
            data.Add(false, [5, 1], path);
            data.Add(false, [2, 3, 7, 11], path);   // normalized over the last three dims
            data.Add(true, [70, 33], path);
            data.Add(true, [3, 40000], path);
            data.Add(true, [9, 1], path);
        }
        data.Add(false, [4096, 64], RowPath.Narrow);         // many bands, several chunks of rows per thread
        data.Add(false, [2, 140000], RowPath.Narrow);        // rows over WideRowBytes: the wide path by default
        data.Add(false, [70, 9000], RowPath.Wide);           // wide: three bands of blocks, each block split over the threads
        data.Add(true, [70, 9000], RowPath.Wide);
        // The narrow forward with the wide backward (at least NarrowForwardMinRows rows), as wide rows under WideForwardRowBytes run.
        data.Add(false, [70, 33], RowPath.NarrowForwardWideBackward);
        data.Add(false, [70, 9000], RowPath.NarrowForwardWideBackward);
        data.Add(false, [17, 3, 7, 11], RowPath.NarrowForwardWideBackward);
        data.Add(true, [70, 9000], RowPath.NarrowForwardWideBackward);
        return data;
    }

    /// <summary>
    /// Wide rows give the same bits for any thread count, also where the pieces do not divide evenly among the threads
    /// (49 pieces on 12 or 16 threads; 5 on 4), against a double reference and the narrow path; with the wide forward
    /// or the narrow one (<see cref="RowPath.NarrowForwardWideBackward"/>).
    /// </summary>
    [Theory]
    [InlineData(70, 9000, true, RowPath.Wide)]                        // forced: 3 pieces a row, three bands
    [InlineData(3, 20480, true, RowPath.Wide)]                        // forced: 5 pieces
    [InlineData(40, 9000, true, RowPath.NarrowForwardWideBackward)]   // forced: two bands
    [InlineData(2, 200704, false, RowPath.Wide)]                      // LayerNorm over (64, 56, 56) of two images: wide by default, 49 pieces
    [InlineData(16, 131072, false, RowPath.Wide)]                     // rows of 512 KB, 16 of them: by default the narrow forward, the wide backward
    public void WideRowsGiveTheSameBitsForAnyThreadCount(int rows, int width, bool force, RowPath forced)
    {
        nint[] shape = [rows, width];
        var random = new Gaussian(rows * 31 + width);
        float[] x = random.Array<float>((long)rows * width, 1.5, 0.4), dy = random.Array<float>((long)rows * width);
        float[] gamma = random.Array<float>(width, 0.3, 1), beta = random.Array<float>(width, 0.5);

        float[] Step(int threads, bool wide)
        {
            var layer = new LayerNorm<float>(width);
            layer.MaxDegreeOfParallelism = threads;
            if (!wide) RowPaths.Force(layer.Engine, RowPath.Narrow);
            else if (force) RowPaths.Force(layer.Engine, forced);
            gamma.CopyTo(Span(layer.Weight!.Value));
            beta.CopyTo(Span(layer.Bias!.Value));
            var xt = Tensor.Create(x, shape);
            var dyt = Tensor.Create(dy, shape);
            float[] y = layer.Forward(xt).ToArray(), dx = layer.Backward(xt, dyt).ToArray();
            layer.Gradient(xt, dyt);
            return [.. y, .. dx, .. layer.Weight.Gradient.ToArray(), .. layer.Bias.Gradient.ToArray()];
        }

        float[] first = Step(1, wide: true);
        foreach (int threads in new[] { 2, 3, 4, 5, 12, 16 })
            Assert.True(first.AsSpan().SequenceEqual(Step(threads, wide: true)), $"({rows}, {width}): {threads} threads differ from 1");
        // The same quantities as the narrow path (one thread per row), to rounding.
        Check.Close(Step(1, wide: false), first, 1e-4, 1e-4 * Math.Sqrt(rows), $"({rows}, {width}) wide against narrow");
    }

    /// <summary>
    /// Every width, 1-4 threads, against a double reference; <paramref name="wide"/> forces the wide-row path (all
    /// threads on one block of rows, each on its own columns) on rows shorter than it is chosen for.
    /// </summary>
    [Theory]
    [MemberData(nameof(LargerShapes))]
    public void FloatMatchesDoubleReferenceAtEveryWidthAndThreadCount(bool rms, nint[] shape, RowPath path)
    {
        long length = shape.Aggregate(1L, (p, d) => p * d);
        int[] normalizedShape = shape.Length == 4 ? [.. shape[1..].Select(d => (int)d)] : [(int)shape[^1]];
        int size = normalizedShape.Aggregate(1, (p, d) => p * d);
        var random = new Gaussian((int)(length % 100_003) + (rms ? 1 : 0));
        float[] x = random.Array<float>(length, 1.7, rms ? 0 : 0.4), dy = random.Array<float>(length);
        float[] gamma = random.Array<float>(size, 0.3, 1), beta = random.Array<float>(size, 0.5);
        double[] Wide(float[] values) => values.Select(v => (double)v).ToArray();
        double[] expectedY, expectedDx, expectedDGamma, expectedDBeta = [];
        if (rms)
            (expectedY, expectedDx, expectedDGamma) = ReferenceNorm.RmsTrainingStep(Wide(x), Wide(dy), size, Wide(gamma), 1e-5);
        else
            (expectedY, expectedDx, expectedDGamma, expectedDBeta) = ReferenceNorm.TrainingStep(Wide(x), Wide(dy),
                Enumerable.Range(0, (int)length).Select(i => i / size).ToArray(), Enumerable.Range(0, (int)length).Select(i => i % size).ToArray(),
                Wide(gamma), Wide(beta), 1e-5);
        float[] Narrow(double[] values) => values.Select(v => (float)v).ToArray();

        string? firstBits = null;
        foreach (int bits in new[] { 512, 256, 128, 0 })
            foreach (int threads in new[] { 1, 2, 3, 4 })
            {
                string at = $"{(rms ? "RMSNorm" : "LayerNorm")} ({string.Join(", ", shape)}) {bits}-bit {threads} threads";
                NormLayer<float> layer = rms ? new RMSNorm<float>(normalizedShape, 1e-5) : new LayerNorm<float>(normalizedShape);
                layer.MaxDegreeOfParallelism = threads;
                layer.Engine.MaxVectorBits = bits;
                RowPaths.Force(layer.Engine, path);
                gamma.CopyTo(Span(layer.Weight!.Value));
                if (!rms) beta.CopyTo(Span(layer.Bias!.Value));
                var xt = Tensor.Create(x, shape);
                var dyt = Tensor.Create(dy, shape);
                float[] y = layer.Forward(xt).ToArray();
                float[] dx = layer.Backward(xt, dyt).ToArray();
                layer.Gradient(xt, dyt);
                Check.Close(Narrow(expectedY), y, 1e-4, 1e-4, $"{at} y");
                Check.Close(Narrow(expectedDx), dx, 1e-3, 2e-4, $"{at} dx");
                double sumTolerance = 1e-5 * length / size + 1e-4;
                Check.Close(Narrow(expectedDGamma), layer.Weight.Gradient, 1e-4, sumTolerance, $"{at} dgamma");
                if (!rms) Check.Close(Narrow(expectedDBeta), layer.Bias!.Gradient, 1e-4, sumTolerance, $"{at} dbeta");
                // Gradient on copies of x and dy computes the sums itself (no Backward to reuse).
                layer.ZeroGrad();
                layer.Gradient(Tensor.Create(x, shape), Tensor.Create(dy, shape));
                Check.Close(Narrow(expectedDGamma), layer.Weight.Gradient, 1e-4, sumTolerance, $"{at} dgamma, Gradient alone");
                if (!rms) Check.Close(Narrow(expectedDBeta), layer.Bias!.Gradient, 1e-4, sumTolerance, $"{at} dbeta, Gradient alone");
                if (bits == 512)
                {
                    string fingerprint = string.Join(",", y.Concat(dx).Concat(layer.Weight.Gradient.ToArray())
                        .Concat(rms ? [] : layer.Bias!.Gradient.ToArray()).Select(BitConverter.SingleToInt32Bits));
                    firstBits ??= fingerprint;
                    Assert.True(firstBits == fingerprint, $"{at}: bits differ from 1 thread");
                }
            }
    }

    /// <summary>Rows far from zero: float sums about the row's first element keep the output accurate.</summary>
    [Fact]
    public void LargeMeanSmallSpreadStaysAccurateInFloat()
    {
        var random = new Gaussian(5);
        float[] x = random.Array<float>(8 * 4096, 1, 1e4);
        var layer = new LayerNorm<float>(4096, elementwiseAffine: false);
        float[] y = layer.Forward(Tensor.Create(x, [8, 4096])).ToArray();
        double[] expected = ReferenceNorm.TrainingStep(x.Select(v => (double)v).ToArray(), new double[x.Length],
            Enumerable.Range(0, x.Length).Select(i => i / 4096).ToArray(), Enumerable.Range(0, x.Length).Select(i => i % 4096).ToArray(),
            Enumerable.Repeat(1.0, 4096).ToArray(), new double[4096], 1e-5).y;
        Check.Close(expected.Select(v => (float)v).ToArray(), y, 0, 1e-3, "y");
    }

    [Fact]
    public void RmsNormDefaultEpsIsTheMachineEpsilon()
    {
        Assert.Equal(Math.Pow(2, -23), new RMSNorm<float>(8).Eps);
        Assert.Equal(Math.Pow(2, -52), new RMSNorm<double>(8).Eps);
        Assert.Equal(1e-6, new RMSNorm<float>(8, 1e-6).Eps);
        Assert.Null(new RMSNorm<float>(8).Bias);
        Assert.Null(new LayerNorm<float>(8, bias: false).Bias);
        Assert.NotNull(new LayerNorm<float>(8, bias: false).Weight);
        Assert.Null(new LayerNorm<float>(8, elementwiseAffine: false).Weight);
        Assert.Equal([2, 3], new LayerNorm<float>([2, 3]).NormalizedShape);
        Assert.Equal(new nint[] { 2, 3 }, new LayerNorm<float>([2, 3]).Weight!.Value.Lengths.ToArray());
    }

    [Fact]
    public void BadArgumentsAreRejected()
    {
        Assert.Contains("()", Assert.Throws<ArgumentException>("normalizedShape", () => new LayerNorm<float>([])).Message);
        Assert.Contains("(4, 0)", Assert.Throws<ArgumentException>("normalizedShape", () => new LayerNorm<float>([4, 0])).Message);
        Assert.Throws<ArgumentException>("normalizedShape", () => new RMSNorm<float>(-3));
        Assert.Throws<ArgumentNullException>("normalizedShape", () => new LayerNorm<float>(null!));
        Assert.Throws<ArgumentOutOfRangeException>("eps", () => new LayerNorm<float>(4, eps: -1));
        Assert.Throws<ArgumentOutOfRangeException>("eps", () => new RMSNorm<float>(4, eps: double.NaN));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void BadInputIsRejectedAndChangesNothing(bool rms)
    {
        NormLayer<float> layer = rms ? new RMSNorm<float>([4, 5]) : new LayerNorm<float>([4, 5]);
        var x = new Gaussian(1).Tensor<float>([3, 4, 5]);
        float[] y = layer.Forward(x).ToArray();
        float[] expected = layer.Backward(x, x).ToArray();

        var wrongShape = Assert.Throws<ArgumentException>(() => layer.Forward(Tensor.Create(new float[60], [3, 5, 4])));
        Assert.Contains("(*, 4, 5)", wrongShape.Message);
        Assert.Contains("(3, 5, 4)", wrongShape.Message);
        Assert.Contains("(5,)", Assert.Throws<ArgumentException>(() => layer.Forward(Tensor.Create(new float[5], [5]))).Message);
        Assert.Throws<ArgumentException>(() => layer.Backward(x, Tensor.Create(new float[60], [3, 4, 5, 1])));
        Assert.Throws<ArgumentException>(() => layer.Backward(Tensor.Create(new float[40], [2, 4, 5]), Tensor.Create(new float[40], [2, 4, 5])));
        var fresh = rms ? (NormLayer<float>)new RMSNorm<float>(5) : new LayerNorm<float>(5);
        Assert.Throws<InvalidOperationException>(() => fresh.Backward(Tensor.Create(new float[5], [5]), Tensor.Create(new float[5], [5])));

        Assert.Equal(y, layer.Forward(x).ToArray());
        Assert.Equal(expected, layer.Backward(x, x).ToArray());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TrainingAndEvalComputeTheSame(bool rms)
    {
        NormLayer<float> layer = rms ? new RMSNorm<float>(5) : new LayerNorm<float>(5);
        var x = new Gaussian(2).Tensor<float>([3, 4, 5], 3, 1);
        float[] train = layer.Forward(x).ToArray();
        layer.Training = false;
        Assert.Equal(train, layer.Forward(x).ToArray());
    }

    private static Span<T> Span<T>(Tensor<T> tensor) => SharpNorm.Tensors.TensorData.Flat(tensor);
}
