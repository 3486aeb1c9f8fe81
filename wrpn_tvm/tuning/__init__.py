"""Autotuning: MetaSchedule with the XGBoost cost model over a model's tasks, into a resumable log dir.

Modules: tasks (what is tuned), search (resume without re-measuring), runner (host or RPC
devices), progress (per-task lines), database (reading, checking and repairing logs), lock (one
job per log dir), job (the `tune` entry point).
"""

from .database import load_database
from .job import TuneResult, tune, tune_module

__all__ = ["load_database", "tune", "tune_module", "TuneResult"]
