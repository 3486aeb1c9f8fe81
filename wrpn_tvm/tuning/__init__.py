"""Autotuning: MetaSchedule with the XGBoost cost model over a model's tasks, into a resumable log dir.

Modules, named after MetaSchedule's own concepts: tasks (what is tuned), builder (candidates
built in-process), measure (runners: this host or RPC devices), search (resume without
re-measuring), database (reading, checking and repairing logs), shipped (the logs that ship with
wrpn-tvm), progress (per-task lines), lock (one job per log dir), stop (Ctrl-C and time budgets),
estimate_runner (candidates ranked by their estimated time on a Raspberry Pi, no board),
log_timing (how a log's run times were taken: in the model, warm or estimated; never mixed), rules (custom rules for
TVM's own pooling annotations), intrinsics (TVM's tensor intrinsics imported fast), job (the `tune`
entry point).
"""

from .database import load_database
from .job import TuneResult, tune, tune_module, tune_tasks

__all__ = ["load_database", "tune", "tune_module", "tune_tasks", "TuneResult"]
