using System.Numerics;
using System.Numerics.Tensors;
using SharpNorm.Tensors;

namespace SharpNorm.Training;

/// <summary>Updates parameters from their accumulated gradients; <see cref="LearningRate"/> may change between steps (schedules).</summary>
public abstract class Optimizer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private protected readonly Parameter<T>[] Params;

    private protected Optimizer(IEnumerable<Parameter<T>> parameters, double learningRate)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        Params = parameters.ToArray();
        if (Params.Length == 0) throw new ArgumentException("The optimizer got no parameters.", nameof(parameters));
        LearningRate = learningRate;
    }

    /// <summary>The step size of the next <see cref="Step"/>.</summary>
    public double LearningRate
    {
        get;
        set => field = value >= 0 && double.IsFinite(value)
            ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, "The learning rate must be a finite number >= 0.");
    }

    /// <summary>Number of steps taken.</summary>
    public long Steps { get; private protected set; }

    /// <summary>
    /// The state besides the parameters, as torch.optim's state_dict holds it: named buffers, one per parameter (in the
    /// parameters' order), written in place by <see cref="Step"/>. Copy into them and call <see cref="Restore"/> to
    /// continue a run.
    /// </summary>
    public abstract IReadOnlyList<(string Name, T[] Values)> State { get; }

    /// <summary>Continues from <paramref name="steps"/> steps taken, the <see cref="State"/> buffers already filled.</summary>
    public void Restore(long steps)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(steps);
        Steps = steps;
    }

    /// <summary>Applies one update to every parameter from its Gradient.</summary>
    public abstract void Step();

    /// <summary>Clears every parameter's gradient.</summary>
    public void ZeroGrad()
    {
        foreach (Parameter<T> p in Params) p.ZeroGrad();
    }

    private protected static void RequireNonNegative(double value, string name)
    {
        if (!(value >= 0) || !double.IsFinite(value)) throw new ArgumentOutOfRangeException(name, value, $"{name} must be a finite number >= 0.");
    }
}

/// <summary>
/// Stochastic gradient descent, the twin of torch.optim.SGD: g = grad + weightDecay*p; with momentum
/// buf = momentum*buf + (1 - dampening)*g (buf = g on the first step), then g = buf, or g + momentum*buf with Nesterov;
/// p -= lr*g.
/// </summary>
public sealed class Sgd<T> : Optimizer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly T[][] _momentumBuffers;

    public Sgd(IEnumerable<Parameter<T>> parameters, double learningRate, double momentum = 0, double dampening = 0, double weightDecay = 0, bool nesterov = false)
        : base(parameters, learningRate)
    {
        RequireNonNegative(momentum, nameof(momentum));
        RequireNonNegative(dampening, nameof(dampening));
        RequireNonNegative(weightDecay, nameof(weightDecay));
        if (nesterov && (momentum == 0 || dampening != 0))
            throw new ArgumentException("Nesterov momentum requires a momentum and zero dampening.", nameof(nesterov));
        (Momentum, Dampening, WeightDecay, Nesterov) = (momentum, dampening, weightDecay, nesterov);
        _momentumBuffers = Params.Select(p => momentum > 0 ? new T[p.Value.FlattenedLength] : []).ToArray();
    }

    public double Momentum { get; }
    public double Dampening { get; }
    public double WeightDecay { get; }
    public bool Nesterov { get; }

    public override IReadOnlyList<(string Name, T[] Values)> State =>
        Momentum > 0 ? _momentumBuffers.Select((b, i) => ($"momentum_buffer.{i}", b)).ToArray() : [];

    public override void Step()
    {
        T lr = T.CreateTruncating(LearningRate), decay = T.CreateTruncating(WeightDecay), momentum = T.CreateTruncating(Momentum);
        T keep = T.CreateTruncating(1 - Dampening);
        for (int i = 0; i < Params.Length; i++)
        {
            Span<T> p = TensorData.Flat(Params[i].Value), grad = TensorData.Flat(Params[i].Gradient), buf = _momentumBuffers[i];
            for (int k = 0; k < p.Length; k++)
            {
                T g = grad[k] + decay * p[k];
                if (Momentum > 0)
                {
                    buf[k] = Steps == 0 ? g : momentum * buf[k] + keep * g;
                    g = Nesterov ? g + momentum * buf[k] : buf[k];
                }
                p[k] -= lr * g;
            }
        }
        Steps++;
    }
}

/// <summary>
/// Adam with decoupled weight decay, the twin of torch.optim.AdamW: p *= 1 - lr*weightDecay; m and v are the running
/// means of g and g² (β1, β2); p -= lr/(1 - β1^t) * m / (sqrt(v)/sqrt(1 - β2^t) + eps).
/// </summary>
public sealed class AdamW<T> : Optimizer<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    private readonly T[][] _m, _v;

    public AdamW(IEnumerable<Parameter<T>> parameters, double learningRate = 1e-3, double beta1 = 0.9, double beta2 = 0.999, double eps = 1e-8, double weightDecay = 1e-2)
        : base(parameters, learningRate)
    {
        if (!(beta1 >= 0 && beta1 < 1)) throw new ArgumentOutOfRangeException(nameof(beta1), beta1, "beta1 must be in [0, 1).");
        if (!(beta2 >= 0 && beta2 < 1)) throw new ArgumentOutOfRangeException(nameof(beta2), beta2, "beta2 must be in [0, 1).");
        RequireNonNegative(eps, nameof(eps));
        RequireNonNegative(weightDecay, nameof(weightDecay));
        (Beta1, Beta2, Eps, WeightDecay) = (beta1, beta2, eps, weightDecay);
        _m = Params.Select(p => new T[p.Value.FlattenedLength]).ToArray();
        _v = Params.Select(p => new T[p.Value.FlattenedLength]).ToArray();
    }

    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Eps { get; }
    public double WeightDecay { get; }

    public override IReadOnlyList<(string Name, T[] Values)> State =>
        [.. _m.Select((m, i) => ($"exp_avg.{i}", m)), .. _v.Select((v, i) => ($"exp_avg_sq.{i}", v))];

    public override void Step()
    {
        Steps++;
        double correction1 = 1 - Math.Pow(Beta1, Steps), correction2 = 1 - Math.Pow(Beta2, Steps);
        T shrink = T.CreateTruncating(1 - LearningRate * WeightDecay), stepSize = T.CreateTruncating(LearningRate / correction1);
        T b1 = T.CreateTruncating(Beta1), b2 = T.CreateTruncating(Beta2), eps = T.CreateTruncating(Eps);
        T oneMinusB1 = T.CreateTruncating(1 - Beta1), oneMinusB2 = T.CreateTruncating(1 - Beta2);
        T rootCorrection2 = T.CreateTruncating(Math.Sqrt(correction2));
        for (int i = 0; i < Params.Length; i++)
        {
            Span<T> p = TensorData.Flat(Params[i].Value), grad = TensorData.Flat(Params[i].Gradient), m = _m[i], v = _v[i];
            for (int k = 0; k < p.Length; k++)
            {
                T g = grad[k];
                p[k] *= shrink;
                m[k] = b1 * m[k] + oneMinusB1 * g;
                v[k] = b2 * v[k] + oneMinusB2 * g * g;
                p[k] -= stepSize * m[k] / (T.Sqrt(v[k]) / rootCorrection2 + eps);
            }
        }
    }
}
