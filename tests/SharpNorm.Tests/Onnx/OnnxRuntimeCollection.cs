using Xunit;

namespace SharpNorm.Tests.Onnx;

/// <summary>
/// The test classes that run ONNX Runtime, one at a time and alone, after the parallel tests: ONNX Runtime 1.32 was
/// seen to segfault (in libonnxruntime.so, a hash-map walk, the same address each time) in about one full test run in
/// three while other test classes ran beside its sessions, never when its tests ran by themselves.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class OnnxRuntimeCollection
{
    public const string Name = "ONNX Runtime";
}
