"""``RoiAnalysis``: up to four rectangular regions of interest of the assembled detector image.

Per pulse and per train: sum, mean, maximum and projections of each ROI, the same values
divided by a normaliser (none, another ROI, or a value read by name such as the XGM's pulse
energy), and a histogram of per-pulse ROI intensity over recent trains.  The pixels come
straight from the module frames through a gather table of each rectangle
(:class:`pulsetrain.analysis.roi.RegionGather`), so no image is assembled.  Output keys and
exact definitions: ``docs/analysis-devices.md``.
"""

from __future__ import annotations

import collections
import warnings
from typing import Any

import numpy as np

from pulsetrain.analysis.histogram import auto_range, bin_edges, histogram
from pulsetrain.analysis.roi import Rect, RegionGather, roi_statistics
from pulsetrain.devices.detector_image import DetectorImageDevice, TrainModules
from pulsetrain.devices.slow_values import SlowValues, ValueNotFound, parse_name
from pulsetrain.errors import ConfigurationError, PropertyError
from pulsetrain.runtime.device import Property, State, slot

__all__ = ["N_ROIS", "RoiAnalysis"]

N_ROIS = 4
ROI_NAMES = tuple(f"roi{k}" for k in range(1, N_ROIS + 1))


def _rect_property(k: int) -> Property:
    return Property(
        list,
        [0, 0, 0, 0],
        unit="px",
        description=f"ROI {k} [x, y, w, h] in the full-resolution assembled image (zeros: off)",
    )


class RoiAnalysis(DetectorImageDevice):
    """Sums, means, maxima and projections of up to 4 ROIs, per pulse and per train."""

    inputs = ("input", "slow")
    default_output_source = "SPB_DET_AGIPD1M-1/ROI"

    roi1 = _rect_property(1)
    roi2 = _rect_property(2)
    roi3 = _rect_property(3)
    roi4 = _rect_property(4)
    normaliser = Property(
        str,
        "",
        description="divide by: '' (none), 'roi1'..'roi4' (its per-pulse sum) or 'SOURCE.key'",
    )
    roi_hist_roi = Property(
        str, "roi1", options=ROI_NAMES, description="ROI whose per-pulse sumNorm is histogrammed"
    )
    roi_hist_bins = Property(int, 50, minimum=1, maximum=10000, description="histogram bins")
    roi_hist_range = Property(
        list, [0.0, 0.0], description="histogram range [lo, hi] ([0, 0]: min and max of values)"
    )
    roi_hist_trains = Property(
        int, 100, minimum=1, maximum=10000, description="trains in the histogram window"
    )
    slow_max_age = Property(
        int,
        10,
        minimum=0,
        maximum=1000,
        description="train IDs a value from the slow input may be older than the train",
    )

    normaliserOrigin = Property(
        str, "", access="readonly", description="where the normaliser was found: train or slow"
    )

    def setup(self) -> None:
        self._gathers: dict[str, RegionGather | None] = {}
        for name in ROI_NAMES:
            try:
                self._set_rect(name, getattr(self, name))
            except PropertyError as exc:
                raise ConfigurationError(str(exc)) from None
        self._check_normaliser(self.normaliser)
        self._check_range(self.roi_hist_range)
        self._hist_values: collections.deque[np.ndarray] = collections.deque(
            maxlen=self.roi_hist_trains
        )
        self.slow = SlowValues(self, self.slow_max_age)
        self._norm_error = ""

    # ------------------------------------------------------------ settings
    def _set_rect(self, name: str, value: Any) -> None:
        rect: Rect = self.check_rect(name, value)
        self._gathers[name] = None if rect.off else RegionGather(self.full_map, rect)

    @staticmethod
    def _check_normaliser(value: str) -> None:
        if value and value not in ROI_NAMES:
            parse_name(value, "normaliser")

    @staticmethod
    def _check_range(value: list) -> None:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise PropertyError(f"roi_hist_range needs [lo, hi], got {value!r}") from None
        if (lo, hi) != (0.0, 0.0) and not lo < hi:
            raise PropertyError(f"roi_hist_range needs lo < hi (or [0, 0]: auto), got {value}")

    def on_set(self, key: str, value: Any) -> None:
        if key in ROI_NAMES:
            self._set_rect(key, value)
            if key == self.roi_hist_roi:
                self._hist_values.clear()
        elif key == "normaliser":
            self._check_normaliser(value)
            self._hist_values.clear()
        elif key == "roi_hist_roi":
            self._hist_values.clear()
        elif key == "roi_hist_range":
            self._check_range(value)
        elif key == "roi_hist_trains":
            self._hist_values = collections.deque(self._hist_values, maxlen=int(value))
        elif key == "slow_max_age":
            self.slow.max_age = int(value)

    @slot(name="clearHistogram", description="Empty the window of the ROI-intensity histogram")
    def clear_histogram(self) -> None:
        """Empty the window of the ROI-intensity histogram."""
        self._hist_values.clear()

    # ------------------------------------------------------------ data
    def on_other_input(self, data: dict, meta: dict, channel: str) -> None:
        self.slow.add_slow(data, meta)

    def _normaliser(self, data: dict, tid: int, n: int, sums: dict[str, np.ndarray]) -> np.ndarray:
        name = self.normaliser
        if not name:
            return np.ones(n)
        if name in ROI_NAMES:
            return sums[name]
        try:
            value, origin = self.slow.lookup(name, data, tid)
        except ValueNotFound as exc:
            self._norm_failed(f"normaliser: {exc}")
            return np.full(n, np.nan)
        if origin != self.normaliserOrigin:
            self.update(normaliserOrigin=origin)
        arr = np.asarray(value, dtype=np.float64)
        if arr.ndim == 0:
            norm = np.full(n, float(arr))
        elif arr.size >= n:
            norm = arr.reshape(-1)[:n].copy()
        else:
            self._norm_failed(f"normaliser: {name!r} has {arr.size} values for {n} pulses")
            return np.full(n, np.nan)
        if self._norm_error:
            self._norm_error = ""
            if self.state == State.ERROR.value:
                self.set_state(State.PROCESSING, "normaliser found again")
        return norm

    def _norm_failed(self, message: str) -> None:
        if message != self._norm_error:
            self.log.warning("%s", message)
        self._norm_error = message
        if self.state != State.ERROR.value or self.status != message:
            self.set_state(State.ERROR, message)

    def analyse(self, train: TrainModules, data: dict, meta: dict, tid: int) -> dict[str, Any]:
        n = train.n
        out: dict[str, Any] = {}
        stats = {}
        nan = np.full(n, np.nan)
        for name in ROI_NAMES:
            gather = self._gathers[name]
            stats[name] = None if gather is None else roi_statistics(gather.gather(train.frames, n))
        sums = {name: (nan if s is None else s.sum) for name, s in stats.items()}
        norm = self._normaliser(data, tid, n, sums)
        rects = np.zeros((N_ROIS, 4), dtype=np.int32)
        active = np.zeros(N_ROIS, dtype=bool)
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            for i, name in enumerate(ROI_NAMES):
                s = stats[name]
                p = f"{name}."
                if s is None:
                    for key in ("sum", "mean", "max", "sumNorm", "meanNorm"):
                        out[p + key] = nan.copy()
                    for key in ("sumTrain", "meanTrain", "maxTrain", "sumNormTrain"):
                        out[p + key] = float("nan")
                    out[p + "meanNormTrain"] = float("nan")
                    out[p + "projX"] = np.zeros((n, 0), np.float32)
                    out[p + "projY"] = np.zeros((n, 0), np.float32)
                    out[p + "projXTrain"] = np.zeros(0, np.float32)
                    out[p + "projYTrain"] = np.zeros(0, np.float32)
                    continue
                rects[i] = self._gathers[name].rect.as_list()  # type: ignore[union-attr]
                active[i] = True
                sum_norm = s.sum / norm
                mean_norm = s.mean / norm
                out.update(
                    {
                        p + "sum": s.sum,
                        p + "mean": s.mean,
                        p + "max": s.max,
                        p + "projX": s.proj_x,
                        p + "projY": s.proj_y,
                        p + "sumTrain": s.sum_train,
                        p + "meanTrain": s.mean_train,
                        p + "maxTrain": s.max_train,
                        p + "projXTrain": s.proj_x_train,
                        p + "projYTrain": s.proj_y_train,
                        p + "sumNorm": sum_norm,
                        p + "meanNorm": mean_norm,
                        p + "sumNormTrain": float(np.nanmean(sum_norm)) if n else float("nan"),
                        p + "meanNormTrain": float(np.nanmean(mean_norm)) if n else float("nan"),
                    }
                )
        hist_src = out[f"{self.roi_hist_roi}.sumNorm"]
        self._hist_values.append(hist_src[np.isfinite(hist_src)])
        values = np.concatenate(self._hist_values) if self._hist_values else np.zeros(0)
        lo, hi = (float(v) for v in self.roi_hist_range)
        edges = bin_edges(
            self.roi_hist_bins, (lo, hi) if (lo, hi) != (0, 0) else auto_range(values)
        )
        counts = histogram(values, edges)
        out.update(
            {
                "roi.norm": norm,
                "roi.rects": rects,
                "roi.active": active,
                "roi.trainId": np.uint64(tid),
                "roi.pulseIds": train.pulse_ids(),
                "roi.unit": train.unit,
                "roiHist.counts": counts,
                "roiHist.edges": edges,
                "roiHist.nValues": np.int64(counts.sum()),
            }
        )
        return out
