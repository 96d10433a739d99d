"""``FaultInjector``: a misbehaving analysis device, for proving isolation (tests, drills)."""

from __future__ import annotations

import ctypes
import os
import signal

import numpy as np

from pulsetrain.protocol import make_meta
from pulsetrain.runtime.device import Device, Property, State, slot

__all__ = ["FaultInjector"]


class FaultInjector(Device):
    """Forward trains like ``Passthrough`` until armed, then misbehave as ``fault`` says.

    ``raise``: raise an exception on every train.  ``segfault``: crash its own process with
    SIGSEGV (a real segmentation fault through ctypes).  ``leak``: keep ``leak_mb`` of memory per
    train forever.  ``flood``: write ``flood_factor`` trains for every train received, as fast as
    the output allows.  ``stall``: block in ``on_data`` for ``stall_s`` seconds.
    """

    inputs = ("input",)
    outputs = ("output",)

    fault = Property(str, "none", options=("none", "raise", "segfault", "leak", "flood", "stall"))
    armed = Property(bool, False, description="misbehave from now on")
    after_trains = Property(int, 0, minimum=0, description="arm after this many trains")
    leak_mb = Property(float, 50.0, minimum=0.0, unit="MB")
    flood_factor = Property(int, 100, minimum=1)
    stall_s = Property(float, 3600.0, minimum=0.0, unit="s")
    seen = Property(int, 0, access="readonly")
    leaked_mb = Property(float, 0.0, access="readonly", unit="MB")

    def initialize(self) -> None:
        self._hoard: list[np.ndarray] = []
        self.set_state(State.PROCESSING)

    @slot(description="Start misbehaving")
    def arm(self) -> None:
        """Start misbehaving."""
        self.armed = True

    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        self.count("seen")
        if self.after_trains and self.seen >= self.after_trains and not self.armed:
            self.update(armed=True)
        if not self.armed or self.fault == "none":
            self.write("output", data, meta)
            return
        if self.fault == "raise":
            raise RuntimeError("injected fault: analysis failed on this train")
        if self.fault == "segfault":
            self.log.critical("injected fault: segmentation fault")
            ctypes.string_at(0)  # dereference NULL: SIGSEGV
            os.kill(os.getpid(), signal.SIGSEGV)  # pragma: no cover - not reached
        if self.fault == "leak":
            block = np.ones(int(self.leak_mb * 2**20 / 8), dtype=np.float64)  # touched pages
            self._hoard.append(block)
            self.count("leaked_mb", self.leak_mb)
            self.write("output", data, meta)
        elif self.fault == "flood":
            src = f"{self.device_id}/FLOOD"
            tid = next((m.get("timestamp.tid", 0) for m in meta.values()), 0)
            payload = np.zeros((64, 1024), np.float32)
            for _ in range(self.flood_factor):
                self.write("output", {src: {"junk": payload}}, {src: make_meta(src, tid)})
        elif self.fault == "stall":
            self.wait_stop(self.stall_s)  # busy with this train (woken up by a stop)
