"""Where candidates are timed (MetaSchedule's runners), on:
* this host (LocalRunner) when no device is named;
* the devices registered under a key at an RPC tracker: one measurement in flight per device,
  so a batch spreads over all of them;
* one RPC server (`--rpc HOST:PORT`), connected to directly, since MetaSchedule's RPCRunner
  only knows trackers.
"""

import functools

from ..errors import WrpnError
from ..remote.session import DeviceSpec, parse_address, registered_devices
from ..targets import TargetSpec
from ..estimate import BOARDS as ESTIMATED_BOARDS


def connect_direct(host: str, port: int, timeout: float, _config):
    """f_create_session for one RPC server without a tracker."""
    from tvm import rpc

    return rpc.connect(host, port, session_timeout=timeout)


def check_device(spec: TargetSpec, device: DeviceSpec) -> None:
    """Refuse to time code for a board on this host."""
    if device.is_local and spec.is_remote_arch:
        raise WrpnError(
            f"target {spec.name} does not run on this host: time its candidates on a device "
            "with --rpc HOST:PORT or --tracker HOST:PORT --key KEY"
            + (", or rank them by their estimated time with --estimate" if spec.name in ESTIMATED_BOARDS else "")
        )


def make_runner(spec: TargetSpec, device: DeviceSpec):
    from tvm.s_tir.meta_schedule.runner import LocalRunner, RPCConfig, RPCRunner

    check_device(spec, device)
    timeout = int(round(device.timeout))
    if device.is_local:
        return LocalRunner(timeout_sec=timeout)
    if device.tracker:
        host, port = parse_address(device.tracker)
        config = RPCConfig(tracker_host=host, tracker_port=port, tracker_key=device.key, session_timeout_sec=timeout)
        return RPCRunner(config, max_workers=registered_devices(device))
    host, port = parse_address(device.rpc)
    # RPCRunner insists on tracker fields; with our own f_create_session they are only labels.
    config = RPCConfig(tracker_host=host, tracker_port=port, tracker_key="direct", session_timeout_sec=timeout)
    return RPCRunner(config, f_create_session=functools.partial(connect_direct, host, port, device.timeout), max_workers=1)
