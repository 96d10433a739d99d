"""Test hosts: several "machines" on this one, made of Linux namespaces.

Each :class:`Host` is a network namespace with one veth link into a bridge in the root
namespace **and** a mount namespace of its own with a private tmpfs on ``/dev/shm``, so that
pulsetrain sees exactly what it sees on separate machines: other addresses, TCP between them,
no shared memory across.  The root namespace is the *control host*; it reaches every host
through the bridge address (:attr:`HostNetwork.control_address`).

Why a holder process per host: ``ip netns exec`` makes a new mount namespace for every command,
so two processes of one "host" would not share ``/dev/shm``.  Here one small process per host
(``unshare --net --mount --propagation private`` + ``mount -t tmpfs``, then ``sleep``) keeps
both namespaces alive, and every command of that host enters them with
``nsenter --target HOLDER --mount --net``.

Only addresses in ``10.213.X.0/24`` are used, X chosen free at creation (under a lock, so
concurrent test sessions do not collide); no other interface of the machine is touched.
Interfaces are named ``pt<pid><letter>...`` after the creating process, and every process
started in a host carries ``PULSETRAIN_TESTHOST=<tag>`` in its environment: a new
:class:`HostNetwork` first sweeps what a dead creator left behind (interfaces and processes),
and the holders and everything started through :meth:`Host.popen` die with their creator
(``setpriv --pdeathsig``), even when it is killed.  (The kernel ties that signal to the
creating *thread*: make hosts from a thread that outlives them, e.g. the main thread.)

Plain Python (no pytest): ``benchmarks/`` imports it with ``tests/`` on ``sys.path``.
The pytest fixture is in ``tests/multihost/conftest.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ENV_MARK = "PULSETRAIN_TESTHOST"
NET_PREFIX = "10.213"  # 10.213.X.0/24, X free on this machine
LOCK_FILE = "/run/lock/pulsetrain-testhosts.lock"
SHM_SIZE = "512m"
_NAME_RE = re.compile(r"^pt(\d+)([a-z])")
_seq = itertools.count()


class HostsUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no ``ip``/``unshare``/``nsenter``, ...)."""


# Prefix of a command that gets SIGKILL when the process (thread) that started it dies.
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ns_inode(pid: int, kind: str = "net") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def check_available() -> None:
    """Raise :class:`HostsUnavailable` with the reason if namespaces cannot be made here."""
    if os.geteuid() != 0:
        raise HostsUnavailable("test hosts need root (network and mount namespaces)")
    for tool in ("ip", "unshare", "nsenter", "mount", "setpriv"):
        if shutil.which(tool) is None:
            raise HostsUnavailable(f"test hosts need '{tool}' (iproute2 / util-linux)")
    probe = subprocess.run(
        ["unshare", "--net", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        raise HostsUnavailable(f"cannot create namespaces: {probe.stderr.strip()}")


def sweep_stale() -> list[str]:
    """Remove interfaces, processes and directories left by test-host creators that are dead.

    Only names and environment marks of this module are considered, and only those whose
    creating process (the pid in the name) no longer exists, so concurrent sessions are safe.
    Returns what was removed (for logging).
    """
    removed = []
    links = _ip("-o", "link", "show", check=False).stdout
    for line in links.splitlines():
        parts = line.split(":", 2)
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@")[0]
        m = _NAME_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _ip("link", "del", name, check=False)
            removed.append(name)
    mark = ENV_MARK.encode() + b"="
    for pid in _all_pids():
        env = _environ(pid)
        if mark not in env:
            continue
        for var in env.split(b"\0"):
            if var.startswith(mark):
                m = _NAME_RE.match(var[len(mark) :].decode(errors="replace"))
                if m and not _pid_alive(int(m.group(1))):
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
                    removed.append(f"pid {pid}")
    for path in Path(tempfile.gettempdir()).glob("pt*-h*-*"):
        m = _NAME_RE.match(path.name)
        if m and path.is_dir() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def _used_third_octets() -> set[int]:
    used = set()
    text = _ip("-o", "-4", "addr", "show", check=False).stdout
    text += _ip("-4", "route", "show", "table", "all", check=False).stdout
    for m in re.finditer(r"\b10\.213\.(\d+)\.", text):
        used.add(int(m.group(1)))
    return used


class Host:
    """One test host: its own network and mount namespaces (``/dev/shm`` private).

    Attributes
    ----------
    name : str
        ``h0``, ``h1``, ... in the order made.
    address : str
        Its IPv4 address on the test bridge (what other hosts and the control host reach).
    holder : subprocess.Popen
        The process that keeps its namespaces alive.
    """

    def __init__(self, net: HostNetwork, index: int, address: str):
        self.net = net
        self.index = index
        self.name = f"h{index}"
        self.address = address
        self.veth = f"{net.tag}v{index}"  # root-namespace end (link_down/up act on it)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{net.tag}-{self.name}-"))
        self.mark = f"{net.tag}/{self.name}"
        self._procs: list[subprocess.Popen] = []
        script = (
            f"mount -t tmpfs -o size={SHM_SIZE},mode=1777 tmpfs /dev/shm"
            " && ip link set lo up && echo ready && exec sleep infinity"
        )
        self.holder = subprocess.Popen(
            [
                *DIE_WITH_PARENT,
                *["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script],
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, ENV_MARK: self.mark},
        )
        line = self.holder.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != b"ready":
            err = self.holder.stderr.read().decode(errors="replace")  # type: ignore[union-attr]
            raise HostsUnavailable(f"test host {self.name} did not start: {err.strip()}")
        peer = f"{net.tag}p{index}"
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", str(self.holder.pid))
        _ip("link", "set", self.veth, "master", net.bridge)
        _ip("link", "set", self.veth, "up")
        self.run(["ip", "link", "set", peer, "name", "eth0"], check=True)
        self.run(["ip", "addr", "add", f"{address}/24", "dev", "eth0"], check=True)
        self.run(["ip", "link", "set", "eth0", "up"], check=True)
        self.run(["ip", "route", "add", "default", "via", net.control_address], check=True)

    # -- running things -------------------------------------------------------------------

    def command(self, argv: Sequence[str], cwd: str | os.PathLike | None = None) -> list[str]:
        """``argv`` wrapped to run in this host's namespaces (``nsenter ...``)."""
        wd = os.fspath(cwd) if cwd is not None else os.getcwd()
        return [
            "nsenter",
            f"--target={self.holder.pid}",
            "--mount",
            "--net",
            f"--wd={wd}",
            "--",
            *map(os.fspath, argv),
        ]

    def environment(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a process on this host: ``env`` (default: ours) + its marks.

        ``XDG_RUNTIME_DIR`` and ``TMPDIR`` point into a directory of the host's own, as on a
        separate machine.
        """
        out = dict(os.environ if env is None else env)
        out[ENV_MARK] = self.mark
        out["XDG_RUNTIME_DIR"] = str(self.tmp)
        out["TMPDIR"] = str(self.tmp)
        return out

    def popen(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        die_with_us: bool = True,
        **kwargs: Any,
    ) -> subprocess.Popen:
        """Start ``argv`` on this host; it is killed when the network is closed.

        ``die_with_us``: the process also gets SIGKILL if the creating process dies.
        """
        cwd = kwargs.pop("cwd", None)
        proc = subprocess.Popen(
            [*(DIE_WITH_PARENT if die_with_us else []), *self.command(argv, cwd)],
            env=self.environment(env),
            **kwargs,
        )
        self._procs.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        check: bool = False,
        timeout: float = 60.0,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess:
        """Run ``argv`` on this host to completion (output captured as text)."""
        cwd = kwargs.pop("cwd", None)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(
            self.command(argv, cwd),
            env=self.environment(env),
            check=check,
            timeout=timeout,
            **kwargs,
        )

    # -- inspecting -----------------------------------------------------------------------

    @property
    def netns(self) -> int:
        """Inode of this host's network namespace."""
        ino = _ns_inode(self.holder.pid, "net")
        if ino is None:
            raise RuntimeError(f"test host {self.name} is gone")
        return ino

    def processes(self) -> list[int]:
        """PIDs of every process in this host's network namespace except the holder."""
        ns = self.netns
        return [
            pid for pid in _all_pids() if pid != self.holder.pid and _ns_inode(pid, "net") == ns
        ]

    def cmdline(self, pid: int) -> str:
        """The command line of ``pid`` (``''`` if gone)."""
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return ""
        return raw.replace(b"\0", b" ").decode(errors="replace").strip()

    def shm_files(self) -> list[str]:
        """Names in this host's ``/dev/shm``."""
        out = self.run(["ls", "-1", "/dev/shm"], check=True).stdout
        return sorted(out.split())

    # -- faults ---------------------------------------------------------------------------

    def link_down(self) -> None:
        """Pull this host's cable (its veth end on the bridge goes down)."""
        _ip("link", "set", self.veth, "down")

    def link_up(self) -> None:
        """Plug it back in."""
        _ip("link", "set", self.veth, "up")

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every process on this host except the holder."""
        for pid in self.processes():
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    def close(self) -> None:
        """Kill everything on the host, then the host itself."""
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
        with contextlib.suppress(RuntimeError):
            self.kill_all()
        if self.holder.poll() is None:
            self.holder.kill()
        for proc in [*self._procs, self.holder]:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for stream in (self.holder.stdout, self.holder.stderr):
            if stream is not None:
                stream.close()
        _ip("link", "del", self.veth, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address} holder={self.holder.pid}>"


class HostNetwork:
    """A bridge in the root namespace and :class:`Host` s attached to it.

    Parameters
    ----------
    n : int
        Number of hosts to make at once (more with :meth:`add`).

    Use as a context manager, or call :meth:`close`; closing kills every process on the hosts
    and removes their interfaces.
    """

    def __init__(self, n: int = 0):
        check_available()
        sweep_stale()
        letter = "abcdefghijklmnopqrstuvwxyz"[next(_seq) % 26]
        self.tag = f"pt{os.getpid()}{letter}"
        self.bridge = f"{self.tag}b"
        self.hosts: list[Host] = []
        self._closed = False
        Path(LOCK_FILE).parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK_FILE, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            used = _used_third_octets()
            free = [x for x in range(1, 255) if x not in used]
            if not free:
                raise HostsUnavailable("no free 10.213.X.0/24 test subnet")
            self.subnet = ipaddress.ip_network(f"{NET_PREFIX}.{free[0]}.0/24")
            self.control_address = str(self.subnet.network_address + 1)
            _ip("link", "add", self.bridge, "type", "bridge")
            try:
                _ip("addr", "add", f"{self.control_address}/24", "dev", self.bridge)
                _ip("link", "set", self.bridge, "up")
            except subprocess.CalledProcessError:
                _ip("link", "del", self.bridge, check=False)
                raise
        try:
            for _ in range(n):
                self.add()
        except BaseException:
            self.close()
            raise

    def add(self) -> Host:
        """Make one more host."""
        index = len(self.hosts)
        address = str(self.subnet.network_address + 10 + index)
        host = Host(self, index, address)
        self.hosts.append(host)
        return host

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def __iter__(self):
        return iter(self.hosts)

    def __len__(self) -> int:
        return len(self.hosts)

    def processes(self) -> dict[str, list[int]]:
        """Per host name, the PIDs running on it (holder excluded)."""
        return {h.name: h.processes() for h in self.hosts}

    def close(self) -> None:
        """Kill every process on every host, remove the hosts and the bridge."""
        if self._closed:
            return
        self._closed = True
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.close()
        _ip("link", "del", self.bridge, check=False)

    def __enter__(self) -> HostNetwork:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_processes_gone(hosts: Iterable[Host], timeout: float = 10.0) -> dict[str, list[str]]:
    """Wait until no process runs on ``hosts``; return what is left (name -> command lines)."""
    deadline = time.monotonic() + timeout
    while True:
        left = {h.name: [h.cmdline(p) for p in h.processes()] for h in hosts}
        left = {k: v for k, v in left.items() if v}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)
