#!/usr/bin/env bash
# The test suite: set-up (idempotent), then pytest (pytest.ini leaves out tests marked slow).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `-k lowering`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
