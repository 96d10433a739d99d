"""Helpers of the ``slurm`` tests: what SLURM's own commands say about jobs."""

from __future__ import annotations

import subprocess


def squeue(prefix: str = "") -> dict[str, str]:
    """Job ID -> state (``PD``, ``R``, ``CG``, ...) of the jobs in the queue whose name starts
    with ``prefix``."""
    done = subprocess.run(
        ["squeue", "-h", "-o", "%i %t %j"], capture_output=True, text=True, timeout=60, check=True
    )
    jobs = {}
    for line in done.stdout.splitlines():
        job, state, name = line.split(maxsplit=2)
        if name.startswith(prefix):
            jobs[job] = state
    return jobs


def jobs_gone(ids) -> bool:
    """None of the jobs ``ids`` is in the queue any more (not even completing)."""
    return not set(ids) & set(squeue())


def cancel(ids) -> None:
    """Cancel the jobs ``ids`` (a test's clean-up; jobs already gone are fine)."""
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=60, check=False)
