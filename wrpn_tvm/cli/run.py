"""`wrpn-tvm run OUT.so --input X.npy -o Y.npy [--rpc ... | --tracker ... --key ...]`."""

from .common import add_device_arguments, device_from_args


def register(subparsers) -> None:
    parser = subparsers.add_parser("run", help="run a compiled model on inputs from .npy files",
                                   description="Run a compiled model once, here or on a remote device.")
    parser.add_argument("library", help="a library written by `wrpn-tvm compile`")
    parser.add_argument("--input", nargs="+", required=True, metavar="X.npy", help="input arrays (.npy or .npz), in order")
    parser.add_argument("-o", "--output", required=True, help="where to save the output (.npy; .npz for several)")
    add_device_arguments(parser)
    parser.set_defaults(func=handle)


def handle(args) -> int:
    from ..runtime import load_npy_inputs, run, save_outputs

    outputs = run(args.library, load_npy_inputs(args.input), device_from_args(args))
    save_outputs(outputs, args.output)
    shapes = ", ".join(str(tuple(out.shape)) for out in outputs)
    print(f"wrote {args.output}: {shapes}")
    return 0
