namespace SharpNorm.Darknet;

/// <summary>A box by its centre and size, relative to the image (0..1) unless said otherwise.</summary>
public readonly record struct DarknetBox(float X, float Y, float Width, float Height)
{
    /// <summary>darknet's box_iou: intersection over union.</summary>
    public static float Iou(DarknetBox a, DarknetBox b)
    {
        static float Overlap(float x1, float w1, float x2, float w2) =>
            MathF.Min(x1 + w1 / 2, x2 + w2 / 2) - MathF.Max(x1 - w1 / 2, x2 - w2 / 2);
        float w = Overlap(a.X, a.Width, b.X, b.Width), h = Overlap(a.Y, a.Height, b.Y, b.Height);
        float intersection = w < 0 || h < 0 ? 0 : w * h;
        float union = a.Width * a.Height + b.Width * b.Height - intersection;
        return union > 0 ? intersection / union : 0;
    }
}

/// <summary>One box found by a [yolo] layer: where, how sure that something is there, and each class's probability (0 below the threshold or suppressed).</summary>
public sealed record YoloDetection(DarknetBox Box, float Objectness, float[] Probabilities, int Layer);

/// <summary>
/// Turns [yolo], [region] and [detection] outputs into boxes as darknet's test_detector does: get_yolo_detections,
/// get_region_detections or get_detection_detections (objectness above the threshold; class probability = objectness x
/// class score, kept above the threshold), correct_yolo_boxes (undo the letterbox), then do_nms_sort (per class, boxes overlapping a more probable one by more than the NMS threshold are
/// suppressed).
/// </summary>
public static class YoloDetector
{
    /// <param name="network">A network after <see cref="DarknetNetwork.Forward"/>.</param>
    /// <param name="image">Which image of the batch.</param>
    /// <param name="imageHeight">The original image's height (before the letterbox).</param>
    /// <param name="imageWidth">The original image's width.</param>
    /// <param name="threshold">darknet's -thresh (0.5 by default in darknet detect).</param>
    /// <param name="nmsThreshold">IoU above which a less probable box of the same class is suppressed (darknet: 0.45).</param>
    /// <param name="letterboxed">Whether the input was letterboxed (darknet's default); false for a plain resize.</param>
    public static List<YoloDetection> Detect(DarknetNetwork network, int image, int imageHeight, int imageWidth,
        float threshold = 0.5f, float nmsThreshold = 0.45f, bool letterboxed = true)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentOutOfRangeException.ThrowIfNegative(image);
        var heads = new List<(int, DarknetLayerInfo, object, ReadOnlyMemory<float>)>();
        foreach (int layer in network.OutputLayers)
        {
            DarknetLayerInfo info = network.Layers[layer];
            object head = (object?)network.Yolo(layer) ?? (object?)network.Region(layer) ?? network.Detection(layer)
                ?? throw new InvalidOperationException($"Layer {layer} ({info.Type}) is not a [yolo], [region] or [detection] layer: this network is not a detector.");
            int perImage = checked(info.Channels * info.Height * info.Width);
            ReadOnlySpan<float> all = network.Output(layer);
            if ((long)(image + 1) * perImage > all.Length) throw new ArgumentOutOfRangeException(nameof(image), image, "No such image in the last batch.");
            heads.Add((layer, info, head, all.Slice(image * perImage, perImage).ToArray()));
        }
        return Decode(heads, network.InputHeight, network.InputWidth, imageHeight, imageWidth, threshold, nmsThreshold, letterboxed);
    }

    /// <summary>
    /// Boxes from a darknet detector's head outputs computed elsewhere (an exported ONNX model, one image): the heads
    /// are read from the cfg (its [yolo], [region] and [detection] layers, in order), <paramref name="outputs"/> holds
    /// each head's values.
    /// </summary>
    public static List<YoloDetection> Detect(IReadOnlyList<DarknetSection> sections, IReadOnlyList<ReadOnlyMemory<float>> outputs, int imageHeight, int imageWidth,
        float threshold = 0.5f, float nmsThreshold = 0.45f, bool letterboxed = true)
    {
        ArgumentNullException.ThrowIfNull(sections);
        ArgumentNullException.ThrowIfNull(outputs);
        IReadOnlyList<DarknetLayerInfo> layers = DarknetSummary.Describe(sections);
        var heads = new List<(int, DarknetLayerInfo, object, ReadOnlyMemory<float>)>();
        foreach (DarknetLayerInfo info in layers)
        {
            if (DarknetGraph.Head(sections[info.Index + 1]) is not { } head) continue;
            if (heads.Count >= outputs.Count) throw new ArgumentException($"The cfg has more detection layers than the {outputs.Count} outputs given.", nameof(outputs));
            ReadOnlyMemory<float> values = outputs[heads.Count];
            long expected = (long)info.Channels * info.Height * info.Width;
            if (values.Length != expected)
                throw new ArgumentException($"Layer {info.Index} ({info.Type}) gives {expected} values per image; output {heads.Count} has {values.Length}.", nameof(outputs));
            heads.Add((info.Index, info, head, values));
        }
        if (heads.Count != outputs.Count) throw new ArgumentException($"The cfg has {heads.Count} detection layers; {outputs.Count} outputs were given.", nameof(outputs));
        DarknetSection net = sections[0];
        return Decode(heads, net.Int("height", 0), net.Int("width", 0), imageHeight, imageWidth, threshold, nmsThreshold, letterboxed);
    }

    private static List<YoloDetection> Decode(List<(int Layer, DarknetLayerInfo Info, object Head, ReadOnlyMemory<float> Output)> heads, int netHeight, int netWidth,
        int imageHeight, int imageWidth, float threshold, float nmsThreshold, bool letterboxed)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(imageHeight);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(imageWidth);
        if (!(threshold >= 0 && threshold < 1)) throw new ArgumentOutOfRangeException(nameof(threshold), threshold, "threshold must be in [0, 1).");
        if (!(nmsThreshold is >= 0 and <= 1)) throw new ArgumentOutOfRangeException(nameof(nmsThreshold), nmsThreshold, "nmsThreshold must be in [0, 1].");
        var detections = new List<YoloDetection>();
        int classes = -1;
        foreach ((int layer, DarknetLayerInfo info, object head, ReadOnlyMemory<float> memory) in heads)
        {
            ReadOnlySpan<float> output = memory.Span;
            int first = detections.Count;
            int headClasses = head switch
            {
                YoloHead yolo => YoloBoxes(detections, output, yolo, info, netHeight, netWidth, threshold, yolo.Classes),
                RegionHead region => RegionBoxes(detections, output, region, info, threshold, region.Classes),
                DetectionHead detection => DetectionBoxes(detections, output, detection, threshold, detection.Classes),
                _ => throw new InvalidOperationException($"Layer {layer} is not a detection layer."),
            };
            if (classes >= 0 && classes != headClasses) throw new InvalidOperationException("The detection layers disagree on the number of classes.");
            classes = headClasses;
            for (int d = first; d < detections.Count; d++)
                detections[d] = detections[d] with { Box = Correct(detections[d].Box, imageHeight, imageWidth, netHeight, netWidth, letterboxed), Layer = layer };
        }
        if (classes > 0) SuppressOverlaps(detections, classes, nmsThreshold);
        return detections;
    }

    /// <summary>get_yolo_detections: boxes of objectness above the threshold, sized by the anchors (pixels of the network input).</summary>
    private static int YoloBoxes(List<YoloDetection> detections, ReadOnlySpan<float> output, YoloHead head, DarknetLayerInfo info, int netHeight, int netWidth, float threshold, int classes)
    {
        int plane = info.Height * info.Width, entries = classes + 5;
        for (int cell = 0; cell < plane; cell++)
        {
            int row = cell / info.Width, column = cell % info.Width;
            for (int a = 0; a < head.Mask.Length; a++)
            {
                int at = a * entries * plane + cell;
                float objectness = output[at + 4 * plane];
                if (objectness <= threshold) continue;
                int anchor = head.Mask[a];
                var box = new DarknetBox(
                    (column + output[at]) / info.Width,
                    (row + output[at + plane]) / info.Height,
                    (float)(MathF.Exp(output[at + 2 * plane]) * head.Anchors[2 * anchor] / netWidth),
                    (float)(MathF.Exp(output[at + 3 * plane]) * head.Anchors[2 * anchor + 1] / netHeight));
                detections.Add(new YoloDetection(box, objectness, Probabilities(output, at + 5 * plane, plane, classes, objectness, threshold), 0));
            }
        }
        return classes;
    }

    /// <summary>get_region_detections: as [yolo], but the anchors are in grid cells (darknet's biases).</summary>
    private static int RegionBoxes(List<YoloDetection> detections, ReadOnlySpan<float> output, RegionHead head, DarknetLayerInfo info, float threshold, int classes)
    {
        int plane = info.Height * info.Width, entries = classes + 5;
        for (int cell = 0; cell < plane; cell++)
        {
            int row = cell / info.Width, column = cell % info.Width;
            for (int a = 0; a < head.Boxes; a++)
            {
                int at = a * entries * plane + cell;
                float objectness = output[at + 4 * plane];
                if (objectness <= threshold) continue;   // darknet zeroes these; NMS then skips them
                var box = new DarknetBox(
                    (column + output[at]) / info.Width,
                    (row + output[at + plane]) / info.Height,
                    (float)(MathF.Exp(output[at + 2 * plane]) * head.Anchors[2 * a] / info.Width),
                    (float)(MathF.Exp(output[at + 3 * plane]) * head.Anchors[2 * a + 1] / info.Height));
                detections.Add(new YoloDetection(box, objectness, Probabilities(output, at + 5 * plane, plane, classes, objectness, threshold), 0));
            }
        }
        return classes;
    }

    /// <summary>
    /// get_detection_detections (YOLOv1): per cell and box, x, y offsets in the cell, w, h relative to the image (squared
    /// where sqrt=1), confidence x the cell's class scores. Values: all class scores, then confidences, then boxes.
    /// </summary>
    private static int DetectionBoxes(List<YoloDetection> detections, ReadOnlySpan<float> output, DetectionHead head, float threshold, int classes)
    {
        int side = head.Side, cells = side * side;
        for (int cell = 0; cell < cells; cell++)
        {
            int row = cell / side, column = cell % side;
            for (int n = 0; n < head.Boxes; n++)
            {
                float confidence = output[cells * classes + cell * head.Boxes + n];
                int at = cells * (classes + head.Boxes) + (cell * head.Boxes + n) * 4;
                float w = output[at + 2], h = output[at + 3];
                var box = new DarknetBox((output[at] + column) / side, (output[at + 1] + row) / side, head.Sqrt ? w * w : w, head.Sqrt ? h * h : h);
                float[] probabilities = Probabilities(output, cell * classes, 1, classes, confidence, threshold);
                if (probabilities.Any(p => p > 0)) detections.Add(new YoloDetection(box, confidence, probabilities, 0));
            }
        }
        return classes;
    }

    /// <summary>Class probabilities objectness x score, 0 where not above the threshold; scores <paramref name="step"/> apart.</summary>
    private static float[] Probabilities(ReadOnlySpan<float> output, int first, int step, int classes, float objectness, float threshold)
    {
        var probabilities = new float[classes];
        for (int k = 0; k < classes; k++)
        {
            float probability = objectness * output[first + k * step];
            probabilities[k] = probability > threshold ? probability : 0;
        }
        return probabilities;
    }

    /// <summary>darknet's correct_yolo_boxes: from the network's (letterboxed) frame to the image's, relative coordinates.</summary>
    private static DarknetBox Correct(DarknetBox b, int height, int width, int netHeight, int netWidth, bool letterboxed)
    {
        if (!letterboxed) return b;
        (int newHeight, int newWidth) = DarknetImage.LetterboxSize(height, width, netHeight, netWidth);
        return new DarknetBox(
            (float)((b.X - (netWidth - newWidth) / 2.0 / netWidth) / ((float)newWidth / netWidth)),
            (float)((b.Y - (netHeight - newHeight) / 2.0 / netHeight) / ((float)newHeight / netHeight)),
            b.Width * ((float)netWidth / newWidth),
            b.Height * ((float)netHeight / newHeight));
    }

    /// <summary>darknet's do_nms_sort: per class, most probable first, zero the class probability of boxes that overlap a kept one by more than <paramref name="threshold"/>.</summary>
    public static void SuppressOverlaps(List<YoloDetection> detections, int classes, float threshold)
    {
        ArgumentNullException.ThrowIfNull(detections);
        for (int k = 0; k < classes; k++)
        {
            int sortClass = k;
            // A stable sort (darknet's qsort is not): ties keep their layer/cell order, so the result is reproducible.
            YoloDetection[] sorted = detections.OrderByDescending(d => d.Probabilities[sortClass]).ToArray();
            for (int i = 0; i < sorted.Length; i++)
            {
                if (sorted[i].Probabilities[k] == 0) continue;
                for (int j = i + 1; j < sorted.Length; j++)
                    if (DarknetBox.Iou(sorted[i].Box, sorted[j].Box) > threshold) sorted[j].Probabilities[k] = 0;
            }
        }
    }

    /// <summary>The largest <paramref name="count"/> scores with their indices, largest first (a classifier's top-5).</summary>
    public static (int Index, float Score)[] Top(ReadOnlySpan<float> scores, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        var indexed = new (int Index, float Score)[scores.Length];
        for (int i = 0; i < scores.Length; i++) indexed[i] = (i, scores[i]);
        return indexed.OrderByDescending(p => p.Score).ThenBy(p => p.Index).Take(count).ToArray();
    }
}
