#!/usr/bin/env bash
# The project's main job on a fresh machine: make sure Fashion-MNIST is there, then train the default DarkNet-style
# model with `sharpnorm train` (any arguments are passed on, e.g. --epochs 3 --norm group).
set -euo pipefail
# Not cd'd into the repository: --out, --data and the hints sharpnorm prints are relative to where it was started.
here="$(cd "$(dirname "$0")" && pwd)"

DATA=/usr/share/datasets/fashion-mnist
has_data_arg=false
for arg in "$@"; do [[ "$arg" == "--data" ]] && has_data_arg=true; done

if ! $has_data_arg && [[ ! -f "$DATA/train-images-idx3-ubyte.gz" && ! -f "$DATA/train-images-idx3-ubyte" ]]; then
  echo "Fashion-MNIST is not in $DATA: installing Debian's dataset-fashion-mnist package." >&2
  if [[ $(id -u) -eq 0 ]]; then SUDO=""; else SUDO="sudo"; fi
  if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; }; then
    echo "Could not install dataset-fashion-mnist. Put the four IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte," >&2
    echo "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, raw or .gz) in a folder and run: $0 --data FOLDER" >&2
    exit 1
  fi
fi

exec dotnet run --project "$here/src/SharpNorm.Cli" -c Release -- train "$@"
