"""`wrpn-tvm device start --emulate rasp4 [--port P] [--tracker HOST:PORT --key KEY] | stop [--port P] | status`."""

from ..remote import daemons, emulator


def register(subparsers) -> None:
    parser = subparsers.add_parser("device", help="emulated Raspberry Pi devices: device start | stop | status",
                                   description="The emulated Raspberry Pi: an aarch64 TVM RPC server under qemu-user, "
                                               "in the background, on 127.0.0.1.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start an emulated device in the background")
    start.add_argument("--emulate", choices=emulator.BOARDS, default="rasp4", help="the board to emulate (default %(default)s)")
    start.add_argument("--port", type=int, default=9090, help="RPC port (default %(default)s)")
    start.add_argument("--tracker", metavar="HOST:PORT", help="register with this RPC tracker")
    start.add_argument("--key", help="the key to register under (default: the board name)")
    start.add_argument("--host", default=daemons.LOOPBACK, help="address to bind (default %(default)s)")
    start.add_argument("--allow-public", action="store_true",
                       help="allow --host beyond loopback: TVM RPC runs any code it is sent")
    start.set_defaults(func=handle_start)
    stop = actions.add_parser("stop", help="stop an emulated device")
    stop.add_argument("--port", type=int, default=9090)
    stop.set_defaults(func=handle_stop)
    status = actions.add_parser("status", help="list running devices and trackers")
    status.set_defaults(func=handle_status)


def handle_start(args) -> int:
    daemons.check_free(emulator.service_name(args.port), args.host, args.port)
    print(f"starting an emulated {args.emulate} on {args.host}:{args.port} (importing TVM under qemu takes a while) ...", flush=True)
    service = emulator.start(args.port, args.emulate, tracker=args.tracker, key=args.key, host=args.host,
                             allow_public=args.allow_public)
    where = f", registered as '{service.info['key']}' at {args.tracker}" if args.tracker else ""
    print(f"emulated {args.emulate} ready at {service.host}:{service.port}{where} (pid {service.pid}, log {service.log})")
    return 0


def handle_stop(args) -> int:
    stopped = emulator.stop(args.port)
    print(f"stopped the device on port {args.port}" if stopped else f"no device was running on port {args.port}")
    return 0


def handle_status(args) -> int:
    services = daemons.all_services()
    if not services:
        print("no devices or trackers running")
    for service in services:
        details = " ".join(f"{k}={v}" for k, v in service.info.items() if v is not None)
        print(f"{service.name:16s} {service.host}:{service.port}  pid {service.pid}  {details}  log {service.log}")
    return 0
