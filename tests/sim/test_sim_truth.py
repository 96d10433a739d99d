"""Ground-truth constants: layout, laziness, bad pixels, export and reload."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pulsetrain.errors import FileFormatError
from pulsetrain.sim import DetectorSimulator, load_truth
from pulsetrain.sim.truth import TruthGenerator

CELLS = 6


@pytest.fixture(scope="module")
def sim():
    return DetectorSimulator(memory_cells=CELLS, frames=CELLS, seed=11)


@pytest.fixture(scope="module")
def truth(sim):
    return sim.truth(5)


def test_layout_and_dtypes(truth):
    for name in ("offset", "slope", "noise", "digital_level"):
        arr = getattr(truth, name)
        assert arr.shape == (3, CELLS, 512, 128) and arr.dtype == np.float32, name
    assert truth.switch_kev.shape == (2, CELLS, 512, 128) and truth.switch_kev.dtype == np.float32
    for name in ("dead", "noisy", "hot"):
        arr = getattr(truth, name)
        assert arr.shape == (512, 128) and arr.dtype == bool, name
    np.testing.assert_array_equal(truth.cells, np.arange(CELLS))
    assert truth.module == 5 and truth.detector == "AGIPD"
    assert truth.gain_thresholds().shape == (2, CELLS, 512, 128)


def test_gain_stages_are_ordered_as_the_model_says(truth):
    good = ~truth.bad_pixels
    med = {
        name: np.median(getattr(truth, name)[:, :, good], axis=(1, 2))
        for name in ("offset", "slope", "noise", "digital_level")
    }
    # slopes fall by ~45 from high to medium and ~4.5 from medium to low gain
    assert med["slope"][0] / med["slope"][1] == pytest.approx(45, rel=0.05)
    assert med["slope"][1] / med["slope"][2] == pytest.approx(4.5, rel=0.05)
    # digital levels are well separated: the highest HG level is below the lowest MG level
    lev = truth.digital_level[:, :, good]
    assert lev[0].max() < lev[1].min() and lev[1].max() < lev[2].min()
    assert (truth.switch_kev[0][:, good] < truth.switch_kev[1][:, good]).all()
    assert (truth.noise[:, :, good] > 0).all()


def test_constants_vary_per_cell_more_than_the_noise(truth):
    good = ~truth.bad_pixels
    spread = truth.offset[0][:, good].std(axis=0)  # over cells, per pixel
    assert np.median(spread) > 10 * np.median(truth.noise[0][:, good])
    rel = truth.slope[0][:, good].std(axis=0) / truth.slope[0][:, good].mean(axis=0)
    assert 0.003 < np.median(rel) < 0.05


def test_bad_pixels_are_rare_disjoint_and_obvious(truth):
    n = truth.dead.size
    for mask in (truth.dead, truth.noisy, truth.hot):
        assert 0.001 * n <= mask.sum() <= 0.005 * n
    assert not (truth.dead & truth.noisy).any()
    assert not (truth.dead & truth.hot).any()
    assert not (truth.noisy & truth.hot).any()
    good = ~truth.bad_pixels
    assert (truth.noise[:, :, truth.dead] == 0).all() and (truth.slope[:, :, truth.dead] == 0).all()
    # noisy: 10-20 times the pixel's own noise, so at least ~8 times the typical noise
    median_noise = np.median(truth.noise[:, :, good], axis=-1)  # (stage, cell)
    assert (truth.noise[:, :, truth.noisy] / median_noise[..., None] > 7.5).all()
    assert (truth.noise[:, :, good] / median_noise[..., None] < 1.5).all()
    median_offset = np.median(truth.offset[:, :, good], axis=-1)
    assert (np.abs(truth.offset[:, :, truth.hot] - median_offset[..., None]) > 2500).all()
    assert (np.abs(truth.offset[:, :, good] - median_offset[..., None]) < 1500).all()


def test_truth_is_computed_for_one_module_only(monkeypatch):
    seen = []
    original = TruthGenerator.cell

    def spy(self, module, cell):
        seen.append(module)
        return original(self, module, cell)

    monkeypatch.setattr(TruthGenerator, "cell", spy)
    DetectorSimulator(memory_cells=3, seed=11).truth(9)
    assert set(seen) == {9} and len(seen) == 3


def test_truth_is_deterministic_and_independent_of_order(truth):
    other = DetectorSimulator(memory_cells=40, seed=11)
    other.truth(0, cells=[0])
    sub = other.truth(5, cells=[4, 1])
    np.testing.assert_array_equal(sub.offset[:, 0], truth.offset[:, 4])
    np.testing.assert_array_equal(sub.switch_kev[:, 1], truth.switch_kev[:, 1])
    np.testing.assert_array_equal(sub.hot, truth.hot)
    np.testing.assert_array_equal(sub.cell_index([1, 4, 4]), [1, 0, 0])
    different = DetectorSimulator(memory_cells=CELLS, seed=12).truth(5, cells=[0])
    assert not np.array_equal(different.offset[:, 0], truth.offset[:, 0])
    assert not np.array_equal(different.dead, truth.dead)


def test_export_and_load_round_trip(sim, tmp_path):
    path = tmp_path / "truth.h5"
    sim.export_truth(path, modules=[2, 5], cells=[0, 3])
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "pulsetrain.sim.truth/1"
        assert f.attrs["detector"] == "AGIPD" and f.attrs["seed"] == 11
        assert list(f.attrs["modules"]) == [2, 5]
        assert f["module_05/offset"].shape == (3, 2, 512, 128)
        assert f["module_05"].attrs["source"] == "SPB_DET_AGIPD1M-1/DET/5CH0:xtdf"
    loaded = load_truth(path, 5)
    full = sim.truth(5)
    np.testing.assert_array_equal(loaded.cells, [0, 3])
    for name in ("offset", "slope", "noise", "digital_level", "switch_kev"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(full, name)[:, [0, 3]])
    for name in ("dead", "noisy", "hot"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(full, name))
    with pytest.raises(FileFormatError, match="module 7"):
        load_truth(path, 7)
    other = tmp_path / "other.h5"
    h5py.File(other, "w").close()
    with pytest.raises(FileFormatError, match="not a"):
        load_truth(other, 5)
    with pytest.raises(FileFormatError):
        load_truth(tmp_path / "missing.h5", 5)
