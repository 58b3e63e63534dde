using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using SharpNorm.Layers;
using SharpNorm.Training;
using TorchSharp;
using TorchModule = TorchSharp.torch.nn.Module<TorchSharp.torch.Tensor, TorchSharp.torch.Tensor>;
using TorchTensor = TorchSharp.torch.Tensor;

namespace SharpNorm.Bench;

/// <summary>SGD settings both sides train with (torch.optim.SGD's arguments).</summary>
internal static class CnnSgd
{
    public const double LearningRate = 0.05, Momentum = 0.9, WeightDecay = 5e-4;
    public const bool Nesterov = true;
}

/// <summary>
/// The SharpNorm side of the CNN benchmark: one training step is Trainer&lt;T&gt;'s per-batch logic (Forward,
/// CrossEntropyLoss Forward/Backward, gradients zeroed, the model's Gradient sweep, Sgd.Step) on span overloads over
/// buffers owned here, so a step allocates nothing; eval is Forward in eval mode.
/// </summary>
internal sealed class SharpCnn
{
    private readonly Parameter<float>[] _parameters;
    private readonly CrossEntropyLoss<float> _loss = new();
    private readonly Sgd<float> _sgd;
    private readonly float[] _logits, _gradient;
    private readonly int _classes, _imageSize;
    private readonly nint[] _imageShape;
    private nint[] _xShape = [], _logitShape = [];

    public SharpCnn(Sequential<float> model, int batchSize, nint[] imageShape, int classes, int threads)
    {
        Model = model;
        Model.MaxDegreeOfParallelism = threads == Environment.ProcessorCount ? -1 : threads;
        Model.Training = true;
        _parameters = model.Parameters.ToArray();
        _sgd = new Sgd<float>(_parameters, CnnSgd.LearningRate, CnnSgd.Momentum, weightDecay: CnnSgd.WeightDecay, nesterov: CnnSgd.Nesterov);
        _classes = classes;
        _imageShape = imageShape;
        _imageSize = (int)imageShape.Aggregate((nint)1, (p, d) => p * d);
        _logits = new float[batchSize * classes];
        _gradient = new float[batchSize * classes];
    }

    public Sequential<float> Model { get; }

    /// <summary>Logits of the last Forward (first n*classes values).</summary>
    public ReadOnlySpan<float> Logits(int n) => _logits.AsSpan(0, n * _classes);

    /// <summary>One training step on a batch; returns its loss (the mean over the batch, before the update).</summary>
    public double Step(float[] images, int[] labels)
    {
        int n = labels.Length;
        Shapes(n);
        var x = new ReadOnlyTensorSpan<float>(images.AsSpan(0, n * _imageSize), _xShape, []);
        var logits = new TensorSpan<float>(_logits.AsSpan(0, n * _classes), _logitShape, []);
        var gradient = new TensorSpan<float>(_gradient.AsSpan(0, n * _classes), _logitShape, []);
        Model.Forward(x, logits);
        double loss = _loss.Forward(logits, labels);
        _loss.Backward(logits, labels, gradient);
        foreach (Parameter<float> p in _parameters) p.ZeroGrad();
        Model.Gradient(x, gradient);
        _sgd.Step();
        return loss;
    }

    /// <summary>Forward only (in the mode the model is in) into the logits buffer.</summary>
    public void Forward(float[] images, int n)
    {
        Shapes(n);
        Model.Forward(new ReadOnlyTensorSpan<float>(images.AsSpan(0, n * _imageSize), _xShape, []),
            new TensorSpan<float>(_logits.AsSpan(0, n * _classes), _logitShape, []));
    }

    /// <summary>Sum of the per-image losses and the number right for the last Forward (untimed bookkeeping).</summary>
    public (double LossSum, int Correct) Score(int[] labels)
    {
        int n = labels.Length;
        var logits = new ReadOnlyTensorSpan<float>(_logits.AsSpan(0, n * _classes), _logitShape, []);
        return (_loss.Forward(logits, labels) * n, CrossEntropyLoss<float>.CountCorrect(logits, labels));
    }

    private void Shapes(int n)
    {
        if (_xShape.Length != 0 && _xShape[0] == n) return;
        _xShape = [n, .. _imageShape];
        _logitShape = [n, _classes];
    }

    /// <summary>Every parameter's value (or gradient) by state_dict name, as flat arrays.</summary>
    public Dictionary<string, float[]> Snapshot(bool gradients) =>
        Model.NamedParameters.ToDictionary(p => p.Name, p => Flat(gradients ? p.Parameter.Gradient : p.Parameter.Value).ToArray());

    public static Span<float> Flat(Tensor<float> t) =>
        MemoryMarshal.CreateSpan(ref t.GetPinnableReference(), checked((int)t.FlattenedLength));
}

/// <summary>
/// The same network in libtorch: torch.nn.Sequential of Conv2d / BatchNorm2d / LeakyReLU / MaxPool2d /
/// AdaptiveAvgPool2d(1) / Flatten mirrored layer by layer from the SharpNorm model (so the state_dict names match),
/// float32, SharpNorm's initial parameters copied in; trained with torch.optim.SGD as a libtorch user would
/// (zero_grad, forward, cross_entropy, backward, step, loss.item() under a dispose scope).
/// </summary>
internal sealed class TorchCnn : IDisposable
{
    private readonly TorchModule _model;
    private readonly torch.optim.Optimizer _optimizer;
    private readonly torch.ScalarType _dtype;

    /// <param name="sharp">The SharpNorm model whose structure and initial parameters are copied.</param>
    /// <param name="float64">A float64 twin: the reference that tells which float32 side is off when they disagree
    /// (oneDNN has no float64 convolutions, so libtorch's own kernels run).</param>
    public TorchCnn(Sequential<float> sharp, bool float64 = false)
    {
        var modules = new List<(string, TorchModule)>();
        for (int i = 0; i < sharp.Count; i++)
            modules.Add((i.ToString(System.Globalization.CultureInfo.InvariantCulture), Mirror(sharp[i])));
        _model = torch.nn.Sequential(modules.ToArray());
        _dtype = float64 ? torch.ScalarType.Float64 : torch.ScalarType.Float32;
        if (float64) _model.to(_dtype);

        var sharpParameters = sharp.NamedParameters.ToDictionary(p => p.Name, p => p.Parameter);
        int copied = 0;
        using (torch.no_grad())
        {
            foreach (var (name, parameter) in _model.named_parameters())
            {
                if (!sharpParameters.TryGetValue(name, out Parameter<float>? source))
                    throw new InvalidOperationException($"libtorch parameter {name} has no SharpNorm twin.");
                long[] shape = source.Value.Lengths.ToArray().Select(d => (long)d).ToArray();
                if (!parameter.shape.SequenceEqual(shape))
                    throw new InvalidOperationException($"{name}: libtorch shape [{string.Join(", ", parameter.shape)}], SharpNorm [{string.Join(", ", shape)}].");
                using TorchTensor values = FromArray(SharpCnn.Flat(source.Value).ToArray(), shape);
                parameter.copy_(values); // converts to the parameter's type
                copied++;
            }
        }
        if (copied != sharpParameters.Count)
            throw new InvalidOperationException($"copied {copied} parameters into libtorch; SharpNorm has {sharpParameters.Count}.");
        _model.train();
        _optimizer = torch.optim.SGD(_model.parameters(), CnnSgd.LearningRate, CnnSgd.Momentum, dampening: 0,
            weight_decay: CnnSgd.WeightDecay, nesterov: CnnSgd.Nesterov);
    }

    private static TorchModule Mirror(ILayer<float> layer) => layer switch
    {
        Conv2d<float> c => torch.nn.Conv2d(c.InChannels, c.OutChannels, (c.KernelHeight, c.KernelWidth), stride: (c.StrideHeight, c.StrideWidth),
            padding: (c.PadHeight, c.PadWidth), dilation: (c.DilationHeight, c.DilationWidth), groups: c.Groups, bias: c.Bias is not null),
        BatchNorm<float> b when b.Momentum is { } momentum =>
            torch.nn.BatchNorm2d(b.NumFeatures, b.Eps, momentum, affine: b.Affine, track_running_stats: b.TrackRunningStats),
        LeakyReLU<float> l => torch.nn.LeakyReLU(l.NegativeSlope),
        MaxPool2d<float> p => torch.nn.MaxPool2d((p.KernelHeight, p.KernelWidth), stride: (p.StrideHeight, p.StrideWidth),
            padding: (p.PadHeight, p.PadWidth), ceil_mode: p.CeilMode),
        GlobalAvgPool2d<float> => torch.nn.AdaptiveAvgPool2d(1),
        Flatten<float> => torch.nn.Flatten(),
        _ => throw new NotSupportedException($"no libtorch twin for {layer.GetType().Name}"),
    };

    /// <summary>One training step; returns loss.item(). <paramref name="logits"/>: where to copy this step's logits (or null).</summary>
    public double Step(TorchTensor x, TorchTensor labels, float[]? logits = null)
    {
        using var scope = torch.NewDisposeScope();
        _optimizer.zero_grad();
        TorchTensor output = _model.call(x.dtype == _dtype ? x : x.to(_dtype));
        TorchTensor loss = torch.nn.functional.cross_entropy(output, labels);
        loss.backward();
        _optimizer.step();
        if (logits is not null) ToArray(output).CopyTo(logits, 0);
        return _dtype == torch.ScalarType.Float64 ? loss.item<double>() : loss.item<float>();
    }

    public bool Training
    {
        set
        {
            if (value) _model.train();
            else _model.eval();
        }
    }

    /// <summary>Forward only, under no_grad, inside the caller's dispose scope.</summary>
    public TorchTensor Forward(TorchTensor x) => _model.call(x);

    /// <summary>Sum of the per-image losses and the number right for logits (untimed bookkeeping).</summary>
    public static (double LossSum, int Correct) Score(TorchTensor logits, TorchTensor labels)
    {
        using var scope = torch.NewDisposeScope();
        double loss = torch.nn.functional.cross_entropy(logits, labels, reduction: torch.nn.Reduction.Sum).item<float>();
        long correct = logits.argmax(1).eq(labels).sum().item<long>();
        return (loss, (int)correct);
    }

    /// <summary>Every parameter's value (or gradient) by name, as flat arrays.</summary>
    public Dictionary<string, float[]> Snapshot(bool gradients)
    {
        using var scope = torch.NewDisposeScope();
        var result = new Dictionary<string, float[]>();
        foreach (var (name, parameter) in _model.named_parameters())
        {
            TorchTensor? t = gradients ? parameter.grad : parameter;
            result[name] = t is null ? new float[parameter.numel()] : ToArray(t);
        }
        return result;
    }

    /// <summary>An independent float32 libtorch tensor holding a copy of the values.</summary>
    public static TorchTensor FromArray(float[] values, long[] shape)
    {
        using TorchTensor view = torch.tensor(values, shape, torch.ScalarType.Float32);
        return view.clone();
    }

    public static TorchTensor FromLabels(int[] labels)
    {
        using TorchTensor view = torch.tensor(labels.Select(l => (long)l).ToArray(), [labels.Length], torch.ScalarType.Int64);
        return view.clone();
    }

    public static float[] ToArray(TorchTensor t)
    {
        using var scope = torch.NewDisposeScope();
        return t.detach().to(torch.ScalarType.Float32).contiguous().data<float>().ToArray();
    }

    public void Dispose()
    {
        _optimizer.Dispose();
        _model.Dispose();
    }
}
