"""Process lifecycle of ``pulsetrain run``: nothing outlives a run, however it ends.

Each test runs ``python -m pulsetrain run`` as a subprocess on ``lifecycle.toml`` (a source, a
passthrough and a DAQ writer feeding a Karabo bridge on a fixed port, three server processes,
frames in shared memory) with its own run-state directory, and checks from outside, by pid and
process start time, that no process and no shared-memory segment of the run is left, that the
DAQ run was closed, and that the topology can be started again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

import pulsetrain
from pulsetrain.bridge import Client as BridgeClient
from pulsetrain.errors import AlreadyRunningError
from pulsetrain.gui.backend import GuiBackend
from pulsetrain.runtime import lifetime, runstate, shmem
from pulsetrain.runtime.control import TopologyClient
from pulsetrain.runtime.ports import free_port
from waiting import wait_until

HERE = Path(__file__).resolve().parent
TOPOLOGY = HERE / "lifecycle.toml"
START_TIMEOUT = 120.0  # a loaded machine takes long to import numpy & co in every server


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of the runs: their own run-state directory (this test's too); this
    pulsetrain and the test device module importable in every server."""
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    paths = [str(Path(pulsetrain.__file__).resolve().parents[1]), str(HERE)]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "XDG_RUNTIME_DIR": str(xdg), "PYTHONPATH": os.pathsep.join(paths)}


def make_topology(tmp_path: Path, port: int, extra: str = "") -> Path:
    text = TOPOLOGY.read_text()
    text = text.replace("tcp://127.0.0.1:45871", f"tcp://127.0.0.1:{port}")
    text = text.replace('"lifecycle-raw"', json.dumps(str(tmp_path / "raw")))
    path = tmp_path / "lifecycle.toml"
    path.write_text(text + extra)
    return path


class Run:
    """``pulsetrain run`` in a subprocess; its output (stdout and stderr) collected."""

    def __init__(self, topology: Path, workdir: Path, env: dict[str, str], *args: str):
        self.workdir = workdir
        cmd = [sys.executable, "-m", "pulsetrain", "run", str(topology)]
        self.proc = subprocess.Popen(
            [*cmd, "--workdir", str(workdir), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_running(self) -> None:
        wait_until(
            lambda: "Ctrl-C to stop" in self.output or self.proc.poll() is not None,
            START_TIMEOUT,
            "the run to start",
        )
        assert "Ctrl-C to stop" in self.output, self.output

    def processes(self) -> set[tuple[int, float]]:
        """(pid, create time) of the run's processes below the supervisor."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return set()
        found = set()
        for child in children:
            try:
                found.add((child.pid, child.create_time()))
            except psutil.NoSuchProcess:
                pass
        return found

    def finish(self, timeout: float = 60.0) -> str:
        """Wait for the exit and the end of the output."""
        self.proc.wait(timeout)
        self._reader.join(10)
        return self.output

    def stop(self) -> None:
        """SIGINT, and make sure it is gone (test clean-up)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def alive(procs: set[tuple[int, float]]) -> list[int]:
    """The pids of ``procs`` still running (the same processes: same start time; not zombies)."""
    out = []
    for pid, started in procs:
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == started and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def processes_using(path: Path) -> list[int]:
    """Processes whose command line names ``path`` (servers get its token file)."""
    out = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(path) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE:
            out.append(proc.pid)
    return out


def segments(pids: list[int]) -> list[str]:
    return [name for pid in pids for name in shmem.segments_of(pid)]


def trains(port: int, n: int = 3, timeout: float = 60.0) -> list:
    with BridgeClient(f"tcp://127.0.0.1:{port}", "REQ", timeout=timeout) as client:
        return [client.next() for _ in range(n)]


def watch_children(run: Run) -> set[tuple[int, float]]:
    """Every process the run had below it while it ran (sampled until it exits)."""
    seen: set[tuple[int, float]] = set()

    def sample() -> bool:
        seen.update(run.processes())
        return run.proc.poll() is not None

    wait_until(sample, START_TIMEOUT, "the run to end", interval=0.05)
    return seen


def one_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


# ---------------------------------------------------------------- signals


CASES = [
    ("SIGINT", ()),
    ("SIGTERM", ()),
    ("SIGHUP", ()),
    ("SIGTERM", ("--duration", "600")),
    ("SIGKILL", ()),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signame", "args"), CASES, ids=["SIGINT", "SIGTERM", "SIGHUP", "SIGTERM-duration", "SIGKILL"]
)
def test_a_signal_leaves_nothing_behind(tmp_path, env, signame, args):
    port = free_port()
    topology = make_topology(tmp_path, port)
    run = Run(topology, tmp_path / "w1", env, *args)
    try:
        run.wait_running()
        assert len(trains(port)) == 3
        procs = run.processes()
        pids = [pid for pid, _ in procs]
        assert len(procs) == 3, run.output  # the three servers
        wait_until(lambda: segments(pids), 30, "frames travelling in shared memory")
        t0 = time.monotonic()
        run.proc.send_signal(getattr(signal, signame))
        wait_until(
            lambda: run.proc.poll() is not None and not alive(procs),
            10,
            f"every process of the run gone after {signame}",
        )
        print(f"{signame} {' '.join(args)}: all gone after {time.monotonic() - t0:.1f} s")
    finally:
        run.stop()
    output = run.finish()
    if signame != "SIGKILL":
        assert run.proc.returncode == 0, output
        assert "Traceback" not in output
        assert not runstate.state_path("lifecycle").exists()
    assert segments(pids) == []
    assert processes_using(tmp_path / "w1") == []
    # the DAQ run was closed: its files were renamed from .part to their final names
    assert list((tmp_path / "raw").rglob("*.h5"))
    assert list((tmp_path / "raw").rglob("*.part")) == []

    again = Run(topology, tmp_path / "w2", env)
    try:
        again.wait_running()
        assert len(trains(port)) == 3
        if signame == "SIGKILL":  # the dead run's state file was cleaned and named
            assert "leftovers of a run of topology 'lifecycle' that died" in again.output
            assert f"supervisor pid {run.proc.pid}" in again.output
    finally:
        again.stop()
    assert again.proc.returncode == 0, again.finish()


# ---------------------------------------------------------------- failed starts

FAILING = """
[devices."LC/FAILING"]
class = "lifecycle_devices:FailingInit"
server = "out"
config = { reason = "injected start failure 7" }

[[connections]]
from = "LC/WORK:output"
to = "LC/FAILING:input"
"""


@pytest.mark.slow
def test_a_device_failing_mid_start_takes_everything_down(tmp_path, env):
    topology = make_topology(tmp_path, free_port(), FAILING)
    run = Run(topology, tmp_path / "w", env)
    seen = watch_children(run)
    line = one_line(run.finish())
    assert run.proc.returncode == 1
    assert "LC/FAILING" in line and "injected start failure 7" in line, line
    assert "ERROR" in line
    assert len(seen) >= 3  # the servers had been started
    wait_until(lambda: not alive(seen), 10, "the started servers gone")
    assert processes_using(tmp_path / "w") == []
    assert segments([pid for pid, _ in seen]) == []
    assert not runstate.state_path("lifecycle").exists()  # never announced
    assert not (tmp_path / "w" / "state.json").exists()


@pytest.mark.slow
def test_a_refused_device_configuration_exits_2_with_one_line(tmp_path, env):
    text = make_topology(tmp_path, free_port()).read_text()
    text = text.replace('class = "Passthrough"', 'class = "Passthrough"\nconfig = { nonsense = 1 }')
    topology = tmp_path / "lifecycle.toml"
    topology.write_text(text)
    run = Run(topology, tmp_path / "w", env)
    seen = watch_children(run)
    line = one_line(run.finish())
    assert run.proc.returncode == 2
    assert "LC/WORK" in line and "nonsense" in line, line
    wait_until(lambda: not alive(seen), 10, "the started servers gone")
    assert processes_using(tmp_path / "w") == []


@pytest.mark.slow
def test_a_taken_bridge_port_fails_the_start_naming_the_port(tmp_path, env):
    port = free_port()
    topology = make_topology(tmp_path, port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        t0 = time.monotonic()
        run = Run(topology, tmp_path / "w", env)
        seen = watch_children(run)
        output = run.finish()
        elapsed = time.monotonic() - t0
    assert run.proc.returncode != 0
    assert elapsed < 30, f"took {elapsed:.0f} s"
    assert str(port) in output and "Traceback" not in output, output
    assert "running" not in output  # nothing was announced
    wait_until(lambda: not alive(seen), 10, "the started servers gone")
    assert processes_using(tmp_path / "w") == []
    assert not runstate.state_path("lifecycle").exists()


# ---------------------------------------------------------------- a running topology

LEAKING = """
[servers.leak]
memory_limit_mb = {limit}

[devices."LC/LEAK"]
class = "FaultInjector"
server = "leak"
config = {{ fault = "leak", leak_mb = 40.0, after_trains = 20 }}

[[connections]]
from = "LC/SOURCE:output"
to = "LC/LEAK:input"
"""


def ctl_list(env: dict[str, str]) -> dict | None:
    out = subprocess.run(
        [sys.executable, "-m", "pulsetrain", "ctl", "lifecycle", "list"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return json.loads(out.stdout) if out.returncode == 0 else None


@pytest.mark.slow
def test_a_second_run_is_refused_and_restarts_are_listed(tmp_path, env):
    port = free_port()
    # a server holds about 100 MB; the leak (40 MB a train) passes 300 MB within a second
    topology = make_topology(tmp_path, port, LEAKING.format(limit=300))
    run = Run(topology, tmp_path / "w1", env)
    try:
        run.wait_running()
        token = tmp_path / "w1" / "token"
        assert token.stat().st_mode & 0o777 == 0o600

        second = subprocess.run(
            [sys.executable, "-m", "pulsetrain", "run", str(topology)],
            check=False,
            capture_output=True,
            text=True,
            env={**env, "TMPDIR": str(tmp_path)},
            timeout=60,
        )
        assert second.returncode == 1
        line = one_line(second.stdout + second.stderr)
        assert f"pid {run.proc.pid}" in line and "already running" in line, line
        assert len(trains(port)) == 3  # the first run is untouched

        state = json.loads(runstate.state_path("lifecycle").read_text())
        victim = state["servers"]["work"]["pid"]
        os.kill(victim, signal.SIGKILL)
        work = wait_until(
            lambda: (listing := ctl_list(env)) and listing["work"]["restarts"] >= 1 and listing,
            60,
            "the restart of server 'work' in `ctl list`",
        )["work"]
        assert work["last_restart"]["cause"] == "killed by SIGKILL"
        assert work["pid"] != victim
        assert work["devices"]["LC/DAQ"]["state"] in ("ON", "ACQUIRING")
        assert "WARNING" in run.output
        assert "restarting server work (restart 1): killed by SIGKILL" in run.output
        gui = GuiBackend(TopologyClient.for_topology("lifecycle"), devices=["LC/DAQ", "LC/SOURCE"])
        try:  # the GUI's device table shows the same (read from the state file)
            gui._poll_once()
            assert gui.restarts("LC/DAQ") == (work["restarts"], "killed by SIGKILL")
            assert gui.restarts("LC/SOURCE") == (0, None)
        finally:
            gui.stop()

        leak = wait_until(
            lambda: (listing := ctl_list(env)) and listing["leak"]["restarts"] >= 1 and listing,
            120,
            "the memory-limit restart of server 'leak' in `ctl list`",
        )["leak"]
        assert leak["last_restart"]["cause"].startswith("memory limit"), leak
        assert "restarting server leak (restart 1): memory limit" in run.output
        assert len(trains(port)) == 3
    finally:
        run.stop()
    assert run.proc.returncode == 0, run.finish()


# ---------------------------------------------------------------- the parts, in this process


def test_the_run_lock_refuses_a_second_holder_naming_the_pid(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    lock = runstate.RunLock.acquire("t")
    try:
        with pytest.raises(AlreadyRunningError, match=f"supervisor pid {os.getpid()}"):
            runstate.RunLock.acquire("t")
    finally:
        lock.release()
    runstate.RunLock.acquire("t").release()  # free again
    assert runstate.lock_path("t").read_text() == ""  # a clean stop leaves nothing to clean


def test_leftovers_of_a_dead_run_are_cleaned_and_named(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that is gone
    segment = shmem.SHM_DIR / f"pulsetrain-{dead.pid}-0123456789ab-1"
    segment.write_bytes(b"x")
    state = {"pid": dead.pid, "servers": {"s": {"pid": dead.pid, "pid_started": 1.0}}}
    runstate.write_state(runstate.state_path("t"), state)
    lock = runstate.RunLock.acquire("t")
    try:
        done = runstate.clean_leftovers("t", lock.previous)
    finally:
        lock.release()
    assert not segment.exists()
    assert not runstate.state_path("t").exists()
    assert any("state file" in d for d in done) and any(segment.name in d for d in done)
    assert f"supervisor pid {dead.pid}" in caplog.text


def test_a_server_whose_parent_is_already_gone_exits_at_once(tmp_path):
    token = tmp_path / "token"
    token.write_text("secret")
    not_my_parent = 1
    out = subprocess.run(
        [sys.executable, "-m", "pulsetrain", "server", "--name", "orphan"]
        + ["--token-file", str(token), "--parent-pid", str(not_my_parent)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == lifetime.EXIT_ORPHANED, out.stderr
    assert "parent process 1 is gone" in out.stderr


def test_exit_codes_are_described():
    assert lifetime.describe_exit(lifetime.EXIT_MEMORY_LIMIT).startswith("memory limit")
    assert lifetime.describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert lifetime.describe_exit(3) == "exited with code 3"


def test_a_state_file_of_a_dead_supervisor_is_not_a_running_topology(tmp_path, monkeypatch):
    from pulsetrain.errors import PulsetrainError
    from pulsetrain.runtime.control import TopologyClient

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runstate.write_state(runstate.state_path("t"), {"pid": dead.pid, "servers": {}})
    assert runstate.state_path("t").stat().st_mode & 0o777 == 0o600
    with pytest.raises(PulsetrainError, match=f"supervisor \\(pid {dead.pid}\\) is gone"):
        TopologyClient.for_topology("t")
    with pytest.raises(PulsetrainError, match="is not running"):
        TopologyClient.for_topology("other")
