"""Karabo bridge throughput over tcp loopback: pulsetrain against bare pyzmq and karabo-bridge-py.

One train is 16 AGIPD module sources x 64 frames of 512 x 128 float32 (``image.data``, 16.8 MB a
source, 268 MB a train) plus the small ``image.cellId`` / ``pulseId`` / ``trainId`` arrays.  The
sender runs in a child process (spawned), the receiver in this one; every contender sends the
same pre-built train again and again, and the receiver times ``--trains`` trains after two
warm-up trains.  Contenders (PUSH -> PULL unless marked REP):

(a) bare pyzmq PUSH/PULL sending the frames of the protocol 2.2 message with ``copy=False``,
    received with ``copy=False`` and wrapped by ``np.frombuffer`` (no protocol decoding);
(b) karabo-bridge-py ``ServerInThread`` -> ``karabo_bridge.Client``;
(c) pulsetrain ``BridgeServer`` -> ``pulsetrain.bridge.Client``;
(d) pulsetrain ``BridgeServer`` -> ``karabo_bridge.Client``;
and the same REQ/REP round trip for (b) and (c).

Contenders run round-robin ``--repeats`` times (the order rotates each round); the table gives
medians of GB/s and of the CPU time the sending and the receiving process used per train (all
threads, ZeroMQ's I/O thread included), which is less sensitive to a busy machine than the rate.
Goals: (c) >= 0.8 x (a) and >= 1.0 x (b).  No allocator tuning (``MALLOC_*``) is applied to
any contender.

Simulators (issue #18): ``pulsetrain bridge-sim`` in the reference layout at its default 64
pulses against ``karabo-bridge-server-sim`` with the same command line, trains/s to the stock
client (goal >= 1 x); see :func:`simulator_comparison`.

    python benchmarks/bridge.py [--quick] [--trains N] [--repeats R] [--simulators-only]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import resource
import statistics
import time

import numpy as np

SOURCES = 16
FRAMES = 64
MODULE_SHAPE = (512, 128)
WARMUP = 2
GOAL_VS_BARE = 0.8
GOAL_VS_KARABO = 1.0


def make_train(frames: int = FRAMES) -> tuple[dict, dict]:
    """One corrected AGIPD-1M train: 16 sources of float32 (frames, 512, 128)."""
    from pulsetrain.protocol import make_meta

    data, meta = {}, {}
    for m in range(SOURCES):
        src = f"SPB_DET_AGIPD1M-1/CORR/{m}CH0:output"
        data[src] = {
            "image.data": np.full((frames, *MODULE_SHAPE), m, np.float32),
            "image.cellId": np.arange(frames, dtype=np.uint16),
            "image.pulseId": np.arange(frames, dtype=np.uint64),
            "image.trainId": np.full(frames, 10_000, np.uint64),
        }
        meta[src] = make_meta(src, 10_000)
    return data, meta


def train_nbytes(data: dict) -> int:
    return sum(v.nbytes for props in data.values() for v in props.values())


# ----------------------------------------------------------------------------------------------
# Senders (child processes)
# ----------------------------------------------------------------------------------------------


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sender(kind: str, pattern: str, frames: int, endpoint_q, done, result_q) -> None:
    """Serve the same train until ``done`` is set; report (CPU seconds, trains sent)."""
    import logging

    import zmq

    logging.getLogger("pulsetrain.bridge").setLevel(logging.ERROR)  # no "unsent trains" notes
    data, meta = make_train(frames)
    cpu0 = _cpu_seconds()
    if kind == "bare":
        from pulsetrain.protocol import serialize

        message = serialize(data, meta, "2.2")
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        sock.set_hwm(1)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        endpoint_q.put(f"tcp://127.0.0.1:{port}")
        sent = 0
        while not done.is_set():
            try:
                sock.send_multipart(message, copy=False, flags=zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                sock.poll(100, zmq.POLLOUT)
        result_q.put((_cpu_seconds() - cpu0, sent))
        sock.close(linger=0)
        ctx.term()
        return

    if kind == "karabo":
        from karabo_bridge import ServerInThread

        server = ServerInThread("tcp://127.0.0.1:0", sock=pattern, maxlen=2)
    else:
        from pulsetrain.bridge import BridgeServer

        server = BridgeServer("tcp://127.0.0.1:0", pattern, maxlen=2)
    server.start()
    endpoint_q.put(server.endpoint)
    fed = 0
    while not done.is_set():
        try:
            server.feed(data, meta, timeout=1.0)
            fed += 1
        except queue.Full:
            pass
    result_q.put((_cpu_seconds() - cpu0, max(fed - 3, 1)))  # less those still queued
    server.stop()  # karabo-bridge-py's may hang here (blocked PUSH send); the parent kills it


# ----------------------------------------------------------------------------------------------
# Receivers (this process)
# ----------------------------------------------------------------------------------------------


def _bare_receiver(endpoint: str):
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.set_hwm(1)
    sock.connect(endpoint)

    def receive() -> int:
        frames = sock.recv_multipart(copy=False)
        n = 0
        for f in frames[3::2]:  # payload frames of the 2.2 message: wrap them, as a consumer would
            n += np.frombuffer(f.buffer, np.uint8).nbytes
        return n

    def close() -> None:
        sock.close(linger=0)
        ctx.term()

    return receive, close


def _client_receiver(client):
    def receive() -> int:
        data, _ = client.next()
        return sum(
            v.nbytes for props in data.values() for v in props.values() if isinstance(v, np.ndarray)
        )

    return receive, lambda: None


CASES = {
    # name: (sender kind, server pattern, receiver)
    "(a) bare pyzmq PUSH/PULL": ("bare", "PUSH", "bare"),
    "(b) karabo-bridge-py PUSH -> karabo Client": ("karabo", "PUSH", "karabo"),
    "(c) pulsetrain PUSH -> pulsetrain Client": ("pulsetrain", "PUSH", "pulsetrain"),
    "(d) pulsetrain PUSH -> karabo Client": ("pulsetrain", "PUSH", "karabo"),
    "(b-REP) karabo-bridge-py REP -> karabo Client": ("karabo", "REP", "karabo"),
    "(c-REP) pulsetrain REP -> pulsetrain Client": ("pulsetrain", "REP", "pulsetrain"),
}


def run_case(name: str, trains: int, frames: int) -> tuple[float, float, float, float]:
    """Time one contender; returns (GB/s, trains/s, sender and receiver CPU s per train)."""
    kind, pattern, receiver = CASES[name]
    ctx = mp.get_context("spawn")
    endpoint_q = ctx.Queue()
    result_q = ctx.Queue()
    done = ctx.Event()
    proc = ctx.Process(target=_sender, args=(kind, pattern, frames, endpoint_q, done, result_q))
    proc.start()
    try:
        endpoint = endpoint_q.get(timeout=60)
        sock = {"PUSH": "PULL", "REP": "REQ", "PUB": "SUB"}[pattern]
        if receiver == "bare":
            receive, close = _bare_receiver(endpoint)
        elif receiver == "karabo":
            import karabo_bridge

            client = karabo_bridge.Client(endpoint, sock=sock, timeout=60)
            receive, close = _client_receiver(client)
            close = lambda: client._context.destroy(linger=0)
        else:
            from pulsetrain.bridge import Client

            client = Client(endpoint, sock=sock, timeout=60)
            receive, _ = _client_receiver(client)
            close = client.close
        for _ in range(WARMUP):
            receive()
        nbytes = 0
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        for _ in range(trains):
            nbytes += receive()
        elapsed = time.perf_counter() - t0
        receiver_cpu = (_cpu_seconds() - cpu0) / trains
        close()  # the client goes first, then the server stops (see docs/protocol.md)
        done.set()
        try:
            sender_cpu, sent = result_q.get(timeout=60)
        except queue.Empty:  # the sender died; its exit code is reported below
            sender_cpu, sent = float("nan"), 1
    finally:
        done.set()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(10)
            print(f"note: {name}: the sender did not stop within 10 s and was killed")
        elif proc.exitcode:
            print(f"warning: {name}: sender exited with code {proc.exitcode}")
    return nbytes / elapsed / 1e9, trains / elapsed, sender_cpu / sent, receiver_cpu


def main(quick: bool = False, trains: int | None = None, repeats: int | None = None) -> list[dict]:
    """Run every contender round-robin; print the table; return the result dicts."""
    trains = trains or (3 if quick else 6)
    repeats = repeats or (1 if quick else 5)
    data, _ = make_train()
    per_train = train_nbytes(data)
    del data
    print(
        f"train: {SOURCES} sources x {FRAMES} x {MODULE_SHAPE} float32 + small arrays = "
        f"{per_train / 1e6:.0f} MB; {trains} trains timed after {WARMUP} warm-up, {repeats} "
        f"round(s), tcp://127.0.0.1; load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs; no allocator tuning"
    )
    names = list(CASES)
    runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            runs[name].append(run_case(name, trains, FRAMES))
    med = {
        name: [statistics.median(x[k] for x in rs) for k in range(4)] for name, rs in runs.items()
    }
    a = med["(a) bare pyzmq PUSH/PULL"][0]
    b = med["(b) karabo-bridge-py PUSH -> karabo Client"][0]
    b_rep = med["(b-REP) karabo-bridge-py REP -> karabo Client"][0]
    peers = {
        "(a) bare pyzmq PUSH/PULL": ("", None, None),
        "(b) karabo-bridge-py PUSH -> karabo Client": ("(a)", a, None),
        "(c) pulsetrain PUSH -> pulsetrain Client": ("(a)", a, GOAL_VS_BARE),
        "(d) pulsetrain PUSH -> karabo Client": ("(a)", a, GOAL_VS_BARE),
        "(b-REP) karabo-bridge-py REP -> karabo Client": ("(a)", a, None),
        "(c-REP) pulsetrain REP -> pulsetrain Client": ("(b-REP)", b_rep, GOAL_VS_KARABO),
    }
    results = []
    for name in names:
        gbps, tps, send_cpu, recv_cpu = med[name]
        peer, ref, goal = peers[name]
        results.append(
            {
                "name": f"{name} throughput",
                "value": gbps,
                "unit": "GB/s",
                "peer": peer,
                "ratio": gbps / ref if ref else None,
                "goal": goal,
                "trains_per_s": tps,
                "sender_cpu_ms_per_train": send_cpu * 1e3,
                "receiver_cpu_ms_per_train": recv_cpu * 1e3,
            }
        )
    c = med["(c) pulsetrain PUSH -> pulsetrain Client"][0]
    results.append(
        {
            "name": "(c) pulsetrain / (b) karabo-bridge-py, PUSH",
            "value": c / b,
            "unit": "x",
            "peer": "(b)",
            "ratio": c / b,
            "goal": GOAL_VS_KARABO,
        }
    )

    print(
        f"\n{'contender (medians)':46s} {'GB/s':>6s} {'trains/s':>8s} {'CPU ms/train':>13s}"
        f" {'ratio':>6s} {'goal':>5s} peer"
    )
    print(f"{'':46s} {'':6s} {'':8s} {'send':>6s} {'recv':>6s}")
    for r in results:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else ""
        goal = f">={r['goal']:.1f}" if r["goal"] is not None else ""
        if r["unit"] == "GB/s":
            print(
                f"{r['name'][: -len(' throughput')]:46s} {r['value']:6.2f} "
                f"{r['trains_per_s']:8.2f} {r['sender_cpu_ms_per_train']:6.0f} "
                f"{r['receiver_cpu_ms_per_train']:6.0f} {ratio:>6s} {goal:>5s} {r['peer']}"
            )
        else:
            print(
                f"{r['name']:46s} {'':6s} {'':8s} {'':6s} {'':6s} {ratio:>6s} {goal:>5s} "
                f"{r['peer']}"
            )
    print("\nper-round GB/s:")
    for name, rs in runs.items():
        print(f"  {name:46s} " + " ".join(f"{x[0]:5.2f}" for x in rs))
    return results


def _simulator_rate(cmd: list[str], port: int, n: int) -> float:
    """Trains/s a stock karabo_bridge REQ client receives from a simulator command, over
    trains 2..n (start-up and the first train excluded)."""
    import subprocess

    from karabo_bridge import Client

    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=600) as client:
            client.next()
            t0 = time.perf_counter()
            for _ in range(n - 1):
                client.next()
            return (n - 1) / (time.perf_counter() - t0)
    finally:
        proc.kill()
        proc.wait()


def simulator_comparison(quick: bool = False, trains: int | None = None, repeats=None) -> dict:
    """``pulsetrain bridge-sim`` in the reference layout against ``karabo-bridge-server-sim``
    with the same command line (``PORT -z REP -d AGIPD -g random``: one corrected AGIPD source,
    16 x 128 x 512 x 64 float32, 268 MB a train), trains/s to a stock ``karabo_bridge.Client``
    (REQ); goal >= 1 x.  Our simulator makes its random trains before binding and sends them in
    turn (``--rate 0``: as fast as the client takes them); the reference makes each train's
    random data when it is asked for."""
    import sys

    from pulsetrain.runtime.ports import free_port

    trains = trains or (3 if quick else 8)
    repeats = repeats or (1 if quick else 3)
    common = ["-z", "REP", "-d", "AGIPD", "-p", "2.2", "-g", "random"]
    rates: dict[str, list[float]] = {"pulsetrain": [], "reference": []}
    for r in range(repeats):
        for name in ("pulsetrain", "reference") if r % 2 == 0 else ("reference", "pulsetrain"):
            port = free_port()
            if name == "pulsetrain":
                cmd = [sys.executable, "-m", "pulsetrain", "bridge-sim", str(port), *common,
                       "--rate", "0"]  # fmt: skip
            else:
                cmd = ["karabo-bridge-server-sim", str(port), *common]
            rates[name].append(_simulator_rate(cmd, port, trains))
    ours = statistics.median(rates["pulsetrain"])
    peer = statistics.median(rates["reference"])
    print(
        f"\nsimulators, reference layout (AGIPD corrected, 64 pulses, -g random, REP), "
        f"{trains} trains, {repeats} round(s), load average {os.getloadavg()[0]:.1f}:"
    )
    for name, label in (
        ("pulsetrain", "pulsetrain bridge-sim"),
        ("reference", "karabo-bridge-server-sim"),
    ):
        rounds = " ".join(f"{x:.2f}" for x in rates[name])
        print(f"  {label:28s} {statistics.median(rates[name]):6.2f} trains/s   {rounds}")
    print(f"  pulsetrain / karabo-bridge-server-sim = {ours / peer:.2f} x (goal >= 1)")
    return {
        "name": "pulsetrain bridge-sim reference layout, 64 pulses, to the stock client",
        "value": ours,
        "unit": "trains/s",
        "peer": "karabo-bridge-server-sim (same command line)",
        "ratio": ours / peer,
        "goal": 1.0,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 trains, 1 round")
    parser.add_argument("--trains", type=int, help="trains timed per contender and round")
    parser.add_argument("--repeats", type=int, help="rounds over all contenders")
    parser.add_argument(
        "--simulators-only",
        action="store_true",
        help="only pulsetrain bridge-sim against karabo-bridge-server-sim",
    )
    args = parser.parse_args()
    if not args.simulators_only:
        main(args.quick, args.trains, args.repeats)
    simulator_comparison(args.quick, args.trains, args.repeats)
