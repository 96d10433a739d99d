"""A Karabo bridge server: trains fed by the caller, sent by a thread over ZeroMQ.

Three patterns, matching the three client socket types of karabo-bridge-py:

``'REP'`` (clients use ``REQ``)
    Each ``next`` request is answered with the next train fed, in order; a train is delivered
    exactly once.  ``feed`` blocks when ``maxlen`` trains are waiting.  Implemented on a ROUTER
    socket (wire-identical to REP for REQ peers) so that requests of peers that went away are
    skipped instead of swallowing a train, and so a bad request never blocks the server.
``'PUB'`` (clients use ``SUB``)
    Trains go to every subscriber; trains nobody can take are dropped and counted.  ``feed``
    never blocks.  Implemented on an XPUB socket with ``XPUB_NODROP`` so that a full
    subscriber queue (high-water mark 1) is *seen* as a failed send: the train is then kept in
    a latest-wins slot, replaced (and counted as dropped) when a newer train is fed.
``'PUSH'`` (clients use ``PULL``)
    Backpressure: trains wait until a client can take them; ``feed`` blocks when ``maxlen``
    trains are waiting.  Nothing is dropped while the server runs.

Every train is serialised once, in :meth:`BridgeServer.feed`, and sent without copying
(``copy=False``): do not modify the arrays of a train after feeding it.
"""

from __future__ import annotations

import collections
import logging
import queue
import socket
import threading
from collections.abc import Mapping
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from pulsetrain.errors import BridgeError, ChannelError, ConfigurationError
from pulsetrain.protocol import PROTOCOL_VERSIONS, serialize, train_id_of

__all__ = ["PATTERNS", "BridgeServer"]

log = logging.getLogger(__name__)

#: Server socket patterns and the client socket type that talks to each.
PATTERNS = {"REP": "REQ", "PUB": "SUB", "PUSH": "PULL"}

_NEXT = b"next"
# Retry interval while a peer's queue is full and ZeroMQ offers no POLLOUT event for it
# (ROUTER, XPUB): start short, back off to a cap.
_RETRY_MIN_MS = 0.5
_RETRY_MAX_MS = 20.0


class _Train:
    """One serialised train waiting to be sent."""

    __slots__ = ("frames", "train_id")

    def __init__(self, frames: list, train_id: int | None) -> None:
        self.frames = frames
        self.train_id = train_id


class BridgeServer:
    """Serve trains to Karabo bridge clients (``karabo_bridge.Client`` or pulsetrain's).

    Parameters
    ----------
    endpoint : str or int
        ZeroMQ address to bind, e.g. ``'tcp://127.0.0.1:4545'``; ``'tcp://127.0.0.1:0'`` binds
        a free port (read it back from :attr:`endpoint`).  An int is taken as a TCP port on all
        interfaces (``tcp://*:PORT``), as in karabo-bridge-py.
    pattern : {'REP', 'PUB', 'PUSH'}
        Server socket pattern; see the module documentation for the semantics.
    protocol_version : {'2.2', '1.0'}
        Karabo bridge protocol version to speak.
    maxlen : int
        How many trains may wait to be sent.  ``feed`` blocks (REP, PUSH) or drops the oldest
        waiting train (PUB) when this many are waiting.
    dummy_timestamps : bool
        Add the feeding time as timestamp to sources whose metadata have none.
    context : zmq.Context, optional
        ZeroMQ context to use; by default the server creates (and terminates) its own.

    Attributes
    ----------
    fed, sent, dropped, bad_requests : int
        Trains accepted by :meth:`feed`, trains handed to ZeroMQ for a connected client, trains
        dropped (PUB: no subscriber or overtaken by a newer train; any pattern: still waiting
        when the server stopped), and requests other than ``b'next'`` (REP).
    pending_requests : int
        REP: ``next`` requests of connected clients waiting for a train.
    subscribers : int
        PUB: subscriptions currently open.
    connections : int
        Client connections currently open.
    endpoint : str
        The bound address, with the port resolved.

    Examples
    --------
    >>> with BridgeServer("tcp://127.0.0.1:0", pattern="PUSH") as server:  # doctest: +SKIP
    ...     server.feed(data, meta)
    ...     server.flush(timeout=10)
    """

    def __init__(
        self,
        endpoint: str | int,
        pattern: str = "REP",
        protocol_version: str = "2.2",
        *,
        maxlen: int = 10,
        dummy_timestamps: bool = False,
        context: zmq.Context | None = None,
    ) -> None:
        pattern = str(pattern).upper()
        if pattern not in PATTERNS:
            raise ConfigurationError(
                f"unknown bridge server pattern {pattern!r}; expected one of {tuple(PATTERNS)}"
            )
        if protocol_version not in PROTOCOL_VERSIONS:
            raise ConfigurationError(
                f"unknown protocol version {protocol_version!r}; expected one of "
                f"{PROTOCOL_VERSIONS}"
            )
        if int(maxlen) < 1:
            raise ConfigurationError(f"maxlen must be at least 1, not {maxlen!r}")
        if isinstance(endpoint, int):
            endpoint = f"tcp://*:{endpoint}"

        self.pattern = pattern
        self.protocol_version = protocol_version
        self.maxlen = int(maxlen)
        self.dummy_timestamps = bool(dummy_timestamps)

        self.fed = 0
        self.sent = 0
        self.dropped = 0
        self.bad_requests = 0
        self.subscribers = 0  # PUB only: subscriptions currently known
        self.pending_requests = 0  # REP only: 'next' requests waiting for a train
        self.connections = 0  # clients connected (TCP/IPC connections accepted, not closed)

        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        sock_type = {"REP": zmq.ROUTER, "PUB": zmq.XPUB, "PUSH": zmq.PUSH}[pattern]
        self._socket = self._context.socket(sock_type)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.set_hwm(1)
            if pattern == "REP":
                self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
            elif pattern == "PUB":
                self._socket.setsockopt(zmq.XPUB_VERBOSER, 1)
                self._socket.setsockopt(zmq.XPUB_NODROP, 1)
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            if self._own_context:
                self._context.term()
            raise ChannelError(f"cannot bind bridge server to {endpoint!r}: {exc}") from exc
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._monitor = self._socket.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)

        # A socket pair wakes the sending thread (feed, stop); writable from any thread.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_fd = self._wake_r.fileno()
        self._wake_w.setblocking(False)

        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._queue: collections.deque[_Train] = collections.deque()
        self._holding: _Train | None = None  # taken from the queue, not yet sent
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------------------------------
    # Caller side
    # ----------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"<BridgeServer {self.pattern} {self.endpoint} protocol {self.protocol_version}: "
            f"fed {self.fed}, sent {self.sent}, dropped {self.dropped}>"
        )

    @property
    def queued(self) -> int:
        """Number of trains waiting to be sent (including one held by the sending thread)."""
        with self._lock:
            return len(self._queue) + (self._holding is not None)

    def start(self) -> BridgeServer:
        """Start the sending thread; returns the server."""
        with self._lock:
            if self._closed:
                raise BridgeError(f"bridge server {self.endpoint} is stopped; create a new one")
            if self._thread is not None:
                raise BridgeError(f"bridge server {self.endpoint} is already started")
            self._thread = threading.Thread(
                target=self._run, name=f"bridge-{self.pattern}-{self.endpoint}", daemon=True
            )
        self._thread.start()
        log.info(
            "bridge server %s %s started (protocol %s)",
            self.pattern,
            self.endpoint,
            self.protocol_version,
        )
        return self

    def feed(
        self,
        data: Mapping[str, Mapping[str, Any]],
        meta: Mapping[str, Mapping[str, Any]] | None = None,
        block: bool = True,
        timeout: float | None = None,
    ) -> None:
        """Queue one train for sending.

        Parameters
        ----------
        data : mapping
            ``data[source][key]`` of the train.
        meta : mapping, optional
            ``meta[source]`` metadata; by default ``data[source]['metadata']`` where present.
        block : bool
            REP and PUSH: wait for a free place in the queue when ``maxlen`` trains are waiting.
            If False, raise :class:`queue.Full` instead.  PUB never waits (the oldest waiting
            train is dropped).
        timeout : float, optional
            Longest wait in seconds before :class:`queue.Full` is raised.

        Raises
        ------
        queue.Full
            No place in the queue (``block=False``, or ``timeout`` expired).
        pulsetrain.errors.ProtocolError
            The train cannot be serialised.
        pulsetrain.errors.BridgeError
            The server is stopped.
        """
        if self._stopping:
            raise BridgeError(f"bridge server {self.endpoint} is stopped")
        frames = serialize(
            data, meta, self.protocol_version, dummy_timestamps=self.dummy_timestamps
        )
        if meta is None:
            meta = {src: props.get("metadata", {}) for src, props in data.items()}
        train = _Train(frames, train_id_of(meta))
        with self._not_full:
            if self.pattern == "PUB":
                if len(self._queue) >= self.maxlen:
                    old = self._queue.popleft()
                    self.dropped += 1
                    log.debug("PUB queue full: dropped train %s", old.train_id)
            elif len(self._queue) >= self.maxlen:
                if not block:
                    raise queue.Full
                if not self._not_full.wait_for(
                    lambda: len(self._queue) < self.maxlen or self._stopping, timeout
                ):
                    raise queue.Full
            if self._stopping:
                raise BridgeError(f"bridge server {self.endpoint} is stopped")
            was_empty = not self._queue
            self._queue.append(train)
            self.fed += 1
        if was_empty:
            self._wake()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every train fed has been sent or dropped.

        Returns True when the queue is empty, False if ``timeout`` (seconds) expired first.
        A train counts as sent once ZeroMQ has it; call :meth:`stop` with a ``linger`` to let
        ZeroMQ finish writing it to the network before the socket closes.
        """
        with self._idle:
            return (
                self._idle.wait_for(
                    lambda: (not self._queue and self._holding is None) or self._stopping, timeout
                )
                and not self._queue
                and self._holding is None
            )

    def stop(self, linger: float = 0.0) -> None:
        """Stop the sending thread and close the socket; never hangs on absent clients.

        Parameters
        ----------
        linger : float
            Seconds ZeroMQ may keep trying to deliver messages already handed to it
            (default 0: discard them, as karabo-bridge-py does).

        Trains still waiting are counted in :attr:`dropped`.  Calling ``stop`` again does
        nothing.
        """
        with self._lock:
            if self._closed:
                return
            self._stopping = True
            self._not_full.notify_all()
            self._idle.notify_all()
        self._wake()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            left = len(self._queue) + (self._holding is not None)
            self._queue.clear()
            self._holding = None
            self.dropped += left
            self._closed = True
        if left:
            log.warning("bridge server %s stopped with %d unsent train(s)", self.endpoint, left)
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._socket.close(linger=int(linger * 1000))
        self._wake_r.close()
        self._wake_w.close()
        if self._own_context:
            self._context.term()
        log.info("bridge server %s stopped: %s", self.endpoint, self.stats())

    def stats(self) -> dict[str, int]:
        """The counters as a dict: ``fed``, ``sent``, ``dropped``, ``bad_requests``, ``queued``."""
        return {
            "fed": self.fed,
            "sent": self.sent,
            "dropped": self.dropped,
            "bad_requests": self.bad_requests,
            "queued": self.queued,
        }

    def __enter__(self) -> BridgeServer:  # noqa: PYI034
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ----------------------------------------------------------------------------------------
    # Sending thread
    # ----------------------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already plenty of wake-ups pending, or closed

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _take(self) -> _Train | None:
        """Move the oldest waiting train into the hand of the sending thread."""
        with self._lock:
            if self._holding is None and self._queue:
                self._holding = self._queue.popleft()
                self._not_full.notify()
            return self._holding

    def _done(self, sent: bool) -> None:
        """The held train was sent (or dropped)."""
        with self._lock:
            if sent:
                self.sent += 1
            else:
                self.dropped += 1
            self._holding = None
            if not self._queue:
                self._idle.notify_all()

    def _poller(self, *extra: tuple[Any, int]) -> zmq.Poller:
        """A poller on the wake-up socket, the connection monitor and ``extra`` items."""
        poller = zmq.Poller()
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        for sock, flags in extra:
            poller.register(sock, flags)
        return poller

    def _poll(self, poller: zmq.Poller, timeout_ms: float | None) -> dict:
        events = dict(poller.poll(timeout_ms))
        if self._wake_fd in events or self._wake_r in events:  # pyzmq reports the fd
            self._drain_wake()
        if self._monitor in events:
            self._read_monitor()
        return events

    def _read_monitor(self) -> None:
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] == zmq.EVENT_ACCEPTED:
                self.connections += 1
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                self.connections = max(0, self.connections - 1)
            log.debug("bridge server %s: %d connection(s)", self.endpoint, self.connections)

    def _run(self) -> None:
        try:
            {"REP": self._run_rep, "PUB": self._run_pub, "PUSH": self._run_push}[self.pattern]()
        except zmq.ContextTerminated:
            pass
        except Exception:  # pragma: no cover - a bug; keep the caller informed
            log.exception("bridge server %s: sending thread failed", self.endpoint)
            with self._lock:
                self._stopping = True
                self._not_full.notify_all()
                self._idle.notify_all()

    def _run_push(self) -> None:
        sock = self._socket
        wait_train = self._poller()
        wait_peer = self._poller((sock, zmq.POLLOUT))
        while not self._stopping:
            train = self._take()
            if train is None:
                self._poll(wait_train, None)
                continue
            try:
                sock.send_multipart(train.frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._poll(wait_peer, None)  # no client ready: backpressure
                continue
            self._done(sent=True)

    def _run_pub(self) -> None:
        sock = self._socket
        poller = self._poller((sock, zmq.POLLIN))  # POLLIN: subscriptions
        retry_ms = _RETRY_MIN_MS
        while not self._stopping:
            self._read_subscriptions()
            train = self._take()
            if train is None:
                self._poll(poller, None)
                continue
            if self.subscribers <= 0:
                log.debug("PUB: no subscriber, dropped train %s", train.train_id)
                self._done(sent=False)
                continue
            try:
                sock.send_multipart(train.frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                # A subscriber's queue is full.  Latest wins: a newer waiting train replaces
                # the one in hand (and every older one), each counted as dropped.
                with self._lock:
                    if self._queue:
                        self.dropped += len(self._queue)  # all but the newest, plus the held
                        self._holding = self._queue.pop()
                        self._queue.clear()
                        self._not_full.notify_all()
                self._poll(poller, retry_ms)
                retry_ms = min(retry_ms * 2, _RETRY_MAX_MS)
                continue
            retry_ms = _RETRY_MIN_MS
            self._done(sent=True)

    def _read_subscriptions(self) -> None:
        sock = self._socket
        while True:
            try:
                msg = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.subscribers += 1
            elif msg[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)
            log.debug("PUB subscriptions now %d", self.subscribers)

    def _run_rep(self) -> None:
        poller = self._poller((self._socket, zmq.POLLIN))
        # Pending 'next' requests in arrival order: peer identity -> reply envelope.  A REQ peer
        # waits only for the reply to its latest request, so a newer request replaces an older.
        pending: collections.OrderedDict[bytes, list[bytes]] = collections.OrderedDict()
        retry_ms = _RETRY_MIN_MS
        while not self._stopping:
            self._read_requests(pending)
            busy = False
            if pending and self._take() is not None:
                outcome = self._reply(pending)
                self.pending_requests = len(pending)
                if outcome == "sent":
                    retry_ms = _RETRY_MIN_MS
                    continue
                busy = outcome == "busy"
            self.pending_requests = len(pending)
            self._poll(poller, retry_ms if busy else None)
            if busy:
                retry_ms = min(retry_ms * 2, _RETRY_MAX_MS)

    def _read_requests(self, pending: collections.OrderedDict) -> None:
        sock = self._socket
        while True:
            try:
                msg = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, rest = msg[0], msg[1:]
            try:
                split = rest.index(b"")
            except ValueError:  # no envelope delimiter: not a REQ peer
                self._bad_request([identity], rest)
                continue
            envelope, body = [identity, *rest[: split + 1]], rest[split + 1 :]
            if body == [_NEXT]:
                pending[identity] = envelope
            else:
                self._bad_request(envelope, body)

    def _bad_request(self, envelope: list[bytes], body: list[bytes]) -> None:
        self.bad_requests += 1
        shown = b" ".join(body)[:64]
        log.warning("bridge server %s: bad request %r", self.endpoint, shown)
        try:
            self._socket.send_multipart(
                [*envelope, b"Error: bad request %s" % shown], flags=zmq.NOBLOCK
            )
        except zmq.ZMQError:
            pass  # the peer is gone or not reading: nothing more to tell it

    def _reply(self, pending: collections.OrderedDict) -> str:
        """Send the held train to the oldest pending request that can take it.

        Returns ``'sent'``, ``'busy'`` (peers connected but not ready; retry later) or
        ``'gone'`` (every pending peer has disconnected).
        """
        train = self._holding
        busy = False
        for identity, envelope in list(pending.items()):
            try:
                self._socket.send_multipart(
                    [*envelope, *train.frames], flags=zmq.NOBLOCK, copy=False
                )
            except zmq.Again:
                busy = True  # this peer's queue is still full; try the next one
                continue
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:
                    raise
                del pending[identity]  # the peer went away; its request needs no answer
                continue
            del pending[identity]
            self._done(sent=True)
            return "sent"
        return "busy" if busy else "gone"
