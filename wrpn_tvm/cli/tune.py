"""`wrpn-tvm tune`: tune a model's kernels with MetaSchedule into a resumable log dir."""

from ..tuning import tune
from ..tuning.job import TRIALS_PER_BATCH


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="tune a model's kernels (bit-serial and FP32) with MetaSchedule and XGBoost",
        description=(
            "Tune the model's tasks and write MetaSchedule's JSON database into --log-dir. "
            "Re-running with the same --log-dir continues the job: recorded trials count toward "
            "--trials and no recorded candidate is measured again."
        ),
    )
    parser.add_argument("model", help="the torch.export program (.pt2)")
    parser.add_argument("--target", default="host", help="preset name (host, rasp4, ...) or a TVM target JSON object")
    parser.add_argument("--trials", type=int, default=64, help="total trials for the job, counting those already in --log-dir")
    parser.add_argument("--log-dir", required=True, help="directory of the tuning log (created if missing)")
    parser.add_argument("--rpc", metavar="HOST:PORT", help="time candidates on this RPC server")
    parser.add_argument("--tracker", metavar="HOST:PORT", help="time candidates on the devices of an RPC tracker")
    parser.add_argument("--key", help="device key at the tracker")
    parser.add_argument("--trials-per-batch", type=int, default=TRIALS_PER_BATCH,
                        help="candidates measured per search round, and the most an interrupt loses (default %(default)s)")
    parser.add_argument("--max-minutes", type=float,
                        help="stop after this much tuning time (after the batches in flight), as Ctrl-C does")
    parser.add_argument("--timeout", type=int, default=60, help="seconds allowed for one measurement session")
    parser.add_argument("--seed", type=int, help="random seed of the search")
    parser.set_defaults(func=run)


def run(args) -> int:
    result = tune(
        args.model,
        target=args.target,
        trials=args.trials,
        log_dir=args.log_dir,
        rpc=args.rpc,
        tracker=args.tracker,
        key=args.key,
        timeout_sec=args.timeout,
        seed=args.seed,
        trials_per_batch=args.trials_per_batch,
        max_minutes=args.max_minutes,
    )
    for task in result.tasks:
        best = "no valid trial" if task.best_ms is None else f"best {task.best_ms:.4f} ms"
        print(f"  {task.name}: {task.recorded + task.measured} trials, {best}")
    print(
        f"tuned {result.measured} new trials in {result.seconds:.0f} s into {result.log_dir} "
        f"({result.skipped_recorded} recorded candidates not re-measured)"
    )
    if result.stopped:
        print(f"stopped early ({result.stopped}); run the same command again to continue")
    return 130 if result.stopped == "interrupted" else 0
