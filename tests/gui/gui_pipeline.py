"""Helpers of the GUI tests: a small pipeline (simulated AGIPD-1M at 10 Hz -> matcher -> preview).

One server process hosts everything (trains move between the devices without copies), with
4 modules, 4 pulses per train and a 4x downsampled preview, so that the pipeline, the GUI and a
browser fit on a shared 2-core machine.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

from pulsetrain.errors import ChannelError
from pulsetrain.runtime.channels import EndOfStream, InputChannel

MOTOR = "SPB_IRU_SAMPLE/MOTOR/X"
DETECTOR = "SPB_DET_AGIPD1M-1/DET/SIM"
MATCHER = "SPB_DET_AGIPD1M-1/CAL/MATCHER"
PREVIEW = "SPB_DET_AGIPD1M-1/PROC/PREVIEW"
PREVIEW_OUTPUT = f"{PREVIEW}:output"
PREVIEW_SOURCE = "SPB_DET_AGIPD1M-1/PREVIEW"
PULSES = 4
#: Simulated modules: 4 of 16 keep the pipeline at ~25 % of a core (16: ~60 %), which matters
#: on a shared 2-core machine where the browser needs its share for 10 images per second.
MODULES = 4


def topology_text(name: str, modules: int = MODULES) -> str:
    """The test topology; ``modules`` AGIPD modules are simulated (the others stay empty)."""
    sources = ", ".join(f'"SPB_DET_AGIPD1M-1/DET/{m}CH0:xtdf"' for m in range(modules))
    text = f"""
[topology]
name = "{name}"

[servers.pipeline]

[devices."{MOTOR}"]
class = "SimulatedMotor"
server = "pipeline"

[devices."{DETECTOR}"]
class = "SimulatedDetector"
server = "pipeline"
config = {{ frames = {PULSES}, rate = 10.0, seed = 3, modules = {list(range(modules))}, \
motor_device = "{MOTOR}" }}

[devices."{MATCHER}"]
class = "TrainMatcher"
server = "pipeline"
config = {{ buffer_size = 10, sources = [{sources}] }}

[devices."{PREVIEW}"]
class = "PreviewAssembler"
server = "pipeline"
config = {{ downsample = 4, profile_bins = 50 }}

[[connections]]
from = "{MATCHER}:output"
to = "{PREVIEW}:input"
"""
    for m in range(modules):
        text += f'\n[[connections]]\nfrom = "{DETECTOR}:module{m}"\nto = "{MATCHER}:input"\n'
    return text


class Collector:
    """Keeps the last trains of an output by train ID (queueDrop: never blocks the pipeline)."""

    def __init__(self, endpoint: str, keep: int = 60):
        self.channel = InputChannel(
            f"test-collector-{os.getpid()}", on_slowness="queueDrop", max_queue_length=20
        )
        self.channel.connect(endpoint)
        self.trains: OrderedDict[int, dict] = OrderedDict()
        self.keep = keep
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.channel.get(timeout=0.2)
            except TimeoutError:
                continue
            except ChannelError:
                return
            if isinstance(item, EndOfStream):
                continue
            values = item.data[PREVIEW_SOURCE]
            with self.lock:
                self.trains[int(values["preview.trainId"])] = values
                while len(self.trains) > self.keep:
                    self.trains.popitem(last=False)

    def get(self, train_id: int) -> dict | None:
        with self.lock:
            return self.trains.get(train_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.channel.close()
