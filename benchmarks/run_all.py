"""Run every benchmark and rewrite ``benchmarks/RESULTS.md`` with their figures and ratios.

Each benchmark module in this directory has ``main(quick: bool) -> list[dict]`` returning
``{"name", "value", "unit", "peer", "ratio", "goal"}`` rows; they run one after the other (never
in parallel: they measure the machine), each in its own process so that one crash does not lose
the others.  A benchmark that needs what this machine cannot give (``scaling``: root and Linux
network namespaces for its test hosts) is skipped with one line saying why, in the output and
in its section.

    python benchmarks/run_all.py [--quick] [--only bridge pipeline ...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    "bridge",
    "pipeline",
    "figure2",
    "calibration",
    "online",
    "storage",
    "analysis",
    "offline",
    "gui",
    "sim",
    "soak",
    "scaling",
]


def unavailable(name: str) -> str | None:
    """Why benchmark ``name`` cannot run on this machine (``None``: it can)."""
    if name == "scaling":  # its test hosts are network and mount namespaces (tests/hosts.py)
        sys.path.insert(0, str(HERE.parent / "tests"))
        from hosts import HostsUnavailable, check_available

        try:
            check_available()
        except HostsUnavailable as exc:
            return str(exc)
    return None


def run_one(name: str, quick: bool, timeout: float) -> tuple[list[dict], str, float]:
    code = (
        f"import inspect, json, sys; sys.path.insert(0, {str(HERE)!r}); import {name} as b; "
        f"q = {quick!r}; "
        "p = list(inspect.signature(b.main).parameters); "
        "arg = (['--quick'] if q else []) if p and p[0] == 'argv' else q; "
        "rows = b.main(arg); print('@@RESULTS@@' + json.dumps(rows, default=float))"
    )
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=HERE.parent,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:.0f} s", time.perf_counter() - t0
    dt = time.perf_counter() - t0
    for line in out.stdout.splitlines():
        if line.startswith("@@RESULTS@@"):
            return json.loads(line[len("@@RESULTS@@") :]), out.stdout, dt
    return [], (out.stdout + out.stderr)[-2000:], dt


def fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def verdict(row: dict) -> str:
    goal, ratio, value = row.get("goal"), row.get("ratio"), row.get("value")
    if not isinstance(goal, (int, float)) or isinstance(goal, bool):
        return ""
    measured = ratio if ratio is not None else value
    if not isinstance(measured, (int, float)):
        return ""
    lower_is_better = row.get("lower_is_better", ratio is None)
    ok = measured <= goal if lower_is_better else measured >= goal
    return "met" if ok else "NOT met"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--output", default=str(HERE / "RESULTS.md"))
    args = ap.parse_args()
    names = [n for n in (args.only or BENCHMARKS) if (HERE / f"{n}.py").exists()]
    load = os.getloadavg()
    sections = []
    for name in names:
        print(f"== {name}", flush=True)
        reason = unavailable(name)
        if reason:
            print(f"skipped {name}: {reason}", flush=True)
            sections.append((name, None, reason, 0.0))
            continue
        rows, log, dt = run_one(name, args.quick, args.timeout)
        print(
            log
            if not rows
            else "\n".join(l for l in log.splitlines() if not l.startswith("@@RESULTS@@"))
        )
        sections.append((name, rows, log, dt))
        (HERE / ".last-run.json").write_text(
            json.dumps([(n, r, lg[-3000:], d) for n, r, lg, d in sections], default=str)
        )
    lines = [
        "# Benchmark results",
        "",
        (
            f"Written by `benchmarks/run_all.py{' --quick' if args.quick else ''}` on "
            f"{datetime.datetime.now().isoformat(timespec='minutes')}, {platform.node()}, "
            f"{os.cpu_count()} CPUs, Python {platform.python_version()}; load average at start "
            f"{load[0]:.1f}.  Each figure is measured side by side with its peer in one run; "
            "ratios are pulsetrain ÷ peer (higher is better) unless the unit is a time."
        ),
        "",
    ]
    for name, rows, log, dt in sections:
        if rows is None:
            lines += [f"## {name} (skipped)", "", f"Skipped: {log}.", ""]
            continue
        lines.append(f"## {name} ({dt:.0f} s)")
        lines.append("")
        if not rows:
            lines += ["Failed:", "", "```", log.strip()[-1500:], "```", ""]
            continue
        lines.append("| measurement | value | unit | peer | ratio | goal | |")
        lines.append("|---|---|---|---|---|---|---|")
        for r in rows:
            lines.append(
                f"| {r['name']} | {fmt(r.get('value'))} | {r.get('unit', '')} | "
                f"{r.get('peer') or ''} | {fmt(r.get('ratio'))} | {fmt(r.get('goal'))} | "
                f"{verdict(r)} |"
            )
        lines.append("")
    Path(args.output).write_text("\n".join(lines))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
