"""Soak test: the demo pipeline at 10 Hz for N minutes; memory, file descriptors and latency.

Runs the whole demo topology (16 correction pipelines, matcher, analysis, feedback, DAQ, bridge;
no GUI) without a train limit and samples every 10 s: resident memory and open file descriptors
summed over all server processes, and the latency of matched, corrected trains (detector
timestamp → matcher output) per minute.  "Flat" means the last minute's memory and FD counts are
within 10 % of the second minute's (the first minute includes start-up).

    python benchmarks/soak.py [--minutes 10] [--frames 4]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil


def shm_mb(pids: set[int]) -> float:
    """Megabytes of pulsetrain shared-memory segments that these processes own."""
    from pulsetrain.runtime import shmem

    total = 0
    for name in os.listdir(shmem.SHM_DIR):
        parts = name.split("-")
        ours = name.startswith(shmem.PREFIX) and len(parts) > 1 and parts[1].isdigit()
        if ours and int(parts[1]) in pids:
            with contextlib.suppress(OSError):
                total += os.stat(shmem.SHM_DIR / name).st_size
    return total / 2**20


def main(quick: bool = False, minutes: float | None = None, frames: int = 4) -> list[dict]:
    from pulsetrain.demo import (
        DAQ,
        MATCHER,
        SIM,
        DemoOptions,
        _await_ready,
        _Tap,
        demo_topology,
        prepare_catalog,
        warm_kernels,
    )
    from pulsetrain.runtime.ports import free_port
    from pulsetrain.runtime.supervisor import Supervisor
    from pulsetrain.runtime.topology import Topology

    minutes = minutes or (2.0 if quick else 10.0)
    with tempfile.TemporaryDirectory() as tmp:
        opts = DemoOptions(trains=None, frames=frames, data_dir=Path(tmp), gui=False,
                           bridge_port=free_port())
        url = f"sqlite:///{Path(tmp) / 'catalog.sqlite'}"
        prepare_catalog(opts, url, print)
        warm_kernels(frames)
        path = Path(tmp) / "soak.toml"
        path.write_text(demo_topology(opts, url).replace("autostart = true, sample",
                                                          "autostart = false, sample"))
        with Supervisor(Topology.load(path), workdir=Path(tmp) / "run") as sup:
            tap = _Tap(sup.endpoints()[f"{MATCHER}:output"])
            tap.start()
            _await_ready(sup, opts, print)
            sup.call(SIM, "start_acquisition")
            samples = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < minutes * 60:
                time.sleep(10)  # a sampling period, not a wait for a condition
                procs = [psutil.Process(sp.proc.pid) for sp in sup.servers.values()]
                rss = sum(p.memory_info().rss for p in procs) / 2**20
                fds = sum(p.num_fds() for p in procs)
                shm = shm_mb({p.pid for p in procs})
                n = len(tap.latencies)
                samples.append((time.monotonic() - t0, rss, fds, n, shm))
                print(f"t={samples[-1][0]:5.0f} s  rss {rss:7.0f} MB  shm {shm:6.0f} MB  "
                      f"fds {fds:5d}  trains {n}  restarts {len(sup.restarts)}", flush=True)
            lat = list(tap.latencies)
            matched = sup.get(MATCHER, "matchedTrains")
            sent = sup.get(SIM, "sentTrains")
            tap.stop.set()
            del DAQ
    # per-minute latency p99 from the tap (one latency per received train, in order)
    per_min = []
    bounds = [0] + [s[3] for s in samples]
    for i in range(0, len(samples), 6):
        chunk = lat[bounds[i]:bounds[min(i + 6, len(samples))]]
        if chunk:
            per_min.append(float(np.percentile(chunk, 99)))
    second = [s for s in samples if 60 <= s[0] < 120] or samples[:1]
    last = [s for s in samples if s[0] >= samples[-1][0] - 60]
    rss_growth = np.mean([s[1] for s in last]) / np.mean([s[1] for s in second])
    fd_growth = np.mean([s[2] for s in last]) / np.mean([s[2] for s in second])
    shm_growth = np.mean([s[4] for s in last]) / max(np.mean([s[4] for s in second]), 1e-9)
    p99_ratio = per_min[-1] / per_min[1] if len(per_min) > 1 else float("nan")
    print(f"{minutes:.0f} min: {sent} trains simulated, {matched} matched; rss last/second "
          f"minute {rss_growth:.3f}, fds {fd_growth:.3f}, shared memory {shm_growth:.3f}; "
          f"latency p99 per minute (ms): "
          f"{[round(x * 1e3) for x in per_min]}")
    return [
        {"name": f"soak {minutes:.0f} min: memory, last / second minute", "value": rss_growth,
         "unit": "x", "peer": "", "ratio": None, "goal": 1.1},
        {"name": f"soak {minutes:.0f} min: file descriptors, last / second minute",
         "value": fd_growth, "unit": "x", "peer": "", "ratio": None, "goal": 1.1},
        {"name": f"soak {minutes:.0f} min: shared memory (/dev/shm), last / second minute",
         "value": shm_growth, "unit": "x", "peer": "", "ratio": None, "goal": 1.1},
        {"name": f"soak {minutes:.0f} min: latency p99, last / second minute",
         "value": p99_ratio, "unit": "x", "peer": "", "ratio": None, "goal": None},
        {"name": f"soak {minutes:.0f} min: latency p99, first minute", "value": per_min[0] * 1e3,
         "unit": "ms", "peer": "", "ratio": None, "goal": None},
        {"name": f"soak {minutes:.0f} min: latency p99, last minute", "value": per_min[-1] * 1e3,
         "unit": "ms", "peer": "", "ratio": None, "goal": None},
        {"name": f"soak {minutes:.0f} min: trains matched / simulated", "value": matched / sent,
         "unit": "", "peer": "", "ratio": None, "goal": None},
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--frames", type=int, default=4)
    args = ap.parse_args()
    for row in main(minutes=args.minutes, frames=args.frames):
        print(row)
