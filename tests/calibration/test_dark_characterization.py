"""Dark characterisation: streaming statistics, thresholds and dark bad-pixel flags."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest

from pulsetrain.calibration import (
    AGIPDConstants,
    BadPixels,
    DarkAccumulator,
    DarkResult,
    StageStatistics,
    characterize_dark,
    combine_constants,
    correct_agipd,
    evaluate_dark,
)
from pulsetrain.errors import CalibrationError

CELLS = 4
FRAMES_PER_CELL = 30
LEVELS = (4000.0, 5500.0, 7000.0)


@dataclass
class DarkTruth:
    offset: np.ndarray  # (3, cells, 512, 128)
    noise: np.ndarray
    level: np.ndarray
    dead: np.ndarray  # (512, 128) bool
    noisy: np.ndarray
    hot: np.ndarray


def make_truth(seed: int = 0) -> DarkTruth:
    rng = np.random.default_rng(seed)
    shape = (3, CELLS, 512, 128)
    offset = rng.normal(np.array([5000.0, 5600.0, 6200.0])[:, None, None, None], 30.0, shape)
    noise = np.array([10.0, 6.0, 4.0])[:, None, None, None] * np.exp(rng.normal(0, 0.05, shape))
    level = np.broadcast_to(np.array(LEVELS)[:, None, None, None], shape).copy()
    level += rng.normal(0, 20.0, shape)
    picks = rng.choice(512 * 128, 60, replace=False)
    dead, noisy, hot = (np.zeros(512 * 128, bool) for _ in range(3))
    dead[picks[:20]], noisy[picks[20:40]], hot[picks[40:]] = True, True, True
    dead, noisy, hot = (m.reshape(512, 128) for m in (dead, noisy, hot))
    noise[:, :, noisy] *= 8
    offset[:, :, hot] += 2000
    return DarkTruth(offset, noise, level, dead, noisy, hot)


def dark_frames(truth: DarkTruth, stage: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All frames of a forced-gain dark run, cycling through the cells."""
    rng = np.random.default_rng(seed)
    ids = np.tile(np.arange(CELLS), FRAMES_PER_CELL)
    shape = (ids.size, 512, 128)
    analog = truth.offset[stage, ids] + truth.noise[stage, ids] * rng.standard_normal(
        shape, dtype=np.float32
    )
    digital = truth.level[stage, ids] + 15.0 * rng.standard_normal(shape, dtype=np.float32)
    analog[:, truth.dead] = 3000  # dead: constant output
    digital[:, truth.dead] = 100
    raw = np.empty((ids.size, 2, 512, 128), np.uint16)
    raw[:, 0] = np.rint(analog)
    raw[:, 1] = np.rint(digital)
    return raw, ids.astype(np.uint16)


def chunks(frames: tuple[np.ndarray, np.ndarray], size: int):
    raw, cells = frames
    for start in range(0, raw.shape[0], size):
        yield raw[start : start + size], cells[start : start + size]


@pytest.fixture(scope="module")
def truth() -> DarkTruth:
    return make_truth()


@pytest.fixture(scope="module")
def runs(truth) -> list[tuple[np.ndarray, np.ndarray]]:
    return [dark_frames(truth, stage, 10 + stage) for stage in range(3)]


@pytest.fixture(scope="module")
def stats(runs) -> list[StageStatistics]:
    result = []
    for frames in runs:
        acc = DarkAccumulator(CELLS)
        for raw, cells in chunks(frames, CELLS):
            acc.add(raw, cells)
        result.append(acc.statistics())
    return result


@pytest.fixture(scope="module")
def dark(stats) -> DarkResult:
    return evaluate_dark(stats)


def test_accumulator_equals_numpy_mean_and_std(runs, stats, truth):
    raw, cells = runs[1]
    acc = DarkAccumulator(CELLS)
    for chunk in chunks(runs[1], 7):  # chunks that do not align with the cells
        acc.add(*chunk)
    mg = acc.statistics()
    np.testing.assert_array_equal(mg.frames_per_cell, [FRAMES_PER_CELL] * CELLS)
    for c in range(CELLS):
        frames = raw[cells == c].astype(np.float64)
        np.testing.assert_allclose(mg.offset[c], frames[:, 0].mean(0), rtol=1e-6)
        np.testing.assert_allclose(mg.noise[c], frames[:, 0].std(0, ddof=1), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(mg.digital_mean[c], frames[:, 1].mean(0), rtol=1e-6)
        np.testing.assert_allclose(
            mg.digital_std[c], frames[:, 1].std(0, ddof=1), rtol=1e-5, atol=1e-5
        )
    assert (mg.noise[:, truth.dead] == 0).all()  # constant pixels: exactly zero
    # chunking does not change anything: same bits as with chunks of one train
    np.testing.assert_array_equal(mg.offset, stats[1].offset)
    np.testing.assert_array_equal(mg.noise, stats[1].noise)
    np.testing.assert_array_equal(mg.digital_std, stats[1].digital_std)


def test_accumulator_cells_without_frames():
    acc = DarkAccumulator(3)
    raw = np.full((3, 2, 512, 128), 1000, np.uint16)
    raw[1] += 2
    acc.add(raw, np.array([0, 0, 2]))
    st = acc.statistics()
    np.testing.assert_array_equal(st.frames_per_cell, [2, 0, 1])
    assert (st.offset[0] == 1001).all() and (st.noise[0] == np.float32(np.sqrt(2))).all()
    assert np.isnan(st.offset[1:]).all() and np.isnan(st.noise[1:]).all()  # < 2 frames
    assert acc.frames == 3


def test_offset_noise_and_thresholds_recover_truth(dark, truth):
    good = ~(truth.dead | truth.noisy | truth.hot)
    standard_error = truth.noise[:, :, good] / np.sqrt(FRAMES_PER_CELL)
    assert np.abs((dark.offset - truth.offset)[:, :, good] / standard_error).max() < 6.5
    variance_ratio = ((dark.noise / truth.noise)[:, :, good]) ** 2  # unbiased for ddof=1
    assert abs(np.mean(variance_ratio) - 1) < 0.005
    np.testing.assert_allclose(
        dark.thresholds, 0.5 * (dark.digital_mean[:-1] + dark.digital_mean[1:]), rtol=1e-6
    )
    true_mid = 0.5 * (truth.level[:-1] + truth.level[1:])
    assert np.abs(dark.thresholds - true_mid)[:, :, good].max() < 15
    assert dark.frames_per_cell.shape == (3, CELLS)
    assert (dark.frames_per_cell == FRAMES_PER_CELL).all()
    for name in ("offset", "noise", "digital_mean", "digital_std"):
        assert getattr(dark, name).shape == (3, CELLS, 512, 128)
        assert getattr(dark, name).dtype == np.float32
    assert dark.thresholds.shape == (2, CELLS, 512, 128) and dark.thresholds.dtype == np.float32
    assert dark.bad_pixels.dtype == np.uint32 and dark.memory_cells == CELLS


def test_bad_pixels_flag_exactly_the_broken_pixels(dark, truth):
    expected = truth.dead | truth.noisy | truth.hot
    flagged = dark.bad_pixels != 0
    # every stage and cell flags exactly the broken pixels (propagated over stages)
    assert (flagged == expected).all()
    bad = dark.bad_pixels[:, :, expected]
    assert (dark.bad_pixels[:, :, truth.hot] & BadPixels.OFFSET_OUT_OF_THRESHOLD).all()
    assert (dark.bad_pixels[:, :, truth.noisy] & BadPixels.NOISE_OUT_OF_THRESHOLD).all()
    dead = dark.bad_pixels[:, :, truth.dead]
    assert (dead & BadPixels.NOISE_OUT_OF_THRESHOLD).all()
    assert (dead & BadPixels.GAIN_THRESHOLDING_ERROR).all()  # equal digital levels
    assert not (bad & ~np.uint32(BadPixels.dark_flags())).any()


def test_characterize_dark_streams_the_runs(runs, dark):
    seen = []
    res = characterize_dark(
        *(chunks(frames, 40) for frames in runs),
        memory_cells=CELLS,
        progress=lambda stage, n: seen.append((stage, n)),
    )
    assert seen == [(s, 40) for s in ("HG", "MG", "LG") for _ in range(3)]
    for name in ("offset", "noise", "thresholds", "bad_pixels", "digital_std"):
        np.testing.assert_array_equal(getattr(res, name), getattr(dark, name))


def _modified(stats: list[StageStatistics]) -> list[StageStatistics]:
    return [replace(s, **{k: getattr(s, k).copy() for k in vars(s)}) for s in stats]


def test_flags_without_propagation_and_across_cells(stats):
    st = _modified(stats)
    st[0].offset[2, 5, 6] += 3000  # hot only in HG, cell 2
    res = evaluate_dark(st, propagate_stages=False)
    assert res.bad_pixels[0, 2, 5, 6] == BadPixels.OFFSET_OUT_OF_THRESHOLD
    assert res.bad_pixels[1, 2, 5, 6] == 0 and res.bad_pixels[0, 1, 5, 6] == 0
    res = evaluate_dark(st)
    assert (res.bad_pixels[:, 2, 5, 6] == BadPixels.OFFSET_OUT_OF_THRESHOLD).all()
    assert (res.bad_pixels[:, [0, 1, 3], 5, 6] == 0).all()
    res = evaluate_dark(st, propagate_cells=True)
    assert (res.bad_pixels[:, :, 5, 6] == BadPixels.OFFSET_OUT_OF_THRESHOLD).all()


def test_overlapping_levels_dead_asic_missing_cell_and_nan(stats):
    st = _modified(stats)
    st[1].digital_mean[:, 300, 100] = st[0].digital_mean[:, 300, 100] + 10  # MG on top of HG
    st[2].digital_mean[:, 301, 100] = st[1].digital_mean[:, 301, 100] - 5  # LG below MG
    for s in st:
        s.noise[:, 64:128, 0:64] = 0.0  # a dead ASIC
    st[1].frames_per_cell[CELLS - 1] = 0  # the last cell is missing in MG
    st[1].offset[CELLS - 1] = np.nan
    st[1].noise[CELLS - 1] = np.nan
    st[2].offset[1, 400, 7] = np.inf  # an evaluation error
    res = evaluate_dark(st)
    for pixel in ((300, 100), (301, 100)):
        flags = res.bad_pixels[:, : CELLS - 1, pixel[0], pixel[1]]
        assert (flags == BadPixels.GAIN_THRESHOLDING_ERROR).all()
    assert (res.bad_pixels[:, : CELLS - 1, 64:128, 0:64] & BadPixels.NOISE_OUT_OF_THRESHOLD).all()
    assert (res.bad_pixels[:, CELLS - 1] & BadPixels.NO_DARK_DATA).all()
    assert not (res.bad_pixels[:, : CELLS - 1] & BadPixels.NO_DARK_DATA).any()
    assert not (res.bad_pixels[:, CELLS - 1] & BadPixels.OFFSET_NOISE_EVAL_ERROR).any()
    assert (res.bad_pixels[:, 1, 400, 7] == BadPixels.OFFSET_NOISE_EVAL_ERROR).all()
    with pytest.raises(CalibrationError, match="need 3 gain stages"):
        evaluate_dark(st[:2])


def test_errors(runs):
    with pytest.raises(CalibrationError, match="dark run MG: no frames"):
        characterize_dark(chunks(runs[0], 8), [], [], memory_cells=CELLS)
    with pytest.raises(CalibrationError, match="cellId 3 outside 0..2"):
        characterize_dark(chunks(runs[0], 8), [], [], memory_cells=3)
    acc = DarkAccumulator(CELLS)
    raw, cells = next(chunks(runs[0], 4))
    with pytest.raises(CalibrationError, match="dtype must be uint16"):
        acc.add(raw.astype(np.int32), cells)
    with pytest.raises(CalibrationError, match="shape must be"):
        acc.add(raw[:, :1], cells)
    with pytest.raises(CalibrationError, match="cell_ids must be integers"):
        acc.add(raw, cells[:-1])
    with pytest.raises(CalibrationError, match="memory_cells"):
        DarkAccumulator(0)


def test_combine_constants(dark, runs):
    slope = np.array([20.0, 1.0, 0.2])[:, None, None]  # ADU per keV
    rel = np.broadcast_to(1 / slope, (3, 512, 128)).astype(np.float32).copy()
    rel[1, 7, 8] = np.nan
    rel[2, 9, 10] = -1.0
    extra = np.zeros((3, 1, 512, 128), np.uint32)
    extra[:, :, 11, 12] = BadPixels.FF_GAIN_DEVIATION
    consts = combine_constants(dark, rel, extra_bad_pixels=extra)
    assert isinstance(consts, AGIPDConstants) and consts.memory_cells == CELLS
    assert consts.rel_gain.shape == (3, CELLS, 512, 128)
    assert (consts.bad_pixels[:, :, 7, 8] & BadPixels.CI_EVAL_ERROR).all()
    assert (consts.bad_pixels[:, :, 9, 10] & BadPixels.CI_EVAL_ERROR).all()
    assert (consts.bad_pixels[:, :, 11, 12] == BadPixels.FF_GAIN_DEVIATION).all()
    assert consts.noise is not None
    np.testing.assert_array_equal(consts.offset, dark.offset)
    assert (dark.bad_pixels[:, :, 7, 8] == 0).all()  # the dark result is not modified

    # a dark frame corrected with its own constants is ~0 keV with the noise in keV
    raw, cells = runs[0][0][:8], runs[0][1][:8]
    res = correct_agipd(raw, cells, consts)
    good = res.mask == 0
    assert (res.gain[good] == 0).all()
    assert abs(np.median(res.data[good])) < 0.05
    assert np.std(res.data[good]) == pytest.approx(10.0 / 20.0, rel=0.1)

    with pytest.raises(CalibrationError, match="rel_gain: shape"):
        combine_constants(dark, np.ones((3, 2, 512, 128), np.float32))
    with pytest.raises(CalibrationError, match="rel_gain: dtype"):
        combine_constants(dark, np.ones((3, 512, 128), np.int32))
    with pytest.raises(CalibrationError, match="extra_bad_pixels"):
        combine_constants(dark, rel, extra_bad_pixels=np.zeros((2, 3), np.uint32))
