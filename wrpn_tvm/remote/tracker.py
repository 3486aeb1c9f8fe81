"""`wrpn-tvm tracker start|stop`: TVM's RPC tracker as a background service, on 127.0.0.1 by default."""

import sys

from . import daemons


def service_name(port: int) -> str:
    return f"tracker-{port}"


def start(port: int = 9190, host: str = daemons.LOOPBACK, allow_public: bool = False) -> daemons.Service:
    host = daemons.check_bind_host(host, allow_public)
    argv = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host, "--port", str(port), "--port-end", str(port + 1)]
    return daemons.start(service_name(port), argv, host, port, timeout=60.0)


def stop(port: int = 9190) -> bool:
    return daemons.stop(service_name(port))
