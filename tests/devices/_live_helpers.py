"""Helpers of the live device tests: an in-process device server, wiring, taps and waits."""

from __future__ import annotations

import time

import numpy as np

from pulsetrain.protocol import make_meta
from pulsetrain.runtime import control
from pulsetrain.runtime.channels import EndOfStream, InputChannel, OutputChannel
from pulsetrain.runtime.server import DeviceServer
from waiting import wait_until  # noqa: F401  (re-exported for the device tests)

TOKEN = "device-test-token"
CORR = "SPB_DET_AGIPD1M-1/CORR/{m}CH0:output"


class LiveServer:
    """A device server in this process, with a control client and cleanup of what it made."""

    def __init__(self) -> None:
        self.server = DeviceServer("devtest", token=TOKEN, request_timeout=10.0).start()
        self.client = control.Client(self.server.control_endpoint, token=TOKEN, timeout=20.0)
        self._channels: list = []

    def add(self, cls: str, device_id: str, config: dict | None = None) -> str:
        """Instantiate a device; return its ID."""
        self.client.instantiate(cls, device_id, config or {})
        return device_id

    def output(self, device_id: str, name: str = "output") -> str:
        """The endpoint of one of a device's outputs."""
        eps = self.client.get(device_id, f"channels.outputs.{name}.endpoints")
        return next(e for e in eps if e.startswith("tcp://"))

    def connect(self, src: str, device_id: str, name: str = "input") -> None:
        """Connect an output endpoint to a device's input."""
        self.client.request("connect", device=device_id, input=name, endpoint=src)

    def source(self) -> OutputChannel:
        """An output channel driven by the test (a stand-in for upstream devices)."""
        out = OutputChannel("test:source")
        self._channels.append(out)
        return out

    def tap(self, endpoint: str, policy: str = "queueDrop", queue: int = 50) -> InputChannel:
        """An input channel reading an output (the way a GUI or a test watches a pipeline)."""
        tap = InputChannel("test:tap", on_slowness=policy, max_queue_length=queue, window=4)
        tap.connect(endpoint)
        self._channels.append(tap)
        return tap

    def close(self) -> None:
        for ch in self._channels:
            ch.close()
        self.client.close()
        self.server.close()


def collect(tap: InputChannel, n: int, timeout: float = 20.0) -> list:
    """The next ``n`` trains from a tap (fails on timeout or end of stream)."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"only {len(got)} of {n} trains within {timeout} s")
        try:
            item = tap.get(timeout=remaining)
        except TimeoutError:
            continue
        assert not isinstance(item, EndOfStream), f"end of stream after {len(got)} trains"
        got.append(item)
    return got


def corrected_train(
    train_id: int, frames: np.ndarray, mask: np.ndarray | None = None, modules=range(16)
) -> tuple[dict, dict]:
    """Corrected module sources of one train from a (pulses, 16, 512, 128) stack."""
    data, meta = {}, {}
    ts = 1.7e9 + 0.1 * (train_id % 10**6)
    n = frames.shape[0]
    for m in modules:
        src = CORR.format(m=m)
        data[src] = {
            "image.data": np.ascontiguousarray(frames[:, m]),
            "image.cellId": np.arange(n, dtype=np.uint16),
            "image.pulseId": np.arange(n, dtype=np.uint64) * 4,
        }
        if mask is not None:
            data[src]["image.mask"] = np.ascontiguousarray(mask[:, m])
        meta[src] = make_meta(src, train_id, ts)
    return data, meta
