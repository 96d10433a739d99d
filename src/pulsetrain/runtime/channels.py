"""Point-to-point pipeline channels with Karabo's distribution and slowness policies.

An :class:`OutputChannel` binds a ZeroMQ ROUTER socket (tcp between hosts; ipc or inproc inside
one host; several endpoints at once).  Every :class:`InputChannel` connects one DEALER socket per
output it reads from.  Flow is *pull-based with credits*: an input tells each output how many
trains it can take (its free slots), and an output sends only to inputs with credit.  What an
output does with a train for an input without credit is that input's *slowness policy*:

``drop``
    the train is not sent to that input (counted in the connection's ``dropped``).
``queueDrop``
    the train is queued for that input, up to ``max_queue_length``; when the queue is full the
    new train is dropped (Karabo C++ semantics) and counted.
``wait``
    :meth:`OutputChannel.write` does not return until the input has asked for it:
    back-pressure, nothing is lost.

``copy`` inputs each get every train (subject to their policy).  All ``shared`` inputs of one
output form one group: each train goes to exactly one of them, the one that became ready first
(load balancing by readiness).  When no shared input is ready, the group policy applies: the
output's ``no_input_shared`` if given, else the strictest policy any shared input asked for
(``wait`` > ``queueDrop`` > ``drop``).  End-of-stream is never dropped, and an input reports it
only after every output it has heard from has sent it.

Robustness: inputs repeat their credit message as a heartbeat (every ``heartbeat`` seconds), so
an output that restarts on the same endpoint learns its inputs again, and ZeroMQ reconnects the
sockets by itself; an output forgets an input it has not heard from for ``liveness`` seconds
(so a vanished ``wait`` input blocks its producer for at most that long).  The credit message
carries the input's whole configuration, so no separate hand-shake can get lost.

Threads: each channel has one thread of its own (heartbeats, timeouts, trains that wait for
credit), but the common path does without it: a writer sends a train to the inputs that have
credit from its own thread, and while it blocks on a ``wait`` input it receives their credits
itself; a consumer sends its credit from its own thread when it takes the next train.  The
sockets are shared under a lock, and the threads sleep on the sockets' descriptors.

Wire format: credit ``[msgpack{t: 'credit', in, isess, osess, rcv, win, dist, slow, maxq}]``
from input to output, ``[msgpack{t: 'data', s: session, w: write_index}, *train_frames]`` and
``[msgpack{t: 'eos', s: session}]`` from output to input, where ``train_frames`` are the frames
of :func:`pulsetrain.protocol.serialize` (protocol 2.2): any point of a pipeline carries the
bridge format, and arrays are received without copying.
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import itertools
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgpack
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from pulsetrain import protocol
from pulsetrain.errors import ChannelError, ConfigurationError, ProtocolError
from pulsetrain.runtime import shmem
from pulsetrain.runtime.ports import free_port

__all__ = [
    "DISTRIBUTIONS",
    "SLOWNESS_POLICIES",
    "EndOfStream",
    "InputChannel",
    "Item",
    "OutputChannel",
]

log = logging.getLogger(__name__)

DISTRIBUTIONS = ("copy", "shared")
SLOWNESS_POLICIES = ("drop", "queueDrop", "wait")
_STRICTNESS = {"drop": 0, "queueDrop": 1, "wait": 2}
_pack = msgpack.Packer(use_bin_type=True).pack

# A TCP link that goes silent (a cable pulled, a host gone) sends no RST: without these, ZeroMQ
# would wait for the kernel's retransmission back-off (seconds to minutes) before it notices.
# ZMTP heartbeats drop a connection that did not answer a PING for _HEARTBEAT_TIMEOUT_MS; an
# input then reconnects every RECONNECT_IVL (100 ms, backing off to _RECONNECT_IVL_MAX_MS),
# each attempt given up after _CONNECT_TIMEOUT_MS (a SYN lost on a dead link is otherwise
# retried by the kernel for minutes, first after 1 s), so a link that comes back is used again
# within about a second.  Both ends run
# on ZeroMQ's I/O thread, so a busy Python process does not miss them.
_HEARTBEAT_IVL_MS = 1000
_RECONNECT_IVL_MAX_MS = 500
_HEARTBEAT_TIMEOUT_MS = 3000
_CONNECT_TIMEOUT_MS = 500

_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
# Frames below this size are copied into the message (as pyzmq's default copy threshold); the
# larger ones (arrays) are sent without copying.
_COPY_BELOW = 65536


def _send_frames(sock: zmq.Socket, frames: list, flags: int = 0) -> None:
    """Send ``frames`` as one multipart message: small ``bytes`` copied, the rest zero-copy.

    A lean ``send_multipart``: no message trackers, plain integer flags (pyzmq's enum flags and
    per-frame ``Frame`` objects for small frames cost more than the send itself per train).
    """
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        more = _SNDMORE | flags if i < last else flags
        if type(frame) is bytes and len(frame) < _COPY_BELOW:
            sock.send(frame, more)
        else:
            sock.send(frame, more, copy=False)


# glibc's malloc, left to itself, serves a received train's buffers (one per large frame, made by
# ZeroMQ's I/O thread) from a heap whose freed top it gives back to the kernel once it exceeds
# a threshold that follows the largest buffer freed so far (twice it): with a few trains in
# flight it keeps giving the memory back, and the next train's bytes fault it in again page by
# page (measured: ~300 minor faults per 4.2 MB train, a third more CPU in the receiving I/O
# thread).  A fixed threshold for mapping buffers on their own (glibc's maximum, 32 MiB) and a
# high one for trimming keep it.  Not done when the environment sets malloc's options itself.
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 256 << 20
_malloc_tuned = False


def _keep_freed_buffers() -> None:
    """Tune glibc's malloc once per process so that freed train buffers are reused."""
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    if not sys.platform.startswith("linux") or any(
        k in os.environ
        for k in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    if mallopt(m_mmap_threshold, _MMAP_THRESHOLD) and mallopt(m_trim_threshold, _TRIM_THRESHOLD):
        log.debug("malloc: buffers up to %d B from the heap, kept when freed", _MMAP_THRESHOLD)


def _set_liveness_options(sock: zmq.Socket) -> None:
    """ZMTP heartbeats (and, for a connecting socket, a connect timeout) on ``sock``."""
    if _HEARTBEAT_IVL_MS:
        sock.setsockopt(zmq.HEARTBEAT_IVL, _HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _HEARTBEAT_TIMEOUT_MS)
    if _CONNECT_TIMEOUT_MS and sock.type == zmq.DEALER:
        sock.setsockopt(zmq.CONNECT_TIMEOUT, _CONNECT_TIMEOUT_MS)


def _unpack_ctl(buf: Any) -> dict:
    try:
        msg = msgpack.unpackb(buf, raw=False)
    except Exception as exc:
        raise ProtocolError(f"channel control frame is not msgpack: {exc}") from exc
    if not isinstance(msg, dict):
        raise ProtocolError("channel control frame is not a map")
    return msg


def validate_policy(
    data_distribution: str, on_slowness: str, max_queue_length: int
) -> tuple[str, str, int]:
    """Check a connection policy; raises :class:`ConfigurationError` naming the bad value."""
    if on_slowness == "queue":  # Karabo < 3.0 name, treated as queueDrop since 2.19
        on_slowness = "queueDrop"
    if data_distribution not in DISTRIBUTIONS:
        raise ConfigurationError(
            f"data_distribution must be one of {DISTRIBUTIONS}, not {data_distribution!r}"
        )
    if on_slowness not in SLOWNESS_POLICIES:
        raise ConfigurationError(
            f"on_slowness must be one of {SLOWNESS_POLICIES}, not {on_slowness!r}"
        )
    if not isinstance(max_queue_length, int) or max_queue_length < 1:
        raise ConfigurationError(
            f"max_queue_length must be an integer >= 1, not {max_queue_length!r}"
        )
    return data_distribution, on_slowness, max_queue_length


def _context(context: zmq.Context | None) -> zmq.Context:
    # One context per process by default, so that inproc endpoints connect across devices.
    return context if context is not None else zmq.Context.instance()


# ============================================================================================
# Output
# ============================================================================================


def bind_retrying(sock: zmq.Socket, endpoint: str, retry: float) -> None:
    """Bind, retrying up to ``retry`` seconds while the address is still in use."""
    deadline = time.monotonic() + retry
    delay = 0.01
    while True:
        try:
            sock.bind(endpoint)
            return
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def unbind_released(sock: zmq.Socket, endpoints: list[str], timeout: float = 1.0) -> None:
    """Unbind ``endpoints`` and wait until ZeroMQ closed their listening sockets.

    ZeroMQ closes a listener on its I/O thread, after ``close()`` or ``unbind()`` returned: a
    caller that binds the same address right away (a restarted device, a test) could find it
    still taken. The socket monitor reports each listener's close; this waits for them (at most
    ``timeout`` seconds). Unbinding also drops the connections the listener accepted, and what
    is still queued for them: only for a socket about to be closed without linger.
    """
    waiting = {ep for ep in endpoints if ep.startswith(("tcp://", "ipc://"))}
    if not waiting:
        return
    monitor = sock.get_monitor_socket(zmq.EVENT_CLOSED)
    try:
        for ep in list(waiting):
            try:
                sock.unbind(ep)
            except zmq.ZMQError:  # not bound (any more): nothing to wait for
                waiting.discard(ep)
        deadline = time.monotonic() + timeout
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0 or not monitor.poll(int(left * 1000) + 1):
                log.debug("listeners %s not reported closed within %.1f s", waiting, timeout)
                break
            event = recv_monitor_message(monitor)
            waiting.discard(event["endpoint"].decode(errors="replace"))
    finally:
        sock.disable_monitor()
        monitor.close(0)


@dataclasses.dataclass
class _Pending:
    frames: list | None  # None = end of stream
    shm: shmem.ShmMessage | None = None  # the same train for inputs reading shared memory
    entry: tuple | None = None  # (write index, frames, shm) once dispatched
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    waiting: set = dataclasses.field(default_factory=set)  # identities still to serve (wait)
    shared_open: bool = False  # still to be given to a shared input (wait policy)
    error: Exception | None = None


class _Connection:
    """What an output knows about one connected input."""

    __slots__ = (
        "acked",
        "allowed",
        "connected_at",
        "distribution",
        "dropped",
        "epoch",
        "gone_since",
        "identity",
        "input_id",
        "isess",
        "last_seen",
        "leases",
        "maxq",
        "queue",
        "sent",
        "shm",
        "slowness",
    )

    def __init__(self, identity: bytes, msg: dict, now: float):
        self.identity = identity
        self.input_id = str(msg.get("in", "?"))
        self.isess = msg.get("isess")
        self.epoch = msg.get("ep", 0)  # the input's count of reconnections to this output
        self.gone_since: float | None = None  # timed out: trains for it count as dropped
        dist, slow, maxq = validate_policy(
            msg.get("dist", "copy"), msg.get("slow", "drop"), int(msg.get("maxq", 2))
        )
        self.distribution, self.slowness, self.maxq = dist, slow, maxq
        self.sent = 0
        self.allowed = 0
        self.acked = 0  # messages the input says it received
        self.dropped = 0
        self.queue: collections.deque = collections.deque()
        self.last_seen = now
        self.connected_at = now
        self.shm = False  # reads large frames from shared memory (same host, other process)
        self.leases: collections.Counter = collections.Counter()

    @property
    def credit(self) -> int:
        return self.allowed - self.sent

    def as_dict(self) -> dict[str, Any]:
        return {
            "remote_id": self.input_id,
            "data_distribution": self.distribution,
            "on_slowness": self.slowness,
            "max_queue_length": self.maxq,
            "sent": self.sent,
            "dropped": self.dropped,
            "queued": len(self.queue),
            "credit": self.credit,
            "shared_memory": self.shm,
        }


class OutputChannel:
    """The sending end of pipeline connections.

    Parameters
    ----------
    name : str
        Channel ID, conventionally ``'<deviceId>:<channel>'``.
    bind : str or iterable of str
        ZeroMQ endpoints to bind, e.g. ``'tcp://127.0.0.1:0'`` (port 0 = any free port),
        ``'ipc:///tmp/x'`` or ``'inproc://x'``.  Several endpoints may be bound at once.
    no_input_shared : {'drop', 'queueDrop', 'wait'}, optional
        Policy when no shared input is ready; by default the strictest asked for by a shared input.
    liveness : float
        Seconds after which an input that sent nothing is forgotten.
    context : zmq.Context, optional
        Defaults to the process-wide context (needed for inproc).
    shm_slots, shm_bytes : int
        Shared memory for inputs in other processes on this host (see :mod:`pulsetrain.runtime.shmem`):
        at most this many trains, and bytes, in flight that way; beyond that, trains go over
        the socket.  ``shm_slots=0`` switches it off for this output.
    bind_retry : float
        Seconds to keep retrying a fixed address that is still in use.  A restarted device
        rebinds its old address while ZeroMQ (whose sockets close asynchronously) or the
        exiting previous process may still hold it for a moment.

    Notes
    -----
    Arrays passed to :meth:`write` are sent without copying: do not modify them afterwards.
    ``write`` and ``signal_eos`` must not be called concurrently.
    """

    def __init__(
        self,
        name: str,
        bind: str | Iterable[str] = "tcp://127.0.0.1:0",
        *,
        no_input_shared: str | None = None,
        liveness: float = 3.0,
        context: zmq.Context | None = None,
        shm_slots: int = 64,
        shm_bytes: int = 2 << 30,
        bind_retry: float = 2.0,
    ):
        if no_input_shared is not None:
            validate_policy("shared", no_input_shared, 1)
        _keep_freed_buffers()
        self.name = name
        self.no_input_shared = no_input_shared
        self.liveness = liveness
        #: Seconds a timed-out input is remembered (its drops counted) in case it comes back.
        self.forget_after = 600.0
        self.session = uuid.uuid4().hex[:12]
        self._ctx = _context(context)
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self._router.setsockopt(zmq.SNDHWM, 0)
        self._router.setsockopt(zmq.RCVHWM, 0)
        _set_liveness_options(self._router)
        self.endpoints: list[str] = []
        try:
            for ep in [bind] if isinstance(bind, str) else list(bind):
                bind_retrying(self._router, ep, bind_retry)
                self.endpoints.append(self._router.getsockopt_string(zmq.LAST_ENDPOINT))
        except zmq.ZMQError as exc:
            unbind_released(self._router, self.endpoints)
            self._router.close(0)
            raise ChannelError(f"output {name}: cannot bind {bind!r}: {exc}") from exc
        # The channel's thread sleeps on the socket's file descriptor, not in zmq_poll on the
        # socket, so that write() can send from the caller's thread (under self._lock, which
        # guards every use of the socket): a train goes out without a hop to that thread.
        self._router_fd = self._router.getsockopt(zmq.FD)
        wake = f"inproc://pt-out-wake-{id(self)}-{self.session}"
        self._wake_r = self._ctx.socket(zmq.PAIR)
        self._wake_r.bind(wake)
        self._wake_w = self._ctx.socket(zmq.PAIR)
        self._wake_w.connect(wake)
        self._wake_lock = threading.Lock()

        self._lock = threading.Lock()
        self._conns: dict[bytes, _Connection] = {}
        # Inputs that timed out (a link down, a frozen process) and may come back: trains
        # written meanwhile are counted as dropped for them, and the count carries over.
        self._gone: dict[bytes, _Connection] = {}
        self._ready_shared: collections.deque[bytes] = collections.deque()
        self._shared_queue: collections.deque = collections.deque()
        self._inbox: collections.deque[_Pending] = collections.deque()
        self._current: _Pending | None = None
        self._write_index = 0
        self.written = 0
        self.shared_dropped = 0
        self._closing = False
        self._sends = 0  # messages sent on the router (tells _pump the socket was used)
        self._completed = 0  # trains (and EOS) fully handed out
        # A write() blocked on a 'wait' input watches the socket itself (the channel's thread
        # stands back meanwhile): a credit that arrives wakes the writer directly, no hop.
        self._writer_waiting = False
        self._writer_wake_r, self._writer_wake_w = os.pipe()
        os.set_blocking(self._writer_wake_r, False)
        os.set_blocking(self._writer_wake_w, False)
        self._writer_poller = zmq.Poller()
        self._writer_poller.register(self._router_fd, zmq.POLLIN)
        self._writer_poller.register(self._writer_wake_r, zmq.POLLIN)
        self._host = shmem.host_id() if shm_slots > 0 else None
        self._pool = shmem.SegmentPool(shm_slots, shm_bytes) if self._host else None
        self._shm_inputs = 0  # connected inputs that read shared memory
        self._may_wait = False  # an input (or the shared group) has the policy 'wait'
        self.max_pending = 2  # trains written but not yet handed out before write() blocks
        self._thread = threading.Thread(target=self._loop, name=f"out:{name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- public API
    def write(
        self,
        data: Mapping[str, Mapping[str, Any]],
        meta: Mapping[str, Mapping[str, Any]],
        timeout: float | None = None,
    ) -> None:
        """Send one train to the connected inputs according to their policies.

        With an input of policy ``wait`` connected, returns once the train has been handed to
        every input (sent, queued or dropped), blocking until ``wait`` inputs that are not ready
        ask for it (or vanish).  Otherwise it returns at once.  The train goes out from the
        calling thread to every input that has credit; what waits for credit (queued, or
        behind ``max_pending`` earlier trains) the channel's thread sends when it comes.
        Either way the arrays must not be modified afterwards (they are sent without copying).

        Raises
        ------
        TimeoutError
            ``timeout`` seconds passed while a ``wait`` input was not ready; the train stays
            pending and is delivered when the input asks for it.
        """
        frames = protocol.serialize(data, meta)
        pending = _Pending(frames)
        if self._shm_inputs and self._pool is not None:
            pending.shm = self._pool.pack(frames)
        self._submit(pending, timeout, block=False)
        self.written += 1

    def allocate(self, *specs: tuple[tuple[int, ...], Any]) -> list[np.ndarray]:
        """Uninitialised arrays ``(shape, dtype), ...`` to fill and :meth:`write`, zero-copy.

        While an input in another process on this host is connected, the arrays live in this
        output's shared memory (all in one slot), so writing them copies nothing at all;
        otherwise (or when the shared memory is all in use) they are ordinary arrays.  Do not
        modify them after writing.
        """
        if self._shm_inputs and self._pool is not None:
            arrays = self._pool.allocate(list(specs))
            if arrays is not None:
                return arrays
        return [np.empty(shape, dtype) for shape, dtype in specs]

    def signal_eos(self, timeout: float | None = None) -> None:
        """Send end-of-stream to every input (never dropped)."""
        self._submit(_Pending(None), timeout)

    def connections(self) -> list[dict[str, Any]]:
        """A table of the connected inputs: id, policy, sent, dropped, queued, credit."""
        with self._lock:
            return [c.as_dict() for c in self._conns.values()]

    @property
    def dropped(self) -> int:
        """Trains dropped for any input, summed over connections, plus shared-group drops."""
        with self._lock:
            return (
                self.shared_dropped
                + sum(c.dropped for c in self._conns.values())
                + sum(c.dropped for c in self._gone.values())
            )

    def wait_for_inputs(self, n: int = 1, timeout: float = 10.0) -> bool:
        """Wait until at least ``n`` inputs are connected; returns whether they are."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._conns) >= n:
                    return True
            time.sleep(0.005)
        return False

    def close(self, linger: float = 2.0) -> None:
        """Stop the channel's thread and close its sockets.

        Waits up to ``linger`` seconds until the connected inputs confirm they received what was
        sent (including an end-of-stream just signalled), so that a process can exit right after
        closing without losing its last trains; writes still blocked on a ``wait`` input are then
        released with a :class:`ChannelError`.
        """
        if self._closing:
            return
        deadline = time.monotonic() + linger
        self.flush(linger)
        self._closing = True
        self._wake()
        self._thread.join(timeout=5)
        for pending in list(self._inbox) + ([self._current] if self._current else []):
            pending.error = ChannelError(f"output {self.name} closed")
            pending.done.set()
        self._wake_writer()
        with self._lock:  # a writer may still be using the socket
            # ZeroMQ still sends what is queued (the last trains' bytes, the goodbye) for up to
            # the linger; then it closes the listener on its own thread (a restart binding the
            # same address retries: bind_retrying).  Without linger nothing more is sent, and
            # the address is free when close() returns (a failed start leaves no port bound).
            linger_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            if linger_ms == 0:
                unbind_released(self._router, self.endpoints)
            self._router.close(linger_ms)
            for fd in (self._writer_wake_r, self._writer_wake_w):
                os.close(fd)
        for sock in (self._wake_r, self._wake_w):
            sock.close(0)
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> OutputChannel:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until the inputs confirmed everything written so far; returns whether they did."""
        deadline = time.monotonic() + timeout
        while self._unsent():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def _unsent(self) -> bool:
        """Whether anything written is not yet confirmed received by its input."""
        with self._lock:
            return bool(
                self._inbox
                or self._current
                or self._shared_queue
                or any(c.queue or c.acked < c.sent for c in self._conns.values())
            )

    def _wake(self) -> None:
        with self._wake_lock:
            try:
                self._wake_w.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def _submit(self, pending: _Pending, timeout: float | None, block: bool = True) -> None:
        if self._closing:
            raise ChannelError(f"output {self.name} is closed")
        with self._lock:
            backlog = len(self._inbox)
            self._inbox.append(pending)
            # Hand it out from this thread: inputs with credit get it now (no thread hop).
            self._pump()
        if pending.done.is_set():
            if pending.error is not None:
                raise pending.error
            return
        if not block and not self._may_wait and backlog < self.max_pending:
            # No input can hold this train up: the output thread hands it out while the caller
            # goes on (a thread hop less per train; the arrays must stay untouched, as always).
            return
        if not self._may_wait:
            if not pending.done.wait(timeout):
                raise TimeoutError(f"output {self.name}: a train could not be handed out in time")
        else:
            self._wait_handed_out(pending, timeout)
        if pending.error is not None:
            raise pending.error

    def _wait_handed_out(self, pending: _Pending, timeout: float | None) -> None:
        """Block until ``pending`` is handed out, receiving the inputs' credits in this thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        step = max(1, int(self.liveness * 250))
        self._writer_waiting = True
        try:
            while not pending.done.is_set():
                ms = step
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(
                            f"output {self.name}: an input with policy 'wait' is not ready"
                        )
                    ms = min(step, 1 + int(remaining * 1000))
                try:
                    events = dict(self._writer_poller.poll(ms))
                except zmq.ZMQError:  # closed meanwhile
                    break
                if self._writer_wake_r in events:
                    try:
                        os.read(self._writer_wake_r, 4096)
                    except OSError:
                        pass
                with self._lock:
                    if self._closing:
                        break
                    self._pump()
        finally:
            self._writer_waiting = False
        if not pending.done.is_set():
            raise ChannelError(f"output {self.name} closed")

    def _wake_writer(self) -> None:
        try:
            os.write(self._writer_wake_w, b"w")
        except OSError:  # full (it is woken anyway) or closed
            pass

    def _loop(self) -> None:
        poller = zmq.Poller()
        # The socket's descriptor (edge-triggered: see _pump), not the socket: zmq_poll on the
        # socket would use it outside self._lock.
        poller.register(self._router_fd, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        aside = zmq.Poller()  # while a writer watches the socket
        aside.register(self._wake_r, zmq.POLLIN)
        next_check = time.monotonic() + self.liveness / 4
        while not self._closing:
            try:
                if self._writer_waiting:
                    # Look in now and then: the writer may have returned meanwhile.
                    events = dict(aside.poll(timeout=20))
                else:
                    events = dict(poller.poll(timeout=int(self.liveness * 250)))
            except zmq.ZMQError:  # pragma: no cover - context terminated
                break
            if self._wake_r in events:
                while True:
                    try:
                        self._wake_r.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            now = time.monotonic()
            if now >= next_check:
                self._expire(now)
                next_check = now + self.liveness / 4
            with self._lock:
                if self._closing:
                    break
                completed = self._completed
                self._pump()
                if self._completed != completed and self._writer_waiting:
                    self._wake_writer()

    def _pump(self) -> None:
        """Read what the inputs sent and send what can be sent, until neither has work.

        Called with ``self._lock`` held, by the channel's thread or a writer.  The socket's
        descriptor only signals *changes*, and any use of the socket may consume one: so this
        returns only after reading ``ZMQ_EVENTS`` found nothing to receive with no send after
        it.  From then on, a message that arrives signals the descriptor again.
        """
        router = self._router
        while True:
            while router.getsockopt(_EVENTS) & _POLLIN:
                identity, *rest = router.recv_multipart(_NOBLOCK)
                self._on_input_message(identity, rest)
            sends = self._sends
            self._progress()
            if self._sends == sends:
                return

    def _on_input_message(self, identity: bytes, frames: list[bytes]) -> None:
        """Handle one message of an input (``self._lock`` held)."""
        try:
            if not frames:
                raise ProtocolError("empty message")
            msg = _unpack_ctl(frames[0])
            kind = msg.get("t")
            now = time.monotonic()
            if kind == "bye":
                self._remove(identity)
                self._gone.pop(identity, None)
                return
            if kind == "free":  # an input is done with a train it read from shared memory
                conn = self._conns.get(identity)
                key = (str(msg.get("seg")), int(msg.get("gen", -1)))
                if conn is not None and conn.leases[key] > 0 and self._pool is not None:
                    conn.leases[key] -= 1
                    if not conn.leases[key]:
                        del conn.leases[key]
                    self._pool.release(key)
                return
            if kind != "credit":
                raise ProtocolError(f"unknown message type {kind!r}")
            conn = self._conns.get(identity)
            received = int(msg.get("rcv", 0)) if msg.get("osess") == self.session else 0
            if conn is None or conn.isess != msg.get("isess") or conn.epoch != msg.get("ep", 0):
                old = conn
                if conn is not None:
                    self._remove(identity)
                old = self._gone.pop(identity, None) or old
                conn = _Connection(identity, msg, now)
                if old is None:  # the same input in a new process (a re-created device)
                    for ident, gone in list(self._gone.items()):
                        if gone.input_id == conn.input_id:
                            old = self._gone.pop(ident)
                # Counted from what the input says it received of this output session, so
                # its credit is its free slots (not all it ever received).
                conn.sent = conn.acked = received
                if old is not None:
                    # The same input again: its count of lost trains goes on.  Reconnected
                    # (same session), what it was sent and never got was lost with the old
                    # connection and counts as dropped too.
                    conn.dropped = old.dropped
                    if old.isess == conn.isess:
                        conn.dropped += max(0, old.sent - received)
                self._conns[identity] = conn
                self._update_may_wait()
                log.info(
                    "%s: input %s connected (%s, %s)",
                    self.name,
                    conn.input_id,
                    conn.distribution,
                    conn.slowness,
                )
            conn.last_seen = now
            shm = bool(
                self._pool is not None
                and msg.get("shm")
                and msg.get("host") == self._host
                and msg.get("pid") != os.getpid()
            )
            if shm != conn.shm:
                conn.shm = shm
                self._shm_inputs += 1 if shm else -1
                for key in conn.leases:  # it gave up on shared memory: do not wait for it
                    self._pool.retire(key)  # type: ignore[union-attr]
                conn.leases.clear()
            conn.acked = max(conn.acked, received)
            conn.allowed = max(conn.allowed, received + int(msg.get("win", 1)))
            if (
                conn.distribution == "shared"
                and conn.credit > 0
                and identity not in self._ready_shared
            ):
                self._ready_shared.append(identity)
        except (ProtocolError, ConfigurationError, ValueError, TypeError) as exc:
            log.warning("%s: ignored bad message from an input: %s", self.name, exc)

    def _remove(self, identity: bytes) -> None:
        conn = self._conns.pop(identity, None)
        if conn is None:
            return
        log.info("%s: input %s disconnected", self.name, conn.input_id)
        self._update_may_wait()
        if conn.shm:
            self._shm_inputs -= 1
        for key in conn.leases:  # it may still read them: never reuse those slots
            self._pool.retire(key)  # type: ignore[union-attr]
        conn.leases.clear()
        try:
            self._ready_shared.remove(identity)
        except ValueError:
            pass
        # Queued trains for a vanished input are lost: count them.
        conn.dropped += sum(1 for entry in conn.queue if entry is not None)
        if self._current is not None:
            self._current.waiting.discard(identity)

    def _update_may_wait(self) -> None:
        self._may_wait = self.no_input_shared == "wait" or any(
            c.slowness == "wait" for c in self._conns.values()
        )

    def _expire(self, now: float) -> None:
        with self._lock:
            for identity, conn in list(self._conns.items()):
                if now - conn.last_seen > self.liveness:
                    log.warning("%s: input %s timed out", self.name, conn.input_id)
                    self._remove(identity)
                    self._keep_gone(conn, now)
            for identity, conn in list(self._gone.items()):
                if now - (conn.gone_since or now) > self.forget_after:
                    del self._gone[identity]

    def _keep_gone(self, conn: _Connection, now: float) -> None:
        """Remember a removed copy input, so that the trains it misses count as dropped for it
        until it comes back.  If the same input already came back on a new connection (a
        restarted process), its losses go to that connection at once."""
        if conn.distribution == "shared":
            return  # the group's losses are counted by the output (shared_dropped)
        for live in self._conns.values():
            if live.input_id == conn.input_id:
                live.dropped += conn.dropped
                return
        conn.gone_since = now
        self._gone[conn.identity] = conn

    def _send(self, conn: _Connection, entry: tuple | None) -> bool:
        """Send one queued entry ``(write_index, frames)`` (None = end of stream)."""
        if entry is None:
            msg = [conn.identity, _pack({"t": "eos", "s": self.session, "d": conn.dropped})]
        else:
            widx, frames, shm = entry
            head = {"t": "data", "s": self.session, "w": widx, "d": conn.dropped}
            if shm is not None and conn.shm and self._pool.lease(shm.keys):  # type: ignore
                for key in shm.keys:
                    conn.leases[key] += 1
                head["shm"] = shm.desc
                frames = shm.frames
            msg = [conn.identity, _pack(head), *frames]
        try:
            self._sends += 1
            _send_frames(self._router, msg)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the input went away
            log.warning("%s: cannot send to %s: %s", self.name, conn.input_id, exc)
            self._remove(conn.identity)
            if entry is not None and conn.distribution != "shared":
                conn.dropped += 1  # this train is lost for it (a shared one goes to another)
            self._keep_gone(conn, time.monotonic())
            return False
        conn.sent += 1
        return True

    def _shared_policy(self) -> str:
        if self.no_input_shared is not None:
            return self.no_input_shared
        levels = [c.slowness for c in self._conns.values() if c.distribution == "shared"]
        return max(levels, key=_STRICTNESS.__getitem__, default="drop")

    def _next_ready_shared(self) -> _Connection | None:
        while self._ready_shared:
            conn = self._conns.get(self._ready_shared[0])
            if conn is not None and conn.credit > 0:
                return conn
            self._ready_shared.popleft()
        return None

    def _give_shared(self, conn: _Connection | None, frames: list | None) -> bool:
        """Give a train to the ready shared input ``conn``; if it vanished, to the next ready
        one.  Returns whether one took it (if not, the caller keeps the train)."""
        while conn is not None:
            if not self._send(conn, frames):  # gone (e.g. a replica that died): try the next
                conn = self._next_ready_shared()
                continue
            if conn.credit <= 0:
                try:
                    self._ready_shared.remove(conn.identity)
                except ValueError:
                    pass
            elif conn.identity in self._ready_shared:
                # Move to the back: the next train goes to whoever was ready longest.
                self._ready_shared.remove(conn.identity)
                self._ready_shared.append(conn.identity)
            return True
        return False

    def _progress(self) -> None:
        """Send what can be sent: queues first, then the current item, then new items.

        Called with ``self._lock`` held."""
        for conn in list(self._conns.values()):
            if conn.distribution == "shared" and self._shared_queue:
                continue  # shared EOS waits until the common queue is empty
            while conn.queue and conn.credit > 0 and conn.identity in self._conns:
                self._send(conn, conn.queue.popleft())
        while self._shared_queue:
            conn = self._next_ready_shared()
            if conn is None or not self._give_shared(conn, self._shared_queue[0]):
                break
            self._shared_queue.popleft()
        while True:
            if self._current is None:
                if not self._inbox:
                    return
                self._current = self._inbox.popleft()
                self._dispatch_new(self._current)
            cur = self._current
            self._continue(cur)
            if cur.waiting or cur.shared_open:
                return
            self._current = None
            self._completed += 1
            cur.done.set()

    def _dispatch_new(self, cur: _Pending) -> None:
        frames = None
        if cur.frames is not None:
            frames = cur.entry = (self._write_index, cur.frames, cur.shm)
            self._write_index += 1
        eos = frames is None
        has_shared = False
        if not eos:
            for conn in self._gone.values():
                conn.dropped += 1
        for conn in list(self._conns.values()):
            if conn.distribution == "shared":
                has_shared = True
                if eos:  # EOS goes to every shared input, after the common queue
                    if conn.credit > 0 and not conn.queue and not self._shared_queue:
                        self._send(conn, None)
                    else:
                        conn.queue.append(None)
                continue
            if conn.credit > 0 and not conn.queue:
                self._send(conn, frames)
            elif eos or conn.slowness == "queueDrop":
                if eos or len(conn.queue) < conn.maxq:
                    conn.queue.append(frames)
                else:
                    conn.dropped += 1
            elif conn.slowness == "wait":
                cur.waiting.add(conn.identity)
                conn.queue.append(frames)  # kept in order; sent when the input asks
            else:
                conn.dropped += 1
        if (
            has_shared
            and not eos
            and (self._shared_queue or not self._give_shared(self._next_ready_shared(), frames))
        ):
            policy = self._shared_policy()
            if policy == "drop":
                self.shared_dropped += 1
            else:
                maxq = max(
                    (c.maxq for c in self._conns.values() if c.distribution == "shared"),
                    default=2,
                )
                if policy == "wait" or len(self._shared_queue) < maxq:
                    self._shared_queue.append(frames)
                    cur.shared_open = policy == "wait"
                else:
                    self.shared_dropped += 1

    def _continue(self, cur: _Pending) -> None:
        if cur.waiting:
            # A waited-for train is done for an input once it left that input's queue.
            cur.waiting = {
                ident
                for ident in cur.waiting
                if ident in self._conns and any(f is cur.entry for f in self._conns[ident].queue)
            }
        if cur.shared_open:
            has_shared = any(c.distribution == "shared" for c in self._conns.values())
            in_queue = any(f is cur.entry for f in self._shared_queue)
            cur.shared_open = has_shared and in_queue
            if not has_shared and in_queue:  # every shared input vanished
                self._shared_queue.clear()
                self.shared_dropped += 1


# ============================================================================================
# Input
# ============================================================================================


class EndOfStream:
    """Marker returned by :meth:`InputChannel.get` when every output sent end-of-stream."""

    def __repr__(self) -> str:
        return "EndOfStream()"


@dataclasses.dataclass
class Item:
    """One train received by an input channel."""

    data: dict
    meta: dict
    endpoint: str
    write_index: int


class _Upstream:
    __slots__ = (
        "connects",
        "endpoint",
        "eos",
        "epoch",
        "fd",
        "heard",
        "last_credit_sent",
        "last_w",
        "missed",
        "monitor",
        "osess",
        "outstanding",
        "received",
        "shm_segments",
        "sock",
    )

    def __init__(self, endpoint: str, sock: zmq.Socket, monitor: zmq.Socket | None = None):
        self.endpoint = endpoint
        self.sock = sock
        self.fd = sock.getsockopt(zmq.FD)  # what the channel's thread sleeps on
        self.monitor = monitor  # ZeroMQ's connection events of ``sock``
        self.connects = 0  # TCP connections made
        self.epoch = 0  # reconnections: the output starts a new connection record on each
        self.osess: str | None = None
        self.received = 0  # data messages received in the current output session
        self.outstanding = 0  # received but not yet consumed and released
        self.last_w = -1
        self.missed = 0
        self.eos = False
        self.heard = False
        self.last_credit_sent = 0.0
        self.shm_segments = ""  # name prefix of the output's shared-memory segments


class InputChannel:
    """The receiving end of pipeline connections.

    Parameters
    ----------
    name : str
        Channel ID, conventionally ``'<deviceId>:<channel>'``.
    data_distribution : {'copy', 'shared'}
        ``copy``: receive every train; ``shared``: share the trains of each output with its other
        shared inputs.
    on_slowness : {'drop', 'queueDrop', 'wait'}
        What each output does with a train while this input is not ready (see module docs).
    max_queue_length : int
        Queue length at the output for ``queueDrop``.
    window : int
        Trains this input holds per output: one being processed plus ``window - 1`` buffered.
    heartbeat : float
        Seconds between repeated credit messages.
    shared_memory : bool
        Read large frames from shared memory when the output is another process on this host
        (see :mod:`pulsetrain.runtime.shmem`; ``PULSETRAIN_SHM=0`` switches it off everywhere).
    """

    def __init__(
        self,
        name: str,
        *,
        data_distribution: str = "copy",
        on_slowness: str = "drop",
        max_queue_length: int = 2,
        window: int = 2,
        heartbeat: float = 0.5,
        context: zmq.Context | None = None,
        shared_memory: bool = True,
    ):
        self.data_distribution, self.on_slowness, self.max_queue_length = validate_policy(
            data_distribution, on_slowness, max_queue_length
        )
        if window < 1:
            raise ConfigurationError("window must be >= 1")
        _keep_freed_buffers()
        self.name = name
        self.window = window
        self.heartbeat = heartbeat
        self.session = uuid.uuid4().hex[:12]
        self._ctx = _context(context)
        self._ups: dict[str, _Upstream] = {}
        self._by_sock: dict[zmq.Socket, _Upstream] = {}
        self._buffer: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._processing: _Upstream | None = None
        # See on_arrival(): called (from the channel's thread) when a train arrives while the
        # consumer has not been told of one it has yet to take.
        self._notify: Callable[[], None] | None = None
        self._notified = False
        self._commands: collections.deque = collections.deque()
        wake = f"inproc://pt-in-wake-{id(self)}-{self.session}"
        self._wake_r = self._ctx.socket(zmq.PAIR)
        self._wake_r.bind(wake)
        self._wake_w = self._ctx.socket(zmq.PAIR)
        self._wake_w.connect(wake)
        self._wake_lock = threading.Lock()
        # Guards the data sockets and the upstream records: the channel's thread receives,
        # and release() sends the credit from the consumer's thread (no hop to that thread).
        self._sock_lock = threading.Lock()
        self.received = 0
        self.errors = 0
        self.last_error = ""
        self._closing = False
        self._host = shmem.host_id() if shared_memory else None
        self._shm_reader = shmem.SegmentReader(self._free) if self._host else None
        self.shm_received = 0  # trains whose large frames came through shared memory
        self._thread = threading.Thread(target=self._loop, name=f"in:{name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- public API
    def connect(self, endpoint: str) -> None:
        """Start reading from the output bound at ``endpoint`` (idempotent)."""
        self._command(("connect", endpoint))

    def disconnect(self, endpoint: str) -> None:
        """Stop reading from ``endpoint``."""
        self._command(("disconnect", endpoint))

    @property
    def endpoints(self) -> list[str]:
        """The outputs this input is connected to."""
        return list(self._ups)

    @property
    def missed(self) -> int:
        """Trains the outputs wrote that this input did not get (``copy`` inputs only)."""
        return sum(u.missed for u in list(self._ups.values()))

    def get(self, timeout: float | None = None) -> Item | EndOfStream:
        """Return the next train (or :class:`EndOfStream`), releasing the previous one.

        Calling ``get`` tells the outputs this input is ready for more, so keep processing
        between two calls: that is what makes a slow consumer slow to its producers.

        Raises
        ------
        TimeoutError
            Nothing arrived within ``timeout`` seconds.
        """
        self.release()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._buffer:
                if self._closing:
                    raise ChannelError(f"input {self.name} is closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"input {self.name}: no data within {timeout} s")
                self._cond.wait(remaining)
            up, item = self._buffer.popleft()
            self._processing = up
        return item

    def on_arrival(self, notify: Callable[[], None]) -> None:
        """Be told of trains instead of waiting for them in :meth:`get`.

        ``notify()`` is called (from the channel's thread, so it must only hand over, e.g.
        queue a job) when a train or end-of-stream arrives and the consumer was not already
        told of one it has not taken: the consumer then calls :meth:`take` until it returns
        ``None``, and :meth:`release` after each train it processed.  This saves a thread
        per consumer (and two thread switches per train) over a thread blocked in :meth:`get`.
        """
        with self._cond:
            self._notify = notify
            self._notified = bool(self._buffer)
        if self._notified:
            notify()

    def take(self) -> Item | EndOfStream | None:
        """The next train (or end-of-stream) without waiting; ``None`` when there is none.

        After ``None``, the next arrival calls the ``notify`` of :meth:`on_arrival` again.
        Unlike :meth:`get`, this does not release the previous train: call :meth:`release`.
        """
        with self._cond:
            if not self._buffer:
                self._notified = False
                return None
            up, item = self._buffer.popleft()
            self._processing = up
        return item

    def release(self) -> None:
        """Mark the train returned by the last :meth:`get` as processed (frees a credit)."""
        with self._cond:
            up, self._processing = self._processing, None
        if up is not None:
            with self._sock_lock:
                if self._ups.get(up.endpoint) is up:
                    up.outstanding = max(0, up.outstanding - 1)
                    self._send_credit(up)
                    self._drain(up)

    def close(self) -> None:
        """Say goodbye to the outputs and close the sockets."""
        if self._closing:
            return
        self._command(("close", None))
        self._thread.join(timeout=5)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for sock in (self._wake_r, self._wake_w):
            sock.close(0)
        if self._shm_reader is not None:
            self._shm_reader.close()

    def __enter__(self) -> InputChannel:  # noqa: PYI034 - Python 3.10 has no typing.Self
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    def _command(self, cmd: tuple) -> None:
        self._commands.append(cmd)
        with self._wake_lock:
            try:
                self._wake_w.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def _free(self, segment: str, gen: int) -> None:
        """Called (from any thread) when a train read from shared memory is garbage."""
        self._command(("free", (segment, gen)))

    def _credit_msg(self, up: _Upstream) -> bytes:
        msg = {
            "t": "credit",
            "in": self.name,
            "isess": self.session,
            "ep": up.epoch,
            "osess": up.osess,
            "rcv": up.received,
            "win": max(0, self.window - up.outstanding),
            "dist": self.data_distribution,
            "slow": self.on_slowness,
            "maxq": self.max_queue_length,
        }
        if self._shm_reader is not None:
            msg.update(shm=True, host=self._host, pid=os.getpid())
        return _pack(msg)

    def _send_credit(self, up: _Upstream) -> None:
        # 'win' is the number of free slots counted from what was received: the output may
        # send while its count of sent trains is below received + free slots.
        try:
            up.sock.send(self._credit_msg(up), zmq.NOBLOCK)
            up.last_credit_sent = time.monotonic()
        except zmq.ZMQError:
            pass  # not connected (yet): the heartbeat repeats it

    def _open(self, endpoint: str, poller: zmq.Poller) -> None:
        if endpoint in self._ups:
            return
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.SNDHWM, 16)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_IVL_MAX_MS)
        _set_liveness_options(sock)
        sock.setsockopt(zmq.ROUTING_ID, f"{self.name}#{self.session}#{len(self._ups)}".encode())
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            self.errors += 1
            self.last_error = f"cannot connect to {endpoint!r}: {exc}"
            log.error("%s: %s", self.name, self.last_error)
            return
        monitor = None
        if endpoint.startswith("tcp://"):
            # A TCP connection that ZeroMQ made again (after a link was down) starts a new
            # connection record at the output: trains lost with the old one are counted there.
            monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED)
        up = _Upstream(endpoint, sock, monitor)
        self._ups[endpoint] = up
        # The socket's descriptor, not the socket: release() uses the socket from another
        # thread (under _sock_lock), which zmq_poll on the socket here would not respect.
        self._by_sock[up.fd] = up
        poller.register(up.fd, zmq.POLLIN)
        if monitor is not None:
            self._by_sock[monitor] = up
            poller.register(monitor, zmq.POLLIN)
        self._send_credit(up)

    def _close_up(self, up: _Upstream, poller: zmq.Poller, goodbye: bool) -> None:
        if goodbye:
            try:
                up.sock.send(_pack({"t": "bye"}), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        poller.unregister(up.fd)
        if up.monitor is not None:
            poller.unregister(up.monitor)
            self._by_sock.pop(up.monitor, None)
            up.sock.disable_monitor()
            up.monitor.close(0)
        up.sock.close(0)
        self._ups.pop(up.endpoint, None)
        self._by_sock.pop(up.fd, None)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        while True:
            try:
                events = dict(poller.poll(timeout=int(self.heartbeat * 1000)))
            except zmq.ZMQError:  # pragma: no cover
                break
            if self._wake_r in events:
                while True:
                    try:
                        self._wake_r.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            with self._sock_lock:
                if not self._step(poller, events):
                    return

    def _step(self, poller: zmq.Poller, events: dict) -> bool:
        """One turn of the channel's thread (``_sock_lock`` held); False once closed."""
        while self._commands:
            op, arg = self._commands.popleft()
            if op == "connect":
                self._open(arg, poller)
            elif op == "disconnect":
                up = self._ups.get(arg)
                if up is not None:
                    self._close_up(up, poller, goodbye=True)
            elif op == "free":
                # Segment names carry the producer's pid and session: send to all outputs;
                # only the one that owns it has a lease to drop (others ignore it).
                seg, gen = arg
                msg = _pack({"t": "free", "seg": seg, "gen": gen})
                for up in self._ups.values():
                    if up.shm_segments and seg.startswith(up.shm_segments):
                        try:
                            up.sock.send(msg, zmq.NOBLOCK)
                        except zmq.ZMQError:
                            pass
            elif op == "close":
                for up in list(self._ups.values()):
                    self._close_up(up, poller, goodbye=True)
                return False
        for key in events:
            up = self._by_sock.get(key)
            if up is not None and key is up.monitor:
                self._on_monitor_event(up)
        now = time.monotonic()
        for up in list(self._ups.values()):
            if now - up.last_credit_sent >= self.heartbeat:
                self._send_credit(up)
            # Every upstream, whether its descriptor fired or not: it only signals changes,
            # and a send (here or in release()) may have taken the signal of a new message.
            self._drain(up)
        return True

    def _drain(self, up: _Upstream) -> None:
        """Receive all that ``up`` has (``_sock_lock`` held): after this, a new message
        signals the socket's descriptor again."""
        sock = up.sock
        while sock.getsockopt(_EVENTS) & _POLLIN:
            self._on_message(up, sock.recv_multipart(_NOBLOCK, copy=False))
            if self._ups.get(up.endpoint) is not up:  # pragma: no cover - closed meanwhile
                return

    def _on_monitor_event(self, up: _Upstream) -> None:
        while True:
            try:
                frames = up.monitor.recv_multipart(zmq.NOBLOCK)  # type: ignore[union-attr]
            except zmq.Again:
                return
            event = int.from_bytes(frames[0][:2], "little") if frames and frames[0] else 0
            if event != zmq.EVENT_CONNECTED:
                continue
            up.connects += 1
            if up.connects > 1:
                up.epoch += 1
                log.info("%s: reconnected to %s", self.name, up.endpoint)
                self._send_credit(up)

    def _on_message(self, up: _Upstream, frames: list) -> None:
        counted = False
        try:
            head = _unpack_ctl(frames[0].buffer)
            session = head.get("s")
            if session != up.osess:  # a new output (first contact or restarted)
                up.osess, up.received, up.last_w, up.eos = session, 0, -1, False
            up.heard = True
            # the output counts what it dropped for this connection and tells us
            up.missed = max(up.missed, int(head.get("d", 0)))
            kind = head.get("t")
            if kind == "eos":
                up.received += 1  # EOS uses a credit like data
                up.eos = True
                self._send_credit(up)  # confirms receipt at once (the output may be closing)
                if all(u.eos for u in self._ups.values() if u.heard):
                    for u in self._ups.values():
                        u.eos = False
                    self._deliver(None, EndOfStream())
                return
            if kind != "data":
                raise ProtocolError(f"unknown message type {kind!r}")
            up.received += 1
            up.last_w = int(head.get("w", -1))
            up.outstanding += 1
            counted = True
            body = frames[1:]
            desc = head.get("shm")
            if desc is not None:
                body = self._attach(up, body, desc)
            data, meta = protocol.deserialize(body)
            self.received += 1
            self._deliver(up, Item(data, meta, up.endpoint, up.last_w))
        except ProtocolError as exc:
            self.errors += 1
            self.last_error = f"bad message from {up.endpoint}: {exc}"
            log.error("%s: %s", self.name, self.last_error)
            if counted:
                up.outstanding -= 1
            self._send_credit(up)

    def _attach(self, up: _Upstream, body: list, desc: Any) -> list:
        if self._shm_reader is None:
            raise ProtocolError("shared-memory frames sent to an input that did not ask for them")
        try:
            body = self._shm_reader.attach(body, desc)
        except OSError as exc:
            # Not the same /dev/shm after all, or the segment is gone: ask for sockets only.
            self._shm_reader = None
            raise ProtocolError(
                f"cannot map shared memory ({exc}); reading over the socket from now on"
            ) from exc
        up.shm_segments = desc[0][1].rsplit("-", 1)[0] + "-"
        self.shm_received += 1
        return body

    def _deliver(self, up: _Upstream | None, item: Any) -> None:
        with self._cond:
            self._buffer.append((up, item))
            self._cond.notify()
            notify = None if self._notified else self._notify
            self._notified = True
        if notify is not None:
            notify()


_ids = itertools.count()


def free_tcp_endpoint(host: str = "127.0.0.1") -> str:
    """``tcp://host:port`` with a port from :func:`free_port`."""
    return f"tcp://{host}:{free_port(host)}"


def ipc_endpoint(name: str) -> str:
    """An ``ipc://`` endpoint in the temporary directory, unique to this process."""
    import tempfile

    safe = "".join(c if c.isalnum() else "_" for c in name)
    return f"ipc://{tempfile.gettempdir()}/pt-{os.getpid()}-{next(_ids)}-{safe}"
