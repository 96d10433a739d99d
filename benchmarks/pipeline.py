"""Pipeline channel throughput against bare pyzmq, and latency through chains of devices.

One run measures, over tcp loopback, module-trains of 64 x 512 x 128 float32 (16.8 MB):

(a) bare pyzmq PUSH -> PULL, the same frames, ``copy=False``, sender in another process;
(b) pulsetrain ``OutputChannel`` -> ``InputChannel`` (credit-based, ``wait`` policy so nothing is
    dropped), sender in another process;

and the latency (receive time - train timestamp) at 10 Hz through chains of 1 and 3
``Passthrough`` devices, each on its own server process, started by the supervisor.

    python benchmarks/pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import zmq

SHAPE = (64, 512, 128)
GOAL_THROUGHPUT = 0.8
GOAL_P99_S = 0.1


def _zmq_sender(endpoint: str, n: int) -> None:
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, 2)
    s.connect(endpoint)
    arr = np.ones(SHAPE, np.float32)
    header = b'{"source": "DET/0CH0:output", "tid": 0}'
    for _ in range(n):
        s.send_multipart([header, arr.data], copy=False)
    s.send(b"")
    s.close(linger=-1)
    ctx.term()


def bare_zmq(n: int) -> float:
    ctx = zmq.Context()
    r = ctx.socket(zmq.PULL)
    r.setsockopt(zmq.RCVHWM, 2)
    port = r.bind_to_random_port("tcp://127.0.0.1")
    p = mp.Process(target=_zmq_sender, args=(f"tcp://127.0.0.1:{port}", n))
    p.start()
    got = 0
    t0 = None
    while True:
        frames = r.recv_multipart(copy=False)
        if len(frames) == 1 and len(frames[0]) == 0:
            break
        arr = np.frombuffer(frames[1].buffer, np.float32).reshape(SHAPE)
        if t0 is None:
            t0 = time.perf_counter()
        else:
            got += 1
        assert arr[0, 0, 0] == 1
    dt = time.perf_counter() - t0
    p.join()
    r.close(0)
    ctx.term()
    return got * np.prod(SHAPE) * 4 / dt / 1e9


def _channel_sender(endpoint_q: mp.Queue, n: int) -> None:
    from pulsetrain.protocol import make_meta
    from pulsetrain.runtime.channels import OutputChannel

    out = OutputChannel("bench:output", "tcp://127.0.0.1:0")
    endpoint_q.put(out.endpoints[0])
    out.wait_for_inputs(1, 30)
    arr = np.ones(SHAPE, np.float32)
    src = "SPB_DET_AGIPD1M-1/CORR/0CH0:output"
    for i in range(n):
        out.write({src: {"image.data": arr}}, {src: make_meta(src, i)})
    out.signal_eos()
    out.close()


def pulsetrain_channel(n: int) -> float:
    from pulsetrain.runtime.channels import EndOfStream, InputChannel

    q: mp.Queue = mp.Queue()
    p = mp.Process(target=_channel_sender, args=(q, n))
    p.start()
    endpoint = q.get(timeout=30)
    inp = InputChannel("bench:input", on_slowness="wait")
    inp.connect(endpoint)
    got = 0
    t0 = None
    while True:
        item = inp.get(timeout=60)
        if isinstance(item, EndOfStream):
            break
        arr = item.data["SPB_DET_AGIPD1M-1/CORR/0CH0:output"]["image.data"]
        if t0 is None:
            t0 = time.perf_counter()
        else:
            got += 1
        assert arr[0, 0, 0] == 1
    dt = time.perf_counter() - t0
    p.join()
    inp.close()
    return got * np.prod(SHAPE) * 4 / dt / 1e9


def chain_latency(n_devices: int, seconds: float) -> dict:
    from pulsetrain.runtime.channels import InputChannel
    from pulsetrain.runtime.supervisor import Supervisor
    from pulsetrain.runtime.topology import Topology

    lines = ["[servers.src]"]
    lines += [f"[servers.w{i}]" for i in range(n_devices)]
    lines.append(textwrap.dedent(f"""
        [devices."B/SRC"]
        class = "TrainSource"
        server = "src"
        config = {{ rate = 10.0, shape = {list(SHAPE)}, dtype = "float32" }}
    """))
    prev = "B/SRC:output"
    for i in range(n_devices):
        lines.append(textwrap.dedent(f"""
            [devices."B/W{i}"]
            class = "Passthrough"
            server = "w{i}"
            [[connections]]
            from = "{prev}"
            to = "B/W{i}:input"
        """))
        prev = f"B/W{i}:output"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chain.toml"
        path.write_text("\n".join(lines))
        sup = Supervisor(Topology.load(path), workdir=Path(tmp) / "run")
        with sup:
            inp = InputChannel("bench:sink")
            inp.connect(sup.endpoints()[prev])
            lat = []
            t_end = time.monotonic() + seconds
            while time.monotonic() < t_end:
                item = inp.get(timeout=10)
                now = time.time()
                ts = next(iter(item.meta.values()))["timestamp"]
                lat.append(now - ts)
            inp.close()
            dropped = sum(sup.get(f"B/W{i}", "channels.outputs.output.dropped")
                          for i in range(n_devices))
    lat = np.array(lat[5:])  # skip the connection warm-up
    return {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "n": len(lat), "dropped": dropped}


def main(quick: bool = False) -> list[dict]:
    n = 60 if quick else 200
    repeats = 1 if quick else 3
    zmq_rates = [bare_zmq(n) for _ in range(repeats)]
    pt_rates = [pulsetrain_channel(n) for _ in range(repeats)]
    zr, pr = float(np.median(zmq_rates)), float(np.median(pt_rates))
    seconds = 10 if quick else 30
    lat1 = chain_latency(1, seconds)
    lat3 = chain_latency(3, seconds)
    results = [
        {"name": "channel throughput, bare pyzmq PUSH/PULL (a)", "value": zr, "unit": "GB/s",
         "peer": "", "ratio": None, "goal": None},
        {"name": "channel throughput, pulsetrain (b)", "value": pr, "unit": "GB/s",
         "peer": "bare pyzmq", "ratio": pr / zr, "goal": GOAL_THROUGHPUT},
    ]
    for k, lat in ((1, lat1), (3, lat3)):
        for q in ("p50", "p99"):
            results.append({
                "name": f"latency through {k} device(s) at 10 Hz, {q}", "value": lat[q] * 1e3,
                "unit": "ms", "peer": "", "ratio": None,
                "goal": GOAL_P99_S * 1e3 if q == "p99" else None,
            })
    print(f"module-train {SHAPE} float32 = {np.prod(SHAPE) * 4 / 1e6:.1f} MB, tcp loopback")
    print(f"{'measurement':55s} {'value':>10s} {'unit':6s} {'ratio':>7s} {'goal':>6s}")
    for r in results:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else ""
        goal = f"{r['goal']:g}" if r["goal"] is not None else ""
        print(f"{r['name']:55s} {r['value']:10.2f} {r['unit']:6s} {ratio:>7s} {goal:>6s}")
    print(f"runs: zmq {['%.2f' % x for x in zmq_rates]}, pulsetrain "
          f"{['%.2f' % x for x in pt_rates]} GB/s; chain samples {lat1['n']}, {lat3['n']}, "
          f"drops {lat1['dropped']}, {lat3['dropped']}")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer trains, shorter runs")
    main(ap.parse_args().quick)
