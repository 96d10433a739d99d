"""``pulsetrain monitor``: watch a Karabo bridge stream (like ``karabo-bridge-monitor``).

Prints one line per train (train ID, sources, size, latency from the timestamps, rate), the
structure of the data (sources, keys, shapes and dtypes) on the first train and whenever it
changes, and a summary at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from pulsetrain.cli._args import connect_endpoint, positive_float, positive_int
from pulsetrain.errors import ProtocolError

EPILOG = """\
examples:
  pulsetrain monitor tcp://127.0.0.1:4545                  # REQ, until Ctrl-C
  pulsetrain monitor tcp://127.0.0.1:4545 --trains 10 --timeout 5
  pulsetrain monitor tcp://host:4600 --sock SUB -v         # structure of every train
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``monitor`` sub-command."""
    p = subparsers.add_parser(
        "monitor",
        help="print rate, latency and structure of a Karabo bridge stream",
        description="Receive trains from a Karabo bridge server and print, per train, its ID, "
        "sources, size, latency (receive time - train timestamp) and the rate; the sources, "
        "keys, shapes and dtypes on the first train and whenever they change; a summary at "
        "the end.  Exit code 1 if a timeout expired before --trains trains arrived.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "endpoint",
        metavar="ENDPOINT",
        type=connect_endpoint,
        help="server address, e.g. tcp://host:4545",
    )
    p.add_argument(
        "--sock",
        default="REQ",
        type=str.upper,
        choices=("REQ", "SUB", "PULL"),
        help="client socket: REQ (server REP, default), SUB (PUB) or PULL (PUSH)",
    )
    p.add_argument(
        "--trains",
        type=positive_int,
        default=None,
        metavar="N",
        help="stop after N trains (default: until interrupted)",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        metavar="S",
        help="give up when no train arrives for S seconds (default: wait forever)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print the structure of every train, with metadata",
    )
    p.set_defaults(func=run)


def describe_value(value: Any) -> tuple[str, str]:
    """``(shape, type)`` strings of one value as the monitor prints them."""
    if isinstance(value, np.ndarray):
        return str(value.shape), str(value.dtype)
    if isinstance(value, np.generic):
        return "scalar", str(value.dtype)
    if isinstance(value, (list, tuple)):
        inner = type(value[0]).__name__ if value else "empty"
        return f"[{len(value)}]", f"list of {inner}"
    if isinstance(value, (str, bytes)):
        return f"len {len(value)}", type(value).__name__
    if isinstance(value, dict):
        return f"{len(value)} keys", "dict"
    return "scalar", type(value).__name__


def structure(data: dict[str, dict[str, Any]]) -> tuple:
    """A hashable description of a train's sources, keys, shapes and dtypes."""
    return tuple(
        (src, tuple((key, *describe_value(v)) for key, v in sorted(props.items())))
        for src, props in sorted(data.items())
    )


def train_nbytes(data: dict[str, dict[str, Any]]) -> int:
    """Bytes of the arrays of one train."""
    return sum(
        v.nbytes for props in data.values() for v in props.values() if isinstance(v, np.ndarray)
    )


def print_structure(data: dict, meta: dict, verbose: bool) -> None:
    print(f"  {len(data)} source(s):")
    for src, keys in structure(data):
        m = meta.get(src, {})
        print(f"  {src}  (train {m.get('timestamp.tid', '?')})")
        width = max((len(k[0]) for k in keys), default=0)
        for key, shape, dtype in keys:
            if key == "metadata":
                continue
            print(f"      {key:{width}s}  {dtype:10s} {shape}")
        if verbose and m:
            print("      metadata: " + ", ".join(f"{k}={v}" for k, v in sorted(m.items())))


def latency_of(meta: dict, received: float) -> float | None:
    """Seconds from the newest source timestamp of a train to ``received``; None without
    timestamps."""
    stamps = [m.get("timestamp") for m in meta.values() if isinstance(m, dict)]
    stamps = [float(t) for t in stamps if isinstance(t, (int, float))]
    return received - max(stamps) if stamps else None


def run(args: argparse.Namespace) -> int:
    """Monitor the stream; returns the exit code."""
    from pulsetrain.bridge import Client

    latencies: list[float] = []
    n = errors = 0
    nbytes = 0
    last_structure = None
    first = last = None
    code = 0
    print(f"monitoring {args.endpoint} ({args.sock})", flush=True)
    with Client(args.endpoint, sock=args.sock, timeout=args.timeout) as client:
        try:
            while args.trains is None or n < args.trains:
                try:
                    data, meta = client.next()
                except ProtocolError as exc:
                    errors += 1
                    print(f"malformed message: {exc}", flush=True)
                    continue
                except TimeoutError as exc:
                    print(f"timeout: {exc}", flush=True)
                    code = 1
                    break
                now = time.time()
                last = time.monotonic()
                first = first if first is not None else last
                n += 1
                size = train_nbytes(data)
                nbytes += size
                latency = latency_of(meta, now)
                if latency is not None:
                    latencies.append(latency)
                rate = (n - 1) / (last - first) if last > first else 0.0
                tids = {m.get("timestamp.tid") for m in meta.values() if isinstance(m, dict)}
                tid = ", ".join(str(t) for t in sorted(t for t in tids if t is not None)) or "?"
                lat = f"{latency * 1e3:8.1f} ms" if latency is not None else "   no timestamp"
                print(
                    f"train {tid} | {len(data):3d} sources | {size / 1e6:9.2f} MB | "
                    f"latency {lat} | {rate:6.2f} trains/s",
                    flush=True,
                )
                shape = structure(data)
                if args.verbose or shape != last_structure:
                    print_structure(data, meta, args.verbose)
                    last_structure = shape
        except KeyboardInterrupt:
            pass
    span = (last - first) if n > 1 else 0.0
    summary = f"received {n} train(s)"
    if span > 0:
        summary += (
            f" in {span:.2f} s: {(n - 1) / span:.2f} trains/s, "
            f"{nbytes * (n - 1) / n / span / 1e6:.1f} MB/s"
        )
    if latencies:
        summary += (
            f"; latency median {statistics.median(latencies) * 1e3:.1f} ms "
            f"(min {min(latencies) * 1e3:.1f}, max {max(latencies) * 1e3:.1f})"
        )
    summary += f"; {errors} malformed message(s)"
    print(summary, flush=True)
    return code
