"""Per-pulse statistics and region-of-interest sums of detector frames, NaN-aware.

Every function takes one frame ``(modules, ss, fs)`` or a stack ``(pulses, modules, ss, fs)``
and leaves out NaN pixels and pixels flagged in an optional mask (nonzero = bad).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence

import numba
import numpy as np

from pulsetrain.errors import ConfigurationError, DataShapeError

log = logging.getLogger(__name__)


@numba.njit(parallel=True, cache=True, nogil=True)
def _module_moments(frames, mask, use_mask, count, total, m2, vmin, vmax):  # pragma: no cover
    """Per (pulse, module): valid count, mean, sum of squared deviations, min and max.

    One pass with sums of ``v - shift`` (shift = the module's first valid value), which keeps the
    variance accurate when the mean is large compared with the spread.  ``total`` receives the
    mean of the module, ``m2`` the sum of squared deviations from it.
    """
    n, nmod, ny, nx = frames.shape
    npx = ny * nx
    mstep = 1 if mask.shape[0] == n and n > 1 else 0
    for job in numba.prange(n * nmod):
        f = job // nmod
        m = job % nmod
        row = frames[f, m].reshape(npx)
        mrow = mask[f * mstep, m].reshape(mask.shape[2] * mask.shape[3])
        shift = 0.0
        for p in range(npx):
            v = row[p]
            if not math.isnan(v) and not (use_mask and mrow[p] != 0):
                shift = v
                break
        c = 0
        s = 0.0
        s2 = 0.0
        lo = np.inf
        hi = -np.inf
        if use_mask:
            for p in range(npx):
                v = row[p]
                ok = (not math.isnan(v)) & (mrow[p] == 0)
                d = (v - shift) if ok else 0.0
                c += ok
                s += d
                s2 += d * d
                lo = min(lo, v) if ok else lo
                hi = max(hi, v) if ok else hi
        else:
            for p in range(npx):
                v = row[p]
                ok = not math.isnan(v)
                d = (v - shift) if ok else 0.0
                c += ok
                s += d
                s2 += d * d
                lo = min(lo, v) if ok else lo
                hi = max(hi, v) if ok else hi
        count[f, m] = c
        if c > 0:
            total[f, m] = shift + s / c
            m2[f, m] = max(s2 - s * s / c, 0.0)
        vmin[f, m] = lo
        vmax[f, m] = hi


@dataclasses.dataclass(frozen=True)
class PulseStatistics:
    """Statistics of the valid pixels of each pulse (NaN where a pulse has no valid pixel).

    Attributes
    ----------
    count : ndarray of int64
        Valid (not NaN, not masked) pixels.
    sum, mean, std, min, max : ndarray of float64
        ``std`` is the population standard deviation (ddof = 0), like ``numpy.nanstd``.
    """

    count: np.ndarray
    sum: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray


def _as_stack(frames: np.ndarray) -> tuple[np.ndarray, bool]:
    frames = np.asarray(frames)
    if frames.dtype.kind not in "fiu":
        raise DataShapeError(f"frame dtype {frames.dtype} is not numeric")
    if frames.ndim == 3:
        return np.ascontiguousarray(frames)[None], True
    if frames.ndim == 4:
        return np.ascontiguousarray(frames), False
    raise DataShapeError(
        f"frames must be (modules, ss, fs) or (pulses, modules, ss, fs), got {frames.shape}"
    )


def _mask_stack(mask: np.ndarray | None, stack: np.ndarray) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        mask = mask.view(np.uint8)
    if mask.shape == stack.shape[1:]:
        return np.ascontiguousarray(mask)[None]
    if mask.shape == stack.shape:
        return np.ascontiguousarray(mask)
    raise DataShapeError(f"mask shape {mask.shape} does not fit frames {stack.shape}")


def pulse_statistics(frames: np.ndarray, mask: np.ndarray | None = None) -> PulseStatistics:
    """Count, sum, mean, standard deviation, min and max of every pulse, NaN-aware.

    Parameters
    ----------
    frames : ndarray, shape (modules, ss, fs) or (pulses, modules, ss, fs)
    mask : ndarray, optional
        Nonzero = leave the pixel out; shape of one frame or of the stack.

    Returns
    -------
    PulseStatistics
        Arrays of shape (pulses,), or 0-d arrays for a single frame.
    """
    stack, single = _as_stack(frames)
    mk = _mask_stack(mask, stack)
    n, nmod = stack.shape[:2]
    count = np.zeros((n, nmod), dtype=np.int64)
    total = np.zeros((n, nmod), dtype=np.float64)  # per-module mean
    m2 = np.zeros((n, nmod), dtype=np.float64)
    vmin = np.zeros((n, nmod), dtype=np.float64)
    vmax = np.zeros((n, nmod), dtype=np.float64)
    if stack.size:
        use_mask = mk is not None
        if mk is None:
            mk = np.zeros((1, 1, 1, 1), dtype=np.uint8)
        _module_moments(stack, mk, use_mask, count, total, m2, vmin, vmax)
    # Combine modules: M2 = Σ M2_m + Σ c_m (mean_m - mean)^2  (Chan et al.).
    c = count.sum(axis=1)
    s = (count * total).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        dev = np.where(count > 0, total - mean[:, None], 0.0)
        m2_all = m2.sum(axis=1) + (count * dev * dev).sum(axis=1)
        std = np.where(c > 0, np.sqrt(m2_all / np.maximum(c, 1)), np.nan)
    lo = np.where(c > 0, vmin.min(axis=1, initial=np.inf), np.nan)
    hi = np.where(c > 0, vmax.max(axis=1, initial=-np.inf), np.nan)
    s = np.where(c > 0, s, 0.0)
    if single:
        return PulseStatistics(c[0], s[0], mean[0], std[0], lo[0], hi[0])
    return PulseStatistics(c, s, mean, std, lo, hi)


@dataclasses.dataclass(frozen=True)
class ModuleRegion:
    """A rectangle of one module in data coordinates.

    Attributes
    ----------
    module : int
        Module number (0..15 for AGIPD-1M).
    ss : (int, int)
        Slow-scan start and stop (stop exclusive).
    fs : (int, int)
        Fast-scan start and stop (stop exclusive).
    """

    module: int
    ss: tuple[int, int]
    fs: tuple[int, int]

    def slices(self) -> tuple[int, slice, slice]:
        """Index of this region in a (modules, ss, fs) frame."""
        return self.module, slice(*self.ss), slice(*self.fs)


RegionOfInterest = ModuleRegion | np.ndarray


def _roi_index(roi: RegionOfInterest, frame_shape: tuple[int, ...]):
    if isinstance(roi, ModuleRegion):
        nmod, nss, nfs = frame_shape
        (s0, s1), (f0, f1) = roi.ss, roi.fs
        if not (0 <= roi.module < nmod and 0 <= s0 < s1 <= nss and 0 <= f0 < f1 <= nfs):
            raise ConfigurationError(f"{roi} is empty or outside the frame {frame_shape}")
        return roi.slices()
    sel = np.asarray(roi)
    if sel.dtype != np.bool_ or sel.shape != frame_shape:
        raise DataShapeError(
            f"an ROI array must be bool of the frame shape {frame_shape}, got "
            f"{sel.dtype} {sel.shape}"
        )
    return sel


def roi_sums(
    frames: np.ndarray,
    rois: Sequence[RegionOfInterest],
    mask: np.ndarray | None = None,
    *,
    mean: bool = False,
) -> np.ndarray:
    """Sum (or mean) of the valid pixels in each region of interest, per pulse.

    Parameters
    ----------
    frames : ndarray, shape (modules, ss, fs) or (pulses, modules, ss, fs)
    rois : sequence of ModuleRegion or bool ndarray of the frame shape
        Rectangles in one module, or arbitrary pixel selections.
    mask : ndarray, optional
        Nonzero = leave the pixel out; shape of one frame or of the stack.
    mean : bool
        Return the mean of the valid pixels instead of their sum (NaN if none).

    Returns
    -------
    ndarray of float64, shape (pulses, len(rois)) (or (len(rois),) for a single frame)
        Sums are 0 where an ROI has no valid pixel.
    """
    stack, single = _as_stack(frames)
    mk = _mask_stack(mask, stack)
    frame_shape = stack.shape[1:]
    out = np.zeros((stack.shape[0], len(rois)), dtype=np.float64)
    for r, roi in enumerate(rois):
        idx = _roi_index(roi, frame_shape)
        full = (slice(None), *idx) if isinstance(idx, tuple) else (slice(None), idx)
        vals = stack[full].reshape(stack.shape[0], -1)
        good = ~np.isnan(vals) if vals.dtype.kind == "f" else np.ones(vals.shape, dtype=bool)
        if mk is not None:
            ok = (mk[full] == 0).reshape(mk.shape[0], -1)
            good &= np.broadcast_to(ok, vals.shape)
        s = np.where(good, vals, 0).sum(axis=1, dtype=np.float64)
        if mean:
            c = good.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                s = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        out[:, r] = s
    return out[0] if single else out
