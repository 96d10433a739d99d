"""Pure image-analysis functions against numpy: histograms, binned statistics, ROI gathering."""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.analysis.averaging import TrainWindow, pulse_mean, pulse_slice
from pulsetrain.analysis.binning import ScatterPoints, binned_statistics
from pulsetrain.analysis.histogram import (
    auto_range,
    bin_edges,
    bin_indices,
    finite_moments,
    histogram,
    pulse_histograms,
)
from pulsetrain.analysis.roi import Rect, RegionGather, parse_rect, roi_statistics
from pulsetrain.errors import ConfigurationError
from pulsetrain.geometry import PreviewAssembler, agipd1m_geometry
from pulsetrain.geometry.preview import pixel_location, q_ring_radius_m


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16])
def test_histograms_equal_numpy_including_edges(dtype):
    rng = np.random.default_rng(1)
    values = (rng.normal(50, 20, (3, 40, 30))).astype(dtype)
    if dtype != np.uint16:
        values[0, 0, :5] = [np.nan, np.inf, -np.inf, 0.1, 99.9]
    # values on the edges (integers, range 0..100 in 7 bins: edges not representable)
    values[1, 0, :4] = [0, 100, 50, 1]
    edges = bin_edges(7, (0.0, 100.0))
    counts = pulse_histograms(values, edges)
    for p in range(3):
        ref = np.histogram(values[p].astype(np.float64), bins=edges)[0]
        np.testing.assert_array_equal(counts[p], ref)
    np.testing.assert_array_equal(
        histogram(values, edges), np.histogram(values.astype(np.float64), bins=edges)[0]
    )
    finite = values[np.isfinite(values)].astype(np.float64)
    lo, hi = auto_range(values)
    assert (lo, hi) == (finite.min(), finite.max())
    n, s, s2 = finite_moments(values)
    assert n == finite.size and s == pytest.approx(finite.sum()) and s2 > 0
    idx = bin_indices(values[1].ravel(), edges)
    ref_idx = np.digitize(values[1].ravel().astype(np.float64), edges) - 1
    ref_idx[values[1].ravel() == 100] = 6
    ref_idx[(values[1].ravel() < 0) | (values[1].ravel() > 100)] = -1
    np.testing.assert_array_equal(idx, ref_idx)


def test_histogram_rules():
    assert auto_range(np.array([3.0, 3.0])) == (2.5, 3.5)
    assert auto_range(np.array([np.nan])) == (0.0, 1.0)
    with pytest.raises(ConfigurationError, match="lo < hi"):
        bin_edges(10, (1.0, 1.0))
    with pytest.raises(ConfigurationError, match="bins"):
        bin_edges(0, (0.0, 1.0))


def test_binned_statistics_equal_numpy():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 3, 500)
    y = 2 * x + rng.normal(0, 0.3, 500)
    x[:3] = [np.nan, 3.0, -1.0]
    st = binned_statistics(x, y, 8, (-1.0, 3.0))
    ok = np.isfinite(x)
    edges = np.linspace(-1, 3, 9)
    np.testing.assert_array_equal(st.count, np.histogram(x[ok], edges)[0])
    for b in range(8):
        sel = (x[ok] >= edges[b]) & ((x[ok] < edges[b + 1]) | ((b == 7) & (x[ok] == 3.0)))
        assert st.mean[b] == pytest.approx(np.mean(y[ok][sel]))
        assert st.std[b] == pytest.approx(np.std(y[ok][sel]))
    empty = binned_statistics(np.array([0.0, 0.1]), np.array([1.0, 2.0]), 4, (0.0, 10.0))
    assert np.isnan(empty.mean[1:]).all() and empty.count.tolist() == [2, 0, 0, 0]
    np.testing.assert_allclose(empty.centres, [1.25, 3.75, 6.25, 8.75])


def test_rect_validation():
    assert parse_rect([0, 0, 0, 0], (100, 50)).off
    assert parse_rect([10, 20, 5, 6], (100, 50)) == Rect(10, 20, 5, 6)
    for bad, match in [
        ([40, 0, 11, 1], "outside the image"),
        ([0, 95, 1, 6], "outside the image"),
        ([-1, 0, 2, 2], "outside the image"),
        ([0, 0, 0, 3], "width and height"),
        ([1, 2, 3], "4 integers"),
        ([1.5, 2, 3, 4], "4 integers"),
        ("abc", r"\[x, y, w, h\]"),
    ]:
        with pytest.raises(ConfigurationError, match=match):
            parse_rect(bad, (100, 50), "roi1")


@pytest.fixture(scope="module")
def full():
    return PreviewAssembler(agipd1m_geometry(), 1)


@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_region_gather_and_statistics_equal_assembled_image(full):
    rng = np.random.default_rng(3)
    modules = {m: rng.normal(10, 3, (2, 512, 128)).astype(np.float32) for m in range(16)}
    del modules[5]  # a missing module: NaN
    modules[0][1, 10:20, 10:20] = np.nan
    rect = Rect(300, 200, 400, 300)
    gather = RegionGather(full.pixel_map(), rect)
    got = gather.gather(modules, 2)
    for p in range(2):
        frame = np.full((16, 512, 128), np.nan, np.float32)
        for m, arr in modules.items():
            frame[m] = arr[p]
        ref = full.assemble(frame)[200:500, 300:700]
        np.testing.assert_array_equal(got[p], ref)
    st = roi_statistics(got)
    np.testing.assert_allclose(st.sum, np.nansum(got, axis=(1, 2), dtype=np.float64))
    np.testing.assert_allclose(st.mean, np.nanmean(got, axis=(1, 2), dtype=np.float64))
    np.testing.assert_array_equal(st.max, np.nanmax(got, axis=(1, 2)))
    np.testing.assert_allclose(st.proj_x, np.nanmean(got, axis=1), rtol=1e-5)
    np.testing.assert_allclose(st.proj_y, np.nanmean(got, axis=2), rtol=1e-5)
    assert st.sum_train == pytest.approx(np.nansum(got, dtype=np.float64))
    assert st.max_train == np.nanmax(got)
    np.testing.assert_allclose(st.proj_x_train, np.nanmean(got, axis=(0, 1)), rtol=1e-5)
    one_pass = gather.statistics(modules, 2)  # what the device uses: no (n, h, w) copy
    for field in ("sum", "mean", "max", "proj_x", "proj_y", "proj_x_train", "proj_y_train"):
        np.testing.assert_allclose(getattr(one_pass, field), getattr(st, field), rtol=1e-6)
    for field in ("sum_train", "mean_train", "max_train"):
        assert getattr(one_pass, field) == pytest.approx(getattr(st, field), rel=1e-9)


def test_pixel_map_and_location(full):
    pm = full.pixel_map()
    assert pm.shape == full.shape and (pm >= 0).sum() == 16 * 512 * 128
    assert len(np.unique(pm[pm >= 0])) == 16 * 512 * 128
    frame = np.arange(16 * 512 * 128, dtype=np.float32).reshape(16, 512, 128)
    img = full.assemble(frame)
    np.testing.assert_array_equal(np.where(pm >= 0, pm, np.nan), img)
    assert pixel_location(5 * 65536 + 130 * 128 + 70) == (5, 5, 130, 70)
    m, a, ss, fs = pixel_location(np.array([-1, 0]))
    assert m.tolist() == [-1, 0] and a.tolist() == [-1, 0]
    assert ss.tolist() == [-1, 0] and fs.tolist() == [-1, 0]
    ds = PreviewAssembler(agipd1m_geometry(), 4).pixel_map()
    assert ds.shape == (-(-pm.shape[0] // 4), -(-pm.shape[1] // 4))
    r = q_ring_radius_m(np.array([2.0, 1000.0]), 0.2, 9.3)
    lam = 12.398419843320026 / 9.3
    assert r[0] == pytest.approx(0.2 * np.tan(2 * np.arcsin(2.0 * lam / (4 * np.pi))))
    assert np.isnan(r[1])


def test_averaging_helpers():
    frames = np.arange(24, dtype=np.uint16).reshape(4, 2, 3)
    np.testing.assert_allclose(pulse_mean(frames, pulse_slice([1, 3], 4)), frames[1:3].mean(0))
    np.testing.assert_allclose(pulse_mean(frames, pulse_slice([0, 0], 4)), frames.mean(0))
    assert np.isnan(pulse_mean(frames, pulse_slice([4, 0], 4))).all()
    w = TrainWindow(2)
    for k in range(3):
        w.add(np.full((2, 2), float(k), np.float32))
    assert len(w) == 2 and (w.mean() == 1.5).all()
    w.resize(1)
    assert (w.mean() == 2.0).all()
    with pytest.raises(ConfigurationError):
        pulse_slice(["a"], 3)


def test_scatter_points_keep_the_newest_in_order():
    pts = ScatterPoints(3)
    for k in range(5):
        pts.add(float(k), 2.0 * k, 100 + k)
    x, y, tid = pts.arrays()
    assert x.tolist() == [2.0, 3.0, 4.0] and y.tolist() == [4.0, 6.0, 8.0]
    assert tid.tolist() == [102, 103, 104] and len(pts) == 3
    pts.resize(2)
    assert pts.arrays()[0].tolist() == [3.0, 4.0]
    pts.resize(4)
    pts.add(5.0, 0.0, 105)
    assert pts.arrays()[0].tolist() == [3.0, 4.0, 5.0]
    pts.clear()
    assert len(pts) == 0 and pts.arrays()[0].size == 0
