"""Fill a catalogue with constants from the simulator's ground truth (demos and tests).

At a facility, offsets, noise, thresholds and dark bad pixels come from dark runs
(``pulsetrain dark``) and relative gains from calibration scans.  The simulator knows its true
constants, so a demo can start correcting at once: this module stores them in the catalogue with
the types and layouts the detector plug-in defines (those ``pulsetrain dark`` writes, e.g.
AGIPD's ``Offset``, ``Noise``, ``ThresholdsDark``, ``BadPixelsDark``, and the others, e.g.
``RelativeGain``), for any registered detector the simulator knows.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

import numpy as np

from pulsetrain.catalog import Catalog, Conditions

__all__ = ["rel_gain_from_truth", "sim_conditions", "store_truth_constants"]


def sim_conditions(memory_cells: int, photon_energy_kev: float = 9.3) -> Conditions:
    """The operating conditions the simulated AGIPD runs with (the correction device defaults)."""
    return Conditions(
        memory_cells=memory_cells,
        bias_voltage=300.0,
        acquisition_rate=1.1,
        gain_setting=0,
        gain_mode=0,
        integration_time=12,
        photon_energy=photon_energy_kev,
    )


def rel_gain_from_truth(truth) -> np.ndarray:
    """Relative gain (keV per ADU) ``1 / slope`` from a :class:`pulsetrain.sim.ModuleTruth`.

    Pixels without response (slope 0, dead) get 0; they are flagged bad anyway.
    """
    slope = np.asarray(truth.slope, dtype=np.float32)
    out = np.zeros_like(slope)
    np.divide(1.0, slope, out=out, where=slope > 0)
    return out


def store_truth_constants(
    catalog: Catalog,
    sim,
    modules: Iterable[int] | None = None,
    *,
    detector: str | None = None,
    valid_from: datetime | None = None,
    include_dark: bool = True,
) -> dict[int, dict]:
    """Store the true constants of ``sim`` (a :class:`pulsetrain.sim.DetectorSimulator`).

    The constant types, their layouts and values are the detector plug-in's
    (:meth:`pulsetrain.detectors.base.Detector.truth_constants` of the simulated detector
    type), so every registered detector that can be simulated is stored the way its
    correction reads it.

    Parameters
    ----------
    catalog : Catalog
        Where to store them (the detector is added if it is not there).
    sim : DetectorSimulator
        The simulator whose truth is stored.
    modules : iterable of int, optional
        Modules to store (default the simulator's).
    detector : str, optional
        Detector name in the catalogue (default the plug-in's ``default_detector_id``).
    valid_from : datetime, optional
        Start of validity (default a day ago).
    include_dark : bool
        Also store the types the dark procedure makes (``Offset``, ``Noise``, ...); without
        it only the others (``RelativeGain``, ``FlatField``).

    Returns
    -------
    dict
        Module → ``{type: record}``.
    """
    from pulsetrain.catalog.detector_constants import store_constants
    from pulsetrain.detectors import get_detector

    plugin = get_detector(sim.detector)
    detector = detector or plugin.default_detector_id
    valid_from = valid_from or datetime.now(timezone.utc) - timedelta(days=1)
    modules = list(sim.modules if modules is None else modules)
    catalog.add_detector(detector, plugin.name, sim.spec.n_modules)
    cond = sim_conditions(sim.memory_cells, sim.photon_energy_kev)
    dark = set(plugin.dark_constants)
    stored: dict[int, dict] = {}
    for m in modules:
        arrays = plugin.truth_constants(sim.truth(m))
        if not include_dark:
            arrays = {t: a for t, a in arrays.items() if t not in dark}
        stored[m] = store_constants(
            catalog, detector, m, arrays, cond, valid_from, comment="simulator truth export"
        )
    return stored
