using ScottPlot;

namespace SharpNorm.Cli;

/// <summary>curves.png: loss and accuracy per epoch, train and test, side by side (ScottPlot, rendered by SkiaSharp).</summary>
internal static class Charts
{
    public static void WriteCurves(string path, IReadOnlyList<EpochMetrics> history, string title)
    {
        double[] epochs = history.Select(m => (double)m.Epoch).ToArray();
        var multiplot = new Multiplot();
        multiplot.AddPlots(2);
        multiplot.Layout = new ScottPlot.MultiplotLayouts.Columns();
        Plot loss = multiplot.GetPlot(0), accuracy = multiplot.GetPlot(1);

        AddCurves(loss, epochs, history.Select(m => m.TrainLoss), history.Select(m => m.TestLoss));
        loss.Title("Loss (cross-entropy)");
        loss.YLabel("loss");

        AddCurves(accuracy, epochs, history.Select(m => 100 * m.TrainAccuracy), history.Select(m => 100 * m.TestAccuracy));
        accuracy.Title("Accuracy");
        accuracy.YLabel("accuracy (%)");

        foreach (Plot plot in new[] { loss, accuracy })
        {
            plot.XLabel($"epoch  ({title})");
            plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { IntegerTicksOnly = true };
            plot.ShowLegend(Alignment.UpperRight);
        }
        string temporary = path + ".partial.png";
        multiplot.SavePng(temporary, 1200, 500);
        File.Move(temporary, path, overwrite: true);
    }

    private static void AddCurves(Plot plot, double[] epochs, IEnumerable<double> train, IEnumerable<double> test)
    {
        var trainLine = plot.Add.Scatter(epochs, train.ToArray());
        trainLine.LegendText = "train";
        trainLine.LineWidth = 2;
        trainLine.MarkerSize = 6;
        var testLine = plot.Add.Scatter(epochs, test.ToArray());
        testLine.LegendText = "test";
        testLine.LineWidth = 2;
        testLine.MarkerSize = 6;
        if (epochs.Length == 1) plot.Axes.SetLimitsX(0.5, 1.5);
    }
}
