"""benchmarks/accuracy_mnist5k.py's bookkeeping, without training: which runs a resumed experiment
still owes, which teacher each student waits for, and which FP32 model each run is compared to."""

import argparse
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("accuracy_mnist5k", REPO / "benchmarks" / "accuracy_mnist5k.py")
accuracy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(accuracy)


def _args(workdir: Path, **seeds) -> argparse.Namespace:
    return argparse.Namespace(seeds=seeds.get("seeds", [0]), ablation_seeds=seeds.get("ablation", []), longer_seeds=[],
                              wide_teacher_seeds=seeds.get("wide", [0]), compiled_seeds=[], epochs=12,
                              fp32_epochs=20, patience=5, workdir=workdir)


def _run(label: str, variant: str, seed: int, finished: float, accuracy_: float = 0.97, seconds: float = 1.0,
         kind: str = "train") -> dict:
    return {"kind": kind, "label": label, "variant": variant, "seed": seed, "finished": finished,
            "seconds": seconds, "test_accuracy": accuracy_, "val_accuracy": accuracy_,
            "history": [{"test_accuracy": accuracy_, "val_accuracy": accuracy_}]}


def _every_recipe_run(seed: int, finished: float) -> list:
    """FP32 1x without augmentation and every configuration's recipe run: what the wide teachers follow."""
    return [_run("FP32 1x", "plain", seed, finished)] + [_run(label, accuracy.RECIPE, seed, finished)
                                                         for label, *_ in accuracy.CONFIGS[1:]]


def _train_jobs(plan, blocked=False) -> list:
    return [(job["label"], job["variant"], job["seed"], bool(job.get("retrain")))
            for job in plan.ready(blocked) if job["fn"] == "train"]


def test_each_student_waits_for_the_fp32_teacher_of_its_width(tmp_path):
    runs = [_run("FP32 1x", "augmented", 0, 1.0), *_every_recipe_run(0, 2.0)]
    accuracy.model_path(tmp_path, "FP32 1x", "augmented", 0).touch()
    jobs = _train_jobs(accuracy.Plan(_args(tmp_path), runs))
    assert jobs == [("FP32 2x", "augmented", 0, False), ("FP32 3x", "augmented", 0, False)]
    waiting = _train_jobs(accuracy.Plan(_args(tmp_path), runs), blocked=True)
    assert {(label, seed) for label, variant, seed, _ in waiting if variant == accuracy.WIDE} == {
        ("2x 4/2", 0), ("2x 2/2", 0), ("3x 1/1", 0)}

    runs.append(_run("FP32 3x", "augmented", 0, 3.0))
    accuracy.model_path(tmp_path, "FP32 3x", "augmented", 0).touch()
    jobs = _train_jobs(accuracy.Plan(_args(tmp_path), runs))
    assert ("3x 1/1", accuracy.WIDE, 0, False) in jobs
    assert not any(label.startswith("2x") for label, *_ in jobs)  # FP32 2x is not there yet


def test_a_finished_wide_teacher_is_trained_again_only_for_a_student_still_to_run(tmp_path):
    runs = [_run("FP32 1x", "augmented", 0, 1.0), *_every_recipe_run(0, 2.0),
            _run("FP32 2x", "augmented", 0, 3.0), _run("FP32 3x", "augmented", 0, 3.0),
            *[_run(label, accuracy.WIDE, 0, 4.0) for label in ("2x 4/2", "2x 2/2")]]
    accuracy.model_path(tmp_path, "FP32 1x", "augmented", 0).touch()
    # Both teachers' files are gone (a fresh checkout): only 3x 1/1 still needs its teacher.
    assert _train_jobs(accuracy.Plan(_args(tmp_path), runs)) == [("FP32 3x", "augmented", 0, True)]


def test_wide_teacher_runs_are_reported_against_their_own_teacher_and_fp32_1x(tmp_path):
    runs = []
    for seed, (fp32, wide2, wide3, student) in enumerate([(97.0, 98.0, 98.5, 97.2), (97.5, 97.9, 98.0, 97.1)]):
        runs += [_run("FP32 1x", "augmented", seed, 1.0, fp32 / 100), _run("FP32 2x", "augmented", seed, 2.0, wide2 / 100),
                 _run("FP32 3x", "augmented", seed, 2.0, wide3 / 100), _run("3x 1/1", accuracy.LONGER, seed, 3.0, 0.96),
                 _run("3x 1/1", accuracy.WIDE, seed, 4.0, student / 100)]
    summary = accuracy.summarize(runs, _args(tmp_path, seeds=[0, 1], ablation=[0], wide=[0, 1]))
    (wide,) = summary["wide"]
    assert (wide["label"], wide["teacher"]) == ("3x 1/1", "FP32 3x")
    assert wide["teacher_mean"] == pytest.approx(98.25)
    assert wide["vs_fp32"]["diffs"] == pytest.approx([0.2, -0.4])
    assert wide["vs_longer"]["diffs"] == pytest.approx([1.2, 1.1])
