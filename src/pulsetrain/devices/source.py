"""``TrainSource``: a test-pattern generator of trains at a set rate."""

from __future__ import annotations

import threading
import time

import numpy as np

from pulsetrain.device import Device, Property, State, slot
from pulsetrain.protocol import make_meta

__all__ = ["TrainSource"]

FIRST_TRAIN_ID = 10_000_000


class TrainSource(Device):
    """Write synthetic trains (``image.data`` filled with the train ID) at ``rate`` Hz.

    Each train has ``n_sources`` sources named ``<source_prefix><n>``; the array of every source
    is filled with the train ID (modulo the dtype's range), so receivers can check what they got.
    """

    outputs = ("output",)

    rate = Property(float, 10.0, minimum=0.0, maximum=100000.0, unit="Hz",
                    description="trains per second (0: as fast as the output accepts)")
    n_sources = Property(int, 1, minimum=1, maximum=64, access="init")
    source_prefix = Property(str, "SRC/DATA/", access="init")
    shape = Property(list, [16, 512, 128], access="init", description="array shape per source")
    dtype = Property(str, "uint16", options=("uint8", "uint16", "uint32", "float32", "float64"),
                     access="init")
    n_trains = Property(int, 0, minimum=0, access="init",
                        description="stop after this many trains and send end-of-stream (0: never)")
    autostart = Property(bool, True, access="init")
    sentTrains = Property(int, 0, access="readonly")
    trainId = Property(int, FIRST_TRAIN_ID, access="readonly", description="next train ID")
    actualRate = Property(float, 0.0, access="readonly", unit="Hz")

    def initialize(self) -> None:
        self._run = threading.Event()
        self._thread = threading.Thread(target=self._produce, daemon=True,
                                        name=f"source:{self.device_id}")
        self._thread.start()
        if self.autostart:
            self.start_acquisition()
        else:
            self.set_state(State.ON)

    @slot(allowed_states=("ON", "STOPPED"), description="Start writing trains")
    def start_acquisition(self) -> None:
        """Start writing trains."""
        self._run.set()
        self.set_state(State.ACQUIRING)

    @slot(allowed_states=("ACQUIRING",), description="Stop writing trains")
    def stop_acquisition(self) -> None:
        """Stop writing trains."""
        self._run.clear()
        self.set_state(State.STOPPED)

    def _produce(self) -> None:
        names = [f"{self.source_prefix}{i}" for i in range(self.n_sources)]
        dtype = np.dtype(self.dtype)
        t_next = time.monotonic()
        window: list[float] = []
        while not self._stopping.is_set():
            if not self._run.wait(0.2):
                continue
            tid = self._values["trainId"]
            fill = tid % (np.iinfo(dtype).max + 1) if dtype.kind == "u" else tid
            ts = time.time()
            data = {n: {"image.data": np.full(self.shape, fill, dtype=dtype),
                        "trainId": tid} for n in names}
            meta = {n: make_meta(n, tid, ts) for n in names}
            try:
                self.write("output", data, meta)
            except Exception as exc:
                if self._stopping.is_set():
                    return
                self.set_error(f"write failed: {exc}")
                return
            self._values["trainId"] = tid + 1
            self._values["sentTrains"] += 1
            now = time.monotonic()
            window.append(now)
            window = window[-50:]
            if len(window) > 1:
                self._values["actualRate"] = (len(window) - 1) / (window[-1] - window[0])
            if self.n_trains and self._values["sentTrains"] >= self.n_trains:
                self.signal_eos("output")
                self._run.clear()
                self.run_in_device(lambda: self.set_state(State.STOPPED, "all trains sent"))
                continue
            if self.rate > 0:
                t_next += 1.0 / self.rate
                delay = t_next - time.monotonic()
                if delay > 0:
                    self._stopping.wait(delay)
                elif delay < -1.0:
                    t_next = time.monotonic()
