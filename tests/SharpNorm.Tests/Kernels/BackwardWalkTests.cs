using System.Numerics.Tensors;
using SharpNorm.Kernels;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;
using Xunit;

namespace SharpNorm.Tests.Kernels;

/// <summary>
/// Segments large enough to walk their element-wise pass from the last run back to the first
/// (<see cref="NormEngine{T}.BackwardWalkBytes"/>) write the bits of the forward walk, with cached or streaming stores
/// (streaming ones prefetch the next segment: the forward always, the backward here in its large-segment branch; the
/// small-segment branch is reached by StreamingStoreTests' GroupNorm cases). The walk's direction leaves no trace in the
/// results by design: these tests guard that it covers every run exactly once.
/// </summary>
public class BackwardWalkTests
{
    // Run shape, one segment per thread at a time (16 or more segments): several units per slot (runs split 3 + 2),
    // runs sliced into pieces (S over the unit size), and GroupNorm's segments of two slots.
    private static readonly Dictionary<string, (Func<NormLayer<float>> Create, nint[] Shape, int Segments)> Layers = new()
    {
        ["BatchNorm, 16 channels of 5 runs, 2 units each"] = (() => new BatchNorm<float>(16), [5, 16, 20000], 16),
        ["BatchNorm, 16 channels of 2 runs of 2 slices"] = (() => new BatchNorm<float>(16), [2, 16, 70001], 16),
        // 2.2 MB of x and dy per channel: the backward prefetches the next channel (NormEngine.PrefetchesInBackward).
        ["BatchNorm, 16 channels of 4 runs of 2 slices"] = (() => new BatchNorm<float>(16), [4, 16, 70001], 16),
        ["GroupNorm(16, 32), 16 segments of 2 slots"] = (() => new GroupNorm<float>(16, 32), [1, 32, 40003], 16),
    };

    public static TheoryData<string, int, bool> Cases()
    {
        var data = new TheoryData<string, int, bool>();
        foreach (string name in Layers.Keys)
            foreach (int threads in new[] { 1, 3 })
                foreach (bool streaming in new[] { false, true })
                    data.Add(name, threads, streaming);
        return data;
    }

    /// <summary>
    /// Training forward, backward through the statistics and the parameter gradients with the walk forced backwards,
    /// forced forwards and at the default threshold (backwards for these segments): identical bits, cached or
    /// streaming stores, 1 and 3 threads.
    /// </summary>
    [Theory]
    [MemberData(nameof(Cases))]
    public void BackwardWalkMatchesForwardWalkBitForBit(string name, int threads, bool streaming)
    {
        var (create, shape, segments) = Layers[name];
        long length = shape.Aggregate(1L, (p, d) => p * d);
        var random = new Gaussian(23);
        float[] x = random.Array<float>(length, 1.5, 0.7), dy = random.Array<float>(length);

        float[][] Run(long walkMinBytes)
        {
            var xs = new ReadOnlyTensorSpan<float>(x, shape, []);
            var dys = new ReadOnlyTensorSpan<float>(dy, shape, []);
            NormLayer<float> layer = create();
            layer.MaxDegreeOfParallelism = threads;
            layer.Engine.StreamingMinBytes = streaming ? 0 : long.MaxValue;
            layer.Engine.BackwardWalkMinBytes = walkMinBytes;
            float[] y = new float[length], dx = new float[length];
            layer.Forward(xs, new TensorSpan<float>(y, shape, []));
            layer.Backward(xs, dys, new TensorSpan<float>(dx, shape, []));
            layer.Gradient(xs, dys);
            return [y, dx, layer.Weight!.Gradient.ToArray(), layer.Bias!.Gradient.ToArray()];
        }

        long segmentBytes = length / segments * sizeof(float);
        Assert.True(segmentBytes >= NormEngine<float>.BackwardWalkBytes, $"{name}: {segmentBytes} B per segment do not reach the default threshold");
        float[][] forwards = Run(long.MaxValue), backwards = Run(0), byDefault = Run(NormEngine<float>.BackwardWalkBytes);
        string[] what = ["y", "dx", "dgamma", "dbeta"];
        for (int k = 0; k < what.Length; k++)
        {
            Assert.True(forwards[k].AsSpan().SequenceEqual(backwards[k]), $"{name}: {what[k]} differs walking backwards");
            Assert.True(forwards[k].AsSpan().SequenceEqual(byDefault[k]), $"{name}: {what[k]} differs at the default threshold");
        }
    }
}
