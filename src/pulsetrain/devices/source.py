"""``TrainSource``: a test-pattern generator of trains at a set rate."""

from __future__ import annotations

import time

import numpy as np

from pulsetrain.protocol import make_meta
from pulsetrain.runtime.device import ProducerDevice, Property

__all__ = ["TrainSource"]

FIRST_TRAIN_ID = 10_000_000


class TrainSource(ProducerDevice):
    """Write synthetic trains (``image.data`` filled with the train ID) at ``rate`` Hz.

    Each train has ``n_sources`` sources named ``<source_prefix><n>``; the array of every source
    is filled with the train ID (modulo the dtype's range), so receivers can check what they got.
    """

    outputs = ("output",)

    rate = Property(
        float,
        10.0,
        minimum=0.0,
        maximum=100000.0,
        unit="Hz",
        description="trains per second (0: as fast as the output accepts)",
    )
    n_sources = Property(int, 1, minimum=1, maximum=64, access="init")
    source_prefix = Property(str, "SRC/DATA/", access="init")
    shape = Property(list, [16, 512, 128], access="init", description="array shape per source")
    dtype = Property(
        str, "uint16", options=("uint8", "uint16", "uint32", "float32", "float64"), access="init"
    )
    n_trains = Property(
        int,
        0,
        minimum=0,
        access="init",
        description="stop after this many trains and send end-of-stream (0: never)",
    )
    trainId = Property(int, FIRST_TRAIN_ID, access="readonly", description="next train ID")

    def initialize(self) -> None:
        self._names = [f"{self.source_prefix}{i}" for i in range(self.n_sources)]
        self._dtype = np.dtype(self.dtype)

    def produce(self) -> bool:
        tid = self.trainId
        dtype = self._dtype
        fill = tid % (np.iinfo(dtype).max + 1) if dtype.kind == "u" else tid
        ts = time.time()
        data = {
            n: {"image.data": np.full(self.shape, fill, dtype=dtype), "trainId": tid}
            for n in self._names
        }
        meta = {n: make_meta(n, tid, ts) for n in self._names}
        self.write("output", data, meta)
        self.record(trainId=tid + 1)
        return True
