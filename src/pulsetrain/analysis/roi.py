"""Rectangular regions of interest of an assembled detector image, computed on module data.

A rectangle ``[x, y, w, h]`` is given in the full-resolution assembled image (see
:class:`pulsetrain.geometry.PreviewAssembler` with ``downsample=1``).  :class:`RegionGather`
turns it, once per geometry, into the list of detector pixels (module, slow scan, fast scan)
that land in each of its pixels, so a train's ROI pixels are gathered straight from the module
frames (``(pulses, h, w)``, NaN where no detector pixel lands) without assembling whole images.
:func:`roi_statistics` reduces them to sums, means, maxima and projections per pulse and train.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numba
import numpy as np

from pulsetrain.errors import ConfigurationError

__all__ = ["Rect", "RegionGather", "RoiStatistics", "parse_rect", "roi_statistics"]


@dataclass(frozen=True)
class Rect:
    """A rectangle of image pixels: columns ``x .. x+w-1``, rows ``y .. y+h-1``."""

    x: int
    y: int
    w: int
    h: int

    @property
    def off(self) -> bool:
        """True for the all-zero rectangle (an ROI that is switched off)."""
        return self.w == 0 and self.h == 0 and self.x == 0 and self.y == 0

    def as_list(self) -> list[int]:
        """``[x, y, w, h]``."""
        return [self.x, self.y, self.w, self.h]


def parse_rect(value: Sequence, image_shape: tuple[int, int], name: str = "roi") -> Rect:
    """Check a rectangle ``[x, y, w, h]`` against an image of shape ``(height, width)``.

    ``[0, 0, 0, 0]`` is valid (off).  Otherwise ``w, h >= 1``, ``x, y >= 0`` and the rectangle
    must lie inside the image.

    Raises
    ------
    ConfigurationError
        Naming ``name``, the rectangle and the image size.
    """
    try:
        vals = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ConfigurationError(f"{name}: expected [x, y, w, h], got {value!r}") from None
    if len(vals) != 4 or any(v != int(v) for v in vals):
        raise ConfigurationError(f"{name}: expected 4 integers [x, y, w, h], got {value!r}")
    rect = Rect(*(int(v) for v in vals))
    if rect.off:
        return rect
    height, width = image_shape
    if rect.w < 1 or rect.h < 1:
        raise ConfigurationError(f"{name}: width and height must be >= 1, got {rect.as_list()}")
    if rect.x < 0 or rect.y < 0 or rect.x + rect.w > width or rect.y + rect.h > height:
        raise ConfigurationError(
            f"{name}: {rect.as_list()} lies outside the image ({width} wide, {height} high: "
            f"needs 0 <= x, x + w <= {width}, 0 <= y, y + h <= {height})"
        )
    return rect


class RegionGather:
    """Gather the detector pixels of one rectangle from module frames.

    Parameters
    ----------
    index_map : ndarray of int, shape (H, W)
        For every pixel of the full-resolution assembled image, the flat detector index
        ``module * ss_size * fs_size + ss * fs_size + fs``, or −1 where no pixel lands
        (:meth:`pulsetrain.geometry.PreviewAssembler.pixel_map` with ``downsample=1``).
    rect : Rect
        The region (not off).
    module_shape : tuple of int
        (slow scan, fast scan) of one module.
    """

    def __init__(
        self, index_map: np.ndarray, rect: Rect, module_shape: tuple[int, int] = (512, 128)
    ) -> None:
        self.rect = rect
        self.shape = (rect.h, rect.w)
        sub = np.asarray(index_map)[rect.y : rect.y + rect.h, rect.x : rect.x + rect.w].ravel()
        npix = module_shape[0] * module_shape[1]
        valid = sub >= 0
        module = np.where(valid, sub // npix, -1)
        pix = sub % npix
        self._parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
        for m in np.unique(module[valid]):
            pos = np.flatnonzero(module == m)
            p = pix[pos]
            self._parts.append((int(m), pos, p // module_shape[1], p % module_shape[1]))
        self._rows = {m: (pos // rect.w).astype(np.intp) for m, pos, *_ in self._parts}
        self._cols = {m: (pos % rect.w).astype(np.intp) for m, pos, *_ in self._parts}

    @property
    def modules(self) -> list[int]:
        """Modules with pixels in the region."""
        return [m for m, *_ in self._parts]

    def gather(self, modules: Mapping[int, np.ndarray], n: int) -> np.ndarray:
        """The region's pixels of the first ``n`` frames.

        Parameters
        ----------
        modules : mapping of int to ndarray, shape (pulses, ss, fs)
            Module number → frames (any real dtype, any strides); missing modules give NaN.
        n : int
            Number of frames.

        Returns
        -------
        ndarray of float32, shape (n, h, w)
        """
        h, w = self.shape
        out = np.full((n, h * w), np.nan, dtype=np.float32)
        for m, pos, ss, fs in self._parts:
            arr = modules.get(m)
            if arr is not None and n:
                # a loop, not arr[:n, ss, fs] into out[:, pos]: NumPy's fancy indexing made a
                # temporary and took most of a region histogram's time
                _gather(arr, n, ss, fs, pos, out)
        return out.reshape(n, h, w)

    def statistics(self, modules: Mapping[int, np.ndarray], n: int) -> RoiStatistics:
        """:func:`roi_statistics` of the region's pixels, in one pass over the module frames.

        Equal to ``roi_statistics(self.gather(modules, n))`` up to the order of the float64
        additions (no (n, h, w) copy is made).
        """
        h, w = self.shape
        sums = np.zeros(n)
        counts = np.zeros(n, dtype=np.int64)
        maxs = np.full(n, -np.inf)
        px, pxn = np.zeros((n, w)), np.zeros((n, w), dtype=np.int64)
        py, pyn = np.zeros((n, h)), np.zeros((n, h), dtype=np.int64)
        for m, _pos, ss, fs in self._parts:
            arr = modules.get(m)
            if arr is not None and n:
                _accumulate(
                    arr,
                    n,
                    ss,
                    fs,
                    self._rows[m],
                    self._cols[m],
                    sums,
                    counts,
                    maxs,
                    px,
                    pxn,
                    py,
                    pyn,
                )
        with np.errstate(invalid="ignore", divide="ignore"):
            total = int(counts.sum())
            return RoiStatistics(
                sum=sums,
                mean=np.where(counts > 0, sums / counts, np.nan),
                max=np.where(counts > 0, maxs, np.nan),
                proj_x=(px / pxn).astype(np.float32),
                proj_y=(py / pyn).astype(np.float32),
                sum_train=float(sums.sum()),
                mean_train=float(sums.sum() / total) if total else float("nan"),
                max_train=float(maxs.max()) if total else float("nan"),
                proj_x_train=(px.sum(axis=0) / pxn.sum(axis=0)).astype(np.float32),
                proj_y_train=(py.sum(axis=0) / pyn.sum(axis=0)).astype(np.float32),
            )


@numba.njit(cache=True, nogil=True)
def _gather(frames, n, ss, fs, pos, out):  # pragma: no cover
    """out[p, pos[k]] = frames[p, ss[k], fs[k]] for the first n frames (as float32)."""
    for p in range(n):
        for k in range(ss.shape[0]):
            out[p, pos[k]] = np.float32(frames[p, ss[k], fs[k]])


@numba.njit(cache=True, nogil=True)
def _accumulate(
    frames, n, ss, fs, row, col, sums, counts, maxs, px, pxn, py, pyn
):  # pragma: no cover
    """Add one module's ROI pixels of n frames to the per-pulse sums, counts, maxima and
    projection sums (finite values only, float64)."""
    for p in range(n):
        for k in range(ss.shape[0]):
            v = np.float64(frames[p, ss[k], fs[k]])
            if math.isfinite(v):
                sums[p] += v
                counts[p] += 1
                maxs[p] = max(maxs[p], v)
                px[p, col[k]] += v
                pxn[p, col[k]] += 1
                py[p, row[k]] += v
                pyn[p, row[k]] += 1


@dataclass(frozen=True)
class RoiStatistics:
    """Per-pulse and per-train values of one ROI (see :func:`roi_statistics`)."""

    sum: np.ndarray
    mean: np.ndarray
    max: np.ndarray
    proj_x: np.ndarray
    proj_y: np.ndarray
    sum_train: float
    mean_train: float
    max_train: float
    proj_x_train: np.ndarray
    proj_y_train: np.ndarray


def roi_statistics(region: np.ndarray) -> RoiStatistics:
    """Sums, means, maxima and projections of ROI pixels, per pulse and over the train.

    Parameters
    ----------
    region : ndarray, shape (n, h, w)
        The ROI pixels of ``n`` pulses (NaN: no data).

    Returns
    -------
    RoiStatistics
        ``sum = nansum(R)``, ``mean = nanmean(R)``, ``max = nanmax(R)`` per pulse (float64,
        NaN when no finite pixel for mean and max), ``proj_x = nanmean(R, axis=rows)`` (n, w),
        ``proj_y = nanmean(R, axis=columns)`` (n, h) as float32; the train values pool all
        pulses' pixels.  Infinite values count as missing.
    """
    r = np.asarray(region, dtype=np.float32)
    if r.ndim != 3:
        raise ConfigurationError(f"ROI pixels must be (pulses, h, w), got shape {r.shape}")
    n, h, w = r.shape
    if not np.isfinite(r).all():
        r = np.where(np.isfinite(r), r, np.float32(np.nan))
    flat = r.reshape(n, h * w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        s = np.nansum(flat, axis=1, dtype=np.float64)
        mean = np.nanmean(flat, axis=1, dtype=np.float64)
        mx = np.nanmax(flat, axis=1).astype(np.float64) if flat.size else np.full(n, np.nan)
        proj_x = np.nanmean(r, axis=1, dtype=np.float64).astype(np.float32)
        proj_y = np.nanmean(r, axis=2, dtype=np.float64).astype(np.float32)
        all_px = flat.reshape(-1)
        finite = all_px.size and np.isfinite(all_px).any()
        return RoiStatistics(
            sum=s,
            mean=mean,
            max=mx,
            proj_x=proj_x,
            proj_y=proj_y,
            sum_train=float(np.nansum(all_px, dtype=np.float64)),
            mean_train=float(np.nanmean(all_px, dtype=np.float64)) if finite else float("nan"),
            max_train=float(np.nanmax(all_px)) if finite else float("nan"),
            proj_x_train=np.nanmean(r, axis=(0, 1), dtype=np.float64).astype(np.float32)
            if n
            else np.full(w, np.nan, np.float32),
            proj_y_train=np.nanmean(r, axis=(0, 2), dtype=np.float64).astype(np.float32)
            if n
            else np.full(h, np.nan, np.float32),
        )
