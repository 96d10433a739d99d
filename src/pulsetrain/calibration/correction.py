"""AGIPD correction of one module-train: gain stage, offset, relative gain, common mode, mask.

Two implementations with the same signature and the same results:

* :func:`correct_agipd` - the fast path, a numba ``parallel=True`` kernel (one pass per pixel);
* :func:`correct_agipd_numpy` - a plain numpy reference, used by the tests to check the kernel.

Constants are always indexed by each frame's ``cellId`` (frames may come in any cell order, with
gaps or repeats), never by the frame's position in the train.  See ``docs/calibration.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from pulsetrain.calibration.constants import MODULE_SHAPE, AGIPDConstants
from pulsetrain.calibration.kernels import ASIC_SIZE, common_mode_kernel, correct_kernel
from pulsetrain.errors import CalibrationError

__all__ = [
    "DEFAULT_COMMON_MODE_MIN_PIXELS",
    "DEFAULT_COMMON_MODE_THRESHOLD",
    "CorrectedFrames",
    "allocate_output",
    "correct_agipd",
    "correct_agipd_numpy",
    "correct_module_data",
]

log = logging.getLogger(__name__)

#: Pixels with a corrected value below this (output units, keV with keV-relative gains) count
#: as "dark" for the common-mode estimate: well above the high-gain noise, below one photon
#: of the usual 6-15 keV beams.
DEFAULT_COMMON_MODE_THRESHOLD = 4.0
#: An ASIC (4096 pixels) needs at least this many dark high-gain pixels for a common-mode
#: estimate; otherwise it is left alone.
DEFAULT_COMMON_MODE_MIN_PIXELS = 1024


class CorrectedFrames(NamedTuple):
    """Corrected frames of one module-train.

    Attributes
    ----------
    data
        float32 ``(frames, 512, 128)``: corrected signal (keV with keV-relative gains).
    gain
        uint8 ``(frames, 512, 128)``: gain stage used, 0 high, 1 medium, 2 low.
    mask
        uint32 ``(frames, 512, 128)``: :class:`~pulsetrain.calibration.BadPixels` of the pixel
        in the gain stage and memory cell used (0 = good).
    """

    data: np.ndarray
    gain: np.ndarray
    mask: np.ndarray


def allocate_output(frames: int) -> CorrectedFrames:
    """Empty output buffers for ``frames`` frames, for the ``out=`` argument.

    Parameters
    ----------
    frames
        Number of frames the buffers hold.

    Returns
    -------
    CorrectedFrames
        Uninitialised C-contiguous arrays of the right dtypes.
    """
    shape = (int(frames), *MODULE_SHAPE)
    return CorrectedFrames(
        np.empty(shape, np.float32), np.empty(shape, np.uint8), np.empty(shape, np.uint32)
    )


def _check_out(out: Any, frames: int) -> CorrectedFrames:
    if out is None:
        return allocate_output(frames)
    if len(out) != 3:
        raise CalibrationError("out: must be (data, gain, mask) arrays")
    out = CorrectedFrames(*out)
    shape = (frames, *MODULE_SHAPE)
    for name, arr, dtype in zip(CorrectedFrames._fields, out, (np.float32, np.uint8, np.uint32)):
        if not isinstance(arr, np.ndarray):
            raise CalibrationError(f"out.{name}: must be a numpy array, got {type(arr).__name__}")
        if arr.shape != shape:
            raise CalibrationError(f"out.{name}: shape must be {shape}, got {arr.shape}")
        if arr.dtype != dtype:
            raise CalibrationError(f"out.{name}: dtype must be {np.dtype(dtype)}, got {arr.dtype}")
        if not arr.flags.c_contiguous or not arr.flags.writeable:
            raise CalibrationError(f"out.{name}: must be a writeable C-contiguous array")
    return out


def _prepare(raw: Any, cell_ids: Any, constants: AGIPDConstants) -> tuple[np.ndarray, np.ndarray]:
    """Validate raw frames and cell IDs; returns contiguous uint16 raw and int64 cells."""
    if not isinstance(constants, AGIPDConstants):
        raise CalibrationError(f"constants: must be AGIPDConstants, got {type(constants).__name__}")
    raw = np.asarray(raw)
    if raw.ndim != 4 or raw.shape[1] != 2 or raw.shape[2:] != MODULE_SHAPE:
        raise CalibrationError(
            f"raw: shape must be (frames, 2, {MODULE_SHAPE[0]}, {MODULE_SHAPE[1]}), got {raw.shape}"
        )
    if raw.dtype != np.uint16:
        raise CalibrationError(f"raw: dtype must be uint16, got {raw.dtype}")
    raw = np.ascontiguousarray(raw)
    cells = np.asarray(cell_ids)
    if cells.dtype.kind not in "ui":
        raise CalibrationError(f"cell_ids: dtype must be integer, got {cells.dtype}")
    if cells.ndim == 2 and cells.shape[1] == 1:  # as stored in files: (frames, 1)
        cells = cells[:, 0]
    if cells.shape != (raw.shape[0],):
        raise CalibrationError(
            f"cell_ids: shape must be ({raw.shape[0]},) for {raw.shape[0]} frames, "
            f"got {cells.shape}"
        )
    if cells.size:
        lo, hi = int(cells.min()), int(cells.max())
        if lo < 0 or hi >= constants.memory_cells:
            bad = lo if lo < 0 else hi
            raise CalibrationError(
                f"cell_ids: cellId {bad} is outside the constants, which cover "
                f"{constants.memory_cells} memory cells (0..{constants.memory_cells - 1})"
            )
    return raw, np.ascontiguousarray(cells, dtype=np.int64)


def _check_common_mode(threshold: float, min_pixels: int) -> tuple[np.float32, int]:
    if not np.isfinite(threshold):
        raise CalibrationError(f"common_mode_threshold: must be finite, got {threshold}")
    if min_pixels < 1 or min_pixels > ASIC_SIZE * ASIC_SIZE:
        raise CalibrationError(
            f"common_mode_min_pixels: must be 1..{ASIC_SIZE * ASIC_SIZE}, got {min_pixels}"
        )
    return np.float32(threshold), int(min_pixels)


def _check_force(name: str, value: float | None) -> np.float32:
    if value is None:
        return np.float32(0.0)
    if np.isnan(value):
        raise CalibrationError(f"{name}: must be a number, got NaN")
    return np.float32(value)


def correct_agipd(
    raw: np.ndarray,
    cell_ids: np.ndarray,
    constants: AGIPDConstants,
    *,
    force_mg_threshold: float | None = None,
    force_hg_threshold: float | None = None,
    common_mode: bool = False,
    common_mode_threshold: float = DEFAULT_COMMON_MODE_THRESHOLD,
    common_mode_min_pixels: int = DEFAULT_COMMON_MODE_MIN_PIXELS,
    bad_to_nan: bool = False,
    out: CorrectedFrames | tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> CorrectedFrames:
    """Correct the frames of one AGIPD module-train (numba, parallel).

    Per pixel, in this order:

    1. gain stage ``g`` from the digital value ``d``: 0 if ``d < thresholds[0, cell]``, else 1 if
       ``d < thresholds[1, cell]``, else 2;
    2. if ``force_mg_threshold`` is given: a pixel in stage 2 whose analog value minus the
       *medium-gain* offset is below it is moved to stage 1; then, if ``force_hg_threshold``
       is given, a pixel in stage 1 whose analog value minus the *high-gain* offset is below
       it is moved to stage 0 (so a pixel can move from 2 to 0).  Both in ADU;
    3. ``data = (analog - offset[g, cell]) * rel_gain[g, cell]`` in float32;
    4. with ``common_mode``: per frame and 64 x 64 ASIC, the median of the pixels in stage 0
       with mask 0 and a finite value below ``common_mode_threshold`` (output units) is
       subtracted from the stage-0 pixels of that ASIC, if at least
       ``common_mode_min_pixels`` pixels took part;
    5. ``mask = bad_pixels[g, cell]``; with ``bad_to_nan``, ``data`` is NaN where ``mask != 0``.

    Parameters
    ----------
    raw
        uint16 ``(frames, 2, 512, 128)``: plane 0 analog, plane 1 digital gain value.
    cell_ids
        Integer ``(frames,)`` (or ``(frames, 1)`` as stored in files): memory cell of each frame.
    constants
        Constants of this module.
    force_mg_threshold, force_hg_threshold
        Hard thresholds in ADU (``None``: off); see step 2.
    common_mode
        Apply the common-mode correction of step 4.
    common_mode_threshold
        Upper limit of a "dark" pixel value for the common-mode estimate, output units.
    common_mode_min_pixels
        Minimum number of dark high-gain pixels per ASIC (1 .. 4096).
    bad_to_nan
        Set data of masked pixels to NaN.
    out
        Optional ``(data, gain, mask)`` buffers to write into (see :func:`allocate_output`);
        must be C-contiguous with the right shapes and dtypes.

    Returns
    -------
    CorrectedFrames
        ``data`` float32, ``gain`` uint8, ``mask`` uint32, each ``(frames, 512, 128)``; the
        ``out`` buffers if given.

    Raises
    ------
    CalibrationError
        Wrong shapes or dtypes, a cellId outside the constants, or invalid options.
    """
    raw, cells = _prepare(raw, cell_ids, constants)
    result = _check_out(out, raw.shape[0])
    mg_thr = _check_force("force_mg_threshold", force_mg_threshold)
    hg_thr = _check_force("force_hg_threshold", force_hg_threshold)
    if common_mode:
        cm_thr, cm_min = _check_common_mode(common_mode_threshold, common_mode_min_pixels)
    order, group_starts = _cell_groups(cells)
    correct_kernel(
        raw,
        cells,
        order,
        group_starts,
        constants.thresholds,
        constants.offset,
        constants.rel_gain,
        constants.bad_pixels,
        force_mg_threshold is not None,
        mg_thr,
        force_hg_threshold is not None,
        hg_thr,
        bool(bad_to_nan),
        result.data,
        result.gain,
        result.mask,
    )
    if common_mode:
        common_mode_kernel(result.data, result.gain, result.mask, cm_thr, cm_min)
    return result


def _cell_groups(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames sorted by memory cell, and where each cell's group starts in that order (plus
    the end): the kernel corrects the frames of one cell together, reusing its constants."""
    order = np.argsort(cells, kind="stable")
    starts = np.flatnonzero(np.diff(cells[order])) + 1
    return order, np.concatenate(([0], starts, [cells.size])).astype(np.int64)


def _cell_selector(cells: np.ndarray) -> slice | np.ndarray:
    """A slice if the cells are consecutive and ascending (no copy when indexing), else them."""
    if cells.size and np.array_equal(cells, np.arange(cells[0], cells[0] + cells.size)):
        return slice(int(cells[0]), int(cells[0]) + cells.size)
    return cells


def median_float32(values: np.ndarray) -> np.float32:
    """Median of a non-empty float32 vector, rounded like the numba kernel does."""
    n = values.size
    k = n // 2
    part = np.partition(values, k)
    hi = part[k]
    if n % 2 == 1:
        return np.float32(hi)
    lo = part[:k].max()
    return np.float32(0.5 * (np.float64(lo) + np.float64(hi)))


def _common_mode_numpy(
    data: np.ndarray, gain: np.ndarray, mask: np.ndarray, threshold: np.float32, min_pixels: int
) -> None:
    frames, rows, cols = data.shape
    for f in range(frames):
        for r0 in range(0, rows, ASIC_SIZE):
            for x0 in range(0, cols, ASIC_SIZE):
                area = np.s_[f, r0 : r0 + ASIC_SIZE, x0 : x0 + ASIC_SIZE]
                d, high = data[area], gain[area] == 0
                dark = high & (mask[area] == 0) & np.isfinite(d) & (d < threshold)
                if np.count_nonzero(dark) >= min_pixels:
                    d[high] -= median_float32(d[dark])


def correct_agipd_numpy(
    raw: np.ndarray,
    cell_ids: np.ndarray,
    constants: AGIPDConstants,
    *,
    force_mg_threshold: float | None = None,
    force_hg_threshold: float | None = None,
    common_mode: bool = False,
    common_mode_threshold: float = DEFAULT_COMMON_MODE_THRESHOLD,
    common_mode_min_pixels: int = DEFAULT_COMMON_MODE_MIN_PIXELS,
    bad_to_nan: bool = False,
    out: CorrectedFrames | tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> CorrectedFrames:
    """Plain-numpy reference of :func:`correct_agipd`: same signature, same results.

    Written for clarity (nested ``np.where`` over the gain stages); the tests compare the numba
    kernel against it.  See :func:`correct_agipd` for the parameters.
    """
    raw, cells = _prepare(raw, cell_ids, constants)
    result = _check_out(out, raw.shape[0])
    mg_thr = _check_force("force_mg_threshold", force_mg_threshold)
    hg_thr = _check_force("force_hg_threshold", force_hg_threshold)
    if common_mode:
        cm_thr, cm_min = _check_common_mode(common_mode_threshold, common_mode_min_pixels)
    sel = _cell_selector(cells)
    analog = raw[:, 0].astype(np.float32)
    digital = raw[:, 1].astype(np.float32)
    thr, off, rg, bad = (
        constants.thresholds,
        constants.offset,
        constants.rel_gain,
        constants.bad_pixels,
    )

    g = np.where(
        digital < thr[0, sel],
        np.uint8(0),
        np.where(digital < thr[1, sel], np.uint8(1), np.uint8(2)),
    )
    if force_mg_threshold is not None:
        g[(g == 2) & (analog - off[1, sel] < mg_thr)] = 1
    if force_hg_threshold is not None:
        g[(g == 1) & (analog - off[0, sel] < hg_thr)] = 0

    def pick(planes: np.ndarray) -> np.ndarray:
        return np.where(g == 0, planes[0, sel], np.where(g == 1, planes[1, sel], planes[2, sel]))

    with np.errstate(invalid="ignore", over="ignore"):  # IEEE results, silent like the kernel
        np.subtract(analog, pick(off), out=result.data)
        np.multiply(result.data, pick(rg), out=result.data)
    result.mask[...] = pick(bad)
    result.gain[...] = g
    if bad_to_nan:
        result.data[result.mask != 0] = np.nan
    if common_mode:
        _common_mode_numpy(result.data, result.gain, result.mask, cm_thr, cm_min)
    return result


#: Per-frame keys copied unchanged from a raw module source to its corrected output.
CARRIED_KEYS = ("image.cellId", "image.pulseId", "image.trainId")


def correct_module_data(
    source_data: Mapping[str, Any], constants: AGIPDConstants, **options: Any
) -> dict[str, Any]:
    """Correct the ``data[source]`` dict of one raw module into a corrected one.

    Parameters
    ----------
    source_data
        Raw module keys: ``image.data`` (frames, 2, 512, 128) uint16 and ``image.cellId``;
        ``image.pulseId`` and ``image.trainId`` are carried through if present.
    constants
        Constants of this module.
    **options
        Keyword options of :func:`correct_agipd` (including ``out``).

    Returns
    -------
    dict
        ``image.data`` float32, ``image.gain`` uint8, ``image.mask`` uint32 and the carried keys
        (flattened to ``(frames,)``).

    Raises
    ------
    CalibrationError
        If ``image.data`` or ``image.cellId`` is missing, or as :func:`correct_agipd`.
    """
    for key in ("image.data", "image.cellId"):
        if key not in source_data:
            raise CalibrationError(f"module data has no {key!r}")
    corrected = correct_agipd(
        source_data["image.data"], source_data["image.cellId"], constants, **options
    )
    result: dict[str, Any] = {
        "image.data": corrected.data,
        "image.gain": corrected.gain,
        "image.mask": corrected.mask,
    }
    for key in CARRIED_KEYS:
        if key in source_data:
            value = np.asarray(source_data[key])
            result[key] = value.reshape(value.shape[0]) if value.ndim == 2 else value
    return result
