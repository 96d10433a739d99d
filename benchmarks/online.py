"""Online calibration pipeline: the largest frames per module sustained at 10 Hz, and latency.

Runs the figure-2 pipeline with real correction — simulated AGIPD-1M (16 modules) → 16
``AGIPDCorrection`` devices on 8 servers → ``TrainMatcher`` → ``Bridge`` (REP) — for a sweep of
frames per module, and measures with a stock ``karabo_bridge.Client``: the rate of matched trains
holding all 16 modules, and the latency from the detector's train timestamp to the client.
Goal (issue 4): p99 < 0.5 s (the design paper measured 2.5 s through calibration).

    python benchmarks/online.py [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL_P99_S = 0.5


def measure(frames: int, seconds: float, workdir: Path) -> dict:
    from karabo_bridge import Client

    from pulsetrain.demo import (
        BRIDGE,
        DET,
        MATCHER,
        SIM,
        DemoOptions,
        corr_id,
        prepare_catalog,
        warm_kernels,
    )
    from pulsetrain.runtime.ports import free_port
    from pulsetrain.runtime.supervisor import Supervisor
    from pulsetrain.runtime.topology import Topology

    opts = DemoOptions(trains=None, frames=frames, data_dir=workdir, gui=False)
    url = f"sqlite:///{workdir / 'catalog.sqlite'}"
    prepare_catalog(opts, url, lambda s: None)
    warm_kernels(frames)
    port = free_port()
    srcs = ", ".join(f'"{DET}/CORR/{m}CH0:output"' for m in range(16))
    text = ["[servers.facility]\n[servers.online]\n"] + [f"[servers.cal{i}]\n" for i in range(8)]
    text.append(f"""
[devices."{SIM}"]
class = "SimulatedDetector"
server = "facility"
config = {{ frames = {frames}, memory_cells = {frames}, rate = 10.0, autostart = false }}
[devices."{MATCHER}"]
class = "TrainMatcher"
server = "online"
config = {{ sources = [{srcs}], buffer_size = 20 }}
[devices."{BRIDGE}"]
class = "Bridge"
server = "online"
config = {{ endpoint = "tcp://127.0.0.1:{port}", pattern = "REP" }}
[[connections]]
from = "{MATCHER}:output"
to = "{BRIDGE}:input"
""")
    for m in range(16):
        text.append(f"""
[devices."{corr_id(m)}"]
class = "AGIPDCorrection"
server = "cal{m % 8}"
config = {{ catalog = "{url}", module = {m}, memory_cells = {frames} }}
[[connections]]
from = "{SIM}:module{m}"
to = "{corr_id(m)}:input"
[[connections]]
from = "{corr_id(m)}:output"
to = "{MATCHER}:input"
on_slowness = "queueDrop"
max_queue_length = 4
""")
    path = workdir / f"online-{frames}.toml"
    path.write_text("".join(text))
    with Supervisor(Topology.load(path), workdir=workdir / f"run-{frames}") as sup:
        for m in range(16):
            sup.device_client(corr_id(m)).wait_for(corr_id(m), "constantsLoaded", True, 60)
        sup.device_client(SIM).wait_for(SIM, "prepared", True, 120)
        sup.call(SIM, "start_acquisition")
        lat, full, n = [], 0, 0
        with Client(f"tcp://127.0.0.1:{port}", timeout=30) as client:
            client.next()  # warm-up
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                data, meta = client.next()
                now = time.time()
                n += 1
                full += sum(1 for s in data if "/CORR/" in s) == 16
                lat.append(now - max(m["timestamp"] for m in meta.values()))
            dt = time.monotonic() - t0
        sent = sup.get(SIM, "actualRate")
    lat = np.array(lat)
    return {"frames": frames, "rate": full / dt, "n": n, "sim_rate": sent,
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))}


def main(quick: bool = False) -> list[dict]:
    sweep = [4, 8, 16] if quick else [4, 8, 16, 32]
    seconds = 15 if quick else 30
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for frames in sweep:
            rows.append(measure(frames, seconds, Path(tmp)))
            print(f"frames {frames:3d}: {rows[-1]['rate']:.2f} full trains/s "
                  f"(detector {rows[-1]['sim_rate']:.2f} Hz), latency p50 "
                  f"{rows[-1]['p50'] * 1e3:.0f} ms, p99 {rows[-1]['p99'] * 1e3:.0f} ms", flush=True)
    sustained = [r["frames"] for r in rows if r["rate"] >= 9.5]
    best = max(sustained) if sustained else 0
    results = [{"name": "largest frames/module sustaining 10 Hz (16 modules, full trains)",
                "value": best, "unit": "frames", "peer": "", "ratio": None, "goal": None}]
    for r in rows:
        results.append({"name": f"{r['frames']} frames: full matched trains at the bridge",
                        "value": r["rate"], "unit": "Hz", "peer": "", "ratio": None,
                        "goal": None})
        results.append({"name": f"{r['frames']} frames: latency detector -> bridge client p50",
                        "value": r["p50"] * 1e3, "unit": "ms", "peer": "", "ratio": None,
                        "goal": None})
        results.append({"name": f"{r['frames']} frames: latency detector -> bridge client p99",
                        "value": r["p99"] * 1e3, "unit": "ms", "peer": "design paper 2500 ms",
                        "ratio": None, "goal": GOAL_P99_S * 1e3})
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    for r in main(ap.parse_args().quick):
        print(r)
