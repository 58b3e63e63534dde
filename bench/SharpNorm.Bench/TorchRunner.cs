using System.Reflection;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace SharpNorm.Bench;

/// <summary>
/// The libtorch side of one case, driven as a libtorch user would: torch.nn.functional.batch_norm / instance_norm /
/// group_norm / layer_norm on float32 tensors (x and dy as torch.channels_last tensors for channels-last cases), and
/// for RMSNorm PyTorch's own composite (see <see cref="RmsNorm"/>); no_grad for forward-only, autograd (x, weight,
/// bias requiring grad; y.backward(dy)) for forward+backward, grads set to None between runs (PyTorch's zero_grad
/// default), temporaries in a dispose scope.
/// </summary>
internal sealed class TorchRunner : IDisposable
{
    private const double Momentum = 0.1, Eps = 1e-5;

    private readonly BenchCase _case;
    private readonly Tensor _x, _dy, _weight, _runningMean, _runningVar;
    private readonly Tensor? _bias; // null for RMSNorm
    private readonly long[] _parameterShape, _normalizedDims;
    // RMSNorm's constants as ATen passes them: at::pow(x, 2) takes an integral Scalar, add_(eps) a floating one.
    private readonly Scalar _two = ((long)2).ToScalar(), _eps = Eps.ToScalar();
    private readonly List<Tensor> _dyList;

    [DllImport("libc", EntryPoint = "mallopt")]
    private static extern int MallOpt(int param, int value);

    /// <summary>
    /// glibc malloc tuned so that large blocks come from the heap and stay there (M_MMAP_MAX 0, M_TRIM_THRESHOLD
    /// max): libtorch then reuses freed output/gradient buffers instead of mmap-ing fresh pages each call, whose
    /// first-touch page faults can dominate its time for tensors above glibc's 32 MiB mmap threshold. Opt-in
    /// (--malloc-reuse); by default libtorch runs as it comes. Null on success, else why not.
    /// </summary>
    public static string? KeepFreedMemoryInHeap()
    {
        const int M_TRIM_THRESHOLD = -1, M_MMAP_MAX = -4;
        try
        {
            if (!OperatingSystem.IsLinux()) return "only on Linux (glibc)";
            return MallOpt(M_MMAP_MAX, 0) == 1 && MallOpt(M_TRIM_THRESHOLD, int.MaxValue) == 1 ? null : "mallopt refused";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return e.Message;
        }
    }

    /// <summary>Loads libtorch; null on success, else the reason it cannot be used.</summary>
    public static string? TryInitialize()
    {
        // TorchSharp prints a long load trace to the console when the native library fails to load; keep it out.
        TextWriter stdout = Console.Out, stderr = Console.Error;
        Console.SetOut(TextWriter.Null);
        Console.SetError(TextWriter.Null);
        try
        {
            torch.set_num_threads(1);
            using var t = torch.ones(4, ScalarType.Float32);
            using var s = t.sum();
            if (s.item<float>() != 4f) return "a trivial sum returned a wrong value";
            return null;
        }
        catch (Exception e)
        {
            Exception inner = e;
            while (inner is TypeInitializationException or TargetInvocationException && inner.InnerException is not null)
                inner = inner.InnerException;
            string message = inner.Message.ReplaceLineEndings(" ").Trim();
            return $"{inner.GetType().Name}: {(message.Length > 300 ? message[..300] + "..." : message)}";
        }
        finally
        {
            Console.SetOut(stdout);
            Console.SetError(stderr);
        }
    }

    /// <param name="x">x as stored: (N, C, *spatial), or (N, *spatial, C) for a channels-last case.</param>
    /// <param name="dy">dy, stored like x.</param>
    /// <param name="gamma">Weight, flat, of <see cref="BenchCase.ParameterShape"/>.</param>
    /// <param name="beta">Bias like <paramref name="gamma"/>; null for a layer without bias (RMSNorm).</param>
    public TorchRunner(BenchCase benchCase, float[] x, float[] dy, float[] gamma, float[]? beta)
    {
        _case = benchCase;
        _x = Logical(x).requires_grad_(true);
        _dy = Logical(dy);
        _parameterShape = benchCase.ParameterShape;
        _normalizedDims = Enumerable.Range(-benchCase.NormalizedDims, benchCase.NormalizedDims).Select(d => (long)d).ToArray();
        _weight = Copy(gamma, _parameterShape).requires_grad_(true);
        _bias = beta is null ? null : Copy(beta, _parameterShape).requires_grad_(true);
        long[] channels = [benchCase.Channels]; // running statistics: used by BatchNorm and InstanceNorm only
        _runningMean = torch.zeros(channels, ScalarType.Float32);
        _runningVar = torch.ones(channels, ScalarType.Float32);
        _dyList = [_dy];
    }

    /// <summary>
    /// The values (stored in the case's order) as an independent libtorch tensor of the logical NCHW shape. Channels-last:
    /// the (N, *spatial, C) tensor permuted to (N, C, *spatial) and cloned, which preserves its strides: the same
    /// tensor as PyTorch's x.contiguous(memory_format=torch.channels_last) (TorchSharp 0.107 exposes no memory_format
    /// argument on contiguous), checked here by its strides.
    /// </summary>
    private Tensor Logical(float[] values)
    {
        if (!_case.ChannelsLast) return Copy(values, _case.Shape);
        using var stored = Copy(values, _case.StorageShape);
        using var view = stored.permute(ToLogical(_case.Shape.Length));
        Tensor t = view.clone();
        long[] expected = new long[_case.Shape.Length], actual = t.stride();
        long step = 1;
        foreach (int d in (int[])[1, .. Enumerable.Range(2, _case.Shape.Length - 2).Reverse(), 0])
        {
            expected[d] = step;
            step *= _case.Shape[d];
        }
        if (!actual.SequenceEqual(expected) || !t.shape.SequenceEqual(_case.Shape))
            throw new InvalidOperationException($"channels-last libtorch tensor has shape [{string.Join(", ", t.shape)}], strides [{string.Join(", ", actual)}]; expected strides [{string.Join(", ", expected)}].");
        return t;
    }

    /// <summary>Dimension order taking (N, *spatial, C) to (N, C, *spatial).</summary>
    private static long[] ToLogical(int rank) => [0, rank - 1, .. Enumerable.Range(1, rank - 2).Select(d => (long)d)];

    /// <summary>Dimension order taking (N, C, *spatial) to (N, *spatial, C).</summary>
    private static long[] ToStored(int rank) => [0, .. Enumerable.Range(2, rank - 2).Select(d => (long)d), 1];

    /// <summary>An independent libtorch tensor holding a copy of the values.</summary>
    private static Tensor Copy(float[] values, long[] shape)
    {
        using var view = torch.tensor(values, shape, ScalarType.Float32);
        return view.clone();
    }

    public static void SetThreads(int threads) => torch.set_num_threads(threads);

    private Tensor Forward(bool training) => _case.Layer switch
    {
        LayerKind.BatchNorm => nn.functional.batch_norm(_x, _runningMean, _runningVar, _weight, _bias, training: training, momentum: Momentum, eps: Eps),
        LayerKind.InstanceNorm => nn.functional.instance_norm(_x, _runningMean, _runningVar, _weight, _bias, use_input_stats: training, momentum: Momentum, eps: Eps),
        // No running statistics: training and eval compute the same.
        LayerKind.GroupNorm => nn.functional.group_norm(_x, _case.Groups, _weight, _bias, Eps),
        LayerKind.LayerNorm => nn.functional.layer_norm(_x, _parameterShape, _weight, _bias, Eps),
        _ => RmsNorm(),
    };

    /// <summary>
    /// torch.nn.functional.rms_norm as libtorch 2.10 computes it on CPU (TorchSharp 0.107 has no rms_norm; on CPU
    /// rms_norm and _fused_rms_norm are CompositeImplicitAutograd, i.e. rms_norm_composite in ATen's layer_norm.cpp):
    /// rsqrt(at::pow(x, 2).mean(normalized dims, keepdim).add_(eps)), x.mul(that), then .mul(weight); float32
    /// throughout (the upcast to the op math type is a no-op for float). The same ATen ops with the same arguments, so
    /// autograd records and differentiates the same graph as in PyTorch.
    /// </summary>
    /// <remarks>
    /// Its backward is autograd's chain through pow, mean, rsqrt and the two muls (pow_backward: grad * 2 * x.pow(1.0)):
    /// several temporaries of x's size per call, where F.layer_norm has one fused backward kernel; how glibc serves
    /// such buffers (fresh pages or reused heap, see --malloc-reuse) weighs on its time.
    /// </remarks>
    private Tensor RmsNorm()
    {
        using var squares = _x.pow(_two);
        using var meanSquare = squares.mean(_normalizedDims, keepdim: true);
        meanSquare.add_(_eps);
        using var invRms = torch.rsqrt(meanSquare);
        using var normalized = _x.mul(invRms);
        return normalized.mul(_weight);
    }

    /// <summary>
    /// Forward only, with gradients off (set untimed before each run, as a no_grad block around a loop would):
    /// training (batch statistics, running stats updated) or eval. <see cref="EnableGrad"/> turns them back on.
    /// </summary>
    public TimedOperation ForwardOperation(bool training) => new(() =>
    {
        using var scope = torch.NewDisposeScope();
        Forward(training);
    }, BeforeEach: () => torch.set_grad_enabled(false));

    /// <summary>Gradients back on for this thread (after <see cref="ForwardOperation"/>'s runs).</summary>
    public static void EnableGrad() => torch.set_grad_enabled(true);

    /// <summary>Training forward + y.backward(dy) with autograd; gradients set to None before each run (untimed).</summary>
    public TimedOperation ForwardBackwardOperation() => new(() =>
    {
        using var scope = torch.NewDisposeScope();
        Tensor y = Forward(training: true);
        y.backward(_dyList);
    }, BeforeEach: () =>
    {
        torch.set_grad_enabled(true);
        ClearGrads();
    });

    public void ClearGrads()
    {
        foreach (Tensor? t in new[] { _x, _weight, _bias })
        {
            if (t is null) continue;
            Tensor? grad = t.grad;
            if (grad is null) continue;
            t.grad = null;
            grad.Dispose();
        }
    }

    /// <summary>
    /// One training forward+backward from fresh running statistics; the largest differences from SharpNorm's results
    /// (y and dx stored in the case's order, compared element by element; dbeta null without bias (RMSNorm); running
    /// statistics null for GroupNorm, LayerNorm and RMSNorm).
    /// </summary>
    public (double Y, double Dx, double DGamma, double? DBeta, double? RunningMean, double? RunningVar) Compare(
        float[] y, float[] dx, float[] dgamma, float[]? dbeta, float[]? runningMean, float[]? runningVar)
    {
        ClearGrads();
        using var scope = torch.NewDisposeScope();
        _runningMean.zero_();
        _runningVar.fill_(1.0);
        Tensor yt = Forward(training: true);
        yt.backward(_dyList);
        long[] channels = [_case.Channels];
        var result = (
            MaxAbsDiff(Stored(yt.detach()), y, _case.StorageShape),
            MaxAbsDiff(Stored(_x.grad!), dx, _case.StorageShape),
            MaxAbsDiff(_weight.grad!, dgamma, _parameterShape),
            _bias is null || dbeta is null ? (double?)null : MaxAbsDiff(_bias.grad!, dbeta, _parameterShape),
            runningMean is null ? (double?)null : MaxAbsDiff(_runningMean, runningMean, channels),
            runningVar is null ? (double?)null : MaxAbsDiff(_runningVar, runningVar, channels));
        ClearGrads();
        return result;
    }

    /// <summary>A logical NCHW result viewed in the case's storage order (a permuted view for channels-last).</summary>
    private Tensor Stored(Tensor t) => _case.ChannelsLast ? t.permute(ToStored(_case.Shape.Length)) : t;

    private static double MaxAbsDiff(Tensor t, float[] values, long[] shape)
    {
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        Tensor other = torch.tensor(values, shape, ScalarType.Float32);
        return (t - other).abs().max().item<float>();
    }

    private bool _disposed;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        ClearGrads();
        foreach (Tensor? t in new[] { _x, _dy, _weight, _bias, _runningMean, _runningVar }) t?.Dispose();
        _two.Dispose();
        _eps.Dispose();
    }
}
