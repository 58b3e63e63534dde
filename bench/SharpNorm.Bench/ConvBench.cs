using System.Diagnostics;
using System.Numerics.Tensors;
using SharpNorm.Layers;
using TorchSharp;
using TorchTensor = TorchSharp.torch.Tensor;

namespace SharpNorm.Bench;

/// <summary>One convolution of the network (or a check-only shape): input (N, C, H, W), O filters of kh x kw, padding.</summary>
internal sealed record ConvShape(string Layers, int N, int C, int H, int W, int O, int KernelHeight, int KernelWidth, int PadHeight, int PadWidth, bool Bias, bool Timed,
    int Stride = 1, int Groups = 1)
{
    public string Input => $"{N}x{C}x{H}x{W}";
    public string Kernel => $"{C}→{O} {KernelHeight}x{KernelWidth}" + (Stride > 1 ? $" stride {Stride}" : "") +
        (PadHeight + PadWidth > 0 ? $" pad {(PadHeight == PadWidth ? $"{PadHeight}" : $"({PadHeight},{PadWidth})")}" : "") +
        (Groups > 1 && Groups == C ? " depthwise" : Groups > 1 ? $" groups {Groups}" : "") + (Bias ? " +bias" : "");
    public int OutHeight => (H + 2 * PadHeight - KernelHeight) / Stride + 1;
    public int OutWidth => (W + 2 * PadWidth - KernelWidth) / Stride + 1;

    /// <summary>2*N*O*OH*OW*(C/groups)*kh*kw: the floating-point operations of one forward (and of each of dx, dW).</summary>
    public double Flops => 2.0 * N * O * OutHeight * OutWidth * (C / Groups) * KernelHeight * KernelWidth;

    /// <summary>
    /// Grouped convolutions (--grouped): MobileNet v1's depthwise 3x3 layers (stride 1 and 2) and a ResNeXt-style layer
    /// of 32 groups of 4 channels, batch 16.
    /// </summary>
    public static ConvShape[] Grouped() =>
    [
        new("dw", 16, 32, 112, 112, 32, 3, 3, 1, 1, false, true, Groups: 32),
        new("dw", 16, 64, 112, 112, 64, 3, 3, 1, 1, false, true, Stride: 2, Groups: 64),
        new("dw", 16, 128, 56, 56, 128, 3, 3, 1, 1, false, true, Groups: 128),
        new("dw", 16, 256, 28, 28, 256, 3, 3, 1, 1, false, true, Groups: 256),
        new("dw", 16, 512, 14, 14, 512, 3, 3, 1, 1, false, true, Groups: 512),
        new("g32", 16, 128, 56, 56, 128, 3, 3, 1, 1, false, true, Groups: 32),
    ];

    /// <summary>
    /// The distinct convolutions of DarkNetClassifier.Create (NormChoice.Batch) at batch 128 (layer indices in the
    /// Sequential; 8 and 14 share a shape), then check-only kernel shapes on which libtorch's oneDNN path has been seen
    /// to compute a wrong dx on this machine.
    /// </summary>
    public static ConvShape[] Network(int batch) =>
    [
        new("0", batch, 1, 28, 28, 48, 3, 3, 1, 1, false, true),
        new("4", batch, 48, 14, 14, 96, 3, 3, 1, 1, false, true),
        new("8, 14", batch, 96, 7, 7, 192, 3, 3, 1, 1, false, true),
        new("11", batch, 192, 7, 7, 96, 1, 1, 0, 0, false, true),
        new("17", batch, 192, 7, 7, 10, 1, 1, 0, 0, true, true),
        // Check only: shapes of tests/ fixtures (tools/FixtureGen) for which oneDNN's float32 dx was seen wrong here.
        new("–", 3, 3, 9, 7, 2, 5, 5, 2, 2, false, false),
        new("–", 3, 2, 7, 7, 4, 3, 2, 1, 0, false, false),
        new("–", 2, 3, 5, 9, 4, 1, 3, 0, 1, true, false),
        new("–", batch, 32, 14, 14, 64, 5, 5, 2, 2, false, false),
    ];
}

internal static class UntunedConvShapes
{
    /// <summary>The distinct convolutions of CnnBench.UntunedNetwork at its batch (layer indices in the Sequential).</summary>
    public static ConvShape[] Network(int batch) =>
    [
        new("0", batch, 1, 40, 40, 16, 3, 3, 1, 1, false, true),
        new("4", batch, 16, 20, 20, 32, 3, 3, 1, 1, false, true),
        new("8", batch, 32, 10, 10, 64, 3, 3, 1, 1, false, true),
        new("11", batch, 64, 10, 10, 32, 1, 1, 0, 0, false, true),
        new("14", batch, 32, 10, 10, 64, 3, 3, 1, 1, false, true),
        new("18", batch, 64, 5, 5, 128, 3, 3, 1, 1, false, true),
        new("21", batch, 128, 5, 5, 64, 1, 1, 0, 0, false, true),
        new("24", batch, 64, 5, 5, 128, 3, 3, 1, 1, false, true),
        new("27", batch, 128, 5, 5, 10, 1, 1, 0, 0, true, true),
    ];
}

internal sealed record ConvRow(
    string Layers, string Input, string Kernel, int Threads, double ForwardGflop,
    double SharpForwardMs, double SharpDxMs, double SharpDwMs, double SharpBackwardMs, double? TorchForwardMs, double? TorchBackwardMs,
    double SharpForwardGflops, double? TorchForwardGflops, double SharpBackwardGflops, double? TorchBackwardGflops,
    double? ForwardRatio, double? BackwardRatio,
    double[] SharpForwardSamplesMs, double[] SharpDxSamplesMs, double[] SharpDwSamplesMs, double[]? TorchForwardSamplesMs, double[]? TorchBackwardSamplesMs,
    long SharpAllocatedBytesPerRun, double? OtherProcessesCores);

/// <summary>
/// One convolution alone, SharpNorm Conv2d&lt;float&gt; (span overloads over preallocated tensors: Forward, Backward = dx,
/// Gradient = dW) against libtorch's conv2d (forward under no_grad; backward = y.backward(dy) with x and weight requiring
/// grad, which computes dx and dW together; grads set to None before each run, the graph built untimed before each run).
/// </summary>
internal sealed class ConvBench : IDisposable
{
    private readonly ConvShape _shape;
    private readonly Conv2d<float> _layer;
    private readonly Tensor<float> _x, _y, _dy, _dx;
    private readonly TorchTensor? _tx, _tw, _tb, _tdy;
    private readonly List<TorchTensor> _dyList = [];
    private readonly long[] _padding;

    public ConvBench(ConvShape shape, bool withTorch, int seed, ConvAlgorithm algorithm = ConvAlgorithm.Auto)
    {
        _shape = shape;
        var random = new Random(seed);
        _layer = new Conv2d<float>(shape.C, shape.O, [shape.KernelHeight, shape.KernelWidth], stride: [shape.Stride, shape.Stride],
            padding: [shape.PadHeight, shape.PadWidth], groups: shape.Groups, bias: shape.Bias, random: random) { Algorithm = algorithm };
        float[] x = Uniform(random, shape.N * shape.C * shape.H * shape.W), dy = Uniform(random, shape.N * shape.O * shape.OutHeight * shape.OutWidth);
        nint[] xShape = [shape.N, shape.C, shape.H, shape.W], yShape = [shape.N, shape.O, shape.OutHeight, shape.OutWidth];
        _x = Tensor.Create(x, xShape);
        _dy = Tensor.Create(dy, yShape);
        _y = Tensor.Create(new float[dy.Length], yShape);
        _dx = Tensor.Create(new float[x.Length], xShape);
        _padding = [shape.PadHeight, shape.PadWidth];
        if (!withTorch) return;
        _tx = TorchCnn.FromArray(x, [shape.N, shape.C, shape.H, shape.W]).requires_grad_(true);
        _tdy = TorchCnn.FromArray(dy, [shape.N, shape.O, shape.OutHeight, shape.OutWidth]);
        _tw = TorchCnn.FromArray(SharpCnn.Flat(_layer.Weight.Value).ToArray(), [shape.O, shape.C / shape.Groups, shape.KernelHeight, shape.KernelWidth]).requires_grad_(true);
        _tb = _layer.Bias is null ? null : TorchCnn.FromArray(SharpCnn.Flat(_layer.Bias.Value).ToArray(), [shape.O]).requires_grad_(true);
        _dyList.Add(_tdy);
    }

    private static float[] Uniform(Random random, int length)
    {
        var values = new float[length];
        for (int i = 0; i < values.Length; i++) values[i] = (float)(2 * random.NextDouble() - 1);
        return values;
    }

    private void SharpForward() => _layer.Forward(_x.AsReadOnlyTensorSpan(), _y.AsTensorSpan());
    private void SharpBackward() => _layer.Backward(_x.AsReadOnlyTensorSpan(), _dy.AsReadOnlyTensorSpan(), _dx.AsTensorSpan());
    private void SharpGradient() => _layer.Gradient(_x.AsReadOnlyTensorSpan(), _dy.AsReadOnlyTensorSpan());

    private TorchTensor TorchConv() => torch.nn.functional.conv2d(_tx!, _tw!, _tb, strides: [_shape.Stride, _shape.Stride], padding: _padding, groups: _shape.Groups);

    /// <summary>y, dx, dW (and db) of both from the same x, weights and dy; each as (max |difference|, max |libtorch value|).</summary>
    public List<(string Quantity, double Diff, double Scale)> Check()
    {
        _layer.MaxDegreeOfParallelism = -1;
        SharpForward();
        SharpBackward();
        _layer.Weight.ZeroGrad();
        _layer.Bias?.ZeroGrad();
        SharpGradient();
        var result = new List<(string, double, double)>();
        // The definition in double for the small check-only shapes: which side is right where they differ.
        float[]? reference = !_shape.Timed && _shape.Flops < 2e8 ? DirectDx() : null;
        (string, double, double)? sharpVsReference = reference is null
            ? null
            : ("dx: SharpNorm vs float64 direct sum", MaxAbsDiff(SharpCnn.Flat(_dx), reference), MaxAbs(reference));
        if (_tx is null)
        {
            if (sharpVsReference is { } only) result.Add(only);
            return result;
        }
        ClearGrads();
        using (var scope = torch.NewDisposeScope())
        {
            TorchTensor y = TorchConv();
            y.backward(_dyList);
            result.Add(("y", MaxAbsDiff(SharpCnn.Flat(_y), TorchCnn.ToArray(y)), MaxAbs(TorchCnn.ToArray(y))));
            float[] dx = TorchCnn.ToArray(_tx.grad!), dw = TorchCnn.ToArray(_tw!.grad!);
            result.Add(("dx", MaxAbsDiff(SharpCnn.Flat(_dx), dx), MaxAbs(dx)));
            if (reference is not null) result.Add(("dx: libtorch vs float64 direct sum", MaxAbsDiff(dx, reference), MaxAbs(reference)));
            if (sharpVsReference is { } sharp) result.Add(sharp);
            result.Add(("dW", MaxAbsDiff(SharpCnn.Flat(_layer.Weight.Gradient), dw), MaxAbs(dw)));
            if (_tb is not null)
            {
                float[] db = TorchCnn.ToArray(_tb.grad!);
                result.Add(("db", MaxAbsDiff(SharpCnn.Flat(_layer.Bias!.Gradient), db), MaxAbs(db)));
            }
        }
        ClearGrads();
        return result;
    }

    /// <summary>
    /// dx by the definition, summed in double (small check-only shapes): y[n,o,oh,ow] = Σ w[o,c,i,j]·x[n,c,oh-ph+i,ow-pw+j],
    /// so dx[n,c,oh-ph+i,ow-pw+j] += w[o,c,i,j]·dy[n,o,oh,ow] (stride 1, no dilation, one group).
    /// </summary>
    private float[] DirectDx()
    {
        ConvShape s = _shape;
        ReadOnlySpan<float> w = SharpCnn.Flat(_layer.Weight.Value), dy = SharpCnn.Flat(_dy);
        var dx = new double[s.N * s.C * s.H * s.W];
        for (int n = 0; n < s.N; n++)
            for (int o = 0; o < s.O; o++)
                for (int oh = 0; oh < s.OutHeight; oh++)
                    for (int ow = 0; ow < s.OutWidth; ow++)
                    {
                        double g = dy[((n * s.O + o) * s.OutHeight + oh) * s.OutWidth + ow];
                        for (int c = 0; c < s.C; c++)
                            for (int i = 0; i < s.KernelHeight; i++)
                            {
                                int ih = oh - s.PadHeight + i;
                                if ((uint)ih >= (uint)s.H) continue;
                                for (int j = 0; j < s.KernelWidth; j++)
                                {
                                    int iw = ow - s.PadWidth + j;
                                    if ((uint)iw >= (uint)s.W) continue;
                                    dx[((n * s.C + c) * s.H + ih) * s.W + iw] += w[((o * s.C + c) * s.KernelHeight + i) * s.KernelWidth + j] * g;
                                }
                            }
                    }
        return dx.Select(v => (float)v).ToArray();
    }

    /// <summary>
    /// Runs in turn: per run SharpNorm's Forward, Backward and Gradient, then libtorch's forward and backward (pauses
    /// between the sides as in CnnBench.Train); warm-up runs first. Medians of each.
    /// </summary>
    public ConvRow Measure(int threads, int warmup, int runs)
    {
        _layer.MaxDegreeOfParallelism = threads == Environment.ProcessorCount ? -1 : threads;
        bool withTorch = _tx is not null;
        if (withTorch) TorchRunner.SetThreads(threads);
        double[] forward = new double[runs], dx = new double[runs], dw = new double[runs], torchForward = new double[runs], torchBackward = new double[runs];
        long allocated = 0;
        var contention = new CpuContention();
        for (int run = -warmup; run < runs; run++)
        {
            long bytes = GC.GetTotalAllocatedBytes(precise: true);
            long start = Stopwatch.GetTimestamp();
            SharpForward();
            double f = TimeMs(ref start);
            SharpBackward();
            double b = TimeMs(ref start);
            SharpGradient();
            double g = TimeMs(ref start);
            if (run >= 0)
            {
                allocated += GC.GetTotalAllocatedBytes(precise: true) - bytes;
                (forward[run], dx[run], dw[run]) = (f, b, g);
            }
            CnnBench.Pause(afterTorch: false);
            if (!withTorch) continue;

            using (torch.no_grad())
            using (var scope = torch.NewDisposeScope())
            {
                start = Stopwatch.GetTimestamp();
                TorchConv();
                f = TimeMs(ref start);
            }
            ClearGrads();
            using (TorchTensor y = TorchConv())
            {
                start = Stopwatch.GetTimestamp();
                y.backward(_dyList);
                b = TimeMs(ref start);
            }
            ClearGrads();
            if (run >= 0) (torchForward[run], torchBackward[run]) = (f, b);
            CnnBench.Pause(afterTorch: true);
        }

        Sample sf = new(forward), sdx = new(dx), sdw = new(dw);
        Sample? tf = withTorch ? new Sample(torchForward) : null, tb = withTorch ? new Sample(torchBackward) : null;
        double gflop = _shape.Flops / 1e9;
        double sharpBackward = sdx.Median + sdw.Median;
        return new ConvRow(
            _shape.Layers, _shape.Input, _shape.Kernel, threads, gflop,
            sf.Median, sdx.Median, sdw.Median, sharpBackward, tf?.Median, tb?.Median,
            gflop / sf.Median * 1e3, tf is null ? null : gflop / tf.Median * 1e3,
            2 * gflop / sharpBackward * 1e3, tb is null ? null : 2 * gflop / tb.Median * 1e3,
            tf is null ? null : sf.Median / tf.Median,
            tb is null ? null : sharpBackward / tb.Median,
            forward, dx, dw, tf?.Ms, tb?.Ms, allocated / Math.Max(1, runs), contention.OtherCores());
    }

    /// <summary>Milliseconds since <paramref name="start"/>; restarts the clock.</summary>
    private static double TimeMs(ref long start)
    {
        long now = Stopwatch.GetTimestamp();
        double ms = Stopwatch.GetElapsedTime(start, now).TotalMilliseconds;
        start = Stopwatch.GetTimestamp();
        return ms;
    }

    private void ClearGrads()
    {
        foreach (TorchTensor? t in new[] { _tx, _tw, _tb })
        {
            if (t?.grad is not { } grad) continue;
            t.grad = null;
            grad.Dispose();
        }
    }

    public static double MaxAbsDiff(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length != b.Length) throw new InvalidOperationException($"comparing {a.Length} values with {b.Length}.");
        double max = 0;
        for (int i = 0; i < a.Length; i++)
        {
            double d = Math.Abs((double)a[i] - b[i]);
            if (double.IsNaN(d)) return double.NaN;
            if (d > max) max = d;
        }
        return max;
    }

    /// <summary>Largest |value|; NaN if any value is NaN.</summary>
    public static double MaxAbs(ReadOnlySpan<float> a)
    {
        double max = 0;
        foreach (float v in a)
        {
            if (float.IsNaN(v)) return double.NaN;
            max = Math.Max(max, Math.Abs(v));
        }
        return max;
    }

    public void Dispose()
    {
        ClearGrads();
        foreach (TorchTensor? t in new[] { _tx, _tw, _tb, _tdy }) t?.Dispose();
    }
}
