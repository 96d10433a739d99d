"""Raw AGIPD data against the truth: gain stages, digital and analogue values, dark runs."""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.sim import DetectorSimulator

MODULE = 4
FRAMES = 16


@pytest.fixture(scope="module")
def sim():
    return DetectorSimulator(frames=FRAMES, memory_cells=FRAMES, seed=21, modules=[MODULE])


@pytest.fixture(scope="module")
def truth(sim):
    return sim.truth(MODULE)


@pytest.fixture(scope="module")
def hit_trains(sim):
    """Two exact module-trains at the sample centre, with their signal truth."""
    return [sim.module_train(MODULE, tid, return_truth=True) for tid in (500, 501)]


def per_frame(const: np.ndarray, stage: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """``const[stage, cell]`` for every frame and pixel."""
    c = const[:, cells]  # (stages, frames, ss, fs)
    return np.take_along_axis(c, stage[None].astype(np.intp), 0)[0]


def test_stage_follows_the_switching_thresholds(hit_trains, truth):
    for data, sig in hit_trains:
        cells = data["image.cellId"]
        np.testing.assert_array_equal(cells, sig.cell_ids)
        sw = truth.switch_kev[:, cells]
        expected = (sig.energy_kev >= sw[0]).astype(np.uint8) + (sig.energy_kev >= sw[1])
        np.testing.assert_array_equal(sig.gain_stage, expected)


def test_all_three_stages_appear_in_hits_and_only_in_hits(hit_trains):
    counts = np.zeros(3, int)
    for _, sig in hit_trains:
        assert sig.hits.any() and not sig.hits.all()
        no_hit = ~sig.hits
        assert (sig.gain_stage[no_hit] == 0).all()
        peaks = sig.energy_kev[sig.hits] > 50 * 9.3  # pixels with > 50 photons: Bragg peaks
        counts += np.bincount(sig.gain_stage[sig.hits][peaks], minlength=3)
    # some peak pixels in high gain, many in medium gain, some in low gain
    assert counts[0] > 20 and counts[1] > 200 and counts[2] > 20
    assert counts[1] > counts[0] and counts[1] > counts[2]


def test_digital_value_matches_the_stage_level(hit_trains, truth):
    for data, sig in hit_trains:
        cells = data["image.cellId"]
        digital = data["image.data"][:, 1].astype(np.float32)
        level = per_frame(truth.digital_level, sig.gain_stage, cells)
        dev = (digital - level)[:, ~truth.dead]
        assert np.abs(dev).max() < 6 * truth.digital_noise + 1
        assert dev.std() == pytest.approx(truth.digital_noise, rel=0.05)
        thr = truth.gain_thresholds()[:, cells]
        decoded = (digital > thr[0]).astype(np.uint8) + (digital > thr[1])
        alive = ~truth.dead  # dead pixels: constant output, no separate levels
        np.testing.assert_array_equal(decoded[:, alive], sig.gain_stage[:, alive])


def test_analog_value_is_offset_plus_slope_times_energy_plus_noise(hit_trains, truth):
    good = ~truth.bad_pixels
    z_all = []
    for data, sig in hit_trains:
        cells = data["image.cellId"]
        analog = data["image.data"][:, 0].astype(np.float64)
        off = per_frame(truth.offset, sig.gain_stage, cells)
        slope = per_frame(truth.slope, sig.gain_stage, cells)
        noise = per_frame(truth.noise, sig.gain_stage, cells)
        assert analog[:, good].max() < truth.adc_max  # never saturates for good pixels
        expected = off + slope * sig.energy_kev
        z_all.append((analog - expected)[:, good] / noise[:, good])
        # dead pixels are constant: their offset, whatever the signal
        np.testing.assert_array_equal(analog[:, truth.dead], np.rint(off[:, truth.dead]))
    z = np.concatenate([a.ravel() for a in z_all])
    assert abs(z.mean()) < 0.01
    assert z.std() == pytest.approx(1.0, abs=0.02)  # includes rounding to integer ADU
    assert np.abs(z).max() < 7


@pytest.mark.parametrize("stage_name, stage", [("HG", 0), ("MG", 1), ("LG", 2)])
def test_dark_runs_force_the_gain_and_show_offset_and_noise(stage_name, stage):
    cells = 2
    sim = DetectorSimulator(frames=32, memory_cells=cells, seed=5, dark=stage_name, modules=[1])
    assert sim.hit_probability(sim.sample.sample_centre_mm) == 0
    truth = sim.truth(1)
    trains = [sim.module_train(1, tid, return_truth=True) for tid in range(3)]
    raw = np.concatenate([d["image.data"] for d, _ in trains]).astype(np.float64)
    cell_ids = np.concatenate([d["image.cellId"] for d, _ in trains])
    for _, sig in trains:
        assert (sig.gain_stage == stage).all()
        assert (sig.energy_kev == 0).all() and not sig.hits.any()
    thr = truth.gain_thresholds()
    for c in range(cells):
        frames = raw[cell_ids == c]  # (48, 2, 512, 128)
        analog, digital = frames[:, 0], frames[:, 1]
        decoded = (digital > thr[0, c]).astype(int) + (digital > thr[1, c])
        assert (decoded[:, ~truth.dead] == stage).all()  # dead pixels: constant output
        mean, std = analog.mean(axis=0), analog.std(axis=0, ddof=1)
        good = ~truth.bad_pixels
        n = len(frames)
        pull = (mean - truth.offset[stage, c])[good] / (truth.noise[stage, c][good] / np.sqrt(n))
        assert np.abs(pull).max() < 6
        ratio = std[good] / truth.noise[stage, c][good]
        assert np.median(ratio) == pytest.approx(1.0, abs=0.03)

        # a simple dark characterisation finds exactly the simulated bad pixels
        med_std, med_mean = np.median(std), np.median(mean)
        np.testing.assert_array_equal(std == 0, truth.dead)
        np.testing.assert_array_equal(std > 5 * med_std, truth.noisy)
        np.testing.assert_array_equal(np.abs(mean - med_mean) > 2500, truth.hot)


def test_dark_fast_path_is_forced_too():
    sim = DetectorSimulator(frames=8, memory_cells=8, seed=5, dark="LG", modules=[2], bank_size=2)
    truth = sim.truth(2)
    data, _ = sim.train(10)
    raw = data[sim.source(2)]["image.data"].astype(np.float32)
    thr = truth.gain_thresholds()
    good = ~truth.bad_pixels
    assert (raw[:, 1] > thr[1])[:, good].all()
    diff = (raw[:, 0] - truth.offset[2])[:, good] / truth.noise[2][:, good]
    assert abs(diff.mean()) < 0.02 and diff.std() == pytest.approx(1.0, abs=0.03)
