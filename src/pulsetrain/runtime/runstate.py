"""The run state of a topology on this host: where a running topology announces itself, and the
lock that lets only one supervisor run it.

Two files per topology live in :func:`state_dir` (``$XDG_RUNTIME_DIR/pulsetrain-<uid>``, or the
temporary directory when that is not set; mode 700):

``<name>.json``, the *state file*
    What clients need to reach the running topology: the supervisor's pid, the token file, every
    server's control and events endpoints, pid and restart count, the devices and the output
    endpoints.  The supervisor writes it only once every device was created and none is in
    ERROR, rewrites it when a server is restarted, and removes it when it stops.  ``pulsetrain
    ctl``, ``pulsetrain gui`` and :class:`pulsetrain.runtime.control.TopologyClient` read it.

``<name>.lock``, the *lock file*
    Locked (``flock``) by the supervisor for its whole life, so a second supervisor of the same
    topology is refused; the kernel releases the lock when the process dies, however it dies.
    While locked it holds the supervisor's pid and the pids of the servers it started, so that
    what a run that died left behind (servers still exiting, shared-memory segments, the state
    file) can be found and cleaned by the next run, even if the run died while starting.
    A supervisor that stops cleanly empties it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pulsetrain.errors import AlreadyRunningError
from pulsetrain.runtime import shmem

__all__ = [
    "RunLock",
    "clean_leftovers",
    "find_server",
    "lock_path",
    "pid_alive",
    "read_state",
    "running_states",
    "state_dir",
    "state_path",
    "supervisor_alive",
    "write_state",
]

log = logging.getLogger(__name__)


def state_dir() -> Path:
    """The directory of the state and lock files (not created)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"pulsetrain-{os.getuid()}"


def state_path(topology: str) -> Path:
    """Where the running topology named ``topology`` announces itself."""
    return state_dir() / f"{topology}.json"


def lock_path(topology: str) -> Path:
    """The lock file of the topology named ``topology``."""
    return state_dir() / f"{topology}.lock"


def write_state(path: str | os.PathLike, state: Mapping[str, Any]) -> None:
    """Write a state file atomically (readers never see half of it), mode 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The content of a state file, or None if there is none (or it is unreadable)."""
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def pid_alive(pid: Any) -> bool:
    """Whether a process with this ID runs (a non-positive or non-integer ID: no)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def supervisor_alive(state: Mapping[str, Any]) -> bool:
    """Whether the supervisor that wrote ``state`` is still running."""
    return pid_alive(state.get("pid"))


def running_states() -> Iterator[tuple[Path, dict[str, Any]]]:
    """``(path, state)`` of every state file whose supervisor is alive."""
    for path in sorted(state_dir().glob("*.json")):
        state = read_state(path)
        if state is not None and supervisor_alive(state):
            yield path, state


def find_server(endpoint: str) -> tuple[dict[str, Any], str] | None:
    """The running topology's state and the server name whose control endpoint is ``endpoint``."""
    for _, state in running_states():
        for name, server in (state.get("servers") or {}).items():
            if isinstance(server, dict) and server.get("control") == endpoint:
                return state, name
    return None


class RunLock:
    """The lock that makes a supervisor the only one running a topology on this host.

    Use :meth:`acquire`; the lock is held until :meth:`release` or until the process exits.

    Attributes
    ----------
    previous : dict
        The record a run that died left in the lock file (empty if the last run stopped
        cleanly): its ``pid`` and ``servers`` (name → ``[pid, create_time]``).
    """

    def __init__(self, topology: str, fd: int, previous: dict[str, Any]):
        self.topology = topology
        self.path = lock_path(topology)
        self.previous = previous
        self._fd: int | None = fd
        self._record: dict[str, Any] = {}

    @classmethod
    def check_free(cls, topology: str) -> None:
        """Raise :class:`AlreadyRunningError` if a live process holds ``topology``'s lock.

        A probe only (the lock is not kept): validation calls it first, so a second run is
        refused for what it is, not for the ports the running one holds.
        """
        probe = cls.acquire(topology, record=False)
        fd, probe._fd = probe._fd, None
        os.close(fd)  # unlock, keeping a dead run's record for the run that cleans it

    @classmethod
    def acquire(cls, topology: str, *, record: bool = True) -> RunLock:
        """Lock ``topology`` for this process.

        Raises
        ------
        AlreadyRunningError
            Another live process holds the lock; the message names its pid.
        """
        path = lock_path(topology)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = _holder_pid(topology)
            who = f"supervisor pid {pid}" if pid else "another supervisor"
            hint = f"; stop it first (kill {pid})" if pid else ""
            raise AlreadyRunningError(
                f"topology {topology!r} is already running on this host ({who}){hint}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        previous = _parse(os.pread(fd, 1 << 20, 0))
        lock = cls(topology, fd, previous)
        if record:
            lock.record(pid=os.getpid(), topology=topology, started=time.time(), servers={})
        return lock

    def record(self, **fields: Any) -> None:
        """Update the record in the lock file (what the next run cleans if this one dies)."""
        if self._fd is None:
            return
        self._record.update(fields)
        data = json.dumps(self._record).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Empty the record (a clean stop leaves nothing to clean) and unlock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the only descriptor releases the flock

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._fd is not None


def _parse(data: bytes) -> dict[str, Any]:
    try:
        record = json.loads(data.decode() or "{}")
    except (UnicodeDecodeError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _holder_pid(topology: str, timeout: float = 2.0) -> int | None:
    """The pid in the lock file of a running topology (written right after it was locked)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid = _parse(lock_path(topology).read_bytes()).get("pid")
        except OSError:
            pid = None
        if isinstance(pid, int):
            return pid
        if time.monotonic() > deadline:
            state = read_state(state_path(topology)) or {}
            pid = state.get("pid")
            return pid if isinstance(pid, int) else None
        time.sleep(0.05)


def _server_pids(record: Mapping[str, Any]) -> dict[int, float | None]:
    """pid → create time (None: unknown) of the servers named in a lock record or state file."""
    pids: dict[int, float | None] = {}
    for entry in (record.get("servers") or {}).values():
        if isinstance(entry, list) and entry and isinstance(entry[0], int):
            pids[entry[0]] = float(entry[1]) if len(entry) > 1 else None
        elif isinstance(entry, dict) and isinstance(entry.get("pid"), int):
            started = entry.get("pid_started")
            pids[entry["pid"]] = float(started) if started is not None else None
    return pids


def _same_process(pid: int, started: float | None) -> Any:
    """The psutil process ``pid`` if it is the one started at ``started`` (not a reused pid)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if started is not None and abs(proc.create_time() - started) > 0.5:
            return None
        if started is None and "pulsetrain" not in " ".join(proc.cmdline()):
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def clean_leftovers(topology: str, previous: Mapping[str, Any], wait: float = 6.0) -> list[str]:
    """Clean what a dead run of ``topology`` left behind; returns what was done (also logged).

    Call it holding the topology's :class:`RunLock` (so no live supervisor owns these things).
    Servers of the dead run that are still alive are given ``wait`` seconds to notice that their
    supervisor is gone and exit by themselves (closing their runs), then terminated; the
    shared-memory segments of its dead processes are removed; its state file is removed.
    """
    import psutil

    path = state_path(topology)
    state = read_state(path) or {}
    sup_pid = previous.get("pid") or state.get("pid")
    pids = {**_server_pids(state), **_server_pids(previous)}
    done: list[str] = []
    procs = [p for pid, started in pids.items() if (p := _same_process(pid, started))]
    if procs:
        _, alive = psutil.wait_procs(procs, timeout=wait)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(alive, timeout=2.0)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=2.0)
        done.append(
            f"stopped {len(procs)} of its server processes that were still running "
            f"(pids {', '.join(str(p.pid) for p in procs)})"
        )
    segments: list[str] = []
    for pid in sorted({*pids, *([sup_pid] if isinstance(sup_pid, int) else [])}):
        if pid != os.getpid() and not pid_alive(pid):
            segments += shmem.remove_segments_of(pid)
    if segments:
        done.append(
            f"removed {len(segments)} shared-memory segments ({', '.join(segments[:3])}"
            f"{', ...' if len(segments) > 3 else ''})"
        )
    if state and state.get("pid") != os.getpid():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            done.append(f"removed its state file {path}")
    if done:
        log.warning(
            "leftovers of a run of topology %r that died (supervisor pid %s): %s",
            topology,
            sup_pid if sup_pid else "unknown",
            "; ".join(done),
        )
    return done
