"""`wrpn-tvm bench OUT.so [--rpc ... | --tracker ... --key ...] [--repeat N] [--json PATH] [--compare-torch MODEL.pt2]`."""

from .common import add_device_arguments, device_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="time a compiled model with TVM's time_evaluator",
                                   description="Upload, warm up, and time a compiled model; prints min/median/max/std.")
    parser.add_argument("library", help="a library written by `wrpn-tvm compile`")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs (default %(default)s)")
    parser.add_argument("--number", type=int, default=0, help="calls per timed run (default: about 100 ms worth)")
    parser.add_argument("--compare-torch", metavar="MODEL.pt2", help="also time PyTorch eager on the same input (host only)")
    parser.add_argument("--json", metavar="PATH", help="write every timing, the machine and versions as JSON")
    add_device_arguments(parser)
    parser.set_defaults(func=handle)


def handle(args) -> int:
    from ..runtime import bench

    result = bench(args.library, device_from_args(args), repeat=args.repeat, number=args.number,
                   compare_torch=args.compare_torch, json_path=args.json)
    print(result.table())
    if args.json:
        print(f"wrote {args.json}")
    return 0
