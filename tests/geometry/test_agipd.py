"""Tests for pulsetrain.geometry.agipd: AGIPD-1M geometry, pixel positions, 2θ and q maps."""

import numpy as np
import pytest

from pulsetrain.errors import ConfigurationError
from pulsetrain.geometry import (
    AGIPD1M_QUAD_POSITIONS_PX,
    agipd1m_geometry,
    wavelength_angstrom,
)


@pytest.fixture(scope="module")
def geom():
    return agipd1m_geometry(distance_m=0.5, beam_centre_px=(14.0, -9.5))


def test_default_quadrants_match_extra_geom_example():
    from extra_geom import AGIPD_1MGeometry

    ours = agipd1m_geometry().geom.get_pixel_positions()
    example = AGIPD_1MGeometry.example().get_pixel_positions()
    np.testing.assert_array_equal(ours, example)
    assert len(AGIPD1M_QUAD_POSITIONS_PX) == 4


def test_pixel_positions_are_relative_to_beam_and_sample(geom):
    pos = geom.pixel_positions()
    assert pos.shape == (16, 512, 128, 3)
    plane = geom.geom.get_pixel_positions(centre=True)
    np.testing.assert_allclose(pos[..., 0], plane[..., 0] - 14.0 * 200e-6, atol=1e-15)
    np.testing.assert_allclose(pos[..., 1], plane[..., 1] + 9.5 * 200e-6, atol=1e-15)
    np.testing.assert_allclose(pos[..., 2], 0.5)
    # The cached plane positions must not leak mutations.
    pos[...] = 0
    assert np.abs(geom.pixel_positions()[..., 2]).min() == 0.5


def test_wavelength_from_energy():
    assert wavelength_angstrom(12.398419843320026) == pytest.approx(1.0, rel=1e-12)
    assert wavelength_angstrom(9.3) == pytest.approx(1.33316, rel=1e-5)
    with pytest.raises(ConfigurationError):
        wavelength_angstrom(0.0)


def test_two_theta_and_q_match_pyfai(geom):
    """pyFAI, fed EXtra-geom's detector and the beam as PONI, is the independent oracle."""
    ai = geom.to_pyfai(9.3)
    shape = (16 * 512, 128)
    tth_pyfai = ai.array_from_unit(shape=shape, typ="center", unit="2th_deg", scale=True)
    q_pyfai = ai.array_from_unit(shape=shape, typ="center", unit="q_A^-1", scale=True)
    np.testing.assert_allclose(geom.two_theta_map("deg").reshape(shape), tth_pyfai, atol=1e-5)
    np.testing.assert_allclose(geom.q_map(9.3).reshape(shape), q_pyfai, atol=1e-6)
    np.testing.assert_allclose(geom.q_map(9.3, unit="nm^-1"), 10 * geom.q_map(9.3))


def test_ranges_for_reference_setup():
    """L = 0.5 m, 9.3 keV, beam at the centre: 2θ 0.40–18.2°, q 0.033–1.49 Å⁻¹."""
    g = agipd1m_geometry(distance_m=0.5)
    tth = g.two_theta_map()
    q = g.q_map(9.3)
    assert tth.min() == pytest.approx(0.40, abs=0.01)
    assert tth.max() == pytest.approx(18.2, abs=0.05)
    assert q.min() == pytest.approx(0.033, abs=0.001)
    assert q.max() == pytest.approx(1.49, abs=0.01)


def test_radial_map_units_and_replace(geom):
    r = geom.radial_map("r_mm")
    np.testing.assert_allclose(r, 1e3 * geom.radial_map("r_m"))
    np.testing.assert_allclose(geom.radial_map("2th_rad"), np.deg2rad(geom.two_theta_map()))
    further = geom.replace(distance_m=1.0)
    assert further.distance_m == 1.0 and geom.distance_m == 0.5
    assert np.all(further.two_theta_map() < geom.two_theta_map())
    np.testing.assert_allclose(further.radial_map("r_mm"), r)
    chi = geom.azimuth_map()
    assert chi.shape == (16, 512, 128) and np.all(np.abs(chi) <= np.pi)
    with pytest.raises(ConfigurationError):
        geom.radial_map("q_A^-1")  # needs the photon energy
    with pytest.raises(ConfigurationError):
        geom.radial_map("chi_deg")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"distance_m": 0.0},
        {"distance_m": float("nan")},
        {"beam_centre_px": (1.0,)},
        {"beam_centre_px": (np.inf, 0.0)},
        {"quad_positions": [(0, 0)] * 3},
        {"quad_positions": [(0, 0), (0, 0), (0, 0), (0, "x")]},
    ],
)
def test_invalid_configuration_is_refused(kwargs):
    with pytest.raises(ConfigurationError):
        agipd1m_geometry(**kwargs)
