using System.Numerics;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>
/// Every case libtorch produced (tools/FixtureGen): ranks 2-5, affine on/off, tracking on/off, momentum 0.1/null,
/// several eps, float and double, train and eval steps in sequence; at every vector width the kernels have.
/// </summary>
public class PyTorchFixtureTests
{
    public static TheoryData<string, string, int> Cases()
    {
        var data = new TheoryData<string, string, int>();
        foreach (string file in new[] { "batchnorm.json", "instancenorm.json" })
            foreach (FixtureCase c in Fixtures.Load(file).Cases)
                foreach (int bits in new[] { 512, 256, 128, 0 })
                    data.Add(file, c.Name, bits);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesLibtorch(string file, string caseName, int maxVectorBits)
    {
        FixtureCase c = Fixtures.Case(file, caseName);
        NormKind kind = Fixtures.Load(file).Layer == "BatchNorm" ? NormKind.BatchNorm : NormKind.InstanceNorm;
        if (c.Dtype == "float32") Run<float>(kind, c, maxVectorBits, rtol: 2e-4, atol: 2e-5);
        else Run<double>(kind, c, maxVectorBits, rtol: 1e-10, atol: 1e-11);
    }

    private static void Run<T>(NormKind kind, FixtureCase c, int maxVectorBits, double rtol, double atol)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        RunningStatsNorm<T> layer = LayerFactory.Create<T>(kind, c.NumFeatures, c.Eps, c.Momentum, c.Affine, c.TrackRunningStats);
        layer.Engine.MaxVectorBits = maxVectorBits;
        Assert.Equal(c.Affine, layer.Weight is not null);
        Assert.Equal(c.TrackRunningStats, layer.RunningMean is not null);
        if (c.Affine)
        {
            c.Weight!.Values<T>(c.Dtype).CopyTo(layer.Weight!.Value.AsTensorSpan().GetSpan([0], c.NumFeatures));
            c.Bias!.Values<T>(c.Dtype).CopyTo(layer.Bias!.Value.AsTensorSpan().GetSpan([0], c.NumFeatures));
        }

        for (int s = 0; s < c.Steps.Count; s++)
        {
            FixtureStep step = c.Steps[s];
            string at = $"{c.Name} step {s} ({(step.Training ? "train" : "eval")})";
            layer.Training = step.Training;
            var x = step.X.ToTensor<T>(c.Dtype);
            var dy = step.Dy.ToTensor<T>(c.Dtype);

            Check.Close(step.Y.Values<T>(c.Dtype), layer.Forward(x), rtol, atol, $"{at} y");
            Check.Close(step.Dx.Values<T>(c.Dtype), layer.Backward(x, dy), rtol, atol, $"{at} dx");
            if (c.TrackRunningStats)
            {
                Check.Close(step.RunningMean!.Values<T>(c.Dtype), layer.RunningMean!, rtol, atol, $"{at} running_mean");
                Check.Close(step.RunningVar!.Values<T>(c.Dtype), layer.RunningVar!, rtol, atol, $"{at} running_var");
            }
            Assert.Equal(step.NumBatchesTracked, layer.NumBatchesTracked);

            if (!c.Affine)
            {
                Assert.Null(step.Dweight);
                continue;
            }
            // Gradient after Backward on the same tensors (reuses Backward's sums) ...
            layer.ZeroGrad();
            layer.Gradient(x, dy);
            // Gradient sums over more elements than one output: scale the tolerance with the count.
            double sumAtol = atol * x.FlattenedLength;
            Check.Close(step.Dweight!.Values<T>(c.Dtype), layer.Weight!.Gradient, rtol, sumAtol, $"{at} dweight");
            Check.Close(step.Dbias!.Values<T>(c.Dtype), layer.Bias!.Gradient, rtol, sumAtol, $"{at} dbias");
            // ... and on copies (computes the sums itself), accumulating onto the first.
            layer.Gradient(step.X.ToTensor<T>(c.Dtype), step.Dy.ToTensor<T>(c.Dtype));
            T[] twice = step.Dweight.Values<T>(c.Dtype).Select(v => v + v).ToArray();
            Check.Close(twice, layer.Weight.Gradient, rtol, 2 * sumAtol, $"{at} dweight accumulated twice");
        }
    }
}
