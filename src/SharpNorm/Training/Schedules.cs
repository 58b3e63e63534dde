namespace SharpNorm.Training;

/// <summary>A learning rate per step (0-based), set on the optimizer before each step.</summary>
public interface ILearningRateSchedule
{
    double LearningRate(long step);
}

/// <summary>
/// Linear warm-up from 0 over <c>warmupSteps</c>, then cosine annealing from the base rate down to <c>minimum</c> at
/// <c>totalSteps</c> (torch.optim.lr_scheduler.CosineAnnealingLR after a LinearLR warm-up).
/// </summary>
public sealed class CosineSchedule : ILearningRateSchedule
{
    public CosineSchedule(double baseRate, long totalSteps, long warmupSteps = 0, double minimum = 0)
    {
        if (!(baseRate > 0) || !double.IsFinite(baseRate)) throw new ArgumentOutOfRangeException(nameof(baseRate), baseRate, "baseRate must be > 0.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(totalSteps);
        if (warmupSteps < 0 || warmupSteps >= totalSteps)
            throw new ArgumentOutOfRangeException(nameof(warmupSteps), warmupSteps, $"warmupSteps must be in [0, {totalSteps}).");
        if (!(minimum >= 0 && minimum <= baseRate)) throw new ArgumentOutOfRangeException(nameof(minimum), minimum, "minimum must be in [0, baseRate].");
        (BaseRate, TotalSteps, WarmupSteps, Minimum) = (baseRate, totalSteps, warmupSteps, minimum);
    }

    public double BaseRate { get; }
    public long TotalSteps { get; }
    public long WarmupSteps { get; }
    public double Minimum { get; }

    public double LearningRate(long step)
    {
        if (step < WarmupSteps) return BaseRate * (step + 1) / WarmupSteps;
        double progress = Math.Min(1, (double)(step - WarmupSteps) / (TotalSteps - WarmupSteps));
        return Minimum + (BaseRate - Minimum) * 0.5 * (1 + Math.Cos(Math.PI * progress));
    }
}

/// <summary>
/// One-cycle policy, the twin of torch.optim.lr_scheduler.OneCycleLR (cosine annealing): from maxRate/divFactor up
/// to maxRate over the first pctStart of the steps, then down to maxRate/(divFactor*finalDivFactor).
/// </summary>
public sealed class OneCycleSchedule : ILearningRateSchedule
{
    public OneCycleSchedule(double maxRate, long totalSteps, double pctStart = 0.3, double divFactor = 25, double finalDivFactor = 1e4)
    {
        if (!(maxRate > 0) || !double.IsFinite(maxRate)) throw new ArgumentOutOfRangeException(nameof(maxRate), maxRate, "maxRate must be > 0.");
        if (totalSteps < 2) throw new ArgumentOutOfRangeException(nameof(totalSteps), totalSteps, "totalSteps must be at least 2.");
        if (!(pctStart > 0 && pctStart < 1)) throw new ArgumentOutOfRangeException(nameof(pctStart), pctStart, "pctStart must be in (0, 1).");
        if (!(divFactor > 0) || !(finalDivFactor > 0)) throw new ArgumentOutOfRangeException(nameof(divFactor), "divFactor and finalDivFactor must be > 0.");
        (MaxRate, TotalSteps, PctStart) = (maxRate, totalSteps, pctStart);
        InitialRate = maxRate / divFactor;
        FinalRate = InitialRate / finalDivFactor;
    }

    public double MaxRate { get; }
    public long TotalSteps { get; }
    public double PctStart { get; }
    public double InitialRate { get; }
    public double FinalRate { get; }

    public double LearningRate(long step)
    {
        // PyTorch's phase ends: pctStart*total - 1 and total - 1.
        double upEnd = PctStart * TotalSteps - 1, downEnd = TotalSteps - 1;
        step = Math.Clamp(step, 0, TotalSteps - 1);
        // A warm-up that ends at step 0 (pctStart * totalSteps <= 1) starts at the peak; PyTorch divides by zero there.
        if (upEnd <= 0 && step == 0) return MaxRate;
        return step <= upEnd
            ? Anneal(InitialRate, MaxRate, step / upEnd)
            : Anneal(MaxRate, FinalRate, (step - upEnd) / (downEnd - upEnd));
    }

    private static double Anneal(double start, double end, double fraction) => end + (start - end) / 2 * (Math.Cos(Math.PI * fraction) + 1);
}
