"""`wrpn-tvm tune`: tune a model's kernels with MetaSchedule into a resumable log dir."""

from ..kernel_kinds import MODES
from .common import add_device_arguments, add_target_argument, device_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="tune a model's kernels (bit-serial, int8-dot and FP32) with MetaSchedule and XGBoost",
        description=(
            "Tune the model's tasks and write MetaSchedule's JSON database into --log-dir. "
            "Re-running with the same --log-dir continues the job: recorded trials count toward "
            "--trials and no recorded candidate is measured again."
        ),
    )
    parser.add_argument("model", help="the torch.export program (.pt2)")
    add_target_argument(parser)
    parser.add_argument("--trials", type=int, default=64, help="total trials for the job, counting those already in --log-dir")
    parser.add_argument("--log-dir", required=True, help="directory of the tuning log (created if missing)")
    parser.add_argument("--trials-per-batch", type=int,
                        help="candidates measured per search round, and the most an interrupt loses (default 16)")
    parser.add_argument("--max-minutes", type=float,
                        help="stop after this much tuning time (after the batches in flight), as Ctrl-C does")
    parser.add_argument("--seed", type=int, help="random seed of the search")
    parser.add_argument("--kernels", choices=MODES, default="auto",
                        help="auto (default) tunes every kernel of every quantized conv (bit-serial and, where the "
                             "target has them, the int8 dot product and table lookups), so a build with the log runs "
                             "each conv on the fastest; bit-serial, int8-dot or lut tunes that kernel only")
    parser.add_argument("--estimate", action="store_true",
                        help="no board: rank candidates by their ESTIMATED time on the target's Raspberry Pi "
                             "(rasp3b, rasp4, rasp5; see `wrpn-tvm estimate`) into a log marked as estimated, "
                             "which measured jobs never extend")
    parser.add_argument("--confirm-only", action="store_true",
                        help="no new trials: time each task's leading records in --log-dir again and keep the new "
                             "times, as a job does when it ends (for a log tuned on a busy machine, or by a job "
                             "stopped early)")
    add_device_arguments(parser, what="time the candidates on")
    parser.set_defaults(func=handle)


def handle(args) -> int:
    from ..tuning import tune

    batch = {} if args.trials_per_batch is None else {"trials_per_batch": args.trials_per_batch}
    result = tune(args.model, target=args.target, trials=args.trials, log_dir=args.log_dir, device=device_from_args(args),
                  seed=args.seed, max_minutes=args.max_minutes, estimate=args.estimate, kernels=args.kernels,
                  confirm_only=args.confirm_only, **batch)
    for task in result.tasks:
        trials = task.recorded + task.measured
        if not trials:
            print(f"  {task.name}: not tuned yet (a larger --trials, or the same command again, gets to it)")
            continue
        best = ("every trial failed" if task.best_ms is None
                else f"best {task.best_ms:.4f} ms{' (estimated)' if result.estimated else ''}")
        print(f"  {task.name}: {trials} trials{f' ({task.failed} failed)' if task.failed else ''}, {best}")
    for message, count in result.run_errors.items():
        print(f"  {count} candidate(s) failed to {'be estimated' if result.estimated else 'run'}: {message}")
    if args.confirm_only:
        print(f"timed {sum(c.retimed for c in result.confirmations)} records of {len(result.confirmations)} tasks again "
              f"in {result.seconds:.0f} s in {result.log_dir}")
    else:
        print(f"tuned {result.measured} new trials in {result.seconds:.0f} s into {result.log_dir} "
              f"({result.skipped_recorded} recorded candidates not re-measured)")
    if result.estimated:
        print(f"the run times in {result.log_dir} are ESTIMATES for {result.target} (see its README.md), not measurements")
    if result.stopped:
        print(f"stopped early ({result.stopped}); run the same command again to continue")
    return 130 if result.stopped == "interrupted" else 0
