"""Tests for pulsetrain.analysis.statistics: per-pulse statistics and ROI sums, NaN-aware."""

import warnings

import numpy as np
import pytest

from pulsetrain.analysis import ModuleRegion, pulse_statistics, roi_sums
from pulsetrain.errors import ConfigurationError, DataShapeError

FRAME = (16, 512, 128)


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(11)
    # A large offset with a small spread tests the accuracy of the variance.
    fr = (1.0e4 + rng.normal(0, 3.0, (4, *FRAME))).astype(np.float32)
    fr[0, 2, :100] = np.nan
    fr[2] = np.nan  # a pulse with no valid pixel
    fr[3, 5:9] = np.nan  # whole modules missing
    return fr


def _masked(frames, mask):
    f = frames.astype(np.float64)
    if mask is not None:
        f = np.where(np.broadcast_to(mask != 0, f.shape), np.nan, f)
    return f


@pytest.mark.parametrize("with_mask", [False, True])
def test_pulse_statistics_match_numpy(frames, with_mask):
    mask = None
    if with_mask:
        mask = np.zeros(FRAME, np.uint32)
        mask[0, :, :64] = 2
        mask[np.random.default_rng(1).random(FRAME) < 0.05] = 1
    st = pulse_statistics(frames, mask=mask)
    ref = _masked(frames, mask)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_array_equal(st.count, np.count_nonzero(~np.isnan(ref), axis=(1, 2, 3)))
        np.testing.assert_allclose(st.sum, np.nansum(ref, axis=(1, 2, 3)), rtol=1e-12)
        np.testing.assert_allclose(st.mean, np.nanmean(ref, axis=(1, 2, 3)), rtol=1e-12)
        np.testing.assert_allclose(st.std, np.nanstd(ref, axis=(1, 2, 3)), rtol=1e-9)
        np.testing.assert_array_equal(st.min, np.nanmin(ref, axis=(1, 2, 3)))
        np.testing.assert_array_equal(st.max, np.nanmax(ref, axis=(1, 2, 3)))
    assert st.count[2] == 0 and st.sum[2] == 0 and np.isnan(st.mean[2]) and np.isnan(st.std[2])


def test_single_frame_and_per_pulse_mask(frames):
    one = pulse_statistics(frames[1])
    assert one.mean.shape == () and one.count == np.prod(FRAME)
    stack_mask = np.zeros(frames.shape, bool)
    stack_mask[1, 0] = True
    st = pulse_statistics(frames, mask=stack_mask)
    assert st.count[1] == one.count - 512 * 128
    assert st.count[0] == pulse_statistics(frames[0]).count
    ints = pulse_statistics(np.arange(2 * 16 * 4 * 4, dtype=np.uint16).reshape(2, 16, 4, 4))
    np.testing.assert_array_equal(ints.max, [255, 511])


def test_roi_sums(frames):
    rois = [
        ModuleRegion(0, (0, 10), (0, 128)),  # partly NaN in pulse 0
        ModuleRegion(6, (100, 140), (20, 30)),  # NaN module in pulse 3
    ]
    sel = np.zeros(FRAME, bool)
    sel[1, ::7, ::5] = True
    sel[15, 500:, 120:] = True
    rois.append(sel)
    ref = _masked(frames, None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expect = np.stack(
            [
                np.nansum(ref[:, 0, 0:10, :], axis=(1, 2)),
                np.nansum(ref[:, 6, 100:140, 20:30], axis=(1, 2)),
                np.nansum(ref[:, sel], axis=1),
            ],
            axis=1,
        )
        expect_mean = np.stack(
            [
                np.nanmean(ref[:, 0, 0:10, :], axis=(1, 2)),
                np.nanmean(ref[:, 6, 100:140, 20:30], axis=(1, 2)),
                np.nanmean(ref[:, sel], axis=1),
            ],
            axis=1,
        )
    got = roi_sums(frames, rois)
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, expect, rtol=1e-12)
    np.testing.assert_allclose(roi_sums(frames, rois, mean=True), expect_mean, rtol=1e-12)
    np.testing.assert_allclose(roi_sums(frames[1], rois), expect[1], rtol=1e-12)

    mask = np.zeros(FRAME, np.uint8)
    mask[0, 0:5] = 1
    masked = roi_sums(frames, rois[:1], mask=mask)
    np.testing.assert_allclose(masked[:, 0], np.nansum(ref[:, 0, 5:10, :], axis=(1, 2)))


def test_roi_errors(frames):
    with pytest.raises(ConfigurationError):
        roi_sums(frames, [ModuleRegion(16, (0, 1), (0, 1))])
    with pytest.raises(ConfigurationError):
        roi_sums(frames, [ModuleRegion(0, (5, 5), (0, 1))])
    with pytest.raises(DataShapeError):
        roi_sums(frames, [np.zeros(FRAME, np.uint8)])
    with pytest.raises(DataShapeError):
        pulse_statistics(np.zeros((512, 128)))
    with pytest.raises(DataShapeError):
        pulse_statistics(frames, mask=np.zeros((4, 512, 128)))
