"""Fixtures for the storage tests: synthetic runs, the EXtra-data CLIs, small file systems."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import NamedTuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import make_train

from pulsetrain.files import RunWriter, guarded_io

RAW_TRAINS = 12
RAW_FRAMES = [2, 3, 0, 1]


def cli(name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run an installed EXtra-data command line tool."""
    exe = shutil.which(name)
    if exe is None:  # fall back to the module behind the entry point
        module = {"extra-data-validate": "extra_data.validation", "lsxfel": "extra_data.cli.lsxfel"}
        cmd = [
            sys.executable,
            "-c",
            f"import sys; from {module[name]} import main; sys.exit(main())",
        ]
    else:
        cmd = [exe]
    return subprocess.run(
        cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_valid(path: Path) -> None:
    """``extra-data-validate PATH`` reports no problems."""
    result = cli("extra-data-validate", path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "No problems found" in result.stdout


class WrittenRun(NamedTuple):
    path: Path
    trains: list  # (tid, data, meta) as written
    manifest: dict


@pytest.fixture(scope="session")
def raw_run(tmp_path_factory) -> WrittenRun:
    """A raw run: 16 AGIPD modules (0-3 frames), a motor and a camera missing every 4th train,
    12 trains in sequences of 5.  Returns (run dir, list of (tid, data, meta) written)."""
    run_dir = tmp_path_factory.mktemp("p900001") / "raw" / "r0001"
    written = []
    with RunWriter(
        run_dir,
        sequence_trains=5,
        run_metadata={"sample": "lysozyme", "run_type": "SASE"},
        run_values={"SPB_IRU_MOTORS/MOTOR/SAMPLE_X": {"classId": "MotorDevice"}},
        key_attributes={
            "SPB_IRU_MOTORS/MOTOR/SAMPLE_X": {
                "actualPosition": {"unitSymbol": "m", "metricPrefixSymbol": "m"}
            }
        },
    ) as writer:
        for i in range(RAW_TRAINS):
            train = make_train(i, frames=RAW_FRAMES, skip_camera_every=4)
            writer.write_train(train[1], train[2])
            written.append(train)
    return WrittenRun(run_dir, written, writer.manifest())


@pytest.fixture(scope="session")
def corr_run(tmp_path_factory) -> WrittenRun:
    """A corrected run: 16 AGIPD CORR modules with 2 frames, 4 trains, no slow data."""
    run_dir = tmp_path_factory.mktemp("p900001") / "proc" / "r0002"
    written = []
    with RunWriter(run_dir, run_number=2, data_category="CORR") as writer:
        for i in range(4):
            train = make_train(i, frames=2, corrected=True, motor=False, camera=False)
            writer.write_train(train[1], train[2])
            written.append(train)
    return WrittenRun(run_dir, written, writer.manifest())


@contextlib.contextmanager
def disk_full_after(nbytes: int):
    """Within the block the file layer's writes fail with ENOSPC once ``nbytes`` are written
    (no root needed); real writes again after it."""
    left = nbytes
    real_pwrite = guarded_io._pwrite
    lock = threading.Lock()

    def failing_pwrite(fd, data, offset):
        nonlocal left
        with lock:
            n = memoryview(data).nbytes
            if left < n:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left -= n
        return real_pwrite(fd, data, offset)

    guarded_io._pwrite = failing_pwrite
    try:
        yield
    finally:
        guarded_io._pwrite = real_pwrite


def _try(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def small_filesystem(base: Path, size_mb: int):
    """Mount a file system of *size_mb* MB (tmpfs, else a loop-mounted ext4 image); skip the
    test if neither can be mounted (needs root)."""
    mount_point = base / f"fs-{uuid.uuid4().hex[:8]}"
    mount_point.mkdir()
    mounted = False
    image = None
    if os.geteuid() == 0:
        mounted = _try(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(mount_point)]
        )
        if not mounted and shutil.which("mkfs.ext4"):
            image = base / f"{mount_point.name}.img"
            with open(image, "wb") as f:
                f.truncate(size_mb << 20)
            mounted = _try(["mkfs.ext4", "-q", "-F", str(image)]) and _try(
                ["mount", "-o", "loop", str(image), str(mount_point)]
            )
    if not mounted:
        pytest.skip(
            "cannot make a size-limited file system: needs root to mount tmpfs or a loop image"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)
        if image is not None:
            image.unlink(missing_ok=True)
