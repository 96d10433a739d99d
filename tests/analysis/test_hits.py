"""Tests for pulsetrain.analysis.hits: peak counting, hit decisions and the rolling hit rate."""

import math

import numpy as np
import pytest
from scipy import ndimage

from pulsetrain.analysis import HitFinder, HitRateMeter, count_peaks
from pulsetrain.errors import ConfigurationError, DataShapeError

FRAME = (16, 512, 128)
THRESHOLD = 8.0  # in units of the noise sigma (1.0)


def _plant(frame, rng, n_peaks, amplitude=60.0, sigma=0.9):
    """Add ``n_peaks`` well-separated Gaussian spots (5×5 footprint) away from module edges."""
    placed = []
    yy, xx = np.mgrid[-2:3, -2:3]
    while len(placed) < n_peaks:
        m = int(rng.integers(16))
        i, j = int(rng.integers(3, 509)), int(rng.integers(3, 125))
        if any(pm == m and abs(pi - i) < 8 and abs(pj - j) < 8 for pm, pi, pj in placed):
            continue
        # Sub-pixel centre so that the maximum pixel is unique.
        dy, dx = rng.uniform(-0.3, 0.3, 2)
        frame[m, i - 2 : i + 3, j - 2 : j + 3] += amplitude * np.exp(
            -((yy - dy) ** 2 + (xx - dx) ** 2) / (2 * sigma**2)
        )
        placed.append((m, i, j))
    return placed


@pytest.fixture(scope="module")
def stack():
    rng = np.random.default_rng(7)
    frames = rng.normal(0.0, 1.0, (6, *FRAME)).astype(np.float32)
    planted = [0, 3, 12, 0, 40, 9]
    for f, n in enumerate(planted):
        _plant(frames[f], rng, n)
    return frames, np.array(planted)


def test_finds_planted_peaks_and_nothing_in_noise(stack):
    frames, planted = stack
    np.testing.assert_array_equal(count_peaks(frames, THRESHOLD), planted)
    # One frame at a time gives a scalar.
    assert count_peaks(frames[2], THRESHOLD) == planted[2]


def test_maxima_agree_with_connected_components(stack):
    """Cross-check with scipy.ndimage: one local maximum per connected blob above threshold."""
    frames, planted = stack
    for f in range(len(planted)):
        n_blobs = sum(ndimage.label(frames[f, m] > THRESHOLD)[1] for m in range(16))
        assert n_blobs == planted[f]


def test_pixels_method_counts_every_pixel_above_threshold(stack):
    frames, _ = stack
    got = count_peaks(frames, THRESHOLD, method="pixels")
    np.testing.assert_array_equal(got, np.count_nonzero(frames > THRESHOLD, axis=(1, 2, 3)))


def test_plateaus_edges_nan_and_mask():
    frame = np.zeros(FRAME, np.float32)
    frame[0, 10:12, 10:12] = 50.0  # flat 2×2 top: one peak
    frame[1, 0, 0] = 50.0  # corner of a module
    frame[2, 511, 127] = 50.0  # opposite corner
    frame[3, 100, 127] = 50.0  # last fast-scan column ...
    frame[4, 100, 0] = 50.0  # ... and the first column of the next module: two peaks
    frame[5, 200, 60] = np.nan  # NaN never counts, nor blocks a neighbour
    frame[5, 200, 61] = 30.0
    frame[6, 300, 30] = 40.0  # masked below
    assert count_peaks(frame, 10.0) == 7
    mask = np.zeros(FRAME, bool)
    mask[6, 300, 30] = True
    assert count_peaks(frame, 10.0, mask=mask) == 6
    # A masked neighbour does not suppress a lower peak next to it.
    frame[6, 300, 31] = 20.0
    assert count_peaks(frame, 10.0, mask=mask) == 7


def test_min_pixels_rejects_isolated_hot_pixels(stack):
    frames, planted = stack
    hot = frames[4].copy()
    hot[9, 250, 64] = 1000.0
    hot[10, 17, 100] = 1000.0
    assert count_peaks(hot, THRESHOLD) == planted[4] + 2
    assert count_peaks(hot, THRESHOLD, min_pixels=2) == planted[4]


def test_hit_finder(stack):
    frames, planted = stack
    finder = HitFinder(THRESHOLD, min_peaks=9)
    res = finder.find(frames)
    np.testing.assert_array_equal(res.n_peaks, planted)
    np.testing.assert_array_equal(res.is_hit, planted >= 9)
    assert res.n_hits == 3 and res.hit_rate == pytest.approx(0.5)
    # A per-call mask removing module-wide information combines with the static one.
    mask = np.zeros(FRAME, np.uint32)
    mask[:8] = 1
    masked = HitFinder(THRESHOLD, min_peaks=9, mask=mask).find(frames)
    per_call = finder.find(frames, mask=mask)
    np.testing.assert_array_equal(masked.n_peaks, per_call.n_peaks)
    assert np.all(masked.n_peaks <= planted)
    # Per-pulse masks of the stack's shape.
    stack_mask = np.zeros(frames.shape, bool)
    stack_mask[4] = True
    assert finder.find(frames, mask=stack_mask).n_peaks[4] == 0


def test_bad_arguments():
    with pytest.raises(ConfigurationError):
        count_peaks(np.zeros(FRAME), 1.0, method="blobs")
    with pytest.raises(ConfigurationError):
        count_peaks(np.zeros(FRAME), float("nan"))
    with pytest.raises(ConfigurationError):
        count_peaks(np.zeros(FRAME), 1.0, min_pixels=0)
    with pytest.raises(DataShapeError):
        count_peaks(np.zeros((512, 128)), 1.0)
    with pytest.raises(DataShapeError):
        count_peaks(np.zeros(FRAME), 1.0, mask=np.zeros((3, 3)))
    with pytest.raises(ConfigurationError):
        HitFinder(1.0, min_peaks=-1)
    with pytest.raises(ConfigurationError):
        HitRateMeter(0)


def test_hit_rate_window_arithmetic():
    meter = HitRateMeter(window_trains=3)
    assert math.isnan(meter.hit_rate) and meter.n_trains == 0
    meter.add([True, False, False, False], train_id=100)  # 1/4
    meter.add([True, True, False, False], train_id=101)  # 2/4
    assert meter.hit_rate == pytest.approx(3 / 8)
    meter.add_counts(4, 4, train_id=102)  # 4/4
    assert (meter.n_hits, meter.n_pulses, meter.n_trains) == (7, 12, 3)
    meter.add_counts(0, 4, train_id=103)  # evicts 100
    assert (meter.n_hits, meter.n_pulses) == (6, 12)
    assert meter.hit_rate == pytest.approx(0.5)
    # A gap in train IDs evicts by ID, not by count: 105 keeps only 103..105.
    meter.add_counts(2, 2, train_id=105)
    assert meter.n_trains == 2 and (meter.n_hits, meter.n_pulses) == (2, 6)
    # Late trains inside the window are added; those older than it are ignored.
    meter.add_counts(1, 1, train_id=104)
    meter.add_counts(9, 9, train_id=102)
    assert (meter.n_hits, meter.n_pulses, meter.n_stale) == (3, 7, 1)
    assert meter.newest_train_id == 105
    meter.reset()
    assert meter.n_trains == 0 and math.isnan(meter.hit_rate)


def test_hit_rate_without_train_ids_counts_calls():
    meter = HitRateMeter(2)
    for flags in ([1, 1], [0, 0], [0, 1]):
        meter.add(np.array(flags, bool))
    assert meter.hit_rate == pytest.approx(0.25)
    with pytest.raises(ConfigurationError):
        meter.add_counts(3, 2)
