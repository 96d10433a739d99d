"""Benchmark: ``pulsetrain demo`` shows its point every time, idle and beside busy processes.

For each condition — *idle* (nothing started beside it) and *busy* (two CPU-bound processes,
``python -c "while True: pass"``, running beside it) — the script runs:

1. ``--runs`` complete demos (``pulsetrain demo --no-gui``, default options otherwise).  Each
   must exit 0 with its summary, and the summary's hit rate *after* the feedback must be above
   the one *before*.  Measured from outside: the start-up time, from starting the process to the
   moment it prints ``first corrected train after`` (goal < 20 s idle), and the whole run's
   duration; read from the summary: the hit rates, trains simulated and corrected, latency.
2. ``--stop-runs`` demos stopped with SIGTERM 3 s after their first corrected train: the stop
   time, from the signal to the exit of the demo and of every process it started (goal < 5 s),
   the exit code (143) and whether the open DAQ run was closed by its writer.

The catalogue of the simulator's constants is filled once before the timed runs (a first run
in a new data directory stores them itself, a few seconds more); each run's raw data are deleted
after it (about 24 MiB per train).

    python benchmarks/demo.py [--runs N] [--stop-runs N] [--only idle|busy] [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BUSY = [sys.executable, "-c", "while True: pass"]
FIRST = "first corrected train after"


class DemoProcess:
    """One ``pulsetrain demo`` subprocess; its output lines with their arrival times."""

    def __init__(self, data_dir: Path):
        from pulsetrain.runtime.topology import free_port

        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pulsetrain",
                "demo",
                "--no-gui",
                "--data-dir",
                str(data_dir),
                "--bridge-port",
                str(free_port()),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.t0, line.rstrip("\n")))

    @property
    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def seen(self, fragment: str) -> float | None:
        """Seconds after the start at which a line containing ``fragment`` arrived."""
        return next((t for t, line in self.lines if fragment in line), None)

    def wait_line(self, fragment: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            t = self.seen(fragment)
            if t is not None:
                return t
            time.sleep(0.05)
        return self.seen(fragment)

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            for p in self.children():
                p.kill()
            return -9
        finally:
            self._reader.join(timeout=5)


def _alive(procs: list[psutil.Process]) -> bool:
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            pass
    return False


def _number(pattern: str, text: str) -> float | None:
    m = re.search(pattern, text)
    return float(m[1]) if m else None


def full_run(data_dir: Path, timeout: float) -> dict:
    demo = DemoProcess(data_dir)
    code = demo.finish(timeout)
    text = demo.text
    m = re.search(r"hit rate: (\d\.\d\d) before feedback, (\d\.\d\d) after", text)
    result = {
        "code": code,
        "summary": "\nsummary" in text,
        "startup_s": demo.seen(FIRST),
        "duration_s": time.monotonic() - demo.t0,
        "before": float(m[1]) if m else None,
        "after": float(m[2]) if m else None,
        "simulated": _number(r"trains: (\d+) simulated", text),
        "matched": _number(r"(\d+) corrected and matched", text),
        "latency_p50_ms": _number(r"p50 (\d+) ms", text),
        "rate": _number(r"rate: ([\d.]+) trains/s", text),
        "converge_s": _number(r"feedback found the sample in (\d+) s", text),
    }
    if code != 0 or not result["summary"]:
        result["tail"] = text[-1500:]
    shutil.rmtree(data_dir / "raw", ignore_errors=True)
    return result


def stop_run(data_dir: Path, timeout: float) -> dict:
    demo = DemoProcess(data_dir)
    first = demo.wait_line(FIRST, timeout)
    if first is None:
        code = demo.finish(1)
        return {"code": code, "stop_s": None, "tail": demo.text[-1500:]}
    time.sleep(3.0)
    children = demo.children()
    t = time.monotonic()
    demo.proc.send_signal(signal.SIGTERM)
    code = demo.finish(30)
    exited = time.monotonic() - t
    while _alive(children) and time.monotonic() - t < 30:
        time.sleep(0.02)
    gone = time.monotonic() - t
    text = demo.text
    shutil.rmtree(data_dir / "raw", ignore_errors=True)
    return {
        "code": code,
        "exit_s": exited,
        "stop_s": gone,
        "run_closed": "closed by the DAQ writer" in text,
        "summary": "summary (interrupted by SIGTERM" in text,
        "inside_s": _number(r"stopped in ([\d.]+) s", text),
    }


def _stats(values: list[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None]
    return (statistics.median(v), max(v)) if v else (None, None)


def run_condition(
    name: str, runs: int, stop_runs: int, data_dir: Path, timeout: float, log
) -> list[dict]:
    busy = [subprocess.Popen(BUSY) for _ in range(2)] if name == "busy" else []
    rows: list[dict] = []
    try:
        time.sleep(1.0 if busy else 0.0)
        load = os.getloadavg()[0]
        full = []
        for i in range(runs):
            r = full_run(data_dir, timeout)
            full.append(r)
            log(
                f"  [{name}] run {i + 1}/{runs}: exit {r['code']}, first corrected train "
                f"{_fmt(r['startup_s'])} s, hit rate {r['before']} -> {r['after']}, "
                f"{r['matched']}/{r['simulated']} trains, {r['duration_s']:.0f} s"
                + (f"\n{r['tail']}" if "tail" in r else "")
            )
        stops = []
        for i in range(stop_runs):
            r = stop_run(data_dir, timeout)
            stops.append(r)
            log(
                f"  [{name}] SIGTERM run {i + 1}/{stop_runs}: exit {r['code']}, all processes "
                f"gone after {_fmt(r['stop_s'])} s, run closed: {r.get('run_closed')}"
                + (f"\n{r['tail']}" if "tail" in r else "")
            )
    finally:
        for p in busy:
            p.kill()
            p.wait()
    ok = [r for r in full if r["code"] == 0 and r["summary"]]
    shown = [r for r in ok if r["after"] is not None and r["after"] > r["before"]]
    med, worst = _stats([r["startup_s"] for r in full])
    rows.append(
        {
            "name": f"[{name}] runs exiting 0 with a summary, hit rate after > before",
            "value": f"{len(shown)}/{runs}",
            "unit": "runs",
            "peer": None,
            "ratio": None,
            "goal": f"{runs}/{runs}",
            "verdict": "met" if len(shown) == runs else "NOT met",
        }
    )
    if full:
        rows.append(
            {
                "name": f"[{name}] hit rate before -> after the feedback (mean)",
                "value": f"{_mean([r['before'] for r in full]):.2f} -> "
                f"{_mean([r['after'] for r in full]):.2f}",
                "unit": "",
                "peer": None,
                "ratio": None,
                "goal": None,
            }
        )
        rows.append(
            {
                "name": f"[{name}] start-up to the first corrected train, median / max",
                "value": f"{_fmt(med)} / {_fmt(worst)}",
                "unit": "s",
                "peer": None,
                "ratio": None,
                "goal": "< 20" if name == "idle" else None,
                "verdict": ("met" if worst is not None and worst < 20 else "NOT met")
                if name == "idle"
                else "",
            }
        )
        dmed, dmax = _stats([r["duration_s"] for r in full])
        rows.append(
            {
                "name": f"[{name}] whole run (set-up, before, feedback, after, close), "
                "median / max",
                "value": f"{_fmt(dmed)} / {_fmt(dmax)}",
                "unit": "s",
                "peer": None,
                "ratio": None,
                "goal": None,
            }
        )
        cmed, _ = _stats([r["converge_s"] for r in full])
        rmed, _ = _stats([r["rate"] for r in full])
        lmed, _ = _stats([r["latency_p50_ms"] for r in full])
        rows.append(
            {
                "name": f"[{name}] feedback converged / trains per s / latency p50 (medians)",
                "value": f"{_fmt(cmed)} s / {_fmt(rmed)} / {_fmt(lmed)} ms",
                "unit": "",
                "peer": None,
                "ratio": None,
                "goal": None,
            }
        )
    if stops:
        smed, smax = _stats([r["stop_s"] for r in stops])
        closed = sum(1 for r in stops if r.get("run_closed"))
        codes = sum(1 for r in stops if r["code"] == 143 and r.get("summary"))
        rows.append(
            {
                "name": f"[{name}] SIGTERM -> every process gone, median / max",
                "value": f"{_fmt(smed)} / {_fmt(smax)}",
                "unit": "s",
                "peer": None,
                "ratio": None,
                "goal": "< 5",
                "verdict": "met" if smax is not None and smax < 5 else "NOT met",
            }
        )
        rows.append(
            {
                "name": f"[{name}] SIGTERM: exit 143 with summary / DAQ run closed",
                "value": f"{codes}/{len(stops)} / {closed}/{len(stops)}",
                "unit": "runs",
                "peer": None,
                "ratio": None,
                "goal": None,
            }
        )
    for row in rows:
        row["load"] = load
    return rows


def _mean(values: list[float | None]) -> float:
    v = [x for x in values if x is not None]
    return sum(v) / len(v) if v else float("nan")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def table(rows: list[dict]) -> str:
    out = ["| measurement | value | unit | goal | |", "|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['name']} | {r['value']} | {r['unit']} | {r.get('goal') or ''} | "
            f"{r.get('verdict', '')} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5, help="complete runs per condition")
    ap.add_argument(
        "--stop-runs",
        type=int,
        default=None,
        help="runs stopped by SIGTERM per condition (default: --runs)",
    )
    ap.add_argument("--only", choices=("idle", "busy"), default=None)
    ap.add_argument("--quick", action="store_true", help="one run of each kind")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    ap.add_argument("--data-dir", default=None, help="default: a temporary directory")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs = 1
    stop_runs = args.runs if args.stop_runs is None else args.stop_runs
    sys.path.insert(0, str(ROOT / "src"))
    from pulsetrain.demo import DemoOptions, prepare_catalog

    tmp = None
    if args.data_dir is None:
        tmp = tempfile.mkdtemp(prefix="pulsetrain-bench-demo-")
    data_dir = Path(args.data_dir or tmp).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)

    def log(s: str) -> None:
        print(s, flush=True)

    try:
        prepare_catalog(
            DemoOptions(data_dir=data_dir), f"sqlite:///{data_dir / 'catalog.sqlite'}", log
        )
        rows = []
        for name in [args.only] if args.only else ["idle", "busy"]:
            log(f"== {name} (load average {os.getloadavg()[0]:.1f})")
            rows += run_condition(name, args.runs, stop_runs, data_dir, args.timeout, log)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(table(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
