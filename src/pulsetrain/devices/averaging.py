"""``ImageAverage``: running average of assembled images, and a dark recorded from the stream.

For every train the mean over the selected pulses of the module frames is assembled and
downsampled (as the preview) into the train image; the device keeps the last ``n_trains`` of
them and sends their mean, the last one, or the mean minus a dark (background) recorded from
the live stream with the slot ``recordDark``.  Keys and definitions: ``docs/analysis-devices.md``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from pulsetrain.analysis.averaging import TrainWindow, pulse_mean, pulse_slice
from pulsetrain.devices.detector_image import (
    MODULE_SHAPE,
    N_MODULES,
    DetectorImageDevice,
    TrainModules,
)
from pulsetrain.errors import ConfigurationError, PropertyError
from pulsetrain.runtime.device import Property, slot

__all__ = ["ImageAverage"]

MODES = ("average", "last", "difference")


class ImageAverage(DetectorImageDevice):
    """Running average over trains and pulses, dark recording and subtraction."""

    default_output_source = "SPB_DET_AGIPD1M-1/AVERAGE"

    n_trains = Property(
        int, 10, minimum=1, maximum=100, description="trains in the running average"
    )
    pulses = Property(
        list, [0, 0], description="pulses averaged: slice [start, stop] (stop 0: to the end)"
    )
    mode = Property(str, "average", options=MODES, description="image sent")
    downsample = Property(
        int, 2, minimum=1, maximum=16, description="integer binning factor of the image"
    )
    dark_trains = Property(
        int, 20, minimum=1, maximum=1000, description="trains recorded by recordDark"
    )

    darkProgress = Property(
        int, 0, access="readonly", description="trains recorded so far in a running recording"
    )
    hasDark = Property(bool, False, access="readonly", description="a dark is in use")
    averagedTrains = Property(int, 0, access="readonly", description="trains in the average")

    def setup(self) -> None:
        try:
            self._check_pulses(self.pulses)
        except PropertyError as exc:
            raise ConfigurationError(str(exc)) from None
        self._window = TrainWindow(self.n_trains)
        self._build_assembler(self.downsample)
        self._frame = np.empty((N_MODULES, *MODULE_SHAPE), dtype=np.float32)
        self._dark: np.ndarray | None = None
        self._dark_trains = 0
        self._recording: TrainWindow | None = None

    def _build_assembler(self, downsample: int) -> None:
        from pulsetrain.geometry import PreviewAssembler

        self._assembler = PreviewAssembler(self.geometry, int(downsample))

    @staticmethod
    def _check_pulses(value: list) -> None:
        try:
            pulse_slice(value, 1)
        except ConfigurationError as exc:
            raise PropertyError(str(exc)) from None

    def on_set(self, key: str, value: Any) -> None:
        if key == "n_trains":
            self._window.resize(int(value))
        elif key == "pulses":
            self._check_pulses(value)
            self._window.clear()
        elif key == "downsample":
            self._build_assembler(int(value))
            self._window.clear()
            self._drop_dark()

    # ------------------------------------------------------------ slots
    @slot(name="recordDark", description="Record a dark from the next dark_trains trains")
    def record_dark(self) -> None:
        """Record a dark (background) from the next ``dark_trains`` trains."""
        self._recording = TrainWindow(self.dark_trains)
        self.update(darkProgress=0)

    @slot(name="clearDark", description="Stop using (and recording) the dark")
    def clear_dark(self) -> None:
        """Forget the dark, and stop a recording."""
        self._recording = None
        self._drop_dark()

    @slot(name="clearAverage", description="Empty the running average")
    def clear_average(self) -> None:
        """Empty the running average."""
        self._window.clear()
        self.update(averagedTrains=0)

    def _drop_dark(self) -> None:
        self._dark = None
        self._dark_trains = 0
        self.update(hasDark=False, darkProgress=0)

    # ------------------------------------------------------------ data
    def train_image(self, train: TrainModules) -> np.ndarray:
        """The assembled, downsampled mean over the selected pulses of one train."""
        sel = pulse_slice(self.pulses, train.n)
        frame = self._frame
        frame.fill(np.nan)
        n_sel = 0
        for m, arr in train.frames.items():
            frames = arr[: train.n]
            frame[m] = pulse_mean(frames, sel)
            n_sel = len(range(*sel.indices(train.n)))
        self._pulses_used = n_sel
        return self._assembler.assemble(frame)

    def analyse(self, train: TrainModules, data: dict, meta: dict, tid: int) -> dict[str, Any]:
        image = self.train_image(train)
        self._window.add(image)
        if self._recording is not None:
            self._recording.add(image)
            done = len(self._recording)
            if done >= self.dark_trains:
                self._dark = self._recording.mean()
                self._dark_trains = done
                self._recording = None
                self.update(hasDark=True, darkProgress=done)
                self.log.info("dark recorded over %d trains", done)
            else:
                self.record(darkProgress=done)
        average = self._window.mean()
        shown = self.mode
        if shown == "last":
            out_image = image
        elif shown == "difference" and self._dark is not None:
            out_image = average - self._dark
        else:
            shown = "average"
            out_image = average
        out_image = np.ascontiguousarray(out_image, dtype=np.float32)
        sample = out_image[::2, ::2]
        sample = sample[np.isfinite(sample)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            vmin, vmax = (
                (float(v) for v in np.percentile(sample, [1.0, 99.8]))
                if sample.size
                else (0.0, 1.0)
            )
        self.record(averagedTrains=len(self._window))
        return {
            "average.image": out_image,
            "average.shown": shown,
            "average.vmin": vmin,
            "average.vmax": vmax,
            "average.trains": np.int64(len(self._window)),
            "average.pulses": np.int64(self._pulses_used),
            "average.darkTrains": np.int64(self._dark_trains if self._dark is not None else 0),
            "average.darkRecording": self._recording is not None,
            "average.downsample": np.int64(self._assembler.downsample),
            "average.beamCentre": np.asarray(self._assembler.beam_centre_yx, dtype=np.float64),
            "average.trainId": np.uint64(tid),
            "average.unit": train.unit,
        }
