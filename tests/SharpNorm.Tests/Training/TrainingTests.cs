using SharpNorm.Data;
using SharpNorm.Layers;
using SharpNorm.Models;
using SharpNorm.Tensors;
using SharpNorm.Training;
using Xunit;

namespace SharpNorm.Tests.Training;

/// <summary>The training machinery end to end on small synthetic data, and the optimizers against their update rules.</summary>
public class TrainingTests
{
    private static ImageDataset Synthetic(int count, int seed)
    {
        // Three classes that differ in where the bright square is: learnable, not trivially by the mean.
        var random = new Random(seed);
        var pixels = new byte[count * 28 * 28];
        var labels = new byte[count];
        for (int i = 0; i < count; i++)
        {
            labels[i] = (byte)(i % 3);
            int top = 2 + 8 * labels[i] + random.Next(3), left = 4 + random.Next(12);
            for (int r = 0; r < 28; r++)
                for (int c = 0; c < 28; c++)
                    pixels[i * 784 + r * 28 + c] = (byte)(random.Next(40) + (r >= top && r < top + 6 && c >= left && c < left + 6 ? 180 : 0));
        }
        return new ImageDataset(pixels, labels, 28, 28, 3);
    }

    [Theory]
    [InlineData(NormChoice.Batch)]
    [InlineData(NormChoice.Group)]
    [InlineData(NormChoice.None)]
    public void ShortTrainingDrivesTheLossDown(NormChoice norm)
    {
        ImageDataset data = Synthetic(96, 1);
        var (mean, std) = data.PixelStatistics();
        var model = DarkNetClassifier.Create<float>(norm, classes: 3, seed: 2);
        var loader = new BatchLoader<float>(data, 32, shuffle: true, seed: 3, mean, std);
        // Without normalization plain SGD is touchy about its step (which is why norm layers exist): Adam-style steps instead, and more of them.
        Optimizer<float> optimizer = norm == NormChoice.None
            ? new AdamW<float>(model.Parameters, learningRate: 2e-3, weightDecay: 0)
            : new Sgd<float>(model.Parameters, 0.05, momentum: 0.9);
        var trainer = new Trainer<float>(model, optimizer, null, classes: 3);
        double first = trainer.TrainEpoch(loader, 0).Loss;
        EpochResult last = trainer.TrainEpoch(loader, 1);
        for (int epoch = 2; epoch < (norm == NormChoice.None ? 16 : 8); epoch++) last = trainer.TrainEpoch(loader, epoch);
        Assert.True(last.Loss < 0.5 * first, $"loss {first:F4} -> {last.Loss:F4}");
        EpochResult test = trainer.Evaluate(new BatchLoader<float>(Synthetic(60, 9), 30, false, 0, mean, std));
        Assert.True(test.Accuracy > 0.8, $"held-out accuracy {test.Accuracy:P1}");
        Assert.Equal(60, Enumerable.Range(0, 3).Sum(i => Enumerable.Range(0, 3).Sum(j => test.Confusion![i, j])));
    }

    [Fact]
    public void DarkNetClassifierStaysUnderAMillionParameters()
    {
        foreach (NormChoice norm in Enum.GetValues<NormChoice>())
        {
            Sequential<float> model = DarkNetClassifier.Create<float>(norm);
            Assert.InRange(DarkNetClassifier.ParameterCount(model), 100_000, 1_000_000);
            Assert.Equal(new nint[] { 2, 10 }, model.OutputShape([2, 1, 28, 28]));
        }
    }

    private static Parameter<double> NewParameter(double[] values, double[] gradient)
    {
        var layer = new Linear<double>(values.Length, 1, bias: false);
        values.CopyTo(TensorData.Flat(layer.Weight.Value));
        gradient.CopyTo(TensorData.Flat(layer.Weight.Gradient));
        return layer.Weight;
    }

    [Fact]
    public void SgdFollowsPyTorchsUpdateRule()
    {
        // torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True), two steps with gradient g:
        // step 1: d = g + 0.01 p; buf = d; d = d + 0.9 buf; p -= 0.1 d. Step 2 likewise with buf = 0.9 buf + d.
        double p = 1.0, g = 0.5, buf;
        Parameter<double> parameter = NewParameter([p], [g]);
        var sgd = new Sgd<double>([parameter], 0.1, momentum: 0.9, weightDecay: 0.01, nesterov: true);
        sgd.Step();
        double d = g + 0.01 * p;
        buf = d;
        p -= 0.1 * (d + 0.9 * buf);
        Assert.Equal(p, TensorData.Flat(parameter.Value)[0], 1e-15);
        sgd.Step();
        d = g + 0.01 * p;
        buf = 0.9 * buf + d;
        p -= 0.1 * (d + 0.9 * buf);
        Assert.Equal(p, TensorData.Flat(parameter.Value)[0], 1e-15);
    }

    [Fact]
    public void AdamWFollowsPyTorchsUpdateRule()
    {
        double p = 2.0, m = 0, v = 0;
        double[] gradients = [0.3, -0.1, 0.7];
        Parameter<double> parameter = NewParameter([p], [0]);
        var adam = new AdamW<double>([parameter], learningRate: 0.01, weightDecay: 0.1);
        for (int t = 1; t <= 3; t++)
        {
            double g = gradients[t - 1];
            TensorData.Flat(parameter.Gradient)[0] = g;
            adam.Step();
            p *= 1 - 0.01 * 0.1;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            p -= 0.01 / (1 - Math.Pow(0.9, t)) * m / (Math.Sqrt(v) / Math.Sqrt(1 - Math.Pow(0.999, t)) + 1e-8);
            Assert.Equal(p, TensorData.Flat(parameter.Value)[0], 1e-14);
        }
    }

    [Fact]
    public void SchedulesFollowPyTorch()
    {
        // OneCycleLR(max_lr=1, total_steps=10, pct_start=0.3): starts at 1/25, peaks at step 2, ends at 1/25/1e4.
        var oneCycle = new OneCycleSchedule(1.0, 10);
        Assert.Equal(0.04, oneCycle.LearningRate(0), 1e-12);
        Assert.Equal(1.0, oneCycle.LearningRate(2), 1e-12);
        Assert.Equal(4e-6, oneCycle.LearningRate(9), 1e-12);
        Assert.Equal(1.0, new OneCycleSchedule(1.0, 4, pctStart: 0.25).LearningRate(0)); // warm-up ending at step 0
        var cosine = new CosineSchedule(0.1, 100, warmupSteps: 10);
        Assert.Equal(0.01, cosine.LearningRate(0), 1e-12);
        Assert.Equal(0.1, cosine.LearningRate(10), 1e-12);
        Assert.Equal(0.05, cosine.LearningRate(55), 1e-12);
        Assert.Throws<ArgumentOutOfRangeException>(() => new CosineSchedule(0.1, 10, warmupSteps: 10));
    }
}
