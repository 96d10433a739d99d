"""``Bridge``: a Karabo bridge output at any point of a pipeline (a pipeline sink)."""

from __future__ import annotations

import fnmatch
import queue
from typing import Any, ClassVar

import zmq

from pulsetrain.errors import ChannelError
from pulsetrain.runtime.device import Device, Property, State, slot

__all__ = ["Bridge"]


class Bridge(Device):
    """Serve the trains arriving on ``input`` to Karabo bridge clients (ZeroMQ).

    Stock clients (``karabo_bridge.Client``, EXtra-foam, OnDA) connect unchanged.  The bridge
    never slows the pipeline: when clients do not keep up, trains are dropped here and counted
    (``dropped``); a client that needs every train uses REQ against ``pattern = 'REP'`` and a
    pipeline input with ``on_slowness = 'wait'``, set with ``block = true``.

    The bridge binds first and announces after: ``boundEndpoint`` is set only once the address
    is bound.  If the bind fails (the port is taken by another program), the device goes to
    ERROR once with the bind error in ``status`` (``cannot bind tcp://...: Address already in
    use``) and stays there quietly: trains arriving meanwhile are dropped and counted in
    ``dropped``.  ``reset`` tries the bind again.
    """

    inputs: ClassVar[dict[str, dict[str, Any]]] = {"input": {}}

    endpoint = Property(
        str,
        "tcp://127.0.0.1:4545",
        access="init",
        description="address the bridge binds (port 0: any free port)",
    )
    pattern = Property(str, "REP", options=("REP", "PUB", "PUSH"), access="init")
    protocol_version = Property(str, "2.2", options=("1.0", "2.2"), access="init")
    max_queue = Property(
        int,
        2,
        minimum=1,
        maximum=100,
        access="init",
        description="trains waiting for clients before dropping",
    )
    block = Property(
        bool,
        False,
        access="init",
        description="wait for clients instead of dropping (back-pressure upstream)",
    )
    sources = Property(list, [], description="source globs to forward (empty: all)")
    keys = Property(list, [], description="key globs to forward (empty: all)")
    dummy_timestamps = Property(
        bool, False, access="init", description="add timestamps to sources without them (OnDA)"
    )

    boundEndpoint = Property(str, "", access="readonly")
    fed = Property(int, 0, access="readonly", description="trains accepted")
    sent = Property(int, 0, access="readonly", description="trains sent to clients")
    dropped = Property(int, 0, access="readonly", description="trains dropped at the bridge")

    def initialize(self) -> None:
        self._server: Any = None
        self._full = 0
        self._unbound = 0
        if self._bind():
            self.every(1.0, self._stats)

    def _bind(self) -> bool:
        """Bind the bridge server; on failure go to ERROR with the bind error (logged once)."""
        from pulsetrain.bridge import BridgeServer

        try:
            server = BridgeServer(
                self.endpoint,
                self.pattern,
                self.protocol_version,
                maxlen=self.max_queue,
                dummy_timestamps=self.dummy_timestamps,
            )
        except ChannelError as exc:
            cause = exc.__cause__
            reason = zmq.strerror(cause.errno) if isinstance(cause, zmq.ZMQError) else exc
            self.set_error(f"cannot bind {self.endpoint}: {reason}")
            return False
        self._server = server.start()
        self.update(boundEndpoint=server.endpoint)
        self.set_state(State.ON, f"serving {self.pattern} on {server.endpoint}")
        return True

    @slot(description="Leave state ERROR: bind again if the bind had failed, then ON")
    def reset(self) -> None:
        """Leave state ERROR; if the address was not bound, try to bind it again."""
        if self.state != State.ERROR.value:
            return
        if self._server is None:
            if self._bind():
                self.every(1.0, self._stats)
        else:
            self.set_state(State.ON, "reset")

    def _select(self, data: dict, meta: dict) -> tuple[dict, dict]:
        if not self.sources and not self.keys:
            return data, meta
        out = {}
        for src, props in data.items():
            if self.sources and not any(fnmatch.fnmatchcase(src, p) for p in self.sources):
                continue
            if self.keys:
                props = {
                    k: v
                    for k, v in props.items()
                    if any(fnmatch.fnmatchcase(k, p) for p in self.keys)
                }
            out[src] = props
        return out, {s: meta[s] for s in out if s in meta}

    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        if self._server is None:  # not bound: the reason is in status, said once
            self._unbound += 1
            self.record(dropped=self._unbound)
            return
        data, meta = self._select(data, meta)
        if not data:
            return
        try:
            self._server.feed(data, meta, block=self.block, timeout=None if self.block else 0)
        except queue.Full:
            self._full += 1

    def _stats(self) -> None:
        s = self._server
        self.update(fed=s.fed, sent=s.sent, dropped=s.dropped + self._full + self._unbound)

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.stop()
