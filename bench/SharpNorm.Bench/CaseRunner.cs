using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using SharpNorm.Kernels;
using SharpNorm.Layers;
using SharpNorm.Tests.Support;

namespace SharpNorm.Bench;

/// <summary>
/// One case: inputs built once (SharpNorm tensors over preallocated arrays, libtorch copies), then each operation
/// measured for SharpNorm, libtorch and, for the backward, the chain-rule form. Nothing is allocated in timed loops.
/// </summary>
internal sealed class CaseRunner : IDisposable
{
    private const float Eps = 1e-5f;
    private const int JitWarmCalls = 32;

    private readonly BenchCase _case;
    private readonly Options _options;
    private readonly Bandwidth _bandwidth;
    private readonly NormGeometry _geometry;
    private readonly NormLayer<float> _layer;
    private readonly RunningStatsNorm<float>? _runningStatsLayer; // null for GroupNorm, LayerNorm, RMSNorm (no running statistics)
    private readonly float[] _xData, _dyData, _yData, _dxData, _gamma;
    private readonly float[]? _beta; // null for RMSNorm (no bias)
    private readonly Tensor<float> _x, _dy, _y, _dx;
    private readonly TorchRunner? _torch;

    // Chain-rule backward inputs and scratch: statistics of x as float per group, preallocated.
    private readonly float[] _chainMean, _chainVariance, _chainDx, _chainDxhat, _chainDvar, _chainDmean;

    public CaseRunner(BenchCase benchCase, Options options, Bandwidth bandwidth, bool withTorch)
    {
        _case = benchCase;
        _options = options;
        _bandwidth = bandwidth;
        _geometry = benchCase.Geometry;
        int length = checked((int)benchCase.Elements), channels = benchCase.Channels, parameters = benchCase.ParameterCount;

        (_xData, _dyData) = Inputs.Create(benchCase.StorageShape, channelDimension: benchCase.ChannelsLast ? benchCase.StorageShape.Length - 1 : 1, seed: 20240601);
        _yData = new float[length];
        _dxData = new float[length];
        // One value per affine parameter (C, or K = product of the normalized shape), flat in the parameter's order.
        _gamma = new float[parameters];
        _beta = benchCase.HasBias ? new float[parameters] : null;
        for (int c = 0; c < parameters; c++)
        {
            _gamma[c] = 0.5f + (c % 7) / 7f;
            if (_beta is not null) _beta[c] = 0.1f * (c % 5) - 0.2f;
        }

        nint[] lengths = benchCase.StorageShape.Select(d => (nint)d).ToArray();
        _x = Tensor.Create(_xData, lengths);
        _dy = Tensor.Create(_dyData, lengths);
        _y = Tensor.Create(_yData, lengths);
        _dx = Tensor.Create(_dxData, lengths);

        ChannelLayout layout = benchCase.ChannelsLast ? ChannelLayout.Last : ChannelLayout.First;
        _layer = benchCase.Layer switch
        {
            LayerKind.BatchNorm => new BatchNorm<float>(numFeatures: channels, layout: layout),
            LayerKind.InstanceNorm => new InstanceNorm<float>(channels, affine: true, trackRunningStats: true, layout: layout),
            LayerKind.GroupNorm => new GroupNorm<float>(numGroups: benchCase.Groups, numChannels: channels, layout: layout),
            // LayerNorm's default eps is 1e-5; RMSNorm's would be float's machine epsilon (PyTorch's default), so 1e-5
            // is given (the libtorch side uses 1e-5 for every layer).
            LayerKind.LayerNorm when benchCase.NormalizedDims == 1 => new LayerNorm<float>(parameters),
            LayerKind.LayerNorm => new LayerNorm<float>(NormalizedShape(benchCase)),
            _ when benchCase.NormalizedDims == 1 => new RMSNorm<float>(parameters, eps: 1e-5),
            _ => new RMSNorm<float>(NormalizedShape(benchCase), eps: 1e-5),
        };
        _runningStatsLayer = _layer as RunningStatsNorm<float>;
        if (Flat(_layer.Weight!.Value).Length != parameters || (_layer.Bias is null) != (_beta is null))
            throw new InvalidOperationException($"{benchCase.Name}: the layer's parameters do not match the case's ({parameters}, bias {_beta is not null}).");
        _gamma.CopyTo(Flat(_layer.Weight.Value));
        if (_layer.Bias is { } bias) _beta!.CopyTo(Flat(bias.Value));

        // (Not needed, and left empty, where the chain-rule form does not apply.)
        int groups = benchCase.HasChainRule ? _geometry.GroupCount : 0, chainLength = benchCase.HasChainRule ? length : 0;
        _chainMean = new float[groups];
        _chainVariance = new float[groups];
        _chainDx = new float[chainLength];
        _chainDxhat = new float[chainLength];
        _chainDvar = new float[groups];
        _chainDmean = new float[groups];

        if (withTorch) _torch = new TorchRunner(benchCase, _xData, _dyData, _gamma, _beta);
    }

    private static int[] NormalizedShape(BenchCase c) => c.ParameterShape.Select(d => checked((int)d)).ToArray();

    private static Span<float> Flat(Tensor<float> t) =>
        MemoryMarshal.CreateSpan(ref t.GetPinnableReference(), checked((int)t.FlattenedLength));

    // The SharpNorm operations, exactly as timed (span overloads, no allocation).
    private void SharpForward() => _layer.Forward(_x.AsReadOnlyTensorSpan(), _y.AsTensorSpan());

    private void SharpBackwardAndGradient()
    {
        _layer.ZeroGrad();
        _layer.Backward(_x.AsReadOnlyTensorSpan(), _dy.AsReadOnlyTensorSpan(), _dx.AsTensorSpan());
        _layer.Gradient(_x.AsReadOnlyTensorSpan(), _dy.AsReadOnlyTensorSpan());
    }

    private void SharpForwardBackward()
    {
        SharpForward();
        SharpBackwardAndGradient();
    }

    private void ChainBackward() =>
        ChainRuleBackward<float>.Backward(_geometry, _xData, _dyData, _gamma, _chainMean, _chainVariance, Eps,
            _chainDx, _chainDxhat, _chainDvar, _chainDmean);

    /// <summary>
    /// Untimed correctness check from fresh running statistics: SharpNorm vs libtorch (y, dx, dgamma, dbeta where the
    /// layer has a bias, running stats after one step where it keeps them) and vs the chain-rule backward (dx; not for
    /// RMSNorm); bytes allocated by SharpNorm calls.
    /// </summary>
    public CaseCheck Check()
    {
        _layer.MaxDegreeOfParallelism = 1;
        _runningStatsLayer?.ResetRunningStats();
        _layer.Training = true;
        SharpForwardBackward();
        long allocated = GC.GetAllocatedBytesForCurrentThread();
        SharpForwardBackward();
        _layer.Training = false;
        SharpForward();
        _layer.Training = true;
        allocated = GC.GetAllocatedBytesForCurrentThread() - allocated;
        // State after exactly one training step again, for the comparisons below.
        _runningStatsLayer?.ResetRunningStats();
        SharpForwardBackward();

        double? chainDx = null;
        double dxScale = 0;
        foreach (float v in _dxData) dxScale = Math.Max(dxScale, Math.Abs(v));
        if (_case.HasChainRule)
        {
            ComputeGroupStatistics();
            ChainBackward();
            double diff = 0;
            for (int i = 0; i < _dxData.Length; i++) diff = Math.Max(diff, Math.Abs(_chainDx[i] - _dxData[i]));
            chainDx = diff;
        }

        double? y = null, dx = null, dgamma = null, dbeta = null, runningMean = null, runningVar = null;
        if (_torch is not null)
        {
            TorchRunner.SetThreads(1);
            (y, dx, dgamma, dbeta, runningMean, runningVar) = _torch.Compare(_yData, _dxData,
                Flat(_layer.Weight!.Gradient).ToArray(), _layer.Bias is null ? null : Flat(_layer.Bias.Gradient).ToArray(),
                _runningStatsLayer is null ? null : Flat(_runningStatsLayer.RunningMean!).ToArray(),
                _runningStatsLayer is null ? null : Flat(_runningStatsLayer.RunningVar!).ToArray());
        }
        return new CaseCheck(_case.Name, y, dx, dgamma, dbeta, runningMean, runningVar, chainDx, dxScale, allocated);
    }

    /// <summary>Per-group biased mean and variance of x (double accumulation), as the forward pass saves them.</summary>
    private void ComputeGroupStatistics()
    {
        NormGeometry g = _geometry;
        var sum = new double[g.GroupCount];
        var squares = new double[g.GroupCount];
        for (int pass = 0; pass < 2; pass++)
        {
            for (int a = 0; a < g.A; a++)
                for (int r = 0; r < g.R; r++)
                    for (int b = 0; b < g.B; b++)
                        for (int j = 0; j < g.J; j++)
                        {
                            int offset = (int)g.Offset(a, r, b, j), group = a * g.B + b;
                            ReadOnlySpan<float> run = _xData.AsSpan(offset, g.S);
                            if (pass == 0)
                            {
                                double s = 0;
                                foreach (float v in run) s += v;
                                sum[group] += s;
                            }
                            else
                            {
                                double mean = sum[group] / g.GroupSize, s = 0;
                                foreach (float v in run) s += (v - mean) * (v - mean);
                                squares[group] += s;
                            }
                        }
        }
        for (int group = 0; group < g.GroupCount; group++)
        {
            _chainMean[group] = (float)(sum[group] / g.GroupSize);
            _chainVariance[group] = (float)(squares[group] / g.GroupSize);
        }
    }

    public IEnumerable<ResultRow> Measure(int threads)
    {
        int warmup = _options.Warmup, runs = _options.Runs;
        _layer.MaxDegreeOfParallelism = threads == Environment.ProcessorCount ? -1 : threads;
        if (_torch is not null) TorchRunner.SetThreads(threads);

        // Warm-up on this very geometry and thread count: every code path compiled (once, optimized: tiered compilation
        // is off in the bench), the engine's buffers sized, the pages of every array touched.
        for (int i = 0; i < JitWarmCalls; i++)
        {
            _layer.Training = true;
            SharpForwardBackward();
            SharpBackwardAndGradient();
            _layer.Training = false;
            SharpForward();
        }
        _layer.Training = true;

        // train fwd
        (Sample sharp, Sample? torch) = Timing.MeasureSideBySide(new(SharpForward), _torch?.ForwardOperation(training: true), warmup, runs);
        if (_torch is not null) TorchRunner.EnableGrad();
        yield return Row(Op.TrainForward, threads, sharp, torch);

        // train fwd+bwd, and the backward alone (SharpNorm; chain-rule form at 1 thread)
        (sharp, torch) = Timing.MeasureSideBySide(new(SharpForwardBackward), _torch?.ForwardBackwardOperation(), warmup, runs);
        SharpForward(); // the forward the backward-only runs refer to (untimed)
        Sample backward = Timing.Measure(SharpBackwardAndGradient, warmup, runs);
        Sample? chain = null;
        if (threads == 1 && _case.HasChainRule)
        {
            ComputeGroupStatistics();
            chain = Timing.Measure(ChainBackward, Math.Min(warmup, 3), runs);
        }
        yield return Row(Op.TrainForwardBackward, threads, sharp, torch, backward, chain);

        // eval fwd (running statistics from the training forwards above)
        _layer.Training = false;
        (sharp, torch) = Timing.MeasureSideBySide(new(SharpForward), _torch?.ForwardOperation(training: false), warmup, runs);
        if (_torch is not null) TorchRunner.EnableGrad();
        _layer.Training = true;
        yield return Row(Op.EvalForward, threads, sharp, torch);
    }

    private ResultRow Row(Op op, int threads, Sample sharp, Sample? torch, Sample? backward = null, Sample? chain = null)
    {
        (long read, long write) = OpInfo.Bytes(op, _case);
        double floor = _bandwidth.FloorMs(threads, read, write);
        double GBs(double ms) => (read + write) / ms / 1e6;
        return new ResultRow(
            Case: _case.Name, Layer: _case.LayerName, Shape: _case.Shape, Op: OpInfo.Name(op), Threads: threads,
            SharpMs: sharp.Median, TorchMs: torch?.Median, SpeedUp: torch is null ? null : torch.Median / sharp.Median,
            SharpGBs: GBs(sharp.Median), TorchGBs: torch is null ? null : GBs(torch.Median),
            ReadBytes: read, WriteBytes: write, FloorMs: floor,
            SharpXFloor: sharp.Median / floor, TorchXFloor: torch is null ? null : torch.Median / floor,
            BwdMs: backward?.Median, ChainMs: chain?.Median,
            ChainRatio: chain is null || backward is null ? null : chain.Median / backward.Median,
            SharpSamplesMs: sharp.Ms, TorchSamplesMs: torch?.Ms, BwdSamplesMs: backward?.Ms, ChainSamplesMs: chain?.Ms);
    }

    /// <summary>
    /// Compiles the SharpNorm kernels and the chain-rule backward (optimized on first call: tiered compilation is off in
    /// the bench) before any timing, on small inputs of each case's layout (the chain-rule form is warmed only here: it is slow on the
    /// real inputs; <see cref="Measure"/> warms SharpNorm again on each case's own inputs).
    /// </summary>
    public static void WarmUpJit(IEnumerable<BenchCase> cases, int[] threadCounts, Options options, Bandwidth bandwidth)
    {
        var shapes = new HashSet<string>();
        foreach (var c in cases)
        {
            // (LayerNorm / RMSNorm take their normalized shape from the case's shape, so it shrinks along.)
            long[] small = c.Shape.Length == 2 ? [64, c.Shape[1]] : [2, c.Shape[1], .. c.Shape.Skip(2).Select(d => Math.Min(d, 8L))];
            var mini = c with { Shape = small };
            if (!shapes.Add(mini.Name)) continue;
            using var runner = new CaseRunner(mini, options, bandwidth, withTorch: false);
            if (c.HasChainRule) runner.ComputeGroupStatistics();
            foreach (int threads in threadCounts)
            {
                runner._layer.MaxDegreeOfParallelism = threads == Environment.ProcessorCount ? -1 : threads;
                for (int i = 0; i < 40; i++)
                {
                    runner._layer.Training = true;
                    runner.SharpForwardBackward();
                    runner.SharpBackwardAndGradient();
                    runner._layer.Training = false;
                    runner.SharpForward();
                }
                runner._layer.Training = true;
            }
            if (c.HasChainRule)
                for (int i = 0; i < 40; i++) runner.ChainBackward();
        }
    }

    public void Dispose() => _torch?.Dispose();
}

/// <summary>Deterministic inputs: x ~ 2·N(0,1) + a per-channel offset, dy ~ N(0,1); channels in dimension
/// <paramref name="channelDimension"/> of the stored <paramref name="shape"/> (1, or the last for channels-last).</summary>
internal static class Inputs
{
    public static (float[] X, float[] Dy) Create(long[] shape, int channelDimension, ulong seed)
    {
        long elements = shape.Aggregate(1L, (a, b) => a * b);
        int channels = (int)shape[channelDimension];
        long inner = shape.Skip(channelDimension + 1).Aggregate(1L, (a, b) => a * b);
        var x = new float[elements];
        var dy = new float[elements];
        ulong state = seed;
        for (long i = 0; i < elements; i++)
        {
            int c = (int)(i / inner % channels);
            x[i] = 2f * Normal(ref state) + 0.25f * (c % 16) - 2f;
            dy[i] = Normal(ref state);
        }
        return (x, dy);
    }

    // Box-Muller on SplitMix64 uniforms (one of the pair is discarded: simple, and fast enough for setup).
    private static float Normal(ref ulong state)
    {
        double u1 = (Next(ref state) >> 11) * (1.0 / (1UL << 53)) + 1e-300;
        double u2 = (Next(ref state) >> 11) * (1.0 / (1UL << 53));
        return (float)(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
    }

    private static ulong Next(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}

internal sealed record CaseCheck(
    string Case, double? TorchY, double? TorchDx, double? TorchDGamma, double? TorchDBeta, double? TorchRunningMean,
    double? TorchRunningVar, double? ChainDx, double DxScale, long SharpAllocatedBytes, double? OtherProcessesCores = null);

internal sealed record ResultRow(
    string Case, string Layer, long[] Shape, string Op, int Threads,
    double SharpMs, double? TorchMs, double? SpeedUp, double SharpGBs, double? TorchGBs,
    long ReadBytes, long WriteBytes, double FloorMs, double SharpXFloor, double? TorchXFloor,
    double? BwdMs, double? ChainMs, double? ChainRatio,
    double[] SharpSamplesMs, double[]? TorchSamplesMs, double[]? BwdSamplesMs, double[]? ChainSamplesMs);
