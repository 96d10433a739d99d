"""Where the simulated pixels are: positions from EXtra-geom and scattering vector maps.

The detector plug-in gives the positions (``DetectorSpec.positions``: AGIPD and LPD use
EXtra-geom's example geometries, JUNGFRAU its example of 8 modules centred on the beam).  The
sample-detector distance is added along the beam.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from pulsetrain.errors import ConfigurationError
from pulsetrain.sim.detectors import DetectorSpec

__all__ = [
    "HC_KEV_ANGSTROM",
    "pixel_positions",
    "pixel_radius_m",
    "q_map",
    "ring_radius_m",
    "wavelength_angstrom",
]

#: h c in keV angstrom (wavelength = HC / E).
HC_KEV_ANGSTROM = 12.398419843320026


def wavelength_angstrom(photon_energy_kev: float) -> float:
    """X-ray wavelength in angstrom for a photon energy in keV."""
    return HC_KEV_ANGSTROM / float(photon_energy_kev)


_POSITIONS: dict[tuple[str, object], np.ndarray] = {}
_LOCK = threading.Lock()


def _positions(spec: DetectorSpec) -> np.ndarray:
    key = (spec.name, spec.positions)
    pos = _POSITIONS.get(key)
    if pos is None:
        if spec.positions is None:
            raise ConfigurationError(f"detector {spec.name} gives no pixel positions")
        pos = np.ascontiguousarray(spec.positions(), dtype=np.float64)
        pos.setflags(write=False)
        with _LOCK:
            pos = _POSITIONS.setdefault(key, pos)
    return pos


def pixel_positions(spec: DetectorSpec) -> np.ndarray:
    """Pixel centres ``(modules, ss, fs, 3)`` in metres (x, y, z), beam at x = y = 0.

    The array is cached and read-only.
    """
    return _positions(spec)


def pixel_radius_m(spec: DetectorSpec, module: int) -> np.ndarray:
    """Distance of each pixel of ``module`` from the beam axis, ``(ss, fs)`` metres."""
    pos = pixel_positions(spec)[module]
    return np.hypot(pos[..., 0], pos[..., 1])


def q_map(
    spec: DetectorSpec, module: int, detector_distance_m: float, photon_energy_kev: float
) -> np.ndarray:
    """Momentum transfer ``q = 4 pi sin(theta) / lambda`` (1/angstrom) of each pixel.

    With ``r = hypot(x, y)``, ``2 theta = atan2(r, L + z)``.
    """
    pos = pixel_positions(spec)[module]
    two_theta = np.arctan2(np.hypot(pos[..., 0], pos[..., 1]), detector_distance_m + pos[..., 2])
    return 4.0 * math.pi * np.sin(0.5 * two_theta) / wavelength_angstrom(photon_energy_kev)


def ring_radius_m(q: float, detector_distance_m: float, photon_energy_kev: float) -> float:
    """Radius on a flat detector at distance ``L`` where momentum transfer ``q`` lands."""
    theta = math.asin(q * wavelength_angstrom(photon_energy_kev) / (4.0 * math.pi))
    return detector_distance_m * math.tan(2.0 * theta)
