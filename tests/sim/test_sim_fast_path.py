"""The fast path (bank of precomputed frames) has the exact path's distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pulsetrain.sim import DetectorSimulator

MODULE = 6
ENERGY_KEV = 9.3


@pytest.fixture(scope="module")
def sim():
    return DetectorSimulator(
        frames=16, memory_cells=16, seed=31, modules=[MODULE], bank_size=4, hit_variants=8
    )


@pytest.fixture(scope="module")
def truth(sim):
    return sim.truth(MODULE)


def photons_and_stage(data: dict, truth) -> tuple[np.ndarray, np.ndarray]:
    """Photons per pixel estimated from raw data with the true constants of each frame's cell."""
    raw = data["image.data"].astype(np.float32)
    cells = data["image.cellId"]
    thr = truth.gain_thresholds()[:, cells]
    stage = (raw[:, 1] > thr[0]).astype(np.intp) + (raw[:, 1] > thr[1])
    offset = np.take_along_axis(truth.offset[:, cells], stage[None], 0)[0]
    slope = np.take_along_axis(truth.slope[:, cells], stage[None], 0)[0]
    return (raw[:, 0] - offset) / np.where(slope > 0, slope, 1) / ENERGY_KEV, stage


def collect(sim, truth, trains):
    """Photon counts of no-hit frames, and statistics of the Bragg-peak pixels of hit frames."""
    good = ~truth.bad_pixels
    no_hit, peak_pixels, n_peak_pixels, with_medium = [], [], [], []
    for tid, data in trains:
        hits = sim.pulse_hits(tid)
        photons, stage = photons_and_stage(data, truth)
        photons, stage = photons[:, good], stage[:, good]
        assert not (stage[~hits] > 0).any(), "medium/low gain without a hit"
        no_hit.append(np.rint(photons[~hits]).ravel())
        for f in np.flatnonzero(hits):
            bright = photons[f] > 50
            peak_pixels.append(photons[f][bright])
            n_peak_pixels.append(bright.sum())
            with_medium.append((stage[f] > 0).any())
    return (
        np.concatenate(no_hit),
        np.concatenate(peak_pixels),
        np.array(n_peak_pixels),
        np.array(with_medium),
    )


@pytest.fixture(scope="module")
def both(sim, truth):
    exact = collect(sim, truth, ((t, sim.module_train(MODULE, t)) for t in range(6)))
    fast = collect(sim, truth, ((t, sim.train(t)[0][sim.source(MODULE)]) for t in range(100, 130)))
    return exact, fast


def test_same_layout_and_frame_info(sim):
    exact = sim.module_train(MODULE, 55)
    fast = sim.module_train_fast(MODULE, 55)
    assert exact.keys() == fast.keys()
    for key in exact:
        assert exact[key].dtype == fast[key].dtype and exact[key].shape == fast[key].shape
        if key != "image.data":
            np.testing.assert_array_equal(exact[key], fast[key])


def test_no_hit_frames_have_the_same_photon_statistics(sim, truth, both):
    (ex_counts, *_), (fa_counts, *_) = both
    ex = np.bincount(np.clip(ex_counts, 0, 10).astype(int), minlength=11) / ex_counts.size
    fa = np.bincount(np.clip(fa_counts, 0, 10).astype(int), minlength=11) / fa_counts.size
    np.testing.assert_allclose(fa, ex, atol=0.004)
    expected_mean = sim.expected_ring_photons(MODULE)[~truth.bad_pixels].mean()
    assert ex_counts.mean() == pytest.approx(expected_mean, abs=0.01)
    assert fa_counts.mean() == pytest.approx(expected_mean, abs=0.01)


def test_hit_frames_have_the_same_peak_statistics(both):
    from scipy import stats

    (_, ex_pix, ex_n, ex_mg), (_, fa_pix, fa_n, fa_mg) = both
    assert len(ex_n) > 40 and len(fa_n) > 200
    se = math.sqrt(ex_n.var() / len(ex_n) + fa_n.var() / len(fa_n))
    assert abs(ex_n.mean() - fa_n.mean()) < 5 * se
    p = 0.5 * (ex_mg.mean() + fa_mg.mean())
    se = math.sqrt(p * (1 - p) * (1 / len(ex_mg) + 1 / len(fa_mg)))
    assert abs(ex_mg.mean() - fa_mg.mean()) < 5 * se
    assert stats.ks_2samp(np.log(ex_pix), np.log(fa_pix)).statistic < 0.12
    # peaks span the gain stages: from tens to thousands of photons
    assert ex_pix.max() > 2000 and fa_pix.max() > 2000


def test_recycled_buffers_never_overwrite_a_kept_train(sim):
    kept = [sim.train(t)[0][sim.source(MODULE)]["image.data"] for t in range(200, 210)]
    copies = [k.copy() for k in kept]
    for t in range(210, 220):
        sim.train(t)
    for k, c in zip(kept, copies):
        np.testing.assert_array_equal(k, c)
    again = sim.train(205)[0][sim.source(MODULE)]["image.data"]
    np.testing.assert_array_equal(again, copies[5])
