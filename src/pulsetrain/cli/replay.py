"""``pulsetrain replay``: serve a recorded run through the Karabo bridge as if live.

What a client receives is what EXtra-data's ``karabo-bridge-serve-files`` sends for the same
run and selection (read by :class:`pulsetrain.files.reader.BridgeRun`); the differences, all
deliberate, are listed in ``docs/bridge-compatibility.md``.
"""

from __future__ import annotations

import argparse
import time

from pulsetrain.cli._args import non_negative_int, positive_float, run_directory
from pulsetrain.errors import ConfigurationError
from pulsetrain.runtime.ports import port_or_zero_arg, port_problem

EPILOG = """examples:
  pulsetrain replay data/raw/r0001 --port 4545                  # REP: every train once, in order
  pulsetrain replay data/raw/r0001 4545 --source '*XGM*'        # serve-files' argument order
  pulsetrain replay data/raw/r0001 --pattern PUB --rate 10 --repeat
  pulsetrain replay data/raw/r0001 --source '*/DET/*' --key 'image.*' --trains 1000000010:1000000050
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``replay`` sub-command."""
    p = subparsers.add_parser(
        "replay",
        help="serve a recorded run through the Karabo bridge",
        description="Replay a run directory to Karabo bridge clients, as "
        "karabo-bridge-serve-files sends it: every selected source in every train (with its "
        "metadata), the values and types stored in the files.  With REP every train is "
        "delivered exactly once, in order (a client asks for each one).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=run_directory, help="run directory (holding *.h5 files)")
    p.add_argument(
        "port_arg",
        nargs="?",
        type=port_or_zero_arg,
        metavar="PORT",
        help="TCP port, as karabo-bridge-serve-files takes it (same as --port)",
    )
    p.add_argument(
        "--port",
        type=port_or_zero_arg,
        default=None,
        help="TCP port (default 4545; 0: any free port)",
    )
    p.add_argument("--bind", default="127.0.0.1", help="interface to bind (default loopback)")
    p.add_argument(
        "--pattern",
        "-z",
        "--socket-type",
        dest="pattern",
        default="REP",
        type=str.upper,
        choices=["REP", "PUB", "PUSH"],
        help="server socket (default REP)",
    )
    p.add_argument("--protocol", default="2.2", choices=["1.0", "2.2"])
    p.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="GLOB",
        help="send only the sources matching GLOB, e.g. '*XGM*' (repeatable; default all)",
    )
    p.add_argument(
        "--key",
        action="append",
        default=None,
        metavar="GLOB",
        help="send only the keys matching GLOB, e.g. 'data.*' (repeatable; default all; "
        "for control sources a GLOB ending neither in .value nor in * means GLOB.value)",
    )
    p.add_argument(
        "--trains", type=_train_range, default=None, help='"A:B" train IDs or "#A:B" positions'
    )
    p.add_argument("--rate", type=_rate, default=0.0, help="trains per second, or 'max'")
    p.add_argument("--repeat", action="store_true", help="start again at the end of the run")
    p.add_argument(
        "--dummy-timestamps",
        action="store_true",
        help="give sources whose files have no timestamp the time the train is sent",
    )
    p.add_argument(
        "--read-ahead",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="trains read by a background thread ahead of sending (default 0: no thread; "
        "worth it for trains of large, uncached detector data)",
    )
    p.add_argument(
        "--no-zero-copy",
        action="store_true",
        help="read large datasets through HDF5 instead of serving uncompressed data "
        "from a memory map of the files",
    )
    p.set_defaults(func=run)


def _train_range(text: str) -> tuple[int, int] | slice | None:
    from pulsetrain.devices.replay import parse_train_range

    try:
        return parse_train_range(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a train range: 'A:B' train IDs or '#A:B' positions"
        ) from None


def _rate(text: str) -> float:
    """Trains per second (> 0), or 'max' (0: as fast as the clients take them)."""
    return 0.0 if text.strip().lower() == "max" else positive_float(text)


def run(args: argparse.Namespace) -> int:
    """Replay the run; returns the exit code."""
    import gc

    from tqdm import tqdm

    from pulsetrain.bridge import BridgeServer
    from pulsetrain.files.prefetch import read_ahead
    from pulsetrain.files.reader import BridgeRun

    if args.port is not None and args.port_arg is not None and args.port != args.port_arg:
        raise ConfigurationError(f"two ports given: PORT {args.port_arg} and --port {args.port}")
    port = args.port if args.port is not None else args.port_arg
    port = 4545 if port is None else port
    problem = port_problem(args.bind, port)
    if problem:
        raise ConfigurationError(f"cannot serve on tcp://{args.bind}:{port}: {problem}")
    # Everything checked (selection, dtypes) and small data read before the port is bound.
    source = BridgeRun(
        args.run_dir, sources=args.source, keys=args.key, zero_copy=not args.no_zero_copy
    )
    try:
        server = BridgeServer(
            f"tcp://{args.bind}:{port}",
            args.pattern,
            args.protocol,
            maxlen=2,
            dummy_timestamps=args.dummy_timestamps,
        ).start()
        print(
            f"serving {args.run_dir} ({source.count(args.trains)} trains, "
            f"{len(source.sources)} sources) on {server.endpoint} ({args.pattern}, "
            f"protocol {args.protocol})",
            flush=True,
        )
        # Everything made so far lives until the end: keep the cyclic garbage collector from
        # walking it again and again while trains go through.
        gc.freeze()
        sent = 0
        feed = server.feed
        try:
            while True:
                t_next = time.monotonic()
                with tqdm(total=source.count(args.trains), unit="train", mininterval=0.5) as bar:
                    trains = read_ahead(
                        source.trains(args.trains), depth=args.read_ahead, name="replay-reader"
                    )
                    for _tid, data, meta in trains:
                        feed(data, meta, block=True)
                        sent += 1
                        bar.update(1)
                        if args.rate > 0:
                            t_next += 1.0 / args.rate
                            delay = t_next - time.monotonic()
                            if delay > 0:
                                time.sleep(delay)
                if not args.repeat:
                    break
            server.flush()
        except KeyboardInterrupt:
            pass
        finally:
            # give the last replies time to leave (a zero linger would discard them)
            server.stop(linger=10.0)
        print(f"fed {sent} trains; sent {server.sent}, dropped {server.dropped}", flush=True)
        return 0
    finally:
        source.close()
