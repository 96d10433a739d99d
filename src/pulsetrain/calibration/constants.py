"""Calibration constants of one AGIPD module, in the layout the correction kernels read.

Every array is indexed ``[gain stage, memory cell, slow scan (512), fast scan (128)]``; gain stage
0 is high gain (HG), 1 medium (MG), 2 low (LG).  Thresholds have two planes, the HG/MG and the
MG/LG boundary on the digital gain value.  See ``docs/calibration.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pulsetrain.errors import CalibrationError

__all__ = ["MODULE_SHAPE", "N_GAIN_STAGES", "AGIPDConstants"]

log = logging.getLogger(__name__)

#: Pixels of one AGIPD module: (slow scan, fast scan).
MODULE_SHAPE = (512, 128)
#: Adaptive gain stages: 0 high, 1 medium, 2 low.
N_GAIN_STAGES = 3


def _as_float32(name: str, array: object, planes: int, cells: int | None) -> np.ndarray:
    arr = np.asarray(array)
    if arr.dtype.kind != "f":
        raise CalibrationError(f"{name}: dtype must be floating point, got {arr.dtype}")
    _check_shape(name, arr, planes, cells)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_shape(name: str, arr: np.ndarray, planes: int, cells: int | None) -> None:
    if arr.ndim != 4 or arr.shape[0] != planes or arr.shape[2:] != MODULE_SHAPE:
        want = f"({planes}, cells, {MODULE_SHAPE[0]}, {MODULE_SHAPE[1]})"
        raise CalibrationError(f"{name}: shape must be {want}, got {arr.shape}")
    if cells is not None and arr.shape[1] != cells:
        raise CalibrationError(f"{name}: has {arr.shape[1]} memory cells but offset has {cells}")


@dataclass(eq=False)
class AGIPDConstants:
    """Correction constants for ONE AGIPD module.

    Parameters
    ----------
    offset
        Dark offset in ADU, ``(3, cells, 512, 128)``, cast to float32.
    rel_gain
        Relative gain, ``(3, cells, 512, 128)``, cast to float32: the factor that turns an
        offset-subtracted ADU value of that stage into the output unit (keV when the constants
        come from ``1 / slope[ADU/keV]``): ``corrected = (analog - offset[g, c]) * rel_gain[g, c]``.
    thresholds
        Gain thresholds on the digital value, ``(2, cells, 512, 128)``, cast to float32:
        stage 0 if ``digital < thresholds[0]``, else 1 if ``digital < thresholds[1]``, else 2.
    bad_pixels
        :class:`~pulsetrain.calibration.BadPixels` bit field, ``(3, cells, 512, 128)``, any
        non-negative integer dtype, cast to uint32.
    noise
        Optional dark noise in ADU, ``(3, cells, 512, 128)``, cast to float32.

    Raises
    ------
    CalibrationError
        If a shape or dtype is wrong, or the arrays disagree about the number of memory cells.

    Notes
    -----
    All arrays are stored C-contiguous, so the kernels see the same array types every call (one
    numba specialisation).
    """

    offset: np.ndarray
    rel_gain: np.ndarray
    thresholds: np.ndarray
    bad_pixels: np.ndarray
    noise: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.offset = _as_float32("offset", self.offset, N_GAIN_STAGES, None)
        cells = self.offset.shape[1]
        if cells == 0:
            raise CalibrationError("offset: has no memory cells")
        self.rel_gain = _as_float32("rel_gain", self.rel_gain, N_GAIN_STAGES, cells)
        self.thresholds = _as_float32("thresholds", self.thresholds, N_GAIN_STAGES - 1, cells)
        if self.noise is not None:
            self.noise = _as_float32("noise", self.noise, N_GAIN_STAGES, cells)
        bad = np.asarray(self.bad_pixels)
        if bad.dtype.kind not in "ui":
            raise CalibrationError(f"bad_pixels: dtype must be an integer type, got {bad.dtype}")
        _check_shape("bad_pixels", bad, N_GAIN_STAGES, cells)
        if bad.dtype.kind == "i" and bad.size and bad.min() < 0:
            raise CalibrationError("bad_pixels: contains negative values")
        if bad.dtype.itemsize > 4 and bad.size and bad.max() > np.iinfo(np.uint32).max:
            raise CalibrationError("bad_pixels: values do not fit in uint32")
        self.bad_pixels = np.ascontiguousarray(bad, dtype=np.uint32)

    @property
    def memory_cells(self) -> int:
        """Number of memory cells the constants cover (valid cellIds are ``0 .. n-1``)."""
        return int(self.offset.shape[1])

    @property
    def nbytes(self) -> int:
        """Memory held by the constant arrays, in bytes."""
        arrays = [self.offset, self.rel_gain, self.thresholds, self.bad_pixels, self.noise]
        return sum(a.nbytes for a in arrays if a is not None)

    def __repr__(self) -> str:
        extra = ", noise" if self.noise is not None else ""
        return f"AGIPDConstants(memory_cells={self.memory_cells}{extra})"
