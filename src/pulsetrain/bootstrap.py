"""Fill a catalogue with constants from the simulator's ground truth (demos and tests).

At a facility, offsets, noise, thresholds and dark bad pixels come from dark runs
(``pulsetrain dark``) and relative gains from calibration scans.  The simulator knows its true
constants, so a demo can start correcting at once: this module stores them in the catalogue with
the same types and layouts ``pulsetrain dark`` writes (``Offset``, ``Noise``,
``ThresholdsDark``, ``BadPixelsDark``, ``RelativeGain``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

import numpy as np

from pulsetrain.calibration import BadPixels
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
    detector: str = "SPB_DET_AGIPD1M-1",
    valid_from: datetime | None = None,
    include_dark: bool = True,
) -> dict[int, dict]:
    """Store the true constants of ``sim`` (a :class:`pulsetrain.sim.DetectorSimulator`).

    Returns
    -------
    dict
        Module → ``{type: record}``.
    """
    valid_from = valid_from or datetime.now(timezone.utc) - timedelta(days=1)
    modules = list(sim.modules if modules is None else modules)
    catalog.add_detector(detector, sim.spec.name, sim.spec.n_modules)
    cond = sim_conditions(
        sim.memory_cells, sim.photon_energy_kev if hasattr(sim, "photon_energy_kev") else 9.3
    )
    stored: dict[int, dict] = {}
    for m in modules:
        truth = sim.truth(m)
        recs = {
            "RelativeGain": catalog.add_constant(
                detector,
                m,
                "RelativeGain",
                rel_gain_from_truth(truth),
                cond,
                valid_from,
                comment="simulator truth export",
            )
        }
        if include_dark:
            bad = np.zeros(truth.offset.shape, np.uint32)
            bad[:, :, truth.dead | truth.noisy] |= np.uint32(BadPixels.NOISE_OUT_OF_THRESHOLD)
            bad[:, :, truth.hot] |= np.uint32(BadPixels.OFFSET_OUT_OF_THRESHOLD)
            for ctype, arr in (
                ("Offset", truth.offset),
                ("Noise", truth.noise),
                ("ThresholdsDark", truth.gain_thresholds()),
                ("BadPixelsDark", bad),
            ):
                recs[ctype] = catalog.add_constant(
                    detector, m, ctype, arr, cond, valid_from, comment="simulator truth export"
                )
        stored[m] = recs
    return stored
