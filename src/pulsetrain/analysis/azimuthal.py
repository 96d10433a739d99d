"""Azimuthal integration with a precomputed per-pixel bin index.

The geometry is turned once into a bin index: for every detector pixel, the number of the radial
bin its centre falls in, or -1 if the pixel is masked, outside the radial range or has no finite
radial coordinate.  Integrating a frame is then a single pass over the pixels that adds each
finite value to its bin (a numba kernel, float64 accumulators), i.e. a histogram without pixel
splitting — the same estimator as pyFAI's ``("no", "histogram", "cython")`` method with solid
angle and polarization corrections off.

One frame is integrated on the calling thread (a serial kernel that releases the GIL: on a busy
machine a parallel region waits for its slowest thread, which made single-frame parallel
kernels slower, not faster, in our measurements); a stack of frames is integrated in parallel,
one frame per thread.

Bins
----
``npt`` equal bins over ``radial_range = (lo, hi)`` in the chosen unit: bin ``i`` covers
``[lo + i·δ, lo + (i+1)·δ)`` with ``δ = (hi - lo) / npt``; a pixel exactly at ``hi`` goes into
the last bin, pixels outside ``[lo, hi]`` are left out.  The radial axis reported is the bin
centres ``lo + (i + 0.5)·δ``.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numba
import numpy as np

from pulsetrain.errors import ConfigurationError, DataShapeError
from pulsetrain.geometry.agipd import RADIAL_UNITS, DetectorGeometry

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- numba kernels
@numba.njit(cache=True, nogil=True)
def _hist_frame(flat, bins, mask, use_mask, sums, counts):  # pragma: no cover - compiled
    """Accumulate one flat frame into the histograms sums/counts (npt,), single-threaded."""
    if use_mask:
        for p in range(flat.size):
            b = bins[p]
            if b >= 0:
                v = flat[p]
                if not math.isnan(v) and mask[p] == 0:
                    sums[b] += v
                    counts[b] += 1
    else:
        for p in range(flat.size):
            b = bins[p]
            if b >= 0:
                v = flat[p]
                if not math.isnan(v):
                    sums[b] += v
                    counts[b] += 1


@numba.njit(parallel=True, cache=True, nogil=True)
def _hist_stack(frames, bins, mask, mask_step, use_mask, sums, counts):  # pragma: no cover
    """Histogram every frame of a (n, npix) stack into sums/counts (n, npt), parallel over n."""
    nframes, npix = frames.shape
    for f in numba.prange(nframes):
        s = sums[f]
        k = counts[f]
        mrow = f * mask_step
        for p in range(npix):
            b = bins[p]
            if b >= 0:
                v = frames[f, p]
                if not math.isnan(v) and not (use_mask and mask[mrow, p] != 0):
                    s[b] += v
                    k[b] += 1


# ---------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class IntegrationResult:
    """Result of an azimuthal integration.

    Attributes
    ----------
    radial : ndarray, shape (npt,)
        Bin centres in ``unit``.
    intensity : ndarray, float64, shape (npt,) or (n, npt)
        Mean intensity of the valid pixels in each bin; NaN where a bin has no valid pixel.
    count : ndarray, int64, same shape as ``intensity``
        Number of valid pixels (unmasked, finite value) that went into each bin.
    sum : ndarray, float64, same shape as ``intensity``
        Sum of the valid pixel values in each bin.
    unit : str
        Unit of ``radial`` (e.g. ``"q_A^-1"``, ``"2th_deg"``).
    """

    radial: np.ndarray
    intensity: np.ndarray
    count: np.ndarray
    sum: np.ndarray
    unit: str


def _mean(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


# ---------------------------------------------------------------------------- integrator
class AzimuthalIntegrator:
    """Azimuthal (radial-profile) integration with a precomputed per-pixel bin index.

    Parameters
    ----------
    radial_map : ndarray
        Radial coordinate of every pixel centre in ``unit`` (any shape; frames must have this
        shape, e.g. (16, 512, 128) for AGIPD-1M).
    npt : int
        Number of radial bins.
    radial_range : (float, float), optional
        ``(lo, hi)`` in ``unit``.  Default: the range of the unmasked pixels.
    mask : ndarray of bool or integer, optional
        Same shape as ``radial_map``; nonzero means a bad pixel, left out of every integration
        (the convention of the AGIPD ``image.mask`` and of pyFAI).
    unit : str
        Label of the radial unit (stored in results; see
        :data:`pulsetrain.geometry.RADIAL_UNITS`).

    Notes
    -----
    NaN pixel values are left out frame by frame (they are not counted).  Accumulation is in
    float64.  Use :meth:`from_geometry` to build the radial map from a detector geometry.
    """

    def __init__(
        self,
        radial_map: np.ndarray,
        npt: int,
        radial_range: tuple[float, float] | None = None,
        *,
        mask: np.ndarray | None = None,
        unit: str = "q_A^-1",
    ) -> None:
        radial_map = np.asarray(radial_map, dtype=np.float64)
        if int(npt) != npt or npt < 1:
            raise ConfigurationError(f"npt must be a positive integer, got {npt!r}")
        self.npt = npt = int(npt)
        self.unit = unit
        self.frame_shape: tuple[int, ...] = radial_map.shape
        valid = np.isfinite(radial_map)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != radial_map.shape:
                raise DataShapeError(f"mask shape {mask.shape} != radial map {radial_map.shape}")
            valid &= mask == 0
        if not valid.any():
            raise ConfigurationError("every pixel is masked or has no radial coordinate")
        if radial_range is None:
            lo, hi = float(radial_map[valid].min()), float(radial_map[valid].max())
        else:
            lo, hi = (float(v) for v in radial_range)
        if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
            raise ConfigurationError(f"radial range needs lo < hi, got ({lo}, {hi})")
        self.radial_range: tuple[float, float] = (lo, hi)
        delta = (hi - lo) / npt
        self.radial: np.ndarray = lo + (np.arange(npt) + 0.5) * delta
        self.radial.setflags(write=False)

        with np.errstate(invalid="ignore"):
            valid &= (radial_map >= lo) & (radial_map <= hi)
            b = np.floor((radial_map - lo) / delta)
        b = np.where(valid, np.minimum(b, npt - 1), -1)
        dtype = np.int16 if npt <= np.iinfo(np.int16).max else np.int32
        self._bins = np.ascontiguousarray(b.reshape(-1), dtype=dtype)
        self._bins.setflags(write=False)
        #: Number of pixels assigned to each bin before per-frame NaN/mask exclusion.
        self.pixels_per_bin: np.ndarray = np.bincount(self._bins[self._bins >= 0], minlength=npt)
        self._no_mask = np.zeros((1, 1), dtype=np.uint8)
        log.debug(
            "azimuthal integrator: %d bins over %s %s, %d of %d pixels used",
            npt,
            self.radial_range,
            unit,
            int(self.pixels_per_bin.sum()),
            self._bins.size,
        )

    @classmethod
    def from_geometry(
        cls,
        geometry: DetectorGeometry,
        npt: int,
        unit: str = "q_A^-1",
        *,
        photon_energy_kev: float | None = None,
        radial_range: tuple[float, float] | None = None,
        mask: np.ndarray | None = None,
    ) -> AzimuthalIntegrator:
        """Build an integrator for a detector geometry.

        Parameters
        ----------
        geometry : DetectorGeometry
            Detector, distance and beam centre.
        npt : int
            Number of radial bins.
        unit : {"q_A^-1", "q_nm^-1", "2th_deg", "2th_rad", "r_mm", "r_m"}
            Radial unit (pyFAI's names).
        photon_energy_kev : float, optional
            Required for the q units.
        radial_range : (float, float), optional
            In ``unit``; default is the range covered by the unmasked pixels.
        mask : ndarray, optional
            Nonzero = bad pixel, shape (16, 512, 128).
        """
        if unit not in RADIAL_UNITS:
            raise ConfigurationError(f"unknown radial unit {unit!r}; choose one of {RADIAL_UNITS}")
        rmap = geometry.radial_map(unit, photon_energy_kev)
        return cls(rmap, npt, radial_range, mask=mask, unit=unit)

    # ------------------------------------------------------------------ helpers
    def _check_mask(self, mask: np.ndarray | None, nframes: int | None) -> tuple[np.ndarray, bool]:
        """Return (mask as (m, npix), per_frame) for the kernels."""
        if mask is None:
            return self._no_mask, False
        mask = np.asarray(mask)
        if mask.dtype == np.bool_:
            mask = mask.view(np.uint8)
        if mask.shape == self.frame_shape:
            return np.ascontiguousarray(mask).reshape(1, -1), False
        if nframes is not None and mask.shape == (nframes, *self.frame_shape):
            return np.ascontiguousarray(mask).reshape(nframes, -1), True
        raise DataShapeError(
            f"mask shape {mask.shape} matches neither a frame {self.frame_shape} nor the stack"
        )

    @staticmethod
    def _as_float(frames: np.ndarray) -> np.ndarray:
        if frames.dtype.kind == "f":
            return np.ascontiguousarray(frames)
        if frames.dtype.kind in "iub":
            return np.ascontiguousarray(frames, dtype=np.float32)
        raise DataShapeError(f"frame dtype {frames.dtype} is not real numbers")

    # ------------------------------------------------------------------ integration
    def integrate(self, frame: np.ndarray, mask: np.ndarray | None = None) -> IntegrationResult:
        """Integrate one frame.

        Parameters
        ----------
        frame : ndarray, shape ``frame_shape``
            Pixel values (float32 or float64; integers are converted to float32).
        mask : ndarray, optional
            Extra per-frame mask (nonzero = leave out), e.g. the corrected ``image.mask``.

        Returns
        -------
        IntegrationResult
            ``intensity``, ``count`` and ``sum`` of shape (npt,).
        """
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape:
            raise DataShapeError(f"frame shape {frame.shape} != integrator {self.frame_shape}")
        flat = self._as_float(frame).reshape(-1)
        m, _ = self._check_mask(mask, None)
        s = np.zeros(self.npt, dtype=np.float64)
        c = np.zeros(self.npt, dtype=np.int64)
        _hist_frame(flat, self._bins, m.reshape(-1), mask is not None, s, c)
        return IntegrationResult(self.radial, _mean(s, c), c, s, self.unit)

    def integrate_stack(
        self, frames: np.ndarray, mask: np.ndarray | None = None
    ) -> IntegrationResult:
        """Integrate a stack of frames, in parallel over frames.

        Parameters
        ----------
        frames : ndarray, shape (n, *frame_shape)
            E.g. the (pulses, 16, 512, 128) corrected frames of one train.
        mask : ndarray, optional
            Extra mask, shape ``frame_shape`` (same for all frames) or (n, *frame_shape).

        Returns
        -------
        IntegrationResult
            ``intensity``, ``count`` and ``sum`` of shape (n, npt).
        """
        frames = np.asarray(frames)
        if frames.ndim != len(self.frame_shape) + 1 or frames.shape[1:] != self.frame_shape:
            raise DataShapeError(
                f"stack shape {frames.shape} is not (n, {', '.join(map(str, self.frame_shape))})"
            )
        n = frames.shape[0]
        flat = self._as_float(frames).reshape(n, self._bins.size)
        m, per_frame = self._check_mask(mask, n)
        sums = np.zeros((n, self.npt), dtype=np.float64)
        counts = np.zeros((n, self.npt), dtype=np.int64)
        if 0 < n < 2:
            _hist_frame(flat[0], self._bins, m[0], mask is not None, sums[0], counts[0])
        elif n:
            _hist_stack(flat, self._bins, m, int(per_frame), mask is not None, sums, counts)
        return IntegrationResult(self.radial, _mean(sums, counts), counts, sums, self.unit)
