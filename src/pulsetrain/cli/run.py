"""``pulsetrain run``: start and supervise a topology."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from pulsetrain.cli._args import existing_file, positive_float
from pulsetrain.errors import ConfigurationError

if TYPE_CHECKING:
    from pulsetrain.runtime.supervisor import Supervisor

EPILOG = """examples:
  pulsetrain run examples/calibration-pipeline.toml
  pulsetrain run my-beamline.toml --workdir /tmp/run1 --duration 60
  pulsetrain run --check my-beamline.toml    # only check it: "ok", or every problem (exit 2)
  pulsetrain run two-hosts.toml --token-file /etc/pulsetrain/token   # remote servers' token

SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the run cleanly: devices stopped, open runs closed,
no server left behind (a server also exits by itself if this supervisor is killed).
exit codes: 0 stopped cleanly; 1 could not start (a server or device failed, or the topology
already runs on this host); 2 invalid topology or device configuration.  See docs/operations.md.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="start and supervise a topology (servers, devices, connections)",
        description="Start the local servers of a topology file as processes, create and "
        "connect its devices, restart servers that die, and shut down cleanly on Ctrl-C.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("topology", help="topology TOML file")
    p.add_argument("--workdir", help="directory for logs and the token file")
    p.add_argument(
        "--token-file",
        type=existing_file,
        help="control token of the run (the one the topology's remote servers hold; default: "
        "$PULSETRAIN_TOKEN or $PULSETRAIN_TOKEN_FILE, else a fresh one for local servers only)",
    )
    p.add_argument(
        "--duration",
        type=positive_float,
        default=None,
        help="stop after this many seconds (default: run until Ctrl-C, SIGTERM or SIGHUP)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="check the whole topology (classes, properties, channels, policies, cycles, "
        "fixed ports) and exit: 0 and 'ok', or 2 and one line per problem; starts nothing",
    )
    p.set_defaults(func=run)


def check(path: str) -> int:
    """``run --check``: validate the topology file, start nothing; returns the exit code."""
    from pulsetrain.runtime.topology import Topology

    topology = Topology.load(path)
    topology.validate()  # TopologyError: one line per problem, exit code 2
    print(
        f"{path}: ok ({len(topology.servers)} servers, {len(topology.devices)} devices, "
        f"{len(topology.connections)} connections)"
    )
    return 0


def _announce(sup: Supervisor) -> None:
    print(f"topology {sup.topology.name!r} running; token file: {sup.token_file}")
    for name, sp in sup.servers.items():
        print(f"  server {name}: control {sp.control}")
    for ch, ep in sup.endpoints().items():
        print(f"  output {ch}: {ep}")
    print("Ctrl-C to stop.", flush=True)


def run(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM/SIGHUP or ``--duration``.

    Errors go to ``pulsetrain.cli.main``, which prints one line: exit 2 if the topology (or a
    device's configuration) is invalid, 1 if it could not start or already runs; 0 after a
    clean stop.
    """
    from pulsetrain.runtime.supervisor import Supervisor

    if args.check:
        return check(args.topology)
    if args.workdir and os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        raise ConfigurationError(f"--workdir {args.workdir!r} is a file, not a directory")
    token = None
    if args.token_file:
        with open(os.path.expanduser(args.token_file)) as f:
            token = f.read().strip()
        if not token:
            raise ConfigurationError(f"--token-file {args.token_file!r} is empty")
    sup = Supervisor(args.topology, workdir=args.workdir, token=token)
    sup.serve(duration=args.duration, on_started=_announce)
    return 0
