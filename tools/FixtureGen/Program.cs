// FixtureGen: writes golden reference fixtures for SharpNorm's BatchNorm and InstanceNorm
// using libtorch (through TorchSharp). The module logic of Python's torch.nn
// (_BatchNorm.forward / _InstanceNorm.forward) is transcribed here on top of libtorch's
// functional ops; the state (weight, bias, running stats, num_batches_tracked) is kept by hand.
//
// It also writes fixtures for the stateless layers GroupNorm, LayerNorm and RMSNorm (functional
// group_norm / layer_norm, and rms_norm transcribed from primitives: TorchSharp 0.107 has no rms_norm).
//
// And fixtures for Conv2d, MaxPool2d and AvgPool2d (functional conv2d / max_pool2d / avg_pool2d),
// and for whole darknet networks (DarknetFixtures.cs, through tools/DarknetTorch/TorchDarknet.cs).
//
// Usage: FixtureGen OUTPUT_DIR [--only STEM[,STEM...]]   (see run.sh; writes batchnorm.json,
//        instancenorm.json, groupnorm.json, layernorm.json, rmsnorm.json, conv2d.json,
//        maxpool2d.json, avgpool2d.json and darknet.json (with ../Darknet/weights/small-*.weights),
//        or only the named ones, e.g. --only conv2d,maxpool2d)

using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Encodings.Web;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

internal static partial class Program
{
    private const string Generator = "tools/FixtureGen (TorchSharp 0.107.0, libtorch 2.10.0)";
    private static readonly double[] Epsilons = { 1e-5, 1e-3, 0.1 };
    private static readonly bool[] DefaultSteps = { true, true, false, true, false };
    private static readonly bool[] NonfiniteSteps = { true, false };

    private enum Layer { BatchNorm, InstanceNorm }

    private sealed record CaseSpec(
        Layer Layer, long[] Shape, ScalarType DType, bool Affine, bool Track, double? Momentum,
        double Eps, bool[] Steps, bool Nonfinite);

    // File stems in the order they are generated.
    private static readonly string[] AllFiles =
        { "batchnorm", "instancenorm", "groupnorm", "layernorm", "rmsnorm", "conv2d", "maxpool2d", "avgpool2d", "darknet" };

    private static int Main(string[] args)
    {
        // FixtureGen OUTPUT_DIR [--only STEM[,STEM...]]   (STEM: a file name without .json)
        HashSet<string>? only = null;
        if (args.Length == 3 && args[1] == "--only")
            only = new HashSet<string>(args[2].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        if (!(args.Length == 1 || only is not null) || (only is not null && (only.Count == 0 || only.Except(AllFiles).Any())))
        {
            Console.Error.WriteLine("usage: FixtureGen OUTPUT_DIR [--only STEM[,STEM...]]");
            Console.Error.WriteLine("       STEM: one of " + string.Join(", ", AllFiles));
            return 2;
        }
        string outDir = args[0];
        Directory.CreateDirectory(outDir);
        // Path to write, or null for a file that is not selected. Every file has a seed of its own
        // except instancenorm, which continues batchnorm's draws: batchnorm is then still generated
        // (into Stream.Null) so that a selected instancenorm.json comes out the same.
        string? Target(string stem) => only is null || only.Contains(stem) ? Path.Combine(outDir, stem + ".json") : null;
        bool Selected(string stem) => Target(stem) is not null;

        torch.set_num_threads(1);   // keep reductions in a fixed order: reproducible output
        torch.manual_seed(1234);

        var bnShapes = new[] { new long[] { 6, 3 }, new long[] { 4, 3, 5 }, new long[] { 2, 3, 4, 5 }, new long[] { 2, 2, 3, 2, 3 } };
        var inShapes = new[] { new long[] { 3, 4, 7 }, new long[] { 2, 3, 4, 5 }, new long[] { 2, 2, 3, 2, 3 } };

        if (Selected("batchnorm") || Selected("instancenorm"))
            WriteLayer(Target("batchnorm"), Layer.BatchNorm, BuildCases(Layer.BatchNorm, bnShapes));
        if (Selected("instancenorm"))
            WriteLayer(Target("instancenorm"), Layer.InstanceNorm, BuildCases(Layer.InstanceNorm, inShapes));

        // Stateless layers: each file from its own seed, so that none depends on another's draws
        // (and the two files above stay exactly as they were before these were added).
        if (Selected("groupnorm"))
        {
            torch.manual_seed(2001);
            WriteFile(Target("groupnorm"), "GroupNorm", BuildGroupNormCases().Select(c => (Action<Utf8JsonWriter>)(w => RunGroupNormCase(w, c))));
        }
        if (Selected("layernorm"))
        {
            torch.manual_seed(2002);
            WriteFile(Target("layernorm"), "LayerNorm", BuildLayerNormCases().Select(c => (Action<Utf8JsonWriter>)(w => RunLayerNormCase(w, c))));
        }
        if (Selected("rmsnorm"))
        {
            torch.manual_seed(2003);
            WriteFile(Target("rmsnorm"), "RMSNorm", BuildRmsNormCases().Select(c => (Action<Utf8JsonWriter>)(w => RunRmsNormCase(w, c))));
        }
        // Convolution and pooling: a seed of their own each as well.
        if (Selected("conv2d"))
        {
            // oneDNN's (mkldnn's) float32 convolution backward_data gives wrong dx on this machine for some
            // shapes (jit:avx512_core / jit:avx2; e.g. 5x5, 3x2 and 1x3 kernels), so the reference is taken
            // with mkldnn off (as torch.backends.mkldnn.flags(enabled=False) does): libtorch's own
            // slow_conv2d (im2col + GEMM). RunConv2dCase also checks every float32 case against float64.
            bool mkldnn = Mkldnn.Enabled;
            Mkldnn.Enabled = false;
            torch.manual_seed(2004);
            WriteFile(Target("conv2d"), "Conv2d", BuildConv2dCases().Select(c => (Action<Utf8JsonWriter>)(w => RunConv2dCase(w, c))));
            Mkldnn.Enabled = mkldnn;
        }
        if (Selected("maxpool2d"))
        {
            torch.manual_seed(2005);
            WriteFile(Target("maxpool2d"), "MaxPool2d", BuildMaxPool2dCases().Select(c => (Action<Utf8JsonWriter>)(w => RunPool2dCase(w, c))));
        }
        if (Selected("avgpool2d"))
        {
            torch.manual_seed(2006);
            WriteFile(Target("avgpool2d"), "AvgPool2d", BuildAvgPool2dCases().Select(c => (Action<Utf8JsonWriter>)(w => RunPool2dCase(w, c))));
        }
        // Whole darknet networks (DarknetFixtures.cs): also writes their random .weights files.
        if (Selected("darknet"))
        {
            // mkldnn off here too: oneDNN's float32 forward convolution (jit:avx512_core) is wrong on this machine for
            // batch 2 with input channels not a multiple of 16 (e.g. 24); DarknetFixtures also checks against float64.
            bool mkldnn = Mkldnn.Enabled;
            Mkldnn.Enabled = false;
            WriteDarknet(Target("darknet")!);
            Mkldnn.Enabled = mkldnn;
        }
        return 0;
    }

    // null path: generate (consuming the same random draws) but discard the output
    private static Stream OpenOutput(string? path) => path is null ? Stream.Null : File.Create(path);

    private static List<CaseSpec> BuildCases(Layer layer, long[][] shapes)
    {
        var cases = new List<CaseSpec>();
        int group = 0;
        foreach (var shape in shapes)
        {
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.Float64 })
            {
                int i = 0;
                foreach (bool affine in new[] { true, false })
                {
                    foreach (var (track, momentum) in new (bool, double?)[] { (false, 0.1), (true, 0.1), (true, null) })
                    {
                        // eps cycles over the cases, rotated per group so every combo meets several eps values
                        double eps = Epsilons[(i + group) % Epsilons.Length];
                        cases.Add(new CaseSpec(layer, shape, dtype, affine, track, momentum, eps, DefaultSteps, false));
                        i++;
                    }
                }
                group++;
            }
        }
        cases.Add(new CaseSpec(layer, new long[] { 2, 3, 4, 5 }, ScalarType.Float32, true, true, 0.1, 1e-5, NonfiniteSteps, true));
        return cases;
    }

    private static string FormatDouble(double v) =>
        v.ToString("R", CultureInfo.InvariantCulture).Replace("E", "e");

    private static string DTypeName(ScalarType t) => t == ScalarType.Float32 ? "float32" : "float64";

    private static string CaseName(CaseSpec c) =>
        $"{c.Layer}/rank{c.Shape.Length}/{DTypeName(c.DType)}/{(c.Affine ? "affine" : "noaffine")}/"
        + $"{(c.Track ? "track" : "notrack")}/momentum={(c.Momentum is { } m ? FormatDouble(m) : "null")}/eps={FormatEps(c.Eps)}"
        + (c.Nonfinite ? "/nonfinite" : "");

    // Python's repr of the eps values used: 1e-05, 0.001, 0.1
    private static string FormatEps(double eps) => eps switch
    {
        1e-5 => "1e-05",
        _ => FormatDouble(eps),
    };

    private static void WriteLayer(string? path, Layer layer, List<CaseSpec> cases)
    {
        using var stream = OpenOutput(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions
        {
            Indented = true,
            IndentSize = 2,
            NewLine = "\n",
            Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        });
        w.WriteStartObject();
        w.WriteString("generator", Generator);
        w.WriteString("layer", layer.ToString());
        w.WritePropertyName("cases");
        w.WriteStartArray();
        foreach (var c in cases)
        {
            using var scope = torch.NewDisposeScope();
            RunCase(w, c);
        }
        w.WriteEndArray();
        w.WriteEndObject();
        w.Flush();
        stream.WriteByte((byte)'\n');
    }

    private static void RunCase(Utf8JsonWriter w, CaseSpec c)
    {
        long n = c.Shape[0];
        long numFeatures = c.Shape[1];
        var dtype = c.DType;

        // Initial parameters (generated in float64, cast to the case dtype).
        Tensor? weight = null, bias = null;
        if (c.Affine)
        {
            weight = (torch.rand(new[] { numFeatures }, ScalarType.Float64) + 0.5).to_type(dtype).detach().requires_grad_(true);
            bias = (torch.randn(new[] { numFeatures }, ScalarType.Float64) * 0.3).to_type(dtype).detach().requires_grad_(true);
        }
        // Running stats: PyTorch defaults, never requiring grad; None when not tracked.
        Tensor? runningMean = null, runningVar = null;
        long numBatchesTracked = 0;
        if (c.Track)
        {
            runningMean = torch.zeros(new[] { numFeatures }, dtype);
            runningVar = torch.ones(new[] { numFeatures }, dtype);
        }

        w.WriteStartObject();
        w.WriteString("name", CaseName(c));
        w.WriteString("dtype", DTypeName(dtype));
        w.WriteNumber("numFeatures", numFeatures);
        w.WritePropertyName("eps");
        w.WriteRawValue(FormatDouble(c.Eps));
        w.WritePropertyName("momentum");
        if (c.Momentum is { } mom) w.WriteRawValue(FormatDouble(mom)); else w.WriteNullValue();
        w.WriteBoolean("affine", c.Affine);
        w.WriteBoolean("trackRunningStats", c.Track);
        WriteTensor(w, "weight", weight);
        WriteTensor(w, "bias", bias);

        // per-channel offsets 0.5*c - 1, broadcast along dim 1
        var offShape = Enumerable.Repeat(1L, c.Shape.Length).ToArray();
        offShape[1] = numFeatures;
        var offsets = (torch.arange(numFeatures, ScalarType.Float64) * 0.5 - 1.0).reshape(offShape);

        w.WritePropertyName("steps");
        w.WriteStartArray();
        foreach (bool training in c.Steps)
        {
            var x64 = torch.randn(c.Shape, ScalarType.Float64) * 2.0 + offsets;
            var dy64 = torch.randn(c.Shape, ScalarType.Float64);
            if (c.Nonfinite)
            {
                // sample 0: one NaN in channel 0, one +Infinity in channel 1
                var nanIdx = new List<TensorIndex> { TensorIndex.Single(0), TensorIndex.Single(0) };
                var infIdx = new List<TensorIndex> { TensorIndex.Single(0), TensorIndex.Single(1) };
                for (int d = 2; d < c.Shape.Length; d++)
                {
                    nanIdx.Add(TensorIndex.Single(1 % c.Shape[d]));
                    infIdx.Add(TensorIndex.Single((c.Shape[d] - 1)));
                }
                x64.index_put_(double.NaN, nanIdx.ToArray());
                x64.index_put_(double.PositiveInfinity, infIdx.ToArray());
            }
            var x = x64.to_type(dtype).detach().requires_grad_(true);
            var dy = dy64.to_type(dtype).detach();

            Tensor y = c.Layer == Layer.BatchNorm
                ? BatchNormForward(x, weight, bias, runningMean, runningVar, ref numBatchesTracked, training, c.Track, c.Momentum, c.Eps)
                : InstanceNormForward(x, weight, bias, runningMean, runningVar, training, c.Track, c.Momentum, c.Eps);

            // Snapshot running stats after this step's forward.
            var rmSnap = runningMean?.detach().clone();
            var rvSnap = runningVar?.detach().clone();

            // This step's gradients alone (no accumulation across steps).
            var inputs = c.Affine ? new List<Tensor> { x, weight!, bias! } : new List<Tensor> { x };
            var grads = torch.autograd.grad(new List<Tensor> { y }, inputs, new List<Tensor> { dy });

            w.WriteStartObject();
            w.WriteBoolean("training", training);
            WriteTensor(w, "x", x);
            WriteTensor(w, "dy", dy);
            WriteTensor(w, "y", y);
            WriteTensor(w, "dx", grads[0]);
            WriteTensor(w, "dweight", c.Affine ? grads[1] : null);
            WriteTensor(w, "dbias", c.Affine ? grads[2] : null);
            WriteTensor(w, "runningMean", rmSnap);
            WriteTensor(w, "runningVar", rvSnap);
            w.WriteNumber("numBatchesTracked", numBatchesTracked);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    // torch/nn/modules/batchnorm.py _BatchNorm.forward, transcribed.
    private static Tensor BatchNormForward(Tensor x, Tensor? weight, Tensor? bias, Tensor? runningMean, Tensor? runningVar,
        ref long numBatchesTracked, bool training, bool track, double? momentum, double eps)
    {
        double factor = momentum ?? 0.0;
        if (training && track)
        {
            numBatchesTracked += 1;
            factor = momentum ?? 1.0 / numBatchesTracked;
        }
        bool bnTraining = training || (runningMean is null && runningVar is null);
        bool passStats = !training || track;
        return torch.nn.functional.batch_norm(x,
            passStats ? runningMean : null, passStats ? runningVar : null,
            weight, bias, bnTraining, factor, eps);
    }

    // torch/nn/modules/instancenorm.py _InstanceNorm.forward, transcribed.
    private static Tensor InstanceNormForward(Tensor x, Tensor? weight, Tensor? bias, Tensor? runningMean, Tensor? runningVar,
        bool training, bool track, double? momentum, double eps)
    {
        return torch.nn.functional.instance_norm(x, runningMean, runningVar, weight, bias,
            use_input_stats: training || !track, momentum: momentum ?? 0.0, eps: eps);
    }

    // ---------------------------------------------------------------------------------------------
    // Stateless layers (GroupNorm, LayerNorm, RMSNorm): no running statistics and no training/eval
    // difference, so every case is StatelessSteps steps with fresh x and dy, parameters fixed.
    // ---------------------------------------------------------------------------------------------

    private const int StatelessSteps = 3;

    private sealed record GroupNormSpec(long[] Shape, int NumGroups, ScalarType DType, bool Affine, double Eps);
    private sealed record LayerNormSpec(long[] Shape, long[] NormalizedShape, ScalarType DType, bool Affine, bool Bias, double Eps);
    private sealed record RmsNormSpec(long[] Shape, long[] NormalizedShape, ScalarType DType, bool Affine, double? Eps);

    private static readonly ScalarType[] DTypes = { ScalarType.Float32, ScalarType.Float64 };

    private static List<GroupNormSpec> BuildGroupNormCases()
    {
        // (shape, groups); shapes kept small so that the five fixture files stay well under 2 MB
        var configs = new (long[] Shape, int Groups)[]
        {
            (new long[] { 4, 6 }, 3),
            (new long[] { 2, 6, 3 }, 2),
            (new long[] { 2, 6, 2, 2 }, 3),
            (new long[] { 2, 6, 2, 2 }, 6),       // one channel per group: instance-norm like
            (new long[] { 2, 6, 2, 2 }, 1),       // one group: layer-norm like (over C,H,W)
            (new long[] { 2, 4, 2, 2, 2 }, 2),
        };
        var cases = new List<GroupNormSpec>();
        for (int s = 0; s < configs.Length; s++)
            foreach (var dtype in DTypes)
            {
                int a = 0;
                foreach (bool affine in new[] { true, false })
                    cases.Add(new GroupNormSpec(configs[s].Shape, configs[s].Groups, dtype, affine, Epsilons[(s + a++) % Epsilons.Length]));
            }
        return cases;
    }

    private static List<LayerNormSpec> BuildLayerNormCases()
    {
        var configs = new (long[] Shape, long[] Normalized)[]
        {
            (new long[] { 2, 16 }, new long[] { 16 }),
            (new long[] { 2, 2, 10 }, new long[] { 10 }),
            (new long[] { 2, 2, 2, 5 }, new long[] { 2, 5 }),
            (new long[] { 2, 3, 2, 5 }, new long[] { 3, 2, 5 }),
        };
        var cases = new List<LayerNormSpec>();
        for (int s = 0; s < configs.Length; s++)
            foreach (var dtype in DTypes)
            {
                int a = 0;
                foreach (var (affine, bias) in new[] { (true, true), (true, false), (false, false) })
                    cases.Add(new LayerNormSpec(configs[s].Shape, configs[s].Normalized, dtype, affine, bias, Epsilons[(s + a++) % Epsilons.Length]));
            }
        return cases;
    }

    private static List<RmsNormSpec> BuildRmsNormCases()
    {
        var configs = new (long[] Shape, long[] Normalized)[]
        {
            (new long[] { 2, 16 }, new long[] { 16 }),
            (new long[] { 2, 2, 10 }, new long[] { 10 }),
            (new long[] { 2, 2, 2, 5 }, new long[] { 2, 5 }),
        };
        var cases = new List<RmsNormSpec>();
        foreach (var (shape, normalized) in configs)
            foreach (var dtype in DTypes)
                foreach (bool affine in new[] { true, false })
                    foreach (double? eps in new double?[] { null, 1e-5 })
                        cases.Add(new RmsNormSpec(shape, normalized, dtype, affine, eps));
        return cases;
    }

    private static string ShapeName(long[] shape) => string.Join("x", shape);

    private static void WriteFile(string? path, string layer, IEnumerable<Action<Utf8JsonWriter>> cases)
    {
        using var stream = OpenOutput(path);
        using var w = new Utf8JsonWriter(stream, new JsonWriterOptions
        {
            Indented = true,
            IndentSize = 2,
            NewLine = "\n",
            Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        });
        w.WriteStartObject();
        w.WriteString("generator", Generator);
        w.WriteString("layer", layer);
        w.WritePropertyName("cases");
        w.WriteStartArray();
        foreach (var writeCase in cases)
        {
            using var scope = torch.NewDisposeScope();
            writeCase(w);
        }
        w.WriteEndArray();
        w.WriteEndObject();
        w.Flush();
        stream.WriteByte((byte)'\n');
    }

    private static void WriteNumber(Utf8JsonWriter w, string name, double? v)
    {
        w.WritePropertyName(name);
        if (v is { } d) w.WriteRawValue(FormatDouble(d)); else w.WriteNullValue();
    }

    private static void WriteShape(Utf8JsonWriter w, string name, long[] shape)
    {
        w.WritePropertyName(name);
        w.WriteRawValue("[" + string.Join(", ", shape) + "]");
    }

    // Initial parameters, generated in float64 and cast to the case dtype: weight ~ U[0.5, 1.5), bias ~ 0.3 N(0,1).
    private static Tensor NewWeight(long[] shape, ScalarType dtype) =>
        (torch.rand(shape, ScalarType.Float64) + 0.5).to_type(dtype).detach().requires_grad_(true);

    private static Tensor NewBias(long[] shape, ScalarType dtype) =>
        (torch.randn(shape, ScalarType.Float64) * 0.3).to_type(dtype).detach().requires_grad_(true);

    // x = 2 N(0,1) + (0.5 k - 1), with k the index along dimension offsetDim; dy = N(0,1). Both drawn in float64.
    private static (Tensor X, Tensor Dy) NewStepInputs(long[] shape, int offsetDim, ScalarType dtype)
    {
        var offShape = Enumerable.Repeat(1L, shape.Length).ToArray();
        offShape[offsetDim] = shape[offsetDim];
        var offsets = (torch.arange(shape[offsetDim], ScalarType.Float64) * 0.5 - 1.0).reshape(offShape);
        var x64 = torch.randn(shape, ScalarType.Float64) * 2.0 + offsets;
        var dy64 = torch.randn(shape, ScalarType.Float64);
        return (x64.to_type(dtype).detach().requires_grad_(true), dy64.to_type(dtype).detach());
    }

    // Writes the steps array: for each step, fresh x/dy, y = forward(x), and this step's gradients
    // alone for [x, params...] (params: the non-null ones, in order).
    private static void WriteStatelessSteps(Utf8JsonWriter w, long[] shape, int offsetDim, ScalarType dtype,
        Func<Tensor, Tensor> forward, (string Name, Tensor? Param)[] parameters)
    {
        w.WritePropertyName("steps");
        w.WriteStartArray();
        for (int step = 0; step < StatelessSteps; step++)
        {
            var (x, dy) = NewStepInputs(shape, offsetDim, dtype);
            var y = forward(x);
            var inputs = new List<Tensor> { x };
            inputs.AddRange(parameters.Where(p => p.Param is not null).Select(p => p.Param!));
            var grads = torch.autograd.grad(new List<Tensor> { y }, inputs, new List<Tensor> { dy });

            w.WriteStartObject();
            WriteTensor(w, "x", x);
            WriteTensor(w, "dy", dy);
            WriteTensor(w, "y", y);
            WriteTensor(w, "dx", grads[0]);
            int g = 1;
            foreach (var (name, param) in parameters)
                WriteTensor(w, name, param is null ? null : grads[g++]);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    // torch.nn.GroupNorm.forward: F.group_norm(input, num_groups, weight, bias, eps)
    private static void RunGroupNormCase(Utf8JsonWriter w, GroupNormSpec c)
    {
        long numChannels = c.Shape[1];
        Tensor? weight = c.Affine ? NewWeight(new[] { numChannels }, c.DType) : null;
        Tensor? bias = c.Affine ? NewBias(new[] { numChannels }, c.DType) : null;

        w.WriteStartObject();
        w.WriteString("name", $"GroupNorm/shape={ShapeName(c.Shape)}/groups={c.NumGroups}/{DTypeName(c.DType)}/"
            + $"{(c.Affine ? "affine" : "noaffine")}/eps={FormatEps(c.Eps)}");
        w.WriteString("dtype", DTypeName(c.DType));
        w.WriteNumber("numGroups", c.NumGroups);
        w.WriteNumber("numChannels", numChannels);
        WriteNumber(w, "eps", c.Eps);
        w.WriteBoolean("affine", c.Affine);
        WriteTensor(w, "weight", weight);
        WriteTensor(w, "bias", bias);
        WriteStatelessSteps(w, c.Shape, 1, c.DType,
            x => torch.nn.functional.group_norm(x, c.NumGroups, weight, bias, c.Eps),
            new[] { ("dweight", weight), ("dbias", bias) });
        w.WriteEndObject();
    }

    // torch.nn.LayerNorm.forward: F.layer_norm(input, normalized_shape, weight, bias, eps);
    // weight exists iff elementwise_affine, bias iff elementwise_affine and bias.
    private static void RunLayerNormCase(Utf8JsonWriter w, LayerNormSpec c)
    {
        Tensor? weight = c.Affine ? NewWeight(c.NormalizedShape, c.DType) : null;
        Tensor? bias = c.Affine && c.Bias ? NewBias(c.NormalizedShape, c.DType) : null;

        w.WriteStartObject();
        w.WriteString("name", $"LayerNorm/shape={ShapeName(c.Shape)}/normalized={ShapeName(c.NormalizedShape)}/{DTypeName(c.DType)}/"
            + $"{(c.Affine ? (c.Bias ? "affine" : "affine-nobias") : "noaffine")}/eps={FormatEps(c.Eps)}");
        w.WriteString("dtype", DTypeName(c.DType));
        WriteShape(w, "normalizedShape", c.NormalizedShape);
        WriteNumber(w, "eps", c.Eps);
        w.WriteBoolean("elementwiseAffine", c.Affine);
        w.WriteBoolean("bias", c.Affine && c.Bias);
        WriteTensor(w, "weight", weight);
        WriteTensor(w, "biasValue", bias);
        WriteStatelessSteps(w, c.Shape, c.Shape.Length - 1, c.DType,
            x => torch.nn.functional.layer_norm(x, c.NormalizedShape, weight, bias, c.Eps),
            new[] { ("dweight", weight), ("dbias", bias) });
        w.WriteEndObject();
    }

    // torch.nn.RMSNorm.forward: F.rms_norm(input, normalized_shape, weight, eps). TorchSharp 0.107
    // has no rms_norm, so this is libtorch's CPU path transcribed (at::native::rms_norm_composite,
    // which rms_norm -> _fused_rms_norm resolves to on CPU):
    //   y = (x * rsqrt(mean(x^2 over the normalized dims, keepdim) + eps)) * weight,
    // eps None meaning torch.finfo(x.dtype).eps (eps is applied in x's dtype).
    private static Tensor RmsNormForward(Tensor x, long[] normalizedShape, Tensor? weight, double eps)
    {
        var dims = Enumerable.Range(0, normalizedShape.Length).Select(i => (long)(x.dim() - i - 1)).ToArray();
        var rstd = torch.rsqrt(x.pow(2).mean(dims, keepdim: true).add(eps));
        var y = x.mul(rstd);
        return weight is null ? y : y.mul(weight);
    }

    private static void RunRmsNormCase(Utf8JsonWriter w, RmsNormSpec c)
    {
        Tensor? weight = c.Affine ? NewWeight(c.NormalizedShape, c.DType) : null;
        double epsUsed = c.Eps ?? torch.finfo(c.DType).eps;

        w.WriteStartObject();
        w.WriteString("name", $"RMSNorm/shape={ShapeName(c.Shape)}/normalized={ShapeName(c.NormalizedShape)}/{DTypeName(c.DType)}/"
            + $"{(c.Affine ? "affine" : "noaffine")}/eps={(c.Eps is { } e ? FormatEps(e) : "null")}");
        w.WriteString("dtype", DTypeName(c.DType));
        WriteShape(w, "normalizedShape", c.NormalizedShape);
        WriteNumber(w, "eps", c.Eps);
        WriteNumber(w, "epsUsed", epsUsed);
        w.WriteBoolean("elementwiseAffine", c.Affine);
        WriteTensor(w, "weight", weight);
        WriteStatelessSteps(w, c.Shape, c.Shape.Length - 1, c.DType,
            x => RmsNormForward(x, c.NormalizedShape, weight, epsUsed),
            new[] { ("dweight", weight) });
        w.WriteEndObject();
    }

    // ---------------------------------------------------------------------------------------------
    // Conv2d, MaxPool2d, AvgPool2d: one forward/backward per case (stateless; no steps array).
    // x ~ N(0,1), dy ~ N(0,1); conv weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's
    // default Conv2d init bounds), fan_in = C/groups * kh * kw. All drawn in float64, then cast.
    // ---------------------------------------------------------------------------------------------

    private sealed record Conv2dSpec(long[] XShape, long OutChannels, long[] Kernel, long[] Stride, long[] Padding,
        long[] Dilation, long Groups, bool Bias, ScalarType DType);

    private sealed record Pool2dSpec(bool Max, long[] XShape, long[] Kernel, long[] Stride, long[] Padding,
        bool CeilMode, bool CountIncludePad, ScalarType DType, bool Ties);

    private static string Pair(long[] p) => $"{p[0]}x{p[1]}";

    private static List<Conv2dSpec> BuildConv2dCases()
    {
        // (x shape N,C,H,W; out channels; kernel; stride; padding; dilation; groups; bias)
        var configs = new (long[] X, long O, long[] K, long[] S, long[] P, long[] D, long G, bool B)[]
        {
            (new long[] { 2, 3, 5, 5 }, 4, new long[] { 1, 1 }, new long[] { 1, 1 }, new long[] { 0, 0 }, new long[] { 1, 1 }, 1, true),
            (new long[] { 2, 6, 7, 7 }, 3, new long[] { 1, 1 }, new long[] { 2, 2 }, new long[] { 0, 0 }, new long[] { 1, 1 }, 1, false),
            (new long[] { 1, 3, 7, 9 }, 6, new long[] { 3, 3 }, new long[] { 1, 1 }, new long[] { 1, 1 }, new long[] { 1, 1 }, 1, true),
            (new long[] { 2, 3, 8, 8 }, 5, new long[] { 3, 3 }, new long[] { 2, 2 }, new long[] { 0, 0 }, new long[] { 1, 1 }, 1, false),
            (new long[] { 2, 4, 7, 9 }, 6, new long[] { 3, 3 }, new long[] { 2, 1 }, new long[] { 1, 0 }, new long[] { 1, 1 }, 2, true),
            (new long[] { 2, 8, 6, 6 }, 8, new long[] { 3, 3 }, new long[] { 1, 1 }, new long[] { 1, 1 }, new long[] { 1, 1 }, 8, false),  // depthwise
            (new long[] { 1, 4, 7, 7 }, 8, new long[] { 3, 3 }, new long[] { 2, 2 }, new long[] { 1, 1 }, new long[] { 1, 1 }, 4, true),   // depthwise, multiplier 2
            (new long[] { 1, 2, 13, 11 }, 3, new long[] { 5, 5 }, new long[] { 2, 2 }, new long[] { 2, 2 }, new long[] { 1, 1 }, 1, true),
            (new long[] { 3, 3, 9, 7 }, 2, new long[] { 5, 5 }, new long[] { 1, 1 }, new long[] { 2, 2 }, new long[] { 1, 1 }, 1, false),
            (new long[] { 3, 2, 7, 7 }, 4, new long[] { 3, 2 }, new long[] { 1, 1 }, new long[] { 1, 0 }, new long[] { 1, 1 }, 1, false),
            (new long[] { 2, 3, 5, 9 }, 4, new long[] { 1, 3 }, new long[] { 1, 1 }, new long[] { 0, 1 }, new long[] { 1, 1 }, 1, true),
            (new long[] { 1, 4, 9, 9 }, 4, new long[] { 3, 3 }, new long[] { 1, 1 }, new long[] { 2, 2 }, new long[] { 2, 2 }, 1, true),
            (new long[] { 2, 4, 11, 11 }, 6, new long[] { 3, 3 }, new long[] { 2, 2 }, new long[] { 1, 1 }, new long[] { 2, 2 }, 2, false),
        };
        var cases = new List<Conv2dSpec>();
        foreach (var c in configs)
            foreach (var dtype in DTypes)
                cases.Add(new Conv2dSpec(c.X, c.O, c.K, c.S, c.P, c.D, c.G, c.B, dtype));
        return cases;
    }

    // torch.nn.Conv2d.forward (padding_mode='zeros'): F.conv2d(input, weight, bias, stride, padding, dilation, groups)
    private static void RunConv2dCase(Utf8JsonWriter w, Conv2dSpec c)
    {
        long inChannels = c.XShape[1];
        var wShape = new[] { c.OutChannels, inChannels / c.Groups, c.Kernel[0], c.Kernel[1] };
        double bound = 1.0 / Math.Sqrt(wShape[1] * wShape[2] * wShape[3]);
        var weight = ((torch.rand(wShape, ScalarType.Float64) * 2.0 - 1.0) * bound).to_type(c.DType).detach().requires_grad_(true);
        Tensor? bias = c.Bias
            ? ((torch.rand(new[] { c.OutChannels }, ScalarType.Float64) * 2.0 - 1.0) * bound).to_type(c.DType).detach().requires_grad_(true)
            : null;
        var x = torch.randn(c.XShape, ScalarType.Float64).to_type(c.DType).detach().requires_grad_(true);

        var y = torch.nn.functional.conv2d(x, weight, bias, c.Stride, c.Padding, c.Dilation, c.Groups);
        var dy = torch.randn(y.shape, ScalarType.Float64).to_type(c.DType).detach();
        var inputs = bias is null ? new List<Tensor> { x, weight } : new List<Tensor> { x, weight, bias };
        var grads = torch.autograd.grad(new List<Tensor> { y }, inputs, new List<Tensor> { dy });
        CheckAgainstFloat64("Conv2d", inputs, dy, new[] { y }.Concat(grads).ToArray(),
            t => torch.nn.functional.conv2d(t[0], t[1], t.Length > 2 ? t[2] : null, c.Stride, c.Padding, c.Dilation, c.Groups));

        w.WriteStartObject();
        w.WriteString("name", $"Conv2d/x={ShapeName(c.XShape)}/w={ShapeName(wShape)}/stride={Pair(c.Stride)}/pad={Pair(c.Padding)}/"
            + $"dil={Pair(c.Dilation)}/groups={c.Groups}/{(c.Bias ? "bias" : "nobias")}/{DTypeName(c.DType)}");
        w.WriteString("dtype", DTypeName(c.DType));
        w.WriteNumber("inChannels", inChannels);
        w.WriteNumber("outChannels", c.OutChannels);
        WriteShape(w, "kernelSize", c.Kernel);
        WriteShape(w, "stride", c.Stride);
        WriteShape(w, "padding", c.Padding);
        WriteShape(w, "dilation", c.Dilation);
        w.WriteNumber("groups", c.Groups);
        w.WriteBoolean("bias", c.Bias);
        WriteTensor(w, "weight", weight);
        WriteTensor(w, "biasValue", bias);
        WriteTensor(w, "x", x);
        WriteTensor(w, "dy", dy);
        WriteTensor(w, "y", y);
        WriteTensor(w, "dx", grads[0]);
        WriteTensor(w, "dweight", grads[1]);
        WriteTensor(w, "dbias", bias is null ? null : grads[2]);
        w.WriteEndObject();
    }

    private static List<Pool2dSpec> BuildMaxPool2dCases()
    {
        // (x shape; kernel; stride; padding; ceil_mode)
        var configs = new (long[] X, long[] K, long[] S, long[] P, bool Ceil)[]
        {
            (new long[] { 2, 3, 8, 8 }, new long[] { 2, 2 }, new long[] { 2, 2 }, new long[] { 0, 0 }, false),
            (new long[] { 1, 3, 7, 7 }, new long[] { 2, 2 }, new long[] { 2, 2 }, new long[] { 0, 0 }, true),    // partial last window
            (new long[] { 2, 2, 7, 9 }, new long[] { 2, 2 }, new long[] { 1, 1 }, new long[] { 0, 0 }, false),   // yolov3-tiny size=2 stride=1
            (new long[] { 2, 2, 9, 9 }, new long[] { 3, 3 }, new long[] { 2, 2 }, new long[] { 1, 1 }, false),   // ResNet stem pool
            (new long[] { 1, 2, 8, 8 }, new long[] { 3, 3 }, new long[] { 2, 2 }, new long[] { 1, 1 }, true),
            (new long[] { 2, 2, 8, 7 }, new long[] { 3, 3 }, new long[] { 2, 2 }, new long[] { 0, 0 }, true),    // stride != kernel, ceil
            (new long[] { 1, 3, 6, 7 }, new long[] { 5, 5 }, new long[] { 1, 1 }, new long[] { 2, 2 }, false),   // SPP-like, same size
            (new long[] { 2, 2, 7, 6 }, new long[] { 3, 2 }, new long[] { 2, 1 }, new long[] { 1, 0 }, true),    // non-square
        };
        var cases = new List<Pool2dSpec>();
        foreach (var c in configs)
            foreach (var dtype in DTypes)
                cases.Add(new Pool2dSpec(true, c.X, c.K, c.S, c.P, c.Ceil, false, dtype, false));
        // duplicated maxima inside windows: x rounded to 1 decimal in [0, 1]; PyTorch's gradient goes to the first maximum
        cases.Add(new Pool2dSpec(true, new long[] { 2, 2, 6, 6 }, new long[] { 2, 2 }, new long[] { 2, 2 }, new long[] { 0, 0 }, false, false, ScalarType.Float32, true));
        cases.Add(new Pool2dSpec(true, new long[] { 1, 2, 7, 7 }, new long[] { 3, 3 }, new long[] { 2, 2 }, new long[] { 1, 1 }, true, false, ScalarType.Float32, true));
        cases.Add(new Pool2dSpec(true, new long[] { 1, 2, 6, 7 }, new long[] { 2, 2 }, new long[] { 1, 1 }, new long[] { 0, 0 }, false, false, ScalarType.Float64, true));
        return cases;
    }

    private static List<Pool2dSpec> BuildAvgPool2dCases()
    {
        // (x shape; kernel; stride; padding; ceil_mode; count_include_pad)
        var configs = new (long[] X, long[] K, long[] S, long[] P, bool Ceil, bool Include)[]
        {
            (new long[] { 2, 3, 8, 8 }, new long[] { 2, 2 }, new long[] { 2, 2 }, new long[] { 0, 0 }, false, true),
            (new long[] { 1, 3, 7, 7 }, new long[] { 2, 2 }, new long[] { 2, 2 }, new long[] { 0, 0 }, true, true),     // partial last window (clipped at the input)
            (new long[] { 2, 2, 7, 9 }, new long[] { 3, 3 }, new long[] { 1, 1 }, new long[] { 1, 1 }, false, true),
            (new long[] { 2, 2, 7, 9 }, new long[] { 3, 3 }, new long[] { 1, 1 }, new long[] { 1, 1 }, false, false),
            (new long[] { 1, 2, 6, 6 }, new long[] { 3, 3 }, new long[] { 2, 2 }, new long[] { 1, 1 }, true, true),     // last window runs past the padding
            (new long[] { 1, 2, 6, 6 }, new long[] { 3, 3 }, new long[] { 2, 2 }, new long[] { 1, 1 }, true, false),
            (new long[] { 2, 2, 8, 7 }, new long[] { 3, 2 }, new long[] { 2, 1 }, new long[] { 1, 1 }, true, true),     // non-square, past the padding
            (new long[] { 1, 3, 5, 7 }, new long[] { 5, 5 }, new long[] { 1, 1 }, new long[] { 2, 2 }, false, false),
            (new long[] { 2, 2, 9, 8 }, new long[] { 3, 3 }, new long[] { 2, 2 }, new long[] { 0, 0 }, true, true),     // stride != kernel, ceil
        };
        var cases = new List<Pool2dSpec>();
        foreach (var c in configs)
            foreach (var dtype in DTypes)
                cases.Add(new Pool2dSpec(false, c.X, c.K, c.S, c.P, c.Ceil, c.Include, dtype, false));
        return cases;
    }

    // torch.nn.MaxPool2d.forward: F.max_pool2d(input, kernel_size, stride, padding, dilation=1, ceil_mode);
    // torch.nn.AvgPool2d.forward: F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override=None)
    private static void RunPool2dCase(Utf8JsonWriter w, Pool2dSpec c)
    {
        var x64 = c.Ties
            ? torch.round(torch.rand(c.XShape, ScalarType.Float64) * 10.0) / 10.0
            : torch.randn(c.XShape, ScalarType.Float64);
        var x = x64.to_type(c.DType).detach().requires_grad_(true);
        var y = c.Max
            ? torch.nn.functional.max_pool2d(x, c.Kernel, c.Stride, c.Padding, new long[] { 1, 1 }, c.CeilMode)
            : torch.nn.functional.avg_pool2d(x, c.Kernel, c.Stride, c.Padding, c.CeilMode, c.CountIncludePad);
        var dy = torch.randn(y.shape, ScalarType.Float64).to_type(c.DType).detach();
        var grads = torch.autograd.grad(new List<Tensor> { y }, new List<Tensor> { x }, new List<Tensor> { dy });
        CheckAgainstFloat64(c.Max ? "MaxPool2d" : "AvgPool2d", new List<Tensor> { x }, dy, new[] { y, grads[0] },
            t => c.Max
                ? torch.nn.functional.max_pool2d(t[0], c.Kernel, c.Stride, c.Padding, new long[] { 1, 1 }, c.CeilMode)
                : torch.nn.functional.avg_pool2d(t[0], c.Kernel, c.Stride, c.Padding, c.CeilMode, c.CountIncludePad));

        string layer = c.Max ? "MaxPool2d" : "AvgPool2d";
        w.WriteStartObject();
        w.WriteString("name", $"{layer}/x={ShapeName(c.XShape)}/k={Pair(c.Kernel)}/stride={Pair(c.Stride)}/pad={Pair(c.Padding)}/"
            + (c.CeilMode ? "ceil" : "floor")
            + (c.Max ? "" : c.CountIncludePad ? "/includepad" : "/excludepad")
            + (c.Ties ? "/ties" : "")
            + $"/{DTypeName(c.DType)}");
        w.WriteString("dtype", DTypeName(c.DType));
        WriteShape(w, "kernelSize", c.Kernel);
        WriteShape(w, "stride", c.Stride);
        WriteShape(w, "padding", c.Padding);
        w.WriteBoolean("ceilMode", c.CeilMode);
        if (!c.Max) w.WriteBoolean("countIncludePad", c.CountIncludePad);
        WriteTensor(w, "x", x);
        WriteTensor(w, "dy", dy);
        WriteTensor(w, "y", y);
        WriteTensor(w, "dx", grads[0]);
        w.WriteEndObject();
    }

    // Guard against a wrong backend kernel: recomputes a float32 case (forward and autograd) in float64
    // from the same float32 inputs and dy, and fails if any result [y, grads...] is off by more than
    // 1e-4 * (1 + max |reference|). float64 cases pass through.
    private static void CheckAgainstFloat64(string layer, List<Tensor> inputs, Tensor dy, Tensor[] results, Func<Tensor[], Tensor> forward)
    {
        if (dy.dtype != ScalarType.Float32) return;
        var inputs64 = inputs.Select(t => t.detach().to_type(ScalarType.Float64).requires_grad_(true)).ToArray();
        var y64 = forward(inputs64);
        var grads64 = torch.autograd.grad(new List<Tensor> { y64 }, inputs64.ToList(), new List<Tensor> { dy.to_type(ScalarType.Float64) });
        var refs = new[] { y64 }.Concat(grads64).ToArray();
        for (int i = 0; i < refs.Length; i++)
        {
            double err = (results[i].detach().to_type(ScalarType.Float64) - refs[i]).abs().max().item<double>();
            double tol = 1e-4 * (1.0 + refs[i].abs().max().item<double>());
            if (!(err <= tol))
                throw new InvalidOperationException($"{layer}: float32 result {i} (0 = y, then gradients) is off from float64 by {err} (tolerance {tol})");
        }
    }

    // torch.backends.mkldnn.enabled, which TorchSharp 0.107 does not expose: at::globalContext().userEnabledMkldnn()
    // and setUserEnabledMkldnn(bool), called through their exported (Itanium-mangled) symbols in libtorch_cpu.
    private static class Mkldnn
    {
        [DllImport("torch_cpu", EntryPoint = "_ZN2at13globalContextEv")]
        private static extern IntPtr GlobalContext();

        [DllImport("torch_cpu", EntryPoint = "_ZNK2at7Context17userEnabledMkldnnEv")]
        [return: MarshalAs(UnmanagedType.U1)]
        private static extern bool UserEnabledMkldnn(IntPtr context);

        [DllImport("torch_cpu", EntryPoint = "_ZN2at7Context20setUserEnabledMkldnnEb")]
        private static extern void SetUserEnabledMkldnn(IntPtr context, [MarshalAs(UnmanagedType.U1)] bool enabled);

        public static bool Enabled
        {
            get => UserEnabledMkldnn(GlobalContext());
            set
            {
                SetUserEnabledMkldnn(GlobalContext(), value);
                if (UserEnabledMkldnn(GlobalContext()) != value) throw new InvalidOperationException("could not set mkldnn enabled");
            }
        }
    }

    private static void WriteTensor(Utf8JsonWriter w, string name, Tensor? t)
    {
        w.WritePropertyName(name);
        if (t is null)
        {
            w.WriteNullValue();
            return;
        }
        var c = t.detach().contiguous();
        byte[] bytes;
        if (c.dtype == ScalarType.Float32)
            bytes = MemoryMarshal.AsBytes<float>(c.data<float>().ToArray()).ToArray();
        else if (c.dtype == ScalarType.Float64)
            bytes = MemoryMarshal.AsBytes<double>(c.data<double>().ToArray()).ToArray();
        else
            throw new InvalidOperationException($"unexpected dtype {c.dtype}");
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("big-endian host");

        w.WriteStartObject();
        w.WritePropertyName("shape");
        w.WriteRawValue("[" + string.Join(", ", c.shape) + "]");
        w.WriteString("data", Convert.ToBase64String(bytes));
        w.WriteEndObject();
    }
}
