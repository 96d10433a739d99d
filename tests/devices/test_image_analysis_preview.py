"""PreviewAssembler's physical units, q rings, float values and pixel map for the hover read-out."""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.devices.preview import PreviewAssembler
from pulsetrain.errors import PropertyError
from pulsetrain.geometry import PreviewAssembler as PureAssembler
from pulsetrain.geometry import agipd1m_geometry
from pulsetrain.geometry.preview import pixel_location
from pulsetrain.protocol import make_meta
from pulsetrain.testing import DeviceHarness

CORR = "SPB_DET_AGIPD1M-1/CORR/{}CH0:output"
RAW = "SPB_DET_AGIPD1M-1/DET/{}CH0:xtdf"
SRC = "SPB_DET_AGIPD1M-1/PREVIEW"


def make_device(**config):
    dev = PreviewAssembler("TEST/PREVIEW", config)
    written = []
    dev.write = lambda output, data, meta, timeout=None: written.append(data)
    dev.initialize()
    return dev, written


def corrected(pulses=2, seed=0):
    rng = np.random.default_rng(seed)
    data = {
        CORR.format(m): {"image.data": rng.gamma(2.0, 50.0, (pulses, 512, 128)).astype(np.float32)}
        for m in range(16)
    }
    return data, {s: make_meta(s, 7) for s in data}


def test_units_and_rings():
    dev, written = make_device(downsample=3, q_rings=[0.5, 2.0, 50.0])
    dev.on_data(*corrected(), "input")
    p = written[-1][SRC]
    asm = PureAssembler(agipd1m_geometry(), 3)
    assert p["preview.fullShape"].tolist() == list(asm.full_shape)
    assert p["preview.pixelSize"] == pytest.approx(0.6)
    by, bx = p["preview.beamCentre"]
    h, w = p["preview.images"].shape[1:]
    np.testing.assert_allclose(p["preview.beamCentreMm"], [by * 0.6, bx * 0.6])
    np.testing.assert_allclose(
        p["preview.extentMm"], [-bx * 0.6, (w - bx) * 0.6, -(h - by) * 0.6, by * 0.6]
    )
    lam = 12.398419843320026 / 9.3
    r_mm = [200.0 * np.tan(2 * np.arcsin(q * lam / (4 * np.pi))) for q in (0.5, 2.0)]
    np.testing.assert_allclose(p["preview.qRingRadiiMm"][:2], r_mm)
    np.testing.assert_allclose(p["preview.qRingRadiiPx"][:2], np.array(r_mm) / 0.6)
    assert np.isnan(p["preview.qRingRadiiMm"][2])  # beyond 4π/λ: no ring
    assert p["preview.distance"] == 0.2 and p["preview.photonEnergy"] == 9.3
    assert p["preview.unit"] == "keV" and "preview.values" not in p
    dev.set("detector_distance", 0.4)
    dev.on_data(*corrected(), "input")
    np.testing.assert_allclose(written[-1][SRC]["preview.qRingRadiiMm"][:2], 2 * np.array(r_mm))
    with pytest.raises(PropertyError, match="q_rings"):
        dev.set("q_rings", [1.0, -2.0])


def test_values_units_and_raw():
    dev, written = make_device(downsample=2, send_values=True, auto_levels=False, vmax=300.0)
    data, meta = corrected()
    dev.on_data(data, meta, "input")
    p = written[-1][SRC]
    asm = PureAssembler(agipd1m_geometry(), 2)
    for k in range(2):
        frame = np.stack([data[CORR.format(m)]["image.data"][k] for m in range(16)])
        np.testing.assert_array_equal(p["preview.values"][k], asm.assemble(frame))
        levels = asm.preview(frame, 0.0, 300.0)
        gap = np.isnan(p["preview.values"][k])
        diff = np.abs(p["preview.images"][k].astype(int) - np.maximum(levels, 1))[~gap]
        assert diff.max() <= 1 and (p["preview.images"][k][gap] == 0).all()
    rng = np.random.default_rng(1)
    raw = {
        RAW.format(m): {"image.data": rng.integers(0, 9, (1, 2, 512, 128), np.uint16)}
        for m in (0, 1)
    }
    dev.on_data(raw, {s: make_meta(s, 8) for s in raw}, "input")
    assert written[-1][SRC]["preview.unit"] == "ADU"
    dev.set("value_unit", "photons")
    dev.on_data(raw, {s: make_meta(s, 9) for s in raw}, "input")
    assert written[-1][SRC]["preview.unit"] == "photons"


def test_pixel_map_through_the_control_plane():
    with DeviceHarness(PreviewAssembler, {"downsample": 4}) as dev:
        pm = dev.get("pixelMap")
        version = dev.get("geometryVersion")
        asm = PureAssembler(agipd1m_geometry(), 4)
        assert pm.shape == asm.shape and pm.dtype == np.int32
        # every mapped pixel is the first detector pixel of its 4x4 block
        frame = np.arange(16 * 512 * 128, dtype=np.float64).reshape(16, 512, 128)
        full = PureAssembler(agipd1m_geometry(), 1).assemble(frame.astype(np.float32))
        i, j = np.argwhere(pm >= 0)[len(np.argwhere(pm >= 0)) // 2]
        assert (pm < 0).any()  # gaps are -1
        block = full[4 * i : 4 * i + 4, 4 * j : 4 * j + 4].ravel()
        first = block[np.isfinite(block)][0]
        assert pm[i, j] == int(first)
        module, asic, ss, fs = pixel_location(int(pm[i, j]))
        assert module * 65536 + ss * 128 + fs == pm[i, j] and 0 <= asic < 16
        dev.set("downsample", 2)
        assert dev.get("geometryVersion") == version + 1
        assert dev.get("pixelMap").shape == PureAssembler(agipd1m_geometry(), 2).shape
        data, _ = corrected(1)
        dev.send(data, train_id=3)
        out = dev.receive()[0][SRC]
        assert out["preview.geometryVersion"] == version + 1
