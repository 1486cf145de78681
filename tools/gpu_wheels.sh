#!/usr/bin/env bash
# Fetch the wheels a GPU machine lacks into .whl/ (run here, where PyPI is reachable; the GPU
# machine has no network). The device image carries jax, flax, optax, orbax, torch and
# transformers but not grain and its companions; tools/gpu_check.sh installs whatever lies in
# .whl/. Versions follow requirements.txt.
#   bash tools/gpu_wheels.sh [python_version]   (default 3.12, the device image's Python)
# Then carry it: the `run` tool's carry=[".whl"] (.whl/ is git-ignored).
set -eu
cd "$(dirname "$0")/.."
PY=${1:-3.12}
pin() { grep -iE "^$1==" requirements.txt | head -1; }
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --dest .whl \
  --python-version "$PY" --implementation cp --platform manylinux2014_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 \
  "$(pin grain)" "$(pin array-record)" "$(pin ml-collections)" "$(pin tensorboardX)" portpicker
ls -1 .whl
