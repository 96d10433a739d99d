"""What the image analysis devices share: AGIPD-1M module frames in, one result source out.

:class:`DetectorImageDevice` (not a device class of its own) reads matched trains holding the
module sources exactly as the :class:`~pulsetrain.devices.preview.PreviewAssembler` does
(corrected ``(pulses, 512, 128)`` or raw ``(pulses, 2, 512, 128)`` frames), builds the
full-resolution pixel map of the assembled image once, and hands each train's modules to
:meth:`DetectorImageDevice.analyse`.  The devices are documented in ``docs/analysis-devices.md``.
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar

import numpy as np

from pulsetrain.devices.quadrant_geometry import QuadrantGeometry
from pulsetrain.errors import ConfigurationError, DataShapeError, PropertyError
from pulsetrain.protocol import make_meta, train_id_of
from pulsetrain.runtime.device import Device, Property, State

__all__ = ["DEFAULT_SOURCE_PATTERN", "DetectorImageDevice", "TrainModules"]

#: Matches corrected and raw AGIPD-1M module sources; group 1 is the module number.
DEFAULT_SOURCE_PATTERN = r"^SPB_DET_AGIPD1M-1/(?:CORR|DET)/(\d+)CH0:(?:output|xtdf)$"
N_MODULES = 16
MODULE_SHAPE = (512, 128)


class TrainModules:
    """One train's module frames: ``frames[m]`` (pulses, 512, 128) views, ``n`` pulses used."""

    def __init__(self, frames: dict[int, np.ndarray], first: dict, unit: str) -> None:
        self.frames = frames
        self.first = first
        self.unit = unit
        self.n = min(len(a) for a in frames.values())

    def pulse_ids(self) -> np.ndarray:
        """uint64 pulse IDs of the ``n`` pulses (``image.pulseId`` of the first module, else
        0..n-1)."""
        values = self.first.get("image.pulseId")
        if isinstance(values, np.ndarray) and values.size >= self.n:
            return np.ascontiguousarray(values.reshape(-1)[: self.n], dtype=np.uint64)
        return np.arange(self.n, dtype=np.uint64)


class DetectorImageDevice(QuadrantGeometry, Device):
    """Shared input handling and bookkeeping of the image analysis devices."""

    inputs = ("input",)
    outputs = ("output",)

    #: Default of ``output_source`` for the class.
    default_output_source: ClassVar[str] = "SPB_DET_AGIPD1M-1/ANALYSIS"

    source_pattern = Property(
        str,
        DEFAULT_SOURCE_PATTERN,
        access="init",
        description="regex of the module sources; group 1 is the module number (0..15)",
    )
    data_key = Property(str, "image.data", access="init", description="key of the module frames")
    raw_plane = Property(
        int,
        0,
        minimum=0,
        maximum=1,
        access="init",
        description="plane of 4-D raw data to use (0: analog, 1: gain)",
    )
    output_source = Property(
        str, "", access="init", description="source name of the results (empty: class default)"
    )

    processingTime = Property(
        float, 0.0, access="readonly", unit="s", description="time to analyse the last train"
    )
    meanProcessingTime = Property(
        float, 0.0, access="readonly", unit="s", description="mean over the last 50 trains"
    )
    lastTrainId = Property(int, 0, access="readonly", description="last train analysed")
    badTrains = Property(
        int, 0, access="readonly", description="trains that could not be analysed (see lastError)"
    )
    lastError = Property(str, "", access="readonly", description="why the last bad train was bad")
    imageShape = Property(
        list, [], access="readonly", description="full-resolution assembled image (height, width)"
    )

    # ------------------------------------------------------------ lifecycle
    def initialize(self) -> None:
        try:
            self._source_re = re.compile(self.source_pattern)
        except re.error as exc:
            raise ConfigurationError(f"source_pattern is not a valid regex: {exc}") from None
        if self._source_re.groups < 1:
            raise ConfigurationError("source_pattern needs a group capturing the module number")
        from pulsetrain.geometry import agipd1m_geometry

        quads, beam_centre = self.geometry_args()
        self.geometry = agipd1m_geometry(quads, beam_centre_px=beam_centre)
        self.out_source = self.output_source or self.default_output_source
        self._full_map: np.ndarray | None = None
        self._times: list[float] = []
        self.setup()
        self.set_state(State.ON)

    def setup(self) -> None:
        """Build what the analysis needs once (called by ``initialize``)."""

    @property
    def full_map(self) -> np.ndarray:
        """Flat detector index of every pixel of the full-resolution assembled image (−1: gap)."""
        if self._full_map is None:
            from pulsetrain.geometry import PreviewAssembler

            self._full_map = PreviewAssembler(self.geometry, 1).pixel_map()
            self.update(imageShape=list(self._full_map.shape))
        return self._full_map

    @property
    def full_shape(self) -> tuple[int, int]:
        """(height, width) of the full-resolution assembled image."""
        return tuple(self.full_map.shape)  # type: ignore[return-value]

    def check_rect(self, key: str, value: Any):
        """A rectangle property checked against the image (PropertyError with the reason)."""
        from pulsetrain.analysis.roi import parse_rect

        try:
            return parse_rect(value, self.full_shape, key)
        except ConfigurationError as exc:
            raise PropertyError(str(exc)) from None

    # ------------------------------------------------------------ data
    def modules_of(self, data: dict) -> TrainModules | None:
        """The module frames of a train (None if it holds none)."""
        found: dict[int, np.ndarray] = {}
        first: dict = {}
        unit = "keV"
        for src in sorted(data):
            match = self._source_re.search(src)
            if match is None:
                continue
            try:
                module = int(match.group(1))
            except ValueError:
                continue
            arr = data[src].get(self.data_key)
            if not isinstance(arr, np.ndarray) or not 0 <= module < N_MODULES:
                continue
            if arr.ndim == 4:  # raw (frames, 2, 512, 128): one plane
                arr = arr[:, self.raw_plane]
                unit = "ADU"
            elif arr.ndim == 2:
                arr = arr[np.newaxis]
            if arr.ndim != 3 or arr.shape[-2:] != MODULE_SHAPE:
                raise DataShapeError(
                    f"{src}: {self.data_key} has shape {arr.shape}, not (frames, 512, 128)"
                )
            if arr.dtype.kind in "iu":
                unit = "ADU"
            found[module] = arr
            if not first:
                first = data[src]
        if not found:
            return None
        return TrainModules(found, first, unit)

    def analyse(self, train: TrainModules, data: dict, meta: dict, tid: int) -> dict[str, Any]:
        """The output keys of one train."""
        raise NotImplementedError

    def on_other_input(self, data: dict, meta: dict, channel: str) -> None:
        """Data on an input other than ``input`` (e.g. ``slow``)."""

    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        if channel != "input":
            self.on_other_input(data, meta, channel)
            return
        t0 = time.perf_counter()
        tid = train_id_of(meta)
        try:
            train = self.modules_of(data)
            if train is None:
                raise DataShapeError(f"no module source matches {self.source_pattern!r}")
            if tid is None:
                tid = int(np.asarray(train.first.get("image.trainId", [0])).reshape(-1)[0])
            out = self.analyse(train, data, meta, int(tid))
        except DataShapeError as exc:
            self.count("badTrains")
            if str(exc) != self.lastError:
                self.log.warning("bad train: %s", exc)
            self.record(lastError=str(exc))
            return
        timestamp = next(
            (
                m.get("timestamp")
                for m in meta.values()
                if isinstance(m, dict) and m.get("timestamp") is not None
            ),
            None,
        )
        src = self.out_source
        self.write("output", {src: out}, {src: make_meta(src, int(tid), timestamp)})
        elapsed = time.perf_counter() - t0
        self._times = (self._times + [elapsed])[-50:]
        self.record(
            processingTime=elapsed,
            meanProcessingTime=float(np.mean(self._times)),
            lastTrainId=int(tid),
        )
        if self.state == State.ON.value:
            self.set_state(State.PROCESSING, "")

    def on_eos(self, channel: str) -> None:
        if channel != "input":  # an optional slow input ending does not end the results
            return
        for name in self.outputs:
            self.signal_eos(name)
        if self.state != State.ERROR.value:
            self.set_state(State.ON, "end of stream")
