"""Sources, keys, shapes and dtypes of every simulated detector, on both paths."""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.errors import ConfigurationError
from pulsetrain.sim import DetectorSimulator, decode

XTDF_KEYS = {
    "image.cellId": np.uint16,
    "image.pulseId": np.uint64,
    "image.trainId": np.uint64,
    "image.length": np.uint32,
    "image.status": np.uint16,
}


def check_xtdf(keys: dict, frames: int, frame_shape: tuple, tid: int) -> None:
    assert set(keys) == {"image.data", *XTDF_KEYS}
    assert keys["image.data"].shape == (frames, *frame_shape)
    assert keys["image.data"].dtype == np.uint16
    assert keys["image.data"].flags.c_contiguous
    for key, dtype in XTDF_KEYS.items():
        assert keys[key].shape == (frames,), key
        assert keys[key].dtype == dtype, key
    assert (keys["image.trainId"] == tid).all()


def test_agipd_all_modules_fast_path():
    sim = DetectorSimulator("AGIPD", frames=3, bank_size=1, hit_variants=1, seed=1)
    data, meta = sim.train(1234)
    assert list(data) == [f"SPB_DET_AGIPD1M-1/DET/{m}CH0:xtdf" for m in range(16)]
    assert sim.sources == list(data) and list(meta) == list(data)
    for src, keys in data.items():
        check_xtdf(keys, 3, (2, 512, 128), 1234)
        assert meta[src]["timestamp.tid"] == 1234 and meta[src]["source"] == src
        assert (keys["image.length"] == 2 * 512 * 128 * 2).all()
        assert (keys["image.status"] == 0).all()
    modules = [data[s]["image.data"] for s in data]
    assert all(not np.array_equal(modules[0], m) for m in modules[1:])


def test_agipd_exact_path_has_the_same_layout():
    sim = DetectorSimulator("AGIPD", frames=5, modules=[7], seed=1)
    check_xtdf(sim.module_train(7, 99), 5, (2, 512, 128), 99)


def test_cell_and_pulse_pattern():
    sim = DetectorSimulator("AGIPD", frames=20, memory_cells=8, modules=[0], bank_size=1)
    expected_cells = np.arange(20) % 8
    np.testing.assert_array_equal(sim.cell_ids, expected_cells)
    keys = sim.train(5)[0][sim.source(0)]
    np.testing.assert_array_equal(keys["image.cellId"], expected_cells)
    np.testing.assert_array_equal(keys["image.pulseId"], 4 * np.arange(20))
    sim = DetectorSimulator(frames=4, pulse_spacing=2, first_pulse_id=100)
    np.testing.assert_array_equal(sim.pulse_ids, [100, 102, 104, 106])
    np.testing.assert_array_equal(sim.cell_ids, [0, 1, 2, 3])


def test_lpd_layout_and_gain_bits():
    sim = DetectorSimulator("LPD", frames=4, bank_size=1, hit_variants=2, seed=2)
    assert sim.memory_cells == 512
    data, _ = sim.train(77, modules=[0, 15])
    assert list(data) == ["FXE_DET_LPD1M-1/DET/0CH0:xtdf", "FXE_DET_LPD1M-1/DET/15CH0:xtdf"]
    for keys in data.values():
        check_xtdf(keys, 4, (1, 256, 256), 77)
    hit_train = next(t for t in range(100) if sim.pulse_hits(t).all())
    exact, truth = sim.module_train(3, hit_train, return_truth=True)
    check_xtdf(exact, 4, (1, 256, 256), hit_train)
    adc, gain = decode("lpd", exact)
    assert adc.max() <= 4095
    np.testing.assert_array_equal(gain, truth.gain_stage)
    np.testing.assert_array_equal(exact["image.data"][:, 0], (gain << 12) | adc)
    assert set(np.unique(gain)) == {0, 1, 2}


def test_jungfrau_layout_and_gain_bits():
    sim = DetectorSimulator("JUNGFRAU", frames=2, bank_size=1, hit_variants=1, seed=3)
    assert sim.memory_cells == 16 and len(sim.modules) == 8
    data, _ = sim.train(42, modules=[0, 7])
    assert list(data) == [
        "SPB_IRDA_JF4M/DET/JNGFR01:daqOutput",
        "SPB_IRDA_JF4M/DET/JNGFR08:daqOutput",
    ]
    for keys in data.values():
        assert keys["data.adc"].shape == (2, 512, 1024) and keys["data.adc"].dtype == np.uint16
        assert keys["data.gain"].shape == (2, 512, 1024) and keys["data.gain"].dtype == np.uint8
        assert keys["data.memoryCell"].dtype == np.uint8
        np.testing.assert_array_equal(keys["data.memoryCell"], [0, 1])
        assert keys["data.frameNumber"].dtype == np.uint64
        assert keys["data.timestamp"].dtype == np.float64
        assert keys["data.trainId"] == 42 and keys["data.trainId"].dtype == np.uint64
        np.testing.assert_array_equal(keys["data.adc"] >> 14, keys["data.gain"])


def test_jungfrau_gain_codes_follow_the_stage():
    sim = DetectorSimulator("JUNGFRAU", frames=3, modules=[2], seed=3)
    hit_train = next(t for t in range(100) if sim.pulse_hits(t).all())
    exact, truth = sim.module_train(2, hit_train, return_truth=True)
    adc, code = decode("jungfrau", exact)
    np.testing.assert_array_equal(code, np.array([0, 1, 3])[truth.gain_stage])
    assert set(np.unique(code)) == {0, 1, 3}
    assert adc.max() <= 16383


def test_bad_arguments_raise_configuration_error():
    with pytest.raises(ConfigurationError, match="unknown detector"):
        DetectorSimulator("EPIX")
    with pytest.raises(ConfigurationError, match="modules 0..15"):
        DetectorSimulator(modules=[16])
    with pytest.raises(ConfigurationError, match="dark"):
        DetectorSimulator(dark="XG")
    with pytest.raises(ConfigurationError):
        DetectorSimulator(frames=0)
    with pytest.raises(ConfigurationError, match="modules 0..7"):
        DetectorSimulator("JUNGFRAU").module_train(8, 1)
