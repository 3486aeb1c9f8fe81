"""`wrpn-tvm bench LIB.so [LIB2.so ...] [--rpc ... | --tracker ... --key ...] [--repeat N] [--json PATH] [--compare-torch MODEL.pt2]`."""

from ..errors import WrpnError
from .common import add_device_arguments, device_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="time compiled models with TVM's time_evaluator",
                                   description="Upload, warm up, and time a compiled model; prints min/median/max/std. "
                                               "Several libraries are timed round-robin in one run, so that a noisy "
                                               "machine slows them alike (e.g. a tuned and an untuned build). "
                                               "Each library's activation memory (bytes written per inference, planned "
                                               "workspace), as its compile recorded it, is printed and in --json.")
    parser.add_argument("library", nargs="+", help="libraries written by `wrpn-tvm compile`")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs (rounds, with several libraries; default %(default)s)")
    parser.add_argument("--number", type=int, default=0, help="calls per timed run (default: about 100 ms worth)")
    parser.add_argument("--compare-torch", metavar="MODEL.pt2",
                        help="also time PyTorch eager on the same input (one host library)")
    parser.add_argument("--json", metavar="PATH", help="write every timing, the memory figures, the machine and versions as JSON")
    add_device_arguments(parser)
    parser.set_defaults(func=handle)


def handle(args) -> int:
    from ..runtime import bench, compare

    device = device_from_args(args)
    if len(args.library) > 1:
        if args.compare_torch:
            raise WrpnError("--compare-torch times one library against PyTorch; give one library")
        result = compare(args.library, device, repeat=args.repeat, number=args.number, json_path=args.json)
    else:
        result = bench(args.library[0], device, repeat=args.repeat, number=args.number,
                       compare_torch=args.compare_torch, json_path=args.json)
    print(result.table())
    if args.json:
        print(f"wrote {args.json}")
    return 0
