"""Benchmark: storage - RunWriter GB/s against plain h5py writing the same arrays.

Workload: a simulated raw run of 16 AGIPD modules (``frames`` x 2 x 512 x 128 uint16 per
module-train of dark-like values, plus cellId/pulseId/trainId/length/status per frame), a motor
(control source) and a camera, ``trains`` trains.  The arrays are made once and reused for every train, so only
writing is timed.

* ``RunWriter``: the full EuXFEL layout (17 sequence files, INDEX, METADATA, RUN, periodic
  flushes, ``.part`` rename on close).
* ``plain h5py``: the same arrays written with ``ds[a:b] = arr`` into datasets preallocated at
  their final size in 17 files, with the same chunk shapes and compression, and no INDEX or
  METADATA at all - the peer the writer must match (goal >= 0.9 x).

Both write into the same directory, interleaved round by round; each figure is the median of the
rounds, from opening the first file to closing the last.  GB/s counts array bytes (uncompressed).

Replay (issue #5): ``pulsetrain replay`` against EXtra-data's ``karabo-bridge-serve-files`` on
the same simulated run, the same REP pattern and the same stock ``karabo_bridge.Client``
(trains/s, goal >= 2 x); see :func:`replay_comparison`.  A third server gives the ceiling:
the run's first train sent from memory again and again (no file reading at all), to the same
client over the same socket - no replay server can deliver more than that.

Small-train replay (issue #18): EXtra-data's FXE mock run with only its XGM sources selected
(``--source '*XGM*'`` on both), where the cost per train dominates, against serve-files with the
same selection and a REQ/REP ceiling of the same train from memory (goal >= 5 x serve-files);
see :func:`small_train_comparison`.

Run ``python benchmarks/storage.py [--quick] [--compression lzf] [--dir DIR] [--replay-only]
[--small-only] [--no-cold]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from pulsetrain.files import RunWriter, default_aggregator, make_meta
from pulsetrain.files.naming import default_frame_group
from pulsetrain.files.sequence_file import ColumnSpec, Layout

MODULES = 16
FIRST_TRAIN = 1_500_000_000
MOTOR = "SPB_IRU_MOTORS/MOTOR/SAMPLE_X"
CAMERA = "SPB_IRU_CAM/CAM/SIDEMIC:daqOutput"


def make_template(frames: int, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """One train's arrays (reused for every train): detector-like values (an offset of ~5000
    ADU per pixel plus noise of 20 ADU; gain bits 0), so that compression behaves as on dark
    data rather than on white noise."""
    rng = np.random.default_rng(seed)
    offset = rng.normal(5000, 300, (1, 1, 512, 128))
    cells = np.arange(frames, dtype=np.uint16)
    data: dict[str, dict[str, np.ndarray]] = {}
    for m in range(MODULES):
        data[f"SPB_DET_AGIPD1M-1/DET/{m}CH0:xtdf"] = {
            "image.data": _detector_like(rng, offset, frames),
            "image.cellId": cells,
            "image.pulseId": cells.astype(np.uint64) * 4,
            "image.trainId": np.zeros(frames, dtype=np.uint64),
            "image.length": np.full(frames, 262144, dtype=np.uint32),
            "image.status": np.zeros(frames, dtype=np.uint16),
        }
    data[MOTOR] = {"actualPosition.value": np.float64(1.5), "velocity.value": np.float32(0.1)}
    data[CAMERA] = {
        "data.image.pixels": rng.poisson(30, (256, 320)).astype(np.uint16),
        "data.trainId": np.uint64(0),
    }
    return data


def _detector_like(rng: np.random.Generator, offset: np.ndarray, frames: int) -> np.ndarray:
    data = np.zeros((frames, 2, 512, 128), dtype=np.uint16)
    data[:, :1] = np.clip(offset + rng.normal(0, 20, (frames, 1, 512, 128)), 0, 16383)
    return data


def payload_bytes(template: dict, trains: int) -> int:
    total = 0
    for values in template.values():
        total += sum(np.asarray(v).nbytes for v in values.values())
    return total * trains


def run_writer(out: Path, template: dict, trains: int, layout: Layout) -> float:
    """Write the run with RunWriter; returns the wall time in seconds."""
    t0 = time.perf_counter()
    with RunWriter(
        out,
        chunk_trains=layout.chunk_trains,
        chunk_bytes=layout.chunk_bytes,
        compression=layout.compression,
        min_free_bytes=0,
    ) as writer:
        for i in range(trains):
            tid = FIRST_TRAIN + i
            ns = 1_700_000_000_000_000_000 + i * 100_000_000
            meta = {src: make_meta(src, tid, ns) for src in template}
            writer.write_train(template, meta)
    return time.perf_counter() - t0


def run_plain(out: Path, template: dict, trains: int, layout: Layout) -> float:
    """Plain h5py: same arrays, same chunks and filters, datasets preallocated, no index."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files: dict[str, h5py.File] = {}
    targets = []  # (dataset, array, rows per train)
    for source, values in template.items():
        agg = default_aggregator(source)
        f = files.get(agg)
        if f is None:
            f = files[agg] = h5py.File(out / f"PLAIN-{agg}.h5", "w")
        control = ":" not in source
        for key, value in values.items():
            arr = np.asarray(value)
            group = key.split(".", 1)[0]
            per_frame = not control and default_frame_group(source, group)
            if not per_frame:
                arr = arr.reshape((1,) + arr.shape)
            spec = ColumnSpec(arr.dtype, arr.shape[1:])
            rows = layout.chunk_rows(spec, per_frame)
            n = len(arr)
            ds = f.create_dataset(
                f"{source}/{key.replace('.', '/')}",
                shape=(n * trains,) + arr.shape[1:],
                maxshape=(None,) + arr.shape[1:],
                chunks=(rows,) + arr.shape[1:],
                dtype=arr.dtype,
                **({} if control else layout.filters()),
            )
            targets.append((ds, arr, n))
    for i in range(trains):
        for ds, arr, n in targets:
            ds[i * n : (i + 1) * n] = arr
    for f in files.values():
        f.close()
    return time.perf_counter() - t0


def _replay_rate(cmd: list[str], port: int, n: int) -> tuple[float, float]:
    """Trains/s a stock karabo_bridge REQ client receives from a replay command, and the CPU
    time the replay process spends per train (ms), both over trains 2..n."""
    import subprocess

    import psutil
    from karabo_bridge import Client

    def cpu_s(proc: psutil.Process) -> float:
        times = proc.cpu_times()
        return times.user + times.system

    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    try:
        server = psutil.Process(proc.pid)
        with Client(f"tcp://127.0.0.1:{port}", timeout=120) as c:
            c.next()  # start-up and first read excluded
            t0 = time.perf_counter()
            c0 = cpu_s(server)
            for _ in range(n - 1):
                c.next()
            rate = (n - 1) / (time.perf_counter() - t0)
            cpu_ms = (cpu_s(server) - c0) / (n - 1) * 1e3
            return rate, cpu_ms
    finally:
        proc.kill()
        proc.wait()


def serve_one_train_forever(run: str, port: int) -> None:
    """The ceiling: a pulsetrain bridge server (REP, protocol 2.2) that sends the run's first
    train from memory again and again - the same bytes and frames as a replay, but no file is
    read after the first train.  What a stock client receives from it is the most any replay
    server can deliver over this socket on this machine."""
    from pulsetrain.bridge import BridgeServer
    from pulsetrain.files import iter_run_trains

    _tid, data, meta = next(iter(iter_run_trains(run, zero_copy=False)))
    with BridgeServer(f"tcp://127.0.0.1:{port}", "REP", "2.2", maxlen=2) as server:
        while True:
            server.feed(data, meta, block=True)


def _evict(run: str) -> None:
    """Drop the run's files from the page cache (only these files: fsync, then
    ``POSIX_FADV_DONTNEED``), so that the next replay reads them from the disk."""
    for path in Path(run).glob("*.h5"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def replay_comparison(
    quick: bool, where: str | None, rounds: int | None = None, cold: bool = True
) -> list[dict]:
    """``pulsetrain replay`` against EXtra-data's ``karabo-bridge-serve-files``: the same run
    (16 AGIPD modules x 16 frames + slow data), the same REP socket pattern, the same stock
    ``karabo_bridge.Client`` (REQ) taking every train; goal >= 2x trains/s.

    Two cases: the run in the page cache (``warm``, as just written), and - with *cold* -
    the run's files dropped from the page cache before each server starts (``cold``: read from
    the disk, as when replaying an older run).  The two servers take turns (the order
    alternates round by round); each figure is the median over the rounds.  The machine's
    load average is printed next to the figures: both peers share the CPUs with the client,
    so other work on the machine lowers both.
    """
    import subprocess
    import sys

    from pulsetrain.runtime.ports import free_port

    trains = 20 if quick else 60
    rounds = rounds or (1 if quick else 3)
    cases = ("warm", "cold") if cold and hasattr(os, "posix_fadvise") else ("warm",)
    base = Path(tempfile.mkdtemp(prefix="pt-bench-replay-", dir=where))
    rates: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    loads = [os.getloadavg()[0]]
    try:
        subprocess.run(
            [sys.executable, "-m", "pulsetrain", "simulate", "--out", str(base),
             "--trains", str(trains), "--frames", "16"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        run = str(base / "r0001")
        for case in cases:
            for r in range(rounds):
                order = ("pulsetrain", "serve-files") + (("memory",) if case == "warm" else ())
                for name in order if r % 2 == 0 else order[::-1]:
                    port = free_port()
                    if name == "pulsetrain":
                        cmd = [sys.executable, "-m", "pulsetrain", "replay", run,
                               "--port", str(port), "--pattern", "REP"]  # fmt: skip
                    elif name == "memory":
                        cmd = [sys.executable, __file__, "--serve-one-train", run, str(port)]
                    else:
                        cmd = ["karabo-bridge-serve-files", run, str(port), "-z", "REP"]
                    if case == "cold":
                        _evict(run)
                    rate, cpu_ms = _replay_rate(cmd, port, trains)
                    rates.setdefault((case, name), []).append(rate)
                    cpu.setdefault((case, name), []).append(cpu_ms)
                    loads.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(
        f"replay of {trains} trains (16 AGIPD modules x 16 frames + slow data, "
        f"{64 * trains / 1000:.1f} GB), REP to a karabo_bridge REQ client, {rounds} round(s); "
        f"load average {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores"
    )
    print(f"{'server':<40}{'trains/s':>9}{'server CPU ms/train':>21}   rounds (trains/s)")
    results = []
    for case in cases:
        for name, label in (
            ("pulsetrain", "pulsetrain replay"),
            ("serve-files", "karabo-bridge-serve-files"),
            ("memory", "ceiling: one train from memory"),
        ):
            if (case, name) not in rates:
                continue
            rounds_txt = " ".join(f"{x:.1f}" for x in rates[case, name])
            print(
                f"{label + ' [' + case + ']':<40}{statistics.median(rates[case, name]):>9.2f}"
                f"{statistics.median(cpu[case, name]):>21.1f}   {rounds_txt}"
            )
        ours = statistics.median(rates[case, "pulsetrain"])
        peer = statistics.median(rates[case, "serve-files"])
        print(f"  pulsetrain / serve-files [{case}] = {ours / peer:.2f} x trains/s (goal >= 2)")
        suffix = "" if case == "warm" else ",cold"
        if (case, "memory") in rates:
            ceiling = statistics.median(rates[case, "memory"])
            print(
                f"  ceiling / serve-files = {ceiling / peer:.2f} x: the most any server can gain "
                f"with this client and socket; pulsetrain replay reaches {ours / ceiling:.2f} of it"
            )
            results.append(
                {
                    "name": "storage.replay ceiling: one train from memory",
                    "value": round(ceiling, 2),
                    "unit": "trains/s",
                    "peer": "karabo-bridge-serve-files (EXtra-data); "
                    f"pulsetrain replay reaches {ours / ceiling:.2f} of the ceiling",
                    "ratio": round(ceiling / peer, 3),
                    "goal": None,
                }
            )
        results.append(
            {
                "name": f"storage.replay_trains_per_s[REP{suffix}]",
                "value": round(ours, 2),
                "unit": "trains/s",
                "peer": "karabo-bridge-serve-files (EXtra-data)",
                "ratio": round(ours / peer, 3),
                "goal": 2.0,
            }
        )
    return results


def serve_small_train_forever(run: str, port: int, source: str) -> None:
    """The small-train ceiling: the first train of *source* (a glob) read once, then sent again
    and again from memory by a pulsetrain bridge server (REP): the same sizes as a replay of
    that selection, no file read."""
    from pulsetrain.bridge import BridgeServer
    from pulsetrain.files.reader import BridgeRun

    with BridgeRun(run, sources=[source]) as bridge_run:
        _tid, data, meta = next(iter(bridge_run.trains()))
    with BridgeServer(f"tcp://127.0.0.1:{port}", "REP", "2.2", maxlen=2) as server:
        while True:
            server.feed(data, meta, block=True)


def small_train_comparison(quick: bool, where: str | None, rounds: int | None = None) -> list[dict]:
    """Replay of small trains, where the cost per train dominates: EXtra-data's FXE mock run
    (``make_fxe_run``) with only its XGM sources selected (``--source '*XGM*'`` on both: 2
    control sources of ~70 scalar keys, 2 instrument sources of 6 arrays of 1000 float32;
    about 50 kB a train), ``pulsetrain replay`` against ``karabo-bridge-serve-files``, and a
    REQ/REP ceiling sending the first such train from memory; all to a stock
    ``karabo_bridge.Client`` (REQ).  Goal: >= 5 x serve-files."""
    import sys

    from extra_data.tests.make_examples import make_fxe_run

    from pulsetrain.runtime.ports import free_port

    trains = 150 if quick else 400
    rounds = rounds or (1 if quick else 3)
    glob = "*XGM*"
    base = Path(tempfile.mkdtemp(prefix="pt-bench-small-", dir=where))
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    loads = [os.getloadavg()[0]]
    try:
        run = str(base / "fxe")
        os.mkdir(run)
        make_fxe_run(run)
        for r in range(rounds):
            order = ("pulsetrain", "serve-files", "memory")
            for name in order if r % 2 == 0 else order[::-1]:
                port = free_port()
                if name == "pulsetrain":
                    cmd = [sys.executable, "-m", "pulsetrain", "replay", run, str(port),
                           "--source", glob]  # fmt: skip
                elif name == "memory":
                    cmd = [sys.executable, __file__, "--serve-small-train", run, str(port), glob]
                else:
                    cmd = ["karabo-bridge-serve-files", run, str(port), "--source", glob]
                rate, cpu_ms = _replay_rate(cmd, port, trains)
                rates.setdefault(name, []).append(rate)
                cpu.setdefault(name, []).append(cpu_ms)
                loads.append(os.getloadavg()[0])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(
        f"small-train replay: EXtra-data's FXE mock run, --source '{glob}', {trains} trains, "
        f"REP to a karabo_bridge REQ client, {rounds} round(s); load average "
        f"{min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} cores"
    )
    print(f"{'server':<40}{'trains/s':>9}{'server CPU ms/train':>21}   rounds (trains/s)")
    for name, label in (
        ("pulsetrain", "pulsetrain replay"),
        ("serve-files", "karabo-bridge-serve-files"),
        ("memory", "ceiling: one train from memory"),
    ):
        rounds_txt = " ".join(f"{x:.0f}" for x in rates[name])
        print(
            f"{label:<40}{statistics.median(rates[name]):>9.0f}"
            f"{statistics.median(cpu[name]):>21.3f}   {rounds_txt}"
        )
    ours = statistics.median(rates["pulsetrain"])
    peer = statistics.median(rates["serve-files"])
    ceiling = statistics.median(rates["memory"])
    print(
        f"  pulsetrain / serve-files = {ours / peer:.2f} x trains/s (goal >= 5); "
        f"ceiling / serve-files = {ceiling / peer:.2f} x; pulsetrain reaches "
        f"{ours / ceiling:.2f} of the ceiling"
    )
    return [
        {
            "name": "storage.replay_small_trains_per_s[REP,XGM]",
            "value": round(ours, 1),
            "unit": "trains/s",
            "peer": "karabo-bridge-serve-files --source '*XGM*' (EXtra-data); "
            f"ceiling from memory {ceiling:.0f} trains/s",
            "ratio": round(ours / peer, 3),
            "goal": 5.0,
        }
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark, print a table, return the result dicts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run, one round (for CI)")
    parser.add_argument("--trains", type=int, help="trains per round (default 24, quick 8)")
    parser.add_argument("--frames", type=int, help="frames per module-train (default 16, quick 4)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, quick 1)")
    parser.add_argument("--compression", choices=["none", "gzip", "lzf"], default="none")
    parser.add_argument("--dir", help="directory to write into (default: a temporary one)")
    parser.add_argument(
        "--replay-only",
        action="store_true",
        help="only the replay comparison (rounds: --rounds, default 3)",
    )
    parser.add_argument(
        "--small-only",
        action="store_true",
        help="only the small-train replay comparison (rounds: --rounds, default 3)",
    )
    parser.add_argument(
        "--no-cold",
        action="store_true",
        help="replay comparison only with the run in the page cache (not read from disk)",
    )
    args = parser.parse_args(argv)
    if args.small_only:
        return small_train_comparison(args.quick, args.dir, args.rounds)
    if args.replay_only:
        return replay_comparison(args.quick, args.dir, args.rounds, cold=not args.no_cold)
    trains = args.trains or (8 if args.quick else 24)
    frames = args.frames or (4 if args.quick else 16)
    rounds = args.rounds or (1 if args.quick else 5)
    compression = None if args.compression == "none" else args.compression
    layout = Layout(compression=compression)
    template = make_template(frames)
    nbytes = payload_bytes(template, trains)

    base = Path(tempfile.mkdtemp(prefix="pt-bench-storage-", dir=args.dir))
    times: dict[str, list[float]] = {"writer": [], "plain": []}
    cpu: dict[str, list[float]] = {"writer": [], "plain": []}
    try:
        for r in range(rounds):
            order = ("plain", "writer") if r % 2 == 0 else ("writer", "plain")
            for name in order:
                out = base / f"{name}-{r}"
                run = run_writer if name == "writer" else run_plain
                c0 = time.process_time()
                times[name].append(run(out, template, trains, layout))
                cpu[name].append(time.process_time() - c0)
                shutil.rmtree(out)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    writer_s = statistics.median(times["writer"])
    plain_s = statistics.median(times["plain"])
    writer_gbs = nbytes / writer_s / 1e9
    plain_gbs = nbytes / plain_s / 1e9
    print(
        f"storage benchmark: {trains} trains x 16 AGIPD modules x {frames} frames + motor + "
        f"camera = {nbytes / 1e9:.2f} GB per round, {rounds} round(s), "
        f"compression={args.compression}"
    )
    print(
        f"python {platform.python_version()}, h5py {h5py.__version__}, HDF5 "
        f"{h5py.version.hdf5_version}, {os.cpu_count()} cores, dir {base.parent}"
    )
    print()
    print(f"{'variant':<14}{'median s':>10}{'GB/s':>8}{'CPU s':>8}   rounds (wall s)")
    for name, label in (("writer", "RunWriter"), ("plain", "plain h5py")):
        s = statistics.median(times[name])
        rounds_txt = " ".join(f"{t:.2f}" for t in times[name])
        cpu_s = statistics.median(cpu[name])
        print(f"{label:<14}{s:>10.3f}{nbytes / s / 1e9:>8.2f}{cpu_s:>8.2f}   {rounds_txt}")
    ratio = writer_gbs / plain_gbs
    cpu_ratio = statistics.median(cpu["plain"]) / statistics.median(cpu["writer"])
    print()
    print(
        f"RunWriter / plain h5py = {ratio:.2f} x wall-clock GB/s (goal >= 0.9 x); "
        f"{cpu_ratio:.2f} x by CPU time"
    )
    replay = replay_comparison(args.quick, args.dir, cold=not args.no_cold)
    replay += small_train_comparison(args.quick, args.dir)
    return replay + [
        {
            "name": f"storage.writer_GBps[{args.compression}]",
            "value": round(writer_gbs, 3),
            "unit": "GB/s",
            "peer": "plain h5py (same arrays, chunks, compression)",
            "ratio": round(ratio, 3),
            "goal": 0.9,
        },
        {
            "name": f"storage.plain_h5py_GBps[{args.compression}]",
            "value": round(plain_gbs, 3),
            "unit": "GB/s",
            "peer": None,
            "ratio": None,
            "goal": None,
        },
    ]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-one-train"]:
        serve_one_train_forever(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1:2] == ["--serve-small-train"]:
        serve_small_train_forever(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main(sys.argv[1:])
