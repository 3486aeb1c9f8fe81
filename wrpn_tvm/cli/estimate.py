"""`wrpn-tvm estimate OUT.so [--board rasp3b rasp4 rasp5] [--json FILE]`: ARM latency without a board."""

import json

BOARD_CHOICES = ("rasp3b", "rasp4", "rasp5")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "estimate", help="estimate an ARM library's latency on Raspberry Pi cores (no board needed)",
        description="Estimate per-kernel and total latency of a library built for rasp3b, rasp4, rasp5 or "
                    "aarch64: a counting run under qemu-user times llvm-mca's cycles per block, at the "
                    "board's stock clock, 1 and 4 threads. Printed with the method's measured x86 error.")
    parser.add_argument("library", help="a library written by `wrpn-tvm compile --target rasp3b|rasp4|rasp5|aarch64`")
    parser.add_argument("--board", nargs="+", choices=BOARD_CHOICES,
                        help="boards to estimate for (default: the one the library was built for; all three for aarch64)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.set_defaults(func=_estimate)


def _estimate(args) -> int:
    from ..estimate import estimate

    result = estimate(args.library, args.board)
    print(result.table())
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"library": str(result.library), "estimated": True, "calibration": result.calibration,
                       "boards": {b.board.name: b.as_dict() for b in result.boards}}, out, indent=1)
    return 0
