"""Start, supervise and stop a topology: what ``pulsetrain run`` does.

The supervisor starts one process per local server (``pulsetrain server``), instantiates every
device through the control plane, and then watches: a server process that exits, or stops
answering pings for ``ping_timeout`` seconds, is restarted on the same endpoints and its devices
are created again with the same configuration, so their peers reconnect by themselves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pulsetrain import shmem
from pulsetrain.control import Client, new_token
from pulsetrain.errors import ConfigurationError, PulsetrainError
from pulsetrain.topology import Topology, free_port

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)


class _ServerProcess:
    def __init__(self, name: str, control: str, events: str):
        self.name = name
        self.control = control
        self.events = events
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.last_ok = time.monotonic()


class Supervisor:
    """Run a topology.

    Parameters
    ----------
    topology : Topology or path
        What to run.
    token : str, optional
        The control token; a fresh one is generated if omitted and written to ``token_file``.
    workdir : path, optional
        Where logs and the token file go (a temporary directory by default).
    supervise_interval : float
        Seconds between health checks.
    ping_timeout : float
        Seconds without an answer after which a server counts as hung and is restarted.
    """

    def __init__(
        self,
        topology: Topology | str | Path,
        *,
        token: str | None = None,
        workdir: str | Path | None = None,
        supervise_interval: float = 0.5,
        ping_timeout: float = 10.0,
        env: dict[str, str] | None = None,
    ):
        self.topology = topology if isinstance(topology, Topology) else Topology.load(topology)
        self.topology.validate()
        self.token = token or new_token()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pulsetrain-run-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token_file = self.workdir / "token"
        self.token_file.write_text(self.token)
        os.chmod(self.token_file, 0o600)
        self.supervise_interval = supervise_interval
        self.ping_timeout = ping_timeout
        self.env = env or {}
        self.configs = self.topology.resolve()
        self.servers: dict[str, _ServerProcess] = {}
        self.restarts: list[tuple[float, str, str]] = []  # (time, server, reason)
        self._clients: dict[str, Client] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        for spec in self.topology.servers.values():
            if spec.local:
                host = "127.0.0.1"
                self.servers[spec.name] = _ServerProcess(
                    spec.name,
                    f"tcp://{host}:{free_port(host)}",
                    f"tcp://{host}:{free_port(host)}",
                )
            else:
                self.servers[spec.name] = _ServerProcess(spec.name, spec.endpoint, "")

    # ------------------------------------------------------------ access
    def client(self, server: str) -> Client:
        """A control client for one server (kept and reused)."""
        if server not in self._clients:
            self._clients[server] = Client(self.servers[server].control, token=self.token)
        return self._clients[server]

    def device_client(self, device_id: str) -> Client:
        """The control client of the server hosting ``device_id``."""
        try:
            return self.client(self.topology.devices[device_id].server)
        except KeyError:
            raise ConfigurationError(f"no device {device_id!r} in the topology") from None

    def get(self, device_id: str, key: str | None = None) -> Any:
        """A property of a device (any server)."""
        return self.device_client(device_id).get(device_id, key)

    def set(self, device_id: str, key: str, value: Any) -> Any:
        """Set a property of a device (any server)."""
        return self.device_client(device_id).set(device_id, key, value)

    def call(self, device_id: str, slot: str, *args: Any) -> Any:
        """Call a slot of a device (any server)."""
        return self.device_client(device_id).call(device_id, slot, *args)

    def endpoints(self) -> dict[str, str]:
        """Output channel ID → endpoint."""
        out = {}
        for device_id, cfg in self.configs.items():
            for name, ocfg in cfg.get("outputs", {}).items():
                out[f"{device_id}:{name}"] = ocfg["bind"][0]
        return out

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60.0) -> Supervisor:
        """Start the servers and devices; returns when every device is instantiated."""
        for sp in self.servers.values():
            if self.topology.servers[sp.name].local:
                self._spawn(sp)
        deadline = time.monotonic() + timeout
        for sp in self.servers.values():
            self._wait_ping(sp, deadline)
            self._send_directory(sp.name)
        for sp in self.servers.values():
            self._instantiate(sp.name)
        self.wait_connected(max(1.0, deadline - time.monotonic()))
        self._write_state()
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float = 30.0) -> bool:
        """Wait until every connection of the topology is established (inputs connect
        asynchronously; a train written before its consumer connected is not delivered).
        Returns whether all are; logs the missing ones otherwise."""
        expected: dict[str, int] = {}
        for conn in self.topology.connections:
            expected[conn.output] = expected.get(conn.output, 0) + 1
        deadline = time.monotonic() + timeout
        missing = dict(expected)
        while missing and time.monotonic() < deadline:
            for ref, n in list(missing.items()):
                device, _, channel = ref.rpartition(":")
                try:
                    conns = self.get(device, f"channels.outputs.{channel}.connections")
                except Exception:
                    continue
                if len(conns) >= n:
                    del missing[ref]
            if missing:
                time.sleep(0.05)
        if missing:
            log.warning("connections not established after %.0f s: %s", timeout, sorted(missing))
        return not missing

    def state(self) -> dict[str, Any]:
        """What clients need to find a running topology (written to ``state.json``)."""
        return {
            "topology": self.topology.name,
            "pid": os.getpid(),
            "token_file": str(self.token_file),
            "servers": {n: {"control": sp.control, "events": sp.events}
                        for n, sp in self.servers.items()},
            "devices": {d.device_id: {"class": d.class_name, "server": d.server}
                        for d in self.topology.devices.values()},
            "outputs": self.endpoints(),
        }

    @staticmethod
    def state_path(topology_name: str) -> Path:
        """Where a running topology announces itself: ``$XDG_RUNTIME_DIR`` or the temp dir."""
        base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        return Path(base) / f"pulsetrain-{os.getuid()}" / f"{topology_name}.json"

    def _write_state(self) -> None:
        text = json.dumps(self.state(), indent=2)
        (self.workdir / "state.json").write_text(text)
        path = self.state_path(self.topology.name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(text)

    def stop(self, timeout: float = 15.0) -> None:
        """Shut everything down: devices, then server processes (killed if they do not exit)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            path = self.state_path(self.topology.name)
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sp in self.servers.values():
            if not self.topology.servers[sp.name].local:
                for dev in self.topology.devices_on(sp.name):
                    with contextlib.suppress(Exception):
                        self.client(sp.name).kill(dev.device_id)
                continue
            if sp.proc is not None and sp.proc.poll() is None:
                with contextlib.suppress(Exception):
                    self.client(sp.name).request("shutdown", timeout=2)
        deadline = time.monotonic() + timeout
        for sp in self.servers.values():
            if sp.proc is None:
                continue
            try:
                sp.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                sp.proc.terminate()
                try:
                    sp.proc.wait(3)
                except subprocess.TimeoutExpired:
                    sp.proc.kill()
                    sp.proc.wait()
        for c in self._clients.values():
            c.close()
        shmem.remove_stale_segments()  # of servers that had to be killed

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def run_forever(self) -> None:
        """Block until SIGINT/SIGTERM, then stop cleanly."""
        stop = threading.Event()

        def handler(signum: int, frame: Any) -> None:
            stop.set()

        old_int = signal.signal(signal.SIGINT, handler)
        old_term = signal.signal(signal.SIGTERM, handler)
        try:
            while not stop.wait(0.5):
                pass
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            self.stop()

    def pid(self, server: str) -> int | None:
        """Process ID of a local server."""
        proc = self.servers[server].proc
        return proc.pid if proc is not None else None

    # ------------------------------------------------------------ internals
    def _spawn(self, sp: _ServerProcess) -> None:
        shmem.remove_stale_segments()  # a server that died cannot have removed its own
        spec = self.topology.servers[sp.name]
        cmd = [
            sys.executable, "-m", "pulsetrain", "server",
            "--name", sp.name,
            "--bind", sp.control,
            "--events-bind", sp.events,
            "--token-file", str(self.token_file),
        ]
        if spec.memory_limit_mb:
            cmd += ["--memory-limit-mb", str(spec.memory_limit_mb)]
        # Parallelism comes from processes; numba/OpenMP threads that spin while idle would
        # starve the other servers on a small machine.  A server's env can override this.
        defaults = {"NUMBA_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        env = {**defaults, **os.environ, **self.env, **spec.env}
        logfile = open(self.workdir / f"server-{sp.name}.log", "ab")  # noqa: SIM115
        sp.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=logfile, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        logfile.close()
        sp.last_ok = time.monotonic()
        log.info("started server %s (pid %d) on %s", sp.name, sp.proc.pid, sp.control)

    def _wait_ping(self, sp: _ServerProcess, deadline: float) -> None:
        client = self.client(sp.name)
        while True:
            if sp.proc is not None and sp.proc.poll() is not None:
                raise PulsetrainError(
                    f"server {sp.name} exited with code {sp.proc.returncode}; "
                    f"see {self.workdir / f'server-{sp.name}.log'}"
                )
            try:
                client.request("ping", timeout=1.0)
                sp.last_ok = time.monotonic()
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise PulsetrainError(f"server {sp.name} does not answer on {sp.control}")

    def directory(self) -> dict[str, str]:
        """Device ID → control endpoint of its server."""
        return {d.device_id: self.servers[d.server].control for d in self.topology.devices.values()}

    def _send_directory(self, server: str) -> None:
        self.client(server).request("directory", value=self.directory())

    def _instantiate(self, server: str) -> None:
        client = self.client(server)
        for dev in self.topology.devices_on(server):
            client.instantiate(dev.class_name, dev.device_id, self.configs[dev.device_id])

    def _restart(self, sp: _ServerProcess, reason: str) -> None:
        log.warning("restarting server %s: %s", sp.name, reason)
        self.restarts.append((time.time(), sp.name, reason))
        sp.restarts += 1
        if sp.proc is not None and sp.proc.poll() is None:
            sp.proc.kill()
            sp.proc.wait()
        self._spawn(sp)
        self._wait_ping(sp, time.monotonic() + 30)
        self._send_directory(sp.name)
        self._instantiate(sp.name)

    def _supervise(self) -> None:
        while not self._stop.wait(self.supervise_interval):
            for sp in self.servers.values():
                if self._stop.is_set():
                    return
                local = self.topology.servers[sp.name].local
                try:
                    if local and sp.proc is not None and sp.proc.poll() is not None:
                        self._restart(sp, f"process exited with code {sp.proc.returncode}")
                        continue
                    info = self.client(sp.name).request("ping", timeout=1.0)
                    sp.last_ok = time.monotonic()
                    missing = [d.device_id for d in self.topology.devices_on(sp.name)
                               if d.device_id not in info["devices"]]
                    if missing and not local:  # a remote server restarted on its own
                        log.warning("server %s lost devices %s; re-creating", sp.name, missing)
                        self._send_directory(sp.name)
                        self._instantiate_missing(sp.name, missing)
                except TimeoutError:
                    if local and time.monotonic() - sp.last_ok > self.ping_timeout:
                        with contextlib.suppress(Exception):
                            self._restart(sp, f"no answer for {self.ping_timeout} s")
                except Exception:
                    log.exception("supervising %s failed", sp.name)

    def _instantiate_missing(self, server: str, device_ids: list[str]) -> None:
        client = self.client(server)
        for device_id in device_ids:
            dev = self.topology.devices[device_id]
            client.instantiate(dev.class_name, device_id, self.configs[device_id])
