#!/usr/bin/env bash
# Builds bench/SharpNorm.Bench in Release and runs it; arguments pass through to the program:
#   bench/run.sh --quick              # smoke run, under a minute
#   bench/run.sh --json bench.json    # full run, every measurement (raw samples too) also as JSON
#   bench/run.sh --filter InstanceNorm --threads 1
# libtorch (TorchSharp-cpu 0.107.0, ~1 GB from NuGet on the first build) needs tools/libtorch-compat.sh on Debian 12;
# if that step fails the program still runs and reports libtorch as unavailable.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
proj="$here/SharpNorm.Bench/SharpNorm.Bench.csproj"
bin="$here/SharpNorm.Bench/bin/Release/net10.0"

dotnet build "$proj" -c Release --nologo -v quiet -clp:ErrorsOnly >&2

preload=""
if out=$(bash "$root/tools/libtorch-compat.sh" "$bin"); then
  preload=$(printf '%s\n' "$out" | tail -n 1)
else
  echo "bench/run.sh: tools/libtorch-compat.sh failed; running without LD_PRELOAD (libtorch will likely be unavailable)" >&2
fi

if [ -n "$preload" ]; then
  export LD_PRELOAD="$preload${LD_PRELOAD:+:$LD_PRELOAD}"
fi
exec dotnet "$bin/SharpNorm.Bench.dll" "$@"
