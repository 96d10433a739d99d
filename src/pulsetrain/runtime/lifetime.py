"""How pulsetrain processes end.

* A device server started by a supervisor never outlives it (:class:`ServerLifetime`): the server
  asks the kernel for a signal when its parent dies (Linux ``PR_SET_PDEATHSIG``), checks once
  that the parent did not die before that request, and polls its parent pid besides (the kernel
  signal is tied to the parent *thread* that started the server, and is Linux only).  When the
  parent is gone the server stops its devices (closing open runs and removing its shared-memory
  segments) and exits; if that takes longer than a grace period it removes its segments and
  exits at once.
* ``pulsetrain run``, ``demo`` and ``gui`` stop the same clean way on SIGINT, SIGTERM and
  SIGHUP (:func:`stop_signals`).
* A server's exit code tells its supervisor why it ended (:data:`EXIT_MEMORY_LIMIT`,
  :func:`describe_exit`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from pulsetrain.runtime import shmem

__all__ = [
    "EXIT_MEMORY_LIMIT",
    "EXIT_ORPHANED",
    "STOP_SIGNALS",
    "ServerLifetime",
    "StopSignals",
    "begin_stop",
    "describe_exit",
    "set_parent_death_signal",
    "stop_signals",
]

log = logging.getLogger(__name__)

#: Exit code of a server that stopped itself because it used more memory than its limit
#: (``EX_TEMPFAIL``: the supervisor restarts it).
EXIT_MEMORY_LIMIT = 75
#: Exit code of a server whose parent went away and whose devices did not stop in time.
EXIT_ORPHANED = 70
#: The signals that stop a supervisor (``run``, ``demo``) or the GUI cleanly.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_PR_SET_PDEATHSIG = 1


def describe_exit(returncode: int) -> str:
    """Why a server process ended, from its exit code (as the supervisor logs and shows it)."""
    if returncode == EXIT_MEMORY_LIMIT:
        return f"memory limit (exited with code {returncode})"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


def set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent (thread) exits.

    Returns whether that is supported (Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if not ok:
        log.debug("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
    return ok


class ServerLifetime:
    """When a device server process stops: on SIGTERM or SIGINT, or when its parent goes away.

    Signal handlers only set a flag; a watch thread polls the flags and the parent pid and calls
    the stop functions (:meth:`stop_with`), so a signal never runs server code inside whatever
    the main thread was doing (and holding) when it arrived.

    Parameters
    ----------
    parent_pid : int, optional
        The pid the parent had when it started this process; None (a server started by hand or
        by systemd) does not watch the parent.
    grace : float
        Seconds the stop may take once the parent is gone; then this process removes its
        shared-memory segments and exits with :data:`EXIT_ORPHANED`.
    interval : float
        Seconds between checks of the parent pid.
    death_signal : int
        The parent-death signal asked of the kernel; it only wakes the watch, which then checks
        the parent pid (the kernel also sends it when merely the parent *thread* that started
        this process exits).
    """

    def __init__(
        self,
        parent_pid: int | None = None,
        *,
        grace: float = 5.0,
        interval: float = 0.5,
        death_signal: int = signal.SIGUSR2,
    ):
        self.parent_pid = int(parent_pid) if parent_pid else None
        self.grace = grace
        self.interval = interval
        self.death_signal = death_signal
        #: Set when the parent is gone.
        self.parent_gone = threading.Event()
        #: Set when the process was asked to stop (a signal, or the parent is gone).
        self.stopping = threading.Event()
        self._signalled: int | None = None
        self._poked = False
        self._lock = threading.Lock()
        self._stoppers: list[Callable[[], Any]] = []
        self._thread: threading.Thread | None = None

    def start(self) -> ServerLifetime:
        """Install the signal handlers and start watching (call it from the main thread, first
        thing: a parent that died before this is noticed too, and ``parent_gone`` is set on
        return)."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        orphan = False
        if self.parent_pid is not None:
            signal.signal(self.death_signal, self._on_death_signal)
            set_parent_death_signal(self.death_signal)
            # The parent may have died before the kernel was asked to tell us.
            orphan = os.getppid() != self.parent_pid
        self._thread = threading.Thread(target=self._watch, name="lifetime", daemon=True)
        self._thread.start()
        if orphan:
            self.parent_gone.wait(1.0)
        return self

    def stop_with(self, stop: Callable[[], Any]) -> None:
        """Call ``stop`` (from the watch thread) when the process is to stop; at once if it is."""
        with self._lock:
            if not self.stopping.is_set():
                self._stoppers.append(stop)
                return
        stop()

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signalled = signum  # a plain assignment: no lock the main thread may hold

    def _on_death_signal(self, signum: int, frame: FrameType | None) -> None:
        self._poked = True

    def _parent_alive(self) -> bool:
        return self.parent_pid is None or os.getppid() == self.parent_pid

    def _watch(self) -> None:
        tick = 0.05
        every = max(1, round(self.interval / tick))
        n = 0
        while True:
            if self._signalled is not None:
                log.info("%s received: stopping", signal.Signals(self._signalled).name)
                break
            if self._poked or n % every == 0:
                self._poked = False
                if not self._parent_alive():
                    self._on_parent_gone()
                    break
            n += 1
            time.sleep(tick)
        with self._lock:
            self.stopping.set()
            stoppers, self._stoppers = self._stoppers, []
        for stop in stoppers:
            try:
                stop()
            except Exception:
                log.exception("stopping the server failed")

    def _on_parent_gone(self) -> None:
        log.warning(
            "parent process %d is gone: stopping (at most %.0f s)", self.parent_pid, self.grace
        )
        timer = threading.Timer(self.grace, self._exit_now)
        timer.daemon = True
        timer.start()
        self.parent_gone.set()

    def _exit_now(self) -> None:
        removed = shmem.remove_segments_of(os.getpid())
        log.error(
            "still running %.0f s after the parent left: exiting now "
            "(%d shared-memory segments removed)",
            self.grace,
            len(removed),
        )
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(OSError, ValueError):  # exiting anyway
                handler.flush()
        os._exit(EXIT_ORPHANED)


_stopping = False


def begin_stop() -> None:
    """Say that this process is stopping: a stop signal from now on no longer interrupts the
    main thread (the clean-up must run to its end); :class:`StopSignals` only records it."""
    global _stopping
    _stopping = True


class StopSignals:
    """Stop cleanly on SIGINT, SIGTERM or SIGHUP (a context manager; see :func:`stop_signals`).

    Inside the context the first of these signals raises :class:`KeyboardInterrupt` in the main
    thread, so ``try``/``finally`` clean-up runs just as after Ctrl-C, unless the process is
    already stopping (:func:`begin_stop`).  Later signals are logged and ignored, so they cannot
    interrupt the clean-up the first one started.  The previous handlers are restored on exit.
    Outside the main thread the context does nothing.

    Attributes
    ----------
    signum : int or None
        The first stop signal received.
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:  # noqa: PYI034 - Python 3.10 has no typing.Self
        global _stopping
        if threading.current_thread() is not threading.main_thread():
            return self
        _stopping = False
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @property
    def received(self) -> bool:
        """Whether a stop signal arrived."""
        return self.signum is not None

    @property
    def stopping(self) -> bool:
        """Whether the process is stopping: a stop signal arrived, or :func:`begin_stop` was
        called (setting this to true calls it: signals no longer interrupt)."""
        return self.signum is not None or _stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        if value:
            begin_stop()

    @property
    def name(self) -> str:
        """The first signal's name (``'SIGTERM'``), or ``'SIGINT'`` when none was received
        (a :class:`KeyboardInterrupt` from the terminal)."""
        return signal.Signals(self.signum or signal.SIGINT).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process stopped by a signal: 128 + its number."""
        return 128 + int(self.signum or signal.SIGINT)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            log.warning("%s received while stopping: ignored", name)
            return
        self.signum = signum
        log.info("%s received: stopping", name)
        if not _stopping:
            raise KeyboardInterrupt(name)


def stop_signals(signals: tuple[int, ...] = STOP_SIGNALS) -> StopSignals:
    """A context in which SIGINT, SIGTERM and SIGHUP stop the process cleanly.

    Examples
    --------
    >>> with stop_signals():                      # doctest: +SKIP
    ...     try:
    ...         sup.start()
    ...         time.sleep(duration)              # interrupted by the first stop signal
    ...     except KeyboardInterrupt:
    ...         pass
    ...     finally:
    ...         sup.stop()                        # later signals cannot interrupt this
    """
    return StopSignals(signals)
