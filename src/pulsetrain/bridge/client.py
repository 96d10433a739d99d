"""A Karabo bridge client: a drop-in for ``karabo_bridge.Client``.

Differences from karabo-bridge-py, all on the side of robustness:

* A malformed message raises :class:`pulsetrain.errors.ProtocolError` naming the problem
  (karabo-bridge-py raises whatever msgpack or numpy raise); the next call receives the next
  train as usual.
* REQ: after a :class:`TimeoutError` the request stays pending, so the next call receives its
  reply (no train is skipped).  If the connection to the server drops while a request is
  pending (server restarted), the request is sent again (``ZMQ_REQ_RELAXED`` with
  ``ZMQ_REQ_CORRELATE``, so a late reply to the old request is discarded by ZeroMQ).
* A context passed in by the caller is left alone when the client is closed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from pulsetrain.errors import ChannelError, ConfigurationError, ProtocolError
from pulsetrain.protocol import deserialize

__all__ = ["SOCKET_TYPES", "Client"]

log = logging.getLogger(__name__)

#: Client socket types and the server pattern each talks to.
SOCKET_TYPES = {"REQ": "REP", "SUB": "PUB", "PULL": "PUSH"}

_NEXT = b"next"


class Client:
    """Receive trains from a Karabo bridge server.

    Parameters
    ----------
    endpoint : str
        ZeroMQ address of the server, e.g. ``'tcp://localhost:4545'``.
    sock : {'REQ', 'SUB', 'PULL'}
        Socket type; must match the server (REP, PUB, PUSH respectively).
    ser : str
        Serialisation; only ``'msgpack'`` (kept for compatibility with karabo-bridge-py).
    timeout : float, optional
        Seconds :meth:`next` waits before raising :class:`TimeoutError`; None waits forever.
    context : zmq.Context, optional
        ZeroMQ context to use; by default the client creates (and terminates) its own.

    Attributes
    ----------
    received : int
        Messages received (good or malformed).
    protocol_errors : int
        Malformed messages received.

    Examples
    --------
    >>> with Client("tcp://localhost:4545", timeout=5) as client:  # doctest: +SKIP
    ...     data, meta = client.next()
    ...     for data, meta in client:
    ...         ...
    """

    def __init__(
        self,
        endpoint: str,
        sock: str = "REQ",
        ser: str = "msgpack",
        timeout: float | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        if ser != "msgpack":
            raise ConfigurationError(f"unsupported serialisation {ser!r}: only 'msgpack'")
        sock = str(sock).upper()
        if sock not in SOCKET_TYPES:
            raise ConfigurationError(
                f"unsupported socket type {sock!r}; expected one of {tuple(SOCKET_TYPES)}"
            )
        if timeout is not None and timeout < 0:
            raise ConfigurationError(f"timeout must be >= 0 seconds, not {timeout!r}")
        self.endpoint = endpoint
        self.sock_type = sock
        self._timeout = timeout
        self.received = 0
        self.protocol_errors = 0

        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._socket = self._context.socket(getattr(zmq, sock))
        self._monitor: zmq.Socket | None = None
        self._pending = False  # REQ: a request is waiting for its reply
        self._closed = False
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.set_hwm(1)
            if sock == "SUB":
                self._socket.setsockopt(zmq.SUBSCRIBE, b"")
            elif sock == "REQ":
                self._socket.setsockopt(zmq.REQ_RELAXED, 1)
                self._socket.setsockopt(zmq.REQ_CORRELATE, 1)
                self._monitor = self._socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
                self._poller = zmq.Poller()
                self._poller.register(self._socket, zmq.POLLIN)
                self._poller.register(self._monitor, zmq.POLLIN)
            self.timeout = timeout
            self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ChannelError(f"cannot connect bridge client to {endpoint!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"<pulsetrain.bridge.Client {self.sock_type} {self.endpoint}>"

    @property
    def timeout(self) -> float | None:
        """Seconds :meth:`next` waits for a train (None: forever); may be changed any time."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        if value is not None and value < 0:
            raise ConfigurationError(f"timeout must be >= 0 seconds, not {value!r}")
        self._timeout = value
        if self.sock_type != "REQ":  # REQ waits in a poller (see _request)
            self._socket.setsockopt(zmq.RCVTIMEO, -1 if value is None else int(value * 1000))

    # ----------------------------------------------------------------------------------------

    def next(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """Receive the next train; blocks up to ``timeout``.

        Returns
        -------
        data : dict
            ``data[source][key]``; with protocol 2.2, arrays are read-only views on the
            received frames (no copy).
        meta : dict
            ``meta[source]``: source, timestamp, timestamp.sec, timestamp.frac, timestamp.tid.

        Raises
        ------
        TimeoutError
            Nothing arrived within ``timeout``; the client stays usable.
        pulsetrain.errors.ProtocolError
            The message was malformed; the client stays usable.
        """
        if self._closed:
            raise ChannelError(f"bridge client for {self.endpoint} is closed")
        if self.sock_type == "REQ":
            frames = self._request()
        else:
            try:
                frames = self._socket.recv_multipart(copy=False)
            except zmq.Again:
                raise self._timeout_error() from None
        self.received += 1
        try:
            return deserialize(frames)
        except ProtocolError as exc:
            self.protocol_errors += 1
            log.warning("malformed message from %s: %s", self.endpoint, exc)
            raise

    def _timeout_error(self) -> TimeoutError:
        return TimeoutError(
            f"no data received from {self.endpoint} ({self.sock_type}) in the last {self.timeout} s"
        )

    def _disconnected(self) -> bool:
        """Drain the monitor; True if the connection dropped since the last call."""
        dropped = False
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return dropped
            if event["event"] == zmq.EVENT_DISCONNECTED:
                dropped = True

    def _request(self) -> list[zmq.Frame]:
        if not self._pending:
            self._disconnected()  # forget drops from before this request
            self._socket.send(_NEXT)
            self._pending = True
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            if deadline is None:
                wait_ms = None
            else:
                wait_ms = max(0.0, (deadline - time.monotonic()) * 1000)
            events = dict(self._poller.poll(wait_ms))
            # The reply first: a server that sends its last train and closes (a replay at its
            # end) makes the reply and the disconnection arrive together.  Asking again before
            # reading would make REQ_CORRELATE discard that reply: the last train would be lost.
            if self._socket in events:
                try:
                    frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:  # a stale reply, discarded by REQ_CORRELATE
                    pass
                else:
                    self._pending = False
                    return frames
            if (
                self._monitor in events
                and self._disconnected()
                and not self._socket.poll(0, zmq.POLLIN)
            ):
                # The server went away while our request was pending and no reply came: the
                # request is lost with it.  Ask again (REQ_RELAXED); a stale reply to the old
                # request would be discarded (REQ_CORRELATE).
                log.info("connection to %s dropped; sending the request again", self.endpoint)
                self._socket.send(_NEXT)
            if deadline is not None and time.monotonic() >= deadline:
                raise self._timeout_error()

    # ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket (and the context, if the client created it)."""
        if self._closed:
            return
        self._closed = True
        if self._monitor is not None:
            try:
                self._socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(linger=0)
        self._socket.close(linger=0)
        if self._own_context:
            self._context.term()

    def __enter__(self) -> Client:  # noqa: PYI034
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Client:
        return self

    def __next__(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        return self.next()
