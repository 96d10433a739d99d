"""The PreviewAssembler device: same pixels as the pure assembler, raw and corrected input."""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.devices.preview import PreviewAssembler
from pulsetrain.errors import ConfigurationError, PropertyError
from pulsetrain.geometry import PreviewAssembler as PureAssembler
from pulsetrain.geometry import agipd1m_geometry
from pulsetrain.protocol import make_meta

CORR = "SPB_DET_AGIPD1M-1/CORR/{}CH0:output"
RAW = "SPB_DET_AGIPD1M-1/DET/{}CH0:xtdf"
TID = 1_000_000_123


def make_device(**config):
    dev = PreviewAssembler("TEST/PREVIEW", config)
    written = []
    dev.write = lambda output, data, meta, timeout=None: written.append((output, data, meta))
    dev.initialize()
    return dev, written


def corrected_train(pulses=3, modules=range(16), seed=0):
    rng = np.random.default_rng(seed)
    data, meta = {}, {}
    for m in modules:
        src = CORR.format(m)
        data[src] = {
            "image.data": rng.gamma(2.0, 50.0, (pulses, 512, 128)).astype(np.float32),
            "image.pulseId": np.arange(pulses, dtype=np.uint64) * 4 + 8,
            "image.cellId": np.arange(pulses, dtype=np.uint16) + 1,
        }
        meta[src] = make_meta(src, TID, 1_700_000_000.5)
    return data, meta


def displayed(assembler, frame, vmin, vmax, scale="linear"):
    """What the device should send: the pure preview, with 0 kept for "no detector pixel"."""
    img = assembler.preview(frame, vmin, vmax, scale)
    present = np.isfinite(frame).any(axis=(1, 2))
    probe = np.where(present[:, None, None], 0.0, np.nan).astype(np.float32)
    probe = np.broadcast_to(probe, frame.shape).copy()
    gap = np.isnan(assembler.assemble(probe))
    return np.where(gap, 0, np.maximum(img, 1)).astype(np.uint8)


def stacked(data, pattern, pulse, plane=None):
    frame = np.full((16, 512, 128), np.nan, dtype=np.float32)
    for m in range(16):
        src = pattern.format(m)
        if src in data:
            arr = data[src]["image.data"][pulse]
            frame[m] = arr[plane] if plane is not None else arr
    return frame


@pytest.fixture(scope="module")
def pure():
    return {ds: PureAssembler(agipd1m_geometry(), ds) for ds in (2, 4)}


def test_corrected_fixed_levels_match_pure_assembler(pure):
    dev, written = make_device(downsample=2, auto_levels=False, vmin=20.0, vmax=300.0)
    data, meta = corrected_train()
    dev.on_data(data, meta, "input")
    assert len(written) == 1
    output, out, ometa = written[0]
    assert output == "output"
    src = "SPB_DET_AGIPD1M-1/PREVIEW"
    assert list(out) == [src] and ometa[src]["timestamp.tid"] == TID
    assert ometa[src]["timestamp"] == pytest.approx(1_700_000_000.5)
    p = out[src]
    images = p["preview.images"]
    assert images.dtype == np.uint8 and images.shape == (3, *pure[2].shape)
    for k in range(3):
        expected = displayed(pure[2], stacked(data, CORR, k), 20.0, 300.0)
        np.testing.assert_array_equal(images[k], expected)
    assert len({images[k].tobytes() for k in range(3)}) == 3  # the pulses differ
    np.testing.assert_array_equal(p["preview.pulseIds"], [8, 12, 16])
    np.testing.assert_array_equal(p["preview.cellIds"], [1, 2, 3])
    assert (p["preview.vmin"], p["preview.vmax"]) == (20.0, 300.0)
    assert p["preview.scale"] == "linear" and not p["preview.autoLevels"]
    assert int(p["preview.trainId"]) == TID and p["preview.modulesPresent"].all()
    assert dev.lastTrainId == TID and dev.pulsesOut == 3 and dev.processingTime > 0


def test_raw_input_uses_plane_and_leaves_missing_modules_empty(pure):
    rng = np.random.default_rng(1)
    data, meta = {}, {}
    for m in (0, 5, 9):
        src = RAW.format(m)
        data[src] = {"image.data": rng.integers(4000, 9000, (2, 2, 512, 128), dtype=np.uint16)}
        meta[src] = make_meta(src, TID)
    data["SPB_XTD9_XGM/DOOCS/MAIN"] = {"data.intensityTD": np.ones(10)}  # ignored
    dev, written = make_device(downsample=4, auto_levels=False, vmin=4000.0, vmax=9000.0)
    dev.on_data(data, meta, "input")
    p = written[0][1]["SPB_DET_AGIPD1M-1/PREVIEW"]
    for k in range(2):
        frame = stacked(data, RAW, k, plane=0)
        np.testing.assert_array_equal(
            p["preview.images"][k], displayed(pure[4], frame, 4000.0, 9000.0)
        )
    assert p["preview.modulesPresent"].tolist() == [m in (0, 5, 9) for m in range(16)]
    np.testing.assert_array_equal(p["preview.pulseIds"], [0, 1])  # none given: 0..n-1
    assert dev.modulesFound == 3
    # the gain plane gives a different picture
    dev1, written1 = make_device(
        downsample=4, auto_levels=False, vmin=4000.0, vmax=9000.0, raw_plane=1
    )
    dev1.on_data(data, meta, "input")
    assert not np.array_equal(
        written1[0][1]["SPB_DET_AGIPD1M-1/PREVIEW"]["preview.images"], p["preview.images"]
    )


def test_auto_levels_are_percentiles_of_the_train():
    dev, written = make_device(downsample=1, auto_levels=True, auto_percentiles=[5.0, 95.0])
    data, meta = corrected_train(pulses=2, modules=range(4))
    dev.on_data(data, meta, "input")
    p = written[0][1]["SPB_DET_AGIPD1M-1/PREVIEW"]
    values = np.concatenate([data[CORR.format(m)]["image.data"].ravel() for m in range(4)])
    lo, hi = np.percentile(values, [5, 95])
    # levels come from a sample of the pixels: close to the full percentiles
    assert p["preview.vmin"] == pytest.approx(lo, rel=0.05)
    assert p["preview.vmax"] == pytest.approx(hi, rel=0.05)
    assert p["preview.autoLevels"]
    img = p["preview.images"][0]
    assert (img == 255).any() and 0 < (img == 255).mean() < 0.2
    assert dev.levels == [p["preview.vmin"], p["preview.vmax"]]


def test_log_scale_max_pulses_and_reconfiguration(pure):
    dev, written = make_device(downsample=2, scale="log", max_pulses=2)
    data, meta = corrected_train(pulses=3, modules=range(16))
    dev.on_data(data, meta, "input")
    p = written[-1][1]["SPB_DET_AGIPD1M-1/PREVIEW"]
    assert p["preview.images"].shape[0] == 2 and p["preview.scale"] == "log"
    assert 0 < p["preview.vmin"] < p["preview.vmax"]
    expected = displayed(
        pure[2], stacked(data, CORR, 1), p["preview.vmin"], p["preview.vmax"], "log"
    )
    np.testing.assert_array_equal(p["preview.images"][1], expected)
    dev.set("downsample", 4)
    assert dev.imageShape == list(pure[4].shape)
    dev.on_data(data, meta, "input")
    assert written[-1][1]["SPB_DET_AGIPD1M-1/PREVIEW"]["preview.images"].shape[1:] == pure[4].shape


def test_refuses_impossible_settings():
    dev, _ = make_device(auto_levels=False, vmin=0.0, vmax=100.0)
    with pytest.raises(PropertyError, match="vmin < vmax"):
        dev.set("vmin", 200.0)
    assert dev.vmin == 0.0  # the old value is kept
    with pytest.raises(PropertyError, match="log scale needs vmin > 0"):
        dev.set("scale", "log")
    assert dev.scale == "linear"
    with pytest.raises(PropertyError, match="auto_percentiles"):
        dev.set("auto_percentiles", [99.0, 1.0])
    with pytest.raises(PropertyError):
        dev.set("downsample", 0)
    with pytest.raises(ConfigurationError, match="group"):
        make_device(source_pattern="SPB_DET_AGIPD1M-1/CORR/.*")


def test_train_without_modules_is_counted_not_written():
    dev, written = make_device()
    dev.on_data({"OTHER/SOURCE": {"x": np.ones(3)}}, {"OTHER/SOURCE": make_meta("O", 1)}, "input")
    assert written == [] and dev.skippedTrains == 1
    assert "no module data" in dev.status


def test_profile_per_pulse():
    dev, written = make_device(downsample=4, profile_bins=50)
    data, meta = corrected_train(pulses=2, modules=range(16))
    dev.on_data(data, meta, "input")
    p = written[0][1]["SPB_DET_AGIPD1M-1/PREVIEW"]
    assert p["profile.radial"].shape == (50,)
    assert np.all(np.diff(p["profile.radial"]) > 0)
    assert p["profile.intensity"].shape == (2, 50)
    # gamma(2, 50) pixels: every populated bin's mean is near 100
    finite = p["profile.intensity"][np.isfinite(p["profile.intensity"])]
    assert finite.size > 50 and abs(np.median(finite) - 100.0) < 5.0
