using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Kernels;
using SharpNorm.Tensors;
using SharpNorm.Threading;

namespace SharpNorm.Layers;

/// <summary>How <see cref="Conv2d{T}"/> computes its forward, input gradient and weight gradient.</summary>
public enum ConvAlgorithm
{
    /// <summary>The direct sum for grouped layers of up to 8 channels per group (depthwise included); Winograd F(4x4, 3x3) where the layer fits it (3x3, stride 1, dilation 1, one group, 16+ channels in and out), the call has 32 tiles of 4x4 outputs or more (9 or more for a loaded network's inference, whose transformed filters are kept) and the map fills 60% of them (the weight gradient: 4096 filters or more too); the direct forward where <see cref="Direct"/> fits; im2col otherwise.</summary>
    Auto,
    /// <summary>Column matrices (im2col) multiplied by the weights.</summary>
    Im2ColGemm,
    /// <summary>Winograd F(4x4, 3x3); only for 3x3 kernels with stride 1, dilation 1 and one group.</summary>
    Winograd,
    /// <summary>
    /// The direct sum with no column matrix: for grouped layers of up to 8 input channels per group, depthwise included
    /// (forward and both gradients, any stride, padding and dilation), and for at most 4 input channels, one group, stride 1, dilation 1 and kernels up
    /// to 7x7 (output channels and columns in registers; forward only, the gradients by im2col).
    /// </summary>
    Direct,
}

/// <summary>
/// 2-d convolution, the twin of torch.nn.Conv2d: input (N, C, H, W), weight (O, C/groups, kh, kw), optional bias (O).
/// Each image is turned into its column matrix (im2col) and multiplied by the weights with <see cref="Gemm{T}"/>; 1x1
/// convolutions multiply the input as it lies; 3x3 stride-1 layers go by Winograd F(4x4, 3x3), grouped layers of up to
/// 8 channels per group (depthwise) and few-channel first layers by direct sums, where <see cref="Algorithm"/> allows.
/// </summary>
/// <remarks>
/// With at least as many images as threads, each thread takes whole images (its own column buffer, a one-thread
/// product); otherwise the images run one after the other and each product uses every thread. The weight gradient is
/// summed per fixed part of the batch and the parts are added in order, so results are bit-identical either way and
/// for any thread count.
/// </remarks>
public sealed class Conv2d<T> : Layer<T>, IChunkJob where T : unmanaged, IFloatingPointIeee754<T>
{
    /// <summary>Parts of the batch whose weight gradients are summed separately (then in order).</summary>
    private const int GradientParts = 8;

    private readonly ChunkRunner _runner = ChunkRunner.Shared;
    private Worker[] _workers = [];
    private T[] _partWeightGradient = [], _partBiasGradient = [];
    private T[] _rotated = [];          // the weights rotated 180° per group, (Cg, Og*kh*kw), for a stride-1 backward

    // The running job.
    private Job _job;
    private WindowGeometry _window;
    private int _batch, _parts;
    private unsafe T* _x, _dy, _out;

    private enum Job { Forward, Backward, Gradient }

    /// <param name="inChannels">C, channels of the input.</param>
    /// <param name="outChannels">O, channels of the output.</param>
    /// <param name="kernelSize">Kernel height and width (one value for both, or two).</param>
    /// <param name="stride">Step between windows (one value or height, width).</param>
    /// <param name="padding">Zeros added on each side (one value or height, width).</param>
    /// <param name="dilation">Spacing of the kernel taps (one value or height, width).</param>
    /// <param name="groups">Channels are split into this many groups, each convolved with its own filters.</param>
    /// <param name="bias">Whether the layer adds a learnable bias per output channel.</param>
    /// <param name="random">Source of the initial weights (PyTorch's default: uniform in ±1/sqrt(fan_in)); a fixed seed when null.</param>
    public Conv2d(int inChannels, int outChannels, int[] kernelSize, int[]? stride = null, int[]? padding = null, int[]? dilation = null,
        int groups = 1, bool bias = true, Random? random = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(inChannels);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(outChannels);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(groups);
        if (inChannels % groups != 0 || outChannels % groups != 0)
            throw new ArgumentException($"inChannels and outChannels must be divisible by groups; got inChannels {inChannels}, outChannels {outChannels}, groups {groups}.", nameof(groups));
        (KernelHeight, KernelWidth) = Pair(kernelSize, nameof(kernelSize), minimum: 1);
        (StrideHeight, StrideWidth) = Pair(stride ?? [1], nameof(stride), minimum: 1);
        (PadHeight, PadWidth) = Pair(padding ?? [0], nameof(padding), minimum: 0);
        (DilationHeight, DilationWidth) = Pair(dilation ?? [1], nameof(dilation), minimum: 1);
        InChannels = inChannels;
        OutChannels = outChannels;
        Groups = groups;
        Weight = new Parameter<T>("weight", [outChannels, inChannels / groups, KernelHeight, KernelWidth], T.Zero);
        if (bias) Bias = new Parameter<T>("bias", [outChannels], T.Zero);
        ResetParameters(random ?? new Random(0));
    }

    /// <summary>A square kernel: <c>Conv2d(c, o, 3, stride: 1, padding: 1)</c>.</summary>
    public Conv2d(int inChannels, int outChannels, int kernelSize, int stride = 1, int padding = 0, int dilation = 1, int groups = 1,
        bool bias = true, Random? random = null)
        : this(inChannels, outChannels, [kernelSize], [stride], [padding], [dilation], groups, bias, random)
    {
    }

    /// <summary>
    /// The caller promises that the weights no longer change (an inference network that owns the layer): each worker
    /// packs them for the product once and reuses the packed copy from call to call. Packing is a pass over all the
    /// weights, as costly as the product itself for a large layer on a small map (1024 filters on 8x8). A Gradient
    /// call (training: an update follows) ends the promise.
    /// </summary>
    internal bool WeightsFrozen { get; set; }

    public int InChannels { get; }
    public int OutChannels { get; }
    public int KernelHeight { get; }
    public int KernelWidth { get; }
    public int StrideHeight { get; }
    public int StrideWidth { get; }
    public int PadHeight { get; }
    public int PadWidth { get; }
    public int DilationHeight { get; }
    public int DilationWidth { get; }
    public int Groups { get; }
    public Parameter<T> Weight { get; }
    public Parameter<T>? Bias { get; }

    /// <summary>Widest vector the products may use (tests lower it).</summary>
    internal int MaxVectorBits { get; set; } = 512;

    /// <summary>
    /// How the forward, the input gradient and the weight gradient are computed (see <see cref="ConvAlgorithm"/>). Winograd
    /// needs a 3x3 kernel, stride 1, dilation 1 and one group: asking for it otherwise throws.
    /// </summary>
    public ConvAlgorithm Algorithm
    {
        get => _algorithm;
        set
        {
            if (!Enum.IsDefined(value)) throw new ArgumentOutOfRangeException(nameof(value), value, "Unknown convolution algorithm.");
            if (value == ConvAlgorithm.Winograd && !WinogradShape)
                throw new ArgumentException(
                    $"{Description}: Winograd F(4x4, 3x3) needs a 3x3 kernel, stride 1, dilation 1 and one group; this layer has kernel ({KernelHeight}, {KernelWidth}), " +
                    $"stride ({StrideHeight}, {StrideWidth}), dilation ({DilationHeight}, {DilationWidth}), {Groups} group(s).", nameof(value));
            if (value == ConvAlgorithm.Direct && !DirectShape && !GroupedShape)
                throw new ArgumentException(
                    $"{Description}: the direct convolution needs several groups of at most 8 input channels each (depthwise included), or at most 4 input channels, one group, stride 1, dilation 1 and a kernel up to 7x7; this layer has " +
                    $"{InChannels} input channels, {Groups} group(s), stride ({StrideHeight}, {StrideWidth}), dilation ({DilationHeight}, {DilationWidth}), kernel ({KernelHeight}, {KernelWidth}).", nameof(value));
            _algorithm = value;
        }
    }

    private bool GroupedShape => GroupedConv<T>.Fits(InChannels, OutChannels, Groups);

    /// <summary>Grouped layers of up to 8 channels per group (depthwise ones too) go by <see cref="GroupedConv{T}"/> unless im2col is asked for.</summary>
    private bool UsesGrouped => GroupedShape && Algorithm is ConvAlgorithm.Auto or ConvAlgorithm.Direct;

    private GroupedConv<T>? _grouped;

    private GroupedConv<T> Grouped()
    {
        _grouped ??= new GroupedConv<T>();
        _grouped.MaxVectorBits = MaxVectorBits;
        return _grouped;
    }

    private bool DirectShape => DirectConv<T>.Fits(InChannels, KernelHeight, KernelWidth, StrideHeight, StrideWidth, DilationHeight, DilationWidth, Groups);

    /// <summary>
    /// The direct forward: asked for, or on Auto where it fits and the output is 32 columns wide or more (two full
    /// vectors of floats per row; narrower rows end in a part-filled pair, where im2col is faster).
    /// </summary>
    private bool UsesDirect(int outWidth) => Algorithm == ConvAlgorithm.Direct || (Algorithm == ConvAlgorithm.Auto && DirectShape && outWidth >= 32);

    private DirectConv<T>? _direct;

    private ConvAlgorithm _algorithm;
    private Winograd<T>? _winograd, _winogradBackward;

    private bool WinogradShape => KernelHeight == 3 && KernelWidth == 3 && StrideHeight == 1 && StrideWidth == 1
        && DilationHeight == 1 && DilationWidth == 1 && Groups == 1;

    /// <summary>
    /// Whether a convolution of <paramref name="inChannels"/> into <paramref name="outChannels"/> producing
    /// <paramref name="batch"/> maps of (height, width) goes by Winograd: asked for, or on Auto with 16 channels or more
    /// on both sides (fewer leave the 36 products too thin), at least 60% of the tiles' outputs inside the map, and 32
    /// output tiles or more, or 9 or more where the transformed filters are reused from call to call
    /// (<paramref name="filtersReused"/>: a loaded network's inference). Transforming the filters costs as much as a
    /// batch-1 product on a small map, and fewer than 9 tiles fill under half of each product's block of 16 columns.
    /// </summary>
    private bool UsesWinograd(int inChannels, int outChannels, int batch, int height, int width, bool filtersReused = false)
    {
        if (Algorithm != ConvAlgorithm.Auto) return Algorithm == ConvAlgorithm.Winograd;
        long tilesHigh = (height + 3) / 4, tilesWide = (width + 3) / 4, tiles = batch * tilesHigh * tilesWide;
        return WinogradShape && inChannels >= 16 && outChannels >= 16 && (tiles >= 32 || filtersReused && tiles >= 9)
            && 10L * height * width >= 6 * 16 * tilesHigh * tilesWide;
    }

    /// <summary>
    /// The weight gradient by Winograd: as <see cref="UsesWinograd"/>, and on Auto also 4096 filters or more: its 36
    /// products are O x C each, and smaller ones (16 -> 32, 32 -> 64 channels) ran slower than im2col's single product.
    /// </summary>
    private bool UsesWinogradGradient(int batch, int height, int width) =>
        UsesWinograd(InChannels, OutChannels, batch, height, width) && (Algorithm == ConvAlgorithm.Winograd || (long)InChannels * OutChannels >= 4096);

    public override IEnumerable<Parameter<T>> Parameters => Bias is null ? [Weight] : [Weight, Bias];

    protected override string Description => $"Conv2d({InChannels}, {OutChannels})";

    /// <summary>Multiply-adds of one Forward on an input of this shape (for GFLOP/s figures).</summary>
    public long MultiplyAdds(ReadOnlySpan<nint> inputShape)
    {
        nint[] output = OutputShape(inputShape);
        return (long)output[0] * OutChannels * output[2] * output[3] * (InChannels / Groups) * KernelHeight * KernelWidth;
    }

    /// <summary>Draws weight and bias uniformly from ±1/sqrt(fan_in), PyTorch's default initialization.</summary>
    public void ResetParameters(Random random)
    {
        ArgumentNullException.ThrowIfNull(random);
        double bound = 1 / Math.Sqrt(InChannels / Groups * KernelHeight * KernelWidth);
        FillUniform(Parameters, bound, random);
    }

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        WindowGeometry g = Window(inputShape);
        return [inputShape[0], OutChannels, g.OutputHeight, g.OutputWidth];
    }

    private WindowGeometry Window(ReadOnlySpan<nint> shape)
    {
        if (shape.Length != 4 || shape[1] != InChannels)
            throw new ArgumentException(
                $"Conv2d({InChannels}, {OutChannels}) expects input (N, {InChannels}, H, W); got shape {TensorData.Format(shape)}.", "x");
        int height = checked((int)shape[2]), width = checked((int)shape[3]);
        int outHeight = WindowGeometry.OutputSize(height, KernelHeight, StrideHeight, PadHeight, DilationHeight);
        int outWidth = WindowGeometry.OutputSize(width, KernelWidth, StrideWidth, PadWidth, DilationWidth);
        if (outHeight <= 0 || outWidth <= 0 || shape[0] <= 0)
            throw new ArgumentException(
                $"Conv2d: input {TensorData.Format(shape)} is too small for kernel ({KernelHeight}, {KernelWidth}) with padding ({PadHeight}, {PadWidth}) and dilation ({DilationHeight}, {DilationWidth}).", "x");
        return new WindowGeometry(InChannels / Groups, height, width, KernelHeight, KernelWidth, StrideHeight, StrideWidth,
            PadHeight, PadWidth, DilationHeight, DilationWidth, outHeight, outWidth);
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y) =>
        Run(Job.Forward, Window(shape), x, default, y);

    /// <summary>
    /// Forward that also leaves each output channel's moments in <paramref name="moments"/> (BatchNorm's statistics),
    /// summed by each work unit right after it writes its outputs, while they are still in cache.
    /// </summary>
    internal void Forward(ReadOnlyTensorSpan<T> x, TensorSpan<T> y, ChannelMoments<T> moments)
    {
        _moments = moments;
        try
        {
            Forward(x, y);
        }
        finally
        {
            _moments = null;
        }
    }

    private ChannelMoments<T>? _moments;

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) =>
        Run(Job.Backward, Window(shape), default, dy, dx);

    protected override void GradientCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy)
    {
        WeightsFrozen = false;
        WindowGeometry g = Window(shape);
        if (UsesGrouped)
        {
            Grouped().WeightGradient(x, dy, TensorData.Flat(Weight.Gradient), Bias is null ? default : TensorData.Flat(Bias.Gradient),
                g, (int)shape[0], OutChannels, Groups, Threads);
            return;
        }
        if (UsesWinogradGradient((int)shape[0], g.OutputHeight, g.OutputWidth))
        {
            WinogradGradient(g, (int)shape[0], x, dy);
            return;
        }
        int weights = (int)Weight.Value.FlattenedLength;
        int imageGroups = ImageGroupCount((int)shape[0], g);
        _parts = Math.Min(GradientParts, imageGroups);
        Grow(ref _partWeightGradient, _parts * weights);
        Grow(ref _partBiasGradient, _parts * OutChannels);
        Run(Job.Gradient, g, x, dy, default);

        // The parts' sums, added in part order.
        Span<T> weightGradient = TensorData.Flat(Weight.Gradient);
        for (int part = 0; part < _parts; part++)
            TensorPrimitives.Add(weightGradient, _partWeightGradient.AsSpan(part * weights, weights), weightGradient);
        if (Bias is not null)
        {
            Span<T> biasGradient = TensorData.Flat(Bias.Gradient);
            for (int part = 0; part < _parts; part++)
                TensorPrimitives.Add(biasGradient, _partBiasGradient.AsSpan(part * OutChannels, OutChannels), biasGradient);
        }
    }

    /// <summary>dW by Winograd's 36 products over the tiles; db as each channel's sum over the images in order.</summary>
    private void WinogradGradient(in WindowGeometry g, int batch, ReadOnlySpan<T> x, ReadOnlySpan<T> dy)
    {
        _winograd ??= new Winograd<T>();
        _winograd.MaxVectorBits = MaxVectorBits;
        _winograd.WeightGradient(x, batch, InChannels, g.Height, g.Width, dy, OutChannels, PadHeight, PadWidth, g.OutputHeight, g.OutputWidth,
            TensorData.Flat(Weight.Gradient), Threads);
        if (Bias is null) return;
        Span<T> biasGradient = TensorData.Flat(Bias.Gradient);
        int plane = g.OutputPlane;
        for (int o = 0; o < OutChannels; o++)
        {
            T sum = T.Zero;
            for (int n = 0; n < batch; n++) sum += TensorPrimitives.Sum(dy.Slice((n * OutChannels + o) * plane, plane));
            biasGradient[o] += sum;
        }
    }

    /// <summary>
    /// Images whose column matrices go side by side into one product: small output planes (7x7) would leave the
    /// product's column panels mostly empty. Depends on the geometry alone (the weight gradient's sums follow it).
    /// </summary>
    private static int ImagesPerGroup(in WindowGeometry g) => g.IsPointwise ? 1 : Math.Max(1, MinProductColumns / g.OutputPlane);

    private const int MinProductColumns = 256;

    private static int ImageGroupCount(int batch, in WindowGeometry g) => (batch + ImagesPerGroup(g) - 1) / ImagesPerGroup(g);

    private unsafe void Run(Job job, in WindowGeometry g, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> output)
    {
        int batch = (job == Job.Backward ? output.Length : x.Length) / (InChannels * g.InputPlane);
        int threads = Threads, imageGroups = ImageGroupCount(batch, g);
        if (UsesGrouped)
        {
            if (job == Job.Forward)
                Grouped().Forward(x, TensorData.Flat(Weight.Value), Bias is null ? default : TensorData.Flat(Bias.Value), output, g, batch, OutChannels,
                    Groups, threads, _moments);
            else Grouped().InputGradient(dy, TensorData.Flat(Weight.Value), output, g, batch, OutChannels, Groups, threads);
            return;
        }
        if (job == Job.Forward && UsesWinograd(InChannels, OutChannels, batch, g.OutputHeight, g.OutputWidth, filtersReused: WeightsFrozen))
        {
            _winograd ??= new Winograd<T>();
            _winograd.MaxVectorBits = MaxVectorBits;
            _winograd.Forward(x, batch, InChannels, g.Height, g.Width, TensorData.Flat(Weight.Value), OutChannels,
                Bias is null ? default : TensorData.Flat(Bias.Value), PadHeight, PadWidth, g.OutputHeight, g.OutputWidth, output, threads,
                filtersUnchanged: WeightsFrozen, moments: _moments);
            return;
        }
        if (job == Job.Forward && UsesDirect(g.OutputWidth))
        {
            _direct ??= new DirectConv<T>();
            _direct.MaxVectorBits = MaxVectorBits;
            _direct.Forward(x, batch, InChannels, g.Height, g.Width, TensorData.Flat(Weight.Value), OutChannels, KernelHeight, KernelWidth,
                Bias is null ? default : TensorData.Flat(Bias.Value), PadHeight, PadWidth, g.OutputHeight, g.OutputWidth, output, threads, _moments);
            return;
        }
        if (job == Job.Backward && UsesWinograd(OutChannels, InChannels, batch, g.Height, g.Width) && RotatedBackward(g))
        {
            // dx: the forward of dy with the rotated weights (C filters of O channels), padding 2 - pad.
            RotateWeights();
            _winogradBackward ??= new Winograd<T>();
            _winogradBackward.MaxVectorBits = MaxVectorBits;
            _winogradBackward.Forward(dy, batch, OutChannels, g.OutputHeight, g.OutputWidth, _rotated, InChannels, default,
                2 - PadHeight, 2 - PadWidth, g.Height, g.Width, output, threads, filtersUnchanged: false);
            return;
        }
        bool groupParallel = imageGroups >= threads;
        // Fewer images than threads, each a large map (a network at batch 1): bands of each image's output go to the
        // threads instead, each band's columns gathered on their own and small enough to stay in cache.
        int bandColumns = BandColumns(g);
        bool banded = job == Job.Forward && !groupParallel && Groups == 1 && !g.IsPointwise && g.OutputPlane >= 2 * bandColumns;
        if (job == Job.Forward) _moments?.Reset(batch * MomentBands(g), OutChannels);
        if (banded)
        {
            EnsureWorkers(threads, g, bandColumns);
            foreach (Worker w in _workers)
            {
                if (!WeightsFrozen) w.WeightsPacked = false;
                w.Gemm.MaxVectorBits = MaxVectorBits;
                w.Gemm.MaxDegreeOfParallelism = 1;
            }
            fixed (T* px = x)
            fixed (T* pout = output)
            {
                (_job, _window, _batch, _bandColumns) = (job, g, batch, bandColumns);
                _x = px;
                _out = pout;
                _runner.Run(_bandJob ??= new BandJob(this), batch * BandsPerImage(g, bandColumns), threads);
                _x = _out = null;
            }
            return;
        }
        bool rotated = job == Job.Backward && RotatedBackward(g) && InChannels / Groups >= 2 * Gemm<T>.MR;
        if (rotated) RotateWeights();
        EnsureWorkers(groupParallel ? threads : 1, g, rotated);
        foreach (Worker w in _workers)
        {
            if (!WeightsFrozen) w.WeightsPacked = false;
            w.Gemm.MaxVectorBits = MaxVectorBits;
            w.Gemm.MaxDegreeOfParallelism = groupParallel ? 1 : MaxDegreeOfParallelism;
        }
        fixed (T* px = x)
        fixed (T* pdy = dy)
        fixed (T* pout = output)
        {
            (_job, _window, _batch, _rotatedBackward) = (job, g, batch, rotated);
            _x = px;
            _dy = pdy;
            _out = pout;
            // Chunks: image groups for Forward/Backward, parts of the batch's image groups for Gradient.
            int chunks = job == Job.Gradient ? _parts : imageGroups;
            if (groupParallel) _runner.Run(this, chunks, threads);
            else
                for (int chunk = 0; chunk < chunks; chunk++) ExecuteChunk(chunk, 0);
            _x = _dy = _out = null;
        }
    }

    void IChunkJob.Execute(int chunk, int worker) => ExecuteChunk(chunk, worker);

    /// <summary>One group of images (Forward, Backward) or one part of the batch's groups (Gradient).</summary>
    private void ExecuteChunk(int chunk, int worker)
    {
        int perGroup = ImagesPerGroup(_window);
        if (_job != Job.Gradient)
        {
            int first = chunk * perGroup;
            ImageGroup(first, Math.Min(perGroup, _batch - first), worker, null, null);
            return;
        }
        int groups = ImageGroupCount(_batch, _window);
        int weightCount = (int)Weight.Value.FlattenedLength;
        Span<T> dWeight = _partWeightGradient.AsSpan(chunk * weightCount, weightCount);
        Span<T> dBias = _partBiasGradient.AsSpan(chunk * OutChannels, OutChannels);
        dWeight.Clear();
        dBias.Clear();
        int firstGroup = (int)((long)groups * chunk / _parts), endGroup = (int)((long)groups * (chunk + 1) / _parts);
        for (int group = firstGroup; group < endGroup; group++)
        {
            int first = group * perGroup;
            ImageGroup(first, Math.Min(perGroup, _batch - first), worker, _partWeightGradient, chunk);
        }
    }

    /// <summary>
    /// Images [first, first + count) as one product per channel group: their column matrices side by side
    /// (K x count*P). Forward: y = W · cols. Backward: dcols = Wᵀ · dy, scattered back onto each image. Gradient
    /// (<paramref name="partGradients"/> given): dW += dy · colsᵀ and db += Σ dy into the part's slots.
    /// </summary>
    private unsafe void ImageGroup(int first, int count, int worker, T[]? partGradients, int? part)
    {
        WindowGeometry g = _window;
        Worker w = _workers[worker];
        int groupIn = g.Channels, groupOut = OutChannels / Groups, plane = g.OutputPlane, columnRows = g.ColumnRows;
        int imageIn = InChannels * g.InputPlane, imageOut = OutChannels * plane, width = count * plane;
        ReadOnlySpan<T> weights = TensorData.Flat(Weight.Value);
        int groupWeights = groupOut * columnRows;
        // One image that reads itself (1x1 window): no column matrix, no staging of outputs.
        bool direct = count == 1 && g.IsPointwise;
        bool staged = count > 1;
        Span<T> columns = direct ? default : w.Columns.AsSpan(0, columnRows * width);
        Span<T> stage = staged ? w.Stage.AsSpan(0, groupOut * width) : default;

        for (int group = 0; group < Groups; group++)
        {
            ReadOnlySpan<T> groupWeight = weights.Slice(group * groupWeights, groupWeights);
            if (_job == Job.Backward && _rotatedBackward)
            {
                RotatedBackwardGroup(first, count, group, w);
                continue;
            }
            if (_job == Job.Backward)
            {
                // dy of the group's channels, images side by side (Og x count*P).
                ReadOnlySpan<T> dyGroup = staged
                    ? StageImages(_dy, first, count, imageOut, group * groupOut * plane, groupOut, plane, stage)
                    : new ReadOnlySpan<T>(_dy + (nint)first * imageOut + group * groupOut * plane, groupOut * plane);
                Span<T> dxFirst = new Span<T>(_out + (nint)first * imageIn + group * groupIn * g.InputPlane, groupIn * g.InputPlane);
                w.Gemm.Multiply(true, false, columnRows, width, groupOut, groupWeight, columnRows, dyGroup, width,
                    direct ? dxFirst : columns, width, accumulate: false, reusePackedA: w.WeightsPacked && Groups == 1);
                w.WeightsPacked = true;
                if (direct) continue;
                for (int i = 0; i < count; i++)
                {
                    var dx = new Span<T>(_out + (nint)(first + i) * imageIn + group * groupIn * g.InputPlane, groupIn * g.InputPlane);
                    Im2Col<T>.Scatter(g, columns[(i * plane)..], dx, width);
                }
                continue;
            }

            ReadOnlySpan<T> cols;
            if (direct) cols = new ReadOnlySpan<T>(_x + (nint)first * imageIn + group * groupIn * g.InputPlane, groupIn * g.InputPlane);
            else
            {
                for (int i = 0; i < count; i++)
                    Im2Col<T>.Gather(g, new ReadOnlySpan<T>(_x + (nint)(first + i) * imageIn + group * groupIn * g.InputPlane, groupIn * g.InputPlane),
                        columns[(i * plane)..], width);
                cols = columns;
            }

            if (_job == Job.Forward)
            {
                // y (Og x count*P) = W_g (Og x K) · cols (K x count*P), then each image's block to its place.
                Span<T> target = staged ? stage : new Span<T>(_out + (nint)first * imageOut + group * groupOut * plane, groupOut * plane);
                w.Gemm.Multiply(false, false, groupOut, width, columnRows, groupWeight, columnRows, cols, width, target, width, accumulate: false,
                    reusePackedA: w.WeightsPacked && Groups == 1);
                w.WeightsPacked = true;
                if (staged) UnstageImages(stage, _out, first, count, imageOut, group * groupOut * plane, groupOut, plane);
                continue;
            }

            // Gradient: dW_g (Og x K) += dy_g (Og x count*P) · colsᵀ (count*P x K)
            ReadOnlySpan<T> dyImages = staged
                ? StageImages(_dy, first, count, imageOut, group * groupOut * plane, groupOut, plane, stage)
                : new ReadOnlySpan<T>(_dy + (nint)first * imageOut + group * groupOut * plane, groupOut * plane);
            int weightCount = (int)Weight.Value.FlattenedLength;
            Span<T> dWeight = partGradients.AsSpan(part!.Value * weightCount + group * groupWeights, groupWeights);
            w.Gemm.Multiply(false, true, groupOut, columnRows, width, dyImages, width, cols, width, dWeight, columnRows, accumulate: true);
        }

        if (_job == Job.Forward && Bias is not null)
        {
            ReadOnlySpan<T> bias = TensorData.Flat(Bias.Value);
            for (int i = 0; i < count; i++)
            {
                var y = new Span<T>(_out + (nint)(first + i) * imageOut, imageOut);
                for (int o = 0; o < OutChannels; o++) TensorPrimitives.Add(y.Slice(o * plane, plane), bias[o], y.Slice(o * plane, plane));
            }
        }

        if (_job == Job.Forward && _moments is not null)
        {
            int bands = MomentBands(g), bandColumns = BandColumns(g);
            for (int i = 0; i < count; i++)
            {
                var y = new ReadOnlySpan<T>(_out + (nint)(first + i) * imageOut, imageOut);
                for (int band = 0; band < bands; band++)
                {
                    int start = band * bandColumns, length = bands == 1 ? plane : Math.Min(bandColumns, plane - start);
                    for (int o = 0; o < OutChannels; o++) _moments.Set((first + i) * bands + band, o, y.Slice(o * plane + start, length));
                }
            }
        }

        if (_job == Job.Gradient && Bias is not null)
        {
            Span<T> dBias = _partBiasGradient.AsSpan(part!.Value * OutChannels, OutChannels);
            for (int i = 0; i < count; i++)
            {
                var dy = new ReadOnlySpan<T>(_dy + (nint)(first + i) * imageOut, imageOut);
                for (int o = 0; o < OutChannels; o++) dBias[o] += TensorPrimitives.Sum(dy.Slice(o * plane, plane));
            }
        }
    }

    /// <summary>
    /// Stride 1 with padding at most the kernel's reach: dx is the forward convolution of dy with the weights rotated
    /// 180° and in/out channels swapped (padding dil*(k-1) - pad), so it gathers dy's columns and needs no col2im.
    /// Its product has a row per input channel of the group: with fewer than two micro-kernel panels of them (the
    /// first layer, depthwise) most of each panel would be padding, and col2im's product is the better one.
    /// </summary>
    private bool RotatedBackward(in WindowGeometry g) =>
        StrideHeight == 1 && StrideWidth == 1 && !g.IsPointwise
        && PadHeight <= DilationHeight * (KernelHeight - 1) && PadWidth <= DilationWidth * (KernelWidth - 1);

    /// <summary>The window of dy's columns: Og channels of (OH, OW) with the rotated padding, giving (H, W).</summary>
    private WindowGeometry RotatedWindow(in WindowGeometry g) =>
        new(OutChannels / Groups, g.OutputHeight, g.OutputWidth, KernelHeight, KernelWidth, 1, 1,
            DilationHeight * (KernelHeight - 1) - PadHeight, DilationWidth * (KernelWidth - 1) - PadWidth, DilationHeight, DilationWidth,
            g.Height, g.Width);

    /// <summary>_rotated[group][c][(o*kh + i)*kw + j] = W[group*Og + o][c][kh-1-i][kw-1-j].</summary>
    private void RotateWeights()
    {
        int groupOut = OutChannels / Groups, groupIn = InChannels / Groups, taps = KernelHeight * KernelWidth;
        ReadOnlySpan<T> weights = TensorData.Flat(Weight.Value);
        Grow(ref _rotated, weights.Length);
        for (int group = 0; group < Groups; group++)
            for (int c = 0; c < groupIn; c++)
            {
                Span<T> row = _rotated.AsSpan((group * groupIn + c) * groupOut * taps, groupOut * taps);
                for (int o = 0; o < groupOut; o++)
                {
                    ReadOnlySpan<T> filter = weights.Slice(((group * groupOut + o) * groupIn + c) * taps, taps);
                    for (int t = 0; t < taps; t++) row[o * taps + t] = filter[taps - 1 - t];
                }
            }
    }

    /// <summary>dx of one channel group of images [first, first + count): dx_g (Cg x count*H*W) = rotated W_g · columns of dy.</summary>
    private unsafe void RotatedBackwardGroup(int first, int count, int group, Worker w)
    {
        WindowGeometry g = _window, back = RotatedWindow(g);
        int groupIn = InChannels / Groups, groupOut = OutChannels / Groups, inPlane = g.InputPlane;
        int imageIn = InChannels * inPlane, imageOut = OutChannels * g.OutputPlane, width = count * inPlane, rows = back.ColumnRows;
        Span<T> columns = w.Columns.AsSpan(0, rows * width);
        for (int i = 0; i < count; i++)
            Im2Col<T>.Gather(back, new ReadOnlySpan<T>(_dy + (nint)(first + i) * imageOut + group * groupOut * g.OutputPlane, groupOut * g.OutputPlane),
                columns[(i * inPlane)..], width);
        bool staged = count > 1;
        Span<T> target = staged ? w.Stage.AsSpan(0, groupIn * width) : new Span<T>(_out + (nint)first * imageIn + group * groupIn * inPlane, groupIn * inPlane);
        w.Gemm.Multiply(false, false, groupIn, width, rows, _rotated.AsSpan(group * groupIn * rows, groupIn * rows), rows, columns, width, target, width,
            accumulate: false, reusePackedA: w.WeightsPacked && Groups == 1);
        w.WeightsPacked = true;
        if (staged) UnstageImages(target, _out, first, count, imageIn, group * groupIn * inPlane, groupIn, inPlane);
    }

    /// <summary>Channels [offset, offset + channels*P) of images [first, first + count) side by side: row c is the images' planes of channel c.</summary>
    private static unsafe ReadOnlySpan<T> StageImages(T* source, int first, int count, int imageLength, int offset, int channels, int plane, Span<T> stage)
    {
        int width = count * plane;
        for (int i = 0; i < count; i++)
            for (int c = 0; c < channels; c++)
                new ReadOnlySpan<T>(source + (nint)(first + i) * imageLength + offset + c * plane, plane).CopyTo(stage.Slice(c * width + i * plane, plane));
        return stage;
    }

    private static unsafe void UnstageImages(ReadOnlySpan<T> stage, T* target, int first, int count, int imageLength, int offset, int channels, int plane)
    {
        int width = count * plane;
        for (int i = 0; i < count; i++)
            for (int c = 0; c < channels; c++)
                stage.Slice(c * width + i * plane, plane).CopyTo(new Span<T>(target + (nint)(first + i) * imageLength + offset + c * plane, plane));
    }

    /// <summary>
    /// Output positions per band of a banded forward: about 64K values of columns (a quarter of a 1 MB L2), whole
    /// panels of the product's 32 columns, at least 256. Depends on the geometry alone.
    /// </summary>
    private static int BandColumns(in WindowGeometry g) => Math.Max(256, 65536 / g.ColumnRows / 32 * 32);

    private static int BandsPerImage(in WindowGeometry g, int bandColumns) => (g.OutputPlane + bandColumns - 1) / bandColumns;

    /// <summary>
    /// Units of an image's output moments: its bands where the forward may go by bands (a large map, one group, not
    /// pointwise), else the whole image. The geometry alone decides, so the moments' bits do not depend on whether
    /// this call went by bands.
    /// </summary>
    private int MomentBands(in WindowGeometry g) =>
        Groups == 1 && !g.IsPointwise && g.OutputPlane >= 2 * BandColumns(g) ? BandsPerImage(g, BandColumns(g)) : 1;

    /// <summary>
    /// One band of one image: its columns (K x band) gathered, y[:, band] = W · columns written in place (row stride P),
    /// and the bias added. Each output value is the same sum, in the same order, as in the unbanded product.
    /// </summary>
    private unsafe void ForwardBand(int chunk, int worker)
    {
        WindowGeometry g = _window;
        Worker w = _workers[worker];
        int bands = BandsPerImage(g, _bandColumns), image = chunk / bands, band = chunk % bands;
        int first = band * _bandColumns, count = Math.Min(_bandColumns, g.OutputPlane - first), plane = g.OutputPlane;
        int imageIn = InChannels * g.InputPlane, imageOut = OutChannels * plane, columnRows = g.ColumnRows;
        Span<T> columns = w.Columns.AsSpan(0, columnRows * count);
        Im2Col<T>.GatherBand(g, new ReadOnlySpan<T>(_x + (nint)image * imageIn, imageIn), columns, count, first, count);
        var y = new Span<T>(_out + (nint)image * imageOut + first, imageOut - first);
        w.Gemm.Multiply(false, false, OutChannels, count, columnRows, TensorData.Flat(Weight.Value), columnRows, columns, count, y, plane,
            accumulate: false, reusePackedA: w.WeightsPacked);
        w.WeightsPacked = true;
        if (Bias is not null)
        {
            ReadOnlySpan<T> bias = TensorData.Flat(Bias.Value);
            for (int o = 0; o < OutChannels; o++)
            {
                Span<T> part = y.Slice(o * plane, count);
                TensorPrimitives.Add(part, bias[o], part);
            }
        }
        if (_moments is not null)
            for (int o = 0; o < OutChannels; o++) _moments.Set(chunk, o, y.Slice(o * plane, count));
    }

    private sealed class BandJob(Conv2d<T> layer) : IChunkJob
    {
        public void Execute(int chunk, int worker) => layer.ForwardBand(chunk, worker);
    }

    private BandJob? _bandJob;
    private int _bandColumns;
    private bool _rotatedBackward;

    private void EnsureWorkers(int count, in WindowGeometry g, int bandColumns)
    {
        AddWorkers(count);
        foreach (Worker w in _workers) Grow(ref w.Columns, g.ColumnRows * bandColumns);
    }

    private void AddWorkers(int count)
    {
        if (_workers.Length >= count) return;
        var workers = new Worker[count];
        _workers.CopyTo(workers, 0);
        for (int i = _workers.Length; i < count; i++) workers[i] = new Worker();
        _workers = workers;
    }

    private void EnsureWorkers(int count, in WindowGeometry g, bool rotated)
    {
        AddWorkers(count);
        int images = ImagesPerGroup(g), width = images * g.OutputPlane, inWidth = images * g.InputPlane;
        int columns = rotated ? RotatedWindow(g).ColumnRows * inWidth : g.ColumnRows * width;
        int stage = images == 1 ? 0 : rotated ? InChannels / Groups * inWidth : OutChannels / Groups * width;
        foreach (Worker w in _workers)
        {
            Grow(ref w.Columns, columns);
            Grow(ref w.Stage, stage);
        }
    }

    private static void Grow(ref T[] buffer, int length)
    {
        if (buffer.Length < length) buffer = new T[length];
    }

    private sealed class Worker
    {
        public readonly Gemm<T> Gemm = new();
        public T[] Columns = [];
        public T[] Stage = [];
        /// <summary>The worker's product holds this call's packed weights (they change between calls, not within one).</summary>
        public bool WeightsPacked;
    }
}
