#!/usr/bin/env bash
# The main job: set-up (idempotent), then `wrpn-tvm demo` (arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/wrpn-tvm demo "$@"
