"""The RPC server our devices run: TVM's, without the two ways in which one client takes a device
down for everyone.

TVM 0.27's `tvm.exec.rpc_server` (tvm/rpc/server.py, `_listen_loop` and `_serving`):
* reads a new connection's handshake with no timeout, one connection at a time, so a single TCP
  client that connects and sends nothing blocks the device for every other client; here the
  handshake has HANDSHAKE_TIMEOUT_S and a silent client is dropped;
* raises out of its listen loop when a session's worker process exits non-zero, which is what a
  client that drops mid-upload causes, so the server stops serving; here that session is logged
  as failed and the server goes on.
Everything else is TVM's: one session at a time, each in a fresh worker process that runs TVM's
own server loop (`_serve_loop`), tracker registration and match keys as in `_listen_loop`.

It imports only the standard library and tvm, and is started as a script by path, so it also runs
under qemu with a board's own TVM wheel (remote/emulator.py), and on a real board:

    python rpc_server.py --host 127.0.0.1 --port 9090 [--tracker HOST:PORT --key rasp4]
"""

import argparse
import logging
import multiprocessing
import os
import select
import socket
import struct
import sys

HANDSHAKE_TIMEOUT_S = 5.0  # a client that has not introduced itself by then is dropped
TRACKER_PING_S = 2.0
UNUSED_MATCH_KEY_S = 4.0  # a match key handed to a client that never came is replaced after this

logger = logging.getLogger("wrpn-rpc-server")


def _recv_handshake(conn, base):
    """(key words) of a client's handshake, or None for a client that is not a TVM RPC client."""
    magic = struct.unpack("<i", base.recvall(conn, 4))[0]
    if magic != base.RPC_MAGIC:
        return None
    keylen = struct.unpack("<i", base.recvall(conn, 4))[0]
    if not 0 < keylen <= 4096:
        return None
    return base.recvall(conn, keylen).decode("utf-8", errors="replace").split()


def _accept(listen_sock, tracker_conn, rpc_key, port, custom_addr):
    """Wait for a client with the right key; returns (conn, addr, options). As TVM's _accept_conn,
    with a deadline on each handshake."""
    from tvm.rpc import base
    from tvm.rpc.base import TrackerCode
    from tvm.rpc.server import _parse_server_opt

    used_keys = set()
    if tracker_conn:
        match_key = base.random_key(rpc_key)
        base.sendjson(tracker_conn, [TrackerCode.PUT, rpc_key, (port, match_key), custom_addr])
        assert base.recvjson(tracker_conn) == TrackerCode.SUCCESS
    else:
        match_key = rpc_key
    unmatched_periods = 0
    while True:
        if tracker_conn:
            ready, _, _ = select.select([listen_sock], [], [], TRACKER_PING_S)
            if listen_sock not in ready:
                base.sendjson(tracker_conn, [TrackerCode.GET_PENDING_MATCHKEYS])
                pending = base.recvjson(tracker_conn)
                used_keys.add(match_key)
                unmatched_periods = unmatched_periods + 1 if match_key not in pending else 0
                if unmatched_periods * TRACKER_PING_S > UNUSED_MATCH_KEY_S + TRACKER_PING_S:
                    match_key = base.random_key(rpc_key, cmap=used_keys)
                    base.sendjson(tracker_conn, [TrackerCode.PUT, rpc_key, (port, match_key), custom_addr])
                    assert base.recvjson(tracker_conn) == TrackerCode.SUCCESS
                    unmatched_periods = 0
                continue
        conn, addr = listen_sock.accept()
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            words = _recv_handshake(conn, base)
            if not words or words[0] != "client:" + match_key:
                if words:
                    conn.sendall(struct.pack("<i", base.RPC_CODE_MISMATCH))
                    logger.warning("mismatched key from %s", addr)
                conn.close()
                continue
            server_key = "server:" + rpc_key
            conn.sendall(struct.pack("<i", base.RPC_CODE_SUCCESS))
            conn.sendall(struct.pack("<i", len(server_key)))
            conn.sendall(server_key.encode("utf-8"))
        except OSError as err:  # socket.timeout included: a silent or vanished client
            logger.warning("dropped %s during the handshake: %s", addr, err)
            conn.close()
            continue
        conn.settimeout(None)
        return conn, addr, _parse_server_opt(words[1:])


def _serve_session(conn, addr, options, load_library):
    """One session in a fresh worker process; a worker that fails ends its session, not the server."""
    from tvm.rpc import _ffi_api
    from tvm.rpc.server import _serve_loop
    from tvm.support import utils

    logger.info("session from %s", addr)
    work_path = utils.tempdir()
    old_cwd = os.getcwd()
    os.chdir(work_path.path)  # as TVM: a session's uploads cannot clash with another's
    try:
        worker = multiprocessing.Process(target=_serve_loop, args=(conn, load_library, work_path))
        worker.start()
        worker.join(options.get("timeout"))
        if worker.is_alive():
            logger.info("session from %s outlived its timeout: ending it", addr)
            _ffi_api.ReturnException(conn.fileno(), f"RPCSessionTimeoutError: your {options['timeout']}s session "
                                     "has expired, try to increase the session timeout")
            _terminate_tree(worker.pid)
            worker.terminate()
            worker.join(10)
        elif worker.exitcode != 0:
            logger.warning("session from %s ended with worker exit code %s (client gone?); serving on",
                           addr, worker.exitcode)
    finally:
        os.chdir(old_cwd)
        work_path.remove()
        conn.close()


def _terminate_tree(pid: int) -> None:
    try:
        import psutil
    except ImportError:  # not on every board; the worker itself is terminated anyway
        return
    try:
        for child in psutil.Process(pid).children(recursive=True):
            child.terminate()
    except psutil.Error:
        pass


def _register(tracker_addr, rpc_key, custom_addr, port):
    from tvm.rpc import base
    from tvm.rpc.base import TrackerCode

    conn = base.connect_with_retry(tracker_addr)
    conn.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
    if struct.unpack("<i", base.recvall(conn, 4))[0] != base.RPC_TRACKER_MAGIC:
        raise RuntimeError(f"{tracker_addr} is not an RPC tracker")
    base.sendjson(conn, [TrackerCode.UPDATE_INFO, {"key": "server:" + rpc_key, "addr": (custom_addr, port)}])
    assert base.recvjson(conn) == TrackerCode.SUCCESS
    return conn


def serve(listen_sock, port, rpc_key="", tracker_addr=None, load_library=None, custom_addr=None):
    """Serve sessions forever, (re-)registering with the tracker whenever its connection drops."""
    tracker_conn = None
    while True:
        try:
            if tracker_addr and tracker_conn is None:
                tracker_conn = _register(tracker_addr, rpc_key, custom_addr, port)
            conn, addr, options = _accept(listen_sock, tracker_conn, rpc_key, port, custom_addr)
        except OSError:  # the tracker went away: register again
            if tracker_conn:
                tracker_conn.close()
                tracker_conn = None
            continue
        _serve_session(conn, addr, options, load_library)


def command(port: int, host: str = "127.0.0.1", tracker: str | None = None, key: str | None = None,
            python: str = sys.executable) -> list:
    """The argv that starts this server with `python` (a board's interpreter, e.g. under qemu)."""
    argv = [python, os.path.abspath(__file__), "--host", host, "--port", str(port)]
    return argv + (["--tracker", tracker, "--key", key or ""] if tracker else [])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="TVM RPC server that one misbehaving client cannot take down")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--tracker", help="register with the RPC tracker at HOST:PORT")
    parser.add_argument("--key", default="", help="device key at the tracker")
    parser.add_argument("--custom-addr", help="address the tracker hands to clients (default: the one it sees)")
    parser.add_argument("--load-library", help="extra libraries to load in each session, colon-separated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    tracker_addr = None
    if args.tracker:
        host, _, port = args.tracker.rpartition(":")
        tracker_addr = (host, int(port))
        if not args.key:
            parser.error("--tracker needs --key")
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(8)
    logger.info("serving on %s:%d%s", args.host, args.port, f", key {args.key!r} at {args.tracker}" if args.tracker else "")
    serve(sock, args.port, args.key, tracker_addr, args.load_library, args.custom_addr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
