"""Where candidates are built and timed: on this host, or on devices over TVM RPC.

Candidates are always built here, in this process, into a `.so` (cross-compiled for ARM boards,
which have no compiler of their own to link TVM's default `.tar` artifacts). MetaSchedule's
LocalBuilder starts fresh worker processes for every batch, and each one imports TVM's tensor
intrinsics (measured: 88 s per worker on this 2-core machine under load, against 0.1 s to build
and link a candidate), so it timed out every build here. They are timed by:
* this host (LocalRunner) when no device is named;
* the devices registered under a key at an RPC tracker: one measurement in flight per device,
  so a batch spreads over all of them; a device that drops out fails its in-flight candidates
  (recorded as failed) and the tracker hands the rest to the others;
* one RPC server (`--rpc HOST:PORT`), connected to directly, since MetaSchedule's RPCRunner
  only knows trackers.
"""

import functools
import os
import tempfile

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import PyBuilder

from ..errors import WrpnError
from ..remote.session import DeviceSpec, parse_address, tracker_summary
from ..targets import TargetSpec


@derived_object
class InProcessBuilder(PyBuilder):
    """Builds each candidate in this process and links it into a `.so` with the target's compiler."""

    def __init__(self, cross_compiler: str | None):
        self.cross_compiler = cross_compiler

    def build(self, build_inputs):
        from tvm.driver import build as tvm_build
        from tvm.s_tir.meta_schedule.builder import BuilderResult
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
        from tvm.support import cc

        fcompile = cc.cross_compiler(self.cross_compiler) if self.cross_compiler else None
        results = []
        for build_input in build_inputs:
            try:
                # As MetaSchedule's default_build: weights are given already laid out at run time.
                mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(build_input.mod)
                path = os.path.join(tempfile.mkdtemp(prefix="wrpn-tune-"), "candidate.so")
                tvm_build(mod, target=build_input.target).export_library(path, fcompile=fcompile)
                results.append(BuilderResult(path, None))
            except Exception as err:  # a candidate that fails to build is a recorded failure, not a crash
                results.append(BuilderResult(None, f"build failed: {err}"))
        return results


def make_builder(spec: TargetSpec):
    return InProcessBuilder(spec.cross_compiler)


def connect_direct(host: str, port: int, timeout: float, _config):
    """f_create_session for one RPC server without a tracker."""
    from tvm import rpc

    return rpc.connect(host, port, session_timeout=timeout)


def tracker_device_count(device: DeviceSpec) -> int:
    """How many servers are registered under the key (free or busy); WrpnError when none is."""
    host, port = parse_address(device.tracker)
    summary = tracker_summary(host, port)
    count = sum(1 for server in summary.get("server_info", []) if str(server.get("key", "")).split(":")[-1] == device.key)
    if count == 0:
        raise WrpnError(f"no device is registered under key {device.key!r} at the tracker {host}:{port}")
    return count


def check_device(spec: TargetSpec, device: DeviceSpec) -> None:
    """Refuse to time code for a board on this host."""
    if device.is_local and spec.is_remote_arch:
        raise WrpnError(
            f"target {spec.name} does not run on this host: time its candidates on a device "
            "with --rpc HOST:PORT or --tracker HOST:PORT --key KEY"
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
        return RPCRunner(config, max_workers=tracker_device_count(device))
    host, port = parse_address(device.rpc)
    # RPCRunner insists on tracker fields; with our own f_create_session they are only labels.
    config = RPCConfig(tracker_host=host, tracker_port=port, tracker_key="direct", session_timeout_sec=timeout)
    return RPCRunner(config, f_create_session=functools.partial(connect_direct, host, port, device.timeout), max_workers=1)
