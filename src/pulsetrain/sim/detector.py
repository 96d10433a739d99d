"""The simulated detector: raw module data of AGIPD-1M, LPD-1M and JUNGFRAU trains.

Two ways to make a train, with the same model:

* the **exact path** (:meth:`DetectorSimulator.module_train`): every frame is computed from the
  model (photon counting, gain switching, noise); slow, and can return the signal truth;
* the **fast path** (:meth:`DetectorSimulator.train`): frames are assembled from a bank of
  frames precomputed with the exact model (see :mod:`pulsetrain.sim.bank`); fast enough to
  stream 10 Hz, but noise realisations repeat across trains.

Both paths share the per-pulse hit decisions, so a train has hits on the same pulses either way.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from pulsetrain.errors import ConfigurationError
from pulsetrain.sim.bank import FrameBank
from pulsetrain.sim.clock import TrainClock, source_meta
from pulsetrain.sim.detectors import DetectorSpec, detector_spec
from pulsetrain.sim.geometry import q_map
from pulsetrain.sim.parameters import GainModelParameters, SampleParameters
from pulsetrain.sim.response import respond
from pulsetrain.sim.rng import Stream, stream
from pulsetrain.sim.scattering import (
    Peaks,
    draw_module_peaks,
    draw_pulse_peaks,
    render_peaks,
    ring_photons,
)
from pulsetrain.sim.truth import (
    CellTruth,
    ModuleTruth,
    SignalTruth,
    TruthGenerator,
    export_truth,
)

__all__ = ["DARK_STAGES", "DetectorSimulator"]

log = logging.getLogger(__name__)

#: Names accepted for ``dark=`` and the gain stage they force.
DARK_STAGES = {"HG": 0, "MG": 1, "LG": 2, "G0": 0, "G1": 1, "G2": 2}

#: Seconds between two 4.5 MHz pulse slots (one pulse-ID step).
PULSE_SLOT_S = 1 / 4.5e6


def _dark_stage(dark: str | int | None) -> int | None:
    if dark is None:
        return None
    if isinstance(dark, (int, np.integer)) and 0 <= int(dark) <= 2:
        return int(dark)
    try:
        return DARK_STAGES[str(dark).upper()]
    except KeyError:
        raise ConfigurationError(
            f"dark must be None, 'HG', 'MG' or 'LG' (or 0, 1, 2), got {dark!r}"
        ) from None


class DetectorSimulator:
    """A simulated multi-module detector looking at a water jet and crystals.

    Parameters
    ----------
    detector : str
        A detector type with a plug-in (:mod:`pulsetrain.detectors`): ``"AGIPD"`` (1M, 16
        modules), ``"LPD"`` (1M, 16 modules), ``"JUNGFRAU"`` (8 modules) or another one.
    frames : int
        Frames (pulses, or JUNGFRAU memory cells) per train.
    memory_cells : int, optional
        Memory cells of the detector (default 64 for AGIPD, 512 for LPD, 16 for JUNGFRAU).
        Frame ``i`` is stored in cell ``i % memory_cells`` (see :attr:`cell_ids`).
    seed : int
        Everything (constants, signal, noise) is a function of the seed, so the same seed
        gives identical bytes.
    dark : {None, "HG", "MG", "LG"}
        Dark-run mode: no X-rays and the gain forced to that stage.
    modules : sequence of int, optional
        Modules :meth:`train` produces (default all).
    photon_energy_kev : float
        Photon energy in keV.
    detector_distance_m : float
        Sample-detector distance in metres (beam at the geometry origin).
    sample : SampleParameters, optional
        Water ring, hit probability and Bragg peaks.
    gain_model : GainModelParameters, optional
        Response model (default: the detector type's).
    bank_size : int, optional
        Fast path: base frames per memory cell (default 4 for AGIPD and LPD, 2 for JUNGFRAU).
    hit_variants : int
        Fast path: hit overlays per memory cell.
    pulse_spacing : int
        Pulse-ID step between frames (4 = 1.1 MHz in 4.5 MHz slots).
    first_pulse_id : int
        Pulse ID of the first frame.
    clock : TrainClock, optional
        Maps train IDs to timestamps for ``meta`` (default: a clock started now).
    truth_cache_bytes : int
        Bound on the memory of cached per-cell constants.
    recycle_buffers : int
        Fast path: output arrays per module kept for reuse once the caller has dropped them
        (saves page faults); 0 allocates fresh arrays every train.
    """

    def __init__(
        self,
        detector: str = "AGIPD",
        frames: int = 16,
        memory_cells: int | None = None,
        seed: int = 0,
        dark: str | int | None = None,
        modules: Sequence[int] | None = None,
        photon_energy_kev: float = 9.3,
        detector_distance_m: float = 0.2,
        *,
        sample: SampleParameters | None = None,
        gain_model: GainModelParameters | None = None,
        bank_size: int | None = None,
        hit_variants: int = 8,
        pulse_spacing: int = 4,
        first_pulse_id: int = 0,
        clock: TrainClock | None = None,
        truth_cache_bytes: int = 256 * 2**20,
        recycle_buffers: int = 4,
    ):
        self.spec: DetectorSpec = detector_spec(detector)
        self.detector = self.spec.name
        self.frames = int(frames)
        if self.frames < 1:
            raise ConfigurationError(f"frames must be >= 1, got {frames}")
        self.memory_cells = int(memory_cells or self.spec.default_memory_cells)
        if self.memory_cells < 1:
            raise ConfigurationError(f"memory_cells must be >= 1, got {memory_cells}")
        if int(seed) < 0:
            raise ConfigurationError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.dark_stage = _dark_stage(dark)
        self.dark = None if self.dark_stage is None else ("HG", "MG", "LG")[self.dark_stage]
        if modules is None:
            modules = range(self.spec.n_modules)
        self.modules = tuple(int(m) for m in modules)
        for m in self.modules:
            self.spec.source(m)  # validates
        if photon_energy_kev <= 0 or detector_distance_m <= 0:
            raise ConfigurationError("photon energy and detector distance must be > 0")
        self.photon_energy_kev = float(photon_energy_kev)
        self.detector_distance_m = float(detector_distance_m)
        self.sample = sample or SampleParameters()
        self.gain_model = gain_model or self.spec.gain_model
        self.bank_size = int(bank_size or self.spec.default_bank_size)
        self.hit_variants = int(hit_variants)
        if self.bank_size < 1 or self.hit_variants < 1:
            raise ConfigurationError("bank_size and hit_variants must be >= 1")
        self.pulse_spacing = int(pulse_spacing)
        self.first_pulse_id = int(first_pulse_id)
        self.clock = clock or TrainClock()
        self.truth_cache_bytes = int(truth_cache_bytes)
        self.recycle_buffers = int(recycle_buffers)

        self._truths = TruthGenerator(self.spec, self.gain_model, self.seed)
        self._codec = self.spec.codec
        self._keys = self._codec.frame_keys(self.spec.module_shape)
        self._cell_cache: OrderedDict[tuple[int, int], CellTruth] = OrderedDict()
        self._cell_cache_bytes = 0
        self._ring: dict[int, np.ndarray] = {}
        self._banks: dict[int, FrameBank] = {}
        self._lock = threading.RLock()
        self._module_truth: tuple[tuple, ModuleTruth] | None = None

        #: Memory cell of each frame, ``(frames,)`` uint16: ``arange(frames) % memory_cells``.
        self.cell_ids = (np.arange(self.frames) % self.memory_cells).astype(np.uint16)
        self.cell_ids.setflags(write=False)
        #: Pulse ID of each frame, ``(frames,)`` uint64.
        self.pulse_ids = (self.first_pulse_id + self.pulse_spacing * np.arange(self.frames)).astype(
            np.uint64
        )
        self.pulse_ids.setflags(write=False)
        self._cells_used = np.unique(self.cell_ids)
        self._slots = np.searchsorted(self._cells_used, self.cell_ids).astype(np.intp)

    # -- names ------------------------------------------------------------------------------
    def source(self, module: int) -> str:
        """Raw source name of ``module``."""
        return self.spec.source(module)

    @property
    def sources(self) -> list[str]:
        """Raw source names of :attr:`modules`."""
        return [self.source(m) for m in self.modules]

    @property
    def module_shape(self) -> tuple[int, int]:
        """``(slow_scan, fast_scan)`` pixels of a module."""
        return self.spec.module_shape

    def __repr__(self) -> str:
        return (
            f"DetectorSimulator({self.detector!r}, frames={self.frames}, "
            f"memory_cells={self.memory_cells}, seed={self.seed}, dark={self.dark!r}, "
            f"modules={len(self.modules)})"
        )

    # -- physics ----------------------------------------------------------------------------
    def hit_probability(self, sample_position_mm: float | None = None) -> float:
        """Per-pulse crystal-hit probability at a sample-motor position (0 in dark mode)."""
        if self.dark_stage is not None:
            return 0.0
        if sample_position_mm is None:
            sample_position_mm = self.sample.sample_centre_mm
        return self.sample.hit_probability(sample_position_mm)

    def pulse_hits(self, train_id: int, sample_position_mm: float | None = None) -> np.ndarray:
        """``(frames,)`` bool: which pulses of ``train_id`` are crystal hits.

        Pulse ``i`` is a hit when ``u_i < hit_probability(x)`` with ``u_i`` uniform random
        numbers fixed by ``(seed, train_id)``.
        """
        u = stream(self.seed, Stream.HITS, self.spec.key, int(train_id)).random(self.frames)
        return u < self.hit_probability(sample_position_mm)

    def pulse_peaks(self, train_id: int, frame: int) -> Peaks:
        """Bragg peaks (whole detector) that frame ``frame`` of ``train_id`` has if it is a hit."""
        rng = stream(self.seed, Stream.PEAKS, self.spec.key, int(train_id), int(frame))
        return draw_pulse_peaks(rng, self.spec.n_modules, self.spec.module_shape, self.sample)

    def q_map(self, module: int) -> np.ndarray:
        """Momentum transfer ``(ss, fs)`` [1/angstrom] of the pixels of ``module``."""
        return q_map(self.spec, module, self.detector_distance_m, self.photon_energy_kev)

    def expected_ring_photons(self, module: int) -> np.ndarray:
        """Expected water-ring (and background) photons per pixel and pulse, ``(ss, fs)``."""
        module = int(module)
        ring = self._ring.get(module)
        if ring is None:
            self.spec.source(module)
            ring = ring_photons(self.q_map(module), self.sample)
            ring.setflags(write=False)
            self._ring[module] = ring
        return ring

    # -- truth ------------------------------------------------------------------------------
    def _cell_truth(self, module: int, cell: int) -> CellTruth:
        key = (int(module), int(cell))
        with self._lock:
            ct = self._cell_cache.get(key)
            if ct is not None:
                self._cell_cache.move_to_end(key)
                return ct
        ct = self._truths.cell(*key)
        with self._lock:
            self._cell_cache[key] = ct
            self._cell_cache_bytes += ct.nbytes
            while self._cell_cache_bytes > self.truth_cache_bytes and len(self._cell_cache) > 1:
                _, old = self._cell_cache.popitem(last=False)
                self._cell_cache_bytes -= old.nbytes
        return ct

    def _cached_cell(self, module: int, cell: int) -> CellTruth:
        """Constants of one cell: from the cache when there, else computed (not cached)."""
        with self._lock:
            ct = self._cell_cache.get((int(module), int(cell)))
        return self._truths.cell(module, cell) if ct is None else ct

    def truth(self, module: int, cells: Iterable[int] | None = None) -> ModuleTruth:
        """Response constants and bad pixels of ``module`` (computed for this module only).

        Parameters
        ----------
        module : int
            Module number.
        cells : iterable of int, optional
            Memory cells to include (default all ``memory_cells``, so ``offset[:, cellId]``
            indexes by cell ID).

        Returns
        -------
        ModuleTruth
            The last result is cached; treat its arrays as read-only.
        """
        self.spec.source(module)
        cells = tuple(range(self.memory_cells) if cells is None else (int(c) for c in cells))
        key = (int(module), cells)
        with self._lock:
            if self._module_truth is not None and self._module_truth[0] == key:
                return self._module_truth[1]
        t = self._truths.module(int(module), cells, self._cached_cell)
        with self._lock:
            self._module_truth = (key, t)
        return t

    def bad_pixels(self, module: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(dead, noisy, hot)`` ``(ss, fs)`` bool masks of ``module`` (cheap)."""
        self.spec.source(module)
        return self._truths.bad_pixels(int(module))

    def export_truth(
        self,
        path: str | os.PathLike,
        modules: Iterable[int] | None = None,
        cells: Iterable[int] | None = None,
    ) -> None:
        """Write the truth of ``modules`` (default :attr:`modules`) to an HDF5 file.

        One module is computed at a time.  With all 64 AGIPD cells a module takes ~235 MB;
        pass ``cells`` (e.g. ``np.unique(sim.cell_ids)``) to write fewer.  Layout: see
        ``docs/simulator.md``.
        """
        modules = self.modules if modules is None else tuple(int(m) for m in modules)
        cells = tuple(range(self.memory_cells) if cells is None else (int(c) for c in cells))
        export_truth(
            path,
            (self._truths.module(m, cells) for m in modules),
            spec=self.spec,
            attrs={
                "seed": self.seed,
                "memory_cells": self.memory_cells,
                "photon_energy_kev": self.photon_energy_kev,
                "detector_distance_m": self.detector_distance_m,
            },
        )

    # -- exact path -------------------------------------------------------------------------
    def _sample_position(self, sample_position_mm: float | None) -> float:
        if sample_position_mm is None:
            return self.sample.sample_centre_mm
        return float(sample_position_mm)

    def module_train(
        self,
        module: int,
        train_id: int,
        sample_position_mm: float | None = None,
        return_truth: bool = False,
    ) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], SignalTruth]:
        """One module's data of one train, computed exactly from the model (slow).

        Parameters
        ----------
        module : int
            Module number.
        train_id : int
            Train ID (fixes the hits, peaks, photons and noise).
        sample_position_mm : float, optional
            Sample-motor position (default: the sample centre, where hits are most likely).
        return_truth : bool
            Also return the :class:`SignalTruth` (deposited energy and gain stage).

        Returns
        -------
        dict or (dict, SignalTruth)
            ``data[source]`` of this module: ``{key: array}``.
        """
        self.spec.source(module)
        module, train_id = int(module), int(train_id)
        x = self._sample_position(sample_position_mm)
        hits = self.pulse_hits(train_id, x)
        ny, nx = self.spec.module_shape
        analog = np.empty((self.frames, ny, nx), np.uint16)
        digital = np.empty((self.frames, ny, nx), np.uint16)
        energy = np.zeros((self.frames, ny, nx), np.float32) if return_truth else None
        stages = np.empty((self.frames, ny, nx), np.uint8) if return_truth else None
        rng = stream(self.seed, Stream.SIGNAL, self.spec.key, train_id, module)
        for f in range(self.frames):
            ct = self._cell_truth(module, int(self.cell_ids[f]))
            if self.dark_stage is not None:
                a, d, st = self._respond(None, ct, rng)
                e = None
            else:
                photons = rng.poisson(self.expected_ring_photons(module))
                if hits[f]:
                    peaks = self.pulse_peaks(train_id, f).on_module(module)
                    pix, mu = render_peaks(peaks, self.spec.module_shape, self.sample)
                    photons.reshape(-1)[pix] += rng.poisson(mu)
                e = photons.astype(np.float32)
                e *= np.float32(self.photon_energy_kev)
                a, d, st = self._respond(e, ct, rng)
            analog[f], digital[f] = a, d
            if return_truth:
                if e is not None:
                    energy[f] = e
                stages[f] = st
        data = self._codec.encode(analog, digital)
        data.update(self._frame_info(train_id))
        if return_truth:
            return data, SignalTruth(energy, stages, hits, self.cell_ids.copy())
        return data

    def _respond(self, energy, ct, rng, pixels=None):
        return respond(
            energy,
            ct,
            rng,
            self.gain_model.adc_max,
            forced_stage=self.dark_stage,
            pixels=pixels,
            digital_noise=self.gain_model.digital_noise_adu > 0,
        )

    def _frame_info(self, train_id: int) -> dict[str, np.ndarray]:
        t0 = self.clock.timestamp(train_id)
        timestamps = t0 + self.pulse_ids.astype(np.float64) * PULSE_SLOT_S
        return self._codec.frame_info(
            train_id, self.cell_ids, self.pulse_ids, timestamps, self.spec.module_shape
        )

    # -- fast path --------------------------------------------------------------------------
    def _bank(self, module: int) -> FrameBank:
        bank = self._banks.get(module)
        if bank is None:
            with self._lock:
                bank = self._banks.get(module)
                if bank is None:
                    bank = self._build_bank(module)
                    self._banks[module] = bank
        return bank

    def _build_bank(self, module: int) -> FrameBank:
        dark = self.dark_stage is not None
        n_variants = 0 if dark else self.hit_variants
        bank = FrameBank(
            self._keys,
            len(self._cells_used),
            self.bank_size,
            n_variants,
            self.frames,
            self.recycle_buffers,
        )
        rng = stream(self.seed, Stream.BANK, self.spec.key, module)
        lam = None if dark else self.expected_ring_photons(module)
        e_ph = np.float32(self.photon_energy_kev)
        npix = self.spec.pixels_per_module
        for slot, cell in enumerate(self._cells_used):
            ct = self._cell_truth(module, int(cell))
            for j in range(self.bank_size):
                if dark:
                    a, d, _ = self._respond(None, ct, rng)
                else:
                    e = rng.poisson(lam).astype(np.float32)
                    e *= e_ph
                    a, d, _ = self._respond(e, ct, rng)
                frame = self._codec.encode(a[None], d[None])
                bank.set_base(slot, j, {k: v[0] for k, v in frame.items()})
            for v in range(n_variants):
                peaks = draw_module_peaks(
                    rng, module, self.spec.n_modules, self.spec.module_shape, self.sample
                )
                pix, mu = render_peaks(peaks, self.spec.module_shape, self.sample)
                photons = rng.poisson(lam.reshape(-1)[pix]) + rng.poisson(mu)
                e = photons.astype(np.float32) * e_ph
                a, d, _ = self._respond(e, ct, rng, pixels=pix)
                bank.set_overlay(slot, v, self._codec.encode_pixels(pix, a, d, npix))
        log.debug(
            "built fast-path bank of %s module %d: %.1f MB",
            self.detector,
            module,
            bank.nbytes / 2**20,
        )
        return bank

    def prepare(self, modules: Iterable[int] | None = None) -> None:
        """Build the fast-path banks now (otherwise built on a module's first fast train)."""
        for m in self.modules if modules is None else modules:
            self.spec.source(m)
            self._bank(int(m))

    @property
    def bank_nbytes(self) -> int:
        """Memory held by the fast-path banks built so far, in bytes."""
        return sum(b.nbytes for b in self._banks.values())

    def module_train_fast(
        self, module: int, train_id: int, sample_position_mm: float | None = None
    ) -> dict[str, np.ndarray]:
        """One module's data of one train from the fast path (bank of precomputed frames)."""
        return self._module_train_fast(
            int(module), int(train_id), self.pulse_hits(train_id, sample_position_mm)
        )

    def _module_train_fast(
        self, module: int, train_id: int, hits: np.ndarray, alloc: Callable | None = None
    ) -> dict:
        self.spec.source(module)
        bank = self._bank(module)
        rng = stream(self.seed, Stream.FAST, self.spec.key, train_id, module)
        choice = rng.integers(0, self.bank_size, self.frames)
        variant = rng.integers(0, max(bank.n_variants, 1), self.frames)
        data = bank.assemble(
            self._slots,
            choice,
            hits,
            variant,
            None if alloc is None else lambda key, shape, dtype: alloc(module, key, shape, dtype),
        )
        data.update(self._frame_info(train_id))
        return data

    # -- whole trains -----------------------------------------------------------------------
    def train(
        self,
        train_id: int,
        sample_position_mm: float | None = None,
        *,
        modules: Iterable[int] | None = None,
        exact: bool = False,
        timestamp: float | None = None,
        alloc: Callable[[int, str, tuple, np.dtype], np.ndarray] | None = None,
    ) -> tuple[dict[str, dict], dict[str, dict]]:
        """All modules' data of one train, as ``(data, meta)``.

        Parameters
        ----------
        train_id : int
            Train ID.
        sample_position_mm : float, optional
            Sample-motor position (default: the sample centre).
        modules : iterable of int, optional
            Modules to produce (default :attr:`modules`).
        exact : bool
            Use the exact path instead of the bank (slow; fresh noise every train).
        timestamp : float, optional
            Timestamp for ``meta`` (default from :attr:`clock`).
        alloc : callable, optional
            ``alloc(module, key, shape, dtype)`` gives the arrays the fast path fills (for
            example a pipeline output's shared memory); default: recycled buffers.

        Returns
        -------
        (dict, dict)
            ``data[source][key]`` and ``meta[source]`` in the Karabo bridge convention.
        """
        train_id = int(train_id)
        modules = self.modules if modules is None else tuple(int(m) for m in modules)
        x = self._sample_position(sample_position_mm)
        hits = self.pulse_hits(train_id, x)
        ts_ns = self.clock.timestamp_ns(train_id) if timestamp is None else round(timestamp * 1e9)
        data, meta = {}, {}
        for m in modules:
            src = self.source(m)
            if exact:
                data[src] = self.module_train(m, train_id, x)
            else:
                data[src] = self._module_train_fast(m, train_id, hits, alloc)
            meta[src] = source_meta(src, train_id, ts_ns)
        return data, meta
