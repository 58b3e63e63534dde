using System.Globalization;
using System.Text;

namespace SharpNorm.Cli;

/// <summary>The files a training run leaves besides its checkpoint.</summary>
internal static class Results
{
    public const string MetricsHeader = "epoch,train_loss,train_acc,test_loss,test_acc,epoch_seconds,lr_end";

    /// <summary>metrics.csv: one row per epoch, accuracies as fractions, written whole (through a temporary file).</summary>
    public static void WriteMetrics(string path, IEnumerable<EpochMetrics> rows)
    {
        var text = new StringBuilder(MetricsHeader).Append('\n');
        foreach (EpochMetrics m in rows)
            text.Append(CultureInfo.InvariantCulture,
                $"{m.Epoch},{m.TrainLoss:F6},{m.TrainAccuracy:F6},{m.TestLoss:F6},{m.TestAccuracy:F6},{m.Seconds:F3},{m.LearningRateEnd:G6}\n");
        string temporary = path + ".partial";
        File.WriteAllText(temporary, text.ToString());
        File.Move(temporary, path, overwrite: true);
    }
}
