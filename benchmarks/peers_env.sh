#!/usr/bin/env bash
# Creates the benchmark-only environments for the peers that benchmarks/peers.py times
# (nothing in wrpn_tvm imports them). Two venvs, because Larq Compute Engine 0.16 needs
# TensorFlow 2.15, which pins protobuf < 5 and numpy < 2, and onnx 1.23 needs protobuf >= 6.31:
#   benchmarks/.peers/ort  torch (the CPU wheel, for torch.onnx.export), onnx, onnxruntime, openvino
#   benchmarks/.peers/lce  tensorflow-cpu, larq, larq-zoo, larq-compute-engine
# Re-running is cheap: a venv whose stamp matches this file's pins is kept.
#   bash benchmarks/peers_env.sh [ort|lce|all]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$HERE/.peers"
PYTHON="${PYTHON:-python3}"
which="${1:-all}"

ORT_PINS=(
  "torch==2.13.0"  # the CPU build on the machine's disk; a bare `torch` pulls a CUDA one
  "numpy>=1.26,<3"
  "onnx==1.23.2"
  "onnxscript==0.7.2"
  "onnxruntime==1.32.0"
  "openvino==2026.4.1"
)
LCE_PINS=(
  "tensorflow-cpu==2.15.1"
  "keras==2.15.0"
  "larq==0.14.0"
  "larq-zoo==2.4.0"
  "larq-compute-engine==0.16.0"
)

make_venv() {  # name, pins...
  local name="$1"; shift
  local venv="$ROOT/$name" stamp
  stamp="$(printf '%s\n' "$@" | sha256sum | cut -c1-16)"
  if [[ -f "$venv/.stamp" && "$(cat "$venv/.stamp")" == "$stamp" ]]; then
    echo "peers_env: $venv is up to date"
    return
  fi
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet "$@"
  echo "$stamp" > "$venv/.stamp"
  echo "peers_env: $venv ready"
}

[[ "$which" == all || "$which" == ort ]] && make_venv ort "${ORT_PINS[@]}"
[[ "$which" == all || "$which" == lce ]] && make_venv lce "${LCE_PINS[@]}"
exit 0
