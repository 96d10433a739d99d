"""Scaling out: channel throughput between test hosts, and the inputs of the capacity plan.

One run measures, side by side:

1. **TCP between two test hosts** (``tests/hosts.py``: two Linux network namespaces with their
   own ``/dev/shm``, joined by veth links and a bridge): a pulsetrain ``OutputChannel`` on host
   A -> ``InputChannel`` on host B (``wait`` policy, nothing dropped) against bare pyzmq
   PUSH -> PULL between the same two namespaces.  Fair both ways: the bare loop sends the very
   frames the channel sends (its control frame and the protocol 2.2 frames, the array without
   copying), with high-water marks of 2 + 2, and the channel's input gets the same buffering
   (a window of 5: one train in the consumer's hands, four queued); the default window (2) is
   measured too.  Rounds are interleaved (every other round pulsetrain goes first); medians
   of the rounds' ratios, and the best rounds, are reported, with the CPU time of both ends
   per GB (what a loaded machine stretches least).  Two message sizes: one raw AGIPD
   module-train of 16 frames (16 x 2 x 512 x 128 uint16, 4.2 MB) and one corrected
   module-train of 64 frames (64 x 512 x 128 float32, 16.8 MB).  Goal: pulsetrain >= 0.9 x
   bare pyzmq.
2. **Shared memory on one host**: the same pulsetrain channel between two processes of host A
   (the shared-memory transport; asserted from the input's own count of trains read that way).
3. **Per-core correction rate**: the AGIPD kernel (``correct_agipd``, one numba thread) on a
   64-frame module-train, random gain mix (90/9/1 %) and simulated hit data: frames per CPU
   second of the process (the wall clock of a shared machine also counts waits for a core).
4. **Bytes per train at each stage of figure 2**: the serialised size (protocol 2.2 frames, what
   a channel carries) of a raw module-train, a corrected one, the matched train (16 modules) and
   what the bridge sends (the example's keys), measured at 8 and 16 frames and extrapolated
   linearly in frames (every array has a frame axis) to 352 frames.
5. **Per-stage CPU of figure 2 at 16 frames**: ``examples/calibration-pipeline.toml`` with real
   correction (as ``benchmarks/figure2.py``), the bridge on a server of its own; the CPU time
   of every server process over the window divided by the trains that stage handled, and the
   stock ``karabo_bridge.Client`` (this process) likewise.

    python benchmarks/scaling.py [--quick] [--write] [--rounds N] [--channels-only]

``--write`` replaces the ``## scaling`` section at the end of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # hosts.py: test hosts made of namespaces
sys.path.insert(0, str(HERE))

GOAL_TCP = 0.9
HWM = 2  # high-water marks of the bare PUSH and PULL sockets
# The input's credit window in the comparison: one train in the consumer's hands plus as many
# queued as the bare pair's two high-water marks let queue (HWM + HWM): the same buffering.
WINDOW = 1 + 2 * HWM
SIZES = {
    "raw module-train, 16 frames (4.2 MB)": ((16, 2, 512, 128), "uint16"),
    "corrected module-train, 64 frames (16.8 MB)": ((64, 512, 128), "float32"),
}
MODULES = 16
FULL_FRAMES = 352
RATE_HZ = 10.0
MIN_TRAINS = 10  # fewer trains through a stage in the window: no per-train figure

# The bare loop sends exactly the frames a pulsetrain channel puts on the wire for the same
# train (its msgpack control frame, then the protocol 2.2 frames of pulsetrain.protocol), small
# frames copied and the array without copying (as pyzmq's send_multipart(copy=False) does), with
# high-water marks of HWM (the pulsetrain input gets a window of the same buffering, WINDOW, and
# a second pulsetrain run shows the default window of 2).  Only the framework is not there: no
# credits, no channel thread, no deserialisation on the receiving side.
ZMQ_SENDER = textwrap.dedent("""
    import json, sys, time, msgpack, numpy as np, zmq
    from pulsetrain.protocol import make_meta, serialize
    ep, n, shape, dtype = sys.argv[1], int(sys.argv[2]), eval(sys.argv[3]), sys.argv[4]
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, int(sys.argv[5]))
    s.bind(ep)
    arr = np.ones(shape, dtype)
    src = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
    pack = msgpack.Packer(use_bin_type=True).pack
    c0 = None
    for i in range(n):
        frames = serialize({src: {"image.data": arr}}, {src: make_meta(src, i)})
        head = pack({"t": "data", "s": "0123456789ab", "w": i, "d": 0})
        s.send_multipart([head, *frames], copy=False)
        c0 = time.process_time() if c0 is None else c0
    s.send(b"")
    s.close(linger=-1)
    ctx.term()
    print(json.dumps({"cpu": time.process_time() - c0}), flush=True)
""")

ZMQ_RECEIVER = textwrap.dedent("""
    import json, sys, time, numpy as np, zmq
    ep, shape, dtype = sys.argv[1], eval(sys.argv[2]), sys.argv[3]
    ctx = zmq.Context()
    r = ctx.socket(zmq.PULL)
    r.setsockopt(zmq.RCVHWM, int(sys.argv[4]))
    r.connect(ep)
    got, t0, nbytes = 0, None, 0
    while True:
        frames = r.recv_multipart(copy=False)
        if len(frames) == 1 and len(frames[0]) == 0:
            break
        arr = np.frombuffer(frames[-1].buffer, dtype).reshape(shape)
        assert arr.flat[0] == 1
        if t0 is None:
            t0, c0 = time.perf_counter(), time.process_time()
        else:
            got += 1
            nbytes += arr.nbytes
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"GBps": nbytes / dt / 1e9, "n": got, "cpu": cpu, "bytes": nbytes}))
""")

PT_SENDER = textwrap.dedent("""
    import json, sys, time, numpy as np
    from pulsetrain.protocol import make_meta
    from pulsetrain.runtime.channels import OutputChannel
    ep, n, shape, dtype = sys.argv[1], int(sys.argv[2]), eval(sys.argv[3]), sys.argv[4]
    out = OutputChannel("bench:output", ep)
    assert out.wait_for_inputs(1, 60), "no input connected"
    arr = np.ones(shape, dtype)
    src = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
    c0 = None
    for i in range(n):
        out.write({src: {"image.data": arr}}, {src: make_meta(src, i)})
        c0 = time.process_time() if c0 is None else c0
    out.signal_eos(timeout=60)
    out.close()
    print(json.dumps({"cpu": time.process_time() - c0}), flush=True)
""")

PT_RECEIVER = textwrap.dedent("""
    import json, sys, time
    from pulsetrain.runtime.channels import EndOfStream, InputChannel
    ep = sys.argv[1]
    inp = InputChannel("bench:input", on_slowness="wait", window=int(sys.argv[2]))
    inp.connect(ep)
    got, t0, nbytes = 0, None, 0
    while True:
        item = inp.get(timeout=120)
        if isinstance(item, EndOfStream):
            break
        arr = item.data["SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"]["image.data"]
        assert arr.flat[0] == 1
        if t0 is None:
            t0, c0 = time.perf_counter(), time.process_time()
        else:
            got += 1
            nbytes += arr.nbytes
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"GBps": nbytes / dt / 1e9, "n": got, "shm": inp.shm_received, "cpu": cpu,
                      "bytes": nbytes}), flush=True)
    inp.close()
""")


# ------------------------------------------------------------------ 1, 2: channels
def _pair(
    sender_host,
    receiver_host,
    sender: str,
    receiver: str,
    bind: str,
    connect: str,
    n: int,
    shape: tuple,
    dtype: str,
    window: int = WINDOW,
) -> dict:
    import subprocess

    if receiver is PT_RECEIVER:
        recv_args = [connect, str(window)]
    else:
        recv_args = [connect, repr(shape), dtype, str(HWM)]
    send = sender_host.popen(
        [sys.executable, "-c", sender, bind, str(n), repr(shape), dtype, str(HWM)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    recv = receiver_host.popen(
        [sys.executable, "-c", receiver, *recv_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = recv.communicate(timeout=600)
    s_out, s_err = send.communicate(timeout=120)
    if recv.returncode or send.returncode:
        raise RuntimeError(f"transfer failed:\n{err[-2000:]}\n{s_err[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    sent = json.loads(s_out.strip().splitlines()[-1])
    # CPU seconds of both ends per GB moved: what the transfer costs a host, whatever the load
    result["cpu_per_GB"] = (result["cpu"] + sent["cpu"]) / (result["bytes"] / 1e9)
    return result


def channels(quick: bool, rounds: int | None = None) -> list[dict]:
    from hosts import HostNetwork

    rounds = rounds or (3 if quick else 5)
    budget = 0.8e9 if quick else 3e9  # bytes per transfer
    rows = []
    port = 47300
    with HostNetwork(2) as net:
        a, b = net
        for label, (shape, dtype) in SIZES.items():
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            n = max(20, int(budget // nbytes))
            runs: dict[str, list[float]] = {"zmq": [], "pt": [], "pt2": [], "shm": []}
            shm_counts = []
            cpu: dict[str, list[float]] = {k: [] for k in runs}
            for i in range(rounds):
                order = [
                    ("zmq", ZMQ_SENDER, ZMQ_RECEIVER, b, HWM),
                    ("pt", PT_SENDER, PT_RECEIVER, b, WINDOW),
                    ("pt2", PT_SENDER, PT_RECEIVER, b, 2),
                    ("shm", PT_SENDER, PT_RECEIVER, a, WINDOW),
                ]
                if i % 2:  # every other round pulsetrain goes first: no place in a round favoured
                    order[:2] = order[1::-1]
                for kind, sender, receiver, dest, window in order:
                    port += 1
                    ep = f"tcp://{a.address}:{port}"
                    r = _pair(a, dest, sender, receiver, ep, ep, n, shape, dtype, window)
                    runs[kind].append(r["GBps"])
                    cpu[kind].append(r["cpu_per_GB"])
                    if kind in ("pt", "pt2"):
                        assert r["shm"] == 0, "trains between hosts went through shared memory"
                    elif kind == "shm":
                        shm_counts.append(r["shm"])
            med = {k: statistics.median(v) for k, v in runs.items()}
            cpu_med = {k: statistics.median(v) for k, v in cpu.items()}
            # rounds are interleaved: the ratio of each round's pair, then their median, is
            # what a machine whose load changes from round to round can still tell
            ratio = statistics.median(p / z for p, z in zip(runs["pt"], runs["zmq"]))
            ratio2 = statistics.median(p / z for p, z in zip(runs["pt2"], runs["zmq"]))
            best = {k: max(v) for k, v in runs.items()}
            print(
                f"{label}: pulsetrain tcp / bare pyzmq: median of the rounds' ratios "
                f"{ratio:.2f}, ratio of the medians {med['pt'] / med['zmq']:.2f}, ratio of the "
                f"best rounds {best['pt'] / best['zmq']:.2f}; CPU per GB {cpu_med['pt'] / cpu_med['zmq']:.2f}x",
                flush=True,
            )
            print(
                f"{label}: {n} messages x {rounds} rounds; bare pyzmq "
                f"{[round(x, 2) for x in runs['zmq']]}, pulsetrain tcp "
                f"{[round(x, 2) for x in runs['pt']]} (default window 2: "
                f"{[round(x, 2) for x in runs['pt2']]}, ratio {ratio2:.2f}), pulsetrain shm "
                f"{[round(x, 2) for x in runs['shm']]} GB/s; shm trains {shm_counts}; CPU s "
                f"per GB (both ends) zmq {cpu_med['zmq']:.2f}, tcp {cpu_med['pt']:.2f} (window "
                f"2: {cpu_med['pt2']:.2f}), shm "
                f"{cpu_med['shm']:.2f}",
                flush=True,
            )
            if min(shm_counts) < n // 2:
                raise RuntimeError(f"one host: only {shm_counts} of {n} trains in shared memory")
            rows += [
                {"name": f"{label}: bare pyzmq PUSH/PULL, host A -> host B (tcp)",
                 "value": med["zmq"], "unit": "GB/s", "peer": "", "ratio": None, "goal": None},
                {"name": f"{label}: pulsetrain channel, host A -> host B (tcp, window {WINDOW})",
                 "value": med["pt"], "unit": "GB/s", "peer": "bare pyzmq, same hosts",
                 "ratio": ratio, "goal": GOAL_TCP},
                {"name": f"{label}: pulsetrain channel, host A -> host B (tcp, default window 2)",
                 "value": med["pt2"], "unit": "GB/s", "peer": "bare pyzmq, same hosts",
                 "ratio": ratio2, "goal": None},
                {"name": f"{label}: bare pyzmq, best of {rounds} rounds",
                 "value": best["zmq"], "unit": "GB/s", "peer": "", "ratio": None, "goal": None},
                {"name": f"{label}: pulsetrain channel tcp, best of {rounds} rounds",
                 "value": best["pt"], "unit": "GB/s", "peer": "bare pyzmq, best round",
                 "ratio": best["pt"] / best["zmq"], "goal": GOAL_TCP},
                {"name": f"{label}: pulsetrain channel, one host (shared memory)",
                 "value": med["shm"], "unit": "GB/s", "peer": "pulsetrain tcp between hosts",
                 "ratio": med["shm"] / med["pt"], "goal": None},
                {"name": f"{label}: CPU of both ends per GB, bare pyzmq tcp",
                 "value": cpu_med["zmq"], "unit": "CPU s/GB", "peer": "", "ratio": None,
                 "goal": None},
                {"name": f"{label}: CPU of both ends per GB, pulsetrain tcp",
                 "value": cpu_med["pt"], "unit": "CPU s/GB", "peer": "bare pyzmq",
                 "ratio": cpu_med["pt"] / cpu_med["zmq"], "goal": None, "lower_is_better": True},
                {"name": f"{label}: CPU of both ends per GB, pulsetrain tcp, window 2",
                 "value": cpu_med["pt2"], "unit": "CPU s/GB", "peer": "bare pyzmq",
                 "ratio": cpu_med["pt2"] / cpu_med["zmq"], "goal": None,
                 "lower_is_better": True},
                {"name": f"{label}: CPU of both ends per GB, pulsetrain shared memory",
                 "value": cpu_med["shm"], "unit": "CPU s/GB", "peer": "pulsetrain tcp",
                 "ratio": cpu_med["shm"] / cpu_med["pt"], "goal": None},
            ]  # fmt: skip
    return rows


# ------------------------------------------------------------------ 3: per-core correction
def correction_per_core(quick: bool) -> list[dict]:
    import numba

    import calibration as cal
    from pulsetrain.calibration import allocate_output, correct_agipd

    rounds = 5 if quick else 15
    rows = []
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        for label, make in (("random", cal.make_data), ("sim", cal.make_sim_data)):
            raw, cells, constants = make()
            out = allocate_output(cal.FRAMES)
            with np.errstate(invalid="ignore", over="ignore"):
                correct_agipd(raw, cells, constants, out=out)  # compile / warm
                times, cpu = [], []
                for _ in range(rounds):
                    t0, c0 = time.perf_counter(), time.process_time()
                    correct_agipd(raw, cells, constants, out=out)
                    times.append(time.perf_counter() - t0)
                    cpu.append(time.process_time() - c0)
            # CPU time, not wall time: on a shared machine the wall clock counts the waits for
            # a core too; the CPU seconds per frame are what a dedicated core would spend
            fps = cal.FRAMES / statistics.median(cpu)
            wall = cal.FRAMES / statistics.median(times)
            print(
                f"correction [{label}]: {fps:.0f} frames per CPU second on one thread "
                f"({wall:.0f} frames per wall-clock second here)",
                flush=True,
            )
            rows.append({
                "name": f"AGIPD correction kernel [{label}], one thread", "value": fps,
                "unit": "frames/s/core", "peer": "", "ratio": None, "goal": None,
            })  # fmt: skip
    finally:
        numba.set_num_threads(threads)
    return rows


# ------------------------------------------------------------------ 4: bytes per stage
BRIDGE_KEYS = ("image.data", "image.cellId", "image.pulseId", "image.trainId",
               "calibration.corrected")  # fmt: skip


def _wire_bytes(data: dict, meta: dict) -> int:
    from pulsetrain import protocol

    return sum(memoryview(f).nbytes for f in protocol.serialize(data, meta))


def stage_bytes(frames: int) -> dict[str, int]:
    """Serialised bytes of one train at each stage of figure 2, at ``frames`` frames."""
    from pulsetrain.calibration import AGIPDConstants, correct_module_data
    from pulsetrain.files.naming import corrected_source_name
    from pulsetrain.protocol import make_meta
    from pulsetrain.sim import DetectorSimulator

    sim = DetectorSimulator("AGIPD", frames=frames, memory_cells=frames, seed=0)
    truth = sim.truth(0)
    with np.errstate(divide="ignore"):
        rel_gain = 1.0 / truth.slope
    bad = np.where(truth.bad_pixels, np.uint32(2), np.uint32(0))
    constants = AGIPDConstants(
        truth.offset, rel_gain, truth.gain_thresholds(), np.broadcast_to(bad, truth.offset.shape)
    )
    raw_src = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
    raw = sim.module_train(0, 1_000_000)
    corr_src = corrected_source_name(raw_src)
    with np.errstate(invalid="ignore"):
        corrected = correct_module_data(raw, constants)
    corrected["calibration.corrected"] = True
    srcs = [corr_src.replace("/0CH0", f"/{m}CH0") for m in range(MODULES)]
    matched = {s: corrected for s in srcs}
    bridged = {s: {k: v for k, v in corrected.items() if k in BRIDGE_KEYS} for s in srcs}
    return {
        "raw module-train": _wire_bytes({raw_src: raw}, {raw_src: make_meta(raw_src, 1)}),
        "corrected module-train": _wire_bytes(
            {corr_src: corrected}, {corr_src: make_meta(corr_src, 1)}
        ),
        "matched train (16 modules)": _wire_bytes(matched, {s: make_meta(s, 1) for s in srcs}),
        "bridge train (16 modules, example keys)": _wire_bytes(
            bridged, {s: make_meta(s, 1) for s in srcs}
        ),
    }


def bytes_per_stage() -> tuple[list[dict], dict]:
    small, large = stage_bytes(8), stage_bytes(16)
    rows, table = [], {}
    for stage in large:
        per_frame = (large[stage] - small[stage]) / 8
        fixed = large[stage] - 16 * per_frame
        full = fixed + FULL_FRAMES * per_frame
        table[stage] = {"16": large[stage], "352": full, "per_frame": per_frame}
        print(f"{stage}: {large[stage] / 1e6:.2f} MB at 16 frames, {per_frame:.0f} B/frame, "
              f"{full / 1e6:.1f} MB at 352 frames", flush=True)  # fmt: skip
        rows += [
            {"name": f"bytes per train, {stage}, 16 frames", "value": large[stage] / 1e6,
             "unit": "MB", "peer": "", "ratio": None, "goal": None},
            {"name": f"bytes per train, {stage}, 352 frames (linear in frames)",
             "value": full / 1e6, "unit": "MB", "peer": "", "ratio": None, "goal": None},
        ]  # fmt: skip
    return rows, table


# ------------------------------------------------------------------ 5: per-stage CPU
@contextlib.contextmanager
def _running(sup, timeout: float):
    """Start ``sup`` with a start timeout of our own; stop it afterwards."""
    sup.start(timeout)
    try:
        yield sup
    finally:
        sup.stop()


def figure2_cpu(seconds: float) -> tuple[list[dict], dict]:
    import psutil
    from karabo_bridge import Client

    from pulsetrain.demo import DET, DemoOptions, corr_id, prepare_catalog, warm_kernels
    from pulsetrain.runtime.ports import free_port
    from pulsetrain.runtime.supervisor import Supervisor
    from pulsetrain.runtime.topology import Topology

    text = (ROOT / "examples" / "calibration-pipeline.toml").read_text()
    frames = int(re.search(r"frames = (\d+)", text).group(1))
    port = free_port()
    text = text.replace("tcp://127.0.0.1:4545", f"tcp://127.0.0.1:{port}")
    text = text.replace("[servers.output]", "[servers.output]\n[servers.bridge]")
    bridge = f"{DET}/CAL/BRIDGE"
    text = re.sub(
        r'(\[devices\."' + re.escape(bridge) + r'"\]\nclass = "Bridge"\nserver = )"output"',
        r'\1"bridge"',
        text,
    )
    sim, matcher = f"{DET}/DET/SIM", f"{DET}/CAL/MATCHER"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = work / "figure2.toml"
        path.write_text(text)
        topo = Topology.load(path)
        assert topo.devices[bridge].server == "bridge", "the bridge did not get its own server"
        url = f"sqlite:///{work / 'catalog.sqlite'}"
        prepare_catalog(DemoOptions(frames=frames, data_dir=work, gui=False), url, lambda s: None)
        warm_kernels(frames)
        old = os.environ.get("PULSETRAIN_CATALOG")
        os.environ["PULSETRAIN_CATALOG"] = url
        # The servers import the catalogue and the kernels when Python starts, not in the
        # correction devices' initialize() (which must answer within 10 s): on a machine
        # shared with other jobs 16 devices importing at once did not.  Outside the window.
        (work / "sitecustomize.py").write_text(
            "import pulsetrain.catalog.agipd, pulsetrain.calibration  # noqa: F401\n"
        )
        path_env = os.pathsep.join(p for p in (str(work), os.environ.get("PYTHONPATH")) if p)
        try:
            sup = Supervisor(topo, workdir=work / "run", env={"PYTHONPATH": path_env})
            with _running(sup, timeout=300):
                for m in range(MODULES):
                    sup.device_client(corr_id(m)).wait_for(corr_id(m), "constantsLoaded", True, 60)
                sup.device_client(sim).wait_for(sim, "prepared", True, 120)
                procs = {name: psutil.Process(sup.pid(name)) for name in sup.servers}
                me = psutil.Process()

                def counters() -> dict:
                    c = {"detector": sup.get(sim, "sentTrains"),
                         "matcher": sup.get(matcher, "uniqueTrains"),
                         "bridge": sup.get(bridge, "fed")}  # fmt: skip
                    for m in range(MODULES):
                        c[f"corr{m}"] = sup.get(corr_id(m), "correctedTrains")
                    return c

                def cpu() -> dict:
                    out = {}
                    for name, p in [*procs.items(), ("client", me)]:
                        t = p.cpu_times()
                        out[name] = t.user + t.system
                    return out

                received = 0
                # A busy machine may complete few trains: the client waits, never fails, and
                # every stage is measured on the trains it handled itself.
                with Client(f"tcp://127.0.0.1:{port}", timeout=2) as client:

                    def ask() -> bool:
                        try:
                            client.next()
                            return True
                        except TimeoutError:
                            return False

                    t_end = time.monotonic() + 5
                    while time.monotonic() < t_end:
                        ask()
                    c0, u0, t0 = counters(), cpu(), time.monotonic()
                    while time.monotonic() - t0 < seconds:
                        received += ask()
                    c1, u1, dt = counters(), cpu(), time.monotonic() - t0
        finally:
            if old is None:
                os.environ.pop("PULSETRAIN_CATALOG", None)
            else:
                os.environ["PULSETRAIN_CATALOG"] = old
    d = {k: c1[k] - c0[k] for k in c0}
    used = {k: u1[k] - u0[k] for k in u0}
    corr_trains = sum(d[f"corr{m}"] for m in range(MODULES))
    corr_cpu = sum(used[f"proc{i}"] for i in range(8))
    budget = {
        "detector (simulated AGIPD-1M, 16 modules)": (used["detector"], d["detector"]),
        "correction, per module-train": (corr_cpu, corr_trains),
        "matcher (16 modules in)": (used["output"], d["matcher"]),
        "bridge (REP, example keys)": (used["bridge"], d["bridge"]),
        "karabo_bridge.Client (this process)": (used["client"], received),
    }
    rows, table = [], {"seconds": dt, "frames": frames, "detector_hz": d["detector"] / dt,
                       "load": os.getloadavg()[0]}  # fmt: skip
    for stage, (cpu_s, trains) in budget.items():
        if trains < MIN_TRAINS:  # a per-train figure of a handful of trains is not one
            table[stage] = {"cpu_s": cpu_s, "trains": trains, "ms_per_train": None}
            print(f"{stage}: {cpu_s:.1f} CPU s for {trains} trains: too few to tell", flush=True)
            continue
        ms = cpu_s / trains * 1e3
        table[stage] = {"cpu_s": cpu_s, "trains": trains, "ms_per_train": ms}
        print(f"{stage}: {cpu_s:.1f} CPU s for {trains} trains = {ms:.1f} ms CPU per train",
              flush=True)  # fmt: skip
        rows.append(
            {
                "name": f"figure 2 at {frames} frames, CPU per train: {stage}",
                "value": ms,
                "unit": "ms",
                "peer": "",
                "ratio": None,
                "goal": None,
            }
        )
    per_train = sum(
        (MODULES if "correction" in stage else 1) * (table[stage]["ms_per_train"] or 0.0)
        for stage in budget
        if "Client" not in stage
    )  # stages with too few trains count 0: a lower bound then
    table["pipeline_ms_per_train"] = per_train
    rows.append({"name": f"figure 2 at {frames} frames, CPU per train, all stages (no client)",
                 "value": per_train, "unit": "ms", "peer": "2 cores x 100 ms per train at 10 Hz",
                 "ratio": per_train / 200.0, "goal": None})  # fmt: skip
    print(
        f"detector ran at {table['detector_hz']:.2f} Hz over {dt:.0f} s; whole pipeline "
        f"{per_train:.0f} ms CPU per train (load {table['load']:.1f})",
        flush=True,
    )
    return rows, table


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer rounds, shorter runs")
    ap.add_argument("--write", action="store_true", help="write the section of RESULTS.md")
    ap.add_argument("--skip-figure2", action="store_true")
    ap.add_argument("--rounds", type=int, help="rounds of the channel comparison")
    ap.add_argument(
        "--channels-only", action="store_true", help="only the channel comparison (no --write)"
    )
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    rows = channels(args.quick, args.rounds)
    if args.channels_only:
        return rows
    rows += correction_per_core(args.quick)
    byte_rows, byte_table = bytes_per_stage()
    rows += byte_rows
    cpu_table: dict = {}
    if not args.skip_figure2:
        from pulsetrain.errors import StartupError

        for attempt in (1, 2, 3):
            try:
                cpu_rows, cpu_table = figure2_cpu(20.0 if args.quick else 60.0)
                break
            except StartupError as exc:  # a busy machine: a device not created in time
                print(f"figure 2 did not start (attempt {attempt}): {exc}", flush=True)
        else:
            raise SystemExit("figure 2 did not start three times")
        rows += cpu_rows
    elapsed = time.monotonic() - t0
    (HERE / ".scaling-last.json").write_text(
        json.dumps(
            {"rows": rows, "bytes": byte_table, "cpu": cpu_table, "load": load, "elapsed": elapsed},
            default=float,
            indent=1,
        )
    )
    if args.write:
        write_results(rows, elapsed, load, args.quick)
    return rows


def write_results(rows: list[dict], elapsed: float, load: float, quick: bool) -> None:
    from run_all import fmt, verdict

    command = f"python benchmarks/scaling.py{' --quick' if quick else ''} --write"
    intro = (
        f"Run on {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs shared with other "
        f"jobs (load average {load:.1f} at start).  Test hosts are network namespaces of this "
        "machine (`tests/hosts.py`): between them TCP runs over veth links and a bridge, so "
        "the figures are the software stack's (copies, system calls) on these 2 cores, not a "
        "NIC's.  The capacity plan built on them is `docs/scaling.md`."
    )
    lines = [
        f"## scaling ({elapsed:.0f} s, `{command}`)",
        "",
        intro,
        "",
        "| measurement | value | unit | peer | ratio | goal | |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {fmt(r.get('value'))} | {r.get('unit', '')} | "
            f"{r.get('peer') or ''} | {fmt(r.get('ratio'))} | {fmt(r.get('goal'))} | "
            f"{verdict(r)} |"
        )
    section = "\n".join(lines) + "\n"
    path = HERE / "RESULTS.md"
    text = path.read_text()
    start = text.find("\n## scaling (")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[: start + 1] + section + (text[end + 1 :] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(f"wrote the scaling section of {path}")


if __name__ == "__main__":
    main()
