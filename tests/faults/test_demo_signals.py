"""SIGINT, SIGTERM and SIGHUP stop ``pulsetrain demo`` cleanly from any point.

For each signal, sent while the detector runs (and SIGTERM also while the servers start): the
demo exits with 128 + the signal number after printing a summary of what it did, and within
10 s no process it started is left and no shared-memory segment of those processes.

The demos start from a copy of one catalogue with the simulator's constants (stored once for
the module), so each test spends its time on the servers, not on storing the same constants.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from pulsetrain.runtime.topology import free_port
from waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stored_constants(tmp_path_factory):
    """A demo data directory holding only the catalogue with the demo's constants."""
    from pulsetrain.demo import DemoOptions, prepare_catalog

    path = tmp_path_factory.mktemp("demo-constants")
    opts = DemoOptions(data_dir=path)  # the defaults of `pulsetrain demo`
    prepare_catalog(opts, f"sqlite:///{path / 'catalog.sqlite'}", lambda line: None)
    return path


@pytest.fixture
def data_dir(tmp_path, stored_constants):
    """A fresh data directory with a copy of the stored catalogue (constant files linked)."""
    path = tmp_path / "demo"
    shutil.copytree(stored_constants, path, copy_function=os.link)
    (path / "catalog.sqlite").unlink()  # the catalogue itself is copied, not linked
    shutil.copy2(stored_constants / "catalog.sqlite", path / "catalog.sqlite")
    return path


class _Demo:
    """``pulsetrain demo`` in a subprocess, its output collected line by line."""

    def __init__(self, data_dir):
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
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, fragment: str, timeout: float) -> None:
        wait_until(
            lambda: fragment in self.text or self.proc.poll() is not None,
            timeout=timeout,
            what=f"demo output {fragment!r}",
        )
        assert fragment in self.text, self.text[-3000:]

    def processes(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


def _alive(procs: list[psutil.Process]) -> list[int]:
    alive = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _segments(pids: list[int]) -> list[str]:
    names = os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else []
    return [n for n in names for pid in pids if n.startswith(f"pulsetrain-{pid}-")]


def _stop_and_check(demo: _Demo, sig: int) -> None:
    assert "constants: all 16 modules already in the catalogue" in demo.text, demo.text[:2000]
    children = demo.processes()
    assert children, "the demo has no server processes"
    pids = [demo.proc.pid] + [p.pid for p in children]
    t0 = time.monotonic()
    demo.proc.send_signal(sig)
    try:
        code = demo.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        demo.proc.kill()
        pytest.fail(f"demo still running 10 s after {sig.name}:\n{demo.text[-3000:]}")
    wait_until(
        lambda: not _alive(children),
        timeout=max(0.1, 10 - (time.monotonic() - t0)),
        what="every process of the demo to end",
    )
    assert code == 128 + sig, (code, demo.text[-3000:])
    text = demo.text
    assert f"summary (interrupted by {sig.name} while" in text, text[-3000:]
    assert "Traceback" not in text
    m = re.search(r"stopped in ([\d.]+) s", text)
    assert m, text[-2000:]
    assert _segments(pids) == []


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name
)
def test_signal_while_the_detector_runs(data_dir, sig):
    demo = _Demo(data_dir)
    try:
        demo.wait_for_line("first corrected train after", timeout=400)
        _stop_and_check(demo, sig)
        text = demo.text
        assert re.search(r"trains: \d+ simulated, \d+ corrected and matched", text), text
        # the open DAQ run was closed by its writer
        assert "closed by the DAQ writer" in text, text[-2000:]
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()


@pytest.mark.timeout(600)
def test_sigterm_while_the_servers_start(data_dir):
    demo = _Demo(data_dir)
    try:
        demo.wait_for_line("servers: starting", timeout=300)
        wait_until(
            lambda: len(demo.processes()) >= 6, timeout=60, what="server processes being started"
        )
        _stop_and_check(demo, signal.SIGTERM)
        assert "interrupted by SIGTERM while starting servers" in demo.text, demo.text[-2000:]
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
