"""End to end against the simulator's ground truth: dark runs -> constants -> corrected hits.

Dark runs in each forced gain are characterised, combined with relative gains 1/slope from the
simulator truth, and used to correct hit trains.  The corrected signal must match the true
deposited energy within 1 % (median ratio) in each gain stage, the gain stage must be the true
one, and the mask must flag exactly the pixels the simulator made bad.
"""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.calibration import (
    BadPixels,
    characterize_dark,
    combine_constants,
    correct_agipd,
    correct_agipd_numpy,
)
from pulsetrain.sim import DetectorSimulator

pytestmark = pytest.mark.slow  # end to end: ~1500 simulated frames (about 10-15 s)

MODULE = 3
CELLS = 16
FRAMES = 32  # two frames per memory cell per train
DARK_TRAINS = 15  # -> 30 dark frames per cell and gain stage
HIT_TRAINS = 8
SEED = 7


def dark_run(stage: str):
    sim = DetectorSimulator(
        detector="AGIPD", frames=FRAMES, memory_cells=CELLS, seed=SEED, dark=stage
    )
    for train_id in range(10_000, 10_000 + DARK_TRAINS):
        data = sim.module_train(MODULE, train_id)
        yield data["image.data"], data["image.cellId"]


@pytest.fixture(scope="module")
def setup():
    sim = DetectorSimulator(detector="AGIPD", frames=FRAMES, memory_cells=CELLS, seed=SEED)
    truth = sim.truth(MODULE)
    dark = characterize_dark(dark_run("HG"), dark_run("MG"), dark_run("LG"), memory_cells=CELLS)
    with np.errstate(divide="ignore"):
        rel_gain = 1.0 / truth.slope  # slope 0 (dead pixels) -> inf -> flagged
    constants = combine_constants(dark, rel_gain)
    trains = [
        sim.module_train(MODULE, train_id, return_truth=True)
        for train_id in range(20_000, 20_000 + HIT_TRAINS)
    ]
    corrected = [
        correct_agipd(data["image.data"], data["image.cellId"], constants) for data, _ in trains
    ]
    return truth, dark, constants, trains, corrected


def test_dark_constants_match_truth(setup):
    truth, dark, _, _, _ = setup
    good = ~truth.bad_pixels
    n = dark.frames_per_cell[:, :, None]
    assert (dark.frames_per_cell == DARK_TRAINS * FRAMES // CELLS).all()
    # offsets within 6 standard errors (plus ADC rounding) of the truth
    err = np.abs(dark.offset - truth.offset)[:, :, good]
    assert (err < 6 * truth.noise[:, :, good] / np.sqrt(n) + 0.5).all()
    variance_ratio = (dark.noise[:, :, good] / truth.noise[:, :, good]) ** 2
    for stage in range(3):
        assert abs(variance_ratio[stage].mean() - 1) < 0.02, stage
    # thresholds: midpoints of measured digital levels, close to the ideal ones
    ideal = truth.gain_thresholds()
    assert np.abs(dark.thresholds - ideal)[:, :, good].max() < 15


@pytest.mark.parametrize(
    ("stage", "min_kev"),
    [(0, 45.0), (1, 0.0), (2, 0.0)],  # HG: >= ~5 photons of 9.3 keV, noise ~0.6 keV
    ids=["HG", "MG", "LG"],
)
def test_corrected_signal_matches_true_energy(setup, stage, min_kev):
    _, _, _, trains, corrected = setup
    ratios = []
    for (_, signal), res in zip(trains, corrected):
        sel = (signal.gain_stage == stage) & (res.mask == 0) & (signal.energy_kev > min_kev)
        ratios.append(res.data[sel] / signal.energy_kev[sel])
    ratios = np.concatenate(ratios)
    assert ratios.size >= 200, f"only {ratios.size} pixels in stage {stage}"
    assert abs(np.median(ratios) - 1) < 0.01, (stage, np.median(ratios), ratios.size)


def test_gain_stage_is_the_true_stage(setup):
    truth, _, _, trains, corrected = setup
    good = ~truth.bad_pixels
    wrong = total = 0
    for (_, signal), res in zip(trains, corrected):
        wrong += np.count_nonzero((res.gain != signal.gain_stage)[:, good])
        total += res.gain[:, good].size
        for stage in range(3):
            assert np.any((signal.gain_stage == stage)[:, good])
    assert wrong <= 1e-5 * total, f"{wrong} of {total} pixels in the wrong gain stage"


def test_mask_flags_exactly_the_simulated_bad_pixels(setup):
    truth, dark, constants, _, corrected = setup
    expected = truth.dead | truth.noisy | truth.hot
    assert expected.sum() > 100
    for res in corrected:
        flagged = res.mask != 0
        missed = np.count_nonzero(expected & ~flagged)
        extra = np.count_nonzero(~expected & flagged)
        assert missed == 0 and extra == 0, f"{missed} bad pixels missed, {extra} good flagged"
    # every stage and cell of the constants agrees
    assert ((constants.bad_pixels != 0) == expected).all()
    dark_flags = np.uint32(BadPixels.dark_flags())
    assert ((dark.bad_pixels != 0) == expected).all()
    assert not (dark.bad_pixels & ~dark_flags).any()
    assert (dark.bad_pixels[:, :, truth.hot] & BadPixels.OFFSET_OUT_OF_THRESHOLD).all()
    assert (dark.bad_pixels[:, :, truth.noisy] & BadPixels.NOISE_OUT_OF_THRESHOLD).all()
    assert (dark.bad_pixels[:, :, truth.dead] & BadPixels.NOISE_OUT_OF_THRESHOLD).all()


def test_numba_equals_numpy_on_simulated_data(setup):
    _, _, constants, trains, corrected = setup
    data, _ = trains[0]
    ref = correct_agipd_numpy(data["image.data"], data["image.cellId"], constants, bad_to_nan=True)
    fast = correct_agipd(data["image.data"], data["image.cellId"], constants, bad_to_nan=True)
    np.testing.assert_array_equal(fast.gain, ref.gain)
    np.testing.assert_array_equal(fast.mask, ref.mask)
    np.testing.assert_allclose(fast.data, ref.data, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(fast.gain, corrected[0].gain)
