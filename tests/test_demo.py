"""`pulsetrain demo --trains 100 --no-gui`: exits 0 within 2 minutes; its run validates."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from pulsetrain.ports import free_port


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "pulsetrain", "demo", "--trains", "100", "--no-gui",
         "--data-dir", str(tmp_path / "demo"), "--bridge-port", str(free_port())],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert elapsed < 120, f"demo took {elapsed:.0f} s"
    text = out.stdout
    assert "Karabo bridge (REP): tcp://127.0.0.1:" in text
    assert "extra-data-validate: passed" in text
    assert "trains: 100 simulated" in text
    assert "latency detector -> matched corrected train: p50" in text
    runs = list((tmp_path / "demo" / "raw").glob("r0001/RAW-R0001-AGIPD*-S00000.h5"))
    assert len(runs) == 16
    check = subprocess.run(["extra-data-validate", str(tmp_path / "demo" / "raw" / "r0001")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
