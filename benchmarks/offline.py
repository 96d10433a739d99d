"""Benchmark: batch correction of a multi-file raw run (``pulsetrain correct``) on Dask.

One simulated raw run, 4 AGIPD modules x several sequence files (16 module files by default),
corrected with the simulator's true constants from a catalogue, measured side by side in one
run:

* ``pulsetrain`` on a local Dask cluster with **1** worker process and with **2** worker
  processes (one thread each, one numba thread per worker): ``correct_run(..., force=True)``,
  i.e. the whole job - planning, constant look-up and loading (once per worker and module;
  the workers' caches are emptied before every timed run), reading, correcting, writing CORR
  sequence files with their sidecars - with the cluster already started (its start-up is
  timed separately, and an end-to-end figure including it is given too);
* the **peer**: the straightforward loop a user would write with EXtra-data and numpy - open
  the run with ``extra_data.RunDirectory``, for each module load its constants from the
  catalogue, iterate over the trains of ``image.data`` / ``image.cellId``, correct with the
  plain-numpy reference ``correct_agipd_numpy`` and write data, gain and mask with h5py.

The peer's output is compared with pulsetrain's (gain and mask identical, data within 1e-6)
before any figure is printed.  Rates are run trains (all 4 modules) per second.  The order of
the variants rotates between repetitions; the best repetition of each counts; dirty pages are
flushed (``os.sync()``) before each variant, so none pays for another's writes, and then what
the variant held from its previous repetition (its output, the workers' constants) is freed,
so each starts in the same state.  The order matters on this VM: its balloon device takes
back memory the guest has left free for a few seconds, and the guest pays for every page it
then touches again - measured here at 0.2-0.7 GB/s, against several GB/s for an ordinary
page fault.  A run writes about 1.8 GB into fresh page-cache pages, so this cost (1-5 s) would
otherwise dominate runs of 1.5-4 s and decide the ratios by when the host last took memory
back.  Just before each timed variant the benchmark therefore touches and frees 1.5 x the
output's size of memory ("prewarm", its time printed), so every variant, the peer too, writes
into memory the host has backed; ``--no-prewarm`` measures without it, and ``--stale-memory``
frees each variant's previous output before the flush, so it writes into memory the host
has most likely taken back: both then pay more, and by chance.
The machine is shared: the load average is printed before and after, and each variant's CPU
time (its processes' user + system seconds) next to its wall time.

Run ``python benchmarks/offline.py [--quick] [--repeat N] [--keep DIR] [--no-prewarm]
[--stale-memory]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODULES = (0, 1, 2, 3)
DETECTOR = "SPB_DET_AGIPD1M-1"


def simulate(root: Path, trains: int, frames: int, cells: int, sequence_trains: int) -> Path:
    """Record the raw run with ``pulsetrain simulate`` (in this process)."""
    from pulsetrain.cli import main

    argv = [
        "simulate",
        "--out",
        str(root),
        "--trains",
        str(trains),
        "--frames",
        str(frames),
        "--modules",
        *map(str, MODULES),
        "--memory-cells",
        str(cells),
        "--sequence-trains",
        str(sequence_trains),
        "--sample-position",
        "2.5",
    ]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if main(argv) != 0:
            raise RuntimeError("simulate failed")
    return max(root.glob("r*"))


def fill_catalog(url: str, frames: int, cells: int) -> None:
    from pulsetrain.bootstrap import store_truth_constants
    from pulsetrain.catalog import Catalog
    from pulsetrain.sim import DetectorSimulator

    cat = Catalog(url)
    try:
        sim = DetectorSimulator("AGIPD", frames=frames, memory_cells=cells, modules=MODULES)
        store_truth_constants(cat, sim, modules=list(MODULES))
    finally:
        cat.close()


def peer_correct(raw_run: Path, out_dir: Path, catalog_url: str, cells: int) -> None:
    """What a user writes with EXtra-data + numpy + h5py (single process)."""
    import extra_data
    import h5py

    from pulsetrain.bootstrap import sim_conditions
    from pulsetrain.calibration import correct_agipd_numpy
    from pulsetrain.catalog import Catalog
    from pulsetrain.catalog.agipd import load_agipd_constants

    out_dir.mkdir(parents=True, exist_ok=True)
    run = extra_data.RunDirectory(str(raw_run))
    cat = Catalog(catalog_url)
    for m in MODULES:
        src = f"{DETECTOR}/DET/{m}CH0:xtdf"
        constants, _ = load_agipd_constants(cat, DETECTOR, m, sim_conditions(cells))
        n = run[src, "image.data"].shape[0]
        with h5py.File(out_dir / f"CORR-AGIPD{m:02d}.h5", "w") as f:
            data = f.create_dataset("image/data", (n, 512, 128), np.float32)
            gain = f.create_dataset("image/gain", (n, 512, 128), np.uint8)
            mask = f.create_dataset("image/mask", (n, 512, 128), np.uint32)
            tids = f.create_dataset("image/trainId", (n,), np.uint64)
            i = 0
            for tid, train in run.select([(src, "image.data"), (src, "image.cellId")]).trains():
                raw = train[src]["image.data"]
                cells_ = train[src]["image.cellId"]
                res = correct_agipd_numpy(raw, cells_, constants)
                k = raw.shape[0]
                data[i : i + k] = res.data
                gain[i : i + k] = res.gain
                mask[i : i + k] = res.mask
                tids[i : i + k] = tid
                i += k
    cat.close()


def check_same(peer_dir: Path, corr_dir: Path) -> None:
    """The peer's results equal pulsetrain's (the benchmark compares like with like)."""
    import h5py

    for m in MODULES:
        src = f"INSTRUMENT/{DETECTOR}/CORR/{m}CH0:output/image"
        ours: dict[str, list] = {k: [] for k in ("data", "gain", "mask")}
        for path in sorted(corr_dir.glob(f"CORR-*-AGIPD{m:02d}-S*.h5")):
            with h5py.File(path) as f:
                for k, parts in ours.items():
                    parts.append(f[f"{src}/{k}"][:])
        with h5py.File(peer_dir / f"CORR-AGIPD{m:02d}.h5") as f:
            np.testing.assert_array_equal(f["image/gain"][:], np.concatenate(ours["gain"]))
            np.testing.assert_array_equal(f["image/mask"][:], np.concatenate(ours["mask"]))
            np.testing.assert_allclose(
                f["image/data"][:], np.concatenate(ours["data"]), rtol=0, atol=1e-6
            )


def warm(client=None) -> None:
    """Import what the job uses and load the compiled kernels, in every worker or (without a
    client) in this process, for the peer (not timed)."""

    def _warm() -> int:
        import extra_data  # noqa: F401
        import numpy as np

        from pulsetrain.calibration import AGIPDConstants, correct_agipd
        from pulsetrain.catalog import Catalog  # noqa: F401
        from pulsetrain.files import RunWriter  # noqa: F401
        from pulsetrain.offline import correct  # noqa: F401

        shape = (3, 1, 512, 128)
        c = AGIPDConstants(
            np.zeros(shape, np.float32),
            np.ones(shape, np.float32),
            np.ones((2, 1, 512, 128), np.float32),
            np.zeros(shape, np.uint32),
        )
        correct_agipd(np.zeros((1, 2, 512, 128), np.uint16), np.zeros(1, np.uint16), c)
        return os.getpid()

    if client is None:
        _warm()
    else:
        client.run(_warm)


def forget_constants(client) -> None:
    """Empty the workers' constants caches: every timed run loads its constants, as the peer."""

    def _forget() -> None:
        from pulsetrain.offline import correct

        correct._CACHE.clear()

    client.run(_forget)


def free_previous(name: str, out: Path, clusters: dict) -> None:
    """Free what a variant held from its previous repetition: its output, the workers'
    constants (so that every timed run loads its constants, as the peer does)."""
    shutil.rmtree(out, ignore_errors=True)
    if name != "peer":
        forget_constants(clusters[int(name[1])])


def prewarm(nbytes: int) -> float:
    """Touch ``nbytes`` of new memory, one write per page, and free it again; returns the
    seconds taken.  Afterwards the guest's free memory is backed by the host, so the next run
    does not pay for that (see the module docstring)."""
    t = time.perf_counter()
    buf = np.empty(nbytes // 8, np.uint64)
    buf[::512] = 1  # one 8-byte write per 4 KiB page
    del buf
    return time.perf_counter() - t


def cpu_seconds(client=None) -> tuple[float, float]:
    """User and system CPU seconds used so far by this process (which runs the local cluster's
    scheduler) and, with a client, by its worker processes: figures that other users' load
    inflates far less than wall time.  System time is mostly the kernel putting written data
    into fresh page-cache pages, which on this VM costs several times more when the guest
    handed those pages back to the host shortly before: it is what varies from repetition to
    repetition, while user time (reading, correcting, HDF5) stays the same."""
    import resource

    def _own() -> tuple[float, float]:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime, r.ru_stime

    user, system = _own()
    if client is not None:
        for u, s in client.run(_own).values():
            user += u
            system += s
    return user, system


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark, print the table, return the result dicts."""
    from pulsetrain.offline import ClusterConfig, correct_run, open_client

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run, two repetitions")
    ap.add_argument("--trains", type=int, default=None)
    ap.add_argument("--frames", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=None, help="repetitions (best counts)")
    ap.add_argument("--files", type=int, default=4, help="sequence files per module")
    ap.add_argument("--keep", default=None, help="work in this directory and keep it")
    ap.add_argument(
        "--no-prewarm",
        action="store_true",
        help="do not touch and free memory before each timed variant (see the docstring)",
    )
    ap.add_argument(
        "--stale-memory",
        action="store_true",
        help="free each variant's previous output and constants before the flush instead of "
        "just before it runs (this VM then makes that memory slow to use again)",
    )
    args = ap.parse_args(argv)
    trains = args.trains or (8 if args.quick else 24)
    frames = args.frames or (16 if args.quick else 32)
    repeat = args.repeat or (2 if args.quick else 5)
    cells = frames
    sequence_trains = max(1, -(-trains // args.files))

    load_before = os.getloadavg()
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pt-bench-offline-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        raw = simulate(root / "raw", trains, frames, cells, sequence_trains)
        url = f"sqlite:///{root / 'catalog.sqlite'}"
        fill_catalog(url, frames, cells)
        n_files = len(list(raw.glob("RAW-*-AGIPD*.h5")))
        raw_bytes = sum(p.stat().st_size for p in raw.glob("RAW-*-AGIPD*.h5"))
        # corrected output: 9 B per pixel (data, gain, mask) for the raw's 4 (analog, digital)
        prewarm_bytes = 0 if args.no_prewarm else int(1.5 * raw_bytes * 9 / 4)
        prewarm_rates: list[float] = []
        print(
            f"raw run: {len(MODULES)} modules x {trains} trains x {frames} frames, "
            f"{n_files} module files, {raw_bytes / 1e9:.2f} GB (made in "
            f"{time.perf_counter() - t0:.1f} s); load average before "
            f"{load_before[0]:.1f} / {load_before[1]:.1f}"
        )

        kwargs = {
            "catalog": url,
            "conditions": {"memory_cells": cells},
            "copy_other": False,
            "force": True,
            "record": False,
            "progress": False,
        }
        times: dict[str, list[float]] = {"w1": [], "w2": [], "peer": []}
        cpu: dict[str, list[float]] = {"w1": [], "w2": [], "peer": []}
        starts: dict[str, float] = {}
        clusters = {}
        stack = contextlib.ExitStack()
        warm()  # the peer's imports and kernels, in this process
        with stack:
            for w in (1, 2):
                t = time.perf_counter()
                clusters[w] = stack.enter_context(open_client(ClusterConfig(workers=w)))
                starts[f"w{w}"] = time.perf_counter() - t
                warm(clusters[w])
            order = ["peer", "w1", "w2"]
            for rep in range(repeat):
                for name in order[rep % 3 :] + order[: rep % 3]:
                    out = root / f"out-{name}"
                    if args.stale_memory:
                        free_previous(name, out, clusters)
                    os.sync()  # start each variant with no dirty pages of the previous one
                    if not args.stale_memory:
                        free_previous(name, out, clusters)
                    if prewarm_bytes:
                        prewarm_rates.append(prewarm_bytes / prewarm(prewarm_bytes))
                    client = None if name == "peer" else clusters[int(name[1])]
                    u0, s0 = cpu_seconds(client)
                    t = time.perf_counter()
                    if client is None:
                        peer_correct(raw, out, url, cells)
                    else:
                        correct_run(raw, out, client=client, **kwargs)
                    times[name].append(time.perf_counter() - t)
                    u1, s1 = cpu_seconds(client)
                    cpu[name].append(u1 - u0 + s1 - s0)
                    warmed = (
                        f"; after a {prewarm_bytes / 1e9:.1f} GB prewarm at "
                        f"{prewarm_rates[-1] / 1e9:.2f} GB/s"
                        if prewarm_bytes
                        else ""
                    )
                    print(
                        f"  rep {rep + 1} {name:>4}: {times[name][-1]:.2f} s "
                        f"(CPU {cpu[name][-1]:.2f} s = user {u1 - u0:.2f} + system {s1 - s0:.2f}; "
                        f"load {os.getloadavg()[0]:.1f}{warmed})",
                        flush=True,
                    )
        check_same(root / "out-peer", root / "out-w2")
        load_after = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    best = {k: min(v) for k, v in times.items()}
    rate = {k: trains / v for k, v in best.items()}
    e2e_w2 = best["w2"] + starts["w2"]
    n_frames = len(MODULES) * trains * frames
    cpu_ms = {k: min(v) / n_frames * 1e3 for k, v in cpu.items()}
    rows = [
        {
            "name": "correct, 1 worker",
            "value": rate["w1"],
            "unit": "trains/s",
            "peer": None,
            "ratio": None,
            "goal": None,
        },
        {
            "name": "correct, 2 workers vs 1 worker",
            "value": rate["w2"],
            "unit": "trains/s",
            "peer": "pulsetrain 1 worker",
            "ratio": best["w1"] / best["w2"],
            "goal": 1.6,
        },
        {
            "name": "peer: EXtra-data + numpy loop",
            "value": rate["peer"],
            "unit": "trains/s",
            "peer": None,
            "ratio": None,
            "goal": None,
        },
        {
            "name": "correct, 2 workers vs EXtra-data + numpy loop",
            "value": rate["w2"],
            "unit": "trains/s",
            "peer": "EXtra-data + numpy loop",
            "ratio": best["peer"] / best["w2"],
            "goal": 3.0,
        },
        {
            "name": "  same, incl. local cluster start-up",
            "value": trains / e2e_w2,
            "unit": "trains/s",
            "peer": "EXtra-data + numpy loop",
            "ratio": best["peer"] / e2e_w2,
            "goal": None,
        },
        {
            "name": "CPU per frame, 2 workers (workers + client)",
            "value": cpu_ms["w2"],
            "unit": "ms",
            "peer": f"EXtra-data + numpy loop: {cpu_ms['peer']:.2f} ms",
            "ratio": cpu_ms["peer"] / cpu_ms["w2"],
            "goal": None,
        },
        {
            "name": "local cluster start-up, 2 workers",
            "value": starts["w2"],
            "unit": "s",
            "peer": None,
            "ratio": None,
            "goal": 5.0,
            "lower_is_better": True,
        },
    ]
    print()
    print(f"{'measurement':48s} {'value':>9s} {'unit':9s} {'ratio':>6s} {'goal':>5s}")
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else ""
        goal = f"{r['goal']:g}" if r["goal"] is not None else ""
        print(f"{r['name']:48s} {r['value']:9.2f} {r['unit']:9s} {ratio:>6s} {goal:>5s}")
    warmed = (
        f"prewarm {prewarm_bytes / 1e9:.1f} GB before each variant, first touch at "
        f"{min(prewarm_rates) / 1e9:.2f}-{max(prewarm_rates) / 1e9:.2f} GB/s; "
        if prewarm_rates
        else "no prewarm; "
    )
    print(
        f"frames per run: {n_frames}; best of {repeat}; "
        f"{'--stale-memory; ' if args.stale_memory else ''}{warmed}"
        f"load average after {load_after[0]:.1f} / {load_after[1]:.1f} "
        f"(shared 2-core machine: other users' load slows both sides)"
    )
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
