"""Speed of the simulated experiment (pulsetrain.sim).

Measures, in one run:

* the fast path (bank of precomputed frames) per AGIPD module-train of 16 frames, for all
  16 modules, against karabo-bridge-py's simulator making one raw AGIPD module-train of
  16 frames (uniform random numbers, no physics) -- goal: <= 3 ms per module-train;
* the exact path per module-train, the one-off bank build per module, a whole
  ``SimulatedExperiment.next_train()`` (16 modules, motor, XGM, camera; goal <= 100 ms for
  10 Hz) and the LPD and JUNGFRAU fast paths.

``ratio`` is ours / peer for times (below 1 = faster than the peer).

Run: ``python benchmarks/sim.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import time


def _median_time(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peer_module_train(frames: int, n: int) -> float:
    from karabo_bridge.simulation import Detector

    det = Detector.getDetector("AGIPDModule", raw=True)
    det.pulses = frames
    return _median_time(lambda: det.gen_data(10000), n)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark; returns a list of result dicts (and prints a table)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer trains and modules")
    args = parser.parse_args(argv)

    from pulsetrain.sim import DetectorSimulator, SimulatedExperiment

    frames = 16
    n_trains = 10 if args.quick else 50
    modules = list(range(4)) if args.quick else list(range(16))
    results = []

    sim = DetectorSimulator("AGIPD", frames=frames, seed=0, modules=modules)
    t0 = time.perf_counter()
    sim.prepare()
    bank_build = (time.perf_counter() - t0) / len(modules)
    tid = iter(range(10**6))
    fast = _median_time(lambda: sim.train(next(tid)), n_trains) / len(modules)
    peer = _peer_module_train(frames, n_trains)
    results.append(
        {
            "name": f"AGIPD fast path, per module-train ({frames} frames)",
            "value": fast * 1e3,
            "unit": "ms",
            "peer": peer * 1e3,
            "ratio": fast / peer,
            "goal": "<= 3 ms",
        }
    )
    results.append(
        {
            "name": "AGIPD fast-path bank build, per module (once)",
            "value": bank_build,
            "unit": "s",
            "peer": None,
            "ratio": None,
            "goal": None,
        }
    )
    exact = _median_time(lambda: sim.module_train(0, next(tid)), 3 if args.quick else 5)
    results.append(
        {
            "name": f"AGIPD exact path, per module-train ({frames} frames)",
            "value": exact * 1e3,
            "unit": "ms",
            "peer": peer * 1e3,
            "ratio": exact / peer,
            "goal": None,
        }
    )
    results.append(
        {
            "name": "AGIPD fast-path memory (banks + recycled buffers)",
            "value": sim.bank_nbytes / 2**20,
            "unit": "MB",
            "peer": None,
            "ratio": None,
            "goal": None,
        }
    )
    sim = None  # free the banks before the next part

    exp = SimulatedExperiment("AGIPD", frames=frames, seed=0, modules=modules)
    exp.simulator.prepare()
    per_train = _median_time(exp.next_train, n_trains)
    results.append(
        {
            "name": f"SimulatedExperiment.next_train ({len(modules)} modules + slow + camera)",
            "value": per_train * 1e3,
            "unit": "ms",
            "peer": None,
            "ratio": None,
            "goal": "<= 100 ms (10 Hz)" if len(modules) == 16 else None,
        }
    )
    exp = None

    for detector, mods in (("LPD", [0, 1]), ("JUNGFRAU", [0])):
        other = DetectorSimulator(detector, frames=frames, seed=0, modules=mods)
        other.prepare()
        t = _median_time(lambda o=other: o.train(next(tid)), n_trains) / len(mods)
        results.append(
            {
                "name": f"{detector} fast path, per module-train ({frames} frames)",
                "value": t * 1e3,
                "unit": "ms",
                "peer": None,
                "ratio": None,
                "goal": None,
            }
        )
        other = None

    print(f"{'benchmark':<64} {'value':>10} {'unit':<4} {'peer':>10} {'ratio':>7}  goal")
    for r in results:
        peer_s = "" if r["peer"] is None else f"{r['peer']:10.3f}"
        ratio_s = "" if r["ratio"] is None else f"{r['ratio']:7.3f}"
        print(
            f"{r['name']:<64} {r['value']:10.3f} {r['unit']:<4} {peer_s:>10} {ratio_s:>7}  "
            f"{r['goal'] or ''}"
        )
    print("peer: karabo_bridge.simulation raw AGIPD module-train of the same frames")
    return results


if __name__ == "__main__":
    main()
