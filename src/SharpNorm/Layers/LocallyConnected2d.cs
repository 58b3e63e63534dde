using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Kernels;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// A locally connected layer (darknet's [local], Keras' LocallyConnected2D): a convolution whose filters differ at
/// every output position. y[n, o, p] = bias[o, p] + Σ_k weight[p, o, k] · window_p(x[n])[k], p an output position
/// (oh, ow), k a (channel, kernel row, kernel column) of the window. Weight (positions, out, in, k, k) and bias
/// (out, OH, OW) are in darknet's order, so a .weights file loads as it is. The input's height and width are fixed.
/// </summary>
public sealed class LocallyConnected2d<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly WindowGeometry _window;
    private readonly T[] _columns, _rows, _rowGradients;   // one image's windows as (K, P), transposed to (P, K), and their gradient

    /// <param name="inChannels">Input channels.</param>
    /// <param name="outChannels">Filters at each position.</param>
    /// <param name="inputHeight">The input's height (fixed: each position has its own weights).</param>
    /// <param name="inputWidth">The input's width.</param>
    /// <param name="kernelSize">The square window's size.</param>
    /// <param name="stride">The window's step.</param>
    /// <param name="padding">Zeros added on each side.</param>
    /// <param name="bias">Whether a learnable bias per output value is added.</param>
    /// <param name="random">Source of the initial weights (uniform in ±1/sqrt(in·k·k), as Conv2d); a fixed seed when null.</param>
    public LocallyConnected2d(int inChannels, int outChannels, int inputHeight, int inputWidth, int kernelSize, int stride = 1, int padding = 0,
        bool bias = true, Random? random = null)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(inChannels);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(outChannels);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(inputHeight);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(inputWidth);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(kernelSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(stride);
        ArgumentOutOfRangeException.ThrowIfNegative(padding);
        long outH = ((long)inputHeight + 2L * padding - kernelSize) / stride + 1, outW = ((long)inputWidth + 2L * padding - kernelSize) / stride + 1;
        if (outH <= 0 || outW <= 0 || (long)inputHeight + 2L * padding < kernelSize || (long)inputWidth + 2L * padding < kernelSize)
            throw new ArgumentException($"A {kernelSize}x{kernelSize} window with padding {padding} does not fit a {inputHeight}x{inputWidth} input.", nameof(kernelSize));
        long window = (long)inChannels * kernelSize * kernelSize, positions = outH * outW;
        long weights = positions * outChannels * window, columns = window * positions;
        if (weights > Array.MaxLength || columns > Array.MaxLength || (long)inChannels * inputHeight * inputWidth > Array.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(outChannels),
                $"LocallyConnected2d({inChannels}, {outChannels}, {kernelSize}) on {inputHeight}x{inputWidth} needs {weights} weights and {columns} window values; at most {Array.MaxLength} fit an array.");
        (InChannels, OutChannels, InputHeight, InputWidth, KernelSize, Stride, Padding) = (inChannels, outChannels, inputHeight, inputWidth, kernelSize, stride, padding);
        (OutputHeight, OutputWidth) = ((int)outH, (int)outW);
        _window = new WindowGeometry(inChannels, inputHeight, inputWidth, kernelSize, kernelSize, stride, stride, padding, padding, 1, 1, OutputHeight, OutputWidth);
        Weight = new Parameter<T>("weight", [(nint)positions, outChannels, inChannels, kernelSize, kernelSize], T.Zero);
        if (bias) Bias = new Parameter<T>("bias", [outChannels, OutputHeight, OutputWidth], T.Zero);
        _columns = new T[columns];
        _rows = new T[columns];
        _rowGradients = new T[columns];
        ResetParameters(random ?? new Random(0));
    }

    public int InChannels { get; }
    public int OutChannels { get; }
    public int InputHeight { get; }
    public int InputWidth { get; }
    public int KernelSize { get; }
    public int Stride { get; }
    public int Padding { get; }
    public int OutputHeight { get; }
    public int OutputWidth { get; }
    public Parameter<T> Weight { get; }
    public Parameter<T>? Bias { get; }

    private int Positions => OutputHeight * OutputWidth;
    private int WindowSize => _window.ColumnRows;

    public override IEnumerable<Parameter<T>> Parameters => Bias is null ? [Weight] : [Weight, Bias];

    protected override string Description => $"LocallyConnected2d({InChannels}, {OutChannels}, kernel_size={KernelSize}, stride={Stride}, padding={Padding}, input={InputHeight}x{InputWidth})";

    /// <summary>Draws weight and bias uniformly from ±1/sqrt(in·k·k).</summary>
    public void ResetParameters(Random random)
    {
        ArgumentNullException.ThrowIfNull(random);
        double bound = 1 / Math.Sqrt(WindowSize);
        FillUniform(Parameters, bound, random);
    }

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        if (inputShape.Length != 4 || inputShape[0] <= 0 || inputShape[1] != InChannels || inputShape[2] != InputHeight || inputShape[3] != InputWidth)
            throw new ArgumentException($"{Description} expects a non-empty input (N, {InChannels}, {InputHeight}, {InputWidth}); got shape {TensorData.Format(inputShape)}.", "x");
        return [inputShape[0], OutChannels, OutputHeight, OutputWidth];
    }

    /// <summary>One image's windows, one row per output position: _rows[p, k].</summary>
    private void GatherRows(ReadOnlySpan<T> image)
    {
        int positions = Positions, window = WindowSize;
        Im2Col<T>.Gather(_window, image, _columns, positions);
        for (int k = 0; k < window; k++)
            for (int p = 0; p < positions; p++) _rows[p * window + k] = _columns[k * positions + p];
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        int positions = Positions, window = WindowSize, outputs = OutChannels * positions, inputs = InChannels * InputHeight * InputWidth;
        ReadOnlySpan<T> weight = TensorData.Flat(Weight.Value);
        ReadOnlySpan<T> bias = Bias is null ? default : TensorData.Flat(Bias.Value);
        for (int n = 0; n < (int)shape[0]; n++)
        {
            GatherRows(x.Slice(n * inputs, inputs));
            Span<T> image = y.Slice(n * outputs, outputs);
            // y[o, p] = bias[o, p] + weight[p, o, :] · window_p
            for (int p = 0; p < positions; p++)
            {
                ReadOnlySpan<T> row = _rows.AsSpan(p * window, window);
                for (int o = 0; o < OutChannels; o++)
                {
                    T sum = TensorPrimitives.Dot(weight.Slice((p * OutChannels + o) * window, window), row);
                    image[o * positions + p] = Bias is null ? sum : sum + bias[o * positions + p];
                }
            }
        }
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx)
    {
        int positions = Positions, window = WindowSize, outputs = OutChannels * positions, inputs = InChannels * InputHeight * InputWidth;
        ReadOnlySpan<T> weight = TensorData.Flat(Weight.Value);
        for (int n = 0; n < (int)shape[0]; n++)
        {
            ReadOnlySpan<T> gradient = dy.Slice(n * outputs, outputs);
            // d window_p = Σ_o dy[o, p] · weight[p, o, :], then the windows' gradients summed back into the image
            for (int p = 0; p < positions; p++)
            {
                Span<T> row = _rowGradients.AsSpan(p * window, window);
                row.Clear();
                for (int o = 0; o < OutChannels; o++)
                    TensorPrimitives.MultiplyAdd(weight.Slice((p * OutChannels + o) * window, window), gradient[o * positions + p], row, row);
            }
            for (int k = 0; k < window; k++)
                for (int p = 0; p < positions; p++) _columns[k * positions + p] = _rowGradients[p * window + k];
            Im2Col<T>.Scatter(_window, _columns, dx.Slice(n * inputs, inputs), positions);
        }
    }

    protected override void GradientCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy)
    {
        int positions = Positions, window = WindowSize, outputs = OutChannels * positions, inputs = InChannels * InputHeight * InputWidth;
        Span<T> weightGradient = TensorData.Flat(Weight.Gradient);
        for (int n = 0; n < (int)shape[0]; n++)
        {
            GatherRows(x.Slice(n * inputs, inputs));
            ReadOnlySpan<T> gradient = dy.Slice(n * outputs, outputs);
            // d weight[p, o, :] += dy[o, p] · window_p; d bias[o, p] += dy[o, p]
            for (int p = 0; p < positions; p++)
            {
                ReadOnlySpan<T> row = _rows.AsSpan(p * window, window);
                for (int o = 0; o < OutChannels; o++)
                {
                    Span<T> target = weightGradient.Slice((p * OutChannels + o) * window, window);
                    TensorPrimitives.MultiplyAdd(row, gradient[o * positions + p], target, target);
                }
            }
            if (Bias is not null)
            {
                Span<T> biasGradient = TensorData.Flat(Bias.Gradient);
                TensorPrimitives.Add(biasGradient, gradient, biasGradient);
            }
        }
    }
}
