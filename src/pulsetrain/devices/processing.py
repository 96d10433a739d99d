"""Generic processing devices: forward trains, optionally with work, delay or per-module stats."""

from __future__ import annotations

import time

import numpy as np

from pulsetrain.runtime.device import Device, Property, State

__all__ = ["ModuleStatistics", "Passthrough"]


class Passthrough(Device):
    """Forward every train from ``input`` to ``output``, optionally after a delay.

    Useful as a template, as a relay between hosts, and to model a slow consumer in tests.
    """

    inputs = ("input",)
    outputs = ("output",)

    delay = Property(
        float,
        0.0,
        minimum=0.0,
        maximum=60.0,
        unit="s",
        description="extra processing time per train",
    )
    processed = Property(int, 0, access="readonly")
    lastTrainId = Property(int, 0, access="readonly")

    def initialize(self) -> None:
        self.set_state(State.PROCESSING)

    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.write("output", data, meta)
        tid = next((m.get("timestamp.tid") for m in meta.values()), None)
        self.count("processed")
        if tid is not None:
            self.record(lastTrainId=int(tid))


class ModuleStatistics(Device):
    """Per-module processing: frame means of the analog plane, forwarded with the data.

    For each source with ``image.data`` it adds ``image.frameMean`` (float32, one value per
    frame) and forwards the train: a light stand-in for a per-module processing step.
    """

    inputs = ("input",)
    outputs = ("output",)

    processed = Property(int, 0, access="readonly")
    latency = Property(
        float, 0.0, access="readonly", unit="s", description="last arrival − train timestamp"
    )

    def initialize(self) -> None:
        self.set_state(State.PROCESSING)

    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        out = {}
        for src, props in data.items():
            props = dict(props)
            img = props.get("image.data")
            if isinstance(img, np.ndarray) and img.ndim >= 3:
                analog = img[:, 0] if img.ndim == 4 else img
                props["image.frameMean"] = (
                    analog.reshape(len(analog), -1)
                    .mean(axis=1, dtype=np.float64)
                    .astype(np.float32)
                )
            out[src] = props
            ts = meta.get(src, {}).get("timestamp")
            if ts is not None:
                self.record(latency=time.time() - float(ts))
        self.write("output", out, meta)
        self.count("processed")
