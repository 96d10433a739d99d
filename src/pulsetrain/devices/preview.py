"""``PreviewAssembler``: assembled, downsampled uint8 preview images of every train, for displays.

The device does, once per train on the server side, the heavy work a live view needs: it places
the 16 AGIPD-1M modules with the detector geometry, bins the image by an integer factor, and
scales it to uint8 with colour limits (fixed, or percentiles of the train's data), linear or
logarithmic.  Displays (the web GUI, a notebook, any bridge client) then only copy small
uint8 arrays — never redo the work per browser.

Input: matched trains holding the module sources, corrected
(``SPB_DET_AGIPD1M-1/CORR/{m}CH0:output``, ``image.data`` float32 ``(frames, 512, 128)``) or raw
(``SPB_DET_AGIPD1M-1/DET/{m}CH0:xtdf``, ``image.data`` uint16 ``(frames, 2, 512, 128)``, of which
plane ``raw_plane`` — the analog signal — is shown).  Missing modules are left empty.

The read-only property ``pixelMap`` maps every preview pixel to a detector pixel (module, ASIC,
pixel for a hover read-out; :func:`pulsetrain.geometry.preview.pixel_location`).

Output (one source, ``output_source``, default ``SPB_DET_AGIPD1M-1/PREVIEW``):

============================  ===================================================================
``preview.images``            uint8 ``(pulses, H, W)``, row 0 at the top, seen along the beam;
                              0: no detector pixel (gap, missing module), 1..255: vmin..vmax
``preview.pulseIds``          uint64 ``(pulses,)`` (from ``image.pulseId``, else 0..n-1)
``preview.cellIds``           uint16 ``(pulses,)`` (from ``image.cellId``, else 0..n-1)
``preview.vmin/vmax``         float64: the colour limits used (data units; both > 0 for log)
``preview.scale``             ``"linear"`` or ``"log"``
``preview.autoLevels``        bool: whether the limits are percentiles of this train
``preview.downsample``        int: binning factor
``preview.trainId``           uint64: the train ID
``preview.modulesPresent``    bool ``(16,)``
``preview.beamCentre``        float64 ``(2,)``: beam (y, x) in output pixels (edge coordinates)
``preview.fullShape`` ...     physical units and geometry: ``fullShape``, ``pixelSize`` (mm),
                              ``extentMm``, ``beamCentreMm``, ``distance``, ``photonEnergy``,
                              ``qRings``, ``qRingRadiiPx/Mm``, ``unit``, ``geometryVersion``
                              (definitions: ``docs/analysis-devices.md``)
``preview.values``            float32 ``(pulses, H, W)`` assembled values (if ``send_values``)
``profile.radial``            float32 ``(npt,)``: q [1/Å] bin centres (if ``profile_bins`` > 0)
``profile.intensity``         float32 ``(pulses, npt)``: azimuthal mean per pulse (idem)
============================  ===================================================================
"""

from __future__ import annotations

import math
import re
import threading
import time
from typing import Any

import numpy as np

from pulsetrain.devices.quadrant_geometry import QuadrantGeometry
from pulsetrain.errors import ConfigurationError, PropertyError
from pulsetrain.protocol import make_meta, train_id_of
from pulsetrain.runtime.device import Device, Property, State

__all__ = ["DEFAULT_SOURCE_PATTERN", "PreviewAssembler"]

#: Matches corrected and raw AGIPD-1M module sources; group 1 is the module number.
DEFAULT_SOURCE_PATTERN = r"^SPB_DET_AGIPD1M-1/(?:CORR|DET)/(\d+)CH0:(?:output|xtdf)$"

#: Pixels sampled per train for automatic colour limits (about; an even grid of every k-th row
#: and column, k chosen per train), so that the percentiles cost ~1 ms whatever the train size.
_LEVEL_SAMPLE = 65536


class PreviewAssembler(QuadrantGeometry, Device):
    """Assemble, downsample and scale each train's AGIPD-1M frames to uint8 preview images.

    Heavy work happens here once per train, so that any number of displays can show the
    detector by copying small uint8 arrays.  See the module documentation for the output keys.
    """

    inputs = ("input",)
    outputs = ("output",)

    detector = Property(
        str, "AGIPD", access="init", description="detector type (its plug-in: geometry, modules)"
    )
    source_pattern = Property(
        str,
        DEFAULT_SOURCE_PATTERN,
        access="init",
        description="regex of the module sources; group 1 is the module number (0..15); "
        "'': the detector plug-in's own source names",
    )
    data_key = Property(str, "image.data", access="init", description="key of the module frames")
    raw_plane = Property(
        int,
        0,
        minimum=0,
        maximum=1,
        access="init",
        description="plane of 4-D raw data to show (0: analog, 1: gain)",
    )
    output_source = Property(
        str,
        "SPB_DET_AGIPD1M-1/PREVIEW",
        access="init",
        description="source name of the preview in the output trains",
    )
    detector_distance = Property(
        float,
        0.2,
        minimum=0.01,
        maximum=20.0,
        unit="m",
        description="sample-detector distance (profile, q rings)",
    )
    photon_energy = Property(
        float,
        9.3,
        minimum=0.1,
        maximum=100.0,
        unit="keV",
        description="photon energy (profile, q rings)",
    )
    q_rings = Property(
        list,
        [1.0, 2.0, 3.0],
        unit="1/Å",
        description="q of the rings whose radii the output gives (preview.qRingRadiiPx)",
    )
    value_unit = Property(
        str,
        "auto",
        options=("auto", "ADU", "keV", "photons"),
        description="unit label of the values (auto: ADU for raw input, keV for corrected)",
    )
    send_values = Property(
        bool, False, description="also send the assembled values (preview.values, float32)"
    )
    profile_bins = Property(
        int,
        0,
        minimum=0,
        maximum=10000,
        access="init",
        description="bins of a per-pulse azimuthal profile in q (0: none)",
    )

    downsample = Property(
        int, 2, minimum=1, maximum=16, description="integer binning factor of the preview image"
    )
    vmin = Property(float, 0.0, description="lower colour limit (data units) when not auto")
    vmax = Property(float, 10000.0, description="upper colour limit (data units) when not auto")
    auto_levels = Property(
        bool, True, description="colour limits from percentiles of each train's data"
    )
    auto_percentiles = Property(
        list, [1.0, 99.8], unit="%", description="lower and upper percentile for auto levels"
    )
    scale = Property(str, "linear", options=("linear", "log"), description="colour scale")
    max_pulses = Property(
        int,
        64,
        minimum=0,
        maximum=2700,
        description="pulses previewed per train, from the first (0: all)",
    )

    processingTime = Property(
        float, 0.0, access="readonly", unit="s", description="time to make the last train's preview"
    )
    meanProcessingTime = Property(
        float,
        0.0,
        access="readonly",
        unit="s",
        description="mean processing time over the last 50 trains",
    )
    lastTrainId = Property(int, 0, access="readonly", description="last train previewed")
    pulsesOut = Property(int, 0, access="readonly", description="pulses in the last preview")
    imageShape = Property(list, [], access="readonly", description="preview image (H, W)")
    levels = Property(list, [], access="readonly", description="colour limits of the last train")
    modulesFound = Property(int, 0, access="readonly", description="modules in the last train")
    skippedTrains = Property(
        int, 0, access="readonly", description="trains without module data (nothing written)"
    )
    only_when_watched = Property(
        bool,
        False,
        description="make previews only while a display (an input) is connected to the output",
    )
    unwatchedTrains = Property(
        int,
        0,
        access="readonly",
        description="trains not previewed because no display was connected to the output",
    )
    pixelMap = Property(
        np.ndarray,
        np.zeros((0, 0), np.int32),
        access="readonly",
        description="flat detector index (module·ss·fs size + ss·fs size + fs) of each preview pixel "
        "(−1: gap); changes with geometryVersion",
    )
    geometryVersion = Property(
        int, 0, access="readonly", description="incremented whenever pixelMap changes"
    )

    # ------------------------------------------------------------ lifecycle
    def initialize(self) -> None:
        try:
            self._source_re = re.compile(self.source_pattern) if self.source_pattern else None
        except re.error as exc:
            raise ConfigurationError(f"source_pattern is not a valid regex: {exc}") from None
        if self._source_re is not None and self._source_re.groups < 1:
            raise ConfigurationError("source_pattern needs a group capturing the module number")
        self._check_percentiles(self.auto_percentiles)
        try:
            self._check_q_rings(self.q_rings)
        except PropertyError as exc:
            raise ConfigurationError(str(exc)) from None
        from pulsetrain.detectors import get_detector

        plugin = self._plugin = get_detector(self.detector)
        self._n_modules, self._module_shape = plugin.n_modules, tuple(plugin.module_shape)
        quads, beam_centre = self.geometry_args()
        self._geometry = plugin.geometry(
            **({"quad_positions": quads} if quads else {}),
            distance_m=self.detector_distance,
            beam_centre_px=beam_centre,
        )
        self._build_assembler(self.downsample)
        self._build_integrator()
        self._frame = np.empty((self._n_modules, *self._module_shape), dtype=np.float32)
        self._times: list[float] = []
        threading.Thread(
            target=self._warm_up, name=f"{self.device_id}:warm-up", daemon=True
        ).start()
        self.set_state(State.ON)

    def _warm_up(self) -> None:
        """Run the numba kernels once on an empty frame, off the device's thread.

        numba loads (or, without its cache, compiles) a kernel at its first call: a second or
        more, several on a loaded machine.  Done here, at the start, it is not paid by the first
        train a display waits for (``only_when_watched``: the moment a page opens).
        """
        t0 = time.perf_counter()
        try:
            assembler, integrator = self._assembler, self._integrator
            frame = np.zeros((self._n_modules, *self._module_shape), dtype=np.float32)
            values = assembler.assemble(frame)
            assembler.scale(values, 0.0, 1.0, "linear")
            assembler.preview(frame, 0.0, 1.0, "linear")
            if integrator is not None:
                integrator.integrate(frame)
        except Exception:  # a failed warm-up only delays the first preview
            self.log.warning("warming up the preview kernels failed", exc_info=True)
            return
        self.log.debug("preview kernels ready in %.2f s", time.perf_counter() - t0)

    def _build_assembler(self, downsample: int) -> None:
        from pulsetrain.geometry import PreviewAssembler as Assembler

        self._assembler = Assembler(self._geometry, downsample)
        self._gaps: dict[tuple[int, ...], np.ndarray] = {}
        self.update(
            imageShape=list(self._assembler.shape),
            pixelMap=self._assembler.pixel_map(),
            geometryVersion=self.geometryVersion + 1,
        )
        self._units_cache: dict[str, Any] | None = None

    def _build_integrator(self) -> None:
        self._integrator = None
        if self.profile_bins:
            from pulsetrain.analysis import AzimuthalIntegrator

            self._integrator = AzimuthalIntegrator.from_geometry(
                self._geometry, self.profile_bins, "q_A^-1", photon_energy_kev=self.photon_energy
            )
            self._radial = np.asarray(self._integrator.radial, dtype=np.float32)

    @staticmethod
    def _check_q_rings(value: list) -> None:
        try:
            qs = [float(v) for v in value]
        except (TypeError, ValueError):
            raise PropertyError(f"q_rings needs a list of numbers, got {value!r}") from None
        if any(not (math.isfinite(q) and q > 0) for q in qs) or len(qs) > 32:
            raise PropertyError(f"q_rings needs at most 32 values > 0 (1/Å), got {value}")

    def _units(self) -> dict[str, Any]:
        """The geometry keys of the output (recomputed only when a setting changes)."""
        if self._units_cache is None:
            from pulsetrain.geometry.preview import extent_mm, q_ring_radius_m

            asm = self._assembler
            px_mm = asm.pixel_size_mm
            by, bx = asm.beam_centre_yx
            qs = np.asarray([float(q) for q in self.q_rings], dtype=np.float64)
            radii_mm = q_ring_radius_m(qs, self.detector_distance, self.photon_energy) * 1e3
            self._units_cache = {
                "preview.fullShape": np.asarray(asm.full_shape, dtype=np.int64),
                "preview.pixelSize": float(px_mm),
                "preview.extentMm": extent_mm(asm.shape, asm.beam_centre_yx, px_mm),
                "preview.beamCentreMm": np.asarray([by * px_mm, bx * px_mm], dtype=np.float64),
                "preview.distance": float(self.detector_distance),
                "preview.photonEnergy": float(self.photon_energy),
                "preview.qRings": qs,
                "preview.qRingRadiiPx": radii_mm / px_mm,
                "preview.qRingRadiiMm": radii_mm,
                "preview.geometryVersion": np.int64(self.geometryVersion),
            }
        return self._units_cache

    def on_set(self, key: str, value: Any) -> None:
        if key == "downsample":
            self._build_assembler(int(value))
        elif key == "q_rings":
            self._check_q_rings(value)
            self._units_cache = None
        elif key in ("detector_distance", "photon_energy"):
            self._geometry = self._geometry.replace(distance_m=float(self.detector_distance))
            self._build_integrator()
            self._units_cache = None
        elif key == "auto_percentiles":
            self._check_percentiles(value)
        elif key in ("vmin", "vmax", "scale") and not self.auto_levels:
            self._fixed_levels()  # refuse impossible limits now, not at the next train

    def _gap_index(self, present: tuple[int, ...]) -> np.ndarray:
        """Flat indices of the output pixels no pixel of the ``present`` modules falls into."""
        gaps = self._gaps.get(present)
        if gaps is None:
            probe = np.full((self._n_modules, *self._module_shape), np.nan, dtype=np.float32)
            probe[list(present)] = 0.0
            gaps = np.flatnonzero(np.isnan(self._assembler.assemble(probe)))
            self._gaps[present] = gaps
        return gaps

    @staticmethod
    def _check_percentiles(value: list) -> None:
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise PropertyError("auto_percentiles needs two numbers [low, high]") from None
        if not 0.0 <= lo < hi <= 100.0:
            raise PropertyError(f"auto_percentiles needs 0 <= low < high <= 100, got {value}")

    # ------------------------------------------------------------ data
    def _modules(self, data: dict) -> tuple[dict[int, np.ndarray], dict]:
        """Module number → frames array (pulses, 512, 128) view, and the first module's source."""
        found: dict[int, np.ndarray] = {}
        first: dict = {}
        self._raw_input = False
        for src in sorted(data):
            if self._source_re is None:  # the plug-in's names (JUNGFRAU counts from 1)
                module = self._plugin.module_of(src)
                if module is None:
                    continue
            else:
                match = self._source_re.search(src)
                if match is None:
                    continue
                try:
                    module = int(match.group(1))
                except ValueError:
                    continue
            arr = data[src].get(self.data_key)
            if not isinstance(arr, np.ndarray) or not 0 <= module < self._n_modules:
                continue
            if arr.ndim == 4 or arr.dtype.kind in "iu":
                self._raw_input = True
            if arr.ndim == 4:  # raw (frames, 2, 512, 128): one plane
                arr = arr[:, self.raw_plane]
            elif arr.ndim == 2:  # a single frame
                arr = arr[np.newaxis]
            if arr.shape[-2:] != self._module_shape or arr.ndim != 3:
                self.log.warning(
                    "%s: %s has shape %s, not (frames, 512, 128); skipped",
                    src,
                    self.data_key,
                    arr.shape,
                )
                continue
            found[module] = arr
            if not first:
                first = data[src]
        return found, first

    def _fixed_levels(self) -> tuple[float, float]:
        vmin, vmax = float(self.vmin), float(self.vmax)
        if vmax <= vmin:
            raise PropertyError(f"colour limits need vmin < vmax, got ({vmin}, {vmax})")
        if self.scale == "log" and vmin <= 0:
            raise PropertyError(f"log scale needs vmin > 0, got {vmin}")
        return vmin, vmax

    def _auto_levels(self, modules: dict[int, np.ndarray], n: int) -> tuple[float, float]:
        total = len(modules) * n * self._module_shape[0] * self._module_shape[1]
        s = max(1, math.ceil(math.sqrt(total / _LEVEL_SAMPLE)))
        sample = np.concatenate(
            [np.asarray(a[:n, ::s, ::s], dtype=np.float32).ravel() for a in modules.values()]
        )
        sample = sample[np.isfinite(sample)]
        if self.scale == "log":
            sample = sample[sample > 0]
        if sample.size == 0:
            return (1.0, 10.0) if self.scale == "log" else (0.0, 1.0)
        lo_p, hi_p = (float(v) for v in self.auto_percentiles)
        lo, hi = (float(v) for v in np.percentile(sample, [lo_p, hi_p]))
        if not hi > lo:
            hi = lo * 1.001 + 1.0 if self.scale == "log" else lo + 1.0
        return lo, hi

    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        if self.only_when_watched and not self.output_channels["output"].connections():
            # Nobody watches: the preview exists for displays, so make none (a display that
            # connects gets the next train).  Costs nothing while no GUI is open.
            self.count("unwatchedTrains")
            return
        t0 = time.perf_counter()
        modules, first = self._modules(data)
        if not modules:
            self.count("skippedTrains")
            if self.status != "no module data in the last train":
                self.set_state(State.ON, "no module data in the last train")
            return
        n = min(len(a) for a in modules.values())
        if self.max_pulses:
            n = min(n, self.max_pulses)
        vmin, vmax = self._auto_levels(modules, n) if self.auto_levels else self._fixed_levels()
        shape = self._assembler.shape
        images = np.empty((n, *shape), dtype=np.uint8)
        profile = None
        if self._integrator is not None:
            profile = np.empty((n, len(self._radial)), dtype=np.float32)
        values = None
        if self.send_values:
            values = np.empty((n, *shape), dtype=np.float32)
        frame = self._frame
        missing = [m for m in range(self._n_modules) if m not in modules]
        frame[missing] = np.nan
        gaps = self._gap_index(tuple(sorted(modules)))
        for p in range(n):
            for m, arr in modules.items():
                frame[m] = arr[p]
            if values is not None:  # gather once: the values, then their uint8 levels
                self._assembler.assemble(frame, out=values[p])
                img = self._assembler.scale(values[p], vmin, vmax, self.scale, out=images[p])
            else:
                img = self._assembler.preview(frame, vmin, vmax, self.scale, out=images[p])
            # level 0 means "no detector pixel here"; data use 1..255
            np.maximum(img, 1, out=img)
            img.reshape(-1)[gaps] = 0
            if profile is not None:
                profile[p] = self._integrator.integrate(frame).intensity
        tid = train_id_of(meta)
        if tid is None:
            tid = int(np.asarray(first.get("image.trainId", [0])).reshape(-1)[0])
        present = np.zeros(self._n_modules, dtype=bool)
        present[list(modules)] = True
        out = {
            "preview.images": images,
            "preview.pulseIds": _per_pulse(first.get("image.pulseId"), n, np.uint64),
            "preview.cellIds": _per_pulse(first.get("image.cellId"), n, np.uint16),
            "preview.vmin": float(vmin),
            "preview.vmax": float(vmax),
            "preview.scale": self.scale,
            "preview.autoLevels": bool(self.auto_levels),
            "preview.downsample": int(self._assembler.downsample),
            "preview.trainId": np.uint64(tid),
            "preview.modulesPresent": present,
            "preview.beamCentre": np.asarray(self._assembler.beam_centre_yx, dtype=np.float64),
        }
        out.update(self._units())
        unit = self.value_unit
        if unit == "auto":
            unit = "ADU" if self._raw_input else "keV"
        out["preview.unit"] = unit
        if values is not None:
            out["preview.values"] = values
        if profile is not None:
            out["profile.radial"] = self._radial
            out["profile.intensity"] = profile
        timestamp = next(
            (
                m.get("timestamp")
                for m in meta.values()
                if isinstance(m, dict) and m.get("timestamp") is not None
            ),
            None,
        )
        src = self.output_source
        self.write("output", {src: out}, {src: make_meta(src, tid, timestamp)})
        elapsed = time.perf_counter() - t0
        self._times = (self._times + [elapsed])[-50:]
        self.record(
            processingTime=elapsed,
            meanProcessingTime=float(np.mean(self._times)),
            lastTrainId=int(tid),
            pulsesOut=n,
            levels=[float(vmin), float(vmax)],
            modulesFound=len(modules),
        )
        if self.state != State.PROCESSING.value:
            self.set_state(State.PROCESSING, "")

    def on_eos(self, channel: str) -> None:
        super().on_eos(channel)
        self.set_state(State.ON, "end of stream")


def _per_pulse(values: Any, n: int, dtype: type) -> np.ndarray:
    """The first ``n`` per-frame values of a module (``image.pulseId``...), else 0..n-1."""
    if isinstance(values, np.ndarray) and values.size >= n:
        return np.ascontiguousarray(values.reshape(-1)[:n], dtype=dtype)
    return np.arange(n, dtype=dtype)
