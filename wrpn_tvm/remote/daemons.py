"""Background services (emulated devices, trackers): started detached, found again by a pid file.

Each service has a name (e.g. `device-9090`, `tracker-9190`); its pid file and log live in
`state_dir()/run/`, so `wrpn-tvm device stop` in another shell finds what `start` left running.
"""

import json
import os
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import WrpnError

LOOPBACK = "127.0.0.1"


def state_dir() -> Path:
    """Where wrpn-tvm keeps its caches and service state ($WRPN_TVM_HOME, default ~/.cache/wrpn-tvm)."""
    return Path(os.environ.get("WRPN_TVM_HOME", Path.home() / ".cache" / "wrpn-tvm"))


def run_dir() -> Path:
    path = state_dir() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_bind_host(host: str, allow_public: bool) -> str:
    """Loopback unless the user explicitly asks otherwise: TVM RPC runs any code it is sent."""
    if host in (LOOPBACK, "localhost", "::1"):
        return host
    if not allow_public:
        raise WrpnError(
            f"refusing to bind to {host}: TVM RPC executes any code it is sent; "
            "pass --allow-public to bind beyond 127.0.0.1 on a trusted network"
        )
    warnings.warn(f"binding TVM RPC to {host}: anyone who reaches it can run code on this machine", stacklevel=2)
    return host


@dataclass
class Service:
    name: str
    pid: int
    host: str
    port: int
    log: Path
    info: dict

    def alive(self) -> bool:
        return pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this very process counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _state_file(name: str) -> Path:
    return run_dir() / f"{name}.json"


def find(name: str) -> "Service | None":
    """The running service of that name, or None (stale state files are removed)."""
    path = _state_file(name)
    try:
        state = json.loads(path.read_text())
        service = Service(name, int(state["pid"]), state["host"], int(state["port"]), Path(state["log"]), state.get("info", {}))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if service.alive():
        return service
    path.unlink(missing_ok=True)
    return None


def all_services(prefix: str = "") -> list[Service]:
    found = (find(path.stem) for path in sorted(run_dir().glob(f"{prefix}*.json")))
    return [service for service in found if service is not None]


def check_free(name: str, host: str, port: int) -> None:
    """Refuse, in one line, to start a service that runs already or whose port is taken."""
    if find(name) is not None:
        raise WrpnError(f"{name} is already running (`wrpn-tvm device status` lists running devices and trackers)")
    if port_open(host, port):
        raise WrpnError(f"port {port} on {host} is already in use: choose another --port")


def start(name: str, argv: list[str], host: str, port: int, env: dict | None = None,
          ready=None, timeout: float = 120.0, info: dict | None = None) -> Service:
    """Start argv detached, wait until `ready()` (default: the port accepts connections)."""
    check_free(name, host, port)
    log = run_dir() / f"{name}.log"
    with open(log, "ab") as log_file:
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    service = Service(name, proc.pid, host, port, log, info or {})
    _state_file(name).write_text(json.dumps({"pid": proc.pid, "host": host, "port": port, "log": str(log), "info": service.info}))
    ready = ready or (lambda: port_open(host, port))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _state_file(name).unlink(missing_ok=True)
            raise WrpnError(f"{name} exited during start-up (code {proc.returncode}); see {log}")
        if ready():
            return service
        time.sleep(0.3)
    stop(name)
    raise WrpnError(f"{name} did not become ready within {timeout:.0f} s; see {log}")


def _group_alive(pgid: int) -> bool:
    """Whether any process of the service's group (its workers included) is still there."""
    try:
        os.waitpid(pgid, os.WNOHANG)  # reap the leader when this process started it
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(name: str, timeout: float = 10.0) -> bool:
    """Stop a service and its whole process group; False when it was not running."""
    service = find(name)
    _state_file(name).unlink(missing_ok=True)
    if service is None:
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(service.pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _group_alive(service.pid):
                return True
            time.sleep(0.1)
    return True
