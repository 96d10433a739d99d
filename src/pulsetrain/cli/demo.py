"""``pulsetrain demo``: the rapid-feedback experiment of figure 1, all on this machine."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pulsetrain.cli._args import frame_count, non_negative_int, output_directory, positive_int
from pulsetrain.errors import ConfigurationError
from pulsetrain.runtime.ports import port_arg, port_problem

EPILOG = """examples:
  pulsetrain demo                              # GUI on http://127.0.0.1:5006, a minute or two
  pulsetrain demo --trains 0                   # run on until Ctrl-C
  pulsetrain demo --no-gui --data-dir /tmp/demo --bridge-port 4600
  python -c "from karabo_bridge import Client; print(Client('tcp://127.0.0.1:4545').next()[1])"

steps: check the fixed ports (bridge, GUI), store the simulator's constants, compile the
correction kernel, start the servers, start the detector; measure the hit rate over
--window trains with the feedback idle ("before"), start the feedback and wait until it
tracks the sample, measure again ("after"); stop, close and validate the DAQ run.

exit status: 0 the run showed its point (trains corrected, hit rate after > before, files
valid); 1 it did not (the summary says what is missing), or a component failed; 2 a fixed
port is taken or an option is wrong (nothing was started); 130, 143, 129 stopped by SIGINT
(Ctrl-C), SIGTERM, SIGHUP (128 + the signal number): the DAQ run is closed, every server
stopped, and the summary so far printed.
"""


def _detector_name(text: str) -> str:
    """The type name of a detector plug-in (case-insensitive); else an argument error."""
    from pulsetrain.detectors import get_detector

    try:
        return get_detector(text.upper()).name
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole rapid-feedback experiment (the main job)",
        description="Simulated AGIPD-1M and sample motor -> 16 correction pipelines -> train "
        "matcher -> hit finding, azimuthal integration, preview -> feedback moving the motor "
        "into the beam; DAQ writer, Karabo bridge and web GUI. Prints each step, where to "
        "connect and, at the end, a summary: the hit rate before and after the feedback.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--trains",
        type=non_negative_int,
        default=None,
        help="stop after this many trains (default: as many as the steps need; "
        "0: run on until Ctrl-C)",
    )
    p.add_argument("--frames", type=frame_count, default=8, help="frames (pulses) per train")
    p.add_argument(
        "--window",
        type=positive_int,
        default=20,
        help="trains in each of the 'before' and 'after' hit-rate measurements",
    )
    p.add_argument("--no-gui", action="store_true", help="do not start the web GUI")
    p.add_argument("--gui-port", type=port_arg, default=5006)
    p.add_argument(
        "--data-dir",
        type=output_directory,
        default="pulsetrain-demo",
        help="catalogue, raw data (about 24 MiB per train), logs",
    )
    p.add_argument("--bridge-port", type=port_arg, default=4545)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument(
        "--detector",
        default="AGIPD",
        type=_detector_name,
        help="detector type simulated and corrected: AGIPD (default, AGIPD-1M), LPD, "
        "JUNGFRAU, ... (any detector plug-in)",
    )
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
    from pulsetrain.demo import DemoOptions, demo_succeeded, run_demo
    from pulsetrain.runtime.lifetime import StopSignals

    check_ports(args)
    from pulsetrain.detectors import get_detector

    n_modules = get_detector(args.detector).n_modules
    logging.getLogger("pulsetrain").setLevel(logging.WARNING)
    opts = DemoOptions(
        trains=args.trains,
        frames=args.frames,
        window_trains=args.window,
        data_dir=Path(args.data_dir),
        bridge_port=args.bridge_port,
        gui=not args.no_gui,
        gui_port=args.gui_port,
        seed=args.seed,
        detector=args.detector,
        modules=list(range(n_modules)),
    )
    signals = StopSignals()
    try:
        with signals:
            summary = run_demo(opts, say=lambda s: print(s, flush=True), signals=signals)
    except KeyboardInterrupt:
        # Everything is stopped and the summary printed: end now.  The interpreter's own
        # teardown (numba/LLVM among others) takes seconds on a busy machine, and a stop
        # signal asks for a prompt exit.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(signals.exit_code)
    if demo_succeeded(summary):
        return 0
    print(
        "pulsetrain demo: the run did not show the feedback's effect (see the summary)",
        file=sys.stderr,
        flush=True,
    )
    return 1
