"""Where the simulated pixels are: positions from EXtra-geom and scattering vector maps.

AGIPD and LPD use ``AGIPD_1MGeometry.example()`` / ``LPD_1MGeometry.example()`` (the standard
quadrant positions, beam at the geometry origin).  JUNGFRAU uses
``JUNGFRAUGeometry.example(n_modules=8)`` shifted so that the beam is at the centre of the
modules' bounding box.  The sample-detector distance is added along the beam.
"""

from __future__ import annotations

import functools
import math

import numpy as np

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


@functools.lru_cache(maxsize=4)
def _positions(name: str) -> np.ndarray:
    import extra_geom

    if name == "AGIPD":
        pos = extra_geom.AGIPD_1MGeometry.example().get_pixel_positions()
    elif name == "LPD":
        pos = extra_geom.LPD_1MGeometry.example().get_pixel_positions()
    elif name == "JUNGFRAU":
        pos = extra_geom.JUNGFRAUGeometry.example(n_modules=8).get_pixel_positions()
        for axis in (0, 1):
            lo, hi = pos[..., axis].min(), pos[..., axis].max()
            pos[..., axis] -= 0.5 * (lo + hi)
    else:  # pragma: no cover - specs are fixed
        raise ValueError(name)
    pos = np.ascontiguousarray(pos, dtype=np.float64)
    pos.setflags(write=False)
    return pos


def pixel_positions(spec: DetectorSpec) -> np.ndarray:
    """Pixel centres ``(modules, ss, fs, 3)`` in metres (x, y, z), beam at x = y = 0.

    The array is cached and read-only.
    """
    return _positions(spec.name)


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
