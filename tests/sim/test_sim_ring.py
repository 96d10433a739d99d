"""The water ring lands where the geometry says, and moves with the detector distance."""

from __future__ import annotations

import math

import extra_geom
import numpy as np
import pytest

from pulsetrain.sim import DetectorSimulator

ENERGY_KEV = 9.3
WAVELENGTH_A = 12.398419843320026 / ENERGY_KEV


def independent_q(distance_m: float) -> np.ndarray:
    """q of every AGIPD pixel, computed here from EXtra-geom, not with pulsetrain.sim."""
    pos = extra_geom.AGIPD_1MGeometry.example().get_pixel_positions()
    two_theta = np.arctan2(np.hypot(pos[..., 0], pos[..., 1]), distance_m)
    return 4 * math.pi * np.sin(two_theta / 2) / WAVELENGTH_A


def fit_ring(photons: np.ndarray, q: np.ndarray, background: float) -> tuple[float, float]:
    """Centre and width of a Gaussian ring fitted to the mean photons per q bin."""
    bins = np.arange(1.0, 3.0, 0.04)
    q = np.broadcast_to(q, photons.shape).ravel()
    total = np.histogram(q, bins, weights=photons.ravel())[0]
    count = np.histogram(q, bins)[0]
    centre = 0.5 * (bins[1:] + bins[:-1])
    use = count > 500
    mean = total[use] / count[use]
    a, b, _ = np.polyfit(centre[use], np.log(np.maximum(mean - background, 1e-3)), 2)
    return -b / (2 * a), math.sqrt(-1 / (2 * a))


@pytest.mark.parametrize("distance_m", [0.2, 0.27])
def test_ring_is_at_the_chosen_q_for_the_detector_distance(distance_m):
    sim = DetectorSimulator(frames=2, seed=6, detector_distance_m=distance_m)
    photons = []
    for m in range(16):  # far from the sample: no hits, only the ring
        _, sig = sim.module_train(m, 10, sample_position_mm=-5.0, return_truth=True)
        assert not sig.hits.any()
        photons.append(sig.energy_kev / ENERGY_KEV)
    photons = np.stack(photons, axis=1)  # (frames, 16, 512, 128)
    np.testing.assert_allclose(photons, np.round(photons), atol=1e-5)  # whole photons
    q0, sigma = fit_ring(photons, independent_q(distance_m), sim.sample.background_photons)
    assert q0 == pytest.approx(sim.sample.ring_q, abs=0.02)
    assert sigma == pytest.approx(sim.sample.ring_sigma_q, rel=0.1)
    # the peak photons per pixel is the model's, a few photons
    near = np.abs(independent_q(distance_m) - q0) < 0.05
    assert photons[:, near].mean() == pytest.approx(
        sim.sample.ring_photons + sim.sample.background_photons, rel=0.05
    )


def test_ring_radius_scales_with_distance():
    from pulsetrain.sim.geometry import ring_radius_m

    theta = math.asin(2.0 * WAVELENGTH_A / (4 * math.pi))
    for distance in (0.2, 0.5):
        assert ring_radius_m(2.0, distance, ENERGY_KEV) == pytest.approx(
            distance * math.tan(2 * theta)
        )
    sim = DetectorSimulator(detector_distance_m=0.2)
    q = np.stack([sim.q_map(m) for m in range(16)])
    np.testing.assert_allclose(q, independent_q(0.2), rtol=1e-6)
