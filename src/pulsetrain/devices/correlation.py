"""``Correlator``: an analysis value against a slow value, as a scatter and a binned mean ± std.

``y`` (e.g. an ROI sum from a :class:`~pulsetrain.devices.roi.RoiAnalysis` output) and ``x`` (e.g.
the sample motor's position, read through the control plane, or a key of a slow source on the
``slow`` input) are named ``NAME.key`` (:mod:`pulsetrain.devices.slow_values`).  Every train
with both values finite adds a point; the binned statistics are recomputed from the kept points
with :func:`pulsetrain.analysis.binning.binned_statistics`.  Keys: ``docs/analysis-devices.md``.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any

import numpy as np

from pulsetrain.analysis.binning import binned_statistics
from pulsetrain.devices.slow_values import (
    SlowValues,
    ValueNotFound,
    ValuePending,
    parse_name,
    train_value,
)
from pulsetrain.errors import ConfigurationError, PropertyError
from pulsetrain.protocol import make_meta, train_id_of
from pulsetrain.runtime.device import Device, Property, State, slot

__all__ = ["Correlator"]


class Correlator(Device):
    """Scatter and binned mean ± std of an analysis value against a slow value."""

    inputs = ("input", "slow")
    outputs = ("output",)

    x = Property(
        str,
        "SPB_IRU_SAMPLE/MOTOR/X.actualPosition",
        description="abscissa 'SOURCE.key' (train or slow input) or 'DEVICE.property'",
    )
    y = Property(
        str,
        "SPB_DET_AGIPD1M-1/ROI.roi1.sumNormTrain",
        description="ordinate 'SOURCE.key' (an array is reduced to its nan-mean)",
    )
    bins = Property(int, 20, minimum=1, maximum=1000, description="bins of the binned mean")
    x_range = Property(
        list, [0.0, 0.0], description="bin range [lo, hi] in x ([0, 0]: min and max of x)"
    )
    max_points = Property(
        int, 10000, minimum=10, maximum=1_000_000, description="points kept (the newest)"
    )
    slow_max_age = Property(
        int,
        10,
        minimum=0,
        maximum=1000,
        description="train IDs a value from the slow input may be older than the train",
    )
    poll_interval = Property(
        float,
        0.1,
        minimum=0.02,
        maximum=10.0,
        unit="s",
        description="period of control-plane reads of a DEVICE.property",
    )
    output_source = Property(
        str, "SPB_DET_AGIPD1M-1/CORRELATION", access="init", description="source of the results"
    )

    xOrigin = Property(str, "", access="readonly", description="where x was found")
    yOrigin = Property(str, "", access="readonly", description="where y was found")
    points = Property(int, 0, access="readonly", description="points kept")
    skippedTrains = Property(
        int, 0, access="readonly", description="trains without both values (see status)"
    )
    lastTrainId = Property(int, 0, access="readonly")
    processingTime = Property(float, 0.0, access="readonly", unit="s")

    def initialize(self) -> None:
        for key in ("x", "y"):
            try:
                parse_name(getattr(self, key), key)
            except PropertyError as exc:
                raise ConfigurationError(str(exc)) from None
        try:
            self._check_range(self.x_range)
        except PropertyError as exc:
            raise ConfigurationError(str(exc)) from None
        self.slow = SlowValues(self, self.slow_max_age, self.poll_interval)
        self._points: collections.deque[tuple[float, float, int]] = collections.deque(
            maxlen=self.max_points
        )
        self._problem = ""
        self.set_state(State.ON)

    @staticmethod
    def _check_range(value: list) -> None:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise PropertyError(f"x_range needs [lo, hi], got {value!r}") from None
        if (lo, hi) != (0.0, 0.0) and not lo < hi:
            raise PropertyError(f"x_range needs lo < hi (or [0, 0]: auto), got {value}")

    def on_set(self, key: str, value: Any) -> None:
        if key in ("x", "y"):
            parse_name(value, key)
            self._points.clear()
            self.update(points=0)
        elif key == "x_range":
            self._check_range(value)
        elif key == "max_points":
            self._points = collections.deque(self._points, maxlen=int(value))
        elif key == "slow_max_age":
            self.slow.max_age = int(value)
        elif key == "poll_interval":
            self.slow.poll_interval = float(value)

    @slot(description="Forget all points (and leave ERROR)")
    def reset(self) -> None:
        """Forget all points and leave state ERROR."""
        self._points.clear()
        self._problem = ""
        self.update(points=0)
        if self.state == State.ERROR.value:
            self.set_state(State.ON, "reset")

    # ------------------------------------------------------------ data
    def _value(self, axis: str, data: dict, tid: int | None) -> float | None:
        text = getattr(self, axis)
        try:
            value, origin = self.slow.lookup(text, data, tid, control=(axis == "x"))
        except ValuePending:
            return None
        except ValueNotFound as exc:
            self._fail(f"{axis}: {exc}")
            return None
        key = f"{axis}Origin"
        if getattr(self, key) != origin:
            self.update(**{key: origin})
        try:
            return train_value(value)
        except (TypeError, ValueError):
            self._fail(f"{axis}: {text!r} is not a number ({type(value).__name__})")
            return None

    def _fail(self, message: str) -> None:
        if message != self._problem:
            self.log.warning("%s", message)
            self._problem = message
        if self.state != State.ERROR.value or self.status != message:
            self.set_state(State.ERROR, message)

    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        if channel == "slow":
            self.slow.add_slow(data, meta)
            return
        t0 = time.perf_counter()
        tid = train_id_of(meta)
        self._problem_now = False
        yv = self._value("y", data, tid)
        xv = self._value("x", data, tid) if yv is not None else None
        if xv is None or yv is None or not (math.isfinite(xv) and math.isfinite(yv)):
            self.count("skippedTrains")
            return
        if self.state == State.ERROR.value and self._problem:
            self._problem = ""
            self.set_state(State.PROCESSING, "values found again")
        elif self.state == State.ON.value:
            self.set_state(State.PROCESSING, "")
        self._points.append((xv, yv, int(tid or 0)))
        pts = np.asarray(self._points, dtype=np.float64).reshape(-1, 3)
        xs, ys = pts[:, 0].copy(), pts[:, 1].copy()
        tids = np.asarray([p[2] for p in self._points], dtype=np.uint64)
        rng = tuple(float(v) for v in self.x_range)
        stats = binned_statistics(xs, ys, self.bins, None if rng == (0.0, 0.0) else rng)
        src = self.output_source
        out = {
            "correlation.x": xs,
            "correlation.y": ys,
            "correlation.trainIds": tids,
            "correlation.binEdges": stats.edges,
            "correlation.binCentres": stats.centres,
            "correlation.binMean": stats.mean,
            "correlation.binStd": stats.std,
            "correlation.binCount": stats.count,
            "correlation.xName": self.x,
            "correlation.yName": self.y,
            "correlation.trainId": np.uint64(tid or 0),
        }
        timestamp = next((m.get("timestamp") for m in meta.values() if isinstance(m, dict)), None)
        self.write("output", {src: out}, {src: make_meta(src, int(tid or 0), timestamp)})
        self.record(
            points=len(self._points),
            lastTrainId=int(tid or 0),
            processingTime=time.perf_counter() - t0,
        )

    def on_eos(self, channel: str) -> None:
        if channel != "input":
            return
        self.signal_eos("output")
        if self.state != State.ERROR.value:
            self.set_state(State.ON, "end of stream")
