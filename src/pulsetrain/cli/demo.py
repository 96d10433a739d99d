"""``pulsetrain demo``: a first look at pulsetrain (placeholder until the full demo exists).

For now the demo runs the bridge simulator (AGIPD, REP) and a built-in client that receives
``--trains`` trains through it, prints the endpoint, one line per train and a summary, then
exits 0.  While it runs, any Karabo bridge client can connect to the endpoint too.
"""

from __future__ import annotations

import argparse
import threading
import time

from pulsetrain.cli.monitor import latency_of, train_nbytes

EPILOG = """\
examples:
  pulsetrain demo                      # 10 trains on a free port
  pulsetrain demo --port 4545 --trains 50
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    p = subparsers.add_parser(
        "demo",
        help="run a simulated AGIPD detector through the Karabo bridge (placeholder demo)",
        description="Serve simulated, corrected AGIPD-1M trains over the Karabo bridge (REP) "
        "and receive them with a built-in client; prints the endpoint, each train and a "
        "summary.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=0, help="TCP port (default 0: a free port)")
    p.add_argument(
        "--trains",
        type=int,
        default=10,
        metavar="N",
        help="trains to send and receive (default 10)",
    )
    p.add_argument("--frames", type=int, default=4, help="frames per train (default 4)")
    p.add_argument(
        "--rate", type=float, default=10.0, metavar="HZ", help="trains per second (default 10)"
    )
    p.add_argument("--seed", type=int, default=0, help="simulation seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve and receive ``--trains`` trains; returns the exit code."""
    from pulsetrain.bridge import BridgeServer, Client
    from pulsetrain.cli.bridge_sim import SimulatedSource, feed_trains

    print("preparing the simulated AGIPD-1M detector ...", flush=True)
    source = SimulatedSource("AGIPD", args.frames, args.seed, corrected=True)
    errors: list[BaseException] = []
    with BridgeServer(f"tcp://127.0.0.1:{args.port}", "REP", maxlen=2) as server:
        print(
            f"bridge endpoint: {server.endpoint} (REP, protocol 2.2) - connect any Karabo "
            f"bridge client, e.g. pulsetrain monitor {server.endpoint}",
            flush=True,
        )

        def feed() -> None:
            try:
                feed_trains(server, source, args.trains, args.rate)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)

        feeder = threading.Thread(target=feed, name="demo-feeder", daemon=True)
        feeder.start()
        start = time.monotonic()
        received = nbytes = 0
        with Client(server.endpoint, timeout=120) as client:
            while received < args.trains and not errors:
                data, meta = client.next()
                received += 1
                nbytes += train_nbytes(data)
                latency = latency_of(meta, time.time()) or 0.0
                tid = next(iter(meta.values())).get("timestamp.tid")
                print(
                    f"train {tid}: {len(data)} sources, {train_nbytes(data) / 1e6:.1f} MB, "
                    f"latency {latency * 1e3:.1f} ms",
                    flush=True,
                )
        feeder.join(10)
    if errors:
        raise errors[0]
    elapsed = time.monotonic() - start
    print(
        f"demo done: {received} trains, {nbytes / 1e6:.1f} MB in {elapsed:.1f} s "
        f"({received / elapsed:.1f} trains/s); server sent {server.sent}, dropped "
        f"{server.dropped}",
        flush=True,
    )
    return 0
