"""The image analysis devices through a real device server and channels, against numpy.

Every device gets the same small trains (16 corrected AGIPD modules, 2-3 pulses) through
:class:`pulsetrain.testing.DeviceHarness`; the expected values are recomputed with numpy from
the full-resolution assembled image (``PreviewAssembler(geometry, 1).assemble``).
"""

from __future__ import annotations

import numpy as np
import pytest
from _live_helpers import LiveServer

from pulsetrain.devices.averaging import ImageAverage
from pulsetrain.devices.correlation import Correlator
from pulsetrain.devices.pixel_histogram import PixelHistogram
from pulsetrain.devices.roi import RoiAnalysis
from pulsetrain.devices.sim import SimulatedMotor
from pulsetrain.errors import PropertyError
from pulsetrain.geometry import PreviewAssembler, agipd1m_geometry
from pulsetrain.protocol import make_meta
from pulsetrain.runtime.device import register_device_class
from pulsetrain.testing import DeviceHarness
from waiting import wait_until

CORR = "SPB_DET_AGIPD1M-1/CORR/{}CH0:output"
RAW = "SPB_DET_AGIPD1M-1/DET/{}CH0:xtdf"
XGM = "SPB_XTD9_XGM/DOOCS/MAIN"
PULSES = 3


def train(seed: int, pulses: int = PULSES, missing: tuple[int, ...] = ()) -> dict:
    rng = np.random.default_rng(seed)
    data = {}
    for m in range(16):
        if m in missing:
            continue
        img = rng.gamma(2.0, 50.0, (pulses, 512, 128)).astype(np.float32)
        img[0, :3, :3] = np.nan
        data[CORR.format(m)] = {
            "image.data": img,
            "image.pulseId": np.arange(pulses, dtype=np.uint64) * 2 + 4,
        }
    return data


@pytest.fixture(scope="module")
def full():
    return PreviewAssembler(agipd1m_geometry(), 1)


def assembled(full, data, pattern=CORR, plane=None):
    """(pulses, H, W) full-resolution images of a train, NaN for missing modules and gaps."""
    n = min(len(v["image.data"]) for v in data.values())
    out = []
    for p in range(n):
        frame = np.full((16, 512, 128), np.nan, np.float32)
        for m in range(16):
            src = pattern.format(m)
            if src in data:
                arr = data[src]["image.data"][p]
                frame[m] = arr[plane] if plane is not None else arr
        out.append(full.assemble(frame))
    return np.stack(out)


R1 = [300, 200, 250, 150]
R2 = [700, 800, 60, 90]


@pytest.mark.filterwarnings("ignore:Mean of empty slice")
def test_roi_values_equal_numpy_and_normalisers(full):
    with DeviceHarness(RoiAnalysis, {"roi1": R1, "roi2": R2, "normaliser": "roi2"}) as dev:
        data = train(1, missing=(3,))
        dev.send(data, train_id=100)
        out = dev.receive()[0]["SPB_DET_AGIPD1M-1/ROI"]
        images = assembled(full, data)
        for k, (x, y, w, h) in ((1, R1), (2, R2)):
            r = images[:, y : y + h, x : x + w].astype(np.float64)
            np.testing.assert_allclose(out[f"roi{k}.sum"], np.nansum(r, axis=(1, 2)), rtol=1e-9)
            np.testing.assert_allclose(out[f"roi{k}.mean"], np.nanmean(r, axis=(1, 2)), rtol=1e-9)
            np.testing.assert_array_equal(out[f"roi{k}.max"], np.nanmax(r, axis=(1, 2)))
            np.testing.assert_allclose(out[f"roi{k}.projX"], np.nanmean(r, axis=1), rtol=1e-5)
            np.testing.assert_allclose(out[f"roi{k}.projY"], np.nanmean(r, axis=2), rtol=1e-5)
            assert out[f"roi{k}.sumTrain"] == pytest.approx(np.nansum(r))
            assert out[f"roi{k}.meanTrain"] == pytest.approx(np.nanmean(r))
            assert out[f"roi{k}.maxTrain"] == np.nanmax(r)
            np.testing.assert_allclose(out[f"roi{k}.projXTrain"], np.nanmean(r, axis=(0, 1)), 1e-5)
        norm = np.nansum(images[:, 800:890, 700:760].astype(np.float64), axis=(1, 2))
        np.testing.assert_allclose(out["roi.norm"], norm, rtol=1e-9)
        np.testing.assert_allclose(out["roi1.sumNorm"], out["roi1.sum"] / norm)
        assert out["roi1.sumNormTrain"] == pytest.approx(np.mean(out["roi1.sum"] / norm))
        assert np.isnan(out["roi3.sum"]).all() and out["roi3.projX"].shape == (PULSES, 0)
        assert out["roi.active"].tolist() == [True, True, False, False]
        assert out["roi.rects"][0].tolist() == R1 and out["roi.unit"] == "keV"
        assert out["roi.pulseIds"].tolist() == [4, 6, 8] and out["roi.trainId"] == 100
        # ROI-intensity histogram: per-pulse sumNorm of roi1 over the trains of the window
        dev.send(train(2), train_id=101)
        out2 = dev.receive()[0]["SPB_DET_AGIPD1M-1/ROI"]
        values = np.concatenate([out["roi1.sumNorm"], out2["roi1.sumNorm"]])
        ref, edges = np.histogram(values, bins=50)
        np.testing.assert_array_equal(out2["roiHist.counts"], ref)
        np.testing.assert_allclose(out2["roiHist.edges"], edges)

        # a value read by name: per-train scalar from the slow input, per-pulse array in the train
        dev.set("normaliser", f"{XGM}.pulseEnergy.photonFlux.value")
        dev.send({XGM: {"pulseEnergy.photonFlux.value": np.float32(1500.0)}}, 102, input="slow")
        dev.send(data, train_id=102)
        out = dev.receive()[0]["SPB_DET_AGIPD1M-1/ROI"]
        np.testing.assert_allclose(out["roi1.sumNorm"], out["roi1.sum"] / 1500.0)
        assert dev.get("normaliserOrigin") == "slow"
        dev.set("normaliser", "XGM/PULSES.energy")
        dev.send({**data, "XGM/PULSES": {"energy": np.array([1.0, 2.0, 4.0, 0.0])}}, 103)
        out = dev.receive()[0]["SPB_DET_AGIPD1M-1/ROI"]
        np.testing.assert_allclose(out["roi.norm"], [1.0, 2.0, 4.0])


def test_roi_bad_settings_give_clear_errors():
    with DeviceHarness(RoiAnalysis, {"roi1": R1}) as dev:
        with pytest.raises(PropertyError, match="roi2: .* lies outside the image"):
            dev.set("roi2", [1000, 1200, 200, 200])
        assert dev.get("roi2") == [0, 0, 0, 0] and dev.get("state") != "ERROR"
        with pytest.raises(PropertyError, match="not 'SOURCE.key'"):
            dev.set("normaliser", "nodot")
        # a normaliser that is nowhere: ERROR with its name, values still written, recovers
        dev.set("normaliser", "NO/SUCH/SOURCE.value")
        dev.send(train(1), train_id=200)
        out = dev.receive()[0]["SPB_DET_AGIPD1M-1/ROI"]
        assert np.isnan(out["roi1.sumNorm"]).all() and np.isfinite(out["roi1.sum"]).all()
        assert dev.get("state") == "ERROR"
        assert "no source or device 'NO/SUCH/SOURCE'" in dev.get("status")
        dev.send({**train(2), "NO/SUCH/SOURCE": {"value": 2.0}}, train_id=201)
        out = dev.receive()[0]["SPB_DET_AGIPD1M-1/ROI"]
        np.testing.assert_allclose(out["roi1.sumNorm"], out["roi1.sum"] / 2.0)
        assert dev.get("state") == "PROCESSING"
    # an impossible ROI in the initial configuration: the device starts in ERROR, saying why
    with DeviceHarness(RoiAnalysis, {"roi1": [0, 0, 5000, 10]}) as dev:
        assert dev.get("state") == "ERROR"
        assert "outside the image" in dev.get("status")


def test_pixel_histogram_equals_numpy(full):
    data = train(3, missing=(7,))
    images = assembled(full, data)
    stack = np.stack([data[CORR.format(m)]["image.data"] for m in range(16) if m != 7], axis=1)
    with DeviceHarness(PixelHistogram, {"per": "pulse", "bins": 64}) as dev:
        dev.send(data, train_id=10)
        out = dev.receive()[0]["SPB_DET_AGIPD1M-1/HISTOGRAM"]
        values = stack.astype(np.float64)
        ref, edges = np.histogram(values[np.isfinite(values)], bins=64)
        np.testing.assert_array_equal(out["hist.counts"], ref)
        np.testing.assert_allclose(out["hist.edges"], edges)
        for p in range(PULSES):
            v = values[p][np.isfinite(values[p])]
            np.testing.assert_array_equal(out["hist.pulseCounts"][p], np.histogram(v, edges)[0])
        assert out["hist.mean"] == pytest.approx(np.nanmean(values))
        assert out["hist.std"] == pytest.approx(np.nanstd(values), rel=1e-6)
        # a region with a fixed range, per train only
        dev.set("region", R1)
        dev.set("range", [0.0, 300.0])
        dev.set("per", "train")
        dev.send(data, train_id=11)
        out = dev.receive()[0]["SPB_DET_AGIPD1M-1/HISTOGRAM"]
        x, y, w, h = R1
        r = images[:, y : y + h, x : x + w].astype(np.float64)
        ref, edges = np.histogram(r[np.isfinite(r)], bins=64, range=(0.0, 300.0))
        np.testing.assert_array_equal(out["hist.counts"], ref)
        assert out["hist.pulseCounts"].shape == (0, 64)
        assert out["hist.region"].tolist() == R1
        with pytest.raises(PropertyError, match="lo < hi"):
            dev.set("range", [5.0, 1.0])


def test_image_average_dark_and_difference(full):
    ds = PreviewAssembler(agipd1m_geometry(), 4)
    trains = [train(10 + k, pulses=4) for k in range(5)]

    def train_image(data, sel=slice(None)):
        frame = np.full((16, 512, 128), np.nan, np.float32)
        for m in range(16):
            frame[m] = data[CORR.format(m)]["image.data"][sel].mean(axis=0, dtype=np.float32)
        return ds.assemble(frame)

    config = {"downsample": 4, "n_trains": 2, "pulses": [1, 3], "dark_trains": 2}
    with DeviceHarness(ImageAverage, config) as dev:
        images = []
        for k in range(3):
            dev.send(trains[k], train_id=k)
            out = dev.receive()[0]["SPB_DET_AGIPD1M-1/AVERAGE"]
            images.append(train_image(trains[k], slice(1, 3)))
        np.testing.assert_allclose(out["average.image"], np.mean(images[1:], axis=0), rtol=1e-5)
        assert out["average.trains"] == 2 and out["average.pulses"] == 2
        assert out["average.shown"] == "average" and out["average.darkTrains"] == 0
        dev.set("mode", "difference")  # no dark yet: the average, and it says so
        dev.call("recordDark")
        dev.send(trains[3], train_id=3)
        out = dev.receive()[0]["SPB_DET_AGIPD1M-1/AVERAGE"]
        assert out["average.shown"] == "average" and out["average.darkRecording"]
        dev.send(trains[4], train_id=4)
        out = dev.receive()[0]["SPB_DET_AGIPD1M-1/AVERAGE"]
        images += [train_image(trains[3], slice(1, 3)), train_image(trains[4], slice(1, 3))]
        dark = np.mean(images[3:5], axis=0)
        assert dev.get("hasDark") and out["average.darkTrains"] == 2
        np.testing.assert_allclose(
            out["average.image"], np.mean(images[3:5], axis=0) - dark, atol=1e-3
        )
        assert out["average.shown"] == "difference"
        dev.set("mode", "last")
        dev.send(trains[0], train_id=5)
        out = dev.receive()[0]["SPB_DET_AGIPD1M-1/AVERAGE"]
        np.testing.assert_allclose(out["average.image"], images[0], rtol=1e-6)
        dev.set("mode", "difference")
        dev.send(trains[1], train_id=6)
        out = dev.receive()[0]["SPB_DET_AGIPD1M-1/AVERAGE"]
        np.testing.assert_allclose(
            out["average.image"], np.mean(images[:2], axis=0) - dark, rtol=1e-4, atol=1e-3
        )
        dev.call("clearDark")
        assert dev.get("hasDark") is False
        with pytest.raises(PropertyError, match="pulses"):
            dev.set("pulses", ["x", 1])


def test_raw_input_units_and_plane(full):
    rng = np.random.default_rng(5)
    data = {
        RAW.format(m): {"image.data": rng.integers(4000, 6000, (2, 2, 512, 128), dtype=np.uint16)}
        for m in range(16)
    }
    with DeviceHarness(RoiAnalysis, {"roi1": R2}) as dev:
        dev.send(data, train_id=1)
        out = dev.receive()[0]["SPB_DET_AGIPD1M-1/ROI"]
    x, y, w, h = R2
    r = assembled(full, data, RAW, plane=0)[:, y : y + h, x : x + w].astype(np.float64)
    np.testing.assert_allclose(out["roi1.sum"], r.sum(axis=(1, 2)))
    assert out["roi.unit"] == "ADU"


def test_correlator_scatter_binning_slow_and_control_plane():
    register_device_class(SimulatedMotor, "SimulatedMotor")
    roi_src = "SPB_DET_AGIPD1M-1/ROI"
    config = {"x": "SPB_IRU_SAMPLE/MOTOR/X.actualPosition.value", "y": f"{roi_src}.roi1.sum"}
    config.update(bins=4, x_range=[0.0, 4.0])
    with DeviceHarness(Correlator, config) as dev:
        xs, ys = [], []
        for k in range(8):
            pos = 0.5 * k
            y = np.array([k, k + 1.0, k + 2.0])
            dev.send(
                {"SPB_IRU_SAMPLE/MOTOR/X": {"actualPosition.value": np.float64(pos)}},
                k,
                input="slow",
            )
            # the two inputs are read by two threads: let the slow train reach the device first
            dev.wait_for("trainsIn", lambda n, k=k: n >= 2 * k + 1)
            dev.send({roi_src: {"roi1.sum": y}}, train_id=k)
            out = dev.receive()[0]["SPB_DET_AGIPD1M-1/CORRELATION"]
            xs.append(pos)
            ys.append(y.mean())
        np.testing.assert_allclose(out["correlation.x"], xs)
        np.testing.assert_allclose(out["correlation.y"], ys)
        assert out["correlation.trainIds"].tolist() == list(range(8))
        edges = np.linspace(0, 4, 5)
        np.testing.assert_array_equal(out["correlation.binCount"], np.histogram(xs, edges)[0])
        for b in range(4):
            sel = (np.array(xs) >= edges[b]) & (np.array(xs) < edges[b + 1])
            assert out["correlation.binMean"][b] == pytest.approx(np.mean(np.array(ys)[sel]))
            assert out["correlation.binStd"][b] == pytest.approx(np.std(np.array(ys)[sel]))
        assert dev.get("xOrigin") == "slow" and dev.get("points") == 8
        dev.call("reset")
        assert dev.get("points") == 0

        # the motor's property through the control plane (a device of the same server)
        dev.client.instantiate("SimulatedMotor", "SPB_IRU_SAMPLE/MOTOR/X", {"initialPosition": 1.5})
        dev.set("x", "SPB_IRU_SAMPLE/MOTOR/X.actualPosition")
        k = 100

        def point():
            nonlocal k
            k += 1
            dev.send({roi_src: {"roi1.sum": np.array([2.0])}}, train_id=k)
            return dev.get("points") > 0

        wait_until(point, timeout=20.0, what="a point with the motor's position")
        out = None
        while True:  # the last train written holds the point
            try:
                out = dev.receive(timeout=2.0)[0]["SPB_DET_AGIPD1M-1/CORRELATION"]
            except TimeoutError:
                break
        assert out is not None and out["correlation.x"][-1] == 1.5
        assert dev.get("xOrigin") == "control"

        # a name that is nowhere: ERROR naming it; reset leaves ERROR
        dev.set("y", "NOWHERE.value")
        dev.send({roi_src: {"roi1.sum": np.array([2.0])}}, train_id=k + 1)
        wait_until(lambda: dev.get("state") == "ERROR", timeout=20.0, what="ERROR")
        assert "no source or device 'NOWHERE'" in dev.get("status")
        dev.call("reset")
        assert dev.get("state") == "ON"


def test_roi_to_correlator_chain_through_channels(full):
    """RoiAnalysis -> Correlator in one server, wired by channels as a topology wires them."""
    live = LiveServer()
    try:
        roi = live.add("pulsetrain.devices.roi:RoiAnalysis", "T/ROI", {"roi1": R1})
        corr = live.add(
            "pulsetrain.devices.correlation:Correlator",
            "T/CORR",
            {"x": "MOTOR.pos", "y": "SPB_DET_AGIPD1M-1/ROI.roi1.sumTrain", "bins": 3},
        )
        detector, slow = live.source(), live.source()
        live.connect(detector.endpoints[0], roi)
        live.connect(slow.endpoints[0], corr, "slow")
        live.connect(live.output(roi), corr)
        tap = live.tap(live.output(corr))
        for ch in (detector, slow):
            wait_until(lambda ch=ch: ch.wait_for_inputs(1, 0.1), what="inputs connected")
        for dev_id, what in ((roi, "the correlator"), (corr, "the tap")):
            out_ch = live.server.devices[dev_id].output_channels["output"]
            wait_until(lambda out_ch=out_ch: out_ch.wait_for_inputs(1, 0.1), what=what)

        x, y, w, h = R1
        sums = []
        received = live.server.devices[corr]
        for k in range(3):  # one step at a time: the inputs' default policy drops when busy
            data = train(20 + k)
            slow.write({"MOTOR": {"pos": float(k)}}, {"MOTOR": make_meta("MOTOR", 50 + k)})
            wait_until(lambda k=k: received.trainsIn == 2 * k + 1, what="the slow train")
            detector.write(data, {s: make_meta(s, 50 + k) for s in data})
            wait_until(lambda k=k: received.trainsIn == 2 * k + 2, what="the ROI train")
            sums.append(np.nansum(assembled(full, data)[:, y : y + h, x : x + w], dtype=np.float64))
        item = None
        while item is None or len(item.data["SPB_DET_AGIPD1M-1/CORRELATION"]["correlation.x"]) < 3:
            item = tap.get(timeout=30.0)
        out = item.data["SPB_DET_AGIPD1M-1/CORRELATION"]
        np.testing.assert_allclose(out["correlation.x"], [0.0, 1.0, 2.0])
        np.testing.assert_allclose(out["correlation.y"], sums, rtol=1e-9)
        assert out["correlation.trainIds"].tolist() == [50, 51, 52]
        np.testing.assert_allclose(out["correlation.binMean"], sums, rtol=1e-9)
    finally:
        live.close()
