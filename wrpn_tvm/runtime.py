"""Run and benchmark a compiled model (library + sidecar) here or on a remote device over RPC.

Only the TVM runtime is needed to run; torch is imported only for `--compare-torch`.
Over RPC a Relax VM's tuple result cannot be indexed, so inputs and outputs go through
`set_input` / `invoke_stateful` / `get_outputs`, which work the same locally and remotely.
"""

import contextlib
import gc
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .artifact import built_for_target, read_sidecar
from .errors import WrpnError, one_line
from .fileio import atomic_path, write_text_atomic
from .remote.session import DeviceSpec, DeviceTimeout, as_error, bound_waits, connect, with_deadline


# Remote handles of sessions whose device stopped answering (see `load`).
_ABANDONED: list = []
RELEASE_WAIT_S = 5.0  # per remote call while freeing a session's handles


@dataclass
class LoadedModel:
    vm: object
    device: object
    session: object
    meta: dict



@contextlib.contextmanager
def load(library: "str | os.PathLike", device: DeviceSpec = DeviceSpec()):
    """Load a compiled library on the device; yields a LoadedModel."""
    import tvm
    from tvm import relax

    meta = read_sidecar(library)
    kind = meta["target"]["json"].get("kind", "llvm")
    if device.is_local and meta["target"].get("cross_compiler"):
        raise WrpnError(f"{library} is built for {meta['target']['name']} (aarch64): run it on a device with --rpc or --tracker")
    if device.is_local and kind == "llvm":
        _check_cpu_runs(library, meta)
    session = connect(device)
    model = None
    try:
        if session is None:
            dev = tvm.cuda(0) if kind == "cuda" else tvm.cpu(0)
            if kind == "cuda" and not dev.exist:
                raise WrpnError(f"{library} is built for CUDA but this machine has no NVIDIA GPU")
            model = LoadedModel(relax.VirtualMachine(tvm.runtime.load_module(str(library)), dev), dev, None, meta)
        else:
            def upload_and_load():
                session.upload(str(library))
                dev = session.cuda(0) if kind == "cuda" else session.cpu(0)
                return LoadedModel(relax.VirtualMachine(session.load_module(Path(library).name), dev), dev, session, meta)

            model = with_deadline(upload_and_load, device.timeout, f"loading {Path(library).name} on {device.describe()}")
        yield model
    except DeviceTimeout:
        # The abandoned call still holds the connection's lock: releasing a remote handle here
        # would wait on it forever. Keep the handles; the process exits with the error instead.
        _ABANDONED.append((model, session))
        model = session = None
        raise
    finally:
        # An RPC server serves one session at a time: drop every remote handle now so the
        # connection closes here, not whenever the garbage collector gets to it.
        held, model, session = [model, session], None, None  # the only references left: in `held`
        _release(held, device)


def _check_cpu_runs(library, meta: dict) -> None:
    """Refuse, in one line, a library that uses an instruction this CPU lacks (an x86-avx512 build
    on an AVX2 machine, an x86-avx2-vnni one on Zen 4): loading it would end the process on the
    first such instruction."""
    from .targets import cpu_label, host_cpu, missing_features, resolve

    built_for = built_for_target(library, meta["target"])
    lacking = missing_features(built_for, resolve("host").target)
    if lacking:
        raise WrpnError(f"{library} is built for {meta['target']['name']} ({cpu_label(built_for)}), which uses "
                        f"{', '.join(sorted(lacking))}: this CPU ({host_cpu()}) lacks {'it' if len(lacking) == 1 else 'them'}; "
                        "rebuild with --target host")


def _release(held: list, device: DeviceSpec) -> None:
    """Free the remote handles in held ([model, session]), within a bounded wait per remote call
    even when the device stopped answering after the outputs arrived (session.bound_waits)."""
    if held[1] is not None:
        bound_waits(held[1], min(device.timeout, RELEASE_WAIT_S))
    if held[0] is not None:
        held[0].vm = held[0].device = held[0].session = None
    held.clear()
    gc.collect()


def _check_inputs(meta: dict, inputs: list) -> list:
    expected = meta["inputs"]
    if len(inputs) != len(expected):
        raise WrpnError(f"the model takes {len(expected)} input(s), got {len(inputs)}")
    checked = []
    for spec, array in zip(expected, inputs):
        array = np.asarray(array)
        if tuple(array.shape) != tuple(spec["shape"]):
            raise WrpnError(f"input {spec['name']!r}: shape {tuple(array.shape)} given, {tuple(spec['shape'])} expected")
        checked.append(np.ascontiguousarray(array.astype(spec["dtype"], copy=False)))
    return checked


def random_inputs(meta: dict, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.random(spec["shape"], dtype=np.float64).astype(spec["dtype"]) for spec in meta["inputs"]]


def _outputs_to_numpy(outputs) -> list:
    if hasattr(outputs, "numpy"):
        return [outputs.numpy()]
    return [out.numpy() for out in outputs]


def _set_inputs(model: LoadedModel, inputs: list) -> None:
    import tvm

    tensors = [tvm.runtime.tensor(array, model.device) for array in inputs]
    model.vm.set_input("main", *tensors)


def _on_device(model: LoadedModel, fn, timeout: float, what: str):
    """fn() under a deadline when the model is on a remote device; directly on the calling thread
    when it is local (a local call cannot hang on a device, and TVM's thread pool belongs to the
    thread that calls: one caller, one pool)."""
    if model.session is not None:
        return with_deadline(fn, timeout, what)
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - TVM's checks of inputs raise assorted types
        raise as_error(err, what) from None


def run_loaded(model: LoadedModel, inputs: list, timeout: float) -> list:
    """Run a loaded model once; `timeout` bounds a remote device's answer."""
    inputs = _check_inputs(model.meta, inputs)

    def invoke():
        _set_inputs(model, inputs)
        model.vm.invoke_stateful("main")
        return _outputs_to_numpy(model.vm.get_outputs("main"))

    return _on_device(model, invoke, timeout, "running the model")


def run(library: "str | os.PathLike", inputs: list, device: DeviceSpec = DeviceSpec()) -> list:
    """Run the compiled model once on `inputs` (numpy arrays); returns its outputs as numpy arrays."""
    with load(library, device) as model:
        return run_loaded(model, inputs, device.timeout)


def load_npy_inputs(paths: list) -> list:
    """Inputs from .npy files (never pickled objects) or .npz archives."""
    arrays = []
    for path in paths:
        try:
            loaded = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise WrpnError(f"{path}: no such file") from None
        except (ValueError, OSError, EOFError) as err:
            raise WrpnError(f"{path}: not a readable .npy/.npz array file ({one_line(err)})") from None
        if isinstance(loaded, np.ndarray):
            arrays.append(loaded)
            continue
        with loaded:  # an .npz archive: its arrays in stored order
            try:
                arrays.extend(loaded[name] for name in loaded.files)
            except ValueError as err:
                raise WrpnError(f"{path}: not a readable .npz array file ({one_line(err)})") from None
    return arrays


def save_outputs(outputs: list, path: "str | os.PathLike") -> None:
    with atomic_path(path) as staged, open(staged, "wb") as file:  # a file object: numpy adds no suffix
        if len(outputs) == 1:
            np.save(file, outputs[0])
        else:
            np.savez(file, *outputs)


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    runs_ms: list

    @classmethod
    def from_seconds(cls, seconds: list) -> "Timing":
        ms = [s * 1e3 for s in seconds]
        return cls(statistics.median(ms), min(ms), max(ms), statistics.pstdev(ms), ms)


@dataclass
class BenchResult:
    library: str
    target: str
    device: str
    repeat: int
    number: int
    tvm: Timing
    torch: "Timing | None" = None
    threads: dict = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    load: dict = field(default_factory=dict)  # see MachineLoad
    memory: "dict | None" = None  # the sidecar's figures (artifact.MEMORY_COUNTS); None for older builds

    @property
    def speedup_vs_torch(self) -> "float | None":
        return None if self.torch is None else self.torch.median_ms / self.tvm.median_ms

    def to_json(self) -> dict:
        data = asdict(self)
        data["speedup_vs_torch"] = self.speedup_vs_torch
        return data

    def table(self) -> str:
        rows = [("wrpn-tvm", self.tvm)] + ([("pytorch eager", self.torch)] if self.torch else [])
        lines = [f"{self.library} on {self.device} ({self.target}), {self.repeat} runs x {self.number}",
                 f"{'':14s} {'median ms':>10s} {'min ms':>9s} {'max ms':>9s} {'std ms':>8s}"]
        lines += [f"{name:14s} {t.median_ms:10.3f} {t.min_ms:9.3f} {t.max_ms:9.3f} {t.std_ms:8.3f}" for name, t in rows]
        if self.torch:
            lines.append(f"speed-up over PyTorch (median, {self.threads['torch']} threads each): {self.speedup_vs_torch:.2f}x")
        if self.memory:
            lines.append(memory_line(self.memory))
        if self.load.get("loaded"):
            lines.append(f"note: other processes used {100 * self.load['others_cpu_share']:.0f}% of the CPUs while timing "
                         f"(load average {self.load['load_average_1min']:.1f}): not a quiet machine, the figures are not clean")
        return "\n".join(lines)


def _size(count: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def memory_line(memory: dict) -> str:
    """One line of a sidecar's memory figures, e.g. "batch 1: activations written 48.2 MiB ..."."""
    batch = "" if memory.get("batch") is None else f"batch {memory['batch']}: "
    return (f"{batch}activations written {_size(memory['activation_bytes'])} per inference "
            f"({memory['kernel_calls']} kernel calls); planned workspace {_size(memory['workspace_bytes'])} "
            f"({memory['storages']} storages)")


class MachineLoad:
    """What else ran on this machine during a measurement: the CPU time of every other process, as a
    share of all cores over the wall time, and the 1-minute load average. A share above LOADED_SHARE
    flags the figures as not clean. (The load average alone cannot tell: it counts our own work.)"""

    LOADED_SHARE = 0.10

    def __enter__(self) -> "MachineLoad":
        import psutil

        self._process = psutil.Process()
        self._start = (time.monotonic(), self._busy(psutil.cpu_times()), self._own())
        return self

    def __exit__(self, *_exc) -> None:
        import psutil

        wall, busy, own = time.monotonic(), self._busy(psutil.cpu_times()), self._own()
        cores = psutil.cpu_count() or 1
        elapsed = max(wall - self._start[0], 1e-9)
        share = max(0.0, (busy - self._start[1]) - (own - self._start[2])) / (elapsed * cores)
        self.result = {"others_cpu_share": round(min(share, 1.0), 3), "load_average_1min": os.getloadavg()[0],
                       "cores": cores, "loaded": share > self.LOADED_SHARE}

    @staticmethod
    def _busy(times) -> float:
        return sum(times) - times.idle - getattr(times, "iowait", 0.0)

    def _own(self) -> float:
        own = self._process.cpu_times()
        return own.user + own.system + own.children_user + own.children_system


def machine_info() -> dict:
    import tvm

    return {"host": platform.node(), "cpu": _cpu_model(), "llvm_cpu": tvm.target.codegen.llvm_get_system_cpu(),
            "cores": os.cpu_count(), "python": platform.python_version(), "tvm": tvm.__version__, "wrpn_tvm": __version__}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def time_loaded(model: LoadedModel, inputs: list, repeat: int, number: int, timeout: float) -> Timing:
    """TVM's time_evaluator on the device, after one warm-up run."""
    run_loaded(model, inputs, timeout)

    def measure():
        evaluator = model.vm.time_evaluator("invoke_stateful", model.device, number=number, repeat=repeat)
        return list(evaluator("main").results)

    return Timing.from_seconds(_on_device(model, measure, timeout, "timing the model"))


def tvm_threads() -> int:
    """The thread count TVM's CPU runtime uses here (TVM_NUM_THREADS, else every core)."""
    return int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))


def time_torch(program_path: "str | os.PathLike", inputs: list, repeat: int, number: int, threads: int) -> Timing:
    """PyTorch eager on the same inputs and thread count, same repeat/number scheme, after a warm-up."""
    import torch

    from .pt2 import input_specs, load_program

    program = load_program(program_path)
    takes = [(tuple(spec.shape), spec.dtype) for spec in input_specs(program)]
    given = [(tuple(array.shape), str(array.dtype)) for array in inputs]
    if takes != given:
        raise WrpnError(f"{program_path} takes inputs {_describe(takes)}, the library {_describe(given)}: "
                        "compare a library with the program it was compiled from")
    module = program.module()
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    runs = []
    try:
        with torch.inference_mode():
            module(*tensors)
            for _ in range(repeat):
                start = time.perf_counter()
                for _ in range(number):
                    module(*tensors)
                runs.append((time.perf_counter() - start) / number)
    finally:
        torch.set_num_threads(previous)
    return Timing.from_seconds(runs)


def _describe(inputs: list) -> str:
    return ", ".join(f"{dtype}{list(shape)}" for shape, dtype in inputs)


def bench(library: "str | os.PathLike", device: DeviceSpec = DeviceSpec(), repeat: int = 10, number: int = 0,
          compare_torch: "str | os.PathLike | None" = None, json_path: "str | os.PathLike | None" = None,
          seed: int = 0) -> BenchResult:
    """Time the compiled model (median/min/max/std over `repeat` runs); optionally PyTorch eager beside it."""
    if repeat < 1:
        raise WrpnError("--repeat must be at least 1")
    if compare_torch is not None and not device.is_local:
        raise WrpnError("--compare-torch times PyTorch on this machine, so it needs a local (host) library")
    with MachineLoad() as machine_load:
        with load(library, device) as model:
            inputs = random_inputs(model.meta, seed)
            if number <= 0:
                number = _auto_number(model, inputs, device.timeout)
            timing = time_loaded(model, inputs, repeat, number, device.timeout)
            target, memory = model.meta["target"]["name"], model.meta.get("memory")
        threads = {}
        torch_timing = None
        if compare_torch is not None:
            threads = {"tvm": tvm_threads(), "torch": tvm_threads()}
            torch_timing = time_torch(compare_torch, inputs, repeat, number, threads["torch"])
    result = BenchResult(str(library), target, device.describe(), repeat, number, timing, torch_timing, threads,
                         machine_info(), machine_load.result, memory)
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(result.to_json(), indent=2) + "\n")
    return result


@dataclass
class Comparison:
    """Several libraries timed round-robin in one run: the same load hits them alike."""

    libraries: list
    device: str
    repeat: int
    number: dict  # library -> calls per timed run
    timings: dict  # library -> Timing
    machine: dict = field(default_factory=dict)
    load: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)  # library -> its sidecar's figures, or None for older builds

    def to_json(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        first = self.timings[self.libraries[0]].median_ms
        lines = [f"{len(self.libraries)} libraries on {self.device}, {self.repeat} rounds, round-robin",
                 f"{'library':40s} {'median ms':>10s} {'min ms':>9s} {'max ms':>9s} {'vs first':>9s}"]
        for library in self.libraries:
            t = self.timings[library]
            lines.append(f"{library[-40:]:40s} {t.median_ms:10.3f} {t.min_ms:9.3f} {t.max_ms:9.3f} {t.median_ms / first:8.3g}x")
        base = self.memory.get(self.libraries[0])
        for library in self.libraries:
            figures = self.memory.get(library)
            if not figures:
                continue
            line = f"{library[-40:]:40s} {memory_line(figures)}"
            if library != self.libraries[0] and base and base["activation_bytes"] and base["workspace_bytes"]:
                line += (f"; {figures['activation_bytes'] / base['activation_bytes']:.3g}x the first's activations, "
                         f"{figures['workspace_bytes'] / base['workspace_bytes']:.3g}x its workspace")
            lines.append(line)
        if self.load.get("loaded"):
            lines.append(f"note: other processes used {100 * self.load['others_cpu_share']:.0f}% of the CPUs while timing")
        return "\n".join(lines)


def compare(libraries: list, device: DeviceSpec = DeviceSpec(), repeat: int = 10, number: int = 0,
            json_path: "str | os.PathLike | None" = None, seed: int = 0) -> Comparison:
    """Time several libraries round-robin: each round times every library once (`number` calls),
    so a noisy machine slows them alike. Locally all stay loaded; on a remote device (which serves
    one session at a time) each round loads each library in turn."""
    if repeat < 1:
        raise WrpnError("--repeat must be at least 1")
    libraries = [str(library) for library in libraries]
    if len(set(libraries)) != len(libraries):
        raise WrpnError("each library once, please: the same file twice compares nothing")
    samples = {library: [] for library in libraries}
    numbers: dict = {}
    memory: dict = {}

    def one_round(library, model):
        memory[library] = model.meta.get("memory")
        inputs = random_inputs(model.meta, seed)
        if library not in numbers:
            numbers[library] = number if number > 0 else _auto_number(model, inputs, device.timeout)
        samples[library] += time_loaded(model, inputs, 1, numbers[library], device.timeout).runs_ms

    with MachineLoad() as machine_load:
        if device.is_local:
            with contextlib.ExitStack() as stack:
                models = {library: stack.enter_context(load(library, device)) for library in libraries}
                for _ in range(repeat):
                    for library in libraries:
                        one_round(library, models[library])
        else:
            for _ in range(repeat):
                for library in libraries:
                    with load(library, device) as model:
                        one_round(library, model)
    result = Comparison(libraries, device.describe(), repeat, numbers,
                        {library: Timing.from_seconds([ms / 1e3 for ms in runs]) for library, runs in samples.items()},
                        machine_info(), machine_load.result, memory)
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(result.to_json(), indent=2) + "\n")
    return result


def _auto_number(model: LoadedModel, inputs: list, timeout: float) -> int:
    """Runs per timing so that one timing lasts about 100 ms (at least 1)."""
    start = time.perf_counter()
    run_loaded(model, inputs, timeout)
    once = max(time.perf_counter() - start, 1e-6)
    return max(1, min(1000, int(0.1 / once)))
