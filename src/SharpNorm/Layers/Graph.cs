using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Tensors;

namespace SharpNorm.Layers;

/// <summary>One node of a <see cref="Graph{T}"/>: a layer (one input) or a join (several), the names of its inputs, its own name.</summary>
public sealed class GraphNode<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public GraphNode(string name, ILayer<T> layer, string input)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(layer);
        ArgumentException.ThrowIfNullOrEmpty(input);
        (Name, Layer, Inputs) = (name, layer, [input]);
    }

    public GraphNode(string name, IJoinLayer<T> join, params string[] inputs)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(join);
        ArgumentNullException.ThrowIfNull(inputs);
        if (inputs.Length == 0 || inputs.Any(string.IsNullOrEmpty)) throw new ArgumentException($"Node '{name}' needs one or more non-empty input names.", nameof(inputs));
        (Name, Join, Inputs) = (name, join, (string[])inputs.Clone());
    }

    public string Name { get; }

    /// <summary>The layer of a one-input node (null for a join).</summary>
    public ILayer<T>? Layer { get; }

    /// <summary>The join of a several-input node (null for a layer).</summary>
    public IJoinLayer<T>? Join { get; }

    public IReadOnlyList<string> Inputs { get; }
}

/// <summary>
/// A network as a directed acyclic graph of layers and joins, the trainable form of darknet's routes and shortcuts (and
/// of ONNX graphs). Nodes come in topological order: each reads the graph input or nodes before it, by name, so a
/// cycle cannot be built. Forward keeps every node's output (buffers owned and reused); Backward and Gradient walk
/// the nodes back, summing the gradients of a tensor that feeds several nodes in a fixed order (the consumers last to
/// first), so the results are the same bits for any thread count. Parameters and buffers are named "{node}.{name}".
/// </summary>
/// <remarks>
/// A graph with one output is an <see cref="ILayer{T}"/> like any other. A graph with several (YOLO's heads) runs with
/// <see cref="Run"/> and gives each with <see cref="Output(int)"/>; <see cref="Backward(ReadOnlySpan{T}, ReadOnlySpan{ReadOnlyMemory{T}}, Span{T})"/>
/// and <see cref="Gradient(ReadOnlySpan{T}, ReadOnlySpan{ReadOnlyMemory{T}})"/> take one output gradient per output.
/// </remarks>
public sealed class Graph<T> : Layer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly GraphNode<T>[] _nodes;
    private readonly int[][] _sources;          // _sources[i]: tensor indices of node i's inputs (0: the graph input, j + 1: node j)
    private readonly int[] _outputs;            // tensor indices of the graph's outputs
    private readonly nint[][] _shapes;          // per tensor, for the last input shape
    private readonly nint[][][] _joinShapes;    // per join node: its inputs' shapes
    private readonly ReadOnlyMemory<T>[][] _joinInputs;
    private T[][] _values = [];                 // per tensor (0: a copy of the input, only when a join reads it)
    private T[][] _gradients = [];              // per tensor
    private readonly bool[] _written;           // per tensor: its gradient holds a first contribution this sweep
    private T[] _scratch = [];
    private nint[]? _forwardShape;
    private bool _inputCopied;

    /// <param name="inputName">The graph input's name, which the first nodes read.</param>
    /// <param name="nodes">The nodes in topological order.</param>
    /// <param name="outputs">The names of the output tensors (nodes, or the input).</param>
    public Graph(string inputName, IEnumerable<GraphNode<T>> nodes, params string[] outputs)
    {
        ArgumentException.ThrowIfNullOrEmpty(inputName);
        ArgumentNullException.ThrowIfNull(nodes);
        ArgumentNullException.ThrowIfNull(outputs);
        _nodes = nodes.ToArray();
        if (_nodes.Length == 0) throw new ArgumentException("A graph needs at least one node.", nameof(nodes));
        if (outputs.Length == 0) throw new ArgumentException("A graph needs at least one output.", nameof(outputs));
        InputName = inputName;
        var index = new Dictionary<string, int>(StringComparer.Ordinal) { [inputName] = 0 };
        _sources = new int[_nodes.Length][];
        for (int i = 0; i < _nodes.Length; i++)
        {
            GraphNode<T> node = _nodes[i] ?? throw new ArgumentNullException(nameof(nodes), $"Node {i} is null.");
            _sources[i] = new int[node.Inputs.Count];
            for (int k = 0; k < node.Inputs.Count; k++)
                _sources[i][k] = index.TryGetValue(node.Inputs[k], out int source) ? source
                    : throw new ArgumentException($"Node '{node.Name}' reads '{node.Inputs[k]}', which is neither the input nor a node before it (nodes come in topological order).", nameof(nodes));
            if (!index.TryAdd(node.Name, i + 1)) throw new ArgumentException($"Two nodes (or a node and the input) are named '{node.Name}'.", nameof(nodes));
        }
        _outputs = new int[outputs.Length];
        for (int k = 0; k < outputs.Length; k++)
            _outputs[k] = outputs[k] is { } name && index.TryGetValue(name, out int t) ? t
                : throw new ArgumentException($"Output '{outputs[k]}' is not a node of the graph.", nameof(outputs));
        if (_outputs.Distinct().Count() != _outputs.Length) throw new ArgumentException("An output is named twice.", nameof(outputs));
        OutputNames = [.. outputs];
        _shapes = new nint[_nodes.Length + 1][];
        _joinShapes = _nodes.Select(n => n.Join is null ? [] : new nint[n.Inputs.Count][]).ToArray();
        _joinInputs = _nodes.Select(n => n.Join is null ? [] : new ReadOnlyMemory<T>[n.Inputs.Count]).ToArray();
        _written = new bool[_nodes.Length + 1];
    }

    public string InputName { get; }

    public IReadOnlyList<string> OutputNames { get; }

    public IReadOnlyList<GraphNode<T>> Nodes => _nodes;

    /// <summary>The node named <paramref name="name"/>.</summary>
    public GraphNode<T> this[string name] => _nodes.FirstOrDefault(n => n.Name == name) ?? throw new KeyNotFoundException($"The graph has no node '{name}'.");

    private IEnumerable<ILayer<T>> LayerNodes => _nodes.Where(n => n.Layer is not null).Select(n => n.Layer!);

    public override bool Training
    {
        get => base.Training;
        set
        {
            base.Training = value;
            foreach (ILayer<T> layer in LayerNodes) layer.Training = value;
        }
    }

    public override int MaxDegreeOfParallelism
    {
        get => base.MaxDegreeOfParallelism;
        set
        {
            base.MaxDegreeOfParallelism = value;
            foreach (ILayer<T> layer in LayerNodes) layer.MaxDegreeOfParallelism = value;
        }
    }

    public override IEnumerable<Parameter<T>> Parameters => NamedParameters.Select(p => p.Parameter);

    public override IEnumerable<LayerBuffer<T>> Buffers => NamedBuffers.Select(b => b.Buffer);

    /// <summary>Every parameter with its name, "{node}.{parameter}" ("conv3.weight", "block.0.weight").</summary>
    public IEnumerable<(string Name, Parameter<T> Parameter)> NamedParameters =>
        _nodes.Where(n => n.Layer is not null).SelectMany(n => n.Layer switch
        {
            Sequential<T> s => s.NamedParameters.Select(p => ($"{n.Name}.{p.Name}", p.Parameter)),
            Graph<T> g => g.NamedParameters.Select(p => ($"{n.Name}.{p.Name}", p.Parameter)),
            var layer => layer!.Parameters.Select(p => ($"{n.Name}.{p.Name}", p)),
        });

    /// <summary>Every buffer with its name, "{node}.{buffer}".</summary>
    public IEnumerable<(string Name, LayerBuffer<T> Buffer)> NamedBuffers =>
        _nodes.Where(n => n.Layer is not null).SelectMany(n => n.Layer switch
        {
            Sequential<T> s => s.NamedBuffers.Select(b => ($"{n.Name}.{b.Name}", b.Buffer)),
            Graph<T> g => g.NamedBuffers.Select(b => ($"{n.Name}.{b.Name}", b.Buffer)),
            var layer => layer!.Buffers.Select(b => ($"{n.Name}.{b.Name}", b)),
        });

    public void ZeroGrad()
    {
        foreach (Parameter<T> p in Parameters) p.ZeroGrad();
    }

    protected override string Description => $"Graph of {_nodes.Length} nodes";

    /// <summary>The shapes of the outputs for this input shape; the first node that refuses its inputs is named.</summary>
    public nint[][] OutputShapes(ReadOnlySpan<nint> inputShape)
    {
        nint[][] shapes = Shapes(inputShape);
        return _outputs.Select(t => shapes[t]).ToArray();
    }

    public override nint[] OutputShape(ReadOnlySpan<nint> inputShape)
    {
        if (_outputs.Length != 1)
            throw new InvalidOperationException($"The graph has {_outputs.Length} outputs ({string.Join(", ", OutputNames)}); use OutputShapes, Run and Output.");
        return Shapes(inputShape)[_outputs[0]];
    }

    private nint[][] Shapes(ReadOnlySpan<nint> inputShape)
    {
        var shapes = new nint[_nodes.Length + 1][];
        shapes[0] = inputShape.ToArray();
        for (int i = 0; i < _nodes.Length; i++)
        {
            GraphNode<T> node = _nodes[i];
            try
            {
                shapes[i + 1] = node.Layer is { } layer ? layer.OutputShape(shapes[_sources[i][0]]) : node.Join!.OutputShape(_sources[i].Select(s => shapes[s]).ToArray());
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"Node '{node.Name}' ({TypeName(node)}) cannot take its inputs: {e.Message}", "x", e);
            }
        }
        return shapes;
    }

    private static string TypeName(GraphNode<T> node) => ((object?)node.Layer ?? node.Join)!.GetType().Name.Split('`')[0];

    /// <summary>Runs the graph on <paramref name="x"/> (dense, row-major), keeping every node's output for <see cref="Output(int)"/> and the backward.</summary>
    public void Run(ReadOnlyTensorSpan<T> x)
    {
        if (!TensorData.IsRowMajor(x.Lengths, x.Strides)) throw new ArgumentException($"Expected x to be a dense row-major tensor; got shape {TensorData.Format(x.Lengths)}.", nameof(x));
        Prepare(x.Lengths);
        Compute(TensorData.Flat(x, "x"), default);
    }

    /// <summary>Output <paramref name="output"/> (in <see cref="OutputNames"/> order) of the last <see cref="Run"/> or Forward.</summary>
    public ReadOnlySpan<T> Output(int output)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(output);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(output, _outputs.Length);
        if (_forwardShape is null) throw new InvalidOperationException("The graph has not run yet.");
        int t = _outputs[output];
        if (t == 0) throw new InvalidOperationException("The output is the graph's input.");
        return _values[t].AsSpan(0, Length(_shapes[t]));
    }

    /// <summary>The output of any node of the last run, by name.</summary>
    public ReadOnlySpan<T> Output(string node)
    {
        if (_forwardShape is null) throw new InvalidOperationException("The graph has not run yet.");
        int i = Array.FindIndex(_nodes, n => n.Name == node);
        if (i < 0) throw new KeyNotFoundException($"The graph has no node '{node}'.");
        return _values[i + 1].AsSpan(0, Length(_shapes[i + 1]));
    }

    /// <summary>Node <paramref name="index"/>'s output of the last run (no checks: the darknet network's view of its layers).</summary>
    internal ReadOnlySpan<T> NodeOutput(int index) => _values[index + 1].AsSpan(0, Length(_shapes[index + 1]));

    /// <summary>When set (one slot per node), each run adds each node's time in Stopwatch ticks: the bench's per-layer profile.</summary>
    internal long[]? NodeTicks { get; set; }

    /// <summary>dx from one gradient per output (each as long as its output), after a <see cref="Run"/> on the same x.</summary>
    public void Backward(ReadOnlySpan<T> x, ReadOnlySpan<ReadOnlyMemory<T>> dOutputs, Span<T> dx)
    {
        CheckBackward(x, dOutputs);
        if (dx.Length != x.Length) throw new ArgumentException($"Expected dx of {x.Length} values; got {dx.Length}.", nameof(dx));
        Sweep(x, dOutputs, default, dx, inputGradient: true, parameterGradients: false);
    }

    /// <summary>Adds the parameter gradients from one gradient per output, after a <see cref="Run"/> on the same x.</summary>
    public void Gradient(ReadOnlySpan<T> x, ReadOnlySpan<ReadOnlyMemory<T>> dOutputs)
    {
        CheckBackward(x, dOutputs);
        Sweep(x, dOutputs, default, default, inputGradient: false, parameterGradients: true);
    }

    private void CheckBackward(ReadOnlySpan<T> x, ReadOnlySpan<ReadOnlyMemory<T>> dOutputs)
    {
        if (_forwardShape is null || x.Length != Length(_forwardShape)) throw new InvalidOperationException("Backward and Gradient need a Run on the same input first.");
        if (dOutputs.Length != _outputs.Length) throw new ArgumentException($"Expected {_outputs.Length} output gradients; got {dOutputs.Length}.", nameof(dOutputs));
        for (int k = 0; k < _outputs.Length; k++)
            if (dOutputs[k].Length != Length(_shapes[_outputs[k]]))
                throw new ArgumentException($"Output gradient {k} ({OutputNames[k]}) has {dOutputs[k].Length} values; the output has {Length(_shapes[_outputs[k]])} ({TensorData.Format(_shapes[_outputs[k]])}).", nameof(dOutputs));
    }

    protected override void ForwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, Span<T> y)
    {
        Prepare(shape);
        Compute(x, y);
    }

    protected override void ValidateBackward(ReadOnlySpan<nint> shape)
    {
        if (_forwardShape is null || !shape.SequenceEqual(_forwardShape))
            throw new InvalidOperationException(
                $"Graph: Backward and Gradient need a Forward on the same input first (last Forward: {(_forwardShape is null ? "none" : TensorData.Format(_forwardShape))}; got {TensorData.Format(shape)}).");
    }

    protected override void BackwardCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy, Span<T> dx) =>
        Sweep(x, default, dy, dx, inputGradient: true, parameterGradients: false);

    protected override void GradientCore(ReadOnlySpan<nint> shape, ReadOnlySpan<T> x, ReadOnlySpan<T> dy)
    {
        ValidateBackward(shape);
        Sweep(x, default, dy, default, inputGradient: false, parameterGradients: true);
    }

    /// <summary>
    /// Check every node's output for NaN and infinity (and the input first): the first one found is a
    /// <see cref="NonFiniteValueException"/> naming the node. Off by default, as in PyTorch.
    /// </summary>
    public bool CheckFinite { get; set; }

    /// <summary>Every node in order; the single output of a Forward is also copied to <paramref name="y"/>.</summary>
    private void Compute(ReadOnlySpan<T> x, Span<T> y)
    {
        if (CheckFinite) FiniteCheck.Require(x, "input");
        if (_inputCopied) x.CopyTo(_values[0]);
        long[]? ticks = NodeTicks;
        for (int i = 0; i < _nodes.Length; i++)
        {
            long start = ticks is null ? 0 : System.Diagnostics.Stopwatch.GetTimestamp();
            GraphNode<T> node = _nodes[i];
            Span<T> output = _values[i + 1].AsSpan(0, Length(_shapes[i + 1]));
            if (node.Layer is { } layer)
            {
                int s = _sources[i][0];
                layer.Forward(new ReadOnlyTensorSpan<T>(Value(s, x), _shapes[s], []), new TensorSpan<T>(output, _shapes[i + 1], []));
            }
            else
            {
                ReadOnlyMemory<T>[] inputs = _joinInputs[i];
                for (int k = 0; k < inputs.Length; k++) inputs[k] = _values[_sources[i][k]].AsMemory(0, Length(_shapes[_sources[i][k]]));
                node.Join!.Forward(inputs, _joinShapes[i], output);
            }
            if (ticks is not null) ticks[i] += System.Diagnostics.Stopwatch.GetTimestamp() - start;
            if (CheckFinite) FiniteCheck.Require<T>(output, $"'{node.Name}' ({(node.Layer is { } l ? l.GetType() : node.Join!.GetType()).Name.Split('`')[0]})");
        }
        if (!y.IsEmpty) Value(_outputs[0], x).CopyTo(y);
    }

    private ReadOnlySpan<T> Value(int tensor, ReadOnlySpan<T> x) => tensor == 0 ? x : _values[tensor].AsSpan(0, Length(_shapes[tensor]));

    /// <summary>
    /// Back through the nodes, last to first. A node's output gradient is complete once every consumer after it has
    /// added its part; each part goes straight into the tensor's gradient when it is the first, else through scratch.
    /// </summary>
    private void Sweep(ReadOnlySpan<T> x, ReadOnlySpan<ReadOnlyMemory<T>> dOutputs, ReadOnlySpan<T> dy, Span<T> dx, bool inputGradient, bool parameterGradients)
    {
        Array.Clear(_written);
        for (int k = 0; k < _outputs.Length; k++)
        {
            int t = _outputs[k];
            ReadOnlySpan<T> seed = dOutputs.IsEmpty ? dy : dOutputs[k].Span;
            if (t == 0) Accumulate(0, seed, dx, inputGradient);
            else
            {
                seed.CopyTo(_gradients[t]);
                _written[t] = true;
            }
        }
        for (int i = _nodes.Length - 1; i >= 0; i--)
        {
            int t = i + 1;
            if (!_written[t]) continue;   // no output and no consumer depends on this node
            GraphNode<T> node = _nodes[i];
            ReadOnlySpan<T> gradOut = _gradients[t].AsSpan(0, Length(_shapes[t]));
            if (node.Layer is { } layer)
            {
                int s = _sources[i][0];
                var input = new ReadOnlyTensorSpan<T>(Value(s, x), _shapes[s], []);
                var gradOutTensor = new ReadOnlyTensorSpan<T>(gradOut, _shapes[t], []);
                bool needInput = s != 0 || inputGradient;
                if (needInput)
                {
                    Span<T> target = Target(s, dx);
                    if (parameterGradients && layer is Sequential<T> sequential) sequential.BackwardAndGradient(input, gradOutTensor, new TensorSpan<T>(target, _shapes[s], []));
                    else
                    {
                        layer.Backward(input, gradOutTensor, new TensorSpan<T>(target, _shapes[s], []));
                        if (parameterGradients) layer.Gradient(input, gradOutTensor);
                    }
                    Added(s, dx);
                }
                else if (parameterGradients) layer.Gradient(input, gradOutTensor);
            }
            else
            {
                for (int k = 0; k < _sources[i].Length; k++)
                {
                    int s = _sources[i][k];
                    if (s == 0 && !inputGradient) continue;
                    node.Join!.Backward(k, _joinShapes[i], gradOut, Target(s, dx));
                    Added(s, dx);
                }
            }
        }
    }

    /// <summary>Where tensor <paramref name="s"/>'s next gradient part goes: its gradient if it is the first part, else scratch.</summary>
    private Span<T> Target(int s, Span<T> dx)
    {
        int length = Length(_shapes[s]);
        if (_written[s]) return _scratch.AsSpan(0, length);
        return s == 0 ? dx : _gradients[s].AsSpan(0, length);
    }

    /// <summary>After a part was written by <see cref="Target"/>: adds scratch in, or marks the gradient written.</summary>
    private void Added(int s, Span<T> dx)
    {
        int length = Length(_shapes[s]);
        if (!_written[s])
        {
            _written[s] = true;
            return;
        }
        Span<T> gradient = s == 0 ? dx : _gradients[s].AsSpan(0, length);
        TensorPrimitives.Add(gradient, _scratch.AsSpan(0, length), gradient);
    }

    private void Accumulate(int s, ReadOnlySpan<T> part, Span<T> dx, bool inputGradient)
    {
        if (!inputGradient) return;
        part.CopyTo(Target(s, dx));
        Added(s, dx);
    }

    private void Prepare(ReadOnlySpan<nint> inputShape)
    {
        if (_forwardShape is not null && inputShape.SequenceEqual(_forwardShape)) return;
        nint[][] shapes = Shapes(inputShape);   // throws before anything changes
        long largest = 0;
        foreach (nint[] shape in shapes) largest = Math.Max(largest, LongLength(shape));
        if (largest > Array.MaxLength) throw new ArgumentException($"A tensor of the graph would hold {largest} values, more than an array holds.", "x");
        _forwardShape = null;
        if (_values.Length == 0)
        {
            _values = new T[_nodes.Length + 1][];
            _gradients = new T[_nodes.Length + 1][];
            for (int t = 0; t <= _nodes.Length; t++) _values[t] = _gradients[t] = [];
        }
        _inputCopied = false;
        for (int i = 0; i < _nodes.Length; i++)
            if (_nodes[i].Join is not null && _sources[i].Contains(0)) _inputCopied = true;
        for (int t = 0; t <= _nodes.Length; t++)
        {
            _shapes[t] = shapes[t];
            int length = Length(shapes[t]);
            if ((t > 0 || _inputCopied) && _values[t].Length < length) _values[t] = new T[length];
            if (t > 0 && _gradients[t].Length < length) _gradients[t] = new T[length];
        }
        if (_scratch.Length < largest) _scratch = new T[largest];
        for (int i = 0; i < _nodes.Length; i++)
            for (int k = 0; k < _joinShapes[i].Length; k++) _joinShapes[i][k] = _shapes[_sources[i][k]];
        _forwardShape = inputShape.ToArray();
    }

    private static long LongLength(nint[] shape)
    {
        long length = 1;
        foreach (nint d in shape) length = checked(length * d);
        return length;
    }

    private static int Length(nint[] shape) => (int)LongLength(shape);
}
