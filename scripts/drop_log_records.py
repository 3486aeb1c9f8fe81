"""Drop a tuning log's records of a model's tasks whose name contains a string, keeping the rest.

A record wins over a template default at compile time, so when a template improves, the records
measured with the old one (a pack's design space holds one schedule: its old default) would keep a
tuned build on the old code. Dropped, a resumed `wrpn-tvm tune` on the same log measures those
tasks' new template defaults first.

    python scripts/drop_log_records.py MODEL.pt2 --target x86-avx512 --log-dir DIR --tasks-matching bitpack
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wrpn_tvm.tuning.database import RECORD_FILE, WORKLOAD_FILE  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="the .pt2 program the log was tuned for")
    parser.add_argument("--target", required=True)
    parser.add_argument("--log-dir", type=Path, required=True)
    parser.add_argument("--tasks-matching", required=True, help="a substring of the task names to drop")
    args = parser.parse_args()

    from tvm.s_tir.meta_schedule.database import Workload

    from wrpn_tvm.pipeline import import_program, kernel_variants, lower_module
    from wrpn_tvm.targets import resolve
    from wrpn_tvm.tuning.tasks import extract_tasks

    spec = resolve(args.target)
    imported, _ = import_program(args.model)
    mods = [lower_module(imported, spec, variant)[0] for variant in kernel_variants(spec)]
    tasks = [task for task in extract_tasks(mods, spec) if args.tasks_matching in task.task_name]
    hashes = {Workload(task.dispatched[0]).as_json()[0] for task in tasks}
    workload_lines = (args.log_dir / WORKLOAD_FILE).read_text().splitlines()
    # Records name their workload by its line number in the workload file.
    dropped_workloads = {number for number, line in enumerate(workload_lines)
                         if line.strip() and json.loads(line)[0] in hashes}
    record_path = args.log_dir / RECORD_FILE
    records = record_path.read_text().splitlines()
    kept = [line for line in records if not (line.strip() and json.loads(line)[0] in dropped_workloads)]
    record_path.write_text("".join(line + "\n" for line in kept))
    print(f"{len(tasks)} tasks match {args.tasks_matching!r}, {len(dropped_workloads)} of them have workloads in "
          f"the log: {len(records) - len(kept)} records dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
