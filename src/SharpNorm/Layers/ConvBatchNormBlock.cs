using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Kernels;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// A Conv2d → BatchNorm → LeakyReLU (or ReLU, or nothing) run of a <see cref="Sequential{T}"/>'s layers executed as
/// one block, with the three layers' semantics (batch or running statistics, the running update, darknet's unbiased
/// normalization, affine on or off) and their parameters, buffers and names untouched.
/// <list type="bullet">
/// <item>Forward: the convolution writes y and sums each channel's moments while each unit of its output is still
/// in cache (BatchNorm's statistics without a pass over y); then one pass writes out = act(BN(y)).</item>
/// <item>Backward: one pass over y and dOut for BatchNorm's two reductions, the rectifier's mask recomputed from y;
/// one pass writing the convolution's output gradient in BatchNorm's closed form; then the convolution's backward.</item>
/// </list>
/// BatchNorm's output is never stored, and nothing is allocated per call after the first at a shape.
/// </summary>
internal sealed class ConvBatchNormBlock<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly Conv2d<T> _conv;
    private readonly BatchNorm<T> _norm;
    private readonly T _slope;
    private readonly ChannelMoments<T> _moments = new();
    private readonly BatchNormActivation<T> _passes = new();
    private readonly double[] _mean, _variance, _invStd, _sumD, _sumDCentered;
    private readonly T[] _center, _p, _q, _a, _b, _e;
    private double[] _planeSum1 = [], _planeSum2 = [];
    private T[] _convGradient = [];
    private bool _batchStatistics;

    private ConvBatchNormBlock(Conv2d<T> conv, BatchNorm<T> norm, T slope, int length)
    {
        (_conv, _norm, _slope, Length) = (conv, norm, slope, length);
        int c = conv.OutChannels;
        (_mean, _variance, _invStd, _sumD, _sumDCentered) = (new double[c], new double[c], new double[c], new double[c], new double[c]);
        (_center, _p, _q, _a, _b, _e) = (new T[c], new T[c], new T[c], new T[c], new T[c], new T[c]);
    }

    /// <summary>Layers the block spans: 2 (Conv2d, BatchNorm) or 3 (with the rectifier).</summary>
    public int Length { get; }

    /// <summary>The block that starts at layer <paramref name="index"/>, or null where the layers there are not Conv2d → BatchNorm over its channels (channels first).</summary>
    public static ConvBatchNormBlock<T>? At(IReadOnlyList<ILayer<T>> layers, int index)
    {
        if (index + 1 >= layers.Count || layers[index] is not Conv2d<T> conv || layers[index + 1] is not BatchNorm<T> norm
            || norm.Layout != ChannelLayout.First || norm.NumFeatures != conv.OutChannels)
            return null;
        ILayer<T>? next = index + 2 < layers.Count ? layers[index + 2] : null;
        return next switch
        {
            LeakyReLU<T> leaky => new ConvBatchNormBlock<T>(conv, norm, T.CreateTruncating(leaky.NegativeSlope), 3),
            ReLU<T> => new ConvBatchNormBlock<T>(conv, norm, T.Zero, 3),
            _ => new ConvBatchNormBlock<T>(conv, norm, T.One, 2),
        };
    }

    private int Threads => _norm.MaxDegreeOfParallelism == -1 ? Environment.ProcessorCount : _norm.MaxDegreeOfParallelism;

    /// <summary>
    /// y = conv(x) (kept: BatchNorm's input, which the backward reads) and output = act(BN(y)). Throws, changing
    /// nothing, where BatchNorm would (one value per channel in training).
    /// </summary>
    public void Forward(ReadOnlySpan<T> x, nint[] inputShape, Span<T> y, nint[] outputShape, Span<T> output)
    {
        int channels = _conv.OutChannels, plane = checked((int)(outputShape[2] * outputShape[3]));
        long count = outputShape[0] * plane;
        bool batch = _norm.TakesBatchStatistics;
        if (batch && count <= 1)
            throw new ArgumentException($"Expected more than 1 value per channel when training, got input size {TensorData.Format(outputShape)}.", "x");

        var xTensor = new ReadOnlyTensorSpan<T>(x, inputShape, []);
        var yTensor = new TensorSpan<T>(y, outputShape, []);
        ReadOnlySpan<T> gamma = _norm.Weight is null ? default : TensorData.Flat(_norm.Weight.Value);
        ReadOnlySpan<T> beta = _norm.Bias is null ? default : TensorData.Flat(_norm.Bias.Value);
        if (batch)
        {
            _moments.MaxVectorBits = _conv.MaxVectorBits;
            _conv.Forward(xTensor, yTensor, _moments);
            _moments.Combine(_mean, _variance);
            if (_norm.Training && _norm.TrackRunningStats) _norm.UpdateRunningStatistics(_mean, _variance, (int)count);
            double normalizing = _norm.UnbiasedNormalization ? count / (count - 1.0) : 1.0;
            for (int c = 0; c < channels; c++) _invStd[c] = 1.0 / Math.Sqrt(_variance[c] * normalizing + _norm.Eps);
        }
        else
        {
            _conv.Forward(xTensor, yTensor);
            ReadOnlySpan<T> runningMean = TensorData.Flat(_norm.RunningMean!), runningVar = TensorData.Flat(_norm.RunningVar!);
            for (int c = 0; c < channels; c++)
            {
                _mean[c] = double.CreateTruncating(runningMean[c]);
                _variance[c] = double.CreateTruncating(runningVar[c]);
                _invStd[c] = 1.0 / Math.Sqrt(_variance[c] + _norm.Eps);
            }
        }
        // z = (y - center)·p + q, with p = γ/σ and q = β - p·(μ - center): the center is μ rounded to T.
        for (int c = 0; c < channels; c++)
        {
            _center[c] = T.CreateTruncating(_mean[c]);
            double p = (gamma.IsEmpty ? 1.0 : double.CreateTruncating(gamma[c])) * _invStd[c];
            double b = beta.IsEmpty ? 0.0 : double.CreateTruncating(beta[c]);
            _p[c] = T.CreateTruncating(p);
            _q[c] = T.CreateTruncating(b - p * (_mean[c] - double.CreateTruncating(_center[c])));
        }
        _passes.MaxVectorBits = _conv.MaxVectorBits;
        _passes.Forward(y, output, channels, plane, _center, _p, _q, _slope, Threads);
        _batchStatistics = batch;
        _norm.ForgetForward();
    }

    /// <summary>
    /// Back through the block from dOut (the gradient of its output): the convolution's output gradient in
    /// BatchNorm's closed form, then dx (where <paramref name="dx"/> is not empty) and, with
    /// <paramref name="parameterGradients"/>, every parameter's gradient (BatchNorm's dγ, dβ, the convolution's).
    /// </summary>
    public void Backward(ReadOnlySpan<T> x, nint[] inputShape, ReadOnlySpan<T> y, nint[] outputShape, ReadOnlySpan<T> dOut, Span<T> dx,
        bool parameterGradients)
    {
        int batch = (int)outputShape[0], channels = _conv.OutChannels, plane = checked((int)(outputShape[2] * outputShape[3]));
        double count = (double)batch * plane;
        bool affine = _norm.Weight is not null;
        if (_convGradient.Length < y.Length) _convGradient = new T[y.Length];
        Span<T> convGradient = _convGradient.AsSpan(0, y.Length);

        bool reduce = _batchStatistics || (parameterGradients && affine);
        if (reduce)
        {
            int planes = batch * channels;
            if (_planeSum1.Length < planes)
            {
                _planeSum1 = new double[planes];
                _planeSum2 = new double[planes];
            }
            _passes.Reduce(y, dOut, channels, plane, _center, _p, _q, _slope, _planeSum1, _planeSum2, Threads);
            BatchNormActivation<T>.ChannelSums(_planeSum1, _planeSum2, batch, channels, _mean, _center, _sumD, _sumDCentered);
        }

        ReadOnlySpan<T> gamma = affine ? TensorData.Flat(_norm.Weight!.Value) : default;
        for (int c = 0; c < channels; c++)
        {
            double k = (affine ? double.CreateTruncating(gamma[c]) : 1.0) * _invStd[c];
            if (!_batchStatistics)
            {
                (_a[c], _b[c], _e[c]) = (T.CreateTruncating(k), T.Zero, T.Zero);
                continue;
            }
            // dy = k·(d - Σd/M) - k·σ⁻²·(y - μ)·Σ d·(y - μ)/D, D = M (biased) or M - 1 (darknet's unbiased normalization).
            double divisor = _norm.UnbiasedNormalization ? count - 1 : count;
            double b = -k * _invStd[c] * _invStd[c] * _sumDCentered[c] / divisor;
            _a[c] = T.CreateTruncating(k);
            _b[c] = T.CreateTruncating(b);
            _e[c] = T.CreateTruncating(-k * _sumD[c] / count + b * (double.CreateTruncating(_center[c]) - _mean[c]));
        }
        _passes.InputGradient(y, dOut, convGradient, channels, plane, _center, _p, _q, _slope, _a, _b, _e, Threads);

        if (parameterGradients && affine)
        {
            Span<T> dGamma = TensorData.Flat(_norm.Weight!.Gradient);
            Span<T> dBeta = _norm.Bias is null ? default : TensorData.Flat(_norm.Bias.Gradient);
            for (int c = 0; c < channels; c++)
            {
                dGamma[c] += T.CreateTruncating(_sumDCentered[c] * _invStd[c]);
                if (!dBeta.IsEmpty) dBeta[c] += T.CreateTruncating(_sumD[c]);
            }
        }

        var xTensor = new ReadOnlyTensorSpan<T>(x, inputShape, []);
        var gradientTensor = new ReadOnlyTensorSpan<T>(convGradient, outputShape, []);
        if (!dx.IsEmpty) _conv.Backward(xTensor, gradientTensor, new TensorSpan<T>(dx, inputShape, []));
        if (parameterGradients) _conv.Gradient(xTensor, gradientTensor);
    }
}
