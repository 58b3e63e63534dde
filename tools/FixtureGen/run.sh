#!/usr/bin/env bash
# Regenerates tests/SharpNorm.Tests/Fixtures/{batchnorm,instancenorm,groupnorm,layernorm,rmsnorm}.json
# with libtorch (TorchSharp-cpu 0.107.0).
# Usage: tools/FixtureGen/run.sh [OUTPUT_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
outdir=${1:-$root/tests/SharpNorm.Tests/Fixtures}
dotnet build "$here/FixtureGen.csproj" -c Release --nologo -v quiet
bin="$here/bin/Release/net10.0"
preload=$(bash "$root/tools/libtorch-compat.sh" "$bin")
LD_PRELOAD="$preload" dotnet "$bin/FixtureGen.dll" "$outdir"
ls -l "$outdir"/{batchnorm,instancenorm,groupnorm,layernorm,rmsnorm}.json
