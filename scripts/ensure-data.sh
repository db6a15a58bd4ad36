#!/usr/bin/env bash
# Make Fashion-MNIST available offline: it is found under the data root, or in the system copy
# from Debian's package dataset-fashion-mnist, which this script installs when it is missing and
# apt-get can be used. Usage: scripts/ensure-data.sh [python]
set -euo pipefail
python=${1:-python3}
system_dir=/usr/share/datasets/fashion-mnist

found() {
  "$python" - <<'PY'
import sys
from pathlib import Path
from pruning_utils.config import data_root
from pruning_utils.data import DATASETS, _has_raw, _raw_dir
info = DATASETS["fashion-mnist"]
sys.exit(0 if _has_raw(_raw_dir(data_root(), info)) else 1)
PY
}

if found; then
  echo "Fashion-MNIST: found under the data root"
elif [ -f "$system_dir/train-images-idx3-ubyte.gz" ]; then
  echo "Fashion-MNIST: found in $system_dir"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Fashion-MNIST: installing Debian's dataset-fashion-mnist"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
else
  echo "Fashion-MNIST is missing and apt-get cannot be used here." >&2
  echo "Install the package dataset-fashion-mnist, or put the IDX files in data/FashionMNIST/raw." >&2
  exit 1
fi
