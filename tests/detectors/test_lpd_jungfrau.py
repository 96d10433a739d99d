"""LPD-1M and JUNGFRAU: gain decoding, dark characterisation, correction kernel, truth.

The simulator's truth is the reference: dark constants from simulated forced-gain dark runs
must match its offsets, flag exactly its bad pixels, and correct a simulated train to its
deposited energy.  The numba kernel must equal the numpy reference bit for bit.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

from pulsetrain.calibration import BadPixels
from pulsetrain.detectors import get_detector
from pulsetrain.detectors._gainbits import (
    StageConstants,
    correct,
    correct_numpy,
    decode,
    kernel_tables,
)
from pulsetrain.errors import CalibrationError, ConfigurationError
from pulsetrain.sim import DetectorSimulator

#: Small but meaningful: every memory cell gets 20 (LPD) / 16 (JUNGFRAU) dark frames per stage.
SIZES = {"LPD": {"cells": 4, "trains": 20}, "JUNGFRAU": {"cells": 2, "trains": 16}}


def _sim(name: str, cells: int, dark: int | None = None) -> DetectorSimulator:
    return DetectorSimulator(name, frames=cells, memory_cells=cells, modules=[0], seed=3, dark=dark)


@functools.lru_cache(maxsize=2)
def _dark(name: str) -> dict[str, np.ndarray]:
    det = get_detector(name)
    cells, trains = SIZES[name]["cells"], SIZES[name]["trains"]
    runs = []
    for stage in det.dark_stages:
        sim = _sim(name, cells, dark=det.stage_index(stage))
        runs.append([(sim.module_train(0, t), sim.cell_ids) for t in range(trains)])
    return det.characterize_dark(runs, cells)


def _random_constants(det, cells: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    shape = (3, cells, *det.module_shape)
    arrays = {
        "Offset": rng.uniform(100, 900, shape).astype(np.float32),
        "Noise": rng.uniform(1, 5, shape).astype(np.float32),
        "RelativeGain": rng.uniform(0.01, 2, shape).astype(np.float32),
        "BadPixelsDark": (rng.random(shape) < 0.01).astype(np.uint32),
    }
    if "FlatField" in [c.name for c in det.constant_types]:
        arrays["FlatField"] = rng.uniform(0.9, 1.1, shape[1:]).astype(np.float32)
    return arrays


def _random_raw(det, frames: int, rng: np.random.Generator, stage_mix=(0.9, 0.07, 0.03)):
    layout = det.layout
    ny, nx = det.module_shape
    adc = rng.integers(0, layout.adc_mask + 1, (frames, ny, nx), dtype=np.uint16)
    codes = rng.choice(layout.stage_codes, size=(frames, ny, nx), p=stage_mix).astype(np.uint16)
    codes[0, :16] = 0  # whole chunks in stage 0 take the kernel's fast path
    invalid = sorted(set(range(1 << (16 - layout.adc_bits))) - set(layout.stage_codes))
    codes[-1, 0, :5] = invalid[0]  # a code that is no stage
    return adc | (codes << np.uint16(layout.adc_bits))


@pytest.mark.parametrize("name", ["LPD", "JUNGFRAU"])
def test_gain_decoding_matches_the_simulator_encoding(name):
    det = get_detector(name)
    sim = _sim(name, 2)
    data, truth = sim.module_train(0, 7, return_truth=True)
    adc, code = det.split_raw(data)
    stage = det.gain_stage(code, det.cell_ids(data), {})
    np.testing.assert_array_equal(stage, truth.gain_stage)
    assert adc.max() <= det.layout.adc_mask
    _, st = decode(det.layout, np.uint16([det.layout.stage_codes[2] << det.layout.adc_bits]))
    assert st[0] == 2
    assert det.stage_index(det.gain_stages[1].lower()) == 1 and det.stage_index("2") == 2
    with pytest.raises(ConfigurationError):
        det.stage_index("X9")


@pytest.mark.parametrize("name", ["LPD", "JUNGFRAU"])
@pytest.mark.parametrize(
    "steps",
    [
        None,
        ("offset",),
        ("offset", "gainstage"),
        ("offset", "gainstage", "badpixels"),
        ("offset", "gainstage", "relgain", "badpixels"),
    ],
)
def test_kernel_equals_numpy_reference_bit_for_bit(name, steps):
    det = get_detector(name)
    rng = np.random.default_rng(1)
    cells = 3
    arrays = _random_constants(det, cells, rng)
    raw = _random_raw(det, 5, rng)
    cell_ids = np.array([2, 0, 2, 1, 0])
    steps = det.default_steps if steps is None else steps
    tables = kernel_tables(det.to_stage_constants(arrays), steps)
    for bad_to_nan in (True, False):
        got = correct(det.layout, raw, cell_ids, tables, bad_to_nan=bad_to_nan)
        ref = correct_numpy(det.layout, raw, cell_ids, tables, bad_to_nan=bad_to_nan)
        for a, b in zip(got, ref):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        assert np.isnan(got.data).any() == bad_to_nan
    # a code that is no stage is flagged and treated as the lowest stage
    assert got.mask[-1, 0, :5].tolist() == [
        v | BadPixels.WRONG_GAIN_VALUE for v in ref.mask[-1, 0, :5].tolist()
    ]
    assert (got.gain[-1, 0, :5] == 2).all()
    if steps[-1] in ("offset", "gainstage"):  # offset only: ADU above the dark level, no mask
        adc, stage = decode(det.layout, raw)
        stage = np.minimum(stage, 2) if "gainstage" in steps else np.zeros_like(stage)
        off = arrays["Offset"][stage, cell_ids[:, None, None],
                               np.arange(raw.shape[1])[:, None], np.arange(raw.shape[2])]  # fmt: skip
        np.testing.assert_array_equal(got.data, adc.astype(np.float32) - off)
        assert not got.mask[:-1].any()


@pytest.mark.parametrize("name", ["LPD", "JUNGFRAU"])
def test_missing_constants_are_named(name):
    det = get_detector(name)
    arrays = {k: v for k, v in _random_constants(det, 1, np.random.default_rng(0)).items()}
    del arrays["RelativeGain"]
    prepared = det.prepare_constants(arrays, ("offset", "badpixels"))  # dark constants suffice
    assert prepared.steps == {"offset", "badpixels"}
    with pytest.raises(CalibrationError, match="RelativeGain"):
        det.prepare_constants(arrays, det.default_steps)
    # steps that need no constant: the number of memory cells sizes the tables
    bare = det.prepare_constants({}, ("gainstage",), memory_cells=2)
    assert bare.tables.offset.shape == (3, 2, det.layout.pixels) and not bare.tables.offset.any()
    with pytest.raises(CalibrationError, match="commonmode"):
        det.prepare_constants(arrays, ("offset", "commonmode"))
    with pytest.raises(CalibrationError, match="cell 1 is outside"):
        raw = np.zeros((1, *det.module_shape), np.uint16)
        correct(det.layout, raw, [1], kernel_tables(det.to_stage_constants(arrays), ["offset"]))
    with pytest.raises(CalibrationError, match="shape"):
        StageConstants(offset=np.zeros((2, 1, 4, 4), np.float32))


@pytest.mark.parametrize("name", ["LPD", "JUNGFRAU"])
def test_dark_from_simulated_runs_matches_the_truth(name):
    det = get_detector(name)
    dark = _dark(name)
    cells = SIZES[name]["cells"]
    truth = _sim(name, cells).truth(0)
    expected = det.truth_constants(truth)
    assert set(dark) == set(det.dark_constants)
    for ctype in ("Offset", "Noise", "BadPixelsDark"):
        assert dark[ctype].shape == det.constant_shape(ctype, cells)
        assert dark[ctype].shape == expected[ctype].shape
    good = ~truth.bad_pixels
    rel = np.abs(dark["Offset"] - expected["Offset"])[:, :, good] / expected["Offset"][:, :, good]
    assert np.median(rel) < 0.01
    noise_rel = dark["Noise"][:, :, good] / expected["Noise"][:, :, good]
    assert abs(np.median(noise_rel) - 1) < 0.1
    # the flagged pixels are exactly the simulator's bad ones, in every stage and cell
    flagged = dark["BadPixelsDark"] != 0
    np.testing.assert_array_equal(flagged, np.broadcast_to(truth.bad_pixels, flagged.shape))
    assert (dark["BadPixelsDark"][:, :, truth.dead] & BadPixels.WRONG_GAIN_VALUE).all()
    assert (dark["BadPixelsDark"][:, :, truth.hot] & BadPixels.OFFSET_OUT_OF_THRESHOLD).all()
    assert (dark["BadPixelsDark"][:, :, truth.noisy] & BadPixels.NOISE_OUT_OF_THRESHOLD).all()


@pytest.mark.parametrize("name", ["LPD", "JUNGFRAU"])
def test_corrected_train_matches_the_deposited_energy(name):
    det = get_detector(name)
    cells = SIZES[name]["cells"]
    sim = _sim(name, cells)
    arrays = dict(_dark(name))
    truth_arrays = det.truth_constants(sim.truth(0))
    for ctype in ("RelativeGain", "FlatField"):
        if ctype in truth_arrays:
            arrays[ctype] = truth_arrays[ctype]
    prepared = det.prepare_constants(arrays, det.default_steps)
    data, truth = sim.module_train(0, 1234, return_truth=True)
    out = det.correct(data, prepared, det.default_steps)
    value, gain, mask = (out[k] for k in det.corrected_keys)
    assert value.dtype == np.float32 and value.shape == (cells, *det.module_shape)
    np.testing.assert_array_equal(gain, truth.gain_stage)
    np.testing.assert_array_equal(mask != 0, np.broadcast_to(sim.truth(0).bad_pixels, mask.shape))
    lit = (mask == 0) & (truth.energy_kev > 0)
    assert lit.sum() > 1000
    ratio = np.median(value[lit] / truth.energy_kev[lit])
    assert abs(ratio - 1) < 0.01, ratio
    for stage in (1, 2):  # the other stages too, where the simulator put pixels there
        sel = lit & (truth.gain_stage == stage)
        if sel.sum() >= 5:
            assert abs(np.median(value[sel] / truth.energy_kev[sel]) - 1) < 0.05
    for key in det.carried_keys:
        assert key in out
    # offset-only correction from the dark constants alone: ADU above the dark level
    dark_only = det.prepare_constants(_dark(name), ("offset",))
    adu = det.correct(data, dark_only, ("offset",))[next(iter(det.corrected_keys))]
    slope = sim.truth(0).slope[0, 0]
    sel = lit[0] & (truth.gain_stage[0] == 0) & (slope > 0)
    assert abs(np.median(adu[0][sel] / (truth.energy_kev[0][sel] * slope[sel])) - 1) < 0.01


@pytest.mark.parametrize("name", ["LPD", "JUNGFRAU"])
def test_geometry_and_sources(name):
    det = get_detector(name)
    geom = det.geometry()
    assert geom.frame_shape == (det.n_modules, *det.module_shape)
    assert geom.pixel_size_m == det.pixel_size_m
    sim = _sim(name, 1)
    for m in (0, det.n_modules - 1):
        raw = det.raw_source(m)
        assert raw == sim.spec.source(m)
        assert det.module_of(raw) == m
        assert det.module_of(det.corrected_source(raw)) == m
        assert "/CORR/" in det.corrected_source(raw)
    # the simulator puts the pixels where the plug-in's geometry does (beam at the origin)
    from pulsetrain.sim.geometry import pixel_positions

    np.testing.assert_allclose(
        geom.pixel_positions()[..., :2], pixel_positions(sim.spec)[..., :2], atol=1e-9
    )
    # and the momentum transfer it gives is the simulator's (where its water ring is)
    q = geom.replace(distance_m=sim.detector_distance_m).radial_map("q_A^-1", 9.3)
    np.testing.assert_allclose(q[1], sim.q_map(1), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_dark_analysis_median_is_numpys_nanmedian(dtype):
    from pulsetrain.detectors._gainbits import _nanmedian_last

    rng = np.random.default_rng(3)
    a = rng.normal(size=(3, 40, 6, 33)).astype(dtype)
    a[rng.random(a.shape) < 0.3] = np.nan
    a[0, 1] = np.nan  # rows with no number at all
    a[1, 2, :, 1:] = np.nan  # rows with one number
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice"
        expected = np.nanmedian(a, axis=-1)
    got = _nanmedian_last(a)
    assert got.dtype == expected.dtype
    assert np.array_equal(got, expected, equal_nan=True)
