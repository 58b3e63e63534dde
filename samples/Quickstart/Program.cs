// SharpNorm's quickstart, also the NativeAOT sample: build a small convolutional network, train it a few steps, save
// it, load it into a fresh copy, run it, export it to ONNX and import it back, and all-reduce across two in-process
// ranks. It exits non-zero if any result disagrees, so CI can run it published with PublishAot=true.
using System.Numerics.Tensors;
using SharpNorm.Distributed;
using SharpNorm.Layers;
using SharpNorm.Onnx;
using SharpNorm.Serialization;
using SharpNorm.Training;

const int Batch = 32, Size = 8, Classes = 4, Steps = 20;

static Sequential<float> CreateModel() => new(
    new Conv2d<float>(1, 8, 3, padding: 1, bias: false, random: new Random(1)),
    new BatchNorm<float>(8),
    new LeakyReLU<float>(),
    new MaxPool2d<float>(2),
    new Flatten<float>(),
    new Linear<float>(8 * (Size / 2) * (Size / 2), Classes, random: new Random(2)));

// A task a small network learns in a few steps: the label is the quadrant that holds the bright square.
var rng = new Random(3);
var images = new float[Batch * Size * Size];
var labels = new int[Batch];
for (int n = 0; n < Batch; n++)
{
    labels[n] = rng.Next(Classes);
    int top = labels[n] / 2 * (Size / 2), left = labels[n] % 2 * (Size / 2);
    for (int i = 0; i < Size * Size; i++) images[n * Size * Size + i] = (float)(rng.NextDouble() * 0.2);
    for (int y = 1; y < 3; y++)
        for (int x = 1; x < 3; x++) images[n * Size * Size + (top + y) * Size + left + x] += 1f;
}
Tensor<float> input = Tensor.Create(images, [Batch, 1, Size, Size]);

// Train: forward, loss, backward through every layer, SGD step.
Sequential<float> model = CreateModel();
var loss = new CrossEntropyLoss<float>();
var sgd = new Sgd<float>(model.Parameters, 0.02, momentum: 0.9);
double first = 0, last = 0;
for (int step = 0; step < Steps; step++)
{
    Tensor<float> logits = model.Forward(input);
    last = loss.Forward(logits, labels);
    if (step == 0) first = last;
    sgd.ZeroGrad();
    model.Gradient(input, loss.Backward(logits, labels));
    sgd.Step();
}
Console.WriteLine($"trained {Steps} steps: loss {first:G4} -> {last:G4}");
Require(last < first / 2, "the loss fell by half");

// Save, load into a fresh model, and run both in eval mode: the same numbers, bit for bit.
string folder = Path.Combine(Path.GetTempPath(), $"sharpnorm-quickstart-{Environment.ProcessId}");
Directory.CreateDirectory(folder);
string checkpoint = Path.Combine(folder, "model.safetensors");
Checkpoint.Save(checkpoint, model);
Sequential<float> loaded = CreateModel();
Checkpoint.Load(checkpoint, loaded);
model.Training = loaded.Training = false;
float[] expected = model.Forward(input).ToArray();
float[] actual = loaded.Forward(input).ToArray();
Require(expected.AsSpan().SequenceEqual(actual), "the loaded model gives the saved model's outputs");
int correct = CrossEntropyLoss<float>.CountCorrect(loaded.Forward(input), labels);
Console.WriteLine($"saved and loaded {checkpoint}: outputs identical, {correct}/{Batch} correct");

// ONNX: export, import, run.
string onnx = Path.Combine(folder, "model.onnx");
OnnxExport.Save(model, [Batch, 1, Size, Size], onnx);
Graph<float> imported = OnnxImport.Load(onnx);
float[] fromOnnx = imported.Forward(input).ToArray();
float worst = 0;
for (int i = 0; i < expected.Length; i++) worst = MathF.Max(worst, MathF.Abs(expected[i] - fromOnnx[i]));
Console.WriteLine($"exported and imported {onnx}: largest difference {worst:G3}");
Require(worst < 1e-4f, "the imported ONNX model gives the model's outputs");

// Two ranks (threads) all-reduce their gradients as data-parallel training does across mpirun's processes.
var sums = new float[2];
InProcessCommunicator.Run(2, communicator =>
{
    Span<float> values = [communicator.Rank + 1f, 10f * (communicator.Rank + 1)];
    communicator.AllReduce(values);
    if (communicator.Rank == 0) values.CopyTo(sums);
});
Console.WriteLine($"all-reduced across 2 ranks: {sums[0]}, {sums[1]}");
Require(sums[0] == 3f && sums[1] == 30f, "the all-reduce sums both ranks' values");

Directory.Delete(folder, recursive: true);
Console.WriteLine("quickstart: all checks passed");

static void Require(bool condition, string what)
{
    if (condition) return;
    Console.Error.WriteLine($"quickstart: check failed: {what}");
    Environment.Exit(1);
}
