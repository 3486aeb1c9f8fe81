#!/usr/bin/env bash
# The test suite: set-up (idempotent), then pytest without the slow marker.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `-k lowering`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -m "not slow" -p no:cacheprovider "$@"
