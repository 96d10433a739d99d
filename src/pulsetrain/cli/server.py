"""``pulsetrain server``: run a device server process."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading

from pulsetrain.cli._args import bind_endpoint, existing_file, positive_float, positive_int
from pulsetrain.runtime import shmem
from pulsetrain.runtime.lifetime import EXIT_MEMORY_LIMIT, EXIT_ORPHANED, ServerLifetime

EPILOG = """examples:
  # a server on another host, for a topology that names it with this endpoint
  PULSETRAIN_TOKEN=secret pulsetrain server --name gpu1 --bind tcp://0.0.0.0:7000

  # under systemd: deploy/pulsetrain-server@.service (see docs/deploy.md)
  pulsetrain server --name proc0 --bind tcp://10.0.0.5:7000 --token-file /etc/pulsetrain/token

  # a local server with its token in a file, stopped when it uses more than 4 GB
  pulsetrain server --name s1 --bind tcp://127.0.0.1:7000 --token-file ~/.pt-token \\
      --memory-limit-mb 4000
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "server",
        help="run a device server process",
        description="Run a device server: hosts devices and answers the control plane. "
        "Devices are created by `pulsetrain run` (or `pulsetrain ctl`) through the control "
        "endpoint.  A server started by systemd, SLURM or by hand holds a run's devices only "
        "while that run's supervisor renews its lease, and waits for the next one after.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--name", required=True, help="server ID")
    p.add_argument(
        "--bind", default="tcp://127.0.0.1:0", type=bind_endpoint, help="control endpoint to bind"
    )
    p.add_argument(
        "--events-bind",
        default=None,
        type=bind_endpoint,
        help="events (PUB) endpoint; default: the control host, any port",
    )
    p.add_argument(
        "--token-file",
        type=existing_file,
        help="file holding the control token (default: $PULSETRAIN_TOKEN)",
    )
    p.add_argument(
        "--read-token",
        default=os.environ.get("PULSETRAIN_READ_TOKEN"),
        help="optional read-only token (get/list only)",
    )
    p.add_argument(
        "--memory-limit-mb",
        type=positive_float,
        default=None,
        help="exit (and be restarted by the supervisor) above this resident memory",
    )
    p.add_argument(
        "--parent-pid",
        type=positive_int,
        default=None,
        help="stop when this process (the supervisor that started the server) is "
        "gone; `pulsetrain run` passes its own pid",
    )
    p.set_defaults(func=run)


def _memory_watchdog(limit_mb: float, stop: threading.Event) -> None:
    import psutil

    proc = psutil.Process()
    while not stop.wait(0.2):
        rss = proc.memory_info().rss / 2**20
        if rss > limit_mb:
            logging.getLogger("pulsetrain.runtime.server").critical(
                "resident memory %.0f MB exceeds the limit of %.0f MB: exiting", rss, limit_mb
            )
            os._exit(EXIT_MEMORY_LIMIT)


def run(args: argparse.Namespace) -> int:
    from pulsetrain.runtime.control import token_from_env
    from pulsetrain.runtime.server import DeviceServer

    # First thing: a supervisor that died while starting us is noticed here.
    lifetime = ServerLifetime(args.parent_pid).start()
    if lifetime.parent_gone.is_set():
        return EXIT_ORPHANED

    if args.token_file:
        with open(os.path.expanduser(args.token_file)) as f:
            token = f.read().strip()
    else:
        token = token_from_env()
    if not token:
        print(
            "pulsetrain server: error: no control token: use --token-file or set PULSETRAIN_TOKEN",
            file=sys.stderr,
        )
        return 2
    events = args.events_bind
    if events is None:
        host = args.bind.rsplit(":", 1)[0]
        events = f"{host}:0" if args.bind.startswith("tcp://") else args.bind + "-events"
    logging.getLogger().setLevel(logging.INFO)
    shmem.remove_stale_segments()  # left by pulsetrain processes on this host that died
    server = DeviceServer(args.name, args.bind, events, token=token, read_token=args.read_token)
    stop = threading.Event()
    if args.memory_limit_mb:
        threading.Thread(
            target=_memory_watchdog, args=(args.memory_limit_mb, stop), daemon=True
        ).start()
    lifetime.stop_with(server.stop)  # on SIGTERM, SIGINT, or when the parent is gone
    logging.getLogger("pulsetrain.runtime.server").info(
        "server %s: control %s, events %s",
        args.name,
        server.control_endpoint,
        server.events_endpoint,
    )
    try:
        server.serve()
    finally:
        stop.set()
        server.close()
    # Every device has stopped (runs closed, shared memory removed): skip the interpreter's
    # teardown of the many imported modules, which takes seconds on a loaded machine, so the
    # supervisor sees this server gone at once.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
