"""Tests for pulsetrain.analysis.azimuthal against pyFAI and an independent numpy histogram.

Acceptance criterion (issue 6): on AGIPD-1M-shaped data, with EXtra-geom's pyFAI detector and
the same bins, pyFAI's ``("no", "histogram", "cython")`` integration and ours agree to a median
relative difference < 1e-4 over the bins where both have at least ``MIN_PIXELS`` pixels.  Pixels
whose centres sit within float32 rounding of a bin edge may land in the neighbouring bin (pyFAI
takes positions from a float32 corner array), so we also require that at least 95 % of bins have
exactly the same pixel count.
"""

import numpy as np
import pytest

from pulsetrain.analysis import AzimuthalIntegrator
from pulsetrain.errors import ConfigurationError, DataShapeError
from pulsetrain.geometry import agipd1m_geometry

ENERGY_KEV = 9.3
FRAME = (16, 512, 128)
MIN_PIXELS = 20

pyFAI = pytest.importorskip("pyFAI")


@pytest.fixture(scope="module")
def geom():
    return agipd1m_geometry(distance_m=0.4, beam_centre_px=(8.0, -5.0))


@pytest.fixture(scope="module")
def pyfai_ai(geom):
    return geom.to_pyfai(ENERGY_KEV)


@pytest.fixture(scope="module")
def frame_and_mask(geom):
    """Powder rings on a smooth background with Poisson noise; bad pixels and NaN holes."""
    rng = np.random.default_rng(2024)
    q = geom.q_map(ENERGY_KEV)
    signal = 30.0 + 200.0 * np.exp(-q / 0.3)
    for q0, amp in [(0.35, 900.0), (0.62, 500.0), (1.05, 300.0), (1.4, 150.0)]:
        signal += amp * np.exp(-0.5 * ((q - q0) / 0.008) ** 2)
    frame = rng.poisson(signal).astype(np.float32)
    mask = np.zeros(FRAME, dtype=np.uint32)
    mask[rng.random(FRAME) < 0.01] = 1  # 1 % scattered bad pixels
    mask[7] = 4  # one dead module
    mask[:, :, 0] = 8  # first column of every module
    frame[3, 200:230, 40:90] = np.nan  # a hole not in the mask
    return frame, mask


def _compare(ours, theirs):
    both = (ours.count >= MIN_PIXELS) & (theirs.count >= MIN_PIXELS)
    assert both.sum() > 0.8 * ours.count.size
    rel = np.abs(ours.intensity[both] - theirs.intensity[both]) / np.abs(theirs.intensity[both])
    assert np.median(rel) < 1e-4
    assert np.mean(ours.count == theirs.count) >= 0.95
    return rel


@pytest.mark.parametrize(
    "unit,radial_range",
    [("q_A^-1", (0.05, 1.6)), ("2th_deg", (1.0, 21.0))],
)
def test_matches_pyfai_no_split_histogram(geom, pyfai_ai, frame_and_mask, unit, radial_range):
    frame, mask = frame_and_mask
    npt = 600
    ours = AzimuthalIntegrator.from_geometry(
        geom, npt, unit, photon_energy_kev=ENERGY_KEV, radial_range=radial_range, mask=mask
    ).integrate(frame)
    theirs = pyfai_ai.integrate1d(
        frame.reshape(16 * 512, 128),
        npt,
        unit=unit,
        radial_range=radial_range,
        mask=mask.reshape(16 * 512, 128),
        method=("no", "histogram", "cython"),
        correctSolidAngle=False,
        polarization_factor=None,
    )
    span = radial_range[1] - radial_range[0]
    np.testing.assert_allclose(ours.radial, theirs.radial, rtol=0, atol=1e-6 * span)
    _compare(ours, theirs)
    assert ours.unit == unit


def test_matches_numpy_histogram_exactly(geom, frame_and_mask):
    """Same bins as numpy.histogram on the valid pixels: identical counts, sums to rounding."""
    frame, mask = frame_and_mask
    npt, rr = 450, (0.1, 1.3)
    q = geom.q_map(ENERGY_KEV)
    ai = AzimuthalIntegrator(q, npt, rr, mask=mask, unit="q_A^-1")
    res = ai.integrate(frame)
    valid = (mask == 0) & ~np.isnan(frame)
    counts, edges = np.histogram(q[valid], bins=npt, range=rr)
    sums, _ = np.histogram(q[valid], bins=npt, range=rr, weights=frame[valid].astype(np.float64))
    np.testing.assert_array_equal(res.count, counts)
    np.testing.assert_allclose(res.sum, sums, rtol=1e-12)
    np.testing.assert_allclose(res.radial, 0.5 * (edges[1:] + edges[:-1]), rtol=1e-12)
    good = counts > 0
    np.testing.assert_allclose(res.intensity[good], sums[good] / counts[good], rtol=1e-12)


def test_rings_show_up_where_planted(geom, frame_and_mask):
    frame, mask = frame_and_mask
    ai = AzimuthalIntegrator.from_geometry(
        geom, 800, photon_energy_kev=ENERGY_KEV, radial_range=(0.05, 1.6), mask=mask
    )
    res = ai.integrate(frame)
    for q0 in (0.35, 0.62, 1.05):
        window = np.abs(res.radial - q0) < 0.05
        peak = res.radial[window][np.nanargmax(res.intensity[window])]
        assert abs(peak - q0) < 0.005


def test_stack_equals_frame_by_frame_and_masks(geom, frame_and_mask):
    frame, mask = frame_and_mask
    ai = AzimuthalIntegrator.from_geometry(
        geom, 300, "2th_deg", radial_range=(0.5, 20.0), mask=mask
    )
    rng = np.random.default_rng(5)
    stack = np.stack([frame * s for s in (1.0, 0.5, 2.0)]).astype(np.float32)
    stack[1, 0] = np.nan
    extra = rng.random((3, *FRAME)) < 0.05
    res = ai.integrate_stack(stack, mask=extra)
    assert res.intensity.shape == res.count.shape == (3, 300)
    for i in range(3):
        one = ai.integrate(stack[i], mask=extra[i])
        np.testing.assert_array_equal(res.count[i], one.count)
        np.testing.assert_allclose(res.sum[i], one.sum, rtol=1e-12)
        # Same pixels as folding the extra mask into the static one.
        folded = AzimuthalIntegrator.from_geometry(
            geom, 300, "2th_deg", radial_range=(0.5, 20.0), mask=(mask != 0) | extra[i]
        ).integrate(stack[i])
        np.testing.assert_array_equal(folded.count, one.count)
    # A mask shared by the whole stack, and a stack of fewer frames than threads.
    shared = ai.integrate_stack(stack[:1], mask=extra[0])
    np.testing.assert_array_equal(shared.count[0], ai.integrate(stack[0], mask=extra[0]).count)
    assert ai.integrate_stack(stack[:0]).intensity.shape == (0, 300)


def test_nan_pixels_and_empty_bins(geom):
    q = geom.q_map(ENERGY_KEV)
    ai = AzimuthalIntegrator(q, 100, (0.0, 2.0))
    frame = np.ones(FRAME, np.float32)
    frame[q > 1.0] = np.nan
    res = ai.integrate(frame)
    lower = res.radial < 0.99
    assert np.all(res.count[res.radial > 1.01] == 0)
    assert np.all(np.isnan(res.intensity[res.count == 0]))
    np.testing.assert_array_equal(res.intensity[lower & (res.count > 0)], 1.0)
    # Bins below the smallest q on the detector are empty, not zero.
    assert res.count[0] == 0 and np.isnan(res.intensity[0])
    # pixels_per_bin is the static assignment, before NaN exclusion.
    assert ai.pixels_per_bin.sum() == np.count_nonzero(q <= 2.0)


def test_default_range_covers_the_unmasked_pixels(geom):
    tth = geom.two_theta_map()
    ai = AzimuthalIntegrator(tth, 50, unit="2th_deg")
    assert ai.radial_range == (tth.min(), tth.max())
    assert ai.integrate(np.ones(FRAME)).count.sum() == tth.size


def test_integer_frames_are_accepted(geom):
    ai = AzimuthalIntegrator.from_geometry(geom, 64, "r_mm")
    raw = np.full(FRAME, 7, np.uint16)
    res = ai.integrate(raw)
    np.testing.assert_array_equal(res.intensity[res.count > 0], 7.0)


def test_bad_arguments_are_refused(geom):
    q = geom.q_map(ENERGY_KEV)
    with pytest.raises(ConfigurationError):
        AzimuthalIntegrator(q, 0)
    with pytest.raises(ConfigurationError):
        AzimuthalIntegrator(q, 10, (1.0, 1.0))
    with pytest.raises(ConfigurationError):
        AzimuthalIntegrator(q, 10, mask=np.ones(FRAME, bool))
    with pytest.raises(DataShapeError):
        AzimuthalIntegrator(q, 10, mask=np.zeros((16, 512)))
    with pytest.raises(ConfigurationError):
        AzimuthalIntegrator.from_geometry(geom, 10, "chi_deg")
    ai = AzimuthalIntegrator(q, 10)
    with pytest.raises(DataShapeError):
        ai.integrate(np.zeros((16, 512, 64), np.float32))
    with pytest.raises(DataShapeError):
        ai.integrate_stack(np.zeros(FRAME, np.float32))
    with pytest.raises(DataShapeError):
        ai.integrate(np.zeros(FRAME, np.float32), mask=np.zeros((2, *FRAME)))
    with pytest.raises(DataShapeError):
        ai.integrate(np.zeros(FRAME, np.complex64))
