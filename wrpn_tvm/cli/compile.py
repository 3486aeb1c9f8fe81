"""`wrpn-tvm compile MODEL.pt2 --target T -o OUT.so`."""

from ..kernel_kinds import MODES
from .common import add_target_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser("compile", help="compile a torch.export program (.pt2) into a shared library",
                                   description="Compile a torch.export program into a deployable shared library "
                                               "(plus OUT.so.json), running WRPN layers as bit-serial, int8-dot or lookup (lut) kernels.")
    parser.add_argument("model", help="a program saved with torch.export.save (.pt2)")
    add_target_argument(parser)
    parser.add_argument("-o", "--output", required=True, help="the shared library to write (e.g. model.so)")
    parser.add_argument("--tuning-log", metavar="DIR",
                        help="a MetaSchedule database folder written by `wrpn-tvm tune`, or the name of a shipped one "
                             "(e.g. resnet18-2x-a2w2-x86-avx512); it applies to any CPU with every feature of the CPU it was tuned for")
    parser.add_argument("--strict-target", action="store_true",
                        help="apply the tuning log only if it was tuned for exactly this target")
    parser.add_argument("--kernels", choices=MODES, default="auto",
                        help="the kernel of the quantized convs: auto (default) picks bit-serial, int8 dot or (on AVX2 "
                             "CPUs without VNNI) table lookup per layer, by the tuning log's records or else by a cost model")
    parser.add_argument("--explain", action="store_true", help="list each layer, what it became, and why")
    parser.set_defaults(func=handle)


def handle(args) -> int:
    import sys

    from ..build import compile_model
    from ..runtime import memory_line

    result = compile_model(args.model, args.target, args.output, tuning_log=args.tuning_log, strict_target=args.strict_target,
                           kernels=args.kernels)
    for warning in result.warnings:
        print(f"wrpn-tvm: warning: {warning}", file=sys.stderr)
    if args.explain:
        for layer in result.layers:
            print(layer)
    fp32 = any(not layer.is_bitserial for layer in result.layers)
    print(result.summary + (": --explain gives the reasons" if fp32 and not args.explain else ""))
    if result.memory is not None:
        print(memory_line(result.memory.to_json()))
    if result.log_coverage is not None:
        print(result.log_coverage.line())
    print(f"wrote {result.library} and {result.sidecar} for {result.target.name}")
    return 0
