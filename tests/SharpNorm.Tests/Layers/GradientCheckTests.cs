using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>
/// Backward and Gradient against double-precision central differences of L = Σ y * R (so dL/dy = R),
/// for every rank of both layers, training and eval, with and without affine parameters and running statistics.
/// </summary>
public class GradientCheckTests
{
    public static TheoryData<NormKind, int, bool, bool, bool> Configurations()
    {
        var data = new TheoryData<NormKind, int, bool, bool, bool>();
        foreach (NormKind kind in Enum.GetValues<NormKind>())
            for (int rank = kind == NormKind.BatchNorm ? 2 : 3; rank <= 5; rank++)
                foreach (bool training in new[] { true, false })
                    foreach (bool affine in new[] { true, false })
                        foreach (bool track in new[] { true, false })
                            data.Add(kind, rank, training, affine, track);
        return data;
    }

    public static nint[] Shape(int rank) => rank switch
    {
        2 => [5, 3],
        3 => [3, 2, 4],
        4 => [2, 3, 3, 2],
        _ => [2, 2, 2, 2, 3],
    };

    [Theory]
    [MemberData(nameof(Configurations))]
    public void BackwardAndGradientMatchCentralDifferences(NormKind kind, int rank, bool training, bool affine, bool track)
    {
        nint[] shape = Shape(rank);
        int channels = (int)shape[1];
        var random = new Gaussian(rank * 100 + (training ? 10 : 0) + (affine ? 2 : 0) + (track ? 1 : 0));
        RunningStatsNorm<double> layer = LayerFactory.Create<double>(kind, channels, eps: 1e-3, affine: affine, trackRunningStats: track);
        if (affine)
        {
            random.Array<double>(channels, 0.5, 1).CopyTo(Span(layer.Weight!.Value));
            random.Array<double>(channels, 0.3).CopyTo(Span(layer.Bias!.Value));
        }
        if (track)
        {
            random.Array<double>(channels, 0.5).CopyTo(Span(layer.RunningMean!));
            for (int c = 0; c < channels; c++) Span(layer.RunningVar!)[c] = random.Uniform(0.5, 2);
        }
        layer.Training = training;

        Tensor<double> x = random.Tensor<double>(shape, 1.5, 0.2);
        Tensor<double> r = random.Tensor<double>(shape);
        layer.Forward(x);
        double[] dx = layer.Backward(x, r).ToArray();
        layer.Gradient(x, r);

        double Loss()
        {
            double[] y = layer.Forward(x).ToArray();
            double[] weights = r.ToArray();
            double sum = 0;
            for (int i = 0; i < y.Length; i++) sum += y[i] * weights[i];
            return sum;
        }

        // Running statistics move on every training forward; the loss depends on them only in eval mode, where they stay put.
        Assert.Equal(dx, NumericalGradient.Central(Span(x), Loss), NumericalGradient.Agrees);
        if (affine)
        {
            Assert.Equal(layer.Weight!.Gradient.ToArray(), NumericalGradient.Central(Span(layer.Weight.Value), Loss), NumericalGradient.Agrees);
            Assert.Equal(layer.Bias!.Gradient.ToArray(), NumericalGradient.Central(Span(layer.Bias.Value), Loss), NumericalGradient.Agrees);
        }
    }




    private static Span<double> Span(Tensor<double> tensor) => tensor.AsTensorSpan().GetSpan(new nint[tensor.Rank], (int)tensor.FlattenedLength);
}
