"""The device's own thread reads its inputs and runs its timers: timers keep their period while
trains keep coming, a failing timer puts the device in ERROR and goes on, and the trains of
two inputs are all processed, one at a time."""

from __future__ import annotations

import threading
import time

import numpy as np

from pulsetrain.runtime.device import Device, Property
from pulsetrain.testing import DeviceHarness
from waiting import wait_until

TICK_S = 0.1
WORK_S = 0.03  # per train: longer than the sender needs, so a train is always waiting


class Busy(Device):
    """Counts its timer's ticks while each train keeps it busy for WORK_S."""

    inputs = ("input", "other")
    outputs = ()
    ticks = Property(int, 0, access="readonly")
    seen = Property(int, 0, access="readonly")
    seenOther = Property(int, 0, access="readonly")
    failTicks = Property(int, 0, description="ticks that raise, from now on")
    inside = Property(int, 0, access="readonly", description="calls running at once (max)")

    def initialize(self) -> None:
        self._running = 0
        self.every(TICK_S, self._tick)

    def _tick(self) -> None:
        self.count("ticks")
        if self.failTicks > 0:
            self.update(failTicks=self.failTicks - 1)
            raise RuntimeError("tick failed on purpose")

    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        self._running += 1
        self.record(inside=max(self.inside, self._running))
        time.sleep(WORK_S)  # the device's work on this train
        self.count("seen" if channel == "input" else "seenOther")
        self._running -= 1


def _flood(dev: DeviceHarness, stop: threading.Event, input: str = "input") -> None:
    tid = 1
    while not stop.is_set():
        dev.send({"S": {"x": np.zeros(4)}}, train_id=tid, input=input)  # policy wait
        tid += 1


def test_timers_keep_their_period_while_trains_keep_coming():
    with DeviceHarness(Busy, device_id="TEST/BUSY/1") as dev:
        stop = threading.Event()
        sender = threading.Thread(target=_flood, args=(dev, stop), daemon=True)
        sender.start()
        try:
            wait_until(lambda: dev.get("seen") >= 10, timeout=30, what="trains processed")
            ticks0, seen0, t0 = dev.get("ticks"), dev.get("seen"), time.monotonic()
            # 40 trains take >= 40 * WORK_S = 1.2 s of the device's thread: >= 12 periods
            wait_until(lambda: dev.get("seen") >= seen0 + 40, timeout=60, what="40 more trains")
            ticks, elapsed = dev.get("ticks") - ticks0, time.monotonic() - t0
        finally:
            stop.set()
            sender.join(timeout=30)
        assert ticks >= 6, (ticks, elapsed)
        assert ticks <= elapsed / TICK_S + 2, (ticks, elapsed)  # never a burst to catch up


def test_a_failing_timer_puts_the_device_in_error_and_keeps_ticking():
    with DeviceHarness(Busy, device_id="TEST/BUSY/2") as dev:
        wait_until(lambda: dev.get("ticks") >= 2, timeout=20, what="ticks")
        dev.set("failTicks", 1)
        wait_until(lambda: dev.get("state") == "ERROR", timeout=20, what="ERROR")
        assert "tick failed on purpose" in dev.get("status")
        after = dev.get("ticks")
        wait_until(lambda: dev.get("ticks") >= after + 3, timeout=20, what="ticks after the error")
        assert dev.get("errorCount") == 1


def test_trains_of_two_inputs_are_all_processed_one_at_a_time():
    with DeviceHarness(Busy, device_id="TEST/BUSY/3") as dev:
        n = 25
        senders = [
            threading.Thread(
                target=lambda name=name: [
                    dev.send({"S": {"x": np.zeros(4)}}, train_id=t, input=name)
                    for t in range(1, n + 1)
                ],
                daemon=True,
            )
            for name in ("input", "other")
        ]
        for s in senders:
            s.start()
        for s in senders:
            s.join(timeout=60)
        wait_until(
            lambda: (dev.get("seen"), dev.get("seenOther")) == (n, n),
            timeout=30,
            what="every train of both inputs",
        )
        assert dev.get("inside") == 1
