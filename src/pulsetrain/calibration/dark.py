"""Dark characterisation: offset, noise, gain thresholds and dark bad pixels of one module.

Three dark runs are taken with the gain forced to high, medium and low.  Each is streamed chunk
by chunk into a :class:`DarkAccumulator` (per memory cell and pixel: exact sums of the analog and
digital values, relative to a reference frame), so memory does not grow with the run length and
a progress bar can follow the chunks.  :func:`characterize_dark` then derives the constants and
flags bad pixels with robust statistics; ``docs/calibration.md`` gives the rules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pulsetrain.calibration.badpixels import BadPixels
from pulsetrain.calibration.constants import MODULE_SHAPE, N_GAIN_STAGES, AGIPDConstants
from pulsetrain.calibration.kernels import ASIC_SIZE, accumulate_kernel
from pulsetrain.errors import CalibrationError

__all__ = [
    "GAIN_NAMES",
    "DarkAccumulator",
    "DarkResult",
    "StageStatistics",
    "characterize_dark",
    "combine_constants",
    "evaluate_dark",
]

log = logging.getLogger(__name__)

#: Names of the gain stages, in stage order.
GAIN_NAMES = ("HG", "MG", "LG")
#: Scale from the median absolute deviation to the standard deviation of a normal distribution.
MAD_TO_SIGMA = 1.4826

#: One dark run: an iterable of ``(raw_chunk (n, 2, 512, 128) uint16, cell_ids (n,))``.
DarkRun = Iterable[tuple[np.ndarray, np.ndarray]]


@dataclass
class StageStatistics:
    """Per-cell, per-pixel statistics of one forced-gain dark run.

    Attributes
    ----------
    offset, noise
        Mean and standard deviation (ddof=1) of the analog value, float32 (cells, 512, 128);
        NaN for cells with fewer than two frames.
    digital_mean, digital_std
        The same for the digital gain value.
    frames_per_cell
        int64 (cells,): number of frames seen per memory cell.
    """

    offset: np.ndarray
    noise: np.ndarray
    digital_mean: np.ndarray
    digital_std: np.ndarray
    frames_per_cell: np.ndarray


class DarkAccumulator:
    """Streaming per-cell mean and variance of the analog and digital planes of one dark run.

    For every memory cell the first frame seen becomes the reference ``ref``; every frame adds
    ``x - ref`` and ``(x - ref)**2`` to float64 sums.  The differences are integers, so the
    sums are exact (up to 2**53, i.e. about two million frames per cell), do not depend on how
    the run is chunked, and a pixel that never changes has exactly zero variance.  Memory: 36
    bytes per cell and pixel (two planes: uint16 reference and two float64 sums), plus as much
    again, briefly, in :meth:`statistics`.

    Parameters
    ----------
    memory_cells
        Number of memory cells; cellIds must be below it.
    """

    def __init__(self, memory_cells: int) -> None:
        if memory_cells < 1:
            raise CalibrationError(f"memory_cells: must be >= 1, got {memory_cells}")
        self.memory_cells = int(memory_cells)
        shape = (self.memory_cells, 2, *MODULE_SHAPE)
        self._reference = np.zeros(shape, np.uint16)
        self._sum1 = np.zeros(shape, np.float64)
        self._sum2 = np.zeros(shape, np.float64)
        self.frames_per_cell = np.zeros(self.memory_cells, np.int64)

    @property
    def frames(self) -> int:
        """Frames added so far."""
        return int(self.frames_per_cell.sum())

    def add(self, raw: np.ndarray, cell_ids: np.ndarray) -> None:
        """Add a chunk of frames.

        Parameters
        ----------
        raw
            uint16 ``(n, 2, 512, 128)`` raw frames.
        cell_ids
            Integer ``(n,)`` (or ``(n, 1)``) memory cell of each frame.

        Raises
        ------
        CalibrationError
            Wrong shape or dtype, or a cellId outside ``0 .. memory_cells - 1``.
        """
        raw = np.asarray(raw)
        if raw.ndim != 4 or raw.shape[1] != 2 or raw.shape[2:] != MODULE_SHAPE:
            raise CalibrationError(
                f"dark chunk: shape must be (n, 2, {MODULE_SHAPE[0]}, {MODULE_SHAPE[1]}), "
                f"got {raw.shape}"
            )
        if raw.dtype != np.uint16:
            raise CalibrationError(f"dark chunk: dtype must be uint16, got {raw.dtype}")
        cells = np.asarray(cell_ids)
        if cells.ndim == 2 and cells.shape[1] == 1:
            cells = cells[:, 0]
        if cells.dtype.kind not in "ui" or cells.shape != (raw.shape[0],):
            raise CalibrationError(
                f"dark chunk: cell_ids must be integers of shape ({raw.shape[0]},), "
                f"got {cells.dtype} {cells.shape}"
            )
        if not cells.size:
            return
        if cells.min() < 0 or cells.max() >= self.memory_cells:
            bad = int(cells.min()) if cells.min() < 0 else int(cells.max())
            raise CalibrationError(
                f"dark chunk: cellId {bad} outside 0..{self.memory_cells - 1} "
                f"(memory_cells={self.memory_cells})"
            )
        cells = np.ascontiguousarray(cells, dtype=np.int64)
        raw = np.ascontiguousarray(raw)
        unseen = self.frames_per_cell == 0
        if unseen.any():
            present, first = np.unique(cells, return_index=True)
            new = unseen[present]
            self._reference[present[new]] = raw[first[new]]
        accumulate_kernel(raw, cells, self._reference, self._sum1, self._sum2)
        np.add.at(self.frames_per_cell, cells, 1)

    def statistics(self) -> StageStatistics:
        """Mean and standard deviation per cell and pixel of what was added so far."""
        n = self.frames_per_cell.astype(np.float64)[:, None, None, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = self._sum1 / n
            mean = self._reference + shift
            var = (self._sum2 - self._sum1 * shift) / (n - 1)
        var = np.maximum(var, 0.0, where=np.isfinite(var), out=var)
        std = np.sqrt(var)
        few = self.frames_per_cell < 2
        mean[few] = np.nan
        std[few] = np.nan
        return StageStatistics(
            offset=mean[:, 0].astype(np.float32),
            noise=std[:, 0].astype(np.float32),
            digital_mean=mean[:, 1].astype(np.float32),
            digital_std=std[:, 1].astype(np.float32),
            frames_per_cell=self.frames_per_cell.copy(),
        )


@dataclass
class DarkResult:
    """Dark constants of one module, all indexed ``[gain stage, cell, 512, 128]``.

    Attributes
    ----------
    offset, noise
        float32 (3, cells, 512, 128), ADU.
    thresholds
        float32 (2, cells, 512, 128): midpoints between the mean digital levels of stages 0/1
        and 1/2.
    bad_pixels
        uint32 (3, cells, 512, 128) :class:`BadPixels`.
    digital_mean, digital_std
        float32 (3, cells, 512, 128): digital gain value per stage.
    frames_per_cell
        int64 (3, cells): dark frames used per stage and cell.
    """

    offset: np.ndarray
    noise: np.ndarray
    thresholds: np.ndarray
    bad_pixels: np.ndarray
    digital_mean: np.ndarray
    digital_std: np.ndarray
    frames_per_cell: np.ndarray

    @property
    def memory_cells(self) -> int:
        """Number of memory cells."""
        return int(self.offset.shape[1])


def _per_asic(values: np.ndarray) -> np.ndarray:
    """View (..., 512, 128) as (..., asics, 4096) (copy): one row of pixels per 64x64 ASIC."""
    lead = values.shape[:-2]
    rows, cols = values.shape[-2] // ASIC_SIZE, values.shape[-1] // ASIC_SIZE
    v = values.reshape(*lead, rows, ASIC_SIZE, cols, ASIC_SIZE)
    v = np.moveaxis(v, -3, -2)  # (..., rows, cols, 64, 64)
    return v.reshape(*lead, rows * cols, ASIC_SIZE * ASIC_SIZE)


def _from_asic(values: np.ndarray, lead: tuple[int, ...]) -> np.ndarray:
    """Broadcast per-ASIC values (..., asics) back to (..., 512, 128)."""
    rows, cols = MODULE_SHAPE[0] // ASIC_SIZE, MODULE_SHAPE[1] // ASIC_SIZE
    v = values.reshape(*lead, rows, 1, cols, 1)
    v = np.broadcast_to(v, (*lead, rows, ASIC_SIZE, cols, ASIC_SIZE))
    return v.reshape(*lead, *MODULE_SHAPE)


def _nanmedian_rows(values: np.ndarray) -> np.ndarray:
    """Median along the last axis over finite entries only; NaN where a row has none.

    Vectorised (one sort) instead of ``np.nanmedian``, which loops in Python for long rows.
    """
    clean = np.where(np.isfinite(values), values, np.nan)
    ordered = np.sort(clean, axis=-1)  # NaN sorts last
    n = np.count_nonzero(np.isfinite(clean), axis=-1)
    lo = np.take_along_axis(ordered, np.maximum(n - 1, 0)[..., None] // 2, axis=-1)[..., 0]
    hi = np.take_along_axis(ordered, (n // 2)[..., None].clip(max=values.shape[-1] - 1), axis=-1)[
        ..., 0
    ]
    median = 0.5 * (lo.astype(np.float64) + hi)
    median[n == 0] = np.nan
    return median


def _robust_outliers(values: np.ndarray, k: float, *, upper_only: bool = False) -> np.ndarray:
    """True where a value is more than k robust sigmas from the median of its ASIC.

    ``values`` (cells, 512, 128); statistics over the finite pixels of each (cell, ASIC), with
    sigma = 1.4826 * MAD.  Non-finite values are never outliers (they get their own flag).
    With ``upper_only`` only values above the median count.
    """
    lead = values.shape[:-2]
    per_asic = _per_asic(values)
    median = _nanmedian_rows(per_asic)
    mad = _nanmedian_rows(np.abs(per_asic - median[..., None]))
    sigma = MAD_TO_SIGMA * mad
    deviation = values - _from_asic(median, lead)
    if not upper_only:
        deviation = np.abs(deviation)
    with np.errstate(invalid="ignore"):
        return (deviation > k * _from_asic(sigma, lead)) & np.isfinite(values)


def _module_median(values: np.ndarray) -> np.ndarray:
    """Median over the finite pixels of each cell, (cells, 1, 1)."""
    return _nanmedian_rows(values.reshape(values.shape[0], -1))[:, None, None]


def characterize_dark(
    hg: DarkRun,
    mg: DarkRun,
    lg: DarkRun,
    *,
    memory_cells: int,
    offset_sigma: float = 6.0,
    noise_sigma: float = 6.0,
    min_noise_fraction: float = 0.2,
    separation_sigma: float = 3.0,
    propagate_stages: bool = True,
    propagate_cells: bool = False,
    progress: Callable[[str, int], None] | None = None,
) -> DarkResult:
    """Offset, noise, gain thresholds and dark bad pixels from three forced-gain dark runs.

    Streams each run through a :class:`DarkAccumulator` (one run at a time, so peak memory is
    that of one accumulator) and then calls :func:`evaluate_dark`.

    Parameters
    ----------
    hg, mg, lg
        The dark runs taken with gain forced to high, medium and low: each an iterable of
        ``(raw_chunk, cell_ids)`` with ``raw_chunk`` uint16 ``(n, 2, 512, 128)`` and ``cell_ids``
        ``(n,)``.  Chunks are consumed one at a time (wrap them in ``tqdm`` for a progress bar).
    memory_cells
        Number of memory cells of the constants; every cellId must be below it.
    offset_sigma, noise_sigma, min_noise_fraction, separation_sigma, propagate_stages, \
propagate_cells
        Bad-pixel rules, see :func:`evaluate_dark`.
    progress
        Called after each chunk with ``(stage name, frames in the chunk)``.

    Returns
    -------
    DarkResult

    Raises
    ------
    CalibrationError
        On malformed chunks, cellIds outside ``memory_cells``, or a run without any frames.
    """
    stats = []
    for name, run in zip(GAIN_NAMES, (hg, mg, lg)):
        acc = DarkAccumulator(memory_cells)
        for raw, cell_ids in run:
            acc.add(raw, cell_ids)
            if progress is not None:
                progress(name, int(np.asarray(raw).shape[0]))
        if acc.frames == 0:
            raise CalibrationError(f"dark run {name}: no frames")
        missing = np.flatnonzero(acc.frames_per_cell < 2)
        if missing.size:
            log.warning(
                "dark run %s: %d of %d memory cells have fewer than 2 frames (flagged "
                "NO_DARK_DATA), e.g. cell %d",
                name,
                missing.size,
                memory_cells,
                missing[0],
            )
        log.info("dark run %s: %d frames", name, acc.frames)
        stats.append(acc.statistics())
        del acc
    return evaluate_dark(
        stats,
        offset_sigma=offset_sigma,
        noise_sigma=noise_sigma,
        min_noise_fraction=min_noise_fraction,
        separation_sigma=separation_sigma,
        propagate_stages=propagate_stages,
        propagate_cells=propagate_cells,
    )


def evaluate_dark(
    stats: Sequence[StageStatistics],
    *,
    offset_sigma: float = 6.0,
    noise_sigma: float = 6.0,
    min_noise_fraction: float = 0.2,
    separation_sigma: float = 3.0,
    propagate_stages: bool = True,
    propagate_cells: bool = False,
) -> DarkResult:
    """Thresholds and dark bad pixels from the statistics of the three dark runs.

    Parameters
    ----------
    stats
        :meth:`DarkAccumulator.statistics` of the HG, MG and LG dark runs, in that order.
    offset_sigma
        OFFSET_OUT_OF_THRESHOLD if ``|offset - median| > offset_sigma * 1.4826 * MAD`` (median
        and MAD over the finite pixels of the same 64x64 ASIC, memory cell and gain stage).
    noise_sigma
        NOISE_OUT_OF_THRESHOLD if the logarithm of the noise is more than ``noise_sigma``
        robust sigmas *above* the median of its ASIC (cell, stage).  The logarithm makes the
        sampling distribution of a standard deviation from few frames nearly symmetric; its
        lower tail stays long, so low noise is judged by ``min_noise_fraction`` instead.
    min_noise_fraction
        NOISE_OUT_OF_THRESHOLD if the noise is below this fraction of the module's median
        noise in that cell and stage: dead pixels have (almost) no noise, and a whole dead
        ASIC does not stand out from its own median.
    separation_sigma
        GAIN_THRESHOLDING_ERROR (in both stages) if the threshold between two adjacent stages,
        the midpoint of their mean digital levels, lies within ``separation_sigma`` digital
        standard deviations of either level, or the levels do not increase.
    propagate_stages
        A pixel flagged in any stage of a cell gets the union of its flags in all three stages
        of that cell.
    propagate_cells
        A pixel flagged in any cell gets the union of its flags in all cells.

    Returns
    -------
    DarkResult

    Raises
    ------
    CalibrationError
        If there are not three statistics of the same shape.
    """
    if len(stats) != N_GAIN_STAGES:
        raise CalibrationError(
            f"dark statistics: need {N_GAIN_STAGES} gain stages, got {len(stats)}"
        )
    if len({s.offset.shape for s in stats}) != 1:
        raise CalibrationError(
            f"dark statistics: shapes differ between stages: {[s.offset.shape for s in stats]}"
        )
    offset = np.stack([s.offset for s in stats])
    noise = np.stack([s.noise for s in stats])
    dmean = np.stack([s.digital_mean for s in stats])
    dstd = np.stack([s.digital_std for s in stats])
    frames_per_cell = np.stack([s.frames_per_cell for s in stats])
    has_data = frames_per_cell >= 2

    thresholds = 0.5 * (dmean[:-1] + dmean[1:])
    bad = np.zeros(offset.shape, np.uint32)
    for g in range(N_GAIN_STAGES):
        flags = bad[g]
        flags[~has_data[g]] |= np.uint32(BadPixels.NO_DARK_DATA)
        not_finite = ~(np.isfinite(offset[g]) & np.isfinite(noise[g]))
        not_finite[~has_data[g]] = False
        flags[not_finite] |= np.uint32(BadPixels.OFFSET_NOISE_EVAL_ERROR)
        offset_bad = _robust_outliers(offset[g], offset_sigma)
        flags[offset_bad] |= np.uint32(BadPixels.OFFSET_OUT_OF_THRESHOLD)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_noise = np.log(noise[g])  # sampling spread of a std is ~symmetric in log
        noise_bad = _robust_outliers(log_noise, noise_sigma, upper_only=True)
        with np.errstate(invalid="ignore"):
            noise_bad |= noise[g] < min_noise_fraction * _module_median(noise[g])
        flags[noise_bad] |= np.uint32(BadPixels.NOISE_OUT_OF_THRESHOLD)

    for g in range(N_GAIN_STAGES - 1):
        half_gap = dmean[g + 1] - thresholds[g]  # == thresholds[g] - dmean[g]
        with np.errstate(invalid="ignore"):
            overlap = (half_gap <= separation_sigma * dstd[g]) | (
                half_gap <= separation_sigma * dstd[g + 1]
            )
        overlap &= (has_data[g] & has_data[g + 1])[:, None, None]
        bad[g][overlap] |= np.uint32(BadPixels.GAIN_THRESHOLDING_ERROR)
        bad[g + 1][overlap] |= np.uint32(BadPixels.GAIN_THRESHOLDING_ERROR)

    if propagate_stages:
        bad[:] = np.bitwise_or.reduce(bad, axis=0)
    if propagate_cells:
        bad[:] = np.bitwise_or.reduce(bad, axis=1, keepdims=True)

    n_bad = np.count_nonzero(bad.any(axis=(0, 1)))
    log.info("dark evaluation: %d of %d pixels flagged in some cell", n_bad, bad[0, 0].size)
    return DarkResult(
        offset=offset,
        noise=noise,
        thresholds=thresholds.astype(np.float32),
        bad_pixels=bad,
        digital_mean=dmean,
        digital_std=dstd,
        frames_per_cell=frames_per_cell,
    )


def combine_constants(
    dark: DarkResult, rel_gain: np.ndarray, *, extra_bad_pixels: np.ndarray | None = None
) -> AGIPDConstants:
    """Correction constants from a dark characterisation and relative gains.

    Parameters
    ----------
    dark
        Result of :func:`characterize_dark`.
    rel_gain
        Relative gain (output unit per ADU, e.g. ``1 / slope`` with slope in ADU/keV),
        ``(3, cells, 512, 128)`` or ``(3, 512, 128)`` (same for every cell).  A non-finite or
        non-positive value flags the pixel CI_EVAL_ERROR in all three stages of that cell.
    extra_bad_pixels
        Optional further :class:`BadPixels` (for instance from flat-field or pulse-capacitor
        scans), broadcastable to ``(3, cells, 512, 128)``, OR-ed into the dark flags.

    Returns
    -------
    AGIPDConstants

    Raises
    ------
    CalibrationError
        If the shapes do not match the dark result.
    """
    cells = dark.memory_cells
    rg = np.asarray(rel_gain)
    if rg.dtype.kind != "f":
        raise CalibrationError(f"rel_gain: dtype must be floating point, got {rg.dtype}")
    if rg.shape == (N_GAIN_STAGES, *MODULE_SHAPE):
        rg = rg[:, None]
    full = (N_GAIN_STAGES, cells, *MODULE_SHAPE)
    if (
        rg.ndim != 4
        or rg.shape[0] != N_GAIN_STAGES
        or rg.shape[2:] != MODULE_SHAPE
        or (rg.shape[1] not in (1, cells))
    ):
        raise CalibrationError(
            f"rel_gain: shape must be (3, {cells}, 512, 128) or (3, 512, 128), "
            f"got {np.shape(rel_gain)}"
        )
    rg = np.ascontiguousarray(np.broadcast_to(rg, full), dtype=np.float32)
    bad = dark.bad_pixels.copy()
    with np.errstate(invalid="ignore"):
        invalid = ~(np.isfinite(rg) & (rg > 0))
    bad[:, invalid.any(axis=0)] |= np.uint32(BadPixels.CI_EVAL_ERROR)
    if extra_bad_pixels is not None:
        try:
            bad |= np.broadcast_to(np.asarray(extra_bad_pixels, dtype=np.uint32), full)
        except ValueError as exc:
            raise CalibrationError(
                f"extra_bad_pixels: shape {np.shape(extra_bad_pixels)} does not broadcast to {full}"
            ) from exc
    return AGIPDConstants(
        offset=dark.offset,
        rel_gain=rg,
        thresholds=dark.thresholds,
        bad_pixels=bad,
        noise=dark.noise,
    )
