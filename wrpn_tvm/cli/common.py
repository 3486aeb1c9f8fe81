"""Arguments shared by several subcommands."""

from ..remote.session import DEFAULT_TIMEOUT_S, DeviceSpec
from ..targets import PRESET_NAMES


def add_target_argument(parser, default: str = "host") -> None:
    parser.add_argument("--target", default=default,
                        help=f"a preset ({', '.join(PRESET_NAMES)}; cuda:sm_XX picks a GPU arch) or a TVM target JSON object")


def add_device_arguments(parser, what: str = "run on") -> None:
    group = parser.add_argument_group(f"remote device to {what} (default: this machine)")
    group.add_argument("--rpc", metavar="HOST:PORT", help="an RPC server (a board, or `wrpn-tvm device start`)")
    group.add_argument("--tracker", metavar="HOST:PORT", help="an RPC tracker; needs --key")
    group.add_argument("--key", help="the device key registered at the tracker (e.g. rasp4)")
    group.add_argument("--wait-for-device", action="store_true",
                       help="with --tracker: wait (up to --timeout) for a device to register under --key")
    group.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                       help="seconds before a remote step counts as hung (default %(default)s)")


def device_from_args(args) -> DeviceSpec:
    return DeviceSpec(rpc=args.rpc, tracker=args.tracker, key=args.key, timeout=args.timeout,
                      wait_for_device=args.wait_for_device)
