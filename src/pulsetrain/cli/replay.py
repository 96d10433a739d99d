"""``pulsetrain replay``: serve a recorded run through the Karabo bridge as if live."""

from __future__ import annotations

import argparse
import time

from pulsetrain.cli._args import non_negative_int, positive_float, run_directory
from pulsetrain.errors import ConfigurationError
from pulsetrain.runtime.ports import port_or_zero_arg, port_problem

EPILOG = """examples:
  pulsetrain replay data/raw/r0001 --port 4545                  # REP: every train once, in order
  pulsetrain replay data/raw/r0001 --pattern PUB --rate 10 --repeat
  pulsetrain replay data/raw/r0001 --source '*/DET/*' --trains 1000000010:1000000050
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay",
        help="serve a recorded run through the Karabo bridge",
        description="Replay a run directory to Karabo bridge clients. With REP every train is "
        "delivered exactly once, in order (a client asks for each one).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=run_directory, help="run directory (holding *.h5 files)")
    p.add_argument(
        "--port",
        type=port_or_zero_arg,
        default=4545,
        help="TCP port (default 4545; 0: any free port)",
    )
    p.add_argument("--bind", default="127.0.0.1", help="interface to bind (default loopback)")
    p.add_argument("--pattern", default="REP", choices=["REP", "PUB", "PUSH"])
    p.add_argument("--protocol", default="2.2", choices=["1.0", "2.2"])
    p.add_argument("--source", action="append", default=None, help="source glob (repeatable)")
    p.add_argument(
        "--trains", type=_train_range, default=None, help='"A:B" train IDs or "#A:B" positions'
    )
    p.add_argument("--rate", type=_rate, default=0.0, help="trains per second, or 'max'")
    p.add_argument("--repeat", action="store_true")
    p.add_argument("--dummy-timestamps", action="store_true")
    p.add_argument(
        "--read-ahead",
        type=non_negative_int,
        default=2,
        metavar="N",
        help="trains read by a background thread ahead of sending (0: no thread)",
    )
    p.add_argument(
        "--no-zero-copy",
        action="store_true",
        help="read all data through HDF5 instead of serving uncompressed data "
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
    import gc

    from tqdm import tqdm

    from pulsetrain.bridge import BridgeServer
    from pulsetrain.files import iter_run_trains, run_info
    from pulsetrain.files.prefetch import read_ahead

    problem = port_problem(args.bind, args.port)
    if problem:
        raise ConfigurationError(f"cannot serve on tcp://{args.bind}:{args.port}: {problem}")
    info = run_info(args.run_dir)
    rate = args.rate
    trains = args.trains
    server = BridgeServer(
        f"tcp://{args.bind}:{args.port}",
        args.pattern,
        args.protocol,
        maxlen=2,
        dummy_timestamps=args.dummy_timestamps,
    ).start()
    print(
        f"serving {args.run_dir} ({info.n_trains} trains) on {server.endpoint} "
        f"({args.pattern}, protocol {args.protocol})",
        flush=True,
    )
    # Everything made so far lives until the end: keep the cyclic garbage collector from
    # walking it again and again while trains go through.
    gc.freeze()
    sent = 0
    try:
        while True:
            t_next = time.monotonic()
            with tqdm(total=info.n_trains, unit="train", mininterval=0.5) as bar:
                reader = iter_run_trains(
                    args.run_dir,
                    sources=args.source,
                    trains=trains,
                    zero_copy=not args.no_zero_copy,
                )
                for _tid, data, meta in read_ahead(
                    reader, depth=args.read_ahead, name="replay-reader"
                ):
                    server.feed(data, meta, block=True)
                    sent += 1
                    bar.update(1)
                    if rate > 0:
                        t_next += 1.0 / rate
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
    print(f"fed {sent} trains; sent {server.sent}, dropped {server.dropped}")
    return 0
