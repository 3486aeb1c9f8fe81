"""The WRPN accuracy experiment on MNIST-5k: does widening buy back what low precision costs?

Paired design: seed s fixes the stratified 80/20 split, the validation split held out of the
training part, the initialisation and the data order, for every configuration. Each run keeps
the epoch with the best validation accuracy (early stopping; the test split chooses nothing).

1. FP32 1x per seed with random-shift augmentation: the reference, and the teacher and starting
   point of that seed's WRPN runs.
2. 1x 2/2, 2x 4/2, 2x 2/2, 2x 1/1 and 3x 1/1 for every seed, with every training option on
   (distillation from the teacher, init-from it, shifts, warm-up).
3. Each configuration (--compiled-seeds) compiled for the host with TVM, the whole test split run
   through the compiled library, beside PyTorch's accuracy on the same images.
4. What each option did: on 2x 2/2 (--ablation-seeds), each option off in turn, and all off; and
   FP32 1x without augmentation. The variant with the best mean validation accuracy is named as
   the recipe to keep; the test split decides nothing. One variant is the recipe with a longer
   schedule (more epochs, more patience), which --longer-seeds also trains on the three targets.
5. A wide teacher (--wide-teacher-seeds): FP32 at the student's width (2x, 3x) trained per seed,
   and the three targets with the longer schedule distilled from it and started from its weights, as
   Apprentice (Mishra & Marr 2018) distils from a larger full-precision network. Compared to the
   longer schedule's runs of the same seeds, and to FP32 1x as everything else.

Runs go in that order, except that 2x 4/2 and 2x 2/2 (the targets) run for every seed first, then
2x 2/2 with every option off, then 3x 1/1, the other configurations, each option off in turn, and
FP32 1x without augmentation last; a compiled model as soon as it is trained.
Reported: per configuration the mean test accuracy, and against FP32 1x the mean paired difference
with its 95% Student-t interval, against the paper's compute cost (wrpn_tvm.nn.cost).

    python benchmarks/accuracy_mnist5k.py [--seeds 0 1 2 3 4] [--longer-seeds 5 6] [--wide-teacher-seeds 0 1]
        [--workers 2] [--workdir DIR]

Every finished run is appended to benchmarks/results/accuracy_mnist5k.runs.jsonl at once, and the
models stay in --workdir, so the same command resumes after a stop (an interrupted run continues
from its last epoch checkpoint); the tables are rewritten after every run. On a fresh checkout (the
runs log only) a teacher is trained again where a run of its seed still needs it, logged apart: the
tables keep the recorded run, and say how close the new one came. Targets (issue 17):
2x 4/2 and 2x 2/2 within 0.5 points of FP32 1x, 3x 1/1 within 1 point, the upper end of the 95%
interval of the gap included.
"""

import argparse
import collections
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "accuracy_mnist5k"
# (label, width, activation bits, weight bits)
CONFIGS = [("FP32 1x", 1.0, 32, 32), ("1x 2/2", 1.0, 2, 2), ("2x 4/2", 2.0, 4, 2), ("2x 2/2", 2.0, 2, 2),
           ("2x 1/1", 2.0, 1, 1), ("3x 1/1", 3.0, 1, 1)]
TARGETS = {"2x 4/2": 0.5, "2x 2/2": 0.5, "3x 1/1": 1.0}  # largest allowed gap to FP32 1x, in points
WIDTHS = {label: width for label, width, *_ in CONFIGS}
MIN_TARGET_SEEDS = 5  # a target is judged on at least this many paired seeds (issue 17)
ABLATION_CONFIG = "2x 2/2"
RECIPE = "all options"
REFERENCE = ("FP32 1x", "augmented")
ALL_ON = {"kd": True, "init": True, "shift": 2, "warmup": 1}
LONGER = "longer schedule"
VARIANTS = {  # name -> training options of a WRPN run
    "all options": ALL_ON,
    "no distillation": {**ALL_ON, "kd": False},
    "no init-from": {**ALL_ON, "init": False},
    "no augmentation": {**ALL_ON, "shift": 0},
    "no warm-up": {**ALL_ON, "warmup": 0},
    "none (from scratch)": {"kd": False, "init": False, "shift": 0, "warmup": 0},
    # Whether the recipe's runs stop before their curves flatten: twice the epochs, more patience.
    LONGER: {**ALL_ON, "epochs": 24, "patience": 8},
}
SCRATCH = "none (from scratch)"
# The longer schedule, distilled from and started from FP32 at the student's width (not in VARIANTS:
# its teacher is another model).
WIDE = "wide teacher"
WIDE_TEACHERS = {2.0: "FP32 2x", 3.0: "FP32 3x"}  # student width -> its teacher
WIDE_CONFIGS = tuple(TARGETS)
FP32_VARIANTS = {"augmented": {"shift": 2}, "plain": {"shift": 0}}
VAL_FRACTION = 0.1
# Relative cost of a 1x-wide epoch, to run the longest jobs first (the workers then end together).
WIDTH_COST = {1.0: 1, 2.0: 3, 3.0: 6}


def slug(label: str) -> str:
    return label.lower().replace(" ", "-").replace("/", "")


def model_path(workdir: Path, label: str, variant: str, seed: int) -> Path:
    return workdir / f"{slug(label)}-{slug(variant).strip('()')}-s{seed}.pt2"


def run_training(job: dict) -> dict:
    """Train one (configuration, variant, seed) in a worker process with one thread."""
    import torch

    torch.set_num_threads(1)
    from wrpn_tvm.train import train

    start = time.time()
    options = job["options"]
    teacher = job.get("teacher")
    result = train("smallcnn", job["width"], job["abits"], job["wbits"], "mnist5k", job["epochs"], job["output"],
                   seed=job["seed"], resume=True, progress=False, val_fraction=VAL_FRACTION, patience=job["patience"],
                   teacher=teacher if options.get("kd") else None, init_from=teacher if options.get("init") else None,
                   augment_shift=options["shift"], warmup_epochs=options.get("warmup", 0))
    keep = ("test_accuracy", "val_accuracy", "exported_epoch", "epochs_trained", "history")
    return {"kind": "train", **{k: job[k] for k in ("label", "variant", "width", "abits", "wbits", "seed", "epochs",
                                                     "patience", "options")},
            **{k: result[k] for k in keep}, "seconds": time.time() - start}


def run_compiled(job: dict) -> dict:
    """Compile one trained model for the host and run the whole test split through it and through PyTorch."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from wrpn_tvm import runtime
    from wrpn_tvm.build import compile_model
    from wrpn_tvm.data import load_dataset
    from wrpn_tvm.pt2 import load_program

    start = time.time()
    program = Path(job["program"])
    library = program.with_suffix(".so")
    compile_model(program, target="host", output=library)
    compile_seconds = time.time() - start
    data = load_dataset("mnist5k", seed=job["seed"])
    module = load_program(program).module()
    with runtime.load(library) as loaded, torch.inference_mode():
        tvm_top1, torch_top1 = [], []
        for image in data.x_test:
            batch = image[None]
            tvm_top1.append(int(np.argmax(runtime.run_loaded(loaded, [batch], 60.0)[0])))
            torch_top1.append(int(module(torch.from_numpy(batch)).argmax()))
    tvm_top1, torch_top1 = np.array(tvm_top1), np.array(torch_top1)
    return {"kind": "compiled", "label": job["label"], "variant": job["variant"], "seed": job["seed"],
            "images": len(data.y_test), "tvm_accuracy": float((tvm_top1 == data.y_test).mean()),
            "torch_accuracy": float((torch_top1 == data.y_test).mean()),
            "top1_agreement": float((tvm_top1 == torch_top1).mean()), "compile_seconds": compile_seconds,
            "seconds": time.time() - start}


# ---------------------------------------------------------------------------------------------- statistics

def t_interval(values: list) -> "tuple[float, float, float]":
    """(mean, lower, upper) of a 95% Student-t interval for the mean."""
    from scipy import stats

    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def train_runs(runs: list, last_epoch: bool = False) -> dict:
    """(label, variant, seed) -> test accuracy in points: of the exported (best validation) epoch, or of the last."""
    return {(r["label"], r["variant"], r["seed"]): 100 * (r["history"][-1]["test_accuracy"] if last_epoch
                                                          else r["test_accuracy"])
            for r in runs if r["kind"] == "train"}


def _difference(seeds: list, diffs: list) -> dict:
    if not diffs:
        return {"n": 0}
    mean, low, high = t_interval(diffs)
    return {"n": len(diffs), "seeds": seeds, "mean": mean, "low": low, "high": high, "diffs": diffs}


def paired(acc: dict, a: tuple, b: tuple, among=None) -> dict:
    """a - b over the seeds (of `among`, if given) both (label, variant) pairs have: mean, 95% interval, n."""
    seeds = sorted({s for (l, v, s) in acc if (l, v) == a} & {s for (l, v, s) in acc if (l, v) == b})
    seeds = [s for s in seeds if among is None or s in among]
    return _difference(seeds, [acc[(*a, s)] - acc[(*b, s)] for s in seeds])


def teachers(runs: list) -> dict:
    """(label, variant, seed) of each WRPN run -> the FP32 1x run it started from: the seed's latest teacher
    to finish before it began (a teacher trained again on another machine is another model)."""
    fp32 = [r for r in runs if r["kind"] in ("train", "teacher") and (r["label"], r["variant"]) == REFERENCE]
    found = {}
    for r in runs:
        if r["kind"] == "train" and r["label"] != REFERENCE[0]:
            earlier = [t for t in fp32 if t["seed"] == r["seed"] and t["finished"] <= r["finished"] - r["seconds"]]
            if earlier:
                found[(r["label"], r["variant"], r["seed"])] = max(earlier, key=lambda t: t["finished"])
    return found


def paired_to_teacher(acc: dict, teacher: dict, a: tuple, among=None) -> dict:
    """a minus the FP32 1x model each of its runs started from, over the seeds (of `among`, if given)."""
    seeds = sorted(s for (l, v, s) in acc if (l, v) == a and (l, v, s) in teacher and (among is None or s in among))
    return _difference(seeds, [acc[(*a, s)] - 100 * teacher[(*a, s)]["test_accuracy"] for s in seeds])


def same_teacher(teacher: dict, a: tuple, b: tuple) -> list:
    """The seeds whose runs of a and b started from the same FP32 1x model."""
    return [s for (l, v, s) in teacher if (l, v) == a and (*b, s) in teacher and teacher[(*a, s)] is teacher[(*b, s)]]


def best_variant(runs: list, seeds: list) -> "str | None":
    """The ablation variant with the best mean validation accuracy, once every ablation run is in."""
    val = {(r["variant"], r["seed"]): r["val_accuracy"] for r in runs
           if r["kind"] == "train" and r["label"] == ABLATION_CONFIG and r["variant"] in VARIANTS}
    if any((v, s) not in val for v in VARIANTS for s in seeds):
        return None
    return max(VARIANTS, key=lambda v: (statistics.mean(val[(v, s)] for s in seeds), v == RECIPE))


def target_verdicts(vs_fp32: dict) -> dict:
    """label -> whether the upper end of the 95% interval of FP32 1x minus the configuration is within its limit."""
    verdicts = {}
    for label, limit in TARGETS.items():
        d = vs_fp32.get(label, {"n": 0})
        if d["n"] >= MIN_TARGET_SEEDS:
            worst_gap = -d["low"]
            verdicts[label] = {"limit": limit, "n": d["n"], "gap": -d["mean"], "gap_upper": worst_gap,
                               "met": worst_gap <= limit, "missed_by": max(0.0, worst_gap - limit)}
    return verdicts


def summarize(runs: list, args) -> dict:
    from wrpn_tvm.nn.cost import compute_cost

    acc = train_runs(runs)
    teacher = teachers(runs)
    reference = REFERENCE
    rows = []
    for label, width, abits, wbits in CONFIGS:
        variant = reference[1] if label == "FP32 1x" else RECIPE
        values = [acc[(label, variant, s)] for s in args.seeds if (label, variant, s) in acc]
        if not values:
            continue
        fmas, bit_fmas = compute_cost("smallcnn", width, abits, wbits)
        mean, low, high = t_interval(values)
        rows.append({"label": label, "variant": variant, "width": width, "abits": abits, "wbits": wbits,
                     "runs": len(values), "accuracies": values, "mean": mean, "low": low, "high": high,
                     "std": statistics.stdev(values) if len(values) > 1 else 0.0, "fmas": fmas, "bit_fmas": bit_fmas,
                     "vs_fp32": paired_to_teacher(acc, teacher, (label, variant), args.seeds)})
    ablation = []
    for variant in VARIANTS:
        values = [acc[(ABLATION_CONFIG, variant, s)] for s in args.ablation_seeds
                  if (ABLATION_CONFIG, variant, s) in acc]
        if values:
            ablation.append({"variant": variant, "options": VARIANTS[variant], "runs": len(values),
                             "mean": statistics.mean(values),
                             "val_mean": statistics.mean(100 * r["val_accuracy"] for r in runs if r["kind"] == "train"
                                                         and r["label"] == ABLATION_CONFIG and r["variant"] == variant
                                                         and r["seed"] in args.ablation_seeds),
                             "vs_all": paired(acc, (ABLATION_CONFIG, variant), (ABLATION_CONFIG, RECIPE),
                                              args.ablation_seeds),
                             "vs_fp32": paired_to_teacher(acc, teacher, (ABLATION_CONFIG, variant),
                                                          args.ablation_seeds)})
    longer = []
    for label in TARGETS:
        seeds = [s for s in args.longer_seeds if (label, LONGER, s) in acc]
        if seeds:
            comparable = [s for s in same_teacher(teacher, (label, LONGER), (label, RECIPE)) if s in seeds]
            mean, low, high = t_interval([acc[(label, LONGER, s)] for s in seeds])
            longer.append({"label": label, "seeds": seeds, "mean": mean, "low": low, "high": high,
                           "recipe_seeds": comparable,
                           "recipe_mean": statistics.mean(acc[(label, RECIPE, s)] for s in comparable) if comparable else None,
                           "vs_recipe": paired(acc, (label, LONGER), (label, RECIPE), comparable),
                           "vs_fp32": paired_to_teacher(acc, teacher, (label, LONGER), args.longer_seeds)})
    wide = []
    for label in WIDE_CONFIGS:
        seeds = [s for s in args.wide_teacher_seeds if (label, WIDE, s) in acc]
        if seeds:
            teacher_label = WIDE_TEACHERS[WIDTHS[label]]
            mean, low, high = t_interval([acc[(label, WIDE, s)] for s in seeds])
            wide.append({"label": label, "seeds": seeds, "mean": mean, "low": low, "high": high,
                         "teacher": teacher_label,
                         "teacher_mean": statistics.mean(acc[(teacher_label, "augmented", s)] for s in seeds),
                         "vs_longer": paired(acc, (label, WIDE), (label, LONGER), seeds),
                         "vs_fp32": paired_to_teacher(acc, teacher, (label, WIDE), seeds)})
    # Whether the wide teacher is worth making a default: its gain over the longer schedule per seed,
    # averaged over the targets (one value per seed: a seed's runs share its split and data order).
    both = [s for s in args.wide_teacher_seeds if all((label, v, s) in acc for label in WIDE_CONFIGS for v in (WIDE, LONGER))]
    wide_gain = _difference(both, [statistics.mean(acc[(label, WIDE, s)] - acc[(label, LONGER, s)] for label in WIDE_CONFIGS)
                                   for s in both])
    targets = {"recipe": target_verdicts({row["label"]: row["vs_fp32"] for row in rows}),
               "longer": target_verdicts({l["label"]: l["vs_fp32"] for l in longer}),
               "wide": target_verdicts({w["label"]: w["vs_fp32"] for w in wide})}
    fp32 = {"augmented": paired(acc, REFERENCE, ("FP32 1x", "plain"))}
    # The same comparison on the last trained epoch instead of the best one on the (400-image) validation split.
    last = train_runs(runs, last_epoch=True)
    last_epoch = [{"label": row["label"], "mean": statistics.mean(last[(row["label"], row["variant"], s)]
                                                                  for s in args.seeds if (row["label"], row["variant"], s) in last),
                   "vs_fp32": paired(last, (row["label"], row["variant"]), reference)} for row in rows]
    compiled = [r for r in runs if r["kind"] == "compiled"]
    recorded = {r["seed"]: r for r in runs if r["kind"] == "train" and (r["label"], r["variant"]) == REFERENCE}
    teachers_again = [{"seed": r["seed"], "recorded": 100 * recorded[r["seed"]]["test_accuracy"],
                       "recorded_on": recorded[r["seed"]].get("machine", "?"), "again": 100 * r["test_accuracy"],
                       "again_on": r.get("machine", "?")} for r in runs
                      if r["kind"] == "teacher" and (r["label"], r["variant"]) == REFERENCE]
    return {"experiment": NAME, "model": "smallcnn",
            "dataset": "mnist5k: per seed a stratified 4000/1000 train/test split, 10% of train held out for validation",
            "seeds": args.seeds, "ablation_seeds": args.ablation_seeds, "epochs": {"fp32": args.fp32_epochs,
                                                                                   "wrpn": args.epochs},
            "patience": args.patience, "recipe": RECIPE, "best_by_validation": best_variant(runs, args.ablation_seeds),
            "reference": list(reference), "rows": rows,
            "targets": targets, "ablation": ablation, "last_epoch": last_epoch, "fp32_augmentation": fp32["augmented"], "compiled": compiled,
            "teachers_again": teachers_again, "longer_seeds": args.longer_seeds, "longer": longer,
            "wide_teacher_seeds": args.wide_teacher_seeds, "wide": wide, "wide_gain": wide_gain}


# ---------------------------------------------------------------------------------------------- report

def _ci(p: dict) -> str:
    if not p or p.get("n", 0) == 0:
        return "-"
    if p["n"] < 2:
        return f"{p['mean']:+.2f} (n=1)"
    return f"{p['mean']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}]"


def write_markdown(summary: dict, meta: dict, path: Path) -> None:
    s = summary
    rows = {row["label"]: row for row in s["rows"]}
    complete = meta["complete"]
    lines = [f"# WRPN accuracy on MNIST-5k (smallcnn), paired seeds{'' if complete else ' -- PARTIAL'}", ""]
    if not complete:
        lines += [f"**Partial result**: {meta['missing']}. Resume with `{meta['command']}` (the same command).", ""]
    lines += [
        f"Command: `{meta['command']}`. {s['dataset']}. Seeds {s['seeds']} (ablation: {s['ablation_seeds']}); each "
        "seed fixes the split, the initialisation and the data order for every configuration. Up to "
        f"{s['epochs']['fp32']} epochs (FP32) / {s['epochs']['wrpn']} (WRPN), cosine learning rate, Adam 0.03, batch 64; "
        f"each run exports the epoch with the best validation accuracy and stops after {s['patience']} epochs without "
        "a better one. Test accuracy in %; intervals are 95% Student-t over seeds. Cost = FMAs x (activation bits + "
        "weight bits) per image (wrpn_tvm.nn.cost), full-precision first/last layers at 32+32.", "",
        f"WRPN runs: {_options(VARIANTS[s['recipe']])}, from the same seed's FP32 1x (augmented), which is also the "
        "reference. Best ablation variant by mean validation accuracy (what to keep as the default): "
        f"**{s['best_by_validation'] or 'not known yet (ablation incomplete)'}**.", "",
        "## Accuracy and the paired difference to FP32 1x", "",
        "| config | training | seeds | mean test acc [95% CI] | std | paired diff vs FP32 1x [95% CI] | MFMAs | cost (Gbit-FMAs) | relative cost |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    base_cost = rows["FP32 1x"]["bit_fmas"] if "FP32 1x" in rows else None
    for row in s["rows"]:
        ci = f"{row['mean']:.2f} [{row['low']:.2f}, {row['high']:.2f}]" if row["runs"] > 1 else f"{row['mean']:.2f}"
        rel = f"{row['bit_fmas'] / base_cost:.3f}x" if base_cost else "-"
        lines.append(f"| {row['label']} | {row['variant']} | {row['runs']} | {ci} | {row['std']:.2f} | "
                     f"{_ci(row['vs_fp32']) if row['label'] != 'FP32 1x' else '(reference)'} | {row['fmas'] / 1e6:.2f} | "
                     f"{row['bit_fmas'] / 1e9:.3f} | {rel} |")
    lines += ["", "Targets (gap = the FP32 1x model a run started from minus the run; met when the upper end of its "
              "95% interval is within the limit):", ""]
    lines += _verdict_lines(s["targets"]["recipe"])
    lines += ["", "The same on the test accuracy of the last trained epoch (where early stopping stopped, or the last), "
              "not the best one on the validation split:", "",
              "| config | mean test acc | paired diff vs FP32 1x [95% CI] |", "| --- | --- | --- |"]
    lines += [f"| {r['label']} | {r['mean']:.2f} | {_ci(r['vs_fp32']) if r['label'] != 'FP32 1x' else '(reference)'} |"
              for r in s["last_epoch"]]
    if s["fp32_augmentation"].get("n"):
        lines += ["", f"FP32 1x, augmented minus plain (paired): {_ci(s['fp32_augmentation'])} points."]
    if s["teachers_again"]:
        lines += ["", "FP32 1x teachers trained again for their files (a fresh checkout keeps only the runs log; the "
                  "table above keeps the recorded runs, and a run that started from a teacher trained again is "
                  "compared to that teacher): " + "; ".join(
                      f"seed {t['seed']} {t['recorded']:.2f}% recorded on {t['recorded_on']}, {t['again']:.2f}% again "
                      f"on {t['again_on']}" for t in s["teachers_again"]) + "."]
    lines += ["", f"## What each training option did ({ABLATION_CONFIG}, seeds {s['ablation_seeds']})", "",
              "| variant | options | runs | mean test acc | mean val acc | paired diff vs all options [95% CI] | paired diff vs FP32 1x [95% CI] |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for a in s["ablation"]:
        lines.append(f"| {a['variant']} | {_options(a['options'])} | {a['runs']} | {a['mean']:.2f} | "
                     f"{a['val_mean']:.2f} | {_ci(a['vs_all']) if a['variant'] != 'all options' else '-'} | "
                     f"{_ci(a['vs_fp32'])} |")
    lines += ["", "A negative difference against \"all options\" means that switching the option off cost accuracy."]
    if s["longer"]:
        lines += ["", f"## The longer schedule on the targets (seeds {s['longer_seeds']})", "",
                  f"The recipe with up to {VARIANTS[LONGER]['epochs']} epochs and patience {VARIANTS[LONGER]['patience']}, "
                  "against the FP32 1x model each run started from, and against the recipe's runs of the seeds that "
                  "started from the same model (a teacher trained again on another machine is another model).", "",
                  "| config | seeds | mean test acc | paired diff vs FP32 1x [95% CI] | seeds with the recipe's teacher "
                  "| their recipe mean | paired diff vs recipe [95% CI] |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {l['label']} | {len(l['seeds'])} | {l['mean']:.2f} | {_ci(l['vs_fp32'])} | {len(l['recipe_seeds'])} "
                  f"| {'-' if l['recipe_mean'] is None else format(l['recipe_mean'], '.2f')} | {_ci(l['vs_recipe'])} |"
                  for l in s["longer"]]
        if s["targets"]["longer"]:
            lines += ["", "Targets with the longer schedule:", ""] + _verdict_lines(s["targets"]["longer"])
    if s["wide"]:
        lines += ["", f"## A wide teacher (seeds {s['wide_teacher_seeds']})", "",
                  "FP32 at the student's width (augmented, as FP32 1x) trained per seed; the longer schedule distilled "
                  "from it and started from its weights, against the longer schedule's runs of the same seeds and the "
                  "FP32 1x model those started from (a wide teacher's gain over its FP32 1x twin is not subtracted). "
                  "Tried after the recipe and the longer schedule missed the targets: a verdict here is the third try.",
                  "", "| config | seeds | mean test acc | teacher | teachers' mean | paired diff vs longer schedule "
                  "[95% CI] | paired diff vs FP32 1x [95% CI] |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {w['label']} | {len(w['seeds'])} | {w['mean']:.2f} | {w['teacher']} | {w['teacher_mean']:.2f} | "
                  f"{_ci(w['vs_longer'])} | {_ci(w['vs_fp32'])} |" for w in s["wide"]]
        if s["wide_gain"]["n"] > 1:
            lines += ["", f"The wide teacher against the longer schedule, per seed averaged over {', '.join(WIDE_CONFIGS)} "
                      f"({s['wide_gain']['n']} seeds): {_ci(s['wide_gain'])} points."]
        if s["targets"]["wide"]:
            lines += ["", "Targets with a wide teacher:", ""] + _verdict_lines(s["targets"]["wide"])
    lines += ["", "## The compiled library on the host (whole test split, batch 1)", "",
              "| config | training | seed | images | TVM accuracy | PyTorch accuracy | top-1 agreement | compile s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in s["compiled"]:
        lines.append(f"| {c['label']} | {c['variant']} | {c['seed']} | {c['images']} | {100 * c['tvm_accuracy']:.2f} | "
                     f"{100 * c['torch_accuracy']:.2f} | {100 * c['top1_agreement']:.2f}% | {c['compile_seconds']:.0f} |")
    m = meta["machine"]
    machines = "; ".join(f"{count} on {name}" for name, count in meta["runs_per_machine"].items())
    lines += ["", "## Training curves", "", f"![accuracy and curves]({NAME}.png)", "",
              f"Runs per machine: {machines}. This report: {m['cpu']} (LLVM CPU {m.get('llvm_cpu', '?')}), torch {m['torch']}, "
              f"python {m['python']}, commit {m['commit']}. {meta['train_seconds'] / 60:.0f} min of training in {meta['train_runs']} runs "
              f"and {meta['compile_seconds'] / 60:.1f} min compiling and running compiled models, on {meta['workers']} "
              f"worker processes with one thread each under nice, on a 2-core machine shared with other jobs; "
              f"wall clock of the session(s): {meta['wall_minutes']:.0f} min.", ""]
    path.write_text("\n".join(lines))


def _verdict_lines(verdicts: dict) -> list:
    lines = []
    for label, t in verdicts.items():
        verdict = "met" if t["met"] else f"missed by {t['missed_by']:.2f} points"
        lines.append(f"- {label} ({t['n']} seeds): gap {t['gap']:+.2f} points, 95% interval upper end "
                     f"{t['gap_upper']:+.2f} (limit {t['limit']}): **{verdict}**")
    return lines


def _options(o: dict) -> str:
    parts = [name for name, on in (("distillation", o["kd"]), ("init-from FP32", o["init"])) if on]
    if o["shift"]:
        parts.append(f"shift +-{o['shift']} px")
    if o.get("warmup"):
        parts.append(f"warm-up {o['warmup']} epoch")
    if o.get("epochs"):
        parts.append(f"up to {o['epochs']} epochs, patience {o['patience']}")
    return ", ".join(parts) or "none"


def write_plot(summary: dict, runs: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    colors = dict(zip([c[0] for c in CONFIGS], ["black", "tab:blue", "tab:orange", "tab:red", "tab:purple",
                                                 "tab:green"]))
    for row in summary["rows"]:
        if row["runs"] < 2:
            continue
        x = row["bit_fmas"] / 1e9
        left.errorbar(x, row["mean"], yerr=[[row["mean"] - row["low"]], [row["high"] - row["mean"]]], fmt="o",
                      capsize=4, color=colors[row["label"]], label=f"{row['label']} ({row['runs']} seeds)")
        left.annotate(row["label"], (x, row["mean"]), textcoords="offset points", xytext=(6, -3), fontsize=8)
    costs = {row["label"]: row["bit_fmas"] / 1e9 for row in summary["rows"]}
    for l in summary["longer"]:
        if len(l["seeds"]) >= 2 and l["label"] in costs:
            left.errorbar(costs[l["label"]] * 1.08, l["mean"], yerr=[[l["mean"] - l["low"]], [l["high"] - l["mean"]]],
                          fmt="s", mfc="white", capsize=4, color=colors[l["label"]],
                          label=f"{l['label']} {LONGER} ({len(l['seeds'])} seeds)")
    for w in summary["wide"]:
        if len(w["seeds"]) >= 2 and w["label"] in costs:
            left.errorbar(costs[w["label"]] * 1.16, w["mean"], yerr=[[w["mean"] - w["low"]], [w["high"] - w["mean"]]],
                          fmt="D", mfc="white", capsize=4, color=colors[w["label"]],
                          label=f"{w['label']} {WIDE} {w['teacher']} ({len(w['seeds'])} seeds)")
    base = next((row for row in summary["rows"] if row["label"] == "FP32 1x"), None)
    if base:
        left.axhline(base["mean"] - 0.5, color="grey", linestyle=":", linewidth=1, label="FP32 1x mean - 0.5")
        left.axhline(base["mean"] - 1.0, color="grey", linestyle="--", linewidth=1, label="FP32 1x mean - 1")
    left.set_xscale("log")
    left.set_xlabel("compute cost per image: FMAs x (act bits + weight bits), Gbit-FMAs (log)")
    left.set_ylabel("test top-1 accuracy (%), mean and 95% CI over seeds")
    left.set_title("accuracy against the paper's compute cost")
    left.legend(fontsize=7, loc="upper left")
    left.grid(True, which="both", alpha=0.3)
    # Curves: mean validation accuracy per epoch over seeds, for each configuration as reported.
    for row in summary["rows"]:
        histories = [r["history"] for r in runs if r["kind"] == "train" and r["label"] == row["label"]
                     and r["variant"] == row["variant"] and r["seed"] in summary["seeds"]]
        if not histories:
            continue
        length = max(len(h) for h in histories)
        mean = [statistics.mean(100 * h[e]["val_accuracy"] for h in histories if len(h) > e) for e in range(length)]
        right.plot(range(1, length + 1), mean, color=colors[row["label"]], label=f"{row['label']} ({row['variant']})")
    for label, variant, style in [(ABLATION_CONFIG, SCRATCH, ":")] + [(label, LONGER, "--") for label in TARGETS]:
        histories = [r["history"] for r in runs if r["kind"] == "train" and r["label"] == label
                     and r["variant"] == variant]
        if histories:
            length = max(len(h) for h in histories)
            right.plot(range(1, length + 1), [statistics.mean(100 * h[e]["val_accuracy"] for h in histories
                                                              if len(h) > e) for e in range(length)],
                       color=colors[label], linestyle=style, label=f"{label} ({variant})")
    right.set_ylim(90, 100)
    right.set_xlabel("epoch")
    right.set_ylabel("validation accuracy (%), mean over seeds")
    right.set_title("training curves")
    right.legend(fontsize=7, loc="lower right")
    right.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine_label(m: dict) -> str:
    return f"{m['cpu']} ({m.get('llvm_cpu', '?')})"


def machine() -> dict:
    import torch

    from wrpn_tvm.runtime import machine_info

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {**machine_info(), "torch": torch.__version__, "platform": platform.platform(), "commit": commit}


# ---------------------------------------------------------------------------------------------- driver

class Plan:
    """The jobs still to run, given what the runs log already holds; new ones appear as their inputs finish."""

    def __init__(self, args, runs: list):
        self.args, self.runs = args, runs

    def _done(self, kind: str, label: str, variant: str, seed: int) -> bool:
        return any(r["kind"] == kind and r["label"] == label and r["variant"] == variant and r["seed"] == seed
                   for r in self.runs)

    def _teacher(self, seed: int, label: str = "FP32 1x") -> "Path | None":
        path = model_path(self.args.workdir, label, "augmented", seed)
        return path if self._done("train", label, "augmented", seed) and path.is_file() else None

    def _train_job(self, label, width, abits, wbits, variant, options, seed, epochs) -> dict:
        return {"fn": "train", "label": label, "variant": variant, "width": width, "abits": abits, "wbits": wbits,
                "seed": seed, "epochs": options.get("epochs", epochs),
                "patience": options.get("patience", self.args.patience), "options": options,
                "output": str(model_path(self.args.workdir, label, variant, seed)), "teacher": None}

    def ready(self, blocked: bool = False) -> list:
        """Every job not done whose inputs exist (a model whose file is gone counts as not done); with
        `blocked`, also those still waiting for their teacher (for the report of what is missing)."""
        args, jobs = self.args, []
        specs = {label: (w, a, b) for label, w, a, b in CONFIGS}
        # The targets' configurations first, for every seed; then what the whole recipe did (all options off);
        # then 3x 1/1, the other configurations, each option off in turn, and FP32 1x without augmentation.
        rank = {"2x 4/2": 1, "2x 2/2": 1, "3x 1/1": 2}
        wanted = [(label, RECIPE, seed, (rank.get(label, 3), seed)) for seed in args.seeds for label, *_ in CONFIGS[1:]]
        # Option by option (every seed of one before the next), so a stopped ablation still compares some fully.
        wanted += [(ABLATION_CONFIG, variant, seed, (1.5, seed) if variant == SCRATCH else (5, index, seed))
                   for index, variant in enumerate(VARIANTS) for seed in args.ablation_seeds]
        # The longer schedule on the targets' configurations; each run is paired with the teacher it started from.
        wanted += [(label, LONGER, seed, (7, seed)) for seed in args.longer_seeds for label in TARGETS]
        # A finished teacher whose file is gone (a fresh checkout keeps only the runs log) is trained again
        # only where a run of its seed still needs it, so adding seeds does not redo the finished ones.
        needs_teacher = {seed for label, variant, seed, _ in wanted if not self._done("train", label, variant, seed)}
        needs_teacher |= {seed for seed in args.compiled_seeds if not self._done("compiled", *REFERENCE, seed)}
        for seed in sorted(set(args.seeds) | set(args.ablation_seeds)):
            for variant, options in FP32_VARIANTS.items():
                if variant == "plain" and seed not in args.seeds:
                    continue
                path = model_path(args.workdir, "FP32 1x", variant, seed)
                kept = path.is_file() or variant == "plain" or seed not in needs_teacher
                done = self._done("train", "FP32 1x", variant, seed)
                if not (done and kept):
                    job = self._train_job("FP32 1x", 1.0, 32, 32, variant, options, seed, args.fp32_epochs)
                    # Trained again for its file only: logged apart, so the reference keeps the recorded run.
                    jobs.append({**job, "retrain": done, "priority": (0, seed) if variant == "augmented" else (6, seed)})
        for seed in args.wide_teacher_seeds:
            for width, label in WIDE_TEACHERS.items():
                teacher = self._teacher(seed, label)
                students = [student for student in WIDE_CONFIGS
                            if WIDTHS[student] == width and not self._done("train", student, WIDE, seed)]
                done = self._done("train", label, "augmented", seed)
                # As FP32 1x's: a finished teacher whose file is gone is trained again only for a student, logged apart.
                # A seed's students go right after its teacher, so a stopped experiment leaves whole seeds.
                if teacher is None and (students or not done):
                    jobs.append({**self._train_job(label, width, 32, 32, "augmented", FP32_VARIANTS["augmented"],
                                                   seed, args.fp32_epochs), "retrain": done, "priority": (8, seed)})
                for student in students:
                    if teacher is not None or blocked:
                        jobs.append({**self._train_job(student, *specs[student], WIDE, VARIANTS[LONGER], seed,
                                                       args.epochs), "teacher": str(teacher), "priority": (8, seed, 1)})
        seen = set()
        for label, variant, seed, priority in wanted:
            teacher = self._teacher(seed)
            if (label, variant, seed) in seen or self._done("train", label, variant, seed) or (
                    teacher is None and not blocked):
                continue
            seen.add((label, variant, seed))
            job = self._train_job(label, *specs[label], variant, VARIANTS[variant], seed, args.epochs)
            jobs.append({**job, "teacher": str(teacher), "priority": priority})
        for label, *_ in CONFIGS:
            variant = REFERENCE[1] if label == "FP32 1x" else RECIPE
            for seed in args.compiled_seeds:
                program = model_path(args.workdir, label, variant, seed)
                if (self._done("train", label, variant, seed) and program.is_file()
                        and not self._done("compiled", label, variant, seed)):
                    jobs.append({"fn": "compiled", "label": label, "variant": variant, "seed": seed,
                                 "program": str(program), "priority": (0.5, seed)})
        return sorted(jobs, key=lambda job: job["priority"])


def _key(job: dict) -> tuple:
    return job["fn"], job["label"], job["variant"], job["seed"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--ablation-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--longer-seeds", type=int, nargs="*", default=[],
                        help="seeds to train the targets' configurations with the longer schedule too")
    parser.add_argument("--wide-teacher-seeds", type=int, nargs="*", default=[],
                        help="seeds to train FP32 2x and 3x and the targets distilled from the one of their width")
    parser.add_argument("--compiled-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=16, help="most epochs of a WRPN run")
    parser.add_argument("--fp32-epochs", type=int, default=24, help="most epochs of an FP32 run")
    parser.add_argument("--patience", type=int, default=6, help="early stopping on the validation split")
    parser.add_argument("--workers", type=int, default=2, help="worker processes, one thread each")
    parser.add_argument("--workdir", type=Path, default=Path("build") / NAME, help="trained models (for resuming)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the runs log and the results")
    parser.add_argument("--report-only", action="store_true", help="rewrite the results from the runs log; train nothing")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", "1")  # the compiled models' runtime, in the workers

    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    runs_log = args.out / f"{NAME}.runs.jsonl"
    runs = [json.loads(line) for line in runs_log.read_text().splitlines()] if runs_log.exists() else []
    plan = Plan(args, runs)
    command = " ".join(["python", "benchmarks/accuracy_mnist5k.py"] + [a for a in sys.argv[1:] if a != "--report-only"])
    session = time.time()

    def report() -> None:
        pending = plan.ready(blocked=True)
        missing = [f"{job['label']} {job['variant']} seed {job['seed']} ({job['fn']})" for job in pending]
        # Wall clock: from each invocation's start to its last finished run, summed over invocations.
        sessions = {}
        for r in runs:
            sessions[r["session"]] = max(sessions.get(r["session"], 0), r["finished"] - r["session"])
        meta = {"machine": machine(), "command": command, "workers": args.workers, "complete": not missing,
                "missing": "not yet run: " + "; ".join(missing) if missing else "",
                "train_runs": sum(r["kind"] in ("train", "teacher") for r in runs),
                "train_seconds": sum(r["seconds"] for r in runs if r["kind"] in ("train", "teacher")),
                "compile_seconds": sum(r["seconds"] for r in runs if r["kind"] == "compiled"),
                "wall_minutes": sum(sessions.values()) / 60,
                "runs_per_machine": dict(collections.Counter(r.get("machine", "not recorded") for r in runs))}
        summary = summarize(runs, args)
        (args.out / f"{NAME}.json").write_text(json.dumps({**summary, **meta, "runs_log": runs_log.name}, indent=1) + "\n")
        write_markdown(summary, meta, args.out / f"{NAME}.md")
        write_plot(summary, runs, args.out / f"{NAME}.png")

    if args.report_only:
        report()
        return
    running, failed = {}, set()
    here = machine_label(machine())  # each run records where it ran: a resumed experiment may span machines
    # spawn: the parent imports torch and matplotlib for the reports, which a forked worker must not inherit
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        while True:
            in_flight = {_key(job) for job in running.values()}
            for job in plan.ready():
                if len(running) >= args.workers:
                    break
                if _key(job) not in in_flight | failed:
                    fn = run_training if job["fn"] == "train" else run_compiled
                    running[pool.submit(fn, job)] = job
                    in_flight.add(_key(job))
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                job = running.pop(future)
                try:
                    result = {**future.result(), "session": session, "finished": time.time(), "machine": here}
                    if job.get("retrain"):
                        result["kind"] = "teacher"
                except Exception as err:  # noqa: BLE001 - one failed job must not stop the others; it stays missing
                    failed.add(_key(job))
                    print(f"{job['fn']} {job['label']} {job['variant']} seed {job['seed']} failed: {err!r}", flush=True)
                    continue
                runs.append(result)
                with runs_log.open("a") as log:
                    log.write(json.dumps(result) + "\n")
                accuracy = result.get("test_accuracy", result.get("tvm_accuracy"))
                print(f"{time.strftime('%H:%M:%S')} {job['fn']:>8} {job['label']:>7} {job['variant']:<20} "
                      f"seed {job['seed']}: {100 * accuracy:.2f}% ({result['seconds']:.0f}s)", flush=True)
            report()
    report()
    print((args.out / f"{NAME}.md").read_text())


if __name__ == "__main__":
    main()
