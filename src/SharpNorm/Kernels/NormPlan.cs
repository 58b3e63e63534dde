namespace SharpNorm.Kernels;

/// <summary>
/// How one problem is cut into work: <em>units</em>, the pieces whose sums are computed separately and added in a
/// fixed order, and <em>segments</em>, sets of units that hold whole statistics groups. The cut depends only on the
/// geometry, never on the thread count, so every result is bit-identical for any number of threads.
/// </summary>
/// <remarks>
/// Run shape: slot k = (a, b, j) has R runs of S contiguous elements; a unit is a few whole runs of one k, or a slice
/// of one long run. A segment is one group (a, b): its J slots. Column shape (S = 1): a unit is a band of rows of one
/// a, across the whole row of W = B*J slots; a segment is one a.
/// </remarks>
internal readonly struct NormPlan
{
    /// <summary>Elements per unit to aim at: big enough to amortize scheduling, small enough to share out.</summary>
    internal const int UnitElements = 1 << 16;
    /// <summary>Rows a column-shape unit adds up in T before moving the partial sums into double.</summary>
    internal const int RowBlock = 64;
    /// <summary>Elements per chunk handed to a thread.</summary>
    private const int ChunkElements = 1 << 15;
    /// <summary>With at least this many segments, each segment runs all its passes on one thread, while in cache.</summary>
    private const int MinSegmentsForSegmentParallel = 16;

    /// <summary>Rows of the row shape whose parameter-gradient sums are taken together (in T, then into one double partial).</summary>
    internal const int RowsPerBand = 32;
    /// <summary>Longest piece of a row summed on its own: a row's totals are its pieces' sums, added in order.</summary>
    internal const int RowPieceElements = 1 << 14;

    public NormPlan(in NormGeometry g)
    {
        Geometry = g;
        IsRow = g.IsRowShape;
        if (IsRow)
        {
            // Row shape: rows are independent for the statistics and dx; dgamma and dbeta are summed over the rows
            // of a band, then over the bands in order.
            BandCount = (g.A + RowsPerBand - 1) / RowsPerBand;
            SegmentCount = g.A;
            SlotsPerSegment = g.J;
            UnitCount = BandCount;
            UnitsPerSlot = 1;
            UnitsPerSegment = 1;
            long rowElements = g.J;
            SegmentsPerChunk = (int)Math.Clamp(ChunkElements / rowElements, 1, g.A);
            UnitsPerChunk = (int)Math.Clamp(ChunkElements / (rowElements * RowsPerBand), 1, BandCount);
            return;
        }
        IsColumn = g.IsColumnShape;
        if (IsColumn)
        {
            int width = g.B * g.J;
            int rows = Math.Max(RowBlock, (UnitElements / Math.Max(width, 1) + RowBlock - 1) / RowBlock * RowBlock);
            RowsPerUnit = Math.Min(rows, g.R);
            UnitsPerSlot = (g.R + RowsPerUnit - 1) / RowsPerUnit;
            UnitsPerSegment = UnitsPerSlot;
            SlotsPerSegment = width;
            SegmentCount = g.A;
            UnitCount = g.A * UnitsPerSlot;
        }
        else if (g.S <= UnitElements)
        {
            RunsPerUnit = Math.Max(1, Math.Min(g.R, UnitElements / g.S));
            SlicesPerRun = 1;
            SliceLength = g.S;
            UnitsPerSlot = (g.R + RunsPerUnit - 1) / RunsPerUnit;
        }
        else
        {
            RunsPerUnit = 1;
            SlicesPerRun = (g.S + UnitElements - 1) / UnitElements;
            SliceLength = (g.S + SlicesPerRun - 1) / SlicesPerRun;
            UnitsPerSlot = g.R * SlicesPerRun;
        }
        if (!IsColumn)
        {
            SlotsPerSegment = g.J;
            UnitsPerSegment = g.J * UnitsPerSlot;
            SegmentCount = g.GroupCount;
            UnitCount = g.CoefficientCount * UnitsPerSlot;
        }

        // Element-wise passes outside segments walk runs in storage order, whatever slot they belong to.
        long totalRuns = (long)g.A * g.R * g.B * g.J;
        if (IsColumn)
        {
            ApplyUnitCount = UnitCount;
            ApplyUnitsPerChunk = 0; // set below, as UnitsPerChunk
        }
        else if (g.S <= UnitElements)
        {
            ApplyRunsPerUnit = Math.Max(1, UnitElements / g.S);
            ApplySlicesPerRun = 1;
            ApplySliceLength = g.S;
            ApplyUnitCount = (int)((totalRuns + ApplyRunsPerUnit - 1) / ApplyRunsPerUnit);
        }
        else
        {
            ApplyRunsPerUnit = 1;
            ApplySlicesPerRun = SlicesPerRun;
            ApplySliceLength = SliceLength;
            ApplyUnitCount = checked((int)(totalRuns * SlicesPerRun));
        }

        long segmentElements = g.Length / Math.Max(SegmentCount, 1);
        long unitElements = g.Length / Math.Max(UnitCount, 1);
        SegmentParallel = SegmentCount >= MinSegmentsForSegmentParallel;
        SegmentsPerChunk = (int)Math.Clamp(ChunkElements / Math.Max(segmentElements, 1), 1, SegmentCount);
        UnitsPerChunk = (int)Math.Clamp(ChunkElements / Math.Max(unitElements, 1), 1, UnitCount);
        ApplyUnitsPerChunk = IsColumn
            ? UnitsPerChunk
            : (int)Math.Clamp(ChunkElements / Math.Max(g.Length / Math.Max(ApplyUnitCount, 1), 1), 1, ApplyUnitCount);
    }

    public NormGeometry Geometry { get; }
    public bool IsColumn { get; }
    public bool IsRow { get; }

    // Row shape
    /// <summary>Bands of <see cref="RowsPerBand"/> rows (the last may be shorter).</summary>
    public int BandCount { get; }

    // Run shape
    public int RunsPerUnit { get; }
    public int SlicesPerRun { get; }
    public int SliceLength { get; }

    // Column shape
    public int RowsPerUnit { get; }

    /// <summary>Units per slot k (run shape) or per a (column shape).</summary>
    public int UnitsPerSlot { get; }
    public int UnitCount { get; }
    public int UnitsPerSegment { get; }
    public int SegmentCount { get; }
    /// <summary>Slots k of one segment: J (run shape, one group) or W = B*J (column shape, all groups of one a).</summary>
    public int SlotsPerSegment { get; }
    public bool SegmentParallel { get; }
    public int SegmentsPerChunk { get; }
    public int UnitsPerChunk { get; }

    /// <summary>Run shape where one unit is one whole group (J = 1): segments take a lean path with no partials.</summary>
    public bool WholeGroupUnits => !IsColumn && !IsRow && Geometry.J == 1 && UnitsPerSlot == 1;

    // Element-wise passes in storage order (run shape): units of whole runs, or slices of one long run.
    public int ApplyRunsPerUnit { get; }
    public int ApplySlicesPerRun { get; }
    public int ApplySliceLength { get; }
    public int ApplyUnitCount { get; }
    public int ApplyUnitsPerChunk { get; }


    /// <summary>Partial sums held per unit: one per run-shape unit, one per column of a column-shape unit.</summary>
    public int PartialCount => IsColumn || IsRow ? UnitCount * SlotsPerSegment : UnitCount;
}
