"""Detectors whose raw word carries the gain stage in its top bits: LPD-1M and JUNGFRAU.

Both store one uint16 word per pixel: the ADC value in the low bits (12 for LPD, 14 for
JUNGFRAU) and a gain code above them (LPD: 0 high, 1 medium, 2 low; JUNGFRAU: 0 = G0, 1 = G1,
3 = G2).  Their calibration is the same procedure with different numbers, so it lives here
once and :mod:`pulsetrain.detectors.lpd` and :mod:`pulsetrain.detectors.jungfrau` describe
their detector with a :class:`GainBitsLayout`:

* **decoding** - :func:`decode`: ADC value and gain stage (an unknown code is flagged
  ``WRONG_GAIN_VALUE`` by the correction);
* **dark characterisation** - :class:`ForcedGainDark`: one dark run per gain stage, each with
  the gain forced to that stage, gives offset and noise per memory cell, stage and pixel, and
  bad pixels (offset or noise out of range, no noise, gain stuck in another stage);
* **correction** - :func:`correct` (numba, fused, one pass per pixel, parallel) and its plain
  numpy reference :func:`correct_numpy`, with the same bits:
  ``data = (adc - offset[g, cell]) * factor[g, cell]``, ``mask = bad_pixels[g, cell]``,
  where :func:`kernel_tables` builds ``offset``, ``factor`` and ``bad_pixels`` once from the
  constants and the correction steps chosen.

Constants are indexed ``[gain stage, memory cell, slow scan, fast scan]`` as for AGIPD.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from numba import njit, prange

from pulsetrain.calibration.badpixels import BadPixels
from pulsetrain.calibration.kernels import accumulate_kernel
from pulsetrain.detectors.base import ConstantType, DarkRun, Detector, RawCodec
from pulsetrain.errors import CalibrationError

__all__ = [
    "STEPS",
    "CorrectedFrames",
    "ForcedGainDark",
    "GainBitsDetector",
    "GainBitsLayout",
    "GainWordCodec",
    "KernelTables",
    "StageConstants",
    "correct",
    "correct_numpy",
    "decode",
    "kernel_tables",
]

log = logging.getLogger(__name__)

#: Gain stages (0 high / G0, 1 medium / G1, 2 low / G2).
N_STAGES = 3
#: Correction steps these detectors know, in the order they act.
STEPS = ("offset", "gainstage", "relgain", "flatfield", "badpixels")
#: Pixels of one parallel work item (a multiple of every module's row length here).
CHUNK = 4096
_INVALID = np.uint8(255)
_WRONG_GAIN = np.uint32(BadPixels.WRONG_GAIN_VALUE)
_LOW_BYTES = np.uint64(0x0202020202020202)  # stage 2 in any byte of a uint64 word
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class GainBitsLayout:
    """How one detector type stores its raw words and names its gain stages.

    Attributes
    ----------
    name : str
        Detector type, ``"LPD"`` or ``"JUNGFRAU"``.
    module_shape : tuple of int
        ``(slow scan, fast scan)`` pixels of one module.
    adc_bits : int
        Bits of the ADC value; the gain code sits in the bits above.
    stage_codes : tuple of int
        Gain code of stages 0, 1, 2 in the raw word.
    stage_names : tuple of str
        The detector's own names of the stages.
    block_shape : tuple of int
        Pixels over which dark statistics are compared (one ASIC or tile).
    """

    name: str
    module_shape: tuple[int, int]
    adc_bits: int
    stage_codes: tuple[int, int, int]
    stage_names: tuple[str, str, str]
    block_shape: tuple[int, int]
    code_to_stage: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lut = np.full(1 << (16 - self.adc_bits), _INVALID, np.uint8)
        for stage, code in enumerate(self.stage_codes):
            lut[code] = stage
        lut.setflags(write=False)
        object.__setattr__(self, "code_to_stage", lut)

    @property
    def adc_mask(self) -> int:
        """Mask of the ADC bits of a raw word."""
        return (1 << self.adc_bits) - 1

    @property
    def pixels(self) -> int:
        """Pixels of one module."""
        return self.module_shape[0] * self.module_shape[1]

    def stage(self, name: str | int) -> int:
        """Gain stage of a stage name (case-insensitive) or index 0, 1, 2."""
        if isinstance(name, (int, np.integer)) and 0 <= int(name) < N_STAGES:
            return int(name)
        text = str(name).upper()
        if text in ("0", "1", "2"):
            return int(text)
        if text in self.stage_names:
            return self.stage_names.index(text)
        raise CalibrationError(
            f"{self.name} gain stage must be one of {', '.join(self.stage_names)} or 0, 1, 2, "
            f"got {name!r}"
        )


def decode(layout: GainBitsLayout, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ADC values and gain stages of raw words.

    Parameters
    ----------
    layout : GainBitsLayout
        The detector.
    raw : numpy.ndarray
        uint16 raw words, any shape.

    Returns
    -------
    adc : numpy.ndarray
        uint16, the ADC bits.
    stage : numpy.ndarray
        uint8 gain stage 0, 1, 2, or 255 for a code that is no stage.
    """
    raw = np.asarray(raw)
    return raw & np.uint16(layout.adc_mask), layout.code_to_stage[raw >> layout.adc_bits]


@dataclass(eq=False)
class StageConstants:
    """Correction constants of one module, in the kernel's units.

    Parameters
    ----------
    offset : numpy.ndarray, optional
        Dark offset [ADU], ``(3, cells, ss, fs)``.
    noise : numpy.ndarray, optional
        Dark noise [ADU rms], ``(3, cells, ss, fs)``.
    gain : numpy.ndarray, optional
        Factor from offset-subtracted ADU of that stage to the output unit (keV per ADU),
        ``(3, cells, ss, fs)``.
    flat_field : numpy.ndarray, optional
        Flat-field factor per cell and pixel, ``(cells, ss, fs)`` (all stages).
    bad_pixels : numpy.ndarray, optional
        :class:`~pulsetrain.calibration.BadPixels` bit field, ``(3, cells, ss, fs)``.

    All arrays are cast to C-contiguous float32 (uint32 for bad pixels) and must agree on the
    number of memory cells and the module shape.
    """

    offset: np.ndarray | None = None
    noise: np.ndarray | None = None
    gain: np.ndarray | None = None
    flat_field: np.ndarray | None = None
    bad_pixels: np.ndarray | None = None

    def __post_init__(self) -> None:
        shape = None
        for name in ("offset", "noise", "gain", "flat_field", "bad_pixels"):
            value = getattr(self, name)
            if value is None:
                continue
            arr = np.asarray(value)
            want_ndim = 3 if name == "flat_field" else 4
            if arr.ndim != want_ndim or (want_ndim == 4 and arr.shape[0] != N_STAGES):
                lead = "(cells, ss, fs)" if name == "flat_field" else "(3, cells, ss, fs)"
                raise CalibrationError(f"{name}: shape must be {lead}, got {arr.shape}")
            cells_shape = arr.shape[-3:]
            if shape is not None and cells_shape != shape:
                raise CalibrationError(
                    f"{name}: (cells, ss, fs) {cells_shape} differs from the others' {shape}"
                )
            shape = cells_shape
            if name == "bad_pixels":
                if arr.dtype.kind not in "ui":
                    raise CalibrationError(f"bad_pixels: dtype must be integer, got {arr.dtype}")
                arr = np.ascontiguousarray(arr, dtype=np.uint32)
            else:
                if arr.dtype.kind != "f":
                    raise CalibrationError(f"{name}: dtype must be floating, got {arr.dtype}")
                arr = np.ascontiguousarray(arr, dtype=np.float32)
            setattr(self, name, arr)
        if shape is None:
            raise CalibrationError("constants: none given")
        if shape[0] == 0:
            raise CalibrationError("constants: no memory cells")
        self._shape = shape

    @property
    def memory_cells(self) -> int:
        """Number of memory cells covered."""
        return int(self._shape[0])

    @property
    def module_shape(self) -> tuple[int, int]:
        """``(ss, fs)`` of the constants."""
        return (int(self._shape[1]), int(self._shape[2]))

    def available(self) -> set[str]:
        """Names of the constants present."""
        names = ("offset", "noise", "gain", "flat_field", "bad_pixels")
        return {n for n in names if getattr(self, n) is not None}


#: Which constant each step needs.
STEP_NEEDS = {
    "offset": "offset",
    "relgain": "gain",
    "flatfield": "flat_field",
    "badpixels": "bad_pixels",
}


class KernelTables(NamedTuple):
    """What the kernel reads per stage, cell and pixel, built by :func:`kernel_tables`."""

    offset: np.ndarray  # float32 (3, cells, pixels)
    factor: np.ndarray  # float32 (3, cells, pixels)
    bad_pixels: np.ndarray  # uint32 (3, cells, pixels)
    use_stage: bool


def check_steps(steps: Iterable[str], known: Sequence[str] = STEPS) -> frozenset[str]:
    """Validate correction step names; returns them as a frozenset."""
    steps = frozenset(str(s).lower() for s in steps)
    unknown = sorted(steps - set(known))
    if unknown:
        raise CalibrationError(
            f"unknown correction step(s) {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    return steps


def kernel_tables(constants: StageConstants, steps: Iterable[str]) -> KernelTables:
    """The kernel's tables for the chosen steps (computed once per constants and steps).

    ``offset`` is zero without the ``offset`` step; ``factor`` is ``gain * flat_field`` with
    the steps ``relgain`` / ``flatfield`` (each 1 when off); ``bad_pixels`` is zero without
    ``badpixels``.  Without ``gainstage`` every pixel uses stage 0's constants.

    Raises
    ------
    CalibrationError
        If a step is unknown or its constant is missing (the message names them).
    """
    steps = check_steps(steps)
    missing = sorted(STEP_NEEDS[s] for s in steps if s in STEP_NEEDS)
    missing = [n for n in missing if getattr(constants, n) is None]
    if missing:
        raise CalibrationError(
            f"correction steps {', '.join(sorted(steps))} need constants that are missing: "
            f"{', '.join(missing)}"
        )
    cells, ny, nx = constants.memory_cells, *constants.module_shape
    full = (N_STAGES, cells, ny * nx)
    if "offset" in steps:
        offset = constants.offset.reshape(full)
    else:
        offset = np.zeros(full, np.float32)
    flat = constants.flat_field.reshape(1, cells, ny * nx) if "flatfield" in steps else None
    if "relgain" in steps and flat is not None:
        factor = np.multiply(constants.gain.reshape(full), flat)
    elif "relgain" in steps:
        factor = constants.gain.reshape(full)  # read only, as the other tables
    elif flat is not None:
        factor = np.ascontiguousarray(np.broadcast_to(flat, full))
    else:
        factor = np.ones(full, np.float32)
    if "badpixels" in steps:
        bad = constants.bad_pixels.reshape(full)
    else:
        bad = np.zeros(full, np.uint32)
    return KernelTables(offset, factor, bad, "gainstage" in steps)


class CorrectedFrames(NamedTuple):
    """Corrected frames of one module: data float32, gain uint8, mask uint32, ``(n, ss, fs)``."""

    data: np.ndarray
    gain: np.ndarray
    mask: np.ndarray


def allocate_output(frames: int, module_shape: tuple[int, int]) -> CorrectedFrames:
    """Uninitialised output buffers for ``frames`` frames."""
    shape = (int(frames), *module_shape)
    return CorrectedFrames(
        np.empty(shape, np.float32), np.empty(shape, np.uint8), np.empty(shape, np.uint32)
    )


@njit(inline="always")
def _stage0(r, o0, k0, b0, bad_to_nan, od, og, om):  # pragma: no cover - compiled
    """Words all with gain code 0: stage 0's tables only; vectorises."""
    nan = np.float32(np.nan)
    for x in range(r.shape[0]):
        v = (np.float32(r[x]) - o0[x]) * k0[x]
        m = b0[x]
        if bad_to_nan:
            v = nan if m != 0 else v
        od[x] = v
        og[x] = 0
        om[x] = m


@njit(inline="always")
def _mixed(
    r, shift, c1, c2, use_stage, o0, o1, k0, k1, b0, b1, bad_to_nan, od, og, om
):  # pragma: no cover - compiled  # fmt: skip
    """Any codes: stage of each word, data and mask as far as stage 1 (branch-free selects).

    Words in stage 2 (or with a code that is no stage, treated as stage 2 and flagged) get
    their stage here but data and mask from stage 1's tables; :func:`_fix_low` redoes them.
    Returns how many there are.  Without ``use_stage`` stage 0's tables serve every word.
    """
    nan = np.float32(np.nan)
    adc_mask = np.uint16((1 << shift) - 1)
    n_low = 0
    for x in range(r.shape[0]):
        w = r[x]
        code = w >> shift
        invalid = (code != 0) & (code != c1) & (code != c2)
        medium = code != 0
        low = (code == c2) | invalid
        sel = medium & use_stage
        o = o1[x] if sel else o0[x]
        k = k1[x] if sel else k0[x]
        m = b1[x] if sel else b0[x]
        m = m | (_WRONG_GAIN if invalid else np.uint32(0))
        v = (np.float32(w & adc_mask) - o) * k
        if bad_to_nan:
            v = nan if m != 0 else v
        od[x] = v
        og[x] = np.uint8(medium) + np.uint8(low)
        om[x] = m
        n_low += low & use_stage
    return n_low


@njit(inline="always")
def _fix_low(r, shift, c1, c2, o2, k2, b2, bad_to_nan, od, og, om):  # pragma: no cover
    """Redo the stage-2 words with stage 2's tables, testing the stage bytes 8 at a time."""
    nan = np.float32(np.nan)
    adc_mask = np.uint16((1 << shift) - 1)
    words = og.view(np.uint64)
    for q in range(words.shape[0]):
        if not words[q] & _LOW_BYTES:
            continue
        for x in range(8 * q, 8 * q + 8):
            if og[x] == 2:
                w = r[x]
                code = w >> shift
                m = b2[x]
                if (code != 0) & (code != c1) & (code != c2):
                    m |= _WRONG_GAIN
                v = (np.float32(w & adc_mask) - o2[x]) * k2[x]
                if bad_to_nan:
                    v = nan if m != 0 else v
                od[x] = v
                om[x] = m


@njit(parallel=True, cache=True, nogil=True)
def correct_kernel(
    raw, cells, order, group_starts, shift, c1, c2, use_stage, off, fac, bad, bad_to_nan, data,
    gain, mask,
):  # pragma: no cover - compiled  # fmt: skip
    """Stage, offset, factor and mask of every pixel, one pass.

    ``raw`` (frames, pixels) uint16; tables (3, cells, pixels); ``c1``/``c2`` the gain codes
    of stages 1 and 2 (stage 0's is 0).  One parallel item is a chunk of :data:`CHUNK` pixels
    of all frames of one memory cell (``order`` / ``group_starts`` as in the AGIPD kernel), so
    a cell's tables are read once per chunk.  A chunk whose words all have gain code 0 (the
    usual case) reads stage 0's tables only; other chunks select between stages 0 and 1
    without branches and then fix the few stage-2 words.
    """
    n_pixels = raw.shape[1]
    n_chunks = n_pixels // CHUNK
    n_groups = group_starts.shape[0] - 1
    for item in prange(n_groups * n_chunks):
        grp = item // n_chunks
        s = (item - grp * n_chunks) * CHUNK
        e = s + CHUNK
        for p in range(group_starts[grp], group_starts[grp + 1]):
            f = order[p]
            c = cells[f]
            r = raw[f, s:e]
            od = data[f, s:e]
            og = gain[f, s:e]
            om = mask[f, s:e]
            high = np.uint16(0)
            for x in range(CHUNK):
                high |= r[x] >> shift
            if high == 0:
                _stage0(r, off[0, c, s:e], fac[0, c, s:e], bad[0, c, s:e], bad_to_nan, od, og, om)
                continue
            n_low = _mixed(
                r, shift, c1, c2, use_stage, off[0, c, s:e], off[1, c, s:e], fac[0, c, s:e],
                fac[1, c, s:e], bad[0, c, s:e], bad[1, c, s:e], bad_to_nan, od, og, om,
            )  # fmt: skip
            if n_low:
                _fix_low(
                    r, shift, c1, c2, off[2, c, s:e], fac[2, c, s:e], bad[2, c, s:e],
                    bad_to_nan, od, og, om,
                )  # fmt: skip


def _cell_groups(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(cells, kind="stable")
    starts = np.flatnonzero(np.diff(cells[order])) + 1
    return order, np.concatenate(([0], starts, [cells.size])).astype(np.int64)


def _prepare(
    layout: GainBitsLayout, raw: Any, cell_ids: Any, tables: KernelTables, out: Any
) -> tuple[np.ndarray, np.ndarray, CorrectedFrames]:
    raw = np.asarray(raw)
    ny, nx = layout.module_shape
    if raw.dtype != np.uint16:
        raise CalibrationError(f"raw: dtype must be uint16, got {raw.dtype}")
    if (
        raw.shape[-2:] != (ny, nx)
        or raw.ndim not in (3, 4)
        or (raw.ndim == 4 and raw.shape[1] != 1)
    ):
        raise CalibrationError(
            f"raw: {layout.name} frames must be (frames, {ny}, {nx}) or (frames, 1, {ny}, {nx}), "
            f"got {raw.shape}"
        )
    frames = raw.shape[0]
    raw = np.ascontiguousarray(raw).reshape(frames, ny * nx)
    cells = np.asarray(cell_ids)
    if cells.ndim == 2 and cells.shape[1] == 1:
        cells = cells[:, 0]
    if cells.dtype.kind not in "ui" or cells.shape != (frames,):
        raise CalibrationError(
            f"cell_ids: must be integers of shape ({frames},), got {cells.dtype} {cells.shape}"
        )
    n_cells = tables.offset.shape[1]
    if tables.offset.shape[2] != ny * nx:
        raise CalibrationError(
            f"constants: module has {tables.offset.shape[2]} pixels, {layout.name} has {ny * nx}"
        )
    if cells.size and int(cells.max()) >= n_cells:
        raise CalibrationError(
            f"cell_ids: cell {int(cells.max())} is outside the constants, which cover "
            f"{n_cells} memory cells (0..{n_cells - 1})"
        )
    cells = np.ascontiguousarray(cells, dtype=np.int64)
    if out is None:
        out = allocate_output(frames, layout.module_shape)
    else:
        out = CorrectedFrames(*out)
        for name, arr, dtype in zip(out._fields, out, (np.float32, np.uint8, np.uint32)):
            if (
                not isinstance(arr, np.ndarray)
                or arr.shape != (frames, ny, nx)
                or arr.dtype != dtype
                or not arr.flags.c_contiguous
                or not arr.flags.writeable
            ):
                raise CalibrationError(
                    f"out.{name}: must be a writeable C-contiguous {np.dtype(dtype)} array of "
                    f"shape {(frames, ny, nx)}"
                )
    return raw, cells, out


def correct(
    layout: GainBitsLayout,
    raw: np.ndarray,
    cell_ids: np.ndarray,
    tables: KernelTables,
    *,
    bad_to_nan: bool = False,
    out: CorrectedFrames | tuple | None = None,
) -> CorrectedFrames:
    """Correct the frames of one module (numba, parallel, one pass).

    Per pixel: stage ``g`` from the gain code (stage 0 for all without ``gainstage``),
    ``data = (adc - offset[g, cell]) * factor[g, cell]`` in float32,
    ``mask = bad_pixels[g, cell]`` (plus ``WRONG_GAIN_VALUE`` for a code that is no stage,
    which is then treated as the lowest stage), ``gain`` = the stage read from the word;
    with ``bad_to_nan`` masked pixels are NaN.

    Parameters
    ----------
    layout : GainBitsLayout
        The detector.
    raw : numpy.ndarray
        uint16 ``(frames, ss, fs)`` or ``(frames, 1, ss, fs)`` raw words.
    cell_ids : numpy.ndarray
        Integer ``(frames,)`` (or ``(frames, 1)``) memory cell of each frame.
    tables : KernelTables
        From :func:`kernel_tables`.
    bad_to_nan : bool
        Set masked pixels to NaN.
    out : CorrectedFrames, optional
        Buffers to fill.

    Returns
    -------
    CorrectedFrames
    """
    raw, cells, out = _prepare(layout, raw, cell_ids, tables, out)
    n = raw.shape[0]
    order, starts = _cell_groups(cells)
    correct_kernel(
        raw,
        cells,
        order,
        starts,
        np.int64(layout.adc_bits),
        np.uint16(layout.stage_codes[1]),
        np.uint16(layout.stage_codes[2]),
        bool(tables.use_stage),
        tables.offset,
        tables.factor,
        tables.bad_pixels,
        bool(bad_to_nan),
        out.data.reshape(n, -1),
        out.gain.reshape(n, -1),
        out.mask.reshape(n, -1),
    )
    return out


def correct_numpy(
    layout: GainBitsLayout,
    raw: np.ndarray,
    cell_ids: np.ndarray,
    tables: KernelTables,
    *,
    bad_to_nan: bool = False,
    out: CorrectedFrames | tuple | None = None,
) -> CorrectedFrames:
    """Plain-numpy reference of :func:`correct`: same arguments, same bits."""
    raw, cells, out = _prepare(layout, raw, cell_ids, tables, out)
    n = raw.shape[0]
    adc, stage = decode(layout, raw)
    invalid = stage == _INVALID
    stage = np.where(invalid, np.uint8(2), stage)
    k = stage.astype(np.intp) if tables.use_stage else np.zeros(stage.shape, np.intp)
    pix = np.arange(raw.shape[1])[None, :]
    c = cells[:, None]
    off = tables.offset[k, c, pix]
    fac = tables.factor[k, c, pix]
    m = tables.bad_pixels[k, c, pix]
    m[invalid] |= _WRONG_GAIN
    with np.errstate(invalid="ignore", over="ignore"):
        v = (adc.astype(np.float32) - off) * fac
    if bad_to_nan:
        v[m != 0] = np.nan
    out.data.reshape(n, -1)[...] = v
    out.gain.reshape(n, -1)[...] = stage
    out.mask.reshape(n, -1)[...] = m
    return out


# -- dark characterisation -------------------------------------------------------------------


class _StageAccumulator:
    """Streaming per-cell mean and variance of the ADC value, and wrong-gain counts."""

    def __init__(self, layout: GainBitsLayout, stage: int, memory_cells: int) -> None:
        self.layout = layout
        self.code = layout.stage_codes[stage]
        self.memory_cells = int(memory_cells)
        ny, nx = layout.module_shape
        shape = (self.memory_cells, 1, ny, nx)
        self._reference = np.zeros(shape, np.uint16)
        self._sum1 = np.zeros(shape, np.float64)
        self._sum2 = np.zeros(shape, np.float64)
        self.wrong_gain = np.zeros((self.memory_cells, ny, nx), np.int32)
        self.frames_per_cell = np.zeros(self.memory_cells, np.int64)

    def add(self, raw: np.ndarray, cell_ids: np.ndarray) -> None:
        ny, nx = self.layout.module_shape
        raw = np.asarray(raw)
        if raw.dtype != np.uint16 or raw.shape[-2:] != (ny, nx):
            raise CalibrationError(
                f"dark chunk: {self.layout.name} frames must be uint16 (n, {ny}, {nx}) or "
                f"(n, 1, {ny}, {nx}), got {raw.dtype} {raw.shape}"
            )
        n = raw.shape[0]
        raw = raw.reshape(n, ny, nx)
        cells = np.asarray(cell_ids).reshape(-1)
        if cells.dtype.kind not in "ui" or cells.shape != (n,):
            raise CalibrationError(f"dark chunk: cell_ids must be {n} integers, got {cells.shape}")
        if not n:
            return
        if int(cells.max()) >= self.memory_cells:
            raise CalibrationError(
                f"dark chunk: cellId {int(cells.max())} outside 0..{self.memory_cells - 1}"
            )
        cells = np.ascontiguousarray(cells, dtype=np.int64)
        adc = (raw & np.uint16(self.layout.adc_mask))[:, None]
        unseen = self.frames_per_cell == 0
        if unseen.any():
            present, first = np.unique(cells, return_index=True)
            new = unseen[present]
            self._reference[present[new]] = adc[first[new]]
        accumulate_kernel(adc, cells, self._reference, self._sum1, self._sum2)
        wrong = (raw >> self.layout.adc_bits) != self.code
        for c in np.unique(cells):
            self.wrong_gain[c] += wrong[cells == c].sum(axis=0, dtype=np.int32)
        np.add.at(self.frames_per_cell, cells, 1)

    def statistics(self) -> tuple[np.ndarray, np.ndarray]:
        n = self.frames_per_cell.astype(np.float64)[:, None, None, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = self._sum1 / n
            mean = self._reference + shift
            var = (self._sum2 - self._sum1 * shift) / (n - 1)
        var = np.maximum(var, 0.0, where=np.isfinite(var), out=var)
        few = self.frames_per_cell < 2
        mean[few] = np.nan
        var[few] = np.nan
        return mean[:, 0].astype(np.float32), np.sqrt(var[:, 0]).astype(np.float32)


def _blocks(values: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """(cells, ss, fs) -> (cells, n_blocks, pixels per block) (copy)."""
    c, ny, nx = values.shape
    by, bx = block
    v = values.reshape(c, ny // by, by, nx // bx, bx).transpose(0, 1, 3, 2, 4)
    return v.reshape(c, (ny // by) * (nx // bx), by * bx)


def _unblocks(values: np.ndarray, shape: tuple[int, int, int], block: tuple[int, int]):
    """(cells, n_blocks) -> (cells, ss, fs) broadcast."""
    c, ny, nx = shape
    by, bx = block
    v = values.reshape(c, ny // by, 1, nx // bx, 1)
    return np.broadcast_to(v, (c, ny // by, by, nx // bx, bx)).reshape(shape)


def _nanmedian_last(a: np.ndarray) -> np.ndarray:
    """``np.nanmedian(a, axis=-1)`` (NaN where a row has no number), in one sort.

    numpy's nanmedian takes the median of each row with a NaN on its own, one call per row;
    sorting puts the NaNs last, so the median is read at the middle of each row's numbers.
    """
    s = np.sort(a, axis=-1)
    n = np.count_nonzero(~np.isnan(s), axis=-1)
    lo = np.maximum((n - 1) // 2, 0)[..., None]
    hi = np.minimum(n // 2, a.shape[-1] - 1)[..., None]
    med = (np.take_along_axis(s, lo, -1) + np.take_along_axis(s, hi, -1))[..., 0] / 2
    return np.where(n > 0, med, np.nan).astype(med.dtype, copy=False)


def _robust_deviation(values: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """(value - median) / (1.4826 MAD) per (cell, block), over finite values."""
    b = _blocks(values, block)
    with np.errstate(all="ignore"):
        clean = np.where(np.isfinite(b), b, np.nan)
        med = _nanmedian_last(clean)
        mad = _nanmedian_last(np.abs(clean - med[..., None]))
        sigma = MAD_TO_SIGMA * mad
        return (values - _unblocks(med, values.shape, block)) / _unblocks(
            sigma, values.shape, block
        )


@dataclass
class DarkConstants:
    """Result of a dark characterisation: ``(3, cells, ss, fs)`` offset, noise, bad pixels.

    ``frames_per_cell`` is int64 ``(3, cells)``.
    """

    offset: np.ndarray
    noise: np.ndarray
    bad_pixels: np.ndarray
    frames_per_cell: np.ndarray

    @property
    def memory_cells(self) -> int:
        """Number of memory cells."""
        return int(self.offset.shape[1])


class ForcedGainDark:
    """Dark characterisation from one forced-gain dark run per stage.

    Feed each stage's frames with :meth:`add` (in any chunks), then :meth:`result`.

    Bad-pixel rules, per gain stage and memory cell:

    * ``OFFSET_OUT_OF_THRESHOLD``: offset more than ``offset_sigma`` robust sigmas (1.4826 MAD)
      from the median of its block (the layout's ASIC or tile);
    * ``NOISE_OUT_OF_THRESHOLD``: log of the noise more than ``noise_sigma`` robust sigmas
      above its block's median, or noise below ``min_noise_fraction`` of the module's median
      (no noise: a dead pixel);
    * ``WRONG_GAIN_VALUE``: the gain code was not the forced stage's in more than
      ``wrong_gain_fraction`` of the frames (gain stuck in another stage);
    * ``NO_DARK_DATA``: fewer than two frames of that cell; ``OFFSET_NOISE_EVAL_ERROR``: not
      finite.

    With ``propagate_stages`` a pixel flagged in one stage of a cell is flagged in all three.

    Parameters
    ----------
    layout : GainBitsLayout
        The detector.
    memory_cells : int
        Memory cells of the constants.
    """

    def __init__(
        self,
        layout: GainBitsLayout,
        memory_cells: int,
        *,
        offset_sigma: float = 6.0,
        noise_sigma: float = 6.0,
        min_noise_fraction: float = 0.2,
        wrong_gain_fraction: float = 0.5,
        propagate_stages: bool = True,
    ) -> None:
        if memory_cells < 1:
            raise CalibrationError(f"memory_cells: must be >= 1, got {memory_cells}")
        self.layout = layout
        self.memory_cells = int(memory_cells)
        self.offset_sigma = float(offset_sigma)
        self.noise_sigma = float(noise_sigma)
        self.min_noise_fraction = float(min_noise_fraction)
        self.wrong_gain_fraction = float(wrong_gain_fraction)
        self.propagate_stages = bool(propagate_stages)
        self._acc: list[_StageAccumulator | None] = [None] * N_STAGES
        self._stats: list[tuple | None] = [None] * N_STAGES

    def add(self, stage: int | str, raw: np.ndarray, cell_ids: np.ndarray) -> None:
        """Add a chunk of raw frames of the dark run of ``stage`` (name or index)."""
        g = self.layout.stage(stage)
        if self._acc[g] is None:
            self._acc[g] = _StageAccumulator(self.layout, g, self.memory_cells)
        self._acc[g].add(raw, cell_ids)

    def add_run(
        self,
        stage: int | str,
        chunks: Iterable[tuple[np.ndarray, np.ndarray]],
        progress: Callable[[str, int], None] | None = None,
    ) -> None:
        """Add a whole dark run given as ``(raw, cell_ids)`` chunks."""
        g = self.layout.stage(stage)
        for raw, cells in chunks:
            self.add(g, raw, cells)
            if progress is not None:
                progress(self.layout.stage_names[g], int(np.asarray(raw).shape[0]))
        self._finish(g)

    def _finish(self, g: int) -> None:
        acc = self._acc[g]
        if acc is None or acc.frames_per_cell.sum() == 0:
            raise CalibrationError(
                f"{self.layout.name} dark run {self.layout.stage_names[g]}: no frames"
            )
        mean, std = acc.statistics()
        with np.errstate(divide="ignore", invalid="ignore"):
            wrong = acc.wrong_gain / np.maximum(acc.frames_per_cell, 1)[:, None, None]
        self._stats[g] = (mean, std, wrong, acc.frames_per_cell.copy())
        self._acc[g] = None  # free the sums

    def result(self) -> DarkConstants:
        """Offset, noise and bad pixels of the three stages.

        Raises
        ------
        CalibrationError
            If a stage's dark run has no frames.
        """
        for g in range(N_STAGES):
            if self._stats[g] is None:
                self._finish(g)
        offset = np.stack([s[0] for s in self._stats])
        noise = np.stack([s[1] for s in self._stats])
        frames = np.stack([s[3] for s in self._stats])
        bad = np.zeros(offset.shape, np.uint32)
        block = self.layout.block_shape
        for g, (off, sig, wrong, nframes) in enumerate(self._stats):
            flags = bad[g]
            flags[nframes < 2] |= np.uint32(BadPixels.NO_DARK_DATA)
            has = (nframes >= 2)[:, None, None]
            finite = np.isfinite(off) & np.isfinite(sig)
            flags[~finite & has] |= np.uint32(BadPixels.OFFSET_NOISE_EVAL_ERROR)
            with np.errstate(invalid="ignore", divide="ignore"):
                dev = _robust_deviation(off, block)
                flags[np.abs(dev) > self.offset_sigma] |= np.uint32(
                    BadPixels.OFFSET_OUT_OF_THRESHOLD
                )
                log_noise = np.log(sig)
                noisy = _robust_deviation(log_noise, block) > self.noise_sigma
                med = np.nanmedian(sig.reshape(sig.shape[0], -1), axis=1)[:, None, None]
                noisy |= sig < self.min_noise_fraction * med
                flags[noisy] |= np.uint32(BadPixels.NOISE_OUT_OF_THRESHOLD)
                flags[wrong > self.wrong_gain_fraction] |= _WRONG_GAIN
        if self.propagate_stages:
            bad[:] = np.bitwise_or.reduce(bad, axis=0)
        log.info(
            "%s dark: %d of %d pixels flagged in some cell",
            self.layout.name,
            np.count_nonzero(bad.any(axis=(0, 1))),
            bad[0, 0].size,
        )
        return DarkConstants(offset, noise, bad, frames)


# -- the plug-in ------------------------------------------------------------------------------

_STAGES = ("stages", "cells", "ss", "fs")


class Prepared(NamedTuple):
    """What :meth:`GainBitsDetector.prepare_constants` returns: the kernel's tables."""

    tables: KernelTables
    steps: frozenset[str]

    @property
    def nbytes(self) -> int:
        """Memory held by the tables, in bytes."""
        t = self.tables
        return int(t.offset.nbytes + t.factor.nbytes + t.bad_pixels.nbytes)


class GainWordCodec(RawCodec):
    """Simulated raw words with the gain code in the top bits of one 16-bit word.

    Parameters
    ----------
    key
        The raw data key (``"image.data"``).
    shift
        Bit position of the gain code (the ADC value is in the bits below).
    plane
        Whether each frame has a leading axis of length 1 (``(1, ss, fs)``, as LPD's XTDF data).
    gain_key
        Key of a uint8 array holding the gain code again (JUNGFRAU's ``data.gain``), or ``None``.
    """

    def __init__(self, key: str, shift: int, *, plane: bool = False, gain_key: str | None = None):
        self.key, self.shift, self.plane, self.gain_key = key, int(shift), bool(plane), gain_key

    def frame_keys(self, module_shape):
        ny, nx = module_shape
        keys = {self.key: (((1, ny, nx) if self.plane else (ny, nx)), np.uint16)}
        if self.gain_key:
            keys[self.gain_key] = ((ny, nx), np.uint8)
        return keys

    def encode(self, analog, digital):
        word = (digital.astype(np.uint16) << self.shift) | analog.astype(np.uint16)
        out = {self.key: word[:, None] if self.plane else word}
        if self.gain_key:
            out[self.gain_key] = digital.astype(np.uint8)
        return out

    def encode_pixels(self, pixels, analog, digital, npix):
        pixels = pixels.astype(np.intp)
        out = {self.key: (pixels, (digital << self.shift) | analog)}
        if self.gain_key:
            out[self.gain_key] = (pixels, digital.astype(np.uint8))
        return out

    def decode(self, data):
        raw = data[self.key][:, 0] if self.plane else data[self.key]
        return raw & ((1 << self.shift) - 1), raw >> self.shift


class GainBitsDetector(Detector):
    """The plug-in part shared by LPD and JUNGFRAU; subclasses set the class attributes.

    Constant types: ``Offset``, ``Noise``, ``BadPixelsDark`` (from the dark procedure),
    ``RelativeGain`` and, if the detector has a flat field, ``FlatField``.  Subclasses say how
    ``RelativeGain`` turns into the kernel's factor (:meth:`gain_factor`) and what it is in
    the simulator's truth (:meth:`truth_gain`).
    """

    layout: GainBitsLayout
    data_key: str
    has_flat_field: bool = False
    correction_options = ("bad_to_nan",)

    @property
    def dark_stages(self) -> tuple[str, ...]:
        """One forced-gain dark run per stage, in stage order."""
        return tuple(self.layout.stage_names)

    @classmethod
    def _constant_types(cls, gain_unit: str, flat_field: bool) -> tuple[ConstantType, ...]:
        types = [
            ConstantType("Offset", _STAGES, "float32", ("offset",), True),
            ConstantType("Noise", _STAGES, "float32", (), True),
            ConstantType("BadPixelsDark", _STAGES, "uint32", ("badpixels",), True),
            ConstantType("RelativeGain", _STAGES, "float32", ("relgain",)),
        ]
        if flat_field:
            types.append(
                ConstantType("FlatField", ("cells", "ss", "fs"), "float32", ("flatfield",))
            )
        del gain_unit  # documented by the subclass
        return tuple(types)

    # -- raw data ---------------------------------------------------------------------------
    def _words(self, source_data: Any) -> np.ndarray:
        if self.data_key not in source_data:
            raise CalibrationError(f"{self.name} module data has no {self.data_key!r}")
        raw = np.asarray(source_data[self.data_key])
        ny, nx = self.module_shape
        return raw.reshape(raw.shape[0], ny, nx) if raw.ndim == 4 else raw

    def split_raw(self, source_data: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(adc, gain code)`` of a raw module source, each ``(frames, ss, fs)``."""
        raw = self._words(source_data)
        return raw & np.uint16(self.layout.adc_mask), raw >> self.layout.adc_bits

    def gain_stage(self, gain_raw: np.ndarray, cell_ids: np.ndarray, constants: Any) -> np.ndarray:
        """Stage of each gain code (255 for a code that is no stage); needs no constants."""
        return self.layout.code_to_stage[np.asarray(gain_raw)]

    # -- constants and correction -------------------------------------------------------------
    def gain_factor(self, relative_gain: np.ndarray) -> np.ndarray:
        """The kernel's factor (output unit per ADU) from the ``RelativeGain`` constant."""
        return relative_gain

    def to_stage_constants(self, arrays: Any) -> StageConstants:
        """A :class:`StageConstants` from ``{constant type: array}`` (missing types: None)."""
        gain = arrays.get("RelativeGain")
        return StageConstants(
            offset=arrays.get("Offset"),
            noise=arrays.get("Noise"),
            gain=None if gain is None else self.gain_factor(np.asarray(gain, np.float32)),
            flat_field=arrays.get("FlatField") if self.has_flat_field else None,
            bad_pixels=arrays.get("BadPixelsDark"),
        )

    def prepare_constants(
        self, arrays: Any, steps: Any, *, memory_cells: int | None = None
    ) -> Prepared:
        """Kernel tables for ``steps`` (a missing constant is a :class:`CalibrationError`).

        ``memory_cells`` sizes the tables when no array is given (steps that need none).
        """
        steps = check_steps(steps, self.steps)
        needed = self.required_constants(steps)
        missing = [n for n in needed if arrays.get(n) is None]
        if missing:
            raise CalibrationError(
                f"{self.name} correction steps {', '.join(sorted(steps))} need constants that "
                f"are missing: {', '.join(missing)}"
            )
        if not any(v is not None for v in arrays.values()):
            if not memory_cells:
                raise CalibrationError(f"{self.name}: no constants and no number of memory cells")
            # no step reads a constant: a zero offset only gives the tables their shape
            shape = (N_STAGES, int(memory_cells), *self.module_shape)
            arrays = {"Offset": np.zeros(shape, np.float32)}
        return Prepared(kernel_tables(self.to_stage_constants(arrays), steps), steps)

    def correct(
        self,
        source_data: Any,
        constants: Prepared,
        steps: Any,
        *,
        out: Any = None,
        bad_to_nan: bool = False,
        **options: Any,
    ) -> dict[str, Any]:
        """Correct one raw module-train (numba kernel, see :func:`correct`).

        ``steps`` must be those ``constants`` were prepared for.  Option: ``bad_to_nan``.
        """
        if options:
            raise CalibrationError(
                f"{self.name} correction has no option(s) {', '.join(sorted(options))}"
            )
        if frozenset(check_steps(steps, self.steps)) != constants.steps:
            raise CalibrationError("constants were prepared for other correction steps")
        raw = self._words(source_data)
        cells = self.cell_ids(source_data)
        keys = list(self.corrected_keys)
        buffers = None if out is None else tuple(out[k] for k in keys)
        result = correct(
            self.layout, raw, cells, constants.tables, bad_to_nan=bad_to_nan, out=buffers
        )
        corrected: dict[str, Any] = dict(zip(keys, result))
        for key in self.carried_keys:
            if key in source_data:
                value = np.asarray(source_data[key])
                corrected[key] = value.reshape(value.shape[0]) if value.ndim == 2 else value
        return corrected

    # -- dark procedure -----------------------------------------------------------------------
    def characterize_dark(self, runs: Sequence[DarkRun], memory_cells: int) -> dict[str, Any]:
        """Offset, Noise and BadPixelsDark from one forced-gain dark run per stage."""
        if len(runs) != len(self.dark_stages):
            raise CalibrationError(
                f"{self.name} dark needs {len(self.dark_stages)} runs "
                f"({', '.join(self.dark_stages)}), got {len(runs)}"
            )
        dark = ForcedGainDark(self.layout, memory_cells)
        for stage, run in enumerate(runs):
            dark.add_run(stage, ((self._words(data), cells) for data, cells in run))
        result = dark.result()
        return {
            "Offset": result.offset,
            "Noise": result.noise,
            "BadPixelsDark": result.bad_pixels,
        }

    # -- simulator ----------------------------------------------------------------------------
    def truth_gain(self, slope_adu_per_kev: np.ndarray, dead: np.ndarray) -> np.ndarray:
        """``RelativeGain`` of the truth from its slope [ADU/keV] (dead pixels: slope 0)."""
        raise NotImplementedError

    def truth_constants(self, truth: Any) -> dict[str, np.ndarray]:
        """Every constant type from a :class:`pulsetrain.sim.ModuleTruth`.

        ``BadPixelsDark`` flags the truth's bad pixels in every stage and cell: dead ones
        ``NOISE_OUT_OF_THRESHOLD | WRONG_GAIN_VALUE`` (no noise, gain stuck in stage 0),
        noisy ones ``NOISE_OUT_OF_THRESHOLD``, hot ones ``OFFSET_OUT_OF_THRESHOLD``.
        ``FlatField`` is 1 (the simulated response has no separate flat-field term).
        """
        bad2d = np.zeros(truth.dead.shape, np.uint32)
        bad2d[truth.dead] |= np.uint32(BadPixels.NOISE_OUT_OF_THRESHOLD) | _WRONG_GAIN
        bad2d[truth.noisy] |= np.uint32(BadPixels.NOISE_OUT_OF_THRESHOLD)
        bad2d[truth.hot] |= np.uint32(BadPixels.OFFSET_OUT_OF_THRESHOLD)
        shape = truth.offset.shape
        result = {
            "Offset": np.ascontiguousarray(truth.offset, np.float32),
            "Noise": np.ascontiguousarray(truth.noise, np.float32),
            "BadPixelsDark": np.ascontiguousarray(np.broadcast_to(bad2d, shape)),
            "RelativeGain": self.truth_gain(truth.slope, truth.dead).astype(np.float32),
        }
        if self.has_flat_field:
            result["FlatField"] = np.ones(shape[1:], np.float32)
        return result
