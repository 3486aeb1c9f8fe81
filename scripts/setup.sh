#!/usr/bin/env bash
# One-time (and idempotent) set-up on a fresh Debian 12 machine as root:
# Debian packages, the project's virtual environment, and the emulated Raspberry Pi's
# aarch64 Python + TVM. A second run checks stamps and returns in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${WRPN_TVM_VENV:-$ROOT/.venv}
log() { printf '[setup] %s\n' "$*" >&2; }

need_apt=()
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
command -v llvm-mca-14 >/dev/null || need_apt+=(llvm-14)  # llvm-mca, for `wrpn-tvm estimate`
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

stamp="$VENV/.wrpn-setup-$(sha1sum setup.py | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  log "creating the virtual environment in $VENV (torch, apache-tvm, ...)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
  "$VENV/bin/pip" install -q -e ".[test]"
  rm -f "$VENV"/.wrpn-setup-*
  touch "$stamp"
fi

log "preparing the emulated Raspberry Pi (aarch64 Python + TVM under qemu-user)"
"$VENV/bin/python" -m wrpn_tvm.remote.emulator prepare
log "ready: $VENV/bin/wrpn-tvm"
