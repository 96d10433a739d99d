"""Start, supervise and stop a topology: what ``pulsetrain run`` does.

The supervisor takes the topology's run lock (one supervisor per topology and host; see
:mod:`pulsetrain.runtime.runstate`), cleans what a run of it that died left behind, starts one process
per local server (``pulsetrain server``), instantiates every device through the control plane,
and only when every device exists and none is in ERROR announces the topology (its state file).
A start that fails part-way stops everything it started and raises one clear error.

Then it watches: a server process that exits, or stops answering pings for ``ping_timeout``
seconds, is restarted on the same endpoints and its devices are created again with the same
configuration, so their peers reconnect by themselves.  Restarts are counted per server, with
their cause, in the state file and in the log (WARNING).

Servers never outlive the supervisor: each is told the supervisor's pid and exits by itself when
it is gone (:class:`pulsetrain.runtime.lifetime.ServerLifetime`), however the supervisor ended.

*Remote* servers (a topology's ``[servers.x] endpoint = ...``) are started by something else -
systemd, a SLURM job, a person - and wait.  The supervisor takes each one's *lease*
(:mod:`pulsetrain.runtime.server`), renews it from a thread of its own per server every
``supervise_interval`` and creates the server's devices under it.  A renewal that finds devices
missing (the server was restarted by its host) creates them again with the same configuration;
a server that does not answer for ``ping_timeout`` seconds is reported unreachable in the state
file (``reachable: false``, ``unreachable_since``) and in the log, and the rest of the topology
keeps running.  When the supervisor ends, however it ends, the remote servers stop the run's
devices: at once when it stops cleanly (it releases the lease), after ``lease_ttl`` seconds
without renewal when it is killed.  They need the supervisor's token: the one given, or
``$PULSETRAIN_TOKEN`` / ``$PULSETRAIN_TOKEN_FILE``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from pulsetrain.errors import (
    AlreadyRunningError,
    ConfigurationError,
    PulsetrainError,
    StartupError,
)
from pulsetrain.runtime import lifetime, runstate, shmem
from pulsetrain.runtime.control import Client, new_token, token_from_env
from pulsetrain.runtime.ports import free_port
from pulsetrain.runtime.topology import Topology

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)


class _ServerProcess:
    def __init__(self, name: str, control: str, events: str, remote: bool = False):
        self.name = name
        self.control = control
        self.events = events
        self.remote = remote
        self.remote_pid: int | None = None  # a remote server's pid on its host
        self.reachable = True
        self.unreachable_since: float | None = None  # time.time() of the last good answer
        self.lease_problem: str | None = None
        self.creating: set[str] = set()  # devices being created again on a remote server
        self.proc: subprocess.Popen | None = None
        self.started: float | None = None  # create time of the process (identifies the pid)
        self.restarts = 0
        self.last_cause: str | None = None
        self.last_restart: float | None = None
        self.last_ok = time.monotonic()


class _Stopping(Exception):
    """Raised inside a restart when the supervisor is stopping."""


class Supervisor:
    """Run a topology.

    Parameters
    ----------
    topology : Topology or path
        What to run.
    token : str, optional
        The control token; a fresh one is generated if omitted and written to ``token_file``.
    workdir : path, optional
        Where logs, the token file and a copy of the state file go (a temporary directory by
        default).
    supervise_interval : float
        Seconds between health checks.
    ping_timeout : float
        Seconds without an answer after which a server counts as hung and is restarted.
    env : dict, optional
        Environment variables for every server process.
    may_fail : collection of str
        IDs of devices that may be in ERROR after the start (a test of that ERROR, say); any
        other device in ERROR fails the start.
    lease_ttl : float
        Seconds a remote server keeps this run's devices without hearing from the supervisor
        (longer than any network outage the run should ride out).
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
        may_fail: Collection[str] = (),
        lease_ttl: float = 10.0,
    ):
        self.topology = topology if isinstance(topology, Topology) else Topology.load(topology)
        runstate.RunLock.check_free(self.topology.name)  # before the ports it holds are checked
        self.topology.validate()
        remote = sorted(n for n, spec in self.topology.servers.items() if not spec.local)
        if remote:
            token = token or token_from_env()
            if not token:
                raise ConfigurationError(
                    f"topology {self.topology.name!r} has remote servers ({', '.join(remote)}): "
                    "give their control token (--token-file, $PULSETRAIN_TOKEN or "
                    "$PULSETRAIN_TOKEN_FILE)"
                )
        if not lease_ttl > 0:
            raise ConfigurationError(f"lease_ttl must be > 0, not {lease_ttl!r}")
        self.token = token or new_token()
        self.lease_ttl = float(lease_ttl)
        #: Who holds the remote servers' leases: unique per supervisor.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.lease_info = {
            "topology": self.topology.name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="pulsetrain-run-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token_file = self.workdir / "token"  # written by start(), once the run is ours
        self.supervise_interval = supervise_interval
        self.ping_timeout = ping_timeout
        self.env = env or {}
        self.may_fail = frozenset(may_fail)
        self.configs = self.topology.resolve()
        self.servers: dict[str, _ServerProcess] = {}
        self.restarts: list[tuple[float, str, str]] = []  # (time, server, cause)
        self._clients: dict[str, Client] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()  # spawning vs stopping
        self._stop_lock = threading.Lock()
        self._stopping_thread: int | None = None
        self._stopped = False
        self._run_lock: runstate.RunLock | None = None
        self._announced = False
        self._pids: set[int] = set()  # every server process started, for their shm segments
        for spec in self.topology.servers.values():
            if spec.local:
                host = "127.0.0.1"
                self.servers[spec.name] = _ServerProcess(
                    spec.name,
                    f"tcp://{host}:{free_port(host)}",
                    f"tcp://{host}:{free_port(host)}",
                )
            else:
                self.servers[spec.name] = _ServerProcess(spec.name, spec.endpoint, "", remote=True)
        self._watchers: list[threading.Thread] = []

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

    def pid(self, server: str) -> int | None:
        """Process ID of a local server."""
        proc = self.servers[server].proc
        return proc.pid if proc is not None else None

    def directory(self) -> dict[str, str]:
        """Device ID → control endpoint of its server."""
        return {d.device_id: self.servers[d.server].control for d in self.topology.devices.values()}

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60.0) -> Supervisor:
        """Start the servers and devices; returns when every device is instantiated, connected
        and none is in ERROR, after announcing the topology (its state file).

        Raises
        ------
        AlreadyRunningError
            The topology is already running on this host (nothing was started).
        ConfigurationError
            A device refused its configuration (everything started was stopped again).
        StartupError
            A server did not come up, or a device is in ERROR after start (everything started
            was stopped again).
        """
        if self._run_lock is not None or self._stopped:
            raise PulsetrainError("a supervisor starts once; make a new one to run again")
        self._run_lock = runstate.RunLock.acquire(self.topology.name)
        try:
            runstate.clean_leftovers(self.topology.name, self._run_lock.previous)
            self._write_token()
            self._start(time.monotonic() + timeout)
        except TimeoutError as exc:  # a server stopped answering while starting
            self.stop()
            raise StartupError(f"topology {self.topology.name!r} did not start: {exc}") from None
        except _Stopping:  # stop() was called from another thread
            self.stop()
            raise StartupError(f"topology {self.topology.name!r}: stopped while starting") from None
        except BaseException:  # including KeyboardInterrupt from a stop signal
            self.stop()
            raise
        return self

    def serve(
        self,
        duration: float | None = None,
        on_started: Callable[[Supervisor], Any] | None = None,
        timeout: float = 60.0,
    ) -> int | None:
        """Start, run until SIGINT, SIGTERM or SIGHUP (or for ``duration`` seconds), and stop.

        A stop signal during the start aborts it (everything started is stopped).  Returns the
        signal that stopped the run, or None when ``duration`` ran out.  ``on_started(self)`` is
        called once the topology runs (to announce it).
        """
        with lifetime.stop_signals() as signals:
            try:
                self.start(timeout)
                if on_started is not None:
                    on_started(self)
                if duration is None:
                    while True:
                        time.sleep(3600)
                else:
                    time.sleep(duration)
            except KeyboardInterrupt:
                if not signals.received:
                    raise
            finally:
                self.stop()
        return signals.signum

    def stop(self, timeout: float = 4.0) -> None:
        """Stop everything this supervisor started: its servers in parallel, with their devices.

        Local servers get SIGTERM (they stop their devices, closing open runs, and exit); those
        still running after ``timeout`` seconds are killed, and the shared-memory segments of
        every server process are removed.  Devices on remote servers are killed.  The state file
        is removed and the run lock released.  Bounded (about ``timeout`` + 3 s), idempotent,
        safe to call from any thread and after a failed or interrupted start; a stop signal
        arriving meanwhile does not interrupt it.
        """
        lifetime.begin_stop()
        if self._stopping_thread == threading.get_ident():
            return  # re-entered (e.g. from a handler while stopping)
        with self._stop_lock:
            if self._stopped:
                return
            self._stopping_thread = threading.get_ident()
            try:
                self._stop_all(timeout)
            finally:
                self._stopped = True
                self._stopping_thread = None

    def __enter__(self) -> Supervisor:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
                except (PulsetrainError, TimeoutError):
                    continue  # not there yet: asked again
                if len(conns) >= n:
                    del missing[ref]
            if missing:
                time.sleep(0.05)
        if missing:
            log.warning("connections not established after %.0f s: %s", timeout, sorted(missing))
        return not missing

    def state(self) -> dict[str, Any]:
        """What clients need to find a running topology (written to ``state.json``)."""
        servers = {}
        for name, sp in self.servers.items():
            servers[name] = {
                "control": sp.control,
                "events": sp.events,
                "pid": sp.proc.pid if sp.proc is not None else None,
                "pid_started": sp.started,
                "restarts": sp.restarts,
                "last_restart": (
                    {"time": sp.last_restart, "cause": sp.last_cause}
                    if sp.last_restart is not None
                    else None
                ),
            }
            if sp.remote:
                servers[name].update(
                    remote=True,
                    remote_pid=sp.remote_pid,
                    reachable=sp.reachable,
                    unreachable_since=sp.unreachable_since,
                    lease_problem=sp.lease_problem,
                )
        return {
            "topology": self.topology.name,
            "pid": os.getpid(),
            "workdir": str(self.workdir),
            "token_file": str(self.token_file),
            "servers": servers,
            "devices": {
                d.device_id: {"class": d.class_name, "server": d.server}
                for d in self.topology.devices.values()
            },
            "outputs": self.endpoints(),
        }

    # ------------------------------------------------------------ starting
    def _write_token(self) -> None:
        """The token file, readable by this user only from the moment it exists."""
        with contextlib.suppress(FileNotFoundError):
            self.token_file.unlink()  # of an earlier run in the same workdir
        fd = os.open(self.token_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token)

    def _start(self, deadline: float) -> None:
        for sp in self.servers.values():
            if self.topology.servers[sp.name].local:
                self._spawn(sp)
        for sp in self.servers.values():
            self._wait_ping(sp, deadline)
            if sp.remote:
                self._take_lease(sp, deadline)
            self._send_directory(sp.name)
        self._instantiate_all(deadline)
        self._check_devices()
        self.wait_connected(max(1.0, deadline - time.monotonic()))
        self._check_devices()  # a device that failed while its peers connected
        self._announce()
        self._thread = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._thread.start()
        for sp in self.servers.values():
            if sp.remote:
                t = threading.Thread(
                    target=self._watch_remote, args=(sp,), name=f"lease:{sp.name}", daemon=True
                )
                self._watchers.append(t)
                t.start()

    def _announce(self) -> None:
        """Write the state file (the topology is reachable from now on)."""
        state = self.state()
        runstate.write_state(self.workdir / "state.json", state)
        runstate.write_state(runstate.state_path(self.topology.name), state)
        self._announced = True

    def _spawn(self, sp: _ServerProcess) -> None:
        shmem.remove_stale_segments()  # a server that died cannot have removed its own
        spec = self.topology.servers[sp.name]
        cmd = [sys.executable, "-m", "pulsetrain", "server", "--name", sp.name]
        cmd += ["--bind", sp.control, "--events-bind", sp.events]
        cmd += ["--token-file", str(self.token_file), "--parent-pid", str(os.getpid())]
        if spec.memory_limit_mb:
            cmd += ["--memory-limit-mb", str(spec.memory_limit_mb)]
        # Parallelism comes from processes; numba/OpenMP threads that spin while idle would
        # starve the other servers on a small machine.  A server's env can override this.
        defaults = {"NUMBA_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        env = {**defaults, **os.environ, **self.env, **spec.env}
        with self._lock:
            if self._stop.is_set():
                raise _Stopping()
            with open(self.workdir / f"server-{sp.name}.log", "ab") as logfile:
                # its own session: Ctrl-C in the terminal reaches the supervisor only, which
                # then stops the servers in order
                sp.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            self._pids.add(sp.proc.pid)
        sp.started = _create_time(sp.proc.pid)
        sp.last_ok = time.monotonic()
        if self._run_lock is not None:  # what the next run cleans if this one dies
            self._run_lock.record(
                servers={
                    s.name: [s.proc.pid, s.started]
                    for s in self.servers.values()
                    if s.proc is not None
                }
            )
        log.info("started server %s (pid %d) on %s", sp.name, sp.proc.pid, sp.control)

    def _server_log(self, name: str) -> Path:
        return self.workdir / f"server-{name}.log"

    def _wait_ping(self, sp: _ServerProcess, deadline: float) -> None:
        client = self.client(sp.name)
        while True:
            if self._stop.is_set():
                raise _Stopping()
            if sp.proc is not None and sp.proc.poll() is not None:
                last = _last_line(self._server_log(sp.name))
                raise StartupError(
                    f"server {sp.name!r} {lifetime.describe_exit(sp.proc.returncode)} while "
                    f"starting{f': {last}' if last else ''} "
                    f"(log: {self._server_log(sp.name)})"
                )
            try:
                client.request("ping", timeout=1.0)
                sp.last_ok = time.monotonic()
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"server {sp.name!r} does not answer on {sp.control} "
                        f"(log: {self._server_log(sp.name)})"
                    ) from None

    def _take_lease(self, sp: _ServerProcess, deadline: float) -> None:
        """Take a remote server's lease, waiting while an earlier run's lease runs out."""
        while True:
            if self._stop.is_set():
                raise _Stopping()
            try:
                status = self.client(sp.name).lease(
                    self.owner, self.lease_ttl, self.lease_info, timeout=2.0
                )
                sp.remote_pid = status.get("pid")
                return
            except AlreadyRunningError as exc:
                if time.monotonic() > deadline:
                    raise StartupError(f"remote server {sp.name!r}: {exc}") from None
                log.info("waiting for remote server %s: %s", sp.name, exc)
                time.sleep(0.5)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"remote server {sp.name!r} does not answer on {sp.control}"
                    ) from None

    def _send_directory(self, server: str) -> None:
        self.client(server).request("directory", value=self.directory())

    def _instantiate_all(self, deadline: float) -> None:
        """Create every device, the servers in parallel; raise for the first that failed."""
        outcome: dict[str, Any] = {}  # device ID → reply or exception

        def create(server: str) -> None:
            # its own client: the main thread may give up on this thread (stop signal, deadline)
            with Client(self.servers[server].control, token=self.token) as client:
                for dev in self.topology.devices_on(server):
                    if self._stop.is_set():
                        return
                    try:
                        reply = client.instantiate(
                            dev.class_name,
                            dev.device_id,
                            self.configs[dev.device_id],
                            owner=self._owner_on(server),
                        )
                    except Exception as exc:  # noqa: BLE001 - reported as the start's failure
                        outcome[dev.device_id] = exc
                        return
                    outcome[dev.device_id] = reply
                    if self._failed(dev.device_id, reply):
                        return

        threads = [
            threading.Thread(target=create, args=(name,), name=f"create:{name}", daemon=True)
            for name in self.servers
            if self.topology.devices_on(name)
        ]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive() and time.monotonic() < deadline:
                t.join(0.1)
        for dev in self.topology.devices.values():
            where = f"device {dev.device_id!r} ({dev.class_name}) on server {dev.server!r}"
            result = outcome.get(dev.device_id)
            if isinstance(result, ConfigurationError):
                raise ConfigurationError(f"{where} refused its configuration: {result}")
            if isinstance(result, TimeoutError):
                raise StartupError(f"{where} was not created in time: {result}")
            if isinstance(result, Exception):
                raise StartupError(f"{where} could not be created: {result}")
            if self._failed(dev.device_id, result):
                raise StartupError(f"{where} is in ERROR: {result.get('status') or 'no status'}")
        missing = [d for d in self.topology.devices if d not in outcome]
        if missing:
            raise StartupError(
                f"devices not created in time: {', '.join(missing)} (see the server logs in "
                f"{self.workdir})"
            )

    def _owner_on(self, server: str) -> str | None:
        """The lease under which devices are created on ``server`` (None: a local server)."""
        return self.owner if self.servers[server].remote else None

    def _check_devices(self) -> None:
        """Raise for the first device that is not there or in ERROR."""
        for name in self.servers:
            devices = self.topology.devices_on(name)
            if not devices:
                continue
            listing = self.client(name).list()
            for dev in devices:
                where = f"device {dev.device_id!r} ({dev.class_name}) on server {name!r}"
                info = listing.get(dev.device_id)
                if info is None:
                    raise StartupError(f"{where} is gone after start")
                if self._failed(dev.device_id, info):
                    raise StartupError(f"{where} is in ERROR: {info.get('status') or 'no status'}")

    def _failed(self, device_id: str, info: Any) -> bool:
        """Whether a device's ``{'state', 'status'}`` fails the start."""
        return (
            isinstance(info, dict)
            and info.get("state") == "ERROR"
            and device_id not in self.may_fail
        )

    # ------------------------------------------------------------ stopping
    def _stop_all(self, timeout: float) -> None:
        with self._lock:
            self._stop.set()  # no server is spawned after this
            procs = [
                sp.proc
                for sp in self.servers.values()
                if sp.proc is not None and sp.proc.poll() is None
            ]
        if self._announced:
            path = runstate.state_path(self.topology.name)
            with contextlib.suppress(OSError):
                if (runstate.read_state(path) or {}).get("pid") == os.getpid():
                    path.unlink()
        remote = [
            threading.Thread(target=self._release_remote, args=(name,), daemon=True)
            for name, sp in self.servers.items()
            if sp.remote
        ]
        for t in remote:
            t.start()
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.terminate()  # the server stops its devices and exits
        deadline = time.monotonic() + timeout
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
        late = [p for p in procs if p.poll() is None]
        for proc in late:
            log.warning("server pid %d did not stop in %.0f s: killed", proc.pid, timeout)
            with contextlib.suppress(OSError):
                proc.kill()
        for proc in late:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2.0)
        end = time.monotonic() + 1.0
        threads = [*remote, *self._watchers, *([self._thread] if self._thread else [])]
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        for pid in sorted(self._pids):
            if not runstate.pid_alive(pid):
                shmem.remove_segments_of(pid)  # of servers that had to be killed
        if not any(t.is_alive() for t in threads):
            for c in self._clients.values():
                c.close()
        if self._run_lock is not None:
            self._run_lock.release()

    def _release_remote(self, server: str) -> None:
        """End this run's lease on a remote server: it stops the run's devices at once (an
        unreachable server does so by itself when the lease runs out)."""
        with Client(self.servers[server].control, token=self.token, timeout=10.0) as client:
            try:
                client.release(self.owner)
            except (PulsetrainError, TimeoutError) as exc:
                log.warning(
                    "remote server %s: lease not released (%s); it stops the run's devices "
                    "within %.0f s by itself",
                    server,
                    exc,
                    self.lease_ttl,
                )

    # ------------------------------------------------------------ supervising
    def _restart(self, sp: _ServerProcess, cause: str) -> None:
        sp.restarts += 1
        sp.last_cause = cause
        sp.last_restart = time.time()
        self.restarts.append((sp.last_restart, sp.name, cause))
        log.warning("restarting server %s (restart %d): %s", sp.name, sp.restarts, cause)
        if sp.proc is not None and sp.proc.poll() is None:
            sp.proc.kill()
            sp.proc.wait()
        self._spawn(sp)
        self._wait_ping(sp, time.monotonic() + 30)
        self._send_directory(sp.name)
        self._instantiate(sp.name)
        self._announce()  # the new pid and the restart count

    def _instantiate(self, server: str) -> None:
        client = self.client(server)
        for dev in self.topology.devices_on(server):
            client.instantiate(
                dev.class_name, dev.device_id, self.configs[dev.device_id], self._owner_on(server)
            )

    def _supervise(self) -> None:
        while not self._stop.wait(self.supervise_interval):
            for sp in self.servers.values():
                if self._stop.is_set():
                    return
                if sp.remote:
                    continue  # watched by its own lease thread (_watch_remote)
                try:
                    if sp.proc is not None and sp.proc.poll() is not None:
                        self._restart(sp, lifetime.describe_exit(sp.proc.returncode))
                        continue
                    self.client(sp.name).request("ping", timeout=1.0)
                    sp.last_ok = time.monotonic()
                except _Stopping:
                    return
                except TimeoutError:
                    if time.monotonic() - sp.last_ok > self.ping_timeout:
                        with contextlib.suppress(_Stopping, PulsetrainError, TimeoutError):
                            self._restart(sp, f"no answer for {self.ping_timeout:g} s")
                except Exception:
                    if not self._stop.is_set():
                        log.exception("supervising %s failed", sp.name)

    def _watch_remote(self, sp: _ServerProcess) -> None:
        """Renew a remote server's lease; re-create its devices when they are missing; report
        it unreachable when it does not answer (one thread per remote server, so a server that
        hangs delays no other)."""
        with Client(sp.control, token=self.token) as client:
            pause = self.supervise_interval
            while not self._stop.wait(pause):
                pause = self.supervise_interval
                try:
                    status = client.lease(self.owner, self.lease_ttl, self.lease_info, timeout=1.0)
                except TimeoutError:
                    # Ask again at once: a request is then always waiting while the server is
                    # down, and a server that comes back (restarted by its host) answers it as
                    # soon as it listens - its devices are re-created without a pause between.
                    pause = 0.0
                    if sp.reachable and time.monotonic() - sp.last_ok > self.ping_timeout:
                        sp.reachable = False
                        sp.unreachable_since = time.time() - (time.monotonic() - sp.last_ok)
                        log.warning(
                            "remote server %s does not answer on %s for %.0f s: unreachable "
                            "(the rest of the topology keeps running)",
                            sp.name,
                            sp.control,
                            self.ping_timeout,
                        )
                        self._announce_quietly()
                    continue
                except PulsetrainError as exc:  # another run took it after our lease ran out
                    if sp.lease_problem != str(exc):
                        sp.lease_problem = str(exc)
                        log.error("remote server %s: %s", sp.name, exc)
                        self._announce_quietly()
                    continue
                except Exception:
                    if not self._stop.is_set():
                        log.exception("watching remote server %s failed", sp.name)
                    continue
                try:
                    self._on_lease_renewed(sp, client, status)
                except (PulsetrainError, TimeoutError) as exc:
                    if not self._stop.is_set():
                        log.warning("remote server %s: re-creating devices: %s", sp.name, exc)

    def _on_lease_renewed(self, sp: _ServerProcess, client: Client, status: dict) -> None:
        sp.last_ok = time.monotonic()
        changed = False
        if not sp.reachable:
            log.warning(
                "remote server %s answers again (unreachable for %.1f s)",
                sp.name,
                time.time() - (sp.unreachable_since or time.time()),
            )
            sp.reachable, sp.unreachable_since, changed = True, None, True
        if sp.lease_problem is not None:
            sp.lease_problem, changed = None, True
        pid = status.get("pid")
        missing = [
            d.device_id
            for d in self.topology.devices_on(sp.name)
            if d.device_id not in status.get("devices", ()) and d.device_id not in sp.creating
        ]
        if missing:
            cause = (
                f"restarted on its host (pid {sp.remote_pid} -> {pid})"
                if pid != sp.remote_pid
                else f"lost devices {', '.join(missing)}"
            )
            sp.restarts += 1
            sp.last_cause = cause
            sp.last_restart = time.time()
            self.restarts.append((sp.last_restart, sp.name, cause))
            log.warning("remote server %s %s: re-creating %d devices", sp.name, cause, len(missing))
            client.request("directory", value=self.directory())
            self._recreate(sp, missing)  # in the background: the lease is renewed meanwhile
            changed = True
        sp.remote_pid = pid
        if changed:
            self._announce_quietly()

    def _recreate(self, sp: _ServerProcess, device_ids: list[str]) -> None:
        """Create devices on a remote server again, all at once and in the background (the
        server creates them in parallel, and the lease keeps being renewed while a device takes
        long to initialise)."""

        def create(device_id: str) -> None:
            dev = self.topology.devices[device_id]
            try:
                with Client(sp.control, token=self.token) as c:
                    c.instantiate(dev.class_name, device_id, self.configs[device_id], self.owner)
            except (PulsetrainError, TimeoutError) as exc:
                if not self._stop.is_set():
                    log.warning("remote server %s: %s not re-created: %s", sp.name, device_id, exc)
            finally:
                sp.creating.discard(device_id)

        for device_id in device_ids:
            sp.creating.add(device_id)
            threading.Thread(
                target=create, args=(device_id,), name=f"create:{device_id}", daemon=True
            ).start()

    def _announce_quietly(self) -> None:
        """Update the state file (a failure to write it is logged, never raised)."""
        if self._stop.is_set():
            return
        try:
            self._announce()
        except OSError as exc:
            log.warning("state file not updated: %s", exc)


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _last_line(path: Path, limit: int = 300) -> str:
    """The last non-empty line of a log file (shortened), or ''."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    return lines[-1][:limit] if lines else ""
