"""The emulated Raspberry Pi: an aarch64 TVM RPC server under qemu-user, on 127.0.0.1.

Real RPC and real aarch64 code with no hardware; its timings say nothing about a real board.
`prepare()` assembles, from the package registries only, an aarch64 root with Debian's
Python 3.11 and a site folder of aarch64 wheels (TVM, numpy, ...). This machine has no
binfmt_misc, and the RPC server starts workers with `sys.executable`, so Python runs through a
wrapper script that is itself the executable (qemu's `-0` sets argv[0] to the wrapper).

Run as a module: `python -m wrpn_tvm.remote.emulator prepare` (what scripts/setup.sh does).
"""

import argparse
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from ..errors import WrpnError
from . import daemons, rpc_server
from .session import parse_address, servers_under_key, tracker_summary

BOARDS = ("rasp3b", "rasp4", "rasp5", "aarch64")
# qemu's CPU model for each board (what the emulated Pi reports as its core).
QEMU_CPU = {"rasp3b": "cortex-a53", "rasp4": "cortex-a72", "rasp5": "cortex-a76", "aarch64": "max"}

DEBIAN_PACKAGES = (
    "libc6 libgcc-s1 libstdc++6 python3.11-minimal libpython3.11-minimal libpython3.11-stdlib zlib1g "
    "libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 "
    "libuuid1 libdb5.3 libcrypt1 libnsl2 libtirpc3 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2 "
    "libkrb5support0 libkeyutils1"
).split()
WHEELS = (
    "apache-tvm==0.27.0.post1", "apache-tvm-ffi==0.1.14.post1", "numpy", "ml_dtypes",
    "typing_extensions", "psutil", "cloudpickle",
)
STAMP_VERSION = "1"


def home() -> Path:
    return daemons.state_dir() / "emulator-aarch64"


def python_wrapper() -> Path:
    return home() / "python3-aarch64"


def is_prepared() -> bool:
    stamp = home() / "prepared"
    return stamp.is_file() and stamp.read_text().strip() == STAMP_VERSION and python_wrapper().is_file()


def _run(argv, **kwargs):
    result = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise WrpnError(f"`{' '.join(argv[:3])} ...` failed: {' | '.join(tail)}")
    return result


def prepare(force: bool = False, log=print) -> Path:
    """Assemble the aarch64 root, site folder and wrapper (idempotent; seconds when already done)."""
    if is_prepared() and not force:
        return python_wrapper()
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise WrpnError("qemu-aarch64 not found: run scripts/setup.sh (it installs Debian's qemu-user)")
    base = home()
    root, site, debs, lists = base / "root", base / "site", base / "debs", base / "apt-lists"
    for folder in (root, site, debs, lists / "partial"):
        folder.mkdir(parents=True, exist_ok=True)

    log("emulator: downloading Debian arm64 Python 3.11 packages")
    apt = ["apt-get", "-q", "-oAPT::Architecture=arm64", "-oAPT::Architectures=arm64",
           f"-oDir::State::Lists={lists}", "-oAPT::Sandbox::User=root"]
    _run(apt + ["update"])
    _run(apt + ["download"] + DEBIAN_PACKAGES, cwd=debs)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)])

    log("emulator: downloading aarch64 wheels (apache-tvm, numpy, ...)")
    wheels = base / "wheels"
    wheels.mkdir(exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
          "--python-version", "3.11", "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux_2_17_aarch64",
          "--platform", "manylinux2014_aarch64", "-d", str(wheels), *WHEELS])
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)

    wrapper = python_wrapper()
    wrapper.write_text(
        "#!/bin/sh\n"
        "# aarch64 Python under qemu-user; argv[0] is this script, so sys.executable re-enters qemu.\n"
        f'PYTHONHOME="{root}/usr" PYTHONPATH="{site}" PYTHONDONTWRITEBYTECODE=1 '
        f'exec {qemu} -cpu "${{WRPN_QEMU_CPU:-max}}" -L "{root}" -0 "$0" "{root}/usr/bin/python3.11" "$@"\n'
    )
    wrapper.chmod(0o755)
    probe = subprocess.run([str(wrapper), "-c", "import platform, tvm; print(platform.machine(), tvm.__version__)"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0 or not probe.stdout.startswith("aarch64"):
        raise WrpnError(f"the emulated Python does not start: {(probe.stderr or probe.stdout).strip()[-300:]}")
    (base / "prepared").write_text(STAMP_VERSION + "\n")
    log(f"emulator: ready ({probe.stdout.strip()})")
    return wrapper


def service_name(port: int) -> str:
    return f"device-{port}"


def start(port: int = 9090, board: str = "rasp4", tracker: str | None = None, key: str | None = None,
          host: str = daemons.LOOPBACK, allow_public: bool = False, timeout: float = 180.0) -> daemons.Service:
    """Start an emulated board's RPC server in the background; with a tracker, register under `key`."""
    if board not in BOARDS:
        raise WrpnError(f"unknown board {board!r}; emulated boards: {', '.join(BOARDS)}")
    host = daemons.check_bind_host(host, allow_public)
    if not is_prepared():
        raise WrpnError("the emulated device is not prepared: run scripts/setup.sh (or `python -m wrpn_tvm.remote.emulator prepare`)")
    ready = None
    if tracker:
        key = key or board
        tracker_host, tracker_port = parse_address(tracker)
        tracker = f"{tracker_host}:{tracker_port}"
        ready = lambda: daemons.port_open(host, port) and _registered(tracker_host, tracker_port, key, port)  # noqa: E731
    argv = rpc_server.command(port, host, tracker, key, python=str(python_wrapper()))
    env = dict(os.environ, WRPN_QEMU_CPU=QEMU_CPU[board])
    info = {"board": board, "tracker": tracker, "key": key, "emulated": True}
    return daemons.start(service_name(port), argv, host, port, env=env, ready=ready, timeout=timeout, info=info)


def _registered(tracker_host: str, tracker_port: int, key: str, port: int) -> bool:
    try:
        summary = tracker_summary(tracker_host, tracker_port)
    except WrpnError:
        return False
    return any(int(entry.get("addr", [None, -1])[1]) == port for entry in servers_under_key(summary, key))


def stop(port: int = 9090) -> bool:
    return daemons.stop(service_name(port))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wrpn_tvm.remote.emulator")
    parser.add_argument("action", choices=["prepare"])
    parser.add_argument("--force", action="store_true", help="rebuild even when already prepared")
    args = parser.parse_args(argv)
    try:
        prepare(force=args.force, log=lambda msg: print(msg, file=sys.stderr))
    except WrpnError as err:
        print(f"wrpn-tvm: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
