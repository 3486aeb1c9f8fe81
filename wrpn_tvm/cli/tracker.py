"""`wrpn-tvm tracker start|stop [--port P]`: TVM's RPC tracker in the background."""

from ..remote import daemons, tracker
from ..remote.session import tracker_summary


def register(subparsers) -> None:
    parser = subparsers.add_parser("tracker", help="a TVM RPC tracker: tracker start | stop | status",
                                   description="TVM's RPC tracker, which queues clients across boards that share a key.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    start = actions.add_parser("start", help="start a tracker in the background")
    start.add_argument("--port", type=int, default=9190, help="tracker port (default %(default)s)")
    start.add_argument("--host", default=daemons.LOOPBACK, help="address to bind (default %(default)s)")
    start.add_argument("--allow-public", action="store_true",
                       help="allow --host beyond loopback: the devices behind it run any code they are sent")
    start.set_defaults(func=handle_start)
    stop = actions.add_parser("stop", help="stop a tracker")
    stop.add_argument("--port", type=int, default=9190)
    stop.set_defaults(func=handle_stop)
    status = actions.add_parser("status", help="the devices registered at a tracker")
    status.add_argument("--port", type=int, default=9190)
    status.add_argument("--host", default=daemons.LOOPBACK)
    status.set_defaults(func=handle_status)


def handle_start(args) -> int:
    service = tracker.start(args.port, args.host, args.allow_public)
    print(f"tracker ready at {service.host}:{service.port} (pid {service.pid}, log {service.log})")
    return 0


def handle_stop(args) -> int:
    stopped = tracker.stop(args.port)
    print(f"stopped the tracker on port {args.port}" if stopped else f"no tracker was running on port {args.port}")
    return 0


def handle_status(args) -> int:
    summary = tracker_summary(args.host, args.port)
    queue = summary.get("queue_info", {})
    if not queue:
        print("no devices registered")
    for key, info in sorted(queue.items()):
        print(f"{key:12s} free {info.get('free', 0)}  pending {info.get('pending', 0)}")
    return 0
