"""Assemble detector frames into 2-D preview images, downsample them and scale them to uint8.

:class:`PreviewAssembler` precomputes, once per geometry, a gather table: for every pixel of the
output image, the flat indices of the detector pixels that fall into it (EXtra-geom's
``position_modules`` snapping, optionally flipped for display and binned by an integer factor).
Applying it to a frame is one pass of a single-threaded numba kernel that takes the NaN-aware
mean of each output pixel and, for :meth:`PreviewAssembler.preview` with a linear scale, maps
it to uint8 in the same pass.  The log scale goes through numpy's vectorised ``log`` on the
assembled float32 image (several times faster than a scalar log per pixel), then the same
linear mapping.  Kernels release the GIL, so a caller may run several assemblers in threads.
"""

from __future__ import annotations

import logging
import math
import threading

import numba
import numpy as np

from pulsetrain.errors import ConfigurationError, DataShapeError
from pulsetrain.geometry.agipd import DetectorGeometry

log = logging.getLogger(__name__)

__all__ = [
    "PreviewAssembler",
    "extent_mm",
    "pixel_location",
    "q_ring_radius_m",
    "scale_to_uint8",
]

SCALES = ("linear", "log")
_TINY = np.finfo(np.float32).tiny


@numba.njit(inline="always")
def _block_mean(flat, table, i, j):  # pragma: no cover - compiled
    """NaN-aware mean of the detector pixels listed in table[i, j, :] (NaN if none)."""
    k = table.shape[2]
    if k == 1:
        idx = table[i, j, 0]
        return flat[idx] if idx >= 0 else np.nan
    s = 0.0
    c = 0
    for m in range(k):
        idx = table[i, j, m]
        if idx >= 0:
            v = flat[idx]
            if not math.isnan(v):
                s += v
                c += 1
    return s / c if c > 0 else np.nan


@numba.njit(cache=True, nogil=True)
def _gather_mean(flat, table, out):  # pragma: no cover - compiled
    ny, nx, _ = table.shape
    for i in range(ny):
        for j in range(nx):
            out[i, j] = _block_mean(flat, table, i, j)


@numba.njit(inline="always")
def _level(t):  # pragma: no cover - compiled
    """uint8 level of a fraction t of the colour range (clipped, rounded to nearest)."""
    if t <= 0.0:
        return np.uint8(0)
    if t >= 1.0:
        return np.uint8(255)
    return np.uint8(math.floor(t * 255.0 + 0.5))


@numba.njit(cache=True, nogil=True)
def _gather_uint8(flat, table, out, lo, inv_span, nan_value):  # pragma: no cover - compiled
    """Assemble + NaN-mean + linear scaling to uint8 in one pass."""
    ny, nx, _ = table.shape
    for i in range(ny):
        for j in range(nx):
            v = _block_mean(flat, table, i, j)
            out[i, j] = nan_value if math.isnan(v) else _level((v - lo) * inv_span)


@numba.njit(cache=True, nogil=True)
def _scale_uint8(img, out, lo, inv_span, nan_value):  # pragma: no cover - compiled
    """Linear scaling of an image (here: already log-transformed) to uint8."""
    ny, nx = img.shape
    for i in range(ny):
        for j in range(nx):
            v = img[i, j]
            out[i, j] = nan_value if math.isnan(v) else _level((v - lo) * inv_span)


def _scale_params(vmin: float, vmax: float, scale: str) -> tuple[float, float, bool]:
    if scale not in SCALES:
        raise ConfigurationError(f"scale must be one of {SCALES}, got {scale!r}")
    vmin, vmax = float(vmin), float(vmax)
    if not (np.isfinite(vmin) and np.isfinite(vmax)) or vmax <= vmin:
        raise ConfigurationError(f"colour limits need vmin < vmax, got ({vmin}, {vmax})")
    if scale == "log":
        if vmin <= 0:
            raise ConfigurationError(f"log scale needs vmin > 0, got {vmin}")
        lo, hi = math.log(vmin), math.log(vmax)
        return lo, 1.0 / (hi - lo), True
    return vmin, 1.0 / (vmax - vmin), False


def pixel_location(
    index: int | np.ndarray, module_shape: tuple[int, int] = (512, 128), asic_size: int = 64
) -> tuple:
    """Module, ASIC, slow-scan and fast-scan pixel of flat detector indices.

    Parameters
    ----------
    index : int or ndarray of int
        ``module * ss_size * fs_size + ss * fs_size + fs`` (−1: no pixel gives module −1 and
        −1 everywhere).
    module_shape : tuple of int
        (slow scan, fast scan) of a module (AGIPD: 512, 128).
    asic_size : int
        ASIC edge in pixels (AGIPD: 64; a module is 8 × 2 ASICs).

    Returns
    -------
    tuple (module, asic, ss, fs)
        ``asic = (ss // asic_size) * (fs_size // asic_size) + fs // asic_size``.
    """
    idx = np.asarray(index, dtype=np.int64)
    ss_size, fs_size = module_shape
    npix = ss_size * fs_size
    module = idx // npix
    pix = idx % npix
    ss, fs = pix // fs_size, pix % fs_size
    asic = (ss // asic_size) * (fs_size // asic_size) + fs // asic_size
    bad = idx < 0
    result = tuple(np.where(bad, -1, v) for v in (module, asic, ss, fs))
    if np.ndim(index) == 0:
        return tuple(int(v) for v in result)
    return result


def q_ring_radius_m(q: np.ndarray, distance_m: float, photon_energy_kev: float) -> np.ndarray:
    """Radius on a flat detector of the ring at momentum transfer ``q`` (1/Å).

    ``r = D tan(2θ)`` with ``2θ = 2 asin(q λ / 4π)`` and ``λ = 12.3984 / E`` Å; NaN where
    ``q λ / 4π > 1`` or ``2θ >= 90°``.
    """
    from pulsetrain.geometry.agipd import wavelength_angstrom

    lam = wavelength_angstrom(photon_energy_kev)
    s = np.asarray(q, dtype=np.float64) * lam / (4.0 * math.pi)
    with np.errstate(invalid="ignore"):
        two_theta = 2.0 * np.arcsin(np.where((s >= 0) & (s <= 1), s, np.nan))
        r = float(distance_m) * np.tan(two_theta)
    return np.where(two_theta < math.pi / 2, r, np.nan)


def extent_mm(
    shape: tuple[int, int], beam_centre_yx: tuple[float, float], pixel_size_mm: float
) -> np.ndarray:
    """``[left, right, bottom, top]`` of an image in mm from the beam (x right, y up).

    Parameters
    ----------
    shape : (height, width)
    beam_centre_yx : (float, float)
        Beam position in pixel edge coordinates (pixel i spans [i, i+1)), row 0 at the top.
    pixel_size_mm : float
        Edge of one image pixel.
    """
    height, width = shape
    by, bx = beam_centre_yx
    p = float(pixel_size_mm)
    return np.array([-bx * p, (width - bx) * p, -(height - by) * p, by * p], dtype=np.float64)


def scale_to_uint8(
    image: np.ndarray,
    vmin: float,
    vmax: float,
    scale: str = "linear",
    *,
    nan_value: int = 0,
) -> np.ndarray:
    """Map an image to uint8 with fixed colour limits.

    Values at or below ``vmin`` give 0, at or above ``vmax`` give 255, linear (or linear in
    log(value) for ``scale="log"``, where values ≤ 0 give 0) in between, rounded to nearest.

    Parameters
    ----------
    image : ndarray
        Any real array.
    vmin, vmax : float
        Colour limits, ``vmin < vmax`` (and ``vmin > 0`` for log).
    scale : {"linear", "log"}
    nan_value : int
        Output value for NaN input.

    Returns
    -------
    ndarray of uint8, same shape as ``image``
    """
    lo, inv_span, use_log = _scale_params(vmin, vmax, scale)
    img = np.asarray(image, dtype=np.float64)
    if use_log:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (np.log(np.where(img > 0, img, np.nan)) - lo) * inv_span
        t = np.where(np.isnan(img), np.nan, np.where(img > 0, t, 0.0))
    else:
        t = (img - lo) * inv_span
    out = np.floor(np.clip(t, 0.0, 1.0) * 255.0 + 0.5)
    out[np.isnan(t)] = nan_value
    return out.astype(np.uint8)


class PreviewAssembler:
    """Assemble (16, 512, 128) frames into a 2-D image for display.

    Parameters
    ----------
    geometry : DetectorGeometry
        Detector geometry (only the pixel layout is used, not distance or energy).
    downsample : int
        Integer binning factor; each output pixel is the NaN-aware mean of the detector pixels
        in a ``downsample × downsample`` block of the assembled image (NaN if none).
    mask : ndarray, optional
        Per-pixel mask of shape (16, 512, 128); nonzero pixels are left out (like NaN).
    display_orientation : bool
        If True (default) the image is oriented for a screen: row 0 at the top (y up) and x
        increasing to the left, i.e. seen looking along the beam — the picture EXtra-geom's
        ``plot_data(frontview=True)`` draws.  If False, the array layout of EXtra-geom's
        ``position_modules`` (row index increasing with y, column with x).

    Notes
    -----
    Gaps between tiles and modules are NaN in :meth:`assemble` and ``nan_value`` in
    :meth:`preview`.  Building the table takes some tens of milliseconds; build one assembler
    per geometry and reuse it.
    """

    def __init__(
        self,
        geometry: DetectorGeometry,
        downsample: int = 1,
        *,
        mask: np.ndarray | None = None,
        display_orientation: bool = True,
    ) -> None:
        if int(downsample) != downsample or downsample < 1:
            raise ConfigurationError(f"downsample must be a positive integer, got {downsample!r}")
        self.geometry = geometry
        self.downsample = f = int(downsample)
        self.display_orientation = bool(display_orientation)
        self.frame_shape = geometry.frame_shape
        npix = int(np.prod(self.frame_shape))

        # Where each detector pixel lands: let EXtra-geom position an array of flat indices.
        index = np.arange(npix, dtype=np.int64).reshape(self.frame_shape)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != self.frame_shape:
                raise DataShapeError(f"mask shape {mask.shape} != frame shape {self.frame_shape}")
            index[mask != 0] = -1
        placed = geometry.geom.output_array_for_position(dtype=np.int64)
        placed.fill(-1)
        placed, centre = geometry.geom.position_modules(index, out=placed)
        ny, nx = placed.shape
        # Beam position in edge coordinates of the assembled array (pixel i spans [i, i+1)).
        bx, by = geometry.beam_centre_px
        cy, cx = float(centre[0]) + by, float(centre[1]) + bx
        if self.display_orientation:
            placed = placed[::-1, ::-1]
            cy, cx = ny - cy, nx - cx
        self.full_shape: tuple[int, int] = (ny, nx)
        oy, ox = -(-ny // f), -(-nx // f)
        padded = np.full((oy * f, ox * f), -1, dtype=np.int64)
        padded[:ny, :nx] = placed
        table = padded.reshape(oy, f, ox, f).transpose(0, 2, 1, 3).reshape(oy, ox, f * f)
        self._table = np.ascontiguousarray(table, dtype=np.int32 if npix < 2**31 else np.int64)
        self.shape: tuple[int, int] = (oy, ox)
        #: Beam position (y, x) in output-pixel edge coordinates (pixel i spans [i, i+1)).
        self.beam_centre_yx: tuple[float, float] = (cy / f, cx / f)
        self._log_buffer = np.empty(self.shape, dtype=np.float32)
        self._log_lock = threading.Lock()
        log.debug("preview assembler: %s -> %s (downsample %d)", (ny, nx), self.shape, f)

    def pixel_map(self) -> np.ndarray:
        """For every output pixel, the flat detector index of the first pixel of its block.

        Returns
        -------
        ndarray of int32, shape ``self.shape``
            ``module * 65536 + ss * 128 + fs`` (for AGIPD-1M; see :func:`pixel_location`), −1
            where no (unmasked) detector pixel lands.  With ``downsample = 1`` this is the
            complete map of the assembled image.
        """
        table = self._table
        valid = table >= 0
        first = valid.argmax(axis=2)
        out = np.take_along_axis(table, first[..., np.newaxis], axis=2)[..., 0].astype(np.int32)
        out[~valid.any(axis=2)] = -1
        return out

    @property
    def pixel_size_mm(self) -> float:
        """Edge of one output pixel in mm (detector pixel × downsample)."""
        return self.geometry.pixel_size_m * 1e3 * self.downsample

    def _flat(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape:
            raise DataShapeError(
                f"frame shape {frame.shape} does not match the detector {self.frame_shape}"
            )
        if frame.dtype.kind not in "fiu":
            raise DataShapeError(f"frame dtype {frame.dtype} is not numeric")
        return np.ascontiguousarray(frame).reshape(-1)

    def assemble(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Assemble (and downsample) one frame.

        Parameters
        ----------
        frame : ndarray, shape (16, 512, 128)
            One detector frame (any real dtype).
        out : ndarray of float32, shape ``self.shape``, optional
            Buffer to write into (reuse it to avoid an allocation per frame).

        Returns
        -------
        ndarray of float32, shape ``self.shape``
            NaN where no valid detector pixel contributes.
        """
        flat = self._flat(frame)
        if out is None:
            out = np.empty(self.shape, dtype=np.float32)
        elif out.shape != self.shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise DataShapeError(f"out must be C-contiguous float32 of shape {self.shape}")
        _gather_mean(flat, self._table, out)
        return out

    def preview(
        self,
        frame: np.ndarray,
        vmin: float,
        vmax: float,
        scale: str = "linear",
        *,
        nan_value: int = 0,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """Assemble, downsample and scale one frame to uint8 in one pass.

        Equivalent to ``scale_to_uint8(self.assemble(frame), vmin, vmax, scale)``.

        Parameters
        ----------
        frame : ndarray, shape (16, 512, 128)
        vmin, vmax : float
            Colour limits (``vmin > 0`` for log scale).
        scale : {"linear", "log"}
        nan_value : int
            Value for output pixels with no valid detector pixel (gaps, masked, NaN).
        out : ndarray of uint8, shape ``self.shape``, optional

        Returns
        -------
        ndarray of uint8, shape ``self.shape``
        """
        lo, inv_span, use_log = _scale_params(vmin, vmax, scale)
        if not 0 <= int(nan_value) <= 255:
            raise ConfigurationError(f"nan_value must be in 0..255, got {nan_value!r}")
        flat = self._flat(frame)
        if out is None:
            out = np.empty(self.shape, dtype=np.uint8)
        elif out.shape != self.shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise DataShapeError(f"out must be C-contiguous uint8 of shape {self.shape}")
        nan_u8 = np.uint8(nan_value)
        if not use_log:
            _gather_uint8(flat, self._table, out, lo, inv_span, nan_u8)
            return out
        # numpy's vectorised log is several times faster than a scalar log in the kernel.
        own = self._log_lock.acquire(blocking=False)  # another thread using it: allocate
        try:
            buf = self._log_buffer if own else np.empty(self.shape, dtype=np.float32)
            _gather_mean(flat, self._table, buf)
            np.maximum(buf, np.float32(_TINY), out=buf)  # values <= 0 go to the bottom
            np.log(buf, out=buf)
            _scale_uint8(buf, out, lo, inv_span, nan_u8)
        finally:
            if own:
                self._log_lock.release()
        return out
