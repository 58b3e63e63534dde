using System.Numerics.Tensors;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Kernels;

/// <summary>The span overloads allocate nothing once the layer has seen a shape: buffers are owned and reused.</summary>
public class AllocationTests
{
    public static TheoryData<NormKind, nint[], int> Shapes() => new()
    {
        { NormKind.BatchNorm, [8, 16, 56, 56], -1 },
        { NormKind.BatchNorm, [4, 3, 300, 300], -1 },
        { NormKind.BatchNorm, [4096, 64], -1 },
        { NormKind.InstanceNorm, [64, 64, 7, 7], -1 },
        { NormKind.BatchNorm, [8, 16, 56, 56], 1 },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void SpanOverloadsAllocateNothingPerCall(NormKind kind, nint[] shape, int threads)
    {
        RunningStatsNorm<float> layer = LayerFactory.Create<float>(kind, (int)shape[1], affine: true, trackRunningStats: true);
        layer.MaxDegreeOfParallelism = threads;
        var random = new Gaussian(3);
        Tensor<float> x = random.Tensor<float>(shape), dy = random.Tensor<float>(shape);
        Tensor<float> y = Tensor.Create(new float[x.FlattenedLength], shape), dx = Tensor.Create(new float[x.FlattenedLength], shape);

        void Step()
        {
            layer.Training = true;
            layer.Forward(x.AsReadOnlyTensorSpan(), y.AsTensorSpan());
            layer.Backward(x.AsReadOnlyTensorSpan(), dy.AsReadOnlyTensorSpan(), dx.AsTensorSpan());
            layer.ZeroGrad();
            layer.Gradient(x.AsReadOnlyTensorSpan(), dy.AsReadOnlyTensorSpan());
            layer.Gradient(dx.AsReadOnlyTensorSpan(), dy.AsReadOnlyTensorSpan()); // not Backward's tensors: computes its own sums
            layer.Training = false;
            layer.Forward(x.AsReadOnlyTensorSpan(), y.AsTensorSpan());
            layer.Backward(x.AsReadOnlyTensorSpan(), dy.AsReadOnlyTensorSpan(), dx.AsTensorSpan());
        }

        // Enough calls for the runtime's tiered JIT to finish promoting the hot methods (it allocates while it does).
        for (int i = 0; i < 60; i++) Step();
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++) Step();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated == 0, $"{allocated} bytes allocated in 10 steps");
    }

    [Theory]
    [InlineData(false, 1, RowPath.Narrow)]
    [InlineData(false, -1, RowPath.Narrow)]
    [InlineData(true, -1, RowPath.Narrow)]
    [InlineData(false, -1, RowPath.Wide)]   // the wide-row path (forced on these rows)
    [InlineData(true, 1, RowPath.Wide)]
    [InlineData(false, -1, RowPath.NarrowForwardWideBackward)]
    public void LayerNormAndRmsNormAllocateNothingPerCall(bool rms, int threads, RowPath path)
    {
        nint[] shape = [256, 1024];
        NormLayer<float> layer = rms ? new RMSNorm<float>(1024) : new LayerNorm<float>(1024);
        layer.MaxDegreeOfParallelism = threads;
        RowPaths.Force(layer.Engine, path);
        var random = new Gaussian(4);
        Tensor<float> x = random.Tensor<float>(shape), dy = random.Tensor<float>(shape);
        Tensor<float> y = Tensor.Create(new float[x.FlattenedLength], shape), dx = Tensor.Create(new float[x.FlattenedLength], shape);

        void Step()
        {
            layer.Forward(x.AsReadOnlyTensorSpan(), y.AsTensorSpan());
            layer.Backward(x.AsReadOnlyTensorSpan(), dy.AsReadOnlyTensorSpan(), dx.AsTensorSpan());
            layer.ZeroGrad();
            layer.Gradient(x.AsReadOnlyTensorSpan(), dy.AsReadOnlyTensorSpan());
            layer.Gradient(dx.AsReadOnlyTensorSpan(), dy.AsReadOnlyTensorSpan());
        }

        // Enough calls for the runtime's tiered JIT to finish promoting the hot methods (it allocates while it does).
        for (int i = 0; i < 60; i++) Step();
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++) Step();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated == 0, $"{allocated} bytes allocated in 10 steps");
    }

    /// <summary>Convolution paths of this kind's own buffers: grouped and depthwise direct sums, Winograd split at batch 1, small-map im2col.</summary>
    [Theory]
    [InlineData(16, 16, 16, 20, 1, 1)]    // depthwise
    [InlineData(16, 16, 4, 19, 2, 1)]     // groups of 4, stride 2
    [InlineData(32, 32, 1, 12, 1, 1)]     // Winograd, one range of tiles split among the threads
    [InlineData(64, 128, 1, 5, 1, 4)]     // im2col on a 5x5 map
    public void ConvolutionPathsAllocateNothingPerCall(int c, int o, int groups, int size, int stride, int batch)
    {
        var conv = new Conv2d<float>(c, o, 3, stride: stride, padding: 1, groups: groups, random: new Random(2)) { MaxDegreeOfParallelism = -1 };
        var random = new Gaussian(6);
        Tensor<float> x = random.Tensor<float>([batch, c, size, size]);
        nint[] yShape = conv.OutputShape(x.Lengths);
        Tensor<float> dy = random.Tensor<float>(yShape), y = Tensor.Create(new float[dy.FlattenedLength], yShape);
        Tensor<float> dx = Tensor.Create(new float[x.FlattenedLength], x.Lengths);

        void Step()
        {
            conv.Forward(x.AsReadOnlyTensorSpan(), y.AsTensorSpan());
            conv.Backward(x.AsReadOnlyTensorSpan(), dy.AsReadOnlyTensorSpan(), dx.AsTensorSpan());
            conv.Gradient(x.AsReadOnlyTensorSpan(), dy.AsReadOnlyTensorSpan());
        }

        for (int i = 0; i < 60; i++) Step();
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++) Step();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated == 0, $"{allocated} bytes allocated in 10 steps");
    }

    [Theory]
    [InlineData(1)]
    [InlineData(-1)]
    public void ATrainingStepAllocatesNothing(int threads)
    {
        var model = SharpNorm.Models.DarkNetClassifier.Create<float>(SharpNorm.Models.NormChoice.Batch, seed: 1);
        model.MaxDegreeOfParallelism = threads;
        var loss = new SharpNorm.Training.CrossEntropyLoss<float>();
        var sgd = new SharpNorm.Training.Sgd<float>(model.Parameters, 0.01, momentum: 0.9, nesterov: true);
        Tensor<float> x = new Gaussian(5).Tensor<float>([8, 1, 28, 28]);
        var logits = Tensor.Create(new float[80], [8, 10]);
        var gradient = Tensor.Create(new float[80], [8, 10]);
        int[] labels = [0, 1, 2, 3, 4, 5, 6, 7];

        void Step()
        {
            model.Forward(x.AsReadOnlyTensorSpan(), logits.AsTensorSpan());
            loss.Forward(logits.AsReadOnlyTensorSpan(), labels);
            loss.Backward(logits.AsReadOnlyTensorSpan(), labels, gradient.AsTensorSpan());
            sgd.ZeroGrad();
            model.Gradient(x.AsReadOnlyTensorSpan(), gradient.AsReadOnlyTensorSpan());
            sgd.Step();
        }

        for (int i = 0; i < 60; i++) Step();
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++) Step();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated == 0, $"{allocated} bytes allocated in 10 training steps");
    }

    [Theory]
    [InlineData("yolov3-tiny.cfg", 1, -1)]      // batch 1 on 2+ threads: banded convolutions
    [InlineData("small-detector.cfg", 3, 1)]
    [InlineData("small-classifier.cfg", 2, -1)]
    public void ADarknetForwardAllocatesNothing(string cfg, int batch, int threads)
    {
        var network = SharpNorm.Darknet.DarknetNetwork.Load(Path.Combine(AppContext.BaseDirectory, "Darknet", "cfg", cfg), null,
            new SharpNorm.Darknet.DarknetNetworkOptions { MaxDegreeOfParallelism = threads });
        var input = new float[batch * network.InputChannels * network.InputHeight * network.InputWidth];
        for (int i = 0; i < input.Length; i++) input[i] = i % 17 / 17f;

        for (int i = 0; i < 60; i++) network.Forward(input, batch);
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 10; i++) network.Forward(input, batch);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated == 0, $"{allocated} bytes allocated in 10 forward passes");
    }
}
