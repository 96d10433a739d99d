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
ROI = "SPB_DET_AGIPD1M-1/PROC/ROI"
HISTOGRAM = "SPB_DET_AGIPD1M-1/PROC/HISTOGRAM"
AVERAGE = "SPB_DET_AGIPD1M-1/PROC/AVERAGE"
CORRELATION = "SPB_DET_AGIPD1M-1/PROC/CORRELATION"
BRIDGE = "SPB_DET_AGIPD1M-1/CAL/BRIDGE"
#: Device classes by module path: the analysis devices work before the package's entry points
#: are reinstalled.
CLASSES = {
    ROI: "pulsetrain.devices.roi:RoiAnalysis",
    HISTOGRAM: "pulsetrain.devices.pixel_histogram:PixelHistogram",
    AVERAGE: "pulsetrain.devices.averaging:ImageAverage",
    CORRELATION: "pulsetrain.devices.correlation:Correlator",
}
PULSES = 4
#: Simulated modules: 4 of 16 keep the pipeline at ~25 % of a core (16: ~60 %), which matters
#: on a shared 2-core machine where the browser needs its share for 10 images per second.
MODULES = 4


def topology_text(
    name: str, modules: int = MODULES, *, analysis: bool = False, rate: float = 10.0
) -> str:
    """The test topology; ``modules`` AGIPD modules are simulated (the others stay empty).

    ``analysis`` adds the analysis devices (ROI, pixel histogram, average, correlator) and a
    Karabo bridge (PUSH) serving the matched trains, for the checks against numpy; they run at
    ``rate`` trains per second (a low rate keeps a loaded 2-core machine responsive).
    """
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
config = {{ frames = {PULSES}, rate = {rate}, seed = 3, modules = {list(range(modules))}, \
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
    if analysis:
        text += _analysis_text()
    for m in range(modules):
        text += f'\n[[connections]]\nfrom = "{DETECTOR}:module{m}"\nto = "{MATCHER}:input"\n'
    return text


def _analysis_text() -> str:
    return f"""
[devices."{ROI}"]
class = "{CLASSES[ROI]}"
server = "pipeline"

[devices."{HISTOGRAM}"]
class = "{CLASSES[HISTOGRAM]}"
server = "pipeline"
config = {{ bins = 40 }}

[devices."{AVERAGE}"]
class = "{CLASSES[AVERAGE]}"
server = "pipeline"
config = {{ n_trains = 3, downsample = 4, dark_trains = 2 }}

[devices."{CORRELATION}"]
class = "{CLASSES[CORRELATION]}"
server = "pipeline"
config = {{ x = "{MOTOR}.actualPosition", y = "SPB_DET_AGIPD1M-1/ROI.roi1.sumTrain", bins = 5 }}

[devices."{BRIDGE}"]
class = "Bridge"
server = "pipeline"
config = {{ endpoint = "tcp://127.0.0.1:0", pattern = "PUSH", max_queue = 20 }}

[[connections]]
from = "{MATCHER}:output"
to = "{ROI}:input"

[[connections]]
from = "{MATCHER}:output"
to = "{HISTOGRAM}:input"

[[connections]]
from = "{MATCHER}:output"
to = "{AVERAGE}:input"
on_slowness = "wait"   # the average of consecutive trains, none dropped (checked with numpy)

[[connections]]
from = "{MATCHER}:output"
to = "{BRIDGE}:input"

[[connections]]
from = "{ROI}:output"
to = "{CORRELATION}:input"
"""


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
