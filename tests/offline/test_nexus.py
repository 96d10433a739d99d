"""The NeXus writer of reduced runs: finished files are renamed into place, failed ones leave
nothing behind."""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.offline.nexus import ReducedFileWriter, read_reduced

NPT = 4


def writer(path, n=3):
    index = np.arange(n, dtype=np.uint64)
    attributes = {"unit": "q_A^-1", "run_number": 7, "min_peaks": 2}
    return ReducedFileWriter(
        path, NPT, index + 100, index, index.astype(np.uint16), np.arange(NPT) * 0.5,
        np.full(NPT, 10), attributes,
    )  # fmt: skip


def result(n, value):
    return {
        "intensity": np.full((n, NPT), value, np.float32),
        "n_peaks": np.arange(n),
        "is_hit": np.arange(n) >= 2,
        "bin_sums": np.full(NPT, value * n),
        "bin_counts": np.full(NPT, n),
    }


def test_close_writes_the_mean_profile_and_renames(tmp_path):
    path = tmp_path / "r.h5"
    with writer(path) as w:
        w.write_frames(2, result(1, 4.0))  # chunks arrive in any order
        w.write_frames(0, result(2, 1.0))
        assert w.part.exists() and not path.exists()
    assert path.exists() and not w.part.exists()
    ds = read_reduced(path)
    np.testing.assert_array_equal(ds.intensity.values[:, 0], [1.0, 1.0, 4.0])
    np.testing.assert_allclose(ds.mean_profile.values, 2.0)  # (2 * 1 + 1 * 4) / 3
    assert ds.attrs["run_number"] == 7
    w.close()  # closing again does nothing
    assert path.exists()


def test_an_error_discards_the_unfinished_file(tmp_path):
    path = tmp_path / "r.h5"
    with pytest.raises(RuntimeError), writer(path) as w:
        w.write_frames(0, result(2, 1.0))
        raise RuntimeError("a task failed")
    assert not path.exists() and not w.part.exists()
    w.discard()  # and again: nothing to do
