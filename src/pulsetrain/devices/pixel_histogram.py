"""``PixelHistogram``: histograms of detector pixel values, per train and per pulse.

Of all detector pixels (region ``[0, 0, 0, 0]``) or of the pixels of a rectangle of the
full-resolution assembled image.  Counts follow ``numpy.histogram`` exactly (values in float64)
and come from one numba pass over the module frames
(:func:`pulsetrain.analysis.histogram.pulse_histograms`).  Keys: ``docs/analysis-devices.md``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from pulsetrain.analysis.histogram import (
    bin_edges,
    finite_scan,
    pulse_histograms,
    pulse_histograms_moments,
)
from pulsetrain.analysis.roi import RegionGather
from pulsetrain.devices.detector_image import DetectorImageDevice, TrainModules
from pulsetrain.errors import ConfigurationError, PropertyError
from pulsetrain.runtime.device import Property

__all__ = ["PixelHistogram"]


class PixelHistogram(DetectorImageDevice):
    """Histogram of pixel values of the whole detector or a rectangle, per train and pulse."""

    default_output_source = "SPB_DET_AGIPD1M-1/HISTOGRAM"

    region = Property(
        list,
        [0, 0, 0, 0],
        unit="px",
        description="[x, y, w, h] in the full-resolution assembled image (zeros: all pixels)",
    )
    per = Property(
        str,
        "train",
        options=("train", "pulse"),
        description="also one histogram per pulse ('pulse')",
    )
    bins = Property(int, 100, minimum=1, maximum=10000, description="number of equal bins")
    range = Property(
        list, [0.0, 0.0], description="[lo, hi] of the bins ([0, 0]: min and max of the train)"
    )
    log_scale = Property(
        bool, False, description="display hint: log counts (values are not changed)"
    )

    def setup(self) -> None:
        try:
            self._set_region(self.region)
            self._check_range(self.range)
        except PropertyError as exc:
            raise ConfigurationError(str(exc)) from None

    def _set_region(self, value: Any) -> None:
        rect = self.check_rect("region", value)
        self._rect = rect
        self._gather = None if rect.off else RegionGather(self.full_map, rect)

    @staticmethod
    def _check_range(value: list) -> None:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise PropertyError(f"range needs [lo, hi], got {value!r}") from None
        if (lo, hi) != (0.0, 0.0) and not lo < hi:
            raise PropertyError(f"range needs lo < hi (or [0, 0]: auto), got {value}")

    def on_set(self, key: str, value: Any) -> None:
        if key == "region":
            self._set_region(value)
        elif key == "range":
            self._check_range(value)

    def analyse(self, train: TrainModules, data: dict, meta: dict, tid: int) -> dict[str, Any]:
        n = train.n
        if self._gather is not None:
            parts = [self._gather.gather(train.frames, n)]
        else:
            parts = [arr[:n] for arr in train.frames.values()]
        lo, hi = (float(v) for v in self.range)
        per_pulse = np.zeros((n, self.bins), dtype=np.int64)
        if (lo, hi) != (0.0, 0.0):  # a fixed range: bins and moments in one pass over the data
            edges = bin_edges(self.bins, (lo, hi))
            count, total, total_sq = 0, 0.0, 0.0
            for part in parts:
                c, k, t, t2 = pulse_histograms_moments(part, edges)
                per_pulse += c
                count, total, total_sq = count + k, total + t, total_sq + t2
        else:  # the train's own (min, max): one pass for the range, one for the bins
            scans = [finite_scan(p) for p in parts]
            count = sum(c for c, *_ in scans)
            total = sum(t for _, t, *_ in scans)
            total_sq = sum(t2 for _, _, t2, *_ in scans)
            if count:
                lo, hi = min(sc[3] for sc in scans), max(sc[4] for sc in scans)
                if lo == hi:
                    lo, hi = lo - 0.5, hi + 0.5
            else:
                lo, hi = 0.0, 1.0
            edges = bin_edges(self.bins, (lo, hi))
            for part in parts:
                per_pulse += pulse_histograms(part, edges)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = total / count if count else float("nan")
            std = (
                float(np.sqrt(max(total_sq / count - mean * mean, 0.0))) if count else float("nan")
            )
        counts = per_pulse.sum(axis=0)
        return {
            "hist.counts": counts,
            "hist.pulseCounts": per_pulse
            if self.per == "pulse"
            else np.zeros((0, self.bins), np.int64),
            "hist.edges": edges,
            "hist.nValues": np.int64(counts.sum()),
            "hist.mean": mean,
            "hist.std": std,
            "hist.log": bool(self.log_scale),
            "hist.region": np.asarray(self._rect.as_list(), dtype=np.int32),
            "hist.trainId": np.uint64(tid),
            "hist.pulseIds": train.pulse_ids(),
            "hist.unit": train.unit,
        }
