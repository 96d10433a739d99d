"""One-pass histogram and moments (PixelHistogram with a fixed range) against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.analysis.histogram import bin_edges, pulse_histograms_moments


@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_counts_and_moments_equal_numpy(dtype):
    rng = np.random.default_rng(5)
    values = rng.gamma(2.0, 40.0, (3, 64, 48)).astype(dtype)
    if dtype == np.float32:
        values[0, :4, :4] = np.nan
        values[1, 0, 0] = np.inf
    view = values[:, ::2, 1:]  # strided, as a region of a module
    edges = bin_edges(37, (10.0, 300.0))
    counts, n, total, total_sq = pulse_histograms_moments(view, edges)
    for p in range(view.shape[0]):
        expected, _ = np.histogram(view[p].astype(np.float64), bins=edges)
        np.testing.assert_array_equal(counts[p], expected)
    finite = view[np.isfinite(view)].astype(np.float64)
    assert n == finite.size
    assert total == pytest.approx(finite.sum(), rel=1e-12)
    assert total_sq == pytest.approx((finite * finite).sum(), rel=1e-12)


def test_empty_values():
    counts, n, total, total_sq = pulse_histograms_moments(np.zeros((2, 0, 5)), bin_edges(4, (0, 1)))
    assert counts.shape == (2, 4) and not counts.any()
    assert (n, total, total_sq) == (0, 0.0, 0.0)


def test_pixel_histogram_device_with_a_fixed_range():
    from pulsetrain.devices.pixel_histogram import PixelHistogram
    from pulsetrain.testing import DeviceHarness

    rng = np.random.default_rng(9)
    data = {
        f"SPB_DET_AGIPD1M-1/CORR/{m}CH0:output": {
            "image.data": rng.gamma(2.0, 5.0, (2, 512, 128)).astype(np.float32)
        }
        for m in range(16)
    }
    config = {"bins": 20, "range": [1.0, 30.0], "per": "pulse"}
    with DeviceHarness(PixelHistogram, config) as dev:
        dev.send(data, train_id=7)
        out = dev.receive()[0]["SPB_DET_AGIPD1M-1/HISTOGRAM"]
    stack = np.stack([v["image.data"] for v in data.values()], axis=1).astype(np.float64)
    edges = np.linspace(1.0, 30.0, 21)
    np.testing.assert_array_equal(out["hist.edges"], edges)
    for p in range(2):
        np.testing.assert_array_equal(out["hist.pulseCounts"][p], np.histogram(stack[p], edges)[0])
    np.testing.assert_array_equal(out["hist.counts"], np.histogram(stack, edges)[0])
    assert out["hist.mean"] == pytest.approx(stack.mean())
    assert out["hist.std"] == pytest.approx(stack.std(), rel=1e-6)
