#!/usr/bin/env bash
# Regenerates tests/SharpNorm.Tests/Fixtures/{batchnorm,instancenorm,groupnorm,layernorm,rmsnorm,
# conv2d,maxpool2d,avgpool2d,darknet}.json with libtorch (TorchSharp-cpu 0.107.0); darknet also writes
# tests/SharpNorm.Tests/Darknet/weights/small-*.weights (OUTPUT_DIR/../Darknet/weights).
# Usage: tools/FixtureGen/run.sh [OUTPUT_DIR] [--only STEM[,STEM...]]
#   e.g. tools/FixtureGen/run.sh --only conv2d,maxpool2d,avgpool2d   (writes just those files)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
outdir=$root/tests/SharpNorm.Tests/Fixtures
if [ $# -gt 0 ] && [[ $1 != --* ]]; then outdir=$1; shift; fi
dotnet build "$here/FixtureGen.csproj" -c Release --nologo -v quiet
bin="$here/bin/Release/net10.0"
preload=$(bash "$root/tools/libtorch-compat.sh" "$bin")
LD_PRELOAD="$preload" dotnet "$bin/FixtureGen.dll" "$outdir" "$@"
ls -l "$outdir"/*.json
