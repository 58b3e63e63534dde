namespace SharpNorm.Layers;

/// <summary>Where the channel dimension of a layer's input is.</summary>
public enum ChannelLayout
{
    /// <summary>(N, C, *spatial): PyTorch's default (contiguous) layout.</summary>
    First,

    /// <summary>
    /// (N, *spatial, C): what PyTorch computes for channels_last tensors (torch.channels_last / channels_last_3d), read
    /// in that order without transposing copies.
    /// </summary>
    Last,
}
