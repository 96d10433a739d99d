"""``pulsetrain demo``: shows its point (the feedback raises the hit rate) and ends with a summary
of numbers; refuses to start when one of its fixed ports is taken."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

import psutil
import pytest

from pulsetrain.runtime.topology import free_port


def _demo(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pulsetrain", "demo", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_shows_its_point(tmp_path):
    data = tmp_path / "demo"
    out = _demo("--no-gui", "--data-dir", str(data), "--bridge-port", str(free_port()), timeout=800)
    text = out.stdout
    assert out.returncode == 0, text[-4000:] + out.stderr[-4000:]
    assert "Traceback" not in text + out.stderr
    assert "RuntimeWarning" not in out.stderr
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    # set-up steps, with where it writes
    assert f"pulsetrain demo: writing to {data.resolve()}" in text
    for step in (
        "  constants: storing the simulator's constants for 16 modules",
        "  kernels: compiling",
        "  servers: starting 12 device servers",
        "all servers and devices up in",
        "Karabo bridge (REP): tcp://127.0.0.1:",
        "first corrected train after",
    ):
        assert step in text, step
    # the summary: numbers, and the feedback's effect
    m = re.search(r"trains: (\d+) simulated, (\d+) corrected and matched", text)
    assert m and int(m[2]) > 0, text[-2000:]
    m = re.search(r"latency detector -> matched corrected train: p50 (\d+) ms, p99 (\d+) ms", text)
    assert m, text[-2000:]
    m = re.search(r"hit rate: (\d\.\d\d) before feedback, (\d\.\d\d) after \(feedback found", text)
    assert m, text[-2000:]
    before, after = float(m[1]), float(m[2])
    assert after > before + 0.2, (before, after)
    assert "extra-data-validate: passed" in text
    m = re.search(r"written by this run: ([\d.]+) (MiB|GiB)", text)
    assert m and float(m[1]) > 0
    runs = list((data / "raw").glob("r0001/RAW-R0001-AGIPD*-S00000.h5"))
    assert len(runs) == 16
    check = subprocess.run(
        ["extra-data-validate", str(data / "raw" / "r0001")],
        check=False,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _leftovers(data_dir) -> list[int]:
    """Processes whose command line names ``data_dir`` (servers of that demo)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if str(data_dir) in cmd:
            found.append(p.info["pid"])
    return found


@pytest.mark.parametrize("which", ["bridge", "gui"])
def test_demo_refuses_a_taken_port(tmp_path, which):
    """Bind first: a taken fixed port stops the demo before anything starts, in one line."""
    data = tmp_path / "demo"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bridge = port if which == "bridge" else free_port()
        gui = port if which == "gui" else free_port()
        t0 = time.monotonic()
        out = _demo(
            "--data-dir",
            str(data),
            "--bridge-port",
            str(bridge),
            "--gui-port",
            str(gui),
            timeout=60,
        )
        elapsed = time.monotonic() - t0
    assert out.returncode == 2, out.stdout + out.stderr
    assert elapsed < 30
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert str(port) in lines[0] and "in use" in lines[0]
    assert which in lines[0].lower()  # names the bridge or the GUI port
    assert "Traceback" not in out.stdout + out.stderr
    assert not data.exists()  # nothing written, nothing started
    assert _leftovers(data) == []


def test_check_ports_names_a_taken_port():
    from pulsetrain.demo import check_ports
    from pulsetrain.errors import ConfigurationError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"Karabo bridge: port {port} on 127.0.0.1 is already in use"):
            check_ports({"GUI": free_port(), "Karabo bridge": port})
    check_ports({"Karabo bridge": port})  # free again


def test_stop_signals_interrupt_once_then_only_record():
    import os
    import signal

    from pulsetrain.runtime.lifetime import StopSignals

    before = signal.getsignal(signal.SIGTERM)
    signals = StopSignals()
    with signals:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
        assert signals.stopping
        os.kill(os.getpid(), signal.SIGHUP)  # during the clean-up: recorded, not raised
        time.sleep(0.1)
    assert (signals.signum, signals.name, signals.exit_code) == (signal.SIGTERM, "SIGTERM", 143)
    assert signal.getsignal(signal.SIGTERM) is before  # the old handler is back


def test_summary_of_an_interrupted_set_up_has_no_nan():
    from pulsetrain.demo import _print_summary, demo_succeeded

    lines: list[str] = []
    s = {
        "interrupted": "SIGINT",
        "interrupted_during": "starting servers",
        "stop_s": 0.4,
        "elapsed_s": 3.0,
        "bytes_written": 0,
        "data_dir": "/tmp/x",
    }
    _print_summary(s, lines.append)
    text = "\n".join(lines)
    assert "summary (interrupted by SIGINT while starting servers)" in text
    assert "trains: none (stopped during set-up)" in text
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    assert not demo_succeeded(s)
    lines.clear()
    s = {
        "trains_sent": 30,
        "trains_matched": 0,
        "modules": 16,
        "hit_rate_before": 0.0,
        "data_dir": "/tmp/x",
    }
    _print_summary(s, lines.append)
    text = "\n".join(lines)
    assert "no corrected train arrived" in text
    assert "hit rate: 0.00 before feedback, not measured after" in text
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
