"""``Bridge``: a Karabo bridge output at any point of a pipeline (a pipeline sink)."""

from __future__ import annotations

import fnmatch
import queue

from pulsetrain.device import Device, Property, State

__all__ = ["Bridge"]


class Bridge(Device):
    """Serve the trains arriving on ``input`` to Karabo bridge clients (ZeroMQ).

    Stock clients (``karabo_bridge.Client``, EXtra-foam, OnDA) connect unchanged.  The bridge
    never slows the pipeline: when clients do not keep up, trains are dropped here and counted
    (``dropped``); a client that needs every train uses REQ against ``pattern = 'REP'`` and a
    pipeline input with ``on_slowness = 'wait'``, set with ``block = true``.
    """

    inputs = {"input": {}}

    endpoint = Property(str, "tcp://127.0.0.1:4545", access="init",
                        description="address the bridge binds (port 0: any free port)")
    pattern = Property(str, "REP", options=("REP", "PUB", "PUSH"), access="init")
    protocol_version = Property(str, "2.2", options=("1.0", "2.2"), access="init")
    max_queue = Property(int, 2, minimum=1, maximum=100, access="init",
                         description="trains waiting for clients before dropping")
    block = Property(bool, False, access="init",
                     description="wait for clients instead of dropping (back-pressure upstream)")
    sources = Property(list, [], description="source globs to forward (empty: all)")
    keys = Property(list, [], description="key globs to forward (empty: all)")
    dummy_timestamps = Property(bool, False, access="init",
                                description="add timestamps to sources without them (OnDA)")

    boundEndpoint = Property(str, "", access="readonly")
    fed = Property(int, 0, access="readonly", description="trains accepted")
    sent = Property(int, 0, access="readonly", description="trains sent to clients")
    dropped = Property(int, 0, access="readonly", description="trains dropped at the bridge")

    def initialize(self) -> None:
        from pulsetrain.bridge import BridgeServer

        self._server = BridgeServer(
            self.endpoint, self.pattern, self.protocol_version, maxlen=self.max_queue,
            dummy_timestamps=self.dummy_timestamps,
        ).start()
        self._full = 0
        self.update(boundEndpoint=self._server.endpoint)
        self.every(1.0, self._stats)
        self.set_state(State.ON, f"serving {self.pattern} on {self._server.endpoint}")

    def _select(self, data: dict, meta: dict) -> tuple[dict, dict]:
        if not self.sources and not self.keys:
            return data, meta
        out = {}
        for src, props in data.items():
            if self.sources and not any(fnmatch.fnmatchcase(src, p) for p in self.sources):
                continue
            if self.keys:
                props = {k: v for k, v in props.items()
                         if any(fnmatch.fnmatchcase(k, p) for p in self.keys)}
            out[src] = props
        return out, {s: meta[s] for s in out if s in meta}

    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        data, meta = self._select(data, meta)
        if not data:
            return
        try:
            self._server.feed(data, meta, block=self.block, timeout=None if self.block else 0)
        except queue.Full:
            self._full += 1

    def _stats(self) -> None:
        s = self._server
        self.update(fed=s.fed, sent=s.sent, dropped=s.dropped + self._full)

    def shutdown(self) -> None:
        self._server.stop()
