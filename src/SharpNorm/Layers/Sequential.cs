using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>
/// Layers run one after the other, the twin of torch.nn.Sequential. Forward keeps every intermediate output (in
/// buffers the container owns and reuses), Backward and Gradient walk back through them. Parameters and buffers are
/// named as in PyTorch's state_dict: "0.weight", "1.running_mean", "1.num_batches_tracked", nested as "2.0.weight".
/// </summary>
/// <remarks>
/// A Conv2d → BatchNorm (→ LeakyReLU or ReLU) run of its layers executes as one fused block (statistics gathered by
/// the convolution, normalization and rectifier in one pass, and in the backward BatchNorm's reductions and its dx in
/// two passes): the same results to float rounding, the layers' parameters, buffers and names unchanged.
/// <see cref="FuseConvBatchNorm"/> turns it off. After a fused Forward the block's BatchNorm holds no forward of its
/// own: Backward and Gradient run through the Sequential.
/// <c>Gradient</c> is the training step's backward: one sweep that
/// accumulates every layer's parameter gradients (each layer's Backward feeds the layer before it; the first layer's
/// input gradient is not computed). <c>Backward</c>
/// computes the input gradient alone.
/// </remarks>
public sealed class Sequential<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly ILayer<T>[] _layers;
    private readonly nint[][] _shapes;      // _shapes[i]: input shape of layer i; _shapes[n]: output shape
    private readonly T[][] _outputs;        // outputs of layers 0..n-2 (the inputs of layers 1..n-1)
    private T[] _gradient1 = [], _gradient2 = [];
    private nint[]? _forwardShape;
    private readonly ConvBatchNormBlock<T>?[] _blocks;   // _blocks[i]: the fused block starting at layer i
    private bool _forwardFused;

    public Sequential(params ILayer<T>[] layers)
    {
        ArgumentNullException.ThrowIfNull(layers);
        if (layers.Length == 0) throw new ArgumentException("Sequential needs at least one layer.", nameof(layers));
        for (int i = 0; i < layers.Length; i++)
            if (layers[i] is null) throw new ArgumentNullException(nameof(layers), $"Layer {i} is null.");
        _layers = (ILayer<T>[])layers.Clone();
        _shapes = new nint[layers.Length + 1][];
        _outputs = new T[Math.Max(0, layers.Length - 1)][];
        for (int i = 0; i < _outputs.Length; i++) _outputs[i] = [];
        _blocks = new ConvBatchNormBlock<T>?[layers.Length];
        for (int i = 0; i < layers.Length; i++)
        {
            _blocks[i] = ConvBatchNormBlock<T>.At(_layers, i);
            if (_blocks[i] is { } block) i += block.Length - 1;
        }
    }

    /// <summary>
    /// Whether Conv2d → BatchNorm (→ LeakyReLU or ReLU) runs of the layers execute as fused blocks (default true).
    /// Takes effect at the next Forward; Backward and Gradient follow the Forward they come after.
    /// </summary>
    public bool FuseConvBatchNorm { get; set; } = true;

    /// <summary>
    /// Called during <c>Gradient</c> with a layer's index as soon as that layer's parameter gradients are complete (the
    /// last layer first, each layer once): data-parallel training starts their all-reduce while the sweep goes on.
    /// </summary>
    public Action<int>? GradientReady { get; set; }

    public IReadOnlyList<ILayer<T>> Layers => _layers;

    public int Count => _layers.Length;

    public ILayer<T> this[int index] => _layers[index];

    /// <summary>Sets training or eval mode on every layer.</summary>
    public override bool Training
    {
        get => base.Training;
        set
        {
            base.Training = value;
            foreach (ILayer<T> layer in _layers) layer.Training = value;
        }
    }

    /// <summary>Sets the thread limit of every layer.</summary>
    public override int MaxDegreeOfParallelism
    {
        get => base.MaxDegreeOfParallelism;
        set
        {
            base.MaxDegreeOfParallelism = value;
            foreach (ILayer<T> layer in _layers) layer.MaxDegreeOfParallelism = value;
        }
    }

    public override IEnumerable<Parameter<T>> Parameters => NamedParameters.Select(p => p.Parameter);

    public override IEnumerable<LayerBuffer<T>> Buffers => NamedBuffers.Select(b => b.Buffer);

    /// <summary>Every parameter with its state_dict name ("0.weight", "2.1.bias").</summary>
    public IEnumerable<(string Name, Parameter<T> Parameter)> NamedParameters
    {
        get
        {
            for (int i = 0; i < _layers.Length; i++)
            {
                if (_layers[i] is Sequential<T> inner)
                    foreach (var (name, p) in inner.NamedParameters) yield return ($"{i}.{name}", p);
                else
                    foreach (Parameter<T> p in _layers[i].Parameters) yield return ($"{i}.{p.Name}", p);
            }
        }
    }

    /// <summary>Every buffer with its state_dict name ("1.running_mean", "1.num_batches_tracked").</summary>
    public IEnumerable<(string Name, LayerBuffer<T> Buffer)> NamedBuffers
    {
        get
        {
            for (int i = 0; i < _layers.Length; i++)
            {
                if (_layers[i] is Sequential<T> inner)
                    foreach (var (name, b) in inner.NamedBuffers) yield return ($"{i}.{name}", b);
                else
                    foreach (LayerBuffer<T> b in _layers[i].Buffers) yield return ($"{i}.{b.Name}", b);
            }
        }
    }

    /// <summary>Clears the gradients of every parameter.</summary>
    public void ZeroGrad()
    {
        foreach (Parameter<T> p in Parameters) p.ZeroGrad();
    }

    protected override string Description => $"Sequential of {_layers.Length} layers";

    /// <summary>The output shape after every layer; the first layer that refuses its input is named in the exception.</summary>
    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        nint[] shape = inputShape.ToArray();
        for (int i = 0; i < _layers.Length; i++)
        {
            try
            {
                shape = _layers[i].OutputShape(shape);
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"Layer {i} ({_layers[i].GetType().Name.Split('`')[0]}) cannot take the output of the layer before it: {e.Message}", "x", e);
            }
        }
        return shape;
    }

    /// <summary>
    /// Check every layer's output for NaN and infinity (and the input first): the first one found is a
    /// <see cref="NonFiniteValueException"/> naming the layer. Off by default, as in PyTorch, where a NaN in a batch
    /// flows through and poisons BatchNorm's running statistics silently; on, it costs one pass over each output.
    /// </summary>
    public bool CheckFinite { get; set; }

    private string LayerName(int i, int last) =>
        last == i ? $"{i} ({_layers[i].GetType().Name.Split('`')[0]})" : $"{i}-{last} ({_layers[i].GetType().Name.Split('`')[0]} fused with {_layers[last].GetType().Name.Split('`')[0]})";

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        PrepareShapes(shape);
        bool fused = FuseConvBatchNorm, check = CheckFinite;
        if (check) FiniteCheck.Require(x, "input");
        for (int i = 0; i < _layers.Length; i++)
        {
            ReadOnlySpan<T> input = i == 0 ? x : _outputs[i - 1].AsSpan(0, Length(_shapes[i]));
            if (fused && _blocks[i] is { } block)
            {
                // The convolution's output stays in _outputs[i] for the backward; BatchNorm's is never written.
                int last = i + block.Length - 1;
                Span<T> blockOutput = last == _layers.Length - 1 ? y : _outputs[last].AsSpan(0, Length(_shapes[last + 1]));
                block.Forward(input, _shapes[i], _outputs[i].AsSpan(0, Length(_shapes[i + 1])), _shapes[i + 1], blockOutput);
                if (check) FiniteCheck.Require<T>(blockOutput, LayerName(i, last));
                i = last;
                continue;
            }
            Span<T> output = i == _layers.Length - 1 ? y : _outputs[i].AsSpan(0, Length(_shapes[i + 1]));
            _layers[i].Forward(new ReadOnlyTensorSpan<T>(input, _shapes[i], []), new TensorSpan<T>(output, _shapes[i + 1], []));
            if (check) FiniteCheck.Require<T>(output, LayerName(i, i));
        }
        _forwardFused = fused;
        if (_forwardShape is null || _forwardShape.Length != shape.Length) _forwardShape = new nint[shape.Length];
        shape.CopyTo(_forwardShape);
    }

    protected override void ValidateBackward(ReadOnlySpan<nint> shape)
    {
        if (_forwardShape is null || !shape.SequenceEqual(_forwardShape))
            throw new InvalidOperationException(
                $"Sequential: Backward and Gradient need a Forward on the same input first (last Forward: {(_forwardShape is null ? "none" : TensorData.Format(_forwardShape))}; got {TensorData.Format(shape)}).");
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) =>
        Sweep(x, dy, dx, parameterGradients: false);

    /// <summary>Backward and Gradient in one sweep (a graph's node needs both): dx and the parameter gradients.</summary>
    internal void BackwardAndGradient(ReadOnlyTensorSpan<T> x, ReadOnlyTensorSpan<T> dy, TensorSpan<T> dx)
    {
        ValidateBackward(x.Lengths);
        RequireShape(dy.Lengths, _shapes[_layers.Length], "dy");
        RequireShape(dx.Lengths, x.Lengths, "dx");
        Sweep(TensorData.Flat(x, "x"), TensorData.Flat(dy, "dy"), TensorData.Flat(dx, "dx"), parameterGradients: true, inputGradient: true);
    }

    protected override void GradientCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy)
    {
        ValidateBackward(shape);
        Sweep(x, dy, default, parameterGradients: true);
    }

    /// <summary>
    /// Back through the layers: each layer's input gradient becomes the output gradient of the layer before it
    /// (alternating between two buffers). With <paramref name="parameterGradients"/> every layer's Gradient runs too,
    /// after its Backward (norm layers then reuse Backward's reductions), and the first layer's dx is skipped.
    /// </summary>
    private void Sweep(ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx, bool parameterGradients, bool inputGradient = false)
    {
        ReadOnlySpan<T> gradOut = dy;
        bool useFirst = true;
        for (int i = _layers.Length - 1; i >= 0; i--)
        {
            int start = _forwardFused ? BlockEndingAt(i) : -1;
            if (start >= 0)
            {
                ConvBatchNormBlock<T> block = _blocks[start]!;
                ReadOnlySpan<T> blockInput = start == 0 ? x : _outputs[start - 1].AsSpan(0, Length(_shapes[start]));
                Span<T> blockGradIn = default;
                if (start > 0 || !parameterGradients || inputGradient)
                    blockGradIn = start == 0 ? dx : (useFirst ? _gradient1 : _gradient2).AsSpan(0, Length(_shapes[start]));
                block.Backward(blockInput, _shapes[start], _outputs[start].AsSpan(0, Length(_shapes[start + 1])), _shapes[start + 1], gradOut,
                    blockGradIn, parameterGradients);
                if (parameterGradients && GradientReady is { } blockReady)
                    for (int layer = i; layer >= start; layer--) blockReady(layer);
                gradOut = blockGradIn;
                useFirst = !useFirst;
                i = start;
                continue;
            }
            ReadOnlySpan<T> input = i == 0 ? x : _outputs[i - 1].AsSpan(0, Length(_shapes[i]));
            var inputTensor = new ReadOnlyTensorSpan<T>(input, _shapes[i], []);
            var gradOutTensor = new ReadOnlyTensorSpan<T>(gradOut, _shapes[i + 1], []);
            Span<T> gradIn = default;
            if (i > 0 || !parameterGradients || inputGradient)
            {
                gradIn = i == 0 ? dx : (useFirst ? _gradient1 : _gradient2).AsSpan(0, Length(_shapes[i]));
                _layers[i].Backward(inputTensor, gradOutTensor, new TensorSpan<T>(gradIn, _shapes[i], []));
            }
            if (parameterGradients)
            {
                _layers[i].Gradient(inputTensor, gradOutTensor);
                GradientReady?.Invoke(i);
            }
            gradOut = gradIn;
            useFirst = !useFirst;
        }
    }

    /// <summary>The first layer of the fused block whose last layer is <paramref name="index"/>, or -1.</summary>
    private int BlockEndingAt(int index)
    {
        for (int start = Math.Max(0, index - 2); start <= index; start++)
            if (_blocks[start] is { } block && start + block.Length - 1 == index) return start;
        return -1;
    }

    private void PrepareShapes(ReadOnlySpan<nint> inputShape)
    {
        if (_shapes[0] is not null && inputShape.SequenceEqual(_shapes[0])) return;
        _shapes[0] = inputShape.ToArray();
        long largest = Length(_shapes[0]);
        for (int i = 0; i < _layers.Length; i++)
        {
            _shapes[i + 1] = _layers[i].OutputShape(_shapes[i]);
            largest = Math.Max(largest, Length(_shapes[i + 1]));
            if (i < _outputs.Length && _outputs[i].Length < Length(_shapes[i + 1])) _outputs[i] = new T[Length(_shapes[i + 1])];
        }
        if (_gradient1.Length < largest)
        {
            _gradient1 = new T[largest];
            _gradient2 = new T[largest];
        }
    }

    private static int Length(nint[] shape)
    {
        long length = 1;
        foreach (nint d in shape) length *= d;
        return checked((int)length);
    }
}
