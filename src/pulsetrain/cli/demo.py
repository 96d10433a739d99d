"""``pulsetrain demo``: the rapid-feedback experiment of figure 1, all on this machine."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pulsetrain.cli._args import frame_count, non_negative_int, output_directory
from pulsetrain.errors import ConfigurationError
from pulsetrain.ports import port_arg, port_problem

EPILOG = """examples:
  pulsetrain demo                              # 100 trains, GUI on http://127.0.0.1:5006
  pulsetrain demo --trains 0                   # run until Ctrl-C
  pulsetrain demo --trains 100 --no-gui --data-dir /tmp/demo --bridge-port 4600
  python -c "from karabo_bridge import Client; print(Client('tcp://127.0.0.1:4545').next()[1])"
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole rapid-feedback experiment (the main job)",
        description="Simulated AGIPD-1M and sample motor -> 16 correction pipelines -> train "
        "matcher -> hit finding, azimuthal integration, preview -> feedback moving the motor "
        "into the beam; DAQ writer, Karabo bridge and web GUI. Prints where to connect and, at "
        "the end, a summary.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--trains", type=non_negative_int, default=100,
                   help="trains to simulate (0: until Ctrl-C)")
    p.add_argument("--frames", type=frame_count, default=8, help="frames (pulses) per train")
    p.add_argument("--no-gui", action="store_true", help="do not start the web GUI")
    p.add_argument("--gui-port", type=port_arg, default=5006)
    p.add_argument("--data-dir", type=output_directory, default="pulsetrain-demo",
                   help="runs, catalogue and logs")
    p.add_argument("--bridge-port", type=port_arg, default=4545)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.set_defaults(func=run)


def check_ports(args: argparse.Namespace) -> None:
    """The bridge (and GUI) ports are free, before anything starts; else ConfigurationError."""
    wanted = [("--bridge-port", args.bridge_port)]
    if not args.no_gui:
        wanted.append(("--gui-port", args.gui_port))
        if args.gui_port == args.bridge_port:
            raise ConfigurationError(f"--gui-port and --bridge-port are both {args.gui_port}")
    for option, port in wanted:
        problem = port_problem("127.0.0.1", port)
        if problem:
            raise ConfigurationError(f"{option} {port}: {problem}")


def run(args: argparse.Namespace) -> int:
    from pulsetrain.demo import DemoOptions, run_demo

    check_ports(args)
    logging.getLogger("pulsetrain").setLevel(logging.WARNING)
    opts = DemoOptions(trains=args.trains or None, frames=args.frames,
                       data_dir=Path(args.data_dir), bridge_port=args.bridge_port,
                       gui=not args.no_gui, gui_port=args.gui_port, seed=args.seed)
    summary = run_demo(opts, say=lambda s: print(s, flush=True))
    if not summary:
        return 1
    return 0 if summary.get("files_valid") and summary.get("trains_matched", 0) > 0 else 1
