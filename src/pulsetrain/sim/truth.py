"""The simulator's ground truth: per-module response constants, bad pixels and signal truth.

Constants are generated lazily and deterministically from ``(seed, detector, module)`` (per-pixel
maps and bad pixels) and ``(seed, detector, module, cell)`` (per-cell terms), so any module and
any memory cell can be computed alone.  :func:`export_truth` writes them to HDF5 and
:func:`load_truth` reads them back (layout in ``docs/simulator.md``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pulsetrain.errors import ConfigurationError, FileFormatError
from pulsetrain.sim.detectors import DetectorSpec, detector_spec
from pulsetrain.sim.parameters import GainModelParameters
from pulsetrain.sim.rng import Stream, stream

__all__ = [
    "TRUTH_FORMAT",
    "CellTruth",
    "ModuleTruth",
    "SignalTruth",
    "TruthGenerator",
    "export_truth",
    "load_truth",
]

log = logging.getLogger(__name__)

#: Value of the ``format`` attribute of truth files.
TRUTH_FORMAT = "pulsetrain.sim.truth/1"

_CLIP = 4.0
_ARRAYS = ("offset", "slope", "noise", "digital_level", "switch_kev")
_MASKS = ("dead", "noisy", "hot")


@dataclass
class ModuleTruth:
    """Response constants and bad pixels of one module, as the simulator uses them.

    Attributes
    ----------
    module : int
        Module number (0-based).
    cells : numpy.ndarray
        ``(n,)`` uint16 memory cells held, in the order of axis 1 of the constants (normally
        ``0 .. memory_cells - 1``, so ``offset[:, cellId]`` works).
    offset, slope, noise, digital_level : numpy.ndarray
        ``(3, n, ss, fs)`` float32 per gain stage (0 high, 1 medium, 2 low), memory cell and
        pixel: offset [ADU], slope [ADU/keV], noise [ADU rms], digital gain level [ADU].
    switch_kev : numpy.ndarray
        ``(2, n, ss, fs)`` float32: deposited energy [keV] at which the pixel switches from
        high to medium (``[0]``) and from medium to low gain (``[1]``); ``inf`` for dead pixels.
    dead, noisy, hot : numpy.ndarray
        ``(ss, fs)`` bool, disjoint bad-pixel sets.
    digital_noise : float
        rms noise [ADU] of the digital gain value (0 for dead pixels).
    adc_max : int
        Largest analogue value; raw values are clipped to ``[0, adc_max]``.
    detector : str
        Detector type.
    """

    module: int
    cells: np.ndarray
    offset: np.ndarray
    slope: np.ndarray
    noise: np.ndarray
    digital_level: np.ndarray
    switch_kev: np.ndarray
    dead: np.ndarray
    noisy: np.ndarray
    hot: np.ndarray
    digital_noise: float
    adc_max: int
    detector: str = "AGIPD"

    @property
    def bad_pixels(self) -> np.ndarray:
        """``(ss, fs)`` bool: dead, noisy or hot."""
        return self.dead | self.noisy | self.hot

    def gain_thresholds(self) -> np.ndarray:
        """Ideal digital thresholds ``(2, n, ss, fs)``: midpoints between the gain levels.

        A raw digital value above ``[0]`` means medium gain or lower, above ``[1]`` low gain.
        """
        levels = self.digital_level
        return np.stack([0.5 * (levels[0] + levels[1]), 0.5 * (levels[1] + levels[2])]).astype(
            np.float32
        )

    def cell_index(self, cell_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Positions along axis 1 of the constants of memory cells ``cell_ids``."""
        cell_ids = np.asarray(cell_ids)
        lookup = np.full(int(self.cells.max()) + 1, -1, dtype=np.int64)
        lookup[self.cells] = np.arange(len(self.cells))
        if cell_ids.size and (cell_ids.max() >= len(lookup) or (lookup[cell_ids] < 0).any()):
            raise ConfigurationError(
                f"truth of module {self.module} lacks some of cells {cell_ids}"
            )
        return lookup[cell_ids]

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays, in bytes."""
        return sum(getattr(self, n).nbytes for n in _ARRAYS + _MASKS)


@dataclass
class SignalTruth:
    """What really hit one module in one train (exact path only).

    Attributes
    ----------
    energy_kev : numpy.ndarray
        ``(frames, ss, fs)`` float32 deposited energy [keV] (photons x photon energy).
    gain_stage : numpy.ndarray
        ``(frames, ss, fs)`` uint8 gain stage the pixel was in (0, 1, 2).
    hits : numpy.ndarray
        ``(frames,)`` bool, whether the pulse was a crystal hit.
    cell_ids : numpy.ndarray
        ``(frames,)`` uint16 memory cell of each frame.
    """

    energy_kev: np.ndarray
    gain_stage: np.ndarray
    hits: np.ndarray
    cell_ids: np.ndarray


@dataclass
class CellTruth:
    """Constants of one memory cell of one module: ``(3, ss, fs)`` / ``(2, ss, fs)`` arrays."""

    offset: np.ndarray
    slope: np.ndarray
    noise: np.ndarray
    digital_level: np.ndarray
    switch_kev: np.ndarray
    digital_noise: np.ndarray  # (ss, fs), 0 for dead pixels

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (the shared digital-noise map excluded)."""
        return sum(getattr(self, n).nbytes for n in _ARRAYS)


@dataclass
class _PixelMaps:
    """Per-pixel random maps and bad pixels of one module (shared by all cells)."""

    a: dict[str, np.ndarray]  # name -> (stages, ss, fs) float32 standard normals
    dead: np.ndarray
    noisy: np.ndarray
    hot: np.ndarray
    noisy_factor: np.ndarray  # (ss, fs) float32, 1 where not noisy
    hot_shift: np.ndarray  # (ss, fs) float32, 0 where not hot
    digital_noise: np.ndarray  # (ss, fs) float32


def _normals(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    z = rng.standard_normal(shape, dtype=np.float32)
    np.clip(z, -_CLIP, _CLIP, out=z)
    return z


class TruthGenerator:
    """Generate response constants of one detector type from a seed.

    Parameters
    ----------
    spec : DetectorSpec
        Detector type (module shape, stream key).
    params : GainModelParameters
        Response model.
    seed : int
        Simulator seed.
    """

    def __init__(self, spec: DetectorSpec, params: GainModelParameters, seed: int):
        self.spec = spec
        self.params = params
        self.seed = int(seed)
        self._maps = functools.lru_cache(maxsize=4)(self._make_pixel_maps)

    # -- per-pixel maps ---------------------------------------------------------------------
    def _make_pixel_maps(self, module: int) -> _PixelMaps:
        ny, nx = self.spec.module_shape
        p = self.params
        rng = stream(self.seed, Stream.TRUTH_PIXEL, self.spec.key, module)
        a = {
            "offset": _normals(rng, (3, ny, nx)),
            "slope": _normals(rng, (3, ny, nx)),
            "noise": _normals(rng, (3, ny, nx)),
            "digital": _normals(rng, (3, ny, nx)),
            "switch": _normals(rng, (2, ny, nx)),
        }
        npix = ny * nx
        rng = stream(self.seed, Stream.BAD_PIXELS, self.spec.key, module)
        order = rng.permutation(npix)
        n_dead, n_noisy, n_hot = (
            round(f * npix) for f in (p.dead_fraction, p.noisy_fraction, p.hot_fraction)
        )
        masks = []
        start = 0
        for n in (n_dead, n_noisy, n_hot):
            m = np.zeros(npix, dtype=bool)
            m[order[start : start + n]] = True
            masks.append(m.reshape(ny, nx))
            start += n
        dead, noisy, hot = masks
        noisy_factor = np.ones((ny, nx), dtype=np.float32)
        noisy_factor[noisy] = rng.uniform(*p.noisy_factor_range, size=n_noisy)
        hot_shift = np.zeros((ny, nx), dtype=np.float32)
        hot_shift[hot] = rng.choice([-1.0, 1.0], size=n_hot) * p.hot_offset_adu
        digital_noise = np.full((ny, nx), p.digital_noise_adu, dtype=np.float32)
        digital_noise[dead] = 0.0
        for arr in (*a.values(), dead, noisy, hot, noisy_factor, hot_shift, digital_noise):
            arr.setflags(write=False)
        return _PixelMaps(a, dead, noisy, hot, noisy_factor, hot_shift, digital_noise)

    def bad_pixels(self, module: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(dead, noisy, hot)`` bool masks of ``module`` (cheap, no per-cell constants)."""
        m = self._maps(int(module))
        return m.dead, m.noisy, m.hot

    # -- per cell ---------------------------------------------------------------------------
    def cell(self, module: int, cell: int) -> CellTruth:
        """Constants of one memory cell of one module."""
        module, cell = int(module), int(cell)
        if not 0 <= module < self.spec.n_modules:
            raise ConfigurationError(f"{self.spec.name} has no module {module}")
        if cell < 0:
            raise ConfigurationError(f"memory cell must be >= 0, got {cell}")
        p = self.params
        maps = self._maps(module)
        a = maps.a
        ny, nx = self.spec.module_shape
        rng = stream(self.seed, Stream.TRUTH_CELL, self.spec.key, module, cell)
        b = np.clip(rng.standard_normal(14), -_CLIP, _CLIP).astype(np.float32)
        b_off, b_slope, b_noise, b_dig, b_sw = b[0:3], b[3:6], b[6:9], b[9:12], b[12:14]
        e_off = _normals(rng, (3, ny, nx)) if p.offset_cell_pixel_adu else None
        e_slope = _normals(rng, (3, ny, nx)) if p.slope_cell_pixel_rel else None

        f32 = np.float32
        offset = np.empty((3, ny, nx), f32)
        slope = np.empty((3, ny, nx), f32)
        noise = np.empty((3, ny, nx), f32)
        digital = np.empty((3, ny, nx), f32)
        switch = np.empty((2, ny, nx), f32)
        for g in range(3):
            o = f32(p.offset_adu[g] * (1 + p.offset_cell_rel * b_off[g]))
            np.multiply(a["offset"][g], f32(p.offset_pixel_rel) * o, out=offset[g])
            offset[g] += o
            if e_off is not None:
                offset[g] += f32(p.offset_cell_pixel_adu) * e_off[g]
            s = f32(p.slope_adu_per_kev[g] * (1 + p.slope_cell_rel * b_slope[g]))
            np.multiply(a["slope"][g], f32(p.slope_pixel_rel) * s, out=slope[g])
            slope[g] += s
            if e_slope is not None:
                slope[g] *= 1 + f32(p.slope_cell_pixel_rel) * e_slope[g]
            n = f32(p.noise_adu[g] * (1 + p.noise_cell_rel * b_noise[g]))
            np.multiply(a["noise"][g], f32(p.noise_pixel_rel) * n, out=noise[g])
            noise[g] += n
            np.maximum(noise[g], f32(0.2 * p.noise_adu[g]), out=noise[g])
            d = f32(p.digital_level_adu[g])
            np.multiply(a["digital"][g], f32(p.digital_pixel_rel) * d, out=digital[g])
            digital[g] += d + f32(p.digital_cell_adu) * b_dig[g]
        for k in range(2):
            w = f32(p.switch_kev[k] * (1 + p.switch_cell_rel * b_sw[k]))
            np.multiply(a["switch"][k], f32(p.switch_pixel_rel) * w, out=switch[k])
            switch[k] += w

        # Bad pixels.
        noise *= maps.noisy_factor
        offset += maps.hot_shift
        dead = maps.dead
        if dead.any():
            offset[:, dead] = (
                p.offset_adu[0] * (1 + p.offset_pixel_rel * a["offset"][0][dead])
            ).astype(f32)
            digital[:, dead] = (
                p.digital_level_adu[0] * (1 + p.digital_pixel_rel * a["digital"][0][dead])
            ).astype(f32)
            slope[:, dead] = 0.0
            noise[:, dead] = 0.0
            switch[:, dead] = np.inf
        return CellTruth(offset, slope, noise, digital, switch, maps.digital_noise)

    # -- whole module -----------------------------------------------------------------------
    def module(
        self,
        module: int,
        cells: Iterable[int],
        cell: Callable[[int, int], CellTruth] | None = None,
    ) -> ModuleTruth:
        """Constants of ``module`` for memory ``cells`` (a :class:`ModuleTruth`).

        ``cell(module, cell)`` gives the constants of one cell (default :meth:`cell`; a
        cache of its results gives the same constants faster).
        """
        cell = cell or self.cell
        cells = np.asarray(list(cells), dtype=np.uint16)
        if cells.ndim != 1 or cells.size == 0:
            raise ConfigurationError("cells must be a non-empty list of memory cells")
        ny, nx = self.spec.module_shape
        n = len(cells)
        out = {
            name: np.empty((2 if name == "switch_kev" else 3, n, ny, nx), np.float32)
            for name in _ARRAYS
        }
        for i, c in enumerate(cells):
            ct = cell(module, int(c))
            for name in _ARRAYS:
                out[name][:, i] = getattr(ct, name)
        dead, noisy, hot = self.bad_pixels(module)
        return ModuleTruth(
            module=int(module),
            cells=cells,
            dead=dead.copy(),
            noisy=noisy.copy(),
            hot=hot.copy(),
            digital_noise=float(self.params.digital_noise_adu),
            adc_max=int(self.params.adc_max),
            detector=self.spec.name,
            **out,
        )


def _group_name(module: int) -> str:
    return f"module_{int(module):02d}"


def export_truth(
    path: str | os.PathLike,
    truths: Iterable[ModuleTruth],
    *,
    spec: DetectorSpec,
    attrs: dict | None = None,
) -> None:
    """Write module truths to an HDF5 file, one group ``module_NN`` per module.

    Parameters
    ----------
    path : path-like
        File to create (overwritten).
    truths : iterable of ModuleTruth
        Consumed one at a time, so a generator keeps only one module in memory.
    spec : DetectorSpec
        Detector type (for source names).
    attrs : dict, optional
        Extra root attributes (seed, photon energy, ...).
    """
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["format"] = TRUTH_FORMAT
        f.attrs["detector"] = spec.name
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        modules = []
        for t in truths:
            g = f.create_group(_group_name(t.module))
            g.attrs["module"] = t.module
            g.attrs["source"] = spec.source(t.module)
            g.attrs["digital_noise"] = t.digital_noise
            g.attrs["adc_max"] = t.adc_max
            g.create_dataset("cells", data=t.cells)
            for name in _ARRAYS:
                g.create_dataset(name, data=getattr(t, name))
            for name in _MASKS:
                g.create_dataset(name, data=getattr(t, name))
            modules.append(t.module)
            log.info("wrote truth of module %d to %s", t.module, path)
        f.attrs["modules"] = np.asarray(modules, dtype=np.int32)


def load_truth(path: str | os.PathLike, module: int) -> ModuleTruth:
    """Read the truth of ``module`` from a file written by :func:`export_truth`."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FileFormatError(f"cannot open truth file {path}: {exc}") from exc
    with f:
        if f.attrs.get("format") != TRUTH_FORMAT:
            raise FileFormatError(f"{path} is not a {TRUTH_FORMAT} file")
        name = _group_name(module)
        if name not in f:
            raise FileFormatError(f"{path} holds no truth for module {module}")
        g = f[name]
        detector = str(f.attrs["detector"])
        detector_spec(detector)
        return ModuleTruth(
            module=int(g.attrs["module"]),
            cells=g["cells"][()],
            digital_noise=float(g.attrs["digital_noise"]),
            adc_max=int(g.attrs["adc_max"]),
            detector=detector,
            **{n: g[n][()] for n in _ARRAYS + _MASKS},
        )
