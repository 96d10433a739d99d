"""``pulsetrain replay``: serve a recorded run through the Karabo bridge as if live."""

from __future__ import annotations

import argparse
import time

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
    p.add_argument("run_dir")
    p.add_argument("--port", type=int, default=4545)
    p.add_argument("--bind", default="127.0.0.1", help="interface to bind (default loopback)")
    p.add_argument("--pattern", default="REP", choices=["REP", "PUB", "PUSH"])
    p.add_argument("--protocol", default="2.2", choices=["1.0", "2.2"])
    p.add_argument("--source", action="append", default=None, help="source glob (repeatable)")
    p.add_argument("--trains", default="", help='"A:B" train IDs or "#A:B" positions')
    p.add_argument("--rate", default="max", help="trains per second, or 'max'")
    p.add_argument("--repeat", action="store_true")
    p.add_argument("--dummy-timestamps", action="store_true")
    p.add_argument(
        "--read-ahead",
        type=int,
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


def run(args: argparse.Namespace) -> int:
    import gc

    from tqdm import tqdm

    from pulsetrain.bridge import BridgeServer
    from pulsetrain.devices.replay import parse_train_range
    from pulsetrain.files import iter_run_trains, run_info
    from pulsetrain.files.prefetch import read_ahead

    info = run_info(args.run_dir)
    rate = 0.0 if args.rate == "max" else float(args.rate)
    trains = parse_train_range(args.trains)
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
