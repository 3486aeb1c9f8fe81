"""The `wrpn-tvm` command line: each subcommand is a thin wrapper over a library function of the same name."""

import argparse
import importlib
import sys

from ..errors import WrpnError

# One module per subcommand, each exposing `register(subparsers)`.
COMMANDS = ["train", "export", "compile", "tune", "run", "bench", "device", "tracker", "demo", "estimate"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wrpn-tvm",
        description="Train WRPN models and compile them to tuned bit-serial kernels with Apache TVM.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except WrpnError as err:
        print(f"wrpn-tvm: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("wrpn-tvm: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
