using System.Numerics.Tensors;
using SharpNorm.Kernels;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Kernels;

/// <summary>Outputs past the streaming threshold take the cache-bypassing store path: same bits, aligned or not.</summary>
public class StreamingStoreTests
{
    [Theory]
    [InlineData(NormKind.BatchNorm)]
    [InlineData(NormKind.InstanceNorm)]
    public void LargeOutputsMatchReferenceAndDoNotDependOnAlignment(NormKind kind)
    {
        nint[] shape = [2, 3, 1000, 1500]; // 36 MB of float
        long length = 2L * 3 * 1000 * 1500;
        Assert.True(length * sizeof(float) >= NormEngine<float>.StreamingStoreBytes);
        var random = new Gaussian(5);
        float[] x = random.Array<float>(length, 2, 1), dy = random.Array<float>(length);
        var xt = Tensor.Create(x, shape);
        var dyt = Tensor.Create(dy, shape);

        RunningStatsNorm<float> layer = LayerFactory.Create<float>(kind, 3);
        float[] y = layer.Forward(xt).ToArray();
        float[] dx = layer.Backward(xt, dyt).ToArray();

        // Outputs one element past a vector boundary: the streaming loop starts with scalar steps.
        float[] shifted = new float[length + 1];
        layer.Forward(xt.AsReadOnlyTensorSpan(), new TensorSpan<float>(shifted.AsSpan(1), shape));
        Assert.True(y.AsSpan().SequenceEqual(shifted.AsSpan(1)), "forward output depends on alignment");
        layer.Backward(xt.AsReadOnlyTensorSpan(), dyt.AsReadOnlyTensorSpan(), new TensorSpan<float>(shifted.AsSpan(1), shape));
        Assert.True(dx.AsSpan().SequenceEqual(shifted.AsSpan(1)), "backward output depends on alignment");

        // Against the double reference, on a sample of elements.
        int[] groupOf = LayerFactory.GroupOf(kind, shape);
        int groups = groupOf.Max() + 1;
        var mean = new double[groups];
        var variance = new double[groups];
        var count = new double[groups];
        for (long i = 0; i < length; i++) { mean[groupOf[i]] += x[i]; count[groupOf[i]]++; }
        for (int g = 0; g < groups; g++) mean[g] /= count[g];
        for (long i = 0; i < length; i++) variance[groupOf[i]] += (x[i] - mean[groupOf[i]]) * (x[i] - mean[groupOf[i]]);
        for (int g = 0; g < groups; g++) variance[g] /= count[g];
        for (long i = 0; i < length; i += 9973)
        {
            double expected = (x[i] - mean[groupOf[i]]) / Math.Sqrt(variance[groupOf[i]] + 1e-5);
            Assert.True(Math.Abs(y[i] - expected) <= 1e-4, $"y[{i}] = {y[i]}, expected {expected}");
        }
    }

    public static TheoryData<string, int, int> SmallLayerCases()
    {
        var data = new TheoryData<string, int, int>();
        foreach (string name in SmallLayers.Keys)
            foreach (int bits in new[] { 512, 256, 128, 0 })
                foreach (int offset in new[] { 0, 1, 5 })
                    data.Add(name, bits, offset);
        return data;
    }

    // Column shape (channels innermost): widths below, at, and off the vector lengths; several a's (InstanceNorm, GroupNorm).
    private static readonly Dictionary<string, (Func<NormLayer<float>> Create, nint[] Shape)> SmallLayers = new()
    {
        ["BatchNorm1d (N, 1)"] = (() => new BatchNorm<float>(1), [300, 1]),
        ["BatchNorm1d (N, 3)"] = (() => new BatchNorm<float>(3), [301, 3]),
        ["BatchNorm1d (N, 16)"] = (() => new BatchNorm<float>(16), [130, 16]),
        ["BatchNorm1d (N, 37)"] = (() => new BatchNorm<float>(37), [129, 37]),
        ["BatchNorm1d (N, 300)"] = (() => new BatchNorm<float>(300), [70, 300]),
        ["BatchNorm2d channels-last, C 8"] = (() => new BatchNorm<float>(8, layout: ChannelLayout.Last), [3, 9, 11, 8]),
        ["InstanceNorm2d channels-last, C 20"] = (() => new InstanceNorm<float>(20, affine: true, layout: ChannelLayout.Last), [3, 7, 9, 20]),
        ["GroupNorm(3, 12) channels-last"] = (() => new GroupNorm<float>(3, 12, layout: ChannelLayout.Last), [2, 5, 13, 12]),
        // Several units of rows per a (64 rows of 1024; 2048 rows of 32): the coefficient rows are rotated once per a.
        ["BatchNorm1d (N, 1024), 4 units"] = (() => new BatchNorm<float>(1024), [200, 1024]),
        ["InstanceNorm2d channels-last, C 32, 2 units per sample"] = (() => new InstanceNorm<float>(32, affine: true, layout: ChannelLayout.Last), [3, 50, 50, 32]),
        // Run shape (NCHW): many small contiguous groups, segment by segment, whose forward prefetches the next group
        // (the last one past the end of x); few groups (split into units); BatchNorm's channels (R > 1): 8 of them
        // take the unit path (no prefetch), 16 the whole-group path, whose forward prefetches the next channel's run of
        // the same sample.
        ["InstanceNorm2d, 32 groups of 63"] = (() => new InstanceNorm<float>(8, affine: true), [4, 8, 7, 9]),
        ["GroupNorm(4, 16), 16 groups of 4 channels"] = (() => new GroupNorm<float>(4, 16), [4, 16, 10, 12]),
        ["GroupNorm(2, 8), 4 groups"] = (() => new GroupNorm<float>(2, 8), [2, 8, 5, 5]),
        ["BatchNorm2d, 8 channels"] = (() => new BatchNorm<float>(8), [4, 8, 9, 7]),
        ["BatchNorm2d, 16 channels of 3 runs"] = (() => new BatchNorm<float>(16), [3, 16, 5, 7]),
    };

    /// <summary>
    /// Streaming stores (forced on small inputs by lowering the threshold), in the column shape and in the run shape
    /// with its forward's prefetch, write the bits of the cached path, and both the bits that an output off the element
    /// size gets (the column shape's plain row walk, no vector store aligned): training forward, backward through the
    /// statistics, eval forward and the eval backward (dy scaled), for every vector width, outputs off vector alignment
    /// by 0, 1 and 5 elements, 3 threads.
    /// </summary>
    [Theory]
    [MemberData(nameof(SmallLayerCases))]
    public void SmallInputsWithStreamingStoresMatchCachedStoresBitForBit(string name, int maxVectorBits, int offset)
    {
        var (create, shape) = SmallLayers[name];
        long length = shape.Aggregate(1L, (p, d) => p * d);
        var random = new Gaussian(17);
        float[] x = random.Array<float>(length, 1.5, 0.7), dy = random.Array<float>(length);

        float[][] Run(bool streaming, bool offElementSize = false)
        {
            NormLayer<float> layer = create();
            layer.MaxDegreeOfParallelism = 3;
            layer.Engine.MaxVectorBits = maxVectorBits;
            layer.Engine.StreamingMinBytes = streaming ? 0 : long.MaxValue;
            if (layer.Weight is { } weight)
                for (int i = 0; i < weight.Value.FlattenedLength; i++) weight.Value[i] = 0.5f + 0.1f * (i % 7);
            if (layer.Bias is { } bias)
                for (int i = 0; i < bias.Value.FlattenedLength; i++) bias.Value[i] = 0.1f * (i % 5) - 0.2f;
            var outputs = new float[4][];
            for (int k = 0; k < 4; k++)
            {
                float[] buffer = new float[length + offset];
                byte[] bytes = new byte[length * sizeof(float) + 2];
                Span<float> output = offElementSize
                    ? System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes.AsSpan(2))
                    : buffer.AsSpan(offset);
                var target = new TensorSpan<float>(output, shape, []);
                layer.Training = k < 2;
                var xs = new ReadOnlyTensorSpan<float>(x, shape, []);
                if (k % 2 == 0) layer.Forward(xs, target);
                else layer.Backward(xs, new ReadOnlyTensorSpan<float>(dy, shape, []), target);
                outputs[k] = output.ToArray();
            }
            return outputs;
        }

        float[][] cached = Run(streaming: false), streamed = Run(streaming: true), plain = Run(streaming: true, offElementSize: true);
        string[] what = ["training forward", "backward through the statistics", "eval forward", "eval backward"];
        for (int k = 0; k < 4; k++)
        {
            Assert.True(cached[k].AsSpan().SequenceEqual(streamed[k]), $"{name}: {what[k]} differs with streaming stores");
            Assert.True(plain[k].AsSpan().SequenceEqual(cached[k]), $"{name}: {what[k]} differs from the plain row walk");
        }
    }

    /// <summary>
    /// The row shape (LayerNorm, RMSNorm) with streaming stores writes the bits of the cached path, narrow and wide rows
    /// (all threads on one block of rows, split by columns), rows off the vector length, outputs off alignment.
    /// </summary>
    [Theory]
    [InlineData(false, 7, 9000, 0, RowPath.Narrow)]
    [InlineData(false, 7, 9000, 1, RowPath.Wide)]
    [InlineData(false, 6, 8200, 5, RowPath.Wide)]
    [InlineData(false, 5, 8192, 3, RowPath.Wide)]
    [InlineData(true, 9, 8192, 0, RowPath.Wide)]
    [InlineData(true, 9, 5000, 1, RowPath.Narrow)]
    [InlineData(false, 17, 8200, 5, RowPath.NarrowForwardWideBackward)]
    public void RowShapeStreamingMatchesCachedStoresBitForBit(bool rms, int rows, int width, int offset, RowPath path)
    {
        nint[] shape = [rows, width];
        long length = (long)rows * width;
        var random = new Gaussian(13);
        float[] x = random.Array<float>(length, 1.5, 0.7), dy = random.Array<float>(length);

        float[][] Run(bool streaming)
        {
            NormLayer<float> layer = rms ? new RMSNorm<float>(width) : new LayerNorm<float>(width);
            layer.MaxDegreeOfParallelism = 3;
            RowPaths.Force(layer.Engine, path);
            layer.Engine.StreamingMinBytes = streaming ? 0 : long.MaxValue;
            var outputs = new float[2][];
            var xs = new ReadOnlyTensorSpan<float>(x, shape, []);
            for (int k = 0; k < 2; k++)
            {
                float[] buffer = new float[length + offset];
                var target = new TensorSpan<float>(buffer.AsSpan(offset), shape, []);
                if (k == 0) layer.Forward(xs, target);
                else layer.Backward(xs, new ReadOnlyTensorSpan<float>(dy, shape, []), target);
                outputs[k] = buffer[offset..];
            }
            return outputs;
        }

        float[][] cached = Run(streaming: false), streamed = Run(streaming: true);
        Assert.True(cached[0].AsSpan().SequenceEqual(streamed[0]), "forward differs with streaming stores");
        Assert.True(cached[1].AsSpan().SequenceEqual(streamed[1]), "backward differs with streaming stores");
    }
}
