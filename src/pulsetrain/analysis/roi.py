"""Rectangular regions of interest of an assembled detector image, computed on module data.

A rectangle ``[x, y, w, h]`` is given in the full-resolution assembled image (see
:class:`pulsetrain.geometry.PreviewAssembler` with ``downsample=1``).  :class:`RegionGather`
turns it, once per geometry, into the list of detector pixels (module, slow scan, fast scan)
that land in each of its pixels, so a train's ROI pixels are gathered straight from the module
frames (``(pulses, h, w)``, NaN where no detector pixel lands) without assembling whole images.
:func:`roi_statistics` reduces them to sums, means, maxima and projections per pulse and train.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
            if arr is not None:
                out[:, pos] = arr[:n, ss, fs]
        return out.reshape(n, h, w)


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
        proj_x = np.nanmean(r, axis=1).astype(np.float32)
        proj_y = np.nanmean(r, axis=2).astype(np.float32)
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
            proj_x_train=np.nanmean(r, axis=(0, 1)).astype(np.float32)
            if n
            else np.full(w, np.nan, np.float32),
            proj_y_train=np.nanmean(r, axis=(0, 2)).astype(np.float32)
            if n
            else np.full(h, np.nan, np.float32),
        )
