"""AGIPD-1M detector geometry through EXtra-geom, plus the sample distance and beam centre.

EXtra-geom describes where every pixel of the 16 modules sits in the detector plane, in metres,
relative to the geometry origin (the detector centre for a quadrant-position geometry), with x
increasing to the left and y upwards when looking along the beam.  It knows nothing about the
sample: :class:`DetectorGeometry` adds the sample-to-detector distance and the position of the
beam in that plane, which is all that is needed for scattering angles and momentum transfer.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pulsetrain.errors import ConfigurationError

if TYPE_CHECKING:  # pragma: no cover
    from extra_geom import AGIPD_1MGeometry

log = logging.getLogger(__name__)

#: Shape of one AGIPD-1M frame: (modules, slow scan, fast scan).
AGIPD1M_FRAME_SHAPE: tuple[int, int, int] = (16, 512, 128)

#: AGIPD pixel pitch in metres.
AGIPD_PIXEL_SIZE_M: float = 200e-6

#: The canonical quadrant positions (pixels) used by EXtra-geom's ``AGIPD_1MGeometry.example()``
#: and the EuXFEL examples: the (x, y) of the first pixel of modules 0, 4, 8 and 12.
AGIPD1M_QUAD_POSITIONS_PX: tuple[tuple[float, float], ...] = (
    (-525.0, 625.0),
    (-550.0, -10.0),
    (520.0, -160.0),
    (542.5, 475.0),
)

#: h·c in keV·Å (CODATA 2018: h·c = 1.239 841 984… µeV·m), for λ[Å] = HC_KEV_ANGSTROM / E[keV].
HC_KEV_ANGSTROM: float = 12.398419843320026

#: Radial units understood by :meth:`DetectorGeometry.radial_map` (the names pyFAI uses).
RADIAL_UNITS: tuple[str, ...] = ("q_A^-1", "q_nm^-1", "2th_deg", "2th_rad", "r_mm", "r_m")


def wavelength_angstrom(photon_energy_kev: float) -> float:
    """Photon wavelength in ångström for a photon energy in keV.

    Parameters
    ----------
    photon_energy_kev : float
        Photon energy in keV (must be > 0).

    Returns
    -------
    float
        λ = h·c / E in Å.
    """
    if not np.isfinite(photon_energy_kev) or photon_energy_kev <= 0:
        raise ConfigurationError(f"photon energy must be > 0 keV, got {photon_energy_kev!r}")
    return HC_KEV_ANGSTROM / float(photon_energy_kev)


@dataclasses.dataclass(frozen=True, eq=False)
class DetectorGeometry:
    """An EXtra-geom detector geometry placed at a distance from the sample.

    Use :func:`agipd1m_geometry` to build one.  Instances are immutable; change the distance or
    beam centre with :meth:`replace`, which returns a new object.

    Attributes
    ----------
    geom : extra_geom.AGIPD_1MGeometry
        The EXtra-geom geometry (pixel positions in the detector plane).
    distance_m : float
        Sample-to-detector distance along the beam in metres (to the plane z = 0 of ``geom``).
    beam_centre_px : tuple of float
        Where the beam crosses the detector plane, as (x, y) in pixels (200 µm) from the
        geometry origin, in EXtra-geom's axes (x to the left, y up, looking along the beam).
    """

    geom: AGIPD_1MGeometry
    distance_m: float
    beam_centre_px: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if not np.isfinite(self.distance_m) or self.distance_m <= 0:
            raise ConfigurationError(
                f"detector distance must be a positive number of metres, got {self.distance_m!r}"
            )
        try:
            bx, by = (float(v) for v in self.beam_centre_px)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"beam centre must be two numbers (x, y) in pixels, got {self.beam_centre_px!r}"
            ) from exc
        if not (np.isfinite(bx) and np.isfinite(by)):
            raise ConfigurationError(f"beam centre must be finite, got {self.beam_centre_px!r}")
        object.__setattr__(self, "distance_m", float(self.distance_m))
        object.__setattr__(self, "beam_centre_px", (bx, by))
        object.__setattr__(self, "_cache", {})

    # ------------------------------------------------------------------ basic properties
    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """Shape of one frame of this detector, (modules, slow scan, fast scan)."""
        return tuple(self.geom.expected_data_shape)

    @property
    def pixel_size_m(self) -> float:
        """Pixel pitch in metres."""
        return float(self.geom.pixel_size)

    @property
    def beam_centre_m(self) -> tuple[float, float]:
        """Beam position (x, y) in the detector plane in metres from the geometry origin."""
        bx, by = self.beam_centre_px
        return bx * self.pixel_size_m, by * self.pixel_size_m

    def replace(self, **changes: object) -> DetectorGeometry:
        """Return a copy with some fields changed (``distance_m``, ``beam_centre_px``, ``geom``)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ coordinates
    def _plane_positions(self) -> np.ndarray:
        """Pixel centres from EXtra-geom, (…, 3) float64 metres, geometry origin (cached)."""
        cache = self._cache  # type: ignore[attr-defined]
        if "plane" not in cache:
            pos = self.geom.get_pixel_positions(centre=True)
            pos.setflags(write=False)
            cache["plane"] = pos
        return cache["plane"]

    def pixel_positions(self) -> np.ndarray:
        """Pixel-centre positions relative to the sample and the beam axis.

        Returns
        -------
        ndarray, shape (16, 512, 128, 3), float64
            (x, y, z) in metres: x and y are measured in the detector plane from the point where
            the beam crosses it (EXtra-geom's axes: x to the left, y up, looking along the
            beam); z is the distance from the sample along the beam (``distance_m`` plus any z
            of the pixel in the geometry).
        """
        pos = self._plane_positions().copy()
        bx, by = self.beam_centre_m
        pos[..., 0] -= bx
        pos[..., 1] -= by
        pos[..., 2] += self.distance_m
        return pos

    def radius_map(self) -> np.ndarray:
        """Distance of each pixel centre from the beam in the detector plane, metres."""
        pos = self.pixel_positions()
        return np.hypot(pos[..., 0], pos[..., 1])

    def two_theta_map(self, unit: str = "deg") -> np.ndarray:
        """Scattering angle 2θ of every pixel centre.

        Parameters
        ----------
        unit : {"deg", "rad"}
            Unit of the result.

        Returns
        -------
        ndarray, shape (16, 512, 128), float64
            2θ = atan2(r, z) with r the in-plane distance from the beam and z the distance
            from the sample along the beam.
        """
        pos = self.pixel_positions()
        tth = np.arctan2(np.hypot(pos[..., 0], pos[..., 1]), pos[..., 2])
        if unit == "rad":
            return tth
        if unit == "deg":
            return np.rad2deg(tth)
        raise ConfigurationError(f"two_theta_map unit must be 'deg' or 'rad', got {unit!r}")

    def q_map(self, photon_energy_kev: float, unit: str = "A^-1") -> np.ndarray:
        """Momentum transfer q = 4π sin(θ) / λ of every pixel centre.

        Parameters
        ----------
        photon_energy_kev : float
            Photon energy in keV (λ[Å] = 12.3984 / E[keV]).
        unit : {"A^-1", "nm^-1"}
            Unit of the result (inverse ångström or inverse nanometre).

        Returns
        -------
        ndarray, shape (16, 512, 128), float64
        """
        lam = wavelength_angstrom(photon_energy_kev)
        q = 4.0 * np.pi * np.sin(0.5 * self.two_theta_map("rad")) / lam
        if unit == "A^-1":
            return q
        if unit == "nm^-1":
            return q * 10.0
        raise ConfigurationError(f"q_map unit must be 'A^-1' or 'nm^-1', got {unit!r}")

    def radial_map(self, unit: str, photon_energy_kev: float | None = None) -> np.ndarray:
        """Per-pixel radial coordinate in one of pyFAI's unit names.

        Parameters
        ----------
        unit : {"q_A^-1", "q_nm^-1", "2th_deg", "2th_rad", "r_mm", "r_m"}
            The radial unit.
        photon_energy_kev : float, optional
            Needed for the q units.

        Returns
        -------
        ndarray, shape (16, 512, 128), float64
        """
        if unit in ("q_A^-1", "q_nm^-1"):
            if photon_energy_kev is None:
                raise ConfigurationError(f"unit {unit!r} needs a photon energy")
            return self.q_map(photon_energy_kev, unit=unit[2:])
        if unit == "2th_deg":
            return self.two_theta_map("deg")
        if unit == "2th_rad":
            return self.two_theta_map("rad")
        if unit == "r_mm":
            return self.radius_map() * 1e3
        if unit == "r_m":
            return self.radius_map()
        raise ConfigurationError(f"unknown radial unit {unit!r}; choose one of {RADIAL_UNITS}")

    def azimuth_map(self) -> np.ndarray:
        """Azimuthal angle χ = atan2(y, x) of every pixel around the beam, radians in (-π, π]."""
        pos = self.pixel_positions()
        return np.arctan2(pos[..., 1], pos[..., 0])

    # ------------------------------------------------------------------ pyFAI bridge
    def to_pyfai(self, photon_energy_kev: float | None = None):
        """A pyFAI ``AzimuthalIntegrator`` for this geometry (needs pyFAI installed).

        The detector comes from EXtra-geom's ``to_pyfai_detector()`` (data passed as
        ``frame.reshape(16 * 512, 128)``), the PONI is the beam position and ``dist`` the
        sample distance.  Used as the accuracy oracle in the tests and benchmarks.
        """
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator as PyFAIIntegrator

        det = self.geom.to_pyfai_detector()
        bx, by = self.beam_centre_m
        kwargs = {}
        if photon_energy_kev is not None:
            kwargs["wavelength"] = wavelength_angstrom(photon_energy_kev) * 1e-10
        # pyFAI dimension 1 is the corner array's y, dimension 2 its x (EXtra-geom axes).
        return PyFAIIntegrator(detector=det, dist=self.distance_m, poni1=by, poni2=bx, **kwargs)


def agipd1m_geometry(
    quad_positions: Sequence[Sequence[float]] | None = None,
    *,
    distance_m: float = 0.5,
    beam_centre_px: Sequence[float] = (0.0, 0.0),
) -> DetectorGeometry:
    """Build an AGIPD-1M geometry from quadrant positions.

    Parameters
    ----------
    quad_positions : sequence of 4 (x, y) pairs, optional
        Position in pixels of the first pixel of modules 0, 4, 8 and 12, origin at the detector
        centre (EXtra-geom's ``AGIPD_1MGeometry.from_quad_positions``).  Defaults to
        :data:`AGIPD1M_QUAD_POSITIONS_PX`, the canonical positions of EXtra-geom's example.
    distance_m : float
        Sample-to-detector distance in metres.
    beam_centre_px : (float, float)
        Beam position (x, y) in pixels from the geometry origin; (0, 0) puts the beam at the
        detector centre.

    Returns
    -------
    DetectorGeometry
    """
    from extra_geom import AGIPD_1MGeometry

    if quad_positions is None:
        quad_positions = AGIPD1M_QUAD_POSITIONS_PX
    try:
        quads = np.asarray(quad_positions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"quad positions must be numbers: {quad_positions!r}") from exc
    if quads.shape != (4, 2) or not np.all(np.isfinite(quads)):
        raise ConfigurationError(
            f"quad positions must be 4 finite (x, y) pairs in pixels, got shape {quads.shape}"
        )
    geom = AGIPD_1MGeometry.from_quad_positions([tuple(q) for q in quads])
    log.debug("AGIPD-1M geometry from quadrants %s, L=%.4g m", quads.tolist(), distance_m)
    return DetectorGeometry(geom, distance_m, tuple(beam_centre_px))
