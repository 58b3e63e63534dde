using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Text;
using SharpNorm.Layers;
using SharpNorm.Models;
using SharpNorm.Serialization;
using SharpNorm.Tensors;
using Xunit;

namespace SharpNorm.Tests.Training;

/// <summary>Checkpoints in the safetensors format: layout, round trip, and mismatches.</summary>
public class CheckpointTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("sharpnorm-ckpt-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [Fact]
    public void SavingThenLoadingGivesIdenticalOutputs()
    {
        Sequential<float> trained = DarkNetClassifier.Create<float>(NormChoice.Batch, seed: 1);
        var x = new Support.Gaussian(2).Tensor<float>([4, 1, 28, 28]);
        trained.Forward(x); // updates running statistics and the batch count
        trained.Forward(x);
        trained.Training = false;
        float[] expected = trained.Forward(x).ToArray();
        string path = Path.Combine(_directory, "model.safetensors");
        Checkpoint.Save(path, trained, new Dictionary<string, string> { ["epochs"] = "3" });

        Sequential<float> fresh = DarkNetClassifier.Create<float>(NormChoice.Batch, seed: 99);
        fresh.Training = false;
        Assert.NotEqual(expected, fresh.Forward(x).ToArray());
        Dictionary<string, string> metadata = Checkpoint.Load(path, fresh);
        Assert.Equal("3", metadata["epochs"]);
        Assert.Equal(expected, fresh.Forward(x).ToArray());
        Assert.Equal(2, ((BatchNorm<float>)fresh[1]).NumBatchesTracked);
    }

    [Fact]
    public void FileLayoutIsSafetensors()
    {
        var model = new Sequential<float>(new Linear<float>(2, 3), new BatchNorm<float>(3));
        string path = Path.Combine(_directory, "small.safetensors");
        Checkpoint.Save(path, model);
        byte[] bytes = File.ReadAllBytes(path);
        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0, (8 + headerLength) % 8);
        string header = Encoding.UTF8.GetString(bytes, 8, (int)headerLength);
        Assert.Contains("\"0.weight\":{\"dtype\":\"F32\",\"shape\":[3,2],\"data_offsets\":[0,24]}", header);
        Assert.Contains("\"1.num_batches_tracked\":{\"dtype\":\"I64\",\"shape\":[]", header);
        // 0.weight (24 bytes), 0.bias (12), 1.weight, 1.bias, 1.running_mean, 1.running_var (12 each), count (8).
        Assert.Equal(8 + headerLength + 24 + 12 * 5 + 8, bytes.Length);
        Assert.Equal(
            ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"],
            Checkpoint.StateDict(model).Select(e => e.Name));
    }

    [Fact]
    public void AMismatchedCheckpointListsEveryMismatchAndChangesNothing()
    {
        string path = Path.Combine(_directory, "other.safetensors");
        Checkpoint.Save(path, new Sequential<float>(new Linear<float>(2, 3), new BatchNorm<float>(4)));
        var model = new Sequential<float>(new Linear<float>(2, 5), new BatchNorm<float>(4), new Linear<float>(4, 1));
        float[] before = TensorData.Flat(((Linear<float>)model[0]).Weight.Value).ToArray();
        var e = Assert.Throws<InvalidDataException>(() => Checkpoint.Load(path, model));
        Assert.Contains("0.weight: shape [3, 2], expected [5, 2]", e.Message);
        Assert.Contains("0.bias: shape [3], expected [5]", e.Message);
        Assert.Contains("missing 2.weight", e.Message);
        Assert.Contains("missing 2.bias", e.Message);
        Assert.Equal(before, TensorData.Flat(((Linear<float>)model[0]).Weight.Value).ToArray());

        var doubles = new Sequential<double>(new Linear<double>(2, 3), new BatchNorm<double>(4));
        Assert.Contains("dtype F32, expected F64", Assert.Throws<InvalidDataException>(() => Checkpoint.Load(path, doubles)).Message);

        byte[] bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^5]);
        Assert.Throws<InvalidDataException>(() => Checkpoint.Load(path, model));
        File.WriteAllBytes(path, "not a checkpoint at all"u8.ToArray());
        Assert.Contains("header length", Assert.Throws<InvalidDataException>(() => Checkpoint.Load(path, model)).Message);
        Assert.Throws<FileNotFoundException>(() => Checkpoint.Load(Path.Combine(_directory, "absent.safetensors"), model));
    }
}
