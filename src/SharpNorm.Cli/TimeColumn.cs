using Spectre.Console;
using Spectre.Console.Rendering;

namespace SharpNorm.Cli;

/// <summary>A progress column "0:40 left" (Spectre's RemainingTimeColumn says neither what it is nor fits minutes).</summary>
internal sealed class TimeColumn : ProgressColumn
{
    protected override bool NoWrap => true;

    public override IRenderable Render(RenderOptions options, ProgressTask task, TimeSpan deltaTime)
    {
        string left = task.IsFinished ? "0:00" : task.RemainingTime is TimeSpan remaining ? TrainCommand.FormatDuration(remaining) : "-:--";
        return new Text($"{left} left", new Style(Color.Grey));
    }
}
