"""``reduce_run`` / ``pulsetrain reduce``: per-pulse profiles, hits and statistics equal a
direct computation on whole frames, are physically sane, and round-trip through the NeXus file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from _offline_helpers import CELLS, FRAMES, MODULES

from pulsetrain.analysis import AzimuthalIntegrator, count_peaks, pulse_statistics
from pulsetrain.errors import FileFormatError
from pulsetrain.files import iter_run_trains
from pulsetrain.offline import ReductionParameters, read_reduced, reduce_run, reduce_run_lazy

PARAMS = ReductionParameters(npt=150, hit_threshold=200.0, min_peaks=3)


@pytest.fixture(scope="module")
def reduced(corr_report, dask_client):
    return reduce_run(corr_report.out_dir, PARAMS, client=dask_client, chunk_frames=16)


def direct(corr_dir, params):
    """The same quantities computed the obvious way: stack the modules of each train into
    (pulses, modules, 512, 128) and call the analysis functions on the whole stack."""
    rmap = params.radial_map()
    finite = rmap[np.isfinite(rmap)]
    ai = AzimuthalIntegrator(rmap[list(MODULES)], params.npt, (finite.min(), finite.max()))
    out = {
        k: [] for k in ("train_id", "intensity", "n_peaks", "count", "mean", "std", "min", "max")
    }
    for tid, data, _meta in iter_run_trains(corr_dir, sources=["*/CORR/*"]):
        srcs = [f"SPB_DET_AGIPD1M-1/CORR/{m}CH0:output" for m in MODULES]
        frames = np.stack([data[s]["image.data"] for s in srcs], axis=1)
        mask = np.stack([data[s]["image.mask"] for s in srcs], axis=1)
        res = ai.integrate_stack(frames, mask=mask)
        st = pulse_statistics(frames, mask=mask)
        out["train_id"].append(np.full(frames.shape[0], tid))
        out["intensity"].append(res.intensity)
        out["n_peaks"].append(count_peaks(frames, params.hit_threshold, mask=mask))
        for k in ("count", "mean", "std", "min", "max"):
            out[k].append(getattr(st, k))
    return {k: np.concatenate(v) for k, v in out.items()}


def test_reduction_equals_direct_computation(reduced, corr_report):
    ref = direct(corr_report.out_dir, PARAMS)
    n = 6 * FRAMES
    assert reduced.sizes == {"frame": n, "radial": PARAMS.npt}
    np.testing.assert_array_equal(reduced.train_id.values, ref["train_id"])
    assert (reduced.modules.values == len(MODULES)).all()
    np.testing.assert_allclose(
        reduced.intensity.values, ref["intensity"], rtol=2e-6, equal_nan=True
    )
    np.testing.assert_array_equal(reduced.n_peaks.values, ref["n_peaks"])
    np.testing.assert_array_equal(reduced.is_hit.values, ref["n_peaks"] >= PARAMS.min_peaks)
    np.testing.assert_array_equal(reduced.pixel_count.values, ref["count"])
    np.testing.assert_allclose(reduced.pixel_mean.values, ref["mean"], rtol=1e-12)
    np.testing.assert_allclose(reduced.pixel_std.values, ref["std"], rtol=1e-9)
    np.testing.assert_array_equal(reduced.pixel_min.values, ref["min"])
    np.testing.assert_array_equal(reduced.pixel_max.values, ref["max"])
    # pulse and cell IDs as simulated: 1.1 MHz pulse pattern, cell = frame % cells
    np.testing.assert_array_equal(reduced.pulse_id.values, np.tile(np.arange(FRAMES) * 4, 6))
    np.testing.assert_array_equal(reduced.cell_id.values, np.tile(np.arange(FRAMES) % CELLS, 6))


def test_reduction_is_physically_sane(reduced):
    """Hits are where the simulator put crystals; the water ring is where it put it."""
    from pulsetrain.sim import DetectorSimulator

    sim = DetectorSimulator("AGIPD", frames=FRAMES, memory_cells=CELLS, modules=MODULES)
    truth = np.concatenate(
        [sim.pulse_hits(int(t), 2.5) for t in np.unique(reduced.train_id.values)]
    )
    peaks = reduced.n_peaks.values
    assert truth.any() and (~truth).any()
    assert (peaks[~truth] == 0).all()  # no Bragg peak without a crystal
    assert (peaks[truth] > 0).mean() > 0.5  # most hits show peaks on these 2 modules
    # water ring at q = 2.0 1/A (sigma 0.3): the run's mean profile peaks there
    profile = reduced.mean_profile.values
    q_peak = reduced.radial.values[np.nanargmax(profile)]
    assert abs(q_peak - 2.0) < 0.3, q_peak
    assert reduced.radial.attrs["units"] == "q_A^-1"
    assert reduced.attrs["min_peaks"] == 3 and reduced.attrs["run_number"] == 1


def test_lazy_dataset_equals_computed(reduced, corr_report):
    lazy = reduce_run_lazy(corr_report.out_dir, PARAMS, chunk_frames=16)
    assert lazy.intensity.chunks[0] == (16, 8, 16, 8)  # 2 trains per chunk, per sequence file
    done = lazy.compute(scheduler="threads")
    for name in ("intensity", "n_peaks", "pixel_std", "mean_profile", "bin_pixel_count"):
        np.testing.assert_array_equal(done[name].values, reduced[name].values)


def test_cli_reduce_writes_a_nexus_file(reduced, corr_report, dask_client, tmp_path, capsys):
    from pulsetrain.cli import main

    out = tmp_path / "r0001.h5"
    argv = [
        "reduce",
        str(corr_report.out_dir),
        "--out",
        str(out),
        "--npt",
        "150",
        "--min-peaks",
        "3",
        "--scheduler",
        dask_client.scheduler.address,
        "--no-progress",
        "--chunk-frames",
        "16",
    ]
    assert main(argv) == 0
    hits = int(reduced.is_hit.sum())
    assert f"48 frames, {hits} hits" in capsys.readouterr().out
    back = read_reduced(out)
    for name in (
        "intensity",
        "n_peaks",
        "is_hit",
        "pixel_mean",
        "mean_profile",
        "train_id",
        "pulse_id",
        "radial",
    ):
        np.testing.assert_array_equal(back[name].values, reduced[name].values)
    assert back.attrs["npt"] == 150 and back.attrs["radial_range"] == list(
        reduced.attrs["radial_range"]
    )
    with h5py.File(out) as f:
        assert f.attrs["default"] == "entry"
        assert f["entry"].attrs["NX_class"] == "NXentry"
        prof = f["entry/profiles"]
        assert prof.attrs["NX_class"] == "NXdata" and prof.attrs["signal"] == "intensity"
        assert list(prof.attrs["axes"]) == ["frame", "radial"]
        assert prof["radial"].attrs["units"] == "1/angstrom"
        assert f["entry/hits"].attrs["signal"] == "n_peaks"
        assert f["entry/statistics/train_id"].id == prof["train_id"].id  # hard link
        assert f["entry/reduction"].attrs["NX_class"] == "NXprocess"
    assert main(argv) == 2  # exists: refused without --overwrite
    assert "exists" in capsys.readouterr().err


def test_write_reduced_round_trip(reduced, tmp_path):
    from pulsetrain.offline import write_reduced

    path = write_reduced(reduced, tmp_path / "x.h5")
    back = read_reduced(path)
    for name in ("intensity", "pixel_std", "mean_profile", "bin_pixel_count", "cell_id"):
        np.testing.assert_array_equal(back[name].values, reduced[name].values)


def test_raw_run_is_refused_with_a_hint(raw_run):
    with pytest.raises(FileFormatError, match="pulsetrain correct"):
        reduce_run(raw_run)
