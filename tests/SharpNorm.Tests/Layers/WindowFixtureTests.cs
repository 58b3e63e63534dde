using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tensors;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Layers;

/// <summary>Conv2d, MaxPool2d and AvgPool2d against libtorch 2.10 (tools/FixtureGen): strides, paddings, dilations, groups, ceil mode, ties.</summary>
public class WindowFixtureTests
{
    public static TheoryData<string, string, int> Cases()
    {
        var data = new TheoryData<string, string, int>();
        foreach (string file in new[] { "conv2d.json", "maxpool2d.json", "avgpool2d.json" })
            foreach (WindowFixtureCase c in WindowFixtures.Load(file).Cases)
                foreach (int threads in new[] { 1, 3 })
                    data.Add(file, c.Name, threads);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesLibtorch(string file, string caseName, int threads)
    {
        WindowFixtureCase c = WindowFixtures.Case(file, caseName);
        if (c.Dtype == "float32") Run<float>(file, c, threads, 1e-4, 1e-5);
        else Run<double>(file, c, threads, 1e-10, 1e-12);
    }

    private static void Run<T>(string file, WindowFixtureCase c, int threads, double rtol, double atol) where T : unmanaged, IFloatingPointIeee754<T>
    {
        Layer<T> layer = file switch
        {
            "conv2d.json" => new Conv2d<T>(c.InChannels, c.OutChannels, c.KernelSize, c.Stride, c.Padding, c.Dilation, c.Groups, c.Bias),
            "maxpool2d.json" => new MaxPool2d<T>(c.KernelSize, c.Stride, c.Padding, c.CeilMode),
            _ => new AvgPool2d<T>(c.KernelSize, c.Stride, c.Padding, c.CeilMode, c.CountIncludePad),
        };
        layer.MaxDegreeOfParallelism = threads;
        if (layer is Conv2d<T> conv)
        {
            c.Weight!.Values<T>(c.Dtype).CopyTo(TensorData.Flat(conv.Weight.Value));
            if (c.Bias) c.BiasValue!.Values<T>(c.Dtype).CopyTo(TensorData.Flat(conv.Bias!.Value));
        }
        var x = c.X.ToTensor<T>(c.Dtype);
        var dy = c.Dy.ToTensor<T>(c.Dtype);
        Check.Close(c.Y.Values<T>(c.Dtype), layer.Forward(x), rtol, atol, $"{c.Name} y");
        Check.Close(c.Dx.Values<T>(c.Dtype), layer.Backward(x, dy), rtol, atol, $"{c.Name} dx");
        if (layer is Conv2d<T> convolution)
        {
            convolution.Gradient(x, dy);
            double sumAtol = atol * 100;
            Check.Close(c.Dweight!.Values<T>(c.Dtype), convolution.Weight.Gradient, rtol, sumAtol, $"{c.Name} dweight");
            if (c.Bias) Check.Close(c.Dbias!.Values<T>(c.Dtype), convolution.Bias!.Gradient, rtol, sumAtol, $"{c.Name} dbias");
        }
    }
}
