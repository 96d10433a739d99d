"""Online analysis devices: azimuthal integration and hit finding on matched detector trains.

Both devices take the whole-detector trains a :class:`~pulsetrain.devices.matcher.TrainMatcher`
sends (one source per module) and call the pure functions of :mod:`pulsetrain.analysis` module by
module, so no (pulses, 16, 512, 128) copy of the detector is ever made: per-module results (the
sums and pixel counts of every radial bin, the peaks of every pulse) simply add up.

Input data
    By default the corrected sources ``SPB_DET_AGIPD1M-1/CORR/{m}CH0:output`` with ``image.data``
    float32 (pulses, 512, 128) and ``image.mask`` uint32 (nonzero = bad pixel).  The module number
    ``m`` comes from the source name through ``source_pattern``.  For development without a
    correction pipeline, ``data_kind = 'raw'`` reads the raw ``.../DET/{m}CH0:xtdf`` sources
    (pulses, 2, 512, 128) uint16 and analyses the analog plane minus a per-pixel median over the
    first ``dark_frames`` frames of each module (values in ADU, gain stages ignored: a rough
    stand-in, not a calibration).

A train whose data cannot be analysed (missing keys, wrong shapes) is counted in ``badTrains``
and described in ``lastError``; the device keeps running.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import numpy as np

from pulsetrain.analysis import AzimuthalIntegrator, HitRateMeter, count_peaks
from pulsetrain.errors import ConfigurationError, DataShapeError, PropertyError
from pulsetrain.protocol import train_id_of
from pulsetrain.runtime.device import Device, Property, State, slot

__all__ = ["AzimuthalIntegration", "HitFinder", "ModuleFrames", "source_regex"]

CORRECTED_PATTERN = "SPB_DET_AGIPD1M-1/CORR/{m}CH0:output"
RAW_PATTERN = "SPB_DET_AGIPD1M-1/DET/{m}CH0:xtdf"
MODULE_SHAPE = (512, 128)
N_MODULES = 16


def source_regex(pattern: str) -> re.Pattern:
    """Compile a source pattern with one ``{m}`` placeholder (the module number) into a regex.

    Parameters
    ----------
    pattern : str
        E.g. ``'SPB_DET_AGIPD1M-1/CORR/{m}CH0:output'``; everything else matches literally.

    Raises
    ------
    ConfigurationError
        The pattern does not hold exactly one ``{m}``.
    """
    if pattern.count("{m}") != 1:
        raise ConfigurationError(
            f"source pattern {pattern!r} must contain exactly one '{{m}}' (the module number)"
        )
    before, after = pattern.split("{m}")
    return re.compile(f"^{re.escape(before)}(?P<m>[0-9]+){re.escape(after)}$")


class ModuleFrames:
    """Pick the detector modules out of a train and give each one's frames as float32.

    Parameters
    ----------
    pattern : str
        Source pattern with ``{m}``, see :func:`source_regex`; ``''``: ``module_of`` decides.
    kind : {'corrected', 'raw'}
        Corrected frames (pulses, 512, 128) or raw frames (pulses, 2, 512, 128) whose analog plane
        is used minus a per-pixel median dark estimate.
    data_key, mask_key : str
        Keys of the frames and of the bad-pixel mask (``''``: no mask).
    dark_frames : int
        Raw data: frames per module collected for the median estimate.
    module_shape : tuple of int
        ``(ss, fs)`` of one module (the detector plug-in's).
    n_modules : int
        Modules of the detector.
    module_of : callable, optional
        ``module_of(source)``: module number of a source, or None (used without ``pattern``).
    """

    def __init__(
        self,
        pattern: str,
        kind: str = "corrected",
        data_key: str = "image.data",
        mask_key: str = "image.mask",
        dark_frames: int = 32,
        *,
        module_shape: tuple[int, int] = MODULE_SHAPE,
        n_modules: int = N_MODULES,
        module_of: Any = None,
    ) -> None:
        if kind not in ("corrected", "raw"):
            raise ConfigurationError(f"data kind must be 'corrected' or 'raw', got {kind!r}")
        if not pattern and module_of is None:
            raise ConfigurationError("source pattern: empty, and no detector to name the sources")
        self.regex = source_regex(pattern) if pattern else None
        self._module_of = module_of
        self.module_shape = tuple(module_shape)
        self.n_modules = int(n_modules)
        self.kind = kind
        self.data_key = data_key
        self.mask_key = mask_key
        self.dark_frames = int(dark_frames)
        self._dark_stack: dict[int, list[np.ndarray]] = {}
        self.dark: dict[int, np.ndarray] = {}
        self._names: dict[str, int | None] = {}

    def module_of(self, source: str) -> int | None:
        """Module number of a source name, or None if it is not a module source."""
        if source not in self._names:
            if self.regex is None:
                m = self._module_of(source)
            else:
                match = self.regex.match(source)
                m = int(match["m"]) if match else None
            self._names[source] = m if m is not None and 0 <= m < self.n_modules else None
        return self._names[source]

    def sources(self, data: dict) -> dict[int, str]:
        """Module number → source name of the module sources in ``data``."""
        found = {}
        for src in data:
            m = self.module_of(src)
            if m is not None:
                found[m] = src
        return dict(sorted(found.items()))

    def frames(self, props: dict, module: int) -> tuple[np.ndarray, np.ndarray | None] | None:
        """``(frames float32 (n, 512, 128), mask or None)`` of one module's data.

        Returns None while a raw module's dark estimate is still being collected.

        Raises
        ------
        DataShapeError
            Missing key or wrong shape.
        """
        try:
            img = props[self.data_key]
        except KeyError:
            raise DataShapeError(f"module {module}: no key {self.data_key!r}") from None
        img = np.asarray(img)
        if self.kind == "raw":
            if img.ndim != 4 or img.shape[1] != 2 or img.shape[2:] != self.module_shape:
                raise DataShapeError(
                    f"module {module}: raw {self.data_key} must be (pulses, 2, 512, 128), "
                    f"got {img.shape}"
                )
            analog = img[:, 0]
            dark = self.dark.get(module)
            if dark is None:
                stack = self._dark_stack.setdefault(module, [])
                stack.append(np.array(analog, dtype=np.float32))
                if sum(len(s) for s in stack) < self.dark_frames:
                    return None
                dark = np.median(np.concatenate(stack), axis=0).astype(np.float32)
                self.dark[module] = dark
                del self._dark_stack[module]
            frames = analog.astype(np.float32)
            frames -= dark
            return frames, None
        if img.ndim != 3 or img.shape[1:] != self.module_shape:
            ny, nx = self.module_shape
            raise DataShapeError(
                f"module {module}: {self.data_key} must be (pulses, {ny}, {nx}), got {img.shape}"
            )
        if img.dtype.kind != "f":
            img = img.astype(np.float32)
        mask = None
        if self.mask_key:
            mask = props.get(self.mask_key)
            if mask is not None:
                mask = np.asarray(mask)
                if mask.shape != img.shape:
                    raise DataShapeError(
                        f"module {module}: mask shape {mask.shape} != data shape {img.shape}"
                    )
        return np.ascontiguousarray(img), mask


def _first_meta(meta: dict, sources: list[str]) -> dict:
    for src in sources:
        if src in meta:
            return meta[src]
    return next(iter(meta.values()), {})


def _pulse_keys(props: dict) -> dict[str, Any]:
    out = {}
    for key in ("image.pulseId", "image.cellId"):
        if key in props:
            out[key] = np.asarray(props[key])
    return out


class _ModuleAnalysis(Device):
    """Shared input handling of the analysis devices (not registered as a device class)."""

    inputs = ("input",)
    outputs = ("output",)

    detector = Property(
        str,
        "AGIPD",
        access="init",
        description="detector type (its plug-in gives the module shape, sources and geometry)",
    )
    source_pattern = Property(
        str,
        CORRECTED_PATTERN,
        access="init",
        description="module source names, '{m}' = module number ('': the detector's own)",
    )
    data_kind = Property(
        str,
        "corrected",
        options=("corrected", "raw"),
        access="init",
        description="corrected frames, or raw frames minus a median dark "
        "estimate (development only)",
    )
    data_key = Property(str, "image.data", access="init", description="key of the frames")
    mask_key = Property(
        str,
        "image.mask",
        access="init",
        description="key of the bad-pixel mask, nonzero = bad ('' = none)",
    )
    use_mask = Property(bool, True, description="leave out pixels flagged in the mask")
    dark_frames = Property(
        int,
        32,
        minimum=1,
        maximum=10000,
        access="init",
        description="raw data: frames per module for the median dark estimate",
    )
    output_source = Property(
        str, "", access="init", description="source name of the results (default per class)"
    )

    processedTrains = Property(int, 0, access="readonly", description="trains analysed")
    badTrains = Property(
        int, 0, access="readonly", description="trains that could not be analysed (see lastError)"
    )
    incompleteTrains = Property(
        int, 0, access="readonly", description="trains analysed with some modules missing"
    )
    skippedTrains = Property(
        int, 0, access="readonly", description="raw data: trains used only for the dark estimate"
    )
    lastError = Property(str, "", access="readonly", description="why the last bad train was bad")
    lastTrainId = Property(int, 0, access="readonly")
    modulesUsed = Property(int, 0, access="readonly", description="modules in the last train")
    processingTime = Property(
        float, 0.0, unit="s", access="readonly", description="time to analyse the last train"
    )

    default_output_source = "SPB_DET_AGIPD1M-1/ANALYSIS"

    def initialize(self) -> None:
        from pulsetrain.detectors import get_detector

        self.plugin = get_detector(self.detector)
        kind = "/DET/" if self.data_kind == "raw" else "/CORR/"

        def module_of(source: str) -> int | None:
            return self.plugin.module_of(source) if kind in source else None

        self.modules = ModuleFrames(
            self.source_pattern,
            self.data_kind,
            self.data_key,
            self.mask_key if self.data_kind == "corrected" else "",
            self.dark_frames,
            module_shape=self.plugin.module_shape,
            n_modules=self.plugin.n_modules,
            module_of=module_of,
        )
        self.out_source = self.output_source or self.default_output_source
        self._expected_modules = 0
        self.setup()
        self.set_state(State.PROCESSING, f"{self.data_kind} data from {self.source_pattern}")

    def setup(self) -> None:
        """Build what the analysis needs (called at start and after reconfiguration)."""

    def analyse(
        self,
        frames: dict[int, tuple[np.ndarray, np.ndarray | None]],
        n_pulses: int,
        train_id: int | None,
    ) -> dict[str, Any]:
        """Analyse one train's modules; return the output keys."""
        raise NotImplementedError

    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        t0 = time.perf_counter()
        sources = self.modules.sources(data)
        if not sources:
            self._bad(f"no source matches {self.source_pattern!r} (got {sorted(data)[:4]})")
            return
        frames: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        waiting = False
        try:
            for m, src in sources.items():
                got = self.modules.frames(data[src], m)
                if got is None:
                    waiting = True
                    continue
                img, mask = got
                frames[m] = (img, mask if self.use_mask else None)
            if waiting:
                self.count("skippedTrains")
                return
            lengths = {f.shape[0] for f, _ in frames.values()}
            if len(lengths) != 1:
                raise DataShapeError(f"modules have different numbers of pulses: {sorted(lengths)}")
            n_pulses = lengths.pop()
            tid = train_id_of(meta)
            out = self.analyse(frames, n_pulses, tid)
        except DataShapeError as exc:
            self._bad(str(exc))
            return
        self._expected_modules = max(self._expected_modules, len(frames))
        if len(frames) < self._expected_modules:
            self.count("incompleteTrains")
        first = data[sources[min(sources)]]
        out.update(_pulse_keys(first))
        src_meta = dict(_first_meta(meta, list(sources.values())))
        src_meta["source"] = self.out_source
        self.write("output", {self.out_source: out}, {self.out_source: src_meta})
        self.count("processedTrains")
        self.record(modulesUsed=len(frames))
        if tid is not None:
            self.record(lastTrainId=tid)
        self.publish(time.perf_counter() - t0)

    def publish(self, elapsed: float) -> None:
        """Update the read-only properties after a train (fires change events)."""
        self.update(processingTime=elapsed)

    def _bad(self, message: str) -> None:
        self.count("badTrains")
        if message != self.lastError:
            self.log.warning("bad train: %s", message)
        self.update(lastError=message)


class AzimuthalIntegration(_ModuleAnalysis):
    """Radial profiles of every pulse of AGIPD-1M trains (azimuthal integration).

    Each pixel's radial bin is computed once from the detector geometry (EXtra-geom quadrant
    positions, distance, beam centre, photon energy); per train the device sums each module's
    pixels into the bins (:class:`pulsetrain.analysis.AzimuthalIntegrator`, no pixel splitting,
    NaN and masked pixels left out) and writes, on source ``SPB_DET_AGIPD1M-1/AZIMUTHAL``:
    ``azimuthal.intensity`` (pulses, npt) float32, ``azimuthal.radial`` (npt,) float64,
    ``azimuthal.mean`` (npt,) float32 (all pulses' pixels pooled), ``azimuthal.unit`` and the
    pulse and cell IDs.
    """

    default_output_source = "SPB_DET_AGIPD1M-1/AZIMUTHAL"

    npt = Property(int, 512, minimum=2, maximum=10000, description="number of radial bins")
    unit = Property(
        str,
        "q_A^-1",
        options=("q_A^-1", "q_nm^-1", "2th_deg", "2th_rad", "r_mm"),
        description="radial unit",
    )
    radial_min = Property(
        float,
        0.0,
        description="lower end of the radial range (unit); min = max = 0: whole detector",
    )
    radial_max = Property(float, 0.0, description="upper end of the radial range (unit)")
    distance = Property(
        float, 0.2, unit="m", minimum=0.01, maximum=20.0, description="sample-detector distance"
    )
    photon_energy = Property(float, 9.3, unit="keV", minimum=0.1, maximum=100.0)
    beam_centre_x = Property(
        float, 0.0, unit="px", description="beam position from the geometry origin (x)"
    )
    beam_centre_y = Property(
        float, 0.0, unit="px", description="beam position from the geometry origin (y)"
    )
    quad_positions = Property(
        list,
        [],
        access="init",
        description="4 (x, y) quadrant positions in the geometry's unit (AGIPD px, LPD mm; "
        "empty: the detector's standard)",
    )

    meanProfile = Property(
        np.ndarray,
        np.zeros(0, np.float32),
        access="readonly",
        description="mean radial profile of the last train",
    )
    radialAxis = Property(
        np.ndarray, np.zeros(0), access="readonly", description="bin centres of the profiles (unit)"
    )

    _geometry_keys = (
        "npt",
        "unit",
        "radial_min",
        "radial_max",
        "distance",
        "photon_energy",
        "beam_centre_x",
        "beam_centre_y",
    )

    def setup(self) -> None:
        extra = {"quad_positions": self.quad_positions} if self.quad_positions else {}
        geom = self.plugin.geometry(
            distance_m=self.distance,
            beam_centre_px=(self.beam_centre_x, self.beam_centre_y),
            **extra,
        )
        rmap = geom.radial_map(self.unit, self.photon_energy)
        if self.radial_min == 0.0 and self.radial_max == 0.0:
            finite = rmap[np.isfinite(rmap)]
            lo, hi = float(finite.min()), float(finite.max())
        else:
            lo, hi = self.radial_min, self.radial_max
        if not hi > lo:
            raise ConfigurationError(f"radial range needs min < max, got ({lo}, {hi})")
        self._range = (lo, hi)
        self._rmap = rmap
        self._integrators: dict[int, AzimuthalIntegrator] = {}
        radial = lo + (np.arange(self.npt) + 0.5) * (hi - lo) / self.npt
        self.update(radialAxis=radial)
        self.log.info("azimuthal integration: %d bins over %s %s", self.npt, self._range, self.unit)

    def on_set(self, key: str, value: Any) -> None:
        if key in self._geometry_keys:
            try:
                self.setup()
            except ConfigurationError as exc:
                raise PropertyError(f"{key}: {exc}") from exc

    def _integrator(self, module: int) -> AzimuthalIntegrator:
        integ = self._integrators.get(module)
        if integ is None:
            integ = AzimuthalIntegrator(self._rmap[module], self.npt, self._range, unit=self.unit)
            self._integrators[module] = integ
        return integ

    def analyse(self, frames: dict, n_pulses: int, train_id: int | None) -> dict[str, Any]:
        sums = np.zeros((n_pulses, self.npt))
        counts = np.zeros((n_pulses, self.npt), dtype=np.int64)
        # One serial (GIL-free) kernel call per module frame: measured faster here than the
        # parallel stack kernel per module (a parallel region per call costs more than it
        # gains on 65k-pixel frames) and than stacking the modules into one array first.
        for m, (img, mask) in frames.items():
            integ = self._integrator(m)
            for f in range(n_pulses):
                res = integ.integrate(img[f], mask=None if mask is None else mask[f])
                sums[f] += res.sum
                counts[f] += res.count
        with np.errstate(invalid="ignore", divide="ignore"):
            intensity = (sums / counts).astype(np.float32)
            mean = (sums.sum(axis=0) / counts.sum(axis=0)).astype(np.float32)
        self._last_mean = mean
        return {
            "azimuthal.intensity": intensity,
            "azimuthal.radial": np.asarray(self.radialAxis, dtype=np.float64),
            "azimuthal.mean": mean,
            "azimuthal.unit": self.unit,
        }

    def publish(self, elapsed: float) -> None:
        self.update(processingTime=elapsed, meanProfile=self._last_mean)


class HitFinder(_ModuleAnalysis):
    """Per-pulse hit finding (Bragg-peak counting) and the hit rate over recent trains.

    A peak is a local maximum above ``threshold`` (:func:`pulsetrain.analysis.count_peaks`),
    counted per module and added over the detector; a pulse with at least ``min_peaks`` peaks is
    a hit.  Output on source ``SPB_DET_AGIPD1M-1/HITS``: ``hits.nPeaks`` (pulses,) int32,
    ``hits.isHit`` (pulses,) bool, ``hits.nHits``, ``hits.nPulses``, ``hits.hitRate`` (this
    train), ``hits.hitRateWindow`` (rolling, over ``window_trains`` train IDs) and the pulse and
    cell IDs.  The feedback controller reads this output.
    """

    default_output_source = "SPB_DET_AGIPD1M-1/HITS"

    threshold = Property(
        float, 200.0, description="peak pixels must be above this (corrected: keV; raw: ADU)"
    )
    min_peaks = Property(
        int, 10, minimum=0, maximum=100000, description="peaks a pulse needs to be a hit"
    )
    min_pixels = Property(
        int,
        1,
        minimum=1,
        maximum=9,
        description="pixels above threshold a peak needs in its 3x3 block",
    )
    method = Property(
        str,
        "maxima",
        options=("maxima", "pixels"),
        description="count local maxima, or all pixels above threshold",
    )
    window_trains = Property(
        int,
        10,
        minimum=1,
        maximum=100000,
        description="trains (by train ID) in the rolling hit rate",
    )

    hitRate = Property(
        float,
        0.0,
        access="readonly",
        description="hits / pulses over the last window_trains trains",
    )
    hitRateTrain = Property(float, 0.0, access="readonly", description="hit rate of the last train")
    hits = Property(int, 0, access="readonly", description="hits since start or reset")
    pulses = Property(int, 0, access="readonly", description="pulses since start or reset")

    def setup(self) -> None:
        self.meter = HitRateMeter(self.window_trains)

    def on_set(self, key: str, value: Any) -> None:
        if key == "window_trains":
            self.meter = HitRateMeter(int(value))

    def analyse(self, frames: dict, n_pulses: int, train_id: int | None) -> dict[str, Any]:
        n_peaks = np.zeros(n_pulses, dtype=np.int64)
        for img, mask in frames.values():
            n_peaks += count_peaks(
                img[:, None],
                self.threshold,
                mask=None if mask is None else mask[:, None],
                method=self.method,
                min_pixels=self.min_pixels,
            )
        is_hit = n_peaks >= self.min_peaks
        n_hits = int(np.count_nonzero(is_hit))
        self._train = (n_hits, n_pulses)
        self.meter.add_counts(n_hits, n_pulses, train_id)
        rate = self.meter.hit_rate
        return {
            "hits.nPeaks": n_peaks.astype(np.int32),
            "hits.isHit": is_hit,
            "hits.nHits": n_hits,
            "hits.nPulses": n_pulses,
            "hits.hitRate": n_hits / n_pulses if n_pulses else float("nan"),
            "hits.hitRateWindow": 0.0 if math.isnan(rate) else float(rate),
        }

    def publish(self, elapsed: float) -> None:
        n_hits, n_pulses = self._train
        rate = self.meter.hit_rate
        self.update(
            processingTime=elapsed,
            hitRate=0.0 if math.isnan(rate) else float(rate),
            hitRateTrain=n_hits / n_pulses if n_pulses else 0.0,
            hits=self.hits + n_hits,
            pulses=self.pulses + n_pulses,
        )

    @slot(description="Zero the hit counters and forget the rolling window")
    def reset_counters(self) -> None:
        """Zero ``hits`` and ``pulses`` and empty the rolling hit-rate window."""
        self.meter.reset()
        self.update(hits=0, pulses=0, hitRate=0.0, hitRateTrain=0.0)
