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
from .log_timing import IN_MODEL, WARM


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


# A CPU candidate is timed as it runs inside the model: its weights and output out of
# cache (a model reads each layer's weights once per inference, and they outnumber the caches), its
# input warm (the layer before just wrote it), i.e. MetaSchedule's flush of every argument but the
# first before each single call. Timed warm and averaged over 100 ms of calls instead, ResNet-18
# 2x 2/2's 56x56 conv records tuned on Intel beat the template default alone (1.42 against 1.53 ms)
# and lost to it in the model; timed so, they lose alone too (2.45 against 1.86 ms), and a 60-trial
# job beat 30-minute and 809-trial ones end to end (git history of benchmarks/results/tuning_short.md).
# Tuned with it, longer jobs are faster, though some records still gain alone and not in the model
# (the current tuning_short.md).
IN_MODEL_CALLS = 20


def in_model_timing():
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig

    return EvaluatorConfig(number=1, repeat=IN_MODEL_CALLS, min_repeat_ms=0, enable_cpu_cache_flush=True)


def timing_of(spec: TargetSpec) -> str:
    """How a measured job times spec's candidates (log_timing's kinds). A GPU has no cache flush to
    ask for, so its kernels are timed warm, as MetaSchedule does by default."""
    return WARM if spec.is_cuda else IN_MODEL


def _evaluator_config(spec: TargetSpec):
    return in_model_timing() if timing_of(spec) == IN_MODEL else None


def make_runner(spec: TargetSpec, device: DeviceSpec):
    from tvm.s_tir.meta_schedule.runner import LocalRunner, RPCConfig, RPCRunner

    check_device(spec, device)
    timeout = int(round(device.timeout))
    if device.is_local:
        return LocalRunner(timeout_sec=timeout, evaluator_config=_evaluator_config(spec))
    if device.tracker:
        host, port = parse_address(device.tracker)
        config = RPCConfig(tracker_host=host, tracker_port=port, tracker_key=device.key, session_timeout_sec=timeout)
        return RPCRunner(config, evaluator_config=_evaluator_config(spec), max_workers=registered_devices(device))
    host, port = parse_address(device.rpc)
    # RPCRunner insists on tracker fields; with our own f_create_session they are only labels.
    config = RPCConfig(tracker_host=host, tracker_port=port, tracker_key="direct", session_timeout_sec=timeout)
    return RPCRunner(config, evaluator_config=_evaluator_config(spec), max_workers=1,
                     f_create_session=functools.partial(connect_direct, host, port, device.timeout))
