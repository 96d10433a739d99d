"""``DetectorCorrection``: correct one detector module's stream with constants from the
catalogue, for any detector type with a plug-in (``AGIPDCorrection``: the AGIPD default)."""

from __future__ import annotations

import collections
import time
from datetime import datetime, timezone
from typing import Any, ClassVar

import numpy as np

from pulsetrain.errors import CalibrationError, CatalogError, ConfigurationError
from pulsetrain.runtime.device import Device, Property, State, slot

__all__ = ["AGIPDCorrection", "DetectorCorrection"]


class DetectorCorrection(Device):
    """The chosen correction steps of one module of any detector type.

    ``detector`` names the detector: a type (``AGIPD``, ``LPD``, ``JUNGFRAU``: its default
    catalogue name) or a catalogue name (``SPB_DET_AGIPD1M-1``; its type from the name or the
    catalogue).  Its plug-in (``docs/detectors.md``) says which raw sources are the module's,
    which constants the chosen ``corrections`` need and how to apply them.

    At start (and on ``reload_constants``, or when a condition or ``corrections`` changes) the
    device asks the catalogue for the newest constants valid at ``constants_time`` (default:
    now) whose operating conditions match its own.  Each raw module-train becomes a corrected
    one (for AGIPD ``image.data`` float32, ``image.gain`` uint8, ``image.mask`` uint32) under
    the CORR source name.  Missing or mismatched constants put the device in ERROR with a
    message naming the missing types and the module — or, with ``on_missing_constants =
    'passthrough'``, raw data are forwarded flagged ``calibration.corrected = False``.  Running
    without constants is a fault the operator must see: it is logged once at WARNING (when the
    look-up fails), the status says so and how many trains went out uncorrected, and
    ``uncorrectedTrains`` counts them (one per train, whatever the number of module sources).
    """

    inputs: ClassVar[dict[str, dict[str, Any]]] = {"input": {}}
    outputs = ("output",)

    catalog = Property(str, "", access="init", description="catalogue URL (empty: default)")
    detector = Property(str, "AGIPD", access="init", description="detector type or catalogue name")
    module = Property(int, 0, minimum=0, maximum=63, access="init")
    corrections = Property(
        str,
        "",
        description="correction steps, comma-separated: offset, gainstage, relgain, flatfield, "
        "commonmode, badpixels (empty: the detector's defaults)",
    )
    memory_cells = Property(int, 64, minimum=1, maximum=1024)
    bias_voltage = Property(float, 300.0, unit="V")
    acquisition_rate = Property(float, 1.1, unit="MHz")
    gain_setting = Property(int, 0, minimum=0, maximum=1)
    gain_mode = Property(int, 0, minimum=0, maximum=3)
    integration_time = Property(int, 12, minimum=0)
    photon_energy = Property(float, 9.3, unit="keV")
    constants_time = Property(str, "", description="ISO time for the constant lookup (empty: now)")
    on_missing_constants = Property(str, "error", options=("error", "passthrough"))
    bad_to_nan = Property(bool, False, description="set masked pixels to NaN")
    common_mode = Property(bool, False, description="also apply the step commonmode")
    force_mg_threshold = Property(
        float, 0.0, minimum=0.0, unit="ADU", description="AGIPD, 0: off (docs/calibration.md)"
    )
    force_hg_threshold = Property(float, 0.0, minimum=0.0, unit="ADU", description="AGIPD")

    appliedCorrections = Property(
        str, "", access="readonly", description="the steps applied to the data sent"
    )
    constantsLoaded = Property(bool, False, access="readonly")
    constantIds = Property(dict, {}, access="readonly", description="catalogue IDs in use")
    framesPerSecond = Property(float, 0.0, access="readonly", unit="Hz")
    processingTime = Property(
        float,
        0.0,
        access="readonly",
        unit="s",
        description="correction time of the last module-train",
    )
    latencyP50 = Property(
        float,
        0.0,
        access="readonly",
        unit="s",
        description="arrival after the train timestamp, median of last 100",
    )
    latencyP99 = Property(float, 0.0, access="readonly", unit="s")
    correctedTrains = Property(int, 0, access="readonly")
    uncorrectedTrains = Property(
        int, 0, access="readonly", description="trains passed through without constants"
    )

    def initialize(self) -> None:
        self.constants = None
        self.plugin = None
        self.steps: tuple[str, ...] = ()
        self._missing = ""
        self._shown_uncorrected = 0
        self._lat: collections.deque = collections.deque(maxlen=100)
        self._frames: collections.deque = collections.deque(maxlen=50)
        self.reload_constants()
        self.every(1.0, self._stats)

    def _conditions(self) -> dict:
        return {
            "memory_cells": self.memory_cells,
            "bias_voltage": self.bias_voltage,
            "acquisition_rate": self.acquisition_rate,
            "gain_setting": self.gain_setting,
            "gain_mode": self.gain_mode,
            "integration_time": self.integration_time,
            "photon_energy": self.photon_energy,
        }

    def _options(self) -> dict[str, Any]:
        return self.plugin.select_options(
            {
                "bad_to_nan": self.bad_to_nan,
                "force_mg_threshold": self.force_mg_threshold or None,
                "force_hg_threshold": self.force_hg_threshold or None,
            }
        )

    def _resolve(self, cat) -> tuple[Any, str]:
        """The plug-in and catalogue name of ``detector`` (the catalogue knows the type of a
        name the registry cannot tell)."""
        from pulsetrain.detectors import resolve_detector

        try:
            return resolve_detector(self.detector)
        except ConfigurationError:
            record = cat.get_detector(self.detector)  # CatalogError if it is not there either
            return resolve_detector(self.detector, record.detector_type)

    @slot(description="Look the constants up again and load them")
    def reload_constants(self) -> None:
        """Look the constants up again in the catalogue and load them."""
        from pulsetrain.catalog import Catalog
        from pulsetrain.catalog.detector_constants import load_constants

        at = None
        if self.constants_time:
            at = datetime.fromisoformat(self.constants_time)
            if at.tzinfo is None:
                at = at.replace(tzinfo=timezone.utc)
        try:
            cat = Catalog(self.catalog or None)
            try:
                plugin, name = self._resolve(cat)
                if self.module >= plugin.n_modules:
                    raise ConfigurationError(
                        f"{plugin.name} has modules 0..{plugin.n_modules - 1}, not {self.module}"
                    )
                steps = plugin.parse_steps(self.corrections)
                if self.common_mode and "commonmode" in plugin.steps:
                    steps = plugin.parse_steps((*steps, "commonmode"))
                self.plugin, self.steps = plugin, steps
                constants, records = load_constants(
                    cat, plugin, name, self.module, self._conditions(), at, steps
                )
            finally:
                cat.close()
        except (CatalogError, CalibrationError, ConfigurationError) as exc:
            self.constants = None
            self.update(constantsLoaded=False, constantIds={}, appliedCorrections="")
            if self.on_missing_constants == "passthrough" and self.plugin is not None:
                self._missing = str(exc)
                self.log.warning(
                    "module %d: no constants, raw data will pass through uncorrected: %s",
                    self.module,
                    exc,
                )
                self.set_state(State.PROCESSING, self._passthrough_status())
            else:
                self.set_error(f"cannot correct module {self.module}: {exc}")
            return
        self.constants = constants
        self._missing = ""
        self.update(
            constantsLoaded=True,
            constantIds={k: int(r.id) for k, r in records.items()},
            appliedCorrections=",".join(self.steps),
        )
        self.set_state(
            State.PROCESSING,
            f"{','.join(self.steps) or 'no steps'}; constants loaded: "
            + (", ".join(f"{k}#{r.id}" for k, r in records.items()) or "none needed"),
        )

    def on_set(self, key: str, value: object) -> None:
        if key in self._conditions() or key in ("constants_time", "corrections", "common_mode"):
            self.reload_constants()

    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        plugin = self.plugin
        if plugin is None:
            raise CalibrationError(f"module {self.module}: no detector ({self.status})")
        t0 = time.perf_counter()
        out, out_meta = {}, {}
        frames = 0
        for src, props in data.items():
            why = plugin.check_raw(props)
            if why is not None:
                if plugin.raw_module_of(src) is None:
                    continue  # not a raw module source (slow data, corrected data, ...)
                raise CalibrationError(f"{src}: not {plugin.name} raw data ({why})")
            number = plugin.module_of(src)
            if number is not None and number != self.module:
                continue  # another module's data (e.g. a replay of all modules): not ours
            name = plugin.corrected_source(src)
            n = int(np.shape(props[plugin.raw_keys[0].key])[0])
            if self.constants is None:
                if self.on_missing_constants != "passthrough":
                    raise CalibrationError(
                        f"module {self.module}: no constants loaded ({self.status})"
                    )
                out[name] = {**props, "calibration.corrected": False}
            else:
                shape = (n, *plugin.module_shape)
                keys = list(plugin.corrected_keys)
                arrays = self.allocate(  # in shared memory when that saves a copy downstream
                    "output", *((shape, np.dtype(plugin.corrected_keys[k])) for k in keys)
                )
                out[name] = plugin.correct(
                    props, self.constants, self.steps, out=dict(zip(keys, arrays)),
                    **self._options(),
                )  # fmt: skip
                out[name]["calibration.corrected"] = True
                self.count("correctedTrains")
            out_meta[name] = {**meta.get(src, {}), "source": name}
            frames += n
        if not out:
            return
        if self.constants is None:
            self.count("uncorrectedTrains")
        now = time.time()
        self.record(processingTime=time.perf_counter() - t0)
        self._frames.append((now, frames))
        ts = next((m.get("timestamp") for m in out_meta.values()), None)
        if ts is not None:
            self._lat.append(now - float(ts))
        self.write("output", out, out_meta)

    def _passthrough_status(self) -> str:
        return (
            f"no constants, passing raw data through ({self.uncorrectedTrains} trains "
            f"uncorrected so far): {self._missing}"
        )

    def _stats(self) -> None:
        values = {}
        uncorrected = self.uncorrectedTrains
        if uncorrected != self._shown_uncorrected:
            self._shown_uncorrected = uncorrected
            values["uncorrectedTrains"] = uncorrected
            if self.constants is None and self._missing and self.state != State.ERROR.value:
                values["status"] = self._passthrough_status()
        if len(self._frames) > 1:
            span = self._frames[-1][0] - self._frames[0][0]
            if span > 0:
                values["framesPerSecond"] = sum(f for _, f in list(self._frames)[1:]) / span
        if self._lat:
            arr = np.array(self._lat)
            values["latencyP50"] = float(np.percentile(arr, 50))
            values["latencyP99"] = float(np.percentile(arr, 99))
        if values:
            self.update(**values)


class AGIPDCorrection(DetectorCorrection):
    """Offset, gain-stage, relative-gain and bad-pixel correction of one AGIPD module.

    A :class:`DetectorCorrection` whose ``detector`` defaults to ``SPB_DET_AGIPD1M-1`` (the name
    topologies used before detector plug-ins).
    """

    detector = Property(
        str, "SPB_DET_AGIPD1M-1", access="init", description="detector type or catalogue name"
    )
    module = Property(int, 0, minimum=0, maximum=15, access="init")
