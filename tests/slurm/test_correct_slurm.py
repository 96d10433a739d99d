"""``pulsetrain correct --slurm`` on a real SLURM cluster: the Dask workers run as batch jobs,
the CORR run equals the local cluster's bit for bit, and no job outlives the command."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest
from _slurm_helpers import cancel, jobs_gone, squeue

from waiting import wait_until

pytestmark = pytest.mark.slurm

CELLS = 16
#: Datasets that say when the file was written, so differ between two runs of the same job.
WRITE_TIMES = ("METADATA/creationDate", "METADATA/updateDate")
#: ``pulsetrain correct --slurm`` names its jobs ``pulsetrain-<pid>-<random>``.
JOB_PREFIX = "pulsetrain-"


@pytest.fixture(scope="module")
def raw_and_catalog(tmp_path_factory):
    """A small simulated raw run (2 modules, 2 sequence files each) and a catalogue holding the
    simulator's true constants."""
    from pulsetrain.bootstrap import store_truth_constants
    from pulsetrain.catalog import Catalog
    from pulsetrain.cli import main
    from pulsetrain.sim import DetectorSimulator

    base = tmp_path_factory.mktemp("slurm-correct")
    argv = ["simulate", "--out", str(base / "raw"), "--trains", "6", "--frames", "8"]
    argv += ["--modules", "0", "1", "--memory-cells", str(CELLS), "--sequence-trains", "3"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    (raw,) = (base / "raw").iterdir()
    url = f"sqlite:///{base / 'catalog.sqlite'}"
    cat = Catalog(url)
    sim = DetectorSimulator("AGIPD", frames=8, memory_cells=CELLS, modules=(0, 1))
    store_truth_constants(cat, sim, modules=[0, 1])
    cat.close()
    return raw, url


def _correct(raw: Path, url: str, out: Path, *backend: str) -> list[str]:
    command = [sys.executable, "-m", "pulsetrain", "correct", str(raw), "--out", str(out)]
    command += ["--catalog", url, "--memory-cells", str(CELLS), "--no-record", "--no-progress"]
    return command + list(backend)


def _slurm_options(partition: str) -> list[str]:
    # two jobs of one single-threaded worker each: both fit the 2-core test node at once
    return [
        "--slurm",
        "--queue",
        partition,
        "--cores",
        "1",
        "--memory",
        "1GB",
        "--walltime",
        "00:10:00",
        "--jobs",
        "2",
    ]


def _datasets(path: Path) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                found.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
    return found


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "O":  # variable-length strings: compare the values, not the pointers
        return a.tolist() == b.tolist()
    return a.tobytes() == b.tobytes()


def test_slurm_correction_equals_the_local_one_bit_for_bit(
    raw_and_catalog, slurm_partition, tmp_path
):
    raw, url = raw_and_catalog
    local = subprocess.run(
        _correct(raw, url, tmp_path / "local", "--workers", "1"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert local.returncode == 0, local.stderr

    before = set(squeue())
    jobs_dir = tmp_path / "jobs"  # the jobs' slurm-<id>.out files land here
    jobs_dir.mkdir()
    proc = subprocess.Popen(
        _correct(raw, url, tmp_path / "slurm", *_slurm_options(slurm_partition)),
        cwd=jobs_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[str, set[str]] = {}  # job -> states seen while the command ran
    try:
        while proc.poll() is None:
            for job, state in squeue(JOB_PREFIX).items():
                if job not in before:
                    seen.setdefault(job, set()).add(state)
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        leftover = set(squeue(JOB_PREFIX)) - before
    assert proc.returncode == 0, err
    assert "4 module files corrected" in out
    running = [job for job, states in seen.items() if "R" in states]
    assert len(seen) == 2 and running, f"worker jobs seen in squeue: {seen}"
    # the command cancelled its jobs on the way out
    try:
        wait_until(lambda: jobs_gone(seen), timeout=30, what=f"jobs {sorted(seen)} gone")
    finally:
        cancel(leftover | set(seen))
    # each job really ran a Dask worker that joined our scheduler
    logs = sorted(jobs_dir.glob("slurm-*.out"))
    assert len(logs) == 2
    for log in logs:
        assert "Registered to:" in log.read_text(), log.read_text()[-2000:]

    local_files = sorted(p.name for p in (tmp_path / "local").glob("*.h5"))
    slurm_files = sorted(p.name for p in (tmp_path / "slurm").glob("*.h5"))
    assert local_files == slurm_files and len(local_files) == 6  # 4 module files + 2 slow
    compared = 0
    for name in local_files:
        a = _datasets(tmp_path / "local" / name)
        b = _datasets(tmp_path / "slurm" / name)
        assert sorted(a) == sorted(b), name
        for key in a:
            if key in WRITE_TIMES:  # both are valid times of writing
                for value in (a[key], b[key]):
                    datetime.strptime(value[0].decode(), "%Y%m%dT%H%M%SZ")
                continue
            assert _identical(a[key], b[key]), f"{name}: {key} differs"
            compared += 1
    assert compared > 100
    image = "INSTRUMENT/SPB_DET_AGIPD1M-1/CORR/0CH0:output/image/data"
    data = _datasets(tmp_path / "slurm" / "CORR-R0001-AGIPD00-S00000.h5")[image]
    assert data.dtype == np.float32 and data.size and np.isfinite(data).any()


def test_slurm_refusal_is_one_line_and_submits_nothing(raw_and_catalog, slurm_partition, tmp_path):
    raw, url = raw_and_catalog
    before = set(squeue())
    options = _slurm_options(slurm_partition)
    options[options.index(slurm_partition)] = "no-such-partition"
    done = subprocess.run(
        _correct(raw, url, tmp_path / "out", *options),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("pulsetrain correct: error: SLURM refused the worker job: ")
    assert "partition" in lines[0]
    assert set(squeue()) <= before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.h5"))


def test_no_sbatch_is_one_line(raw_and_catalog, slurm_partition, tmp_path):
    raw, url = raw_and_catalog
    bin_dir = tmp_path / "bin"  # a PATH with python but without SLURM's commands
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    done = subprocess.run(
        _correct(raw, url, tmp_path / "out", *_slurm_options(slurm_partition)),
        cwd=tmp_path,
        env={**os.environ, "PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    expected = (
        "pulsetrain correct: error: SLURM: sbatch not found on PATH: run on a SLURM submit "
        "host (or without --slurm)"
    )
    assert done.stderr.strip().splitlines() == [expected]


def _ignore_sigint() -> None:  # as bash starts a background job of a script
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize(
    ("sig", "started_ignoring_sigint"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
    ids=["SIGTERM", "SIGINT", "SIGINT-to-a-background-job"],
)
def test_jobs_are_cancelled_when_the_command_is_stopped(
    raw_and_catalog, slurm_partition, tmp_path, sig, started_ignoring_sigint
):
    raw, url = raw_and_catalog
    before = set(squeue())
    proc = subprocess.Popen(
        _correct(raw, url, tmp_path / "out", *_slurm_options(slurm_partition)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint if started_ignoring_sigint else None,  # noqa: PLW1509
    )
    jobs: set[str] = set()
    try:
        jobs = wait_until(
            lambda: proc.poll() is None and set(squeue(JOB_PREFIX)) - before,
            timeout=120,
            what="the command's worker jobs in the queue",
        )
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err  # interrupted, not success
        assert "Traceback" not in err
        wait_until(lambda: jobs_gone(jobs), timeout=30, what=f"jobs {sorted(jobs)} cancelled")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        cancel(jobs | (set(squeue(JOB_PREFIX)) - before))


def test_jobs_that_end_without_workers_stop_the_command(raw_and_catalog, slurm_partition, tmp_path):
    """Jobs whose workers cannot start (here: a Python that cannot start on the node) end
    without a worker ever joining: the command stops with one line instead of waiting forever,
    and leaves no job behind."""
    raw, url = raw_and_catalog
    before = set(squeue())
    options = [*_slurm_options(slurm_partition), "--job-extra=--export=ALL,PYTHONHOME=/nonexistent"]
    proc = subprocess.Popen(
        _correct(raw, url, tmp_path / "out", *options),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        cancel(set(squeue(JOB_PREFIX)) - before)
    assert proc.returncode == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pulsetrain correct: error: the SLURM jobs pulsetrain-"), err
    assert "ended and no Dask worker is connected" in lines[0]
    # the jobs really ran, and failed for the reason given
    logs = [p.read_text() for p in tmp_path.glob("slurm-*.out")]
    assert len(logs) == 2 and all("encodings" in text for text in logs), logs
    assert not set(squeue(JOB_PREFIX)) - before
