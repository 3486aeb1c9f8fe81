"""`wrpn-tvm demo`: the whole WRPN story on this machine, no hardware needed.

Train a full-precision 1x and a WRPN 2x-wide 2-bit/2-bit small CNN on MNIST-5k (or reuse them),
compile both for the host and for a Raspberry Pi 4 (with the best shipped tuning log that applies
to the target's CPU; template defaults where none does), run the test set through the compiled models on the host and on the emulated Pi over RPC,
check agreement with PyTorch, time both against PyTorch on the host, and write `report/index.md`
with its plots.
"""

import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import build, runtime
from .errors import WrpnError
from .remote import daemons, emulator
from .remote.session import DeviceSpec
from .resources import shipped_dir


@dataclass(frozen=True)
class DemoModel:
    name: str
    label: str
    width: float
    abits: int
    wbits: int

    @property
    def cost(self) -> float:
        """The paper's compute cost relative to FP32 1x: FMAs x (activation + weight bits)."""
        from .nn import relative_cost

        return relative_cost("smallcnn", self.width, self.abits, self.wbits)


MODELS = (
    DemoModel("fp32-1x", "FP32, 1x wide", 1.0, 32, 32),
    DemoModel("wrpn-2x-a2w2", "WRPN 2x wide, 2-bit act / 2-bit weight", 2.0, 2, 2),
)


def shipped_tuning_log(model: DemoModel, target: str) -> "tuple[Path | None, str]":
    """The best shipped MetaSchedule database for this demo model that the target's CPU can use,
    or None and why there is none."""
    from .targets import resolve
    from .tuning.shipped import find_shipped_log, shipped_logs

    prefix = f"smallcnn-{model.width:g}x-a{model.abits}w{model.wbits}"
    if not shipped_logs(f"{prefix}-"):
        return None, "no tuning log ships for this model"
    log = find_shipped_log(prefix, resolve(target))
    return log, "" if log else "no shipped tuning log applies to this target's CPU"


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _train_or_reuse(model: DemoModel, data, folder: Path, epochs: int, fp32: "Path | None" = None) -> Path:
    """Train (or reuse) a demo model; a WRPN one starts from the trained FP32 model `fp32`'s weights, the one
    training option that measurably helped (benchmarks/results/accuracy_mnist5k.md: distillation, shifts and
    warm-up did not, so they stay off)."""
    from .nn import load_checkpoint
    from .train import latest_checkpoint, train

    recipe = {} if fp32 is None else {"init_from": str(fp32)}
    program = folder / f"{model.name}.pt2"
    meta_path = program.with_suffix(".json")
    if program.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if (meta.get("epochs_trained") == epochs and meta.get("abits") == model.abits
                and meta.get("wbits") == model.wbits and meta.get("width") == model.width
                and meta.get("init_from") == recipe.get("init_from")):
            _say(f"reusing {program} (test accuracy {100 * meta['test_accuracy']:.2f}%)")
            return program
    _say(f"training {model.label} on {data.name} for {epochs} epochs" + (f", starting from {fp32.name}" if fp32 else ""))
    previous = latest_checkpoint(program)  # a checkpoint from another recipe cannot be continued: start afresh
    resume = previous is not None and load_checkpoint(previous)["config"].get("init_from") == recipe.get("init_from")
    train("smallcnn", model.width, model.abits, model.wbits, data, epochs, program, resume=resume, **recipe)
    return program


def _torch_logits(program: Path, images: np.ndarray) -> np.ndarray:
    import torch

    from .pt2 import load_program

    module = load_program(program).module()
    with torch.inference_mode():
        return np.concatenate([module(torch.from_numpy(images[i:i + 1])).numpy() for i in range(len(images))])


def _compiled_logits(library: Path, images: np.ndarray, device: DeviceSpec) -> np.ndarray:
    with runtime.load(library, device) as loaded:
        return np.concatenate([runtime.run_loaded(loaded, [images[i:i + 1]], device.timeout)[0] for i in range(len(images))])


@contextlib.contextmanager
def _pi_device(rpc: "str | None"):
    """The given board, or an emulated Pi 4 on a free loopback port for the duration."""
    if rpc is not None:
        yield DeviceSpec(rpc=rpc)
        return
    port = daemons.free_port()
    _say(f"starting the emulated Raspberry Pi 4 on 127.0.0.1:{port} (TVM imports slowly under qemu)")
    emulator.start(port, "rasp4")
    try:
        yield DeviceSpec(rpc=f"127.0.0.1:{port}")
    finally:
        emulator.stop(port)


def _agreement(reference: np.ndarray, compiled: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "images": int(len(labels)),
        "top1_agreement": float(np.mean(reference.argmax(1) == compiled.argmax(1))),
        "accuracy_pytorch": float(np.mean(reference.argmax(1) == labels)),
        "accuracy_compiled": float(np.mean(compiled.argmax(1) == labels)),
        "max_abs_logit_error": float(np.max(np.abs(reference - compiled))),
    }


def demo(out: "str | Path" = "report", epochs: int = 5, host_images: "int | None" = None, pi_images: int = 200,
         emulate: bool = True, repeat: int = 20, rpc: "str | None" = None) -> dict:
    """Run the demo; returns the results that `out`/index.md reports.

    The Pi part runs on `rpc` (HOST:PORT of a real board or a running emulated one) when given,
    else on an emulated Pi 4 that the demo starts and stops itself (unless `emulate` is False).
    """
    from .data import load_dataset

    started = time.monotonic()
    out = Path(out)
    models_dir = out / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    data = load_dataset("mnist5k")
    x_test, y_test = data.x_test, data.y_test
    if host_images is not None:
        x_test, y_test = x_test[:host_images], y_test[:host_images]
    results = {"dataset": data.name, "test_images": int(len(y_test)), "models": {}}

    programs = {}
    for m in MODELS:  # the FP32 model comes first: the WRPN one starts from it
        fp32 = programs.get("fp32-1x") if m.abits != 32 or m.wbits != 32 else None
        programs[m.name] = _train_or_reuse(m, data, models_dir, epochs, fp32)
    libraries = {}
    for model in MODELS:
        for target in ("host", "rasp4"):
            log, untuned_because = shipped_tuning_log(model, target)
            _say(f"compiling {model.name} for {target}" + (f" with the shipped tuning log {log.name}" if log else
                 f" untuned (template defaults): {untuned_because}"))
            result = build.compile_model(programs[model.name], target, out / "lib" / f"{model.name}-{target}.so", tuning_log=log)
            libraries[model.name, target] = result.library
            results["models"].setdefault(model.name, {"label": model.label, "cost": model.cost, "layers": result.layers and [str(x) for x in result.layers]})
            results["models"][model.name][f"tuning_log_{target}"] = log.name if log else f"none: {untuned_because}"

    for model in MODELS:
        entry = results["models"][model.name]
        _say(f"running {len(y_test)} test images through {model.name} on the host")
        reference = _torch_logits(programs[model.name], x_test)
        entry["host"] = _agreement(reference, _compiled_logits(libraries[model.name, "host"], x_test, DeviceSpec()), y_test)
        _say(f"  top-1 agreement with PyTorch {100 * entry['host']['top1_agreement']:.2f}%, "
             f"accuracy {100 * entry['host']['accuracy_compiled']:.2f}% (PyTorch {100 * entry['host']['accuracy_pytorch']:.2f}%)")

    if pi_images > 0 and (rpc or emulate):
        with _pi_device(rpc) as device:
            for model in MODELS:
                count = min(pi_images, len(y_test))
                _say(f"running {count} test images through {model.name} on {device.describe()}")
                reference = _torch_logits(programs[model.name], x_test[:count])
                compiled = _compiled_logits(libraries[model.name, "rasp4"], x_test[:count], device)
                agreement = _agreement(reference, compiled, y_test[:count])
                results["models"][model.name]["rasp4_emulated" if rpc is None else "rasp4_remote"] = agreement
                _say(f"  top-1 agreement with PyTorch {100 * agreement['top1_agreement']:.2f}%")

    for model in MODELS:
        _say(f"timing {model.name} on the host against PyTorch eager")
        timing = runtime.bench(libraries[model.name, "host"], repeat=repeat, compare_torch=programs[model.name])
        results["models"][model.name]["bench_host"] = timing.to_json()
        _say("  " + timing.table().replace("\n", "\n  "))

    results["machine"] = runtime.machine_info()
    results["seconds"] = round(time.monotonic() - started, 1)
    write_report(out, results)
    _say(f"done in {results['seconds']:.0f} s: {out / 'index.md'}")
    return results


def _copy_committed_plot(name: str, out: Path) -> bool:
    """Committed benchmark plots (accuracy over 3 seeds, tuning curves) take too long to remake here."""
    source = shipped_dir("benchmark_results") / f"{name}.png"
    if not source.is_file():
        return False
    shutil.copyfile(source, out / source.name)
    return True


def _plot_latency(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values, colors = [], [], []
    for name, entry in results["models"].items():
        bench = entry["bench_host"]
        labels += [f"{name}\nwrpn-tvm", f"{name}\nPyTorch eager"]
        values += [bench["tvm"]["median_ms"], bench["torch"]["median_ms"]]
        colors += ["tab:blue", "tab:gray"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), labels, fontsize=8)
    ax.set_ylabel("median latency (ms), batch 1")
    ax.set_title("Host CPU latency, this run")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def write_report(out: Path, results: dict) -> Path:
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = ["# wrpn-tvm demo report", "",
             f"Machine: {results['machine']['cpu']} (LLVM CPU {results['machine'].get('llvm_cpu', 'unknown')}), {results['machine']['cores']} cores; TVM {results['machine']['tvm']}. "
             f"Dataset: {results['dataset']}, {results['test_images']} held-out test images. Took {results['seconds']:.0f} s.", "",
             "## Accuracy and agreement with PyTorch", "",
             "| model | cost vs FP32 1x | PyTorch acc. | compiled acc. (host) | top-1 agreement host | top-1 agreement Pi (rasp4) | max logit error (host) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, entry in results["models"].items():
        pi = entry.get("rasp4_emulated") or entry.get("rasp4_remote") or {}
        pi_text = f"{_pct(pi.get('top1_agreement'))} of {pi['images']}" if pi else "not run"
        lines.append(f"| {entry['label']} | {entry['cost']:.3f}x | {_pct(entry['host']['accuracy_pytorch'])} | "
                     f"{_pct(entry['host']['accuracy_compiled'])} | {_pct(entry['host']['top1_agreement'])} | {pi_text} | "
                     f"{entry['host']['max_abs_logit_error']:.2e} |")
    lines += ["", "## Latency on the host (batch 1, median of repeated runs, same run for both)", "",
              "| model | wrpn-tvm ms | PyTorch eager ms | speed-up | tuning log (host) | other processes' CPU share, load average |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, entry in results["models"].items():
        bench = entry["bench_host"]
        load = bench["load"]
        speedup = f"{bench['speedup_vs_torch']:.2f}x" + (" (loaded machine: not clean)" if load["loaded"] else "")
        lines.append(f"| {entry['label']} | {bench['tvm']['median_ms']:.3f} | {bench['torch']['median_ms']:.3f} | "
                     f"{speedup} | {entry['tuning_log_host']} | "
                     f"{100 * load['others_cpu_share']:.0f}%, {load['load_average_1min']:.2f} |")
    if any(entry["bench_host"]["load"]["loaded"] for entry in results["models"].values()):
        lines += ["", f"Other processes used more than {100 * runtime.MachineLoad.LOADED_SHARE:.0f}% of the CPUs while "
                  "timing: these speed-ups are not from a quiet machine. Re-run the demo on an idle one."]
    untuned = [f"{entry['label']} ({entry['tuning_log_host'].removeprefix('none: ')})"
               for entry in results["models"].values() if entry["tuning_log_host"].startswith("none: ")]
    if untuned:
        lines += ["", f"Compiled untuned (template defaults) for the host, a {results['machine'].get('llvm_cpu', 'unknown')} "
                  f"CPU: {'; '.join(untuned)}. `wrpn-tvm tune` makes a log for this CPU."]
    lines += ["", "![latency](latency.png)", ""]
    _plot_latency(results, out / "latency.png")
    if _copy_committed_plot("accuracy_mnist5k", out):
        lines += ["## Accuracy against compute cost (committed: benchmarks/results/accuracy_mnist5k.md)", "",
                  "![accuracy vs cost](accuracy_mnist5k.png)", ""]
    if _copy_committed_plot("tuning", out):
        lines += ["## Tuning curve (committed: benchmarks/results/tuning.md)", "", "![tuning curve](tuning.png)", ""]
    lines += ["## How each layer was compiled (WRPN 2x 2/2, host)", "", "```"]
    lines += results["models"]["wrpn-2x-a2w2"].get("layers") or ["(no layer report)"]
    lines += ["```", "", "Emulated-Pi timings mean nothing for speed (qemu-user); they are not reported. "
              "Speed is measured on the host, or on a real board with `wrpn-tvm bench --rpc`.", ""]
    index = out / "index.md"
    index.write_text("\n".join(lines))
    return index


def check_demo_args(epochs: int, pi_images: int, repeat: int) -> None:
    if epochs < 1 or pi_images < 0 or repeat < 1:
        raise WrpnError("--epochs and --repeat must be at least 1, --pi-images at least 0")
