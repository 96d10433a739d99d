"""Failure behaviour: full disk, kill -9 of the writer, recovery of files left open."""

from __future__ import annotations

import errno
import subprocess
import sys
import threading
from pathlib import Path

import extra_data
import h5py
import numpy as np
import pytest
from synthetic import FIRST_TRAIN, make_train

from conftest import assert_valid, disk_full_after, small_filesystem
from pulsetrain.errors import StorageError
from pulsetrain.files import RunWriter, iter_run_trains, recover_run

CHILD = Path(__file__).resolve().parent / "writer_child.py"
SEQUENCE_TRAINS = 3


def _write_until_failure(writer: RunWriter, limit: int = 200, **train_kw) -> StorageError:
    for i in range(limit):
        _, data, meta = make_train(i, **train_kw)
        try:
            writer.write_train(data, meta)
        except StorageError as exc:
            return exc
    raise AssertionError(f"no StorageError after {limit} trains")


def _assert_closed_files_hold_their_trains(run_dir: Path, **train_kw) -> int:
    """Every *.h5 file validates and holds exactly the values written; returns trains read."""
    files = sorted(run_dir.glob("*.h5"))
    assert files, "no closed file"
    assert_valid(run_dir)
    n = 0
    for tid, data, _ in iter_run_trains(run_dir):
        _, expected, _ = make_train(tid - FIRST_TRAIN, **train_kw)
        for src, values in data.items():
            for key, value in expected[src].items():
                if ":" not in src and not key.endswith((".value", ".timestamp")):
                    key += ".value"
                if isinstance(value, str):
                    assert values[key] == value
                else:
                    np.testing.assert_array_equal(values[key], value, err_msg=f"{tid} {src}")
        n += 1
    return n


def _assert_process_healthy(tmp_path: Path) -> None:
    """HDF5 still works in this process after the failure (no crash at the next call)."""
    with h5py.File(tmp_path / "after.h5", "w") as f:
        f["x"] = np.arange(5)
    with h5py.File(tmp_path / "after.h5", "r") as f:
        assert f["x"][-1] == 4


@pytest.mark.timeout(180)
def test_disk_full_raises_storage_error_and_keeps_closed_files(tmp_path):
    train_kw = {"modules": 16, "frames": 1}
    with small_filesystem(tmp_path, 24) as fs:
        run_dir = fs / "r0001"
        writer = RunWriter(run_dir, sequence_trains=2, min_free_bytes=0, flush_trains=1)
        exc = _write_until_failure(writer, **train_kw)
        message = str(exc)
        assert message.startswith("disk full: no space left on device while writing RAW-R0001-")
        assert str(run_dir) in message and ".h5.part" in message
        assert exc.errno == errno.ENOSPC
        assert writer.failed is exc
        closed = writer.files
        assert closed, "expected sequence files closed before the disk filled"
        with pytest.raises(StorageError, match="earlier error"):
            writer.write_train(*make_train(99, **train_kw)[1:])
        assert writer.close() == closed  # no second error, nothing new
        assert set(run_dir.glob("*.h5")) == set(closed)
        trains = _assert_closed_files_hold_their_trains(run_dir, **train_kw)
        assert trains >= 2
        assert writer.manifest()["error"] == message
        _assert_process_healthy(tmp_path)


@pytest.mark.timeout(180)
def test_disk_reserve_closes_every_file_cleanly(tmp_path):
    train_kw = {"modules": 16, "frames": 1}
    with small_filesystem(tmp_path, 64) as fs:
        run_dir = fs / "r0001"
        writer = RunWriter(run_dir, sequence_trains=4, min_free_bytes=4 << 20)
        exc = _write_until_failure(writer, **train_kw)
        assert str(exc).startswith("disk full: only")
        assert "min_free_bytes" in str(exc) and "open files closed and valid" in str(exc)
        assert not list(run_dir.glob("*.part")), "open files must be finished, not left open"
        written = writer.trains_written
        assert written >= 2
        run = extra_data.RunDirectory(str(run_dir))
        assert len(run.train_ids) == written  # everything accepted is stored
        assert _assert_closed_files_hold_their_trains(run_dir, **train_kw) == written


@pytest.mark.timeout(120)
def test_simulated_write_failure_is_contained(tmp_path):
    """No root needed: the file layer fails with ENOSPC after a byte budget."""
    train_kw = {"modules": 2, "frames": 1}
    with disk_full_after(6 << 20):
        writer = RunWriter(tmp_path, sequence_trains=2, min_free_bytes=0)
        exc = _write_until_failure(writer, **train_kw)
    assert "disk full" in str(exc)
    assert writer.files
    assert _assert_closed_files_hold_their_trains(tmp_path, **train_kw) >= 2
    _assert_process_healthy(tmp_path)


def _run_child_and_kill(run_dir: Path, modules: int, kill_after: int) -> int:
    """Start the writer child, kill -9 it once *kill_after* trains were written; returns the
    index of the last train it reported as written."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(run_dir), str(SEQUENCE_TRAINS), str(modules), "100000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    last = -1
    timer = threading.Timer(120, proc.kill)  # never wait forever on a stuck child
    timer.start()
    try:
        for line in proc.stdout:
            last = int(line.split()[1])
            if last >= kill_after:
                break
        proc.kill()  # SIGKILL, while it goes on writing
        proc.wait(timeout=30)
    finally:
        timer.cancel()
        proc.stdout.close()
    assert proc.returncode == -9
    assert last >= kill_after, "child stopped before it was killed"
    return last


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kill_after", [7, 13])
def test_kill_minus_9_leaves_closed_files_valid(tmp_path, kill_after):
    modules = 4
    train_kw = {"modules": modules, "frames": [2, 1, 3]}
    run_dir = tmp_path / "r0001"
    last = _run_child_and_kill(run_dir, modules, kill_after)
    closed = sorted(run_dir.glob("*.h5"))
    # Every closed sequence file has all its trains: sequence s holds trains 3s .. 3s+2.
    by_aggregator: dict[str, list[int]] = {}
    for path in closed:
        aggregator, seq = path.stem.split("-")[2], int(path.stem[-5:])
        by_aggregator.setdefault(aggregator, []).append(seq)
        with h5py.File(path, "r") as f:
            tids = f["INDEX/trainId"][:]
        expected = FIRST_TRAIN + SEQUENCE_TRAINS * seq + np.arange(SEQUENCE_TRAINS)
        np.testing.assert_array_equal(tids, expected, err_msg=path.name)
    assert set(by_aggregator) == {f"AGIPD{m:02d}" for m in range(modules)} | {"DA01"}
    # Sequence s is closed when train 3(s+1) starts: at least last // 3 files per aggregator.
    for aggregator, seqs in by_aggregator.items():
        assert sorted(seqs) == list(range(len(seqs))), aggregator
        assert len(seqs) >= last // SEQUENCE_TRAINS, (aggregator, seqs, last)
    _assert_closed_files_hold_their_trains(run_dir, **train_kw)  # validates every *.h5

    # The files left open are recovered up to their last flush (each train is flushed here).
    results = recover_run(run_dir)
    assert results, "expected files left open by the kill"
    for r in results:
        if r.path is None:  # killed before HDF5 wrote anything: holds no flushed train
            assert r.trains == 0 and "cannot open" in r.problem, r
            continue
        assert r.path.exists() and not r.part_path.exists()
    assert_valid(run_dir)
    covered: dict[str, set[int]] = {}
    for path in run_dir.glob("*.h5"):
        with h5py.File(path, "r") as f:
            covered.setdefault(path.stem.split("-")[2], set()).update(
                f["INDEX/trainId"][:].tolist()
            )
    reported = {FIRST_TRAIN + i for i in range(last + 1)}
    for aggregator, tids in covered.items():
        assert reported <= tids, (aggregator, sorted(reported - tids))
    _assert_closed_files_hold_their_trains(run_dir, **train_kw)
