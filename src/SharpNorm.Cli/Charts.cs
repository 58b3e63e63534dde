using ScottPlot;
using SkiaSharp;

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
        loss.Title($"Loss (cross-entropy), {title}");
        loss.YLabel("loss");

        AddCurves(accuracy, epochs, history.Select(m => 100 * m.TrainAccuracy), history.Select(m => 100 * m.TestAccuracy));
        accuracy.Title($"Accuracy, {title}");
        accuracy.YLabel("accuracy (%)");

        string? font = SansFont.Value;
        foreach (Plot plot in new[] { loss, accuracy })
        {
            if (font is not null) plot.Font.Set(font);
            plot.XLabel("epoch");
            plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { IntegerTicksOnly = true };
        }
        // Loss falls and accuracy rises: their legends go where the curves end up least.
        loss.ShowLegend(Alignment.UpperRight);
        accuracy.ShowLegend(Alignment.LowerRight);
        string temporary = path + ".partial.png";
        multiplot.SavePng(temporary, 1200, 500);
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>
    /// A sans-serif family the system has. ScottPlot's own pick falls back to Skia's default typeface, which on Debian
    /// (SkiaSharp without fontconfig) is DejaVu Serif.
    /// </summary>
    private static readonly Lazy<string?> SansFont = new(() =>
    {
        foreach (string name in new[] { "DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial", "Helvetica", "Segoe UI" })
            if (string.Equals(SKFontManager.Default.MatchFamily(name)?.FamilyName, name, StringComparison.OrdinalIgnoreCase)) return name;
        return null;
    });

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
