using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using SharpNorm.Threading;

namespace SharpNorm.Kernels;

/// <summary>
/// The normalization engine shared by every norm layer: statistics, the fused normalize + affine pass, and the
/// closed-form backward with its two reductions, on all cores. It owns the statistics of the last forward and all
/// scratch buffers, so after the first call at a given size no call allocates.
/// </summary>
/// <remarks>
/// Per group g = (a, b) the engine keeps a center c, the mean and 1/sqrt(var + eps). The statistics pass sums x - c with
/// c a value of the group (its first element); once the mean is known, c becomes the mean rounded to T (or, in eval,
/// the running mean) for the element-wise passes and the backward. Kernels work on x - c, which keeps float sums and
/// the normalized output accurate even when the mean is large against the spread. Work is cut by a <see cref="NormPlan"/> that depends on the geometry alone:
/// results are bit-identical for any thread count. With many groups each thread takes whole groups and runs both
/// passes of a group back to back, while its data is still in cache.
/// </remarks>
public sealed unsafe partial class NormEngine<T> : IChunkJob where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly ChunkRunner _runner = ChunkRunner.Shared;
    private NormPlan _plan;
    private double[] _groupMean = [];
    private double[] _groupVariance = [];
    private double[] _groupInvStd = [];
    private double[] _gamma = [];     // per (b, j); ones without affine
    private double[] _beta = [];      // per (b, j); zeros without affine
    private T[] _center = [];         // per slot k = (a, b, j): the group's center, repeated over j
    private T[] _p = [];              // per slot: coefficients of the apply kernels
    private T[] _q = [];
    private T[] _w = [];
    private double[] _sum1 = [];      // per slot: Σ (x - c) or Σ dy
    private double[] _sum2 = [];      // per slot: Σ (x - c)^2 or Σ dy*xhat
    private double[] _partial1 = [];  // per unit (and column): the unit's share of _sum1
    private double[] _partial2 = [];
    private T[] _workerScratch = [];  // per worker: column shape, 2*W row accumulators or 4*W rotated coefficients (aligned apply); narrow rows, 2*J band sums; wide rows, J (gradient rounding)
    private int _workerScratchLength;

    // The running job: what Execute does with each chunk. Inputs are pinned for the duration of a run.
    private JobKind _job;
    private T* _x, _second, _output;
    private int _length;
    private int _items, _chunkCount;
    private bool _streaming;

    /// <summary>
    /// Outputs at least this large are written with stores that skip the caches: they would not stay there anyway (the
    /// cache's share of the read bandwidth ends between 8 and 16 MB), and the stores then skip reading each line before
    /// writing it.
    /// </summary>
    internal const long StreamingStoreBytes = 16L << 20;

    /// <summary>
    /// A segment of several units whose element-wise pass reads at least this many bytes (x, and dy in the backward)
    /// walks that pass from its last run back to its first (whole groups of one unit, <see cref="WholeGroups"/>, walk
    /// forward whatever their size). Its statistics pass has just read it first to last, and a segment this large
    /// does not all stay in the 1 MB L2: what does stay is the part read last, which a forward walk would evict on its
    /// way there. Small segments (whose forward prefetches the next segment ahead of a forward walk) gain nothing.
    /// </summary>
    internal const long BackwardWalkBytes = 256L << 10;

    /// <summary>This engine's threshold for walking a segment's element-wise pass backwards (<see cref="BackwardWalkBytes"/>; tests move it).</summary>
    internal long BackwardWalkMinBytes { get; set; } = BackwardWalkBytes;

    /// <summary>This engine's streaming threshold in bytes (<see cref="StreamingStoreBytes"/>; tests lower it to reach the path on small inputs).</summary>
    internal long StreamingMinBytes { get; set; } = StreamingStoreBytes;

    private enum JobKind
    {
        ForwardSegments, BackwardSegments, MomentUnits, GradientSumUnits, NormalizeUnits, InputGradientUnits, ScaleUnits,
        RowForward, RowNormalize, RowScale, RowBackward, RowGradientSums,
        WideMoments, WideNormalize, WideGradientSums, WideInputGradient,
    }

    /// <summary>Widest vector the kernels may use, in bits (512, 256, 128; 0 for scalar code). Lower it to exercise narrower paths.</summary>
    public int MaxVectorBits { get; set; } = 512;

    /// <summary>Most threads a call may use; -1 for all cores.</summary>
    public int MaxDegreeOfParallelism { get; set; } = -1;

    /// <summary>The geometry of the statistics currently held.</summary>
    public NormGeometry Geometry => _plan.Geometry;

    /// <summary>Per-group means of the statistics in use.</summary>
    public ReadOnlySpan<double> GroupMean => _groupMean.AsSpan(0, Geometry.GroupCount);

    /// <summary>Per-group biased variances of the statistics in use.</summary>
    public ReadOnlySpan<double> GroupVariance => _groupVariance.AsSpan(0, Geometry.GroupCount);

    /// <summary>Per-group 1/sqrt(var + eps) in use.</summary>
    public ReadOnlySpan<double> GroupInvStd => _groupInvStd.AsSpan(0, Geometry.GroupCount);

    private int Threads => MaxDegreeOfParallelism == -1 ? Environment.ProcessorCount : MaxDegreeOfParallelism;

    /// <summary>
    /// Training forward: the batch statistics of x (mean, biased variance) become the statistics in use, and
    /// y = (x - mean) * invstd * gamma + beta. gamma/beta (length B*J) are empty for no affine.
    /// With <paramref name="subtractMean"/> false (RMSNorm; row shape only) the mean is taken as zero and the
    /// "variance" is the mean square: y = x / sqrt(mean(x²) + eps) * gamma + beta.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Forward(in NormGeometry g, ReadOnlySpan<T> x, Span<T> y, ReadOnlySpan<T> gamma, ReadOnlySpan<T> beta, double eps,
        bool subtractMean = true, bool unbiasedNormalization = false)
    {
        if (unbiasedNormalization && (g.IsRowShape || !subtractMean))
            throw new ArgumentException($"Normalizing by the unbiased variance is for batch statistics (BatchNorm), not rows; got {g}.", nameof(unbiasedNormalization));
        if (!subtractMean && !g.IsRowShape)
            throw new ArgumentException($"Normalizing without subtracting the mean needs one group per row (A, 1, 1, J, 1); got {g}.", nameof(subtractMean));
        Prepare(g);
        LoadAffine(gamma, beta);
        _eps = eps;
        _subtractMean = subtractMean;
        _unbiased = unbiasedNormalization;
        if (_plan.IsRow)
        {
            LoadRowAffine(gamma, beta);
            if (IsWideRows && _wideForward) WideRowForward(x, y);
            else Run(JobKind.RowForward, x, default, y);
            return;
        }
        if (_plan.SegmentParallel)
        {
            Run(JobKind.ForwardSegments, x, default, y);
            return;
        }
        for (int segment = 0; segment < _plan.SegmentCount; segment++) SetCenters(x, segment);
        Run(JobKind.MomentUnits, x, default, default);
        for (int segment = 0; segment < _plan.SegmentCount; segment++)
        {
            CombineSegment(segment);
            SegmentStatistics(segment);
            RecenterSegment(segment);
            SegmentNormalizeCoefficients(segment);
        }
        Run(JobKind.NormalizeUnits, x, default, y);
    }

    /// <summary>
    /// Eval forward with given per-b statistics (running mean and variance), which become the statistics in use for
    /// every group (a, b): y = (x - mean) * invstd * gamma + beta.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Forward(in NormGeometry g, ReadOnlySpan<T> x, Span<T> y, ReadOnlySpan<T> mean, ReadOnlySpan<T> variance,
        ReadOnlySpan<T> gamma, ReadOnlySpan<T> beta, double eps)
    {
        Prepare(g);
        LoadAffine(gamma, beta);
        _subtractMean = true;
        _unbiased = false;
        if (_plan.IsRow)
        {
            LoadRowAffine(gamma, beta);
            SetRowStatistics(double.CreateTruncating(mean[0]), double.CreateTruncating(variance[0]), eps, mean[0]);
            Run(JobKind.RowNormalize, x, default, y);
            return;
        }
        // Statistics and coefficients depend on (b, j) alone: compute them for a = 0 and copy them to every a.
        for (int b = 0; b < g.B; b++)
        {
            _groupMean[b] = double.CreateTruncating(mean[b]);
            _groupVariance[b] = double.CreateTruncating(variance[b]);
            _groupInvStd[b] = 1.0 / Math.Sqrt(_groupVariance[b] + eps);
            _center.AsSpan(b * g.J, g.J).Fill(mean[b]);
            for (int k = b * g.J; k < (b + 1) * g.J; k++)
                (_p[k], _q[k]) = NormalizeCoefficients(_gamma[k], _beta[k], _groupInvStd[b], _groupMean[b], _groupMean[b]);
        }
        for (int a = 1; a < g.A; a++)
        {
            _groupMean.AsSpan(0, g.B).CopyTo(_groupMean.AsSpan(a * g.B));
            _groupVariance.AsSpan(0, g.B).CopyTo(_groupVariance.AsSpan(a * g.B));
            _groupInvStd.AsSpan(0, g.B).CopyTo(_groupInvStd.AsSpan(a * g.B));
            int slots = g.B * g.J;
            _center.AsSpan(0, slots).CopyTo(_center.AsSpan(a * slots));
            _p.AsSpan(0, slots).CopyTo(_p.AsSpan(a * slots));
            _q.AsSpan(0, slots).CopyTo(_q.AsSpan(a * slots));
        }
        Run(JobKind.NormalizeUnits, x, default, y);
    }

    /// <summary>
    /// dx for the statistics in use, given dy. With <paramref name="throughStatistics"/> (statistics of this batch)
    /// the full closed form dx = gamma*invstd/M * (M*dy - Σdy - xhat*Σ dy*xhat), whose two reductions are kept for
    /// <see cref="AccumulateParameterGradients"/>; otherwise (fixed statistics) dx = gamma*invstd*dy.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Backward(ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx, ReadOnlySpan<T> gamma, bool throughStatistics)
    {
        LoadGamma(gamma);
        if (_plan.IsRow)
        {
            LoadRowGamma(gamma);
            if (throughStatistics && IsWideRows) WideRowBackward(x, dy, dx);
            else
            {
                Run(throughStatistics ? JobKind.RowBackward : JobKind.RowScale, x, dy, dx);
                if (throughStatistics) CombineBands();
            }
            return;
        }
        if (!throughStatistics)
        {
            for (int k = 0; k < Geometry.CoefficientCount; k++)
                _p[k] = T.CreateTruncating(_gamma[Parameter(k)] * _groupInvStd[k / Geometry.J]);
            Run(JobKind.ScaleUnits, dy, default, dx);
            return;
        }
        if (_plan.SegmentParallel)
        {
            Run(JobKind.BackwardSegments, x, dy, dx);
            return;
        }
        Run(JobKind.GradientSumUnits, x, dy, default);
        for (int segment = 0; segment < _plan.SegmentCount; segment++)
        {
            CombineSegment(segment);
            SegmentGradientSums(segment);
            SegmentInputGradientCoefficients(segment);
        }
        Run(JobKind.InputGradientUnits, x, dy, dx);
    }

    /// <summary>The backward reductions Σ dy and Σ dy*xhat per slot alone (for parameter gradients without Backward).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void ComputeGradientSums(ReadOnlySpan<T> x, ReadOnlySpan<T> dy)
    {
        if (_plan.IsRow)
        {
            if (IsWideRows) WideRowBackward(x, dy, default);
            else
            {
                Run(JobKind.RowGradientSums, x, dy, default);
                CombineBands();
            }
            return;
        }
        Run(JobKind.GradientSumUnits, x, dy, default);
        for (int segment = 0; segment < _plan.SegmentCount; segment++)
        {
            CombineSegment(segment);
            SegmentGradientSums(segment);
        }
    }

    /// <summary>Adds the parameter gradients of the last reductions: dgamma += Σ dy*xhat, dbeta += Σ dy, summed over a.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void AccumulateParameterGradients(Span<T> gammaGradient, Span<T> betaGradient)
    {
        NormGeometry g = Geometry;
        if (_plan.IsRow)
        {
            // Already summed over the rows (a), per column; rounded to T, then added (rows can be millions of columns).
            Span<T> rounded = _workerScratch.AsSpan(0, g.J);
            TensorPrimitives.ConvertTruncating<double, T>(_sum2.AsSpan(0, g.J), rounded);
            TensorPrimitives.Add(gammaGradient, rounded, gammaGradient);
            if (betaGradient.IsEmpty) return;
            TensorPrimitives.ConvertTruncating<double, T>(_sum1.AsSpan(0, g.J), rounded);
            TensorPrimitives.Add(betaGradient, rounded, betaGradient);
            return;
        }
        for (int parameter = 0; parameter < g.ParameterCount; parameter++)
        {
            int b = parameter / g.J, j = parameter % g.J;
            double dGamma = 0, dBeta = 0;
            for (int a = 0; a < g.A; a++)
            {
                int k = (a * g.B + b) * g.J + j;
                dGamma += _sum2[k];
                dBeta += _sum1[k];
            }
            gammaGradient[parameter] += T.CreateTruncating(dGamma);
            if (!betaGradient.IsEmpty) betaGradient[parameter] += T.CreateTruncating(dBeta);
        }
    }

    private double _eps;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int Parameter(int slot) => slot / Geometry.J % Geometry.B * Geometry.J + slot % Geometry.J;

    /// <summary>
    /// Runs a job over the plan's segments or units. Each thread takes one contiguous share of them (one stream per core
    /// for the prefetchers); shares never go below the plan's chunk size, so small problems stay on one thread.
    /// Which thread computes which unit never changes a result: every unit writes its own outputs.
    /// </summary>
    private void Run(JobKind job, ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output)
    {
        (int items, int grain) = job switch
        {
            JobKind.RowForward or JobKind.RowNormalize or JobKind.RowScale => (_plan.SegmentCount, _plan.SegmentsPerChunk),
            JobKind.RowBackward or JobKind.RowGradientSums => (_plan.BandCount, _plan.UnitsPerChunk),
            JobKind.WideMoments or JobKind.WideNormalize or JobKind.WideGradientSums or JobKind.WideInputGradient => (WidePieceCount, 1),
            JobKind.ForwardSegments or JobKind.BackwardSegments => (_plan.SegmentCount, _plan.SegmentsPerChunk),
            JobKind.MomentUnits or JobKind.GradientSumUnits => (_plan.UnitCount, _plan.UnitsPerChunk),
            _ => (_plan.ApplyUnitCount, _plan.ApplyUnitsPerChunk),
        };
        int chunkCount = Math.Clamp((items + grain - 1) / grain, 1, Math.Max(1, Threads));
        // MaxDegreeOfParallelism may have grown since Prepare: every worker needs its scratch.
        Grow(ref _workerScratch, Math.Max(1, Threads) * _workerScratchLength);
        _items = items;
        _chunkCount = chunkCount; // at most items (grain >= 1): every chunk gets at least one item
        _streaming = !output.IsEmpty && (long)output.Length * sizeof(T) >= StreamingMinBytes;
        fixed (T* px = x)
        fixed (T* psecond = second)
        fixed (T* poutput = output)
        {
            _job = job;
            _x = px;
            _second = psecond;
            _output = poutput;
            _length = x.Length;
            _runner.Run(this, chunkCount, Threads);
            _x = _second = _output = null;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    void IChunkJob.Execute(int chunk, int worker)
    {
        ExecuteChunk(chunk, worker);
        // Streaming stores are weakly ordered: make them visible before the chunk counts as done.
        if (_streaming && System.Runtime.Intrinsics.X86.Sse.IsSupported) System.Runtime.Intrinsics.X86.Sse.StoreFence();
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void ExecuteChunk(int chunk, int worker)
    {
        var x = new ReadOnlySpan<T>(_x, _length);
        var second = new ReadOnlySpan<T>(_second, _second == null ? 0 : _length);
        var output = new Span<T>(_output, _output == null ? 0 : _length);
        // Chunks as even as the items allow (49 pieces on 16 threads: 3 or 4 each), none empty.
        int first = (int)((long)chunk * _items / _chunkCount), end = (int)((long)(chunk + 1) * _items / _chunkCount);
        if (_plan.IsRow)
        {
            RowChunk(x, second, output, first, end, worker);
            return;
        }
        if (_job is JobKind.ForwardSegments or JobKind.BackwardSegments)
        {
            if (_plan.WholeGroupUnits)
            {
                WholeGroups(x, second, output, first, end);
                return;
            }
            for (int segment = first; segment < end; segment++)
            {
                int u0 = segment * _plan.UnitsPerSegment, u1 = u0 + _plan.UnitsPerSegment;
                if (_job == JobKind.ForwardSegments)
                {
                    SetCenters(x, segment);
                    SumUnits<MomentsOp>(x, default, u0, u1, worker);
                    CombineSegment(segment);
                    SegmentStatistics(segment);
                    RecenterSegment(segment);
                    SegmentNormalizeCoefficients(segment);
                    ApplyUnits<NormalizeOp>(x, default, output, u0, u1, worker, NextSegmentDistance, WalkBackwards(1));
                }
                else
                {
                    SumUnits<GradientSumsOp>(x, second, u0, u1, worker);
                    CombineSegment(segment);
                    SegmentGradientSums(segment);
                    SegmentInputGradientCoefficients(segment);
                    ApplyUnits<InputGradientOp>(x, second, output, u0, u1, worker, PrefetchesInBackward ? NextSegmentDistance : 0, WalkBackwards(2));
                }
            }
            return;
        }

        switch (_job)
        {
            case JobKind.MomentUnits: SumUnits<MomentsOp>(x, default, first, end, worker); break;
            case JobKind.GradientSumUnits: SumUnits<GradientSumsOp>(x, second, first, end, worker); break;
            case JobKind.NormalizeUnits: ApplyInStorageOrder<NormalizeOp>(x, default, output, first, end, worker); break;
            case JobKind.InputGradientUnits: ApplyInStorageOrder<InputGradientOp>(x, second, output, first, end, worker); break;
            case JobKind.ScaleUnits: ApplyInStorageOrder<ScaleOp>(x, default, output, first, end, worker); break;
        }
    }

    private void WholeGroups(ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output, int firstGroup, int endGroup)
    {
        if (MaxVectorBits >= 512 && Simd512<T>.IsUsable)
            WholeGroups<Simd512<T>, System.Runtime.Intrinsics.Vector512<T>>(x, second, output, firstGroup, endGroup);
        else if (MaxVectorBits >= 256 && Simd256<T>.IsUsable)
            WholeGroups<Simd256<T>, System.Runtime.Intrinsics.Vector256<T>>(x, second, output, firstGroup, endGroup);
        else if (MaxVectorBits >= 128 && Simd128<T>.IsUsable)
            WholeGroups<Simd128<T>, System.Runtime.Intrinsics.Vector128<T>>(x, second, output, firstGroup, endGroup);
        else
            WholeGroups<SimdScalar<T>, T>(x, second, output, firstGroup, endGroup);
    }

    /// <summary>
    /// Forward or backward of whole small groups (one unit each), both passes back to back: the per-unit machinery
    /// costs more than the work when groups are a few dozen elements (InstanceNorm on 7x7 maps). The sums are the
    /// same, in the same order, as the unit path's.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void WholeGroups<TSimd, TVector>(ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output, int firstGroup, int endGroup)
        where TSimd : ISimd<T, TVector>
        where TVector : struct
    {
        NormGeometry g = Geometry;
        bool forward = _job == JobKind.ForwardSegments;
        double count = g.GroupSize;
        ref T x0 = ref System.Runtime.InteropServices.MemoryMarshal.GetReference(x);
        ref T dy0 = ref forward ? ref x0 : ref System.Runtime.InteropServices.MemoryMarshal.GetReference(second);
        ref T out0 = ref System.Runtime.InteropServices.MemoryMarshal.GetReference(output);
        nint prefetchAhead = NextSegmentDistance;
        int a = firstGroup / g.B, b = firstGroup % g.B;
        for (int group = firstGroup; group < endGroup; group++)
        {
            T c = forward ? x[(int)g.Offset(a, 0, b, 0)] : _center[group];
            double center = double.CreateTruncating(c), sum1 = 0, sum2 = 0;
            for (int r = 0; r < g.R; r++)
            {
                nint offset = g.Offset(a, r, b, 0);
                if (forward)
                    NormKernels<T>.RunSums<MomentsOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref x0, offset), g.S, c, ref sum1, ref sum2);
                else
                    NormKernels<T>.RunSums<GradientSumsOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref dy0, offset), g.S, c, ref sum1, ref sum2);
            }

            T p, q, w = T.Zero;
            if (forward)
            {
                var (mean, variance, invStd) = Statistics(sum1, sum2, center, count, _eps);
                (_groupMean[group], _groupVariance[group], _groupInvStd[group]) = (mean, variance, invStd);
                c = ApplyCenter(mean, c);
                _center[group] = c;
                (p, q) = NormalizeCoefficients(_gamma[b], _beta[b], invStd, double.CreateTruncating(c), mean);
            }
            else
            {
                double mean = _groupMean[group], invStd = _groupInvStd[group];
                sum2 = SumDyXhat(sum1, sum2, center - mean, invStd);
                (p, q, w) = InputGradientCoefficients(_gamma[b], invStd, _gamma[b] * sum1, _gamma[b] * sum2, count, center - mean);
            }
            _sum1[group] = sum1;
            _sum2[group] = sum2;

            for (int r = 0; r < g.R; r++)
            {
                nint offset = g.Offset(a, r, b, 0);
                if (forward)
                    NormKernels<T>.ApplyRun<NormalizeOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref x0, offset),
                        ref Unsafe.Add(ref out0, offset), g.S, c, p, q, w, _streaming, prefetchAhead);
                else
                    NormKernels<T>.ApplyRun<InputGradientOp, TSimd, TVector>(ref Unsafe.Add(ref x0, offset), ref Unsafe.Add(ref dy0, offset),
                        ref Unsafe.Add(ref out0, offset), g.S, c, p, q, w, _streaming);
            }
            if (++b == g.B) { b = 0; a++; }
        }
    }

    /// <summary>Each unit's two sums into its own partial slots.</summary>
    private void SumUnits<TOp>(ReadOnlySpan<T> x, ReadOnlySpan<T> second, int firstUnit, int endUnit, int worker) where TOp : struct, IPairSumOp
    {
        if (_plan.IsColumn)
            NormKernels<T>.RowUnitSums<TOp>(MaxVectorBits, _plan, x, second, _center, firstUnit, endUnit, _partial1, _partial2,
                WorkerScratch(worker));
        else
            NormKernels<T>.RunUnitSums<TOp>(MaxVectorBits, _plan, x, second, _center, firstUnit, endUnit, _partial1, _partial2);
    }

    /// <summary>An element-wise pass over the plan's storage-order apply units [first, end).</summary>
    private void ApplyInStorageOrder<TOp>(ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output, int first, int end, int worker) where TOp : struct, IApplyOp
    {
        if (_plan.IsColumn)
            NormKernels<T>.RowUnitApply<TOp>(MaxVectorBits, _plan, x, second, output, first, end, _center, _p, _q, _w, _streaming, WorkerScratch(worker));
        else
            NormKernels<T>.RunApplyInStorageOrder<TOp>(MaxVectorBits, _plan, x, second, output, first, end, _center, _p, _q, _w, _streaming);
    }

    private void ApplyUnits<TOp>(ReadOnlySpan<T> x, ReadOnlySpan<T> second, Span<T> output, int firstUnit, int endUnit, int worker,
        nint prefetchAhead = 0, bool backwards = false) where TOp : struct, IApplyOp
    {
        if (_plan.IsColumn)
            NormKernels<T>.RowUnitApply<TOp>(MaxVectorBits, _plan, x, second, output, firstUnit, endUnit, _center, _p, _q, _w, _streaming, WorkerScratch(worker));
        else
            NormKernels<T>.RunUnitApply<TOp>(MaxVectorBits, _plan, x, second, output, firstUnit, endUnit, _center, _p, _q, _w, _streaming, prefetchAhead,
                backwards);
    }

    /// <summary>Whether a segment's element-wise pass, reading <paramref name="inputs"/> arrays, walks backwards (<see cref="BackwardWalkBytes"/>).</summary>
    private bool WalkBackwards(int inputs) => !_plan.IsColumn && SegmentBytes(inputs) >= BackwardWalkMinBytes;

    /// <summary>
    /// Whether the backward over segments of several units prefetches the next segment's x and dy during this one's dx
    /// pass: when a segment's x and dy are small enough for two of them to share the L2 with room to spare, or so large
    /// that little of one stays there anyway. Between, the prefetched segment evicts the one still being read. The
    /// backward over whole groups of one unit (<see cref="WholeGroups"/>: InstanceNorm, BatchNorm with small channels)
    /// never prefetches: it is slower with it.
    /// </summary>
    private bool PrefetchesInBackward
    {
        get
        {
            long bytes = SegmentBytes(2);
            return bytes <= BackwardPrefetchMaxSmallBytes || bytes >= BackwardPrefetchMinLargeBytes;
        }
    }

    /// <summary>Segments whose x and dy take at most this many bytes prefetch the next in the backward: two fit the L2 with room.</summary>
    internal const long BackwardPrefetchMaxSmallBytes = 128L << 10;

    /// <summary>Segments whose x and dy take at least this many bytes prefetch the next in the backward: little of one stays in L2 anyway.</summary>
    internal const long BackwardPrefetchMinLargeBytes = 2L << 20;

    /// <summary>Bytes a segment's element-wise pass reads from <paramref name="inputs"/> arrays (x, and dy in the backward).</summary>
    private long SegmentBytes(int inputs) => (long)_plan.SlotsPerSegment * Geometry.R * Geometry.S * sizeof(T) * inputs;

    /// <summary>
    /// Run shape, a forward segment by segment: how far on the next segment's x lies, to prefetch while this one's
    /// element-wise pass runs. Each run of group (a, b) has the matching run of (a, b + 1) J*S elements on: the next
    /// group whole when R is 1 (InstanceNorm, GroupNorm), and for BatchNorm (R = N) the next channel's run of the same
    /// sample. (The last group's prefetch points past it, at data of no use or past the end: harmless.)
    /// </summary>
    private nint NextSegmentDistance => _plan.IsColumn ? 0 : (nint)Geometry.J * Geometry.S;

    /// <summary>The center of each group of the segment is its first element: close to the mean for any sane data.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void SetCenters(ReadOnlySpan<T> x, int segment)
    {
        NormGeometry g = Geometry;
        var (first, groups) = SegmentGroups(segment);
        for (int group = first; group < first + groups; group++)
            _center.AsSpan(group * g.J, g.J).Fill(x[(int)g.Offset(group / g.B, 0, group % g.B, 0)]);
    }

    /// <summary>
    /// The center the element-wise passes use once the statistics are known: the mean rounded to T. The first element
    /// (the statistics pass's shift) would do mathematically, but then q = beta + (c - mean)*p carries (c - mean)*p,
    /// up to a few units, and its rounding lands on every output, near zero too, where a ReLU's mask looks; about
    /// the rounded mean, x - c is exact for x within a factor two of it (Sterbenz) and q rounds like beta. The backward
    /// reads the same center: its Σ dy*(x - c) then needs almost no correction.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private T ApplyCenter(double mean, T shift) => CenterOnMean && double.IsFinite(mean) ? T.CreateTruncating(mean) : shift;

    /// <summary>
    /// Whether the element-wise passes center on the rounded mean (the default) or keep the statistics pass's shift;
    /// tests turn it off to exercise the (c - mean) terms of the coefficients, which the rounded mean makes tiny.
    /// </summary>
    internal bool CenterOnMean { get; set; } = true;

    /// <summary>Every group of the segment: its center becomes <see cref="ApplyCenter"/> of its mean.</summary>
    private void RecenterSegment(int segment)
    {
        NormGeometry g = Geometry;
        var (first, groups) = SegmentGroups(segment);
        for (int group = first; group < first + groups; group++)
            _center.AsSpan(group * g.J, g.J).Fill(ApplyCenter(_groupMean[group], _center[group * g.J]));
    }

    /// <summary>Per slot of the segment: the unit partials added in unit order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void CombineSegment(int segment)
    {
        int slots = _plan.SlotsPerSegment, firstSlot = segment * slots, units = _plan.UnitsPerSlot;
        if (_plan.IsColumn)
        {
            // Unit (segment, piece) holds one partial per column; walk them row by row for locality.
            Span<double> sum1 = _sum1.AsSpan(firstSlot, slots), sum2 = _sum2.AsSpan(firstSlot, slots);
            sum1.Clear();
            sum2.Clear();
            for (int piece = 0; piece < units; piece++)
            {
                int row = (segment * units + piece) * slots;
                // Element-wise, so each column's partials are still added in unit order (BatchNorm1d 4096x1024: 64 x 1024 of them).
                TensorPrimitives.Add(sum1, _partial1.AsSpan(row, slots), sum1);
                TensorPrimitives.Add(sum2, _partial2.AsSpan(row, slots), sum2);
            }
            return;
        }
        for (int k = firstSlot; k < firstSlot + slots; k++)
        {
            double sum1 = 0, sum2 = 0;
            for (int piece = 0; piece < units; piece++)
            {
                sum1 += _partial1[k * units + piece];
                sum2 += _partial2[k * units + piece];
            }
            _sum1[k] = sum1;
            _sum2[k] = sum2;
        }
    }

    private (int first, int count) SegmentGroups(int segment)
    {
        int groups = _plan.SlotsPerSegment / Geometry.J;
        return (segment * groups, groups);
    }

    /// <summary>Mean, biased variance and invstd of the segment's groups from the shifted moments.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void SegmentStatistics(int segment)
    {
        NormGeometry g = Geometry;
        var (first, groups) = SegmentGroups(segment);
        for (int group = first; group < first + groups; group++)
        {
            double shiftedSum = 0, shiftedSquares = 0;
            for (int j = 0; j < g.J; j++)
            {
                shiftedSum += _sum1[group * g.J + j];
                shiftedSquares += _sum2[group * g.J + j];
            }
            (_groupMean[group], _groupVariance[group], _groupInvStd[group]) =
                Statistics(shiftedSum, shiftedSquares, double.CreateTruncating(_center[group * g.J]), g.GroupSize, _eps);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void SegmentNormalizeCoefficients(int segment)
    {
        int slots = _plan.SlotsPerSegment;
        for (int k = segment * slots; k < (segment + 1) * slots; k++)
        {
            int group = k / Geometry.J, parameter = Parameter(k);
            (_p[k], _q[k]) = NormalizeCoefficients(_gamma[parameter], _beta[parameter], _groupInvStd[group],
                double.CreateTruncating(_center[k]), _groupMean[group]);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void SegmentGradientSums(int segment)
    {
        int slots = _plan.SlotsPerSegment;
        for (int k = segment * slots; k < (segment + 1) * slots; k++)
        {
            int group = k / Geometry.J;
            _sum2[k] = SumDyXhat(_sum1[k], _sum2[k], double.CreateTruncating(_center[k]) - _groupMean[group], _groupInvStd[group]);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void SegmentInputGradientCoefficients(int segment)
    {
        NormGeometry g = Geometry;
        var (first, groups) = SegmentGroups(segment);
        for (int group = first; group < first + groups; group++)
        {
            double sumG = 0, sumGXhat = 0; // Σ gamma*dy and Σ gamma*dy*xhat over the group
            for (int j = 0; j < g.J; j++)
            {
                int k = group * g.J + j;
                sumG += _gamma[Parameter(k)] * _sum1[k];
                sumGXhat += _gamma[Parameter(k)] * _sum2[k];
            }
            for (int j = 0; j < g.J; j++)
            {
                int k = group * g.J + j;
                (_p[k], _q[k], _w[k]) = InputGradientCoefficients(_gamma[Parameter(k)], _groupInvStd[group], sumG, sumGXhat,
                    g.GroupSize, double.CreateTruncating(_center[k]) - _groupMean[group]);
            }
        }
    }

    /// <summary>
    /// Mean, biased variance and 1/sqrt(var + eps) from Σ (x - c) and Σ (x - c)² over count elements; in the unbiased
    /// mode (darknet's training) invstd is 1/sqrt(var * count/(count - 1) + eps), while the variance kept stays biased.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private (double mean, double variance, double invStd) Statistics(double shiftedSum, double shiftedSquares, double center, double count, double eps)
    {
        double shiftedMean = shiftedSum / count;
        double variance = (shiftedSquares - shiftedSum * shiftedMean) / count;
        if (variance < 0) variance = 0; // rounding can dip below zero; NaN stays NaN
        double normalizing = _unbiased ? variance * count / (count - 1) : variance;
        return (center + shiftedMean, variance, 1.0 / Math.Sqrt(normalizing + eps));
    }

    /// <summary>Normalizing by the unbiased batch variance (darknet's training): set by the last training Forward.</summary>
    private bool _unbiased;

    /// <summary>y = (x - c) * p + q with p = gamma*invstd, q = beta + (c - mean)*p.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static (T p, T q) NormalizeCoefficients(double gamma, double beta, double invStd, double center, double mean)
    {
        double scale = gamma * invStd;
        return (T.CreateTruncating(scale), T.CreateTruncating(beta + (center - mean) * scale));
    }

    /// <summary>Σ dy*xhat = invstd * (Σ dy*(x - c) + (c - mean) * Σ dy).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static double SumDyXhat(double sumDy, double sumDyCentered, double centerOffset, double invStd) =>
        invStd * (sumDyCentered + centerOffset * sumDy);

    /// <summary>
    /// dx = invstd * (g - Σg/M - xhat * Σ g*xhat / M) with g = gamma*dy, written dx = p*dy + q*(x - c) + w:
    /// p = gamma*invstd, q = -invstd² Σg*xhat / M, w = -invstd Σg / M + q (c - mean). Normalized by the unbiased
    /// variance (d var/dx = 2(x - mean)/(M - 1)), the xhat term divides by M - 1 instead.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private (T p, T q, T w) InputGradientCoefficients(double gamma, double invStd, double sumG, double sumGXhat, double count, double centerOffset)
    {
        double slope = -invStd * invStd * sumGXhat / (_unbiased ? count - 1 : count);
        return (T.CreateTruncating(gamma * invStd), T.CreateTruncating(slope), T.CreateTruncating(-invStd * sumG / count + slope * centerOffset));
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void LoadAffine(ReadOnlySpan<T> gamma, ReadOnlySpan<T> beta)
    {
        if (_plan.IsRow) return; // rows read gamma and beta in T (LoadRowAffine)
        LoadGamma(gamma);
        for (int i = 0; i < Geometry.ParameterCount; i++) _beta[i] = beta.IsEmpty ? 0 : double.CreateTruncating(beta[i]);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void LoadGamma(ReadOnlySpan<T> gamma)
    {
        if (_plan.IsRow) return;
        for (int i = 0; i < Geometry.ParameterCount; i++) _gamma[i] = gamma.IsEmpty ? 1 : double.CreateTruncating(gamma[i]);
    }

    private void Prepare(in NormGeometry g)
    {
        if (g != _plan.Geometry || _groupMean.Length == 0) _plan = new NormPlan(g);
        Grow(ref _groupMean, g.GroupCount);
        Grow(ref _groupVariance, g.GroupCount);
        Grow(ref _groupInvStd, g.GroupCount);
        if (_plan.IsRow)
        {
            // Per row: center (T); per column: T parameters and the dgamma/dbeta sums; per band: their partials (narrow
            // rows), or per block the pieces' sums and per column the band's sums in T (wide rows). The forward decides
            // the path for the backward that follows.
            Grow(ref _center, g.A);
            Grow(ref _rowGamma, g.J);
            Grow(ref _rowBeta, g.J);
            Grow(ref _sum1, g.J);
            Grow(ref _sum2, g.J);
            long rowBytes = (long)g.J * sizeof(T);
            _wideRows = rowBytes >= WideRowMinBytes;
            _wideForward = _wideRows && (rowBytes >= WideForwardMinBytes || g.A < NarrowForwardMinRows);
            if (_wideRows) PrepareWideRows();
            else
            {
                Grow(ref _partial1, _plan.PartialCount);
                Grow(ref _partial2, _plan.PartialCount);
            }
            // Narrow rows: each worker's band accumulators; wide rows: AccumulateParameterGradients' rounding buffer.
            _workerScratchLength = _wideRows ? g.J : 2 * g.J;
            Grow(ref _workerScratch, Math.Max(1, Threads) * _workerScratchLength);
            return;
        }
        Grow(ref _gamma, g.ParameterCount);
        Grow(ref _beta, g.ParameterCount);
        int slots = g.CoefficientCount;
        Grow(ref _center, slots);
        Grow(ref _p, slots);
        Grow(ref _q, slots);
        Grow(ref _w, slots);
        Grow(ref _sum1, slots);
        Grow(ref _sum2, slots);
        Grow(ref _partial1, _plan.PartialCount);
        Grow(ref _partial2, _plan.PartialCount);
        // Column shape: the row sums' two accumulators, or the aligned apply's four rotated coefficient rows.
        _workerScratchLength = _plan.IsColumn ? 4 * _plan.SlotsPerSegment : 0;
        Grow(ref _workerScratch, Math.Max(1, Threads) * _workerScratchLength);
    }

    private Span<T> WorkerScratch(int worker) => _workerScratch.AsSpan(worker * _workerScratchLength, _workerScratchLength);

    private static void Grow<TElement>(ref TElement[] buffer, int length)
    {
        if (buffer.Length < length) buffer = new TElement[length];
    }
}
