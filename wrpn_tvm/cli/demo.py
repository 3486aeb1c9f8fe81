"""`wrpn-tvm demo`: train, compile, run on the emulated Pi, check, benchmark, report."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the whole WRPN story on this machine, written to report/index.md",
                                   description="Train FP32 1x and WRPN 2x 2/2 small CNNs on MNIST-5k (or reuse them), "
                                               "compile for host and rasp4, run on the host and the emulated Pi, "
                                               "compare with PyTorch, benchmark, and write a report.")
    parser.add_argument("--out", default="report", help="report folder (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per model (default %(default)s)")
    parser.add_argument("--host-images", type=int, help="test images to run on the host (default: all)")
    parser.add_argument("--pi-images", type=int, default=200, help="test images to run on the emulated Pi (default %(default)s)")
    parser.add_argument("--no-emulator", dest="emulate", action="store_false", help="skip the emulated Pi")
    parser.add_argument("--rpc", metavar="HOST:PORT", help="run the Pi part on this board (or running device) instead")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per benchmark (default %(default)s)")
    parser.set_defaults(func=handle)


def handle(args) -> int:
    from ..demo import check_demo_args, demo

    check_demo_args(args.epochs, args.pi_images, args.repeat)
    demo(args.out, epochs=args.epochs, host_images=args.host_images, pi_images=args.pi_images,
         emulate=args.emulate, repeat=args.repeat, rpc=args.rpc)
    return 0
