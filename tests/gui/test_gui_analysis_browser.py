"""Live analysis in a real browser (Debian chromium via Playwright), checked against numpy.

The pipeline (gui_pipeline.py) runs the analysis devices beside the preview; a Karabo bridge
(PUSH) serves the same matched raw trains to this test, which recomputes every number the page
shows with numpy from those trains:

* an ROI drawn with the mouse on the image reaches the ROI device, and its trend in the page
  equals ``nansum`` over the ROI of the assembled frames of the same trains;
* the pixel histogram equals ``numpy.histogram`` of the same train's pixel values;
* the average equals the mean of the last trains' downsampled train images, and the dark a
  mean of consecutive trains after "record dark" (difference = average − dark);
* the correlation's points hold the ROI sums of their trains, and its binned mean ± std equal
  numpy's on those points; "reset" forgets them;
* Save downloads (a real browser download) an HDF5 file holding the displayed frame exactly,
  with its train and pulse IDs, and a PNG;
* at 1280 × 800 no control lies outside the viewport's width, and BokehJS does not flood the
  console with warnings.
"""

from __future__ import annotations

import base64
import collections
import io
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import warnings

import h5py
import numpy as np
import pytest
from gui_pipeline import (
    AVERAGE,
    BRIDGE,
    CORRELATION,
    HISTOGRAM,
    MOTOR,
    PREVIEW_OUTPUT,
    PULSES,
    ROI,
    topology_text,
)
from pages import open_scene

from waiting import wait_until

pytestmark = pytest.mark.browser

#: Trains per second of this module's pipeline: enough to check the numbers, cheap on a shared
#: 2-core machine (the analysis devices assemble every pulse at full resolution).
RATE = 2.0

#: Seconds to wait for something the page does (a loaded shared machine can take long).
UI = 90.0

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]

SCENE = {
    "scene": {"name": "analysis", "title": "Live analysis", "columns": 2, "poll_interval": 0.25},
    "panel": [
        {
            "type": "detector_image",
            "title": "Detector",
            "source": PREVIEW_OUTPUT,
            "roi_device": ROI,
            "average_device": AVERAGE,
            "width": 560,
            "controls": False,
        },
        {"type": "roi", "title": "ROIs", "source": f"{ROI}:output", "update_rate": 5},
        {"type": "histogram", "title": "Pixels", "source": f"{HISTOGRAM}:output", "update_rate": 5},
        {
            "type": "correlation",
            "title": "Correlation",
            "source": f"{CORRELATION}:output",
            "update_rate": 5,
        },
    ],
}

#: The image panel's figure in page coordinates: (left, top) of its canvas, the frame's box,
#: and the data → screen transform of two points (to map full-resolution pixels to the mouse).
GEOMETRY_JS = """(xy) => {
  const fig = Bokeh.documents[0].get_model_by_name('image-figure-0');
  const view = Bokeh.index.find_one(fig);
  const c = view.canvas_view.el.getBoundingClientRect();
  return xy.map(([x, y]) => [c.left + view.frame.x_scale.compute(x),
                             c.top + view.frame.y_scale.compute(y)]);
}"""

#: The frozen image has arrived: the image on the page is the train the status line names.
FROZEN_JS = """() => {
  const s = (window.pulsetrain.images || {})['image-0'];
  const t = Bokeh.documents[0].get_model_by_name('image-status-0').text;
  return s !== undefined && t.includes('frozen') && t.includes('>' + s.train + '<');
}"""

#: The image on the page's canvas (``window.pulsetrain.images``): its colour levels for a pulse,
#: its values for an average or difference.
SHOWN_JS = """() => {
  const s = window.pulsetrain.images['image-0'];
  const img = s.kind == 'pulse' ? s.levels : s.values;
  const bytes = new Uint8Array(img.buffer, img.byteOffset, img.byteLength);
  let text = '';
  for (let i = 0; i < bytes.length; i += 8192) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
  }
  return {train: s.train, pulse: s.pulse, pulse_id: s.pulse_id, kind: s.kind,
          dtype: s.kind == 'pulse' ? 'uint8' : 'float32', shape: [s.h, s.w], data: btoa(text)};
}"""


def shown_array(shown: dict) -> np.ndarray:
    dtype = np.dtype(shown["dtype"])
    return np.frombuffer(base64.b64decode(shown["data"]), dtype).reshape(shown["shape"])


def source_js(name: str) -> str:
    return f"() => Bokeh.documents[0].get_model_by_name({name!r}).data"


class BridgeTrains:
    """Every matched raw train the pipeline's Karabo bridge (PUSH) serves, by train ID."""

    def __init__(self, endpoint: str, keep: int = 40):
        from karabo_bridge import Client

        self.client = Client(endpoint, sock="PULL", timeout=1)
        self.trains: collections.OrderedDict[int, dict] = collections.OrderedDict()
        self.keep = keep
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                data, meta = self.client.next()
            except TimeoutError:
                continue
            except Exception:  # noqa: BLE001 - the client closed at the end of the test
                return
            tid = next(int(m["timestamp.tid"]) for m in meta.values())
            with self.lock:
                self.trains[tid] = data
                while len(self.trains) > self.keep:
                    self.trains.popitem(last=False)

    def get(self, tid: int) -> dict | None:
        with self.lock:
            return self.trains.get(tid)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(3)
        self.client._socket.close(linger=0)


def frames_of(train: dict) -> np.ndarray:
    """(pulses, 16, 512, 128) float32 analog frames of a raw train, NaN for missing modules."""
    out = np.full((PULSES, 16, 512, 128), np.nan, np.float32)
    for src, values in train.items():
        if src.endswith(":xtdf") and "image.data" in values:
            m = int(src.split("/")[-1].split("CH0")[0])
            out[:, m] = values["image.data"][:PULSES, 0]
    return out


@pytest.fixture(scope="module")
def analysis_pipeline(tmp_path_factory):
    """The GUI test pipeline with the analysis devices and a bridge, at 2 trains per second."""
    from pulsetrain.runtime.supervisor import Supervisor

    workdir = tmp_path_factory.mktemp("gui-analysis-pipeline")
    path = workdir / "gui-analysis.toml"
    path.write_text(topology_text(f"gui-analysis-{os.getpid()}", analysis=True, rate=RATE))
    with Supervisor(path, workdir=workdir) as sup:
        sup.device_client(ROI).wait_for(ROI, "lastTrainId", lambda v: v > 0, timeout=120)
        yield sup, path


@pytest.fixture(scope="module")
def assembler():
    from pulsetrain.geometry import PreviewAssembler, agipd1m_geometry

    return PreviewAssembler(agipd1m_geometry(), downsample=1)


@pytest.fixture(scope="module")
def bridge(analysis_pipeline):
    sup, _ = analysis_pipeline
    endpoint = wait_until(
        lambda: sup.get(BRIDGE, "boundEndpoint"), timeout=UI, what="the bridge bound"
    )
    trains = BridgeTrains(endpoint)
    wait_until(lambda: len(trains.trains) >= 3, timeout=UI, what="trains from the bridge")
    yield trains
    trains.close()


@pytest.fixture(scope="module")
def gui(analysis_pipeline, tmp_path_factory):
    """``pulsetrain gui`` in its own process (as an operator starts it); yields the page URL."""
    import yaml

    sup, path = analysis_pipeline
    for k in range(1, 5):
        sup.set(ROI, f"roi{k}", [0, 0, 0, 0])
    scene = tmp_path_factory.mktemp("analysis-scene") / "analysis.yaml"
    scene.write_text(yaml.safe_dump(SCENE))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pulsetrain",
            "gui",
            "--topology",
            str(path),
            "--port",
            "0",
            "--scene",
            str(scene),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    output: list[str] = []
    deadline = time.monotonic() + 90
    url = None
    while url is None:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            pytest.fail(f"pulsetrain gui printed no URL within 90 s: {''.join(output)}")
        output.append(line)
        match = re.search(r"(http://\S+/analysis)\s*$", line)
        url = match.group(1) if match else None
    yield url
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Debian chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, gui, analysis_pipeline):
    """One unlocked page (token entered) shared by the tests of this module."""
    sup, _ = analysis_pipeline
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(UI * 1000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    open_scene(page, gui)
    page.wait_for_function("window.pulsetrain && window.pulsetrain.total >= 2", timeout=60000)
    token = page.locator(".pt-token input")
    token.fill(sup.token)
    token.press("Enter")
    page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('mode').text.includes('unlocked')"
    )
    yield page
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def test_roi_drawn_with_the_mouse_gives_numpy_trend(page, analysis_pipeline, bridge, assembler):
    sup, _ = analysis_pipeline
    h = int(page.evaluate("() => window.pulsetrain.images['image-0'].dh"))
    w = int(page.evaluate("() => window.pulsetrain.images['image-0'].dw"))
    # a box over the simulated modules (the top-right quadrant), drawn with shift + drag
    (x0, y0), (x1, y1) = page.evaluate(GEOMETRY_JS, [[0.66 * w, 0.08 * h], [0.8 * w, 0.22 * h]])
    page.mouse.move(x0, y0)
    page.keyboard.down("Shift")
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=5)
    page.mouse.move(x1, y1, steps=5)
    page.mouse.up()
    page.keyboard.up("Shift")
    rect = wait_until(
        lambda: (r := sup.get(ROI, "roi1")) and r[2] > 0 and r,
        timeout=UI,
        what="roi1 set from the box drawn in the page",
    )
    x, y, rw, rh = rect
    assert abs(x - 0.66 * w) < 0.02 * w and abs(y - 0.08 * h) < 0.02 * h
    assert abs(rw - 0.14 * w) < 0.03 * w and abs(rh - 0.14 * h) < 0.03 * h
    # the numbers under the image show the same rectangle
    page.wait_for_function(
        f"() => Bokeh.documents[0].get_model_by_name('roi-0-1').value == '{x}, {y}, {rw}, {rh}'"
    )

    # trains analysed with the final rectangle (the box was sent while it grew, too)
    wait_until(lambda: sup.get(ROI, "roi1") == rect, timeout=UI, what="the final rectangle")
    after = sup.get(ROI, "lastTrainId")

    def matched() -> list[tuple[int, float]]:
        data = page.evaluate(source_js("roi-trend-1"))
        pairs = [
            (int(t), v)
            for t, v in zip(data["train"], data["roi1"])
            if int(t) > after and bridge.get(int(t)) is not None
        ]
        return pairs if len(pairs) >= 3 else []

    pairs = wait_until(matched, timeout=UI, what="ROI trend points of trains from the bridge")
    for tid, value in pairs[-3:]:
        frames = frames_of(bridge.get(tid))
        expected = sum(
            float(
                np.nansum(assembler.assemble(frames[p])[y : y + rh, x : x + rw], dtype=np.float64)
            )
            for p in range(PULSES)
        )
        assert value == pytest.approx(expected, rel=1e-5), f"train {tid}"
        assert expected > 0


def test_histogram_matches_numpy(page, bridge):
    def shown() -> tuple[int, dict] | None:
        data = page.evaluate(source_js("histogram-2"))
        if not data["train"] or bridge.get(int(data["train"][0])) is None:
            return None
        return int(data["train"][0]), data

    tid, data = wait_until(shown, timeout=UI, what="a histogram of a train from the bridge")
    values = frames_of(bridge.get(tid)).ravel().astype(np.float64)
    values = values[np.isfinite(values)]
    counts, edges = np.histogram(values, bins=40, range=(values.min(), values.max()))
    np.testing.assert_array_equal(np.asarray(data["top"], dtype=np.int64), counts)
    np.testing.assert_allclose(data["left"], edges[:-1], rtol=1e-12)


def _train_image(train: dict, assembler, factor: int) -> np.ndarray:
    """The ImageAverage's train image by numpy: mean over pulses, assembled, f x f block nanmean."""
    full = assembler.assemble(np.mean(frames_of(train), axis=0))  # plain mean: NaN stays NaN
    ny, nx = full.shape
    padded = np.full((-(-ny // factor) * factor, -(-nx // factor) * factor), np.nan, np.float64)
    padded[:ny, :nx] = full
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks (gaps)
        return np.nanmean(blocks, axis=(1, 3))


def _frozen_average(page, bridge, assembler, n: int) -> tuple[dict, np.ndarray, list[np.ndarray]]:
    """Freeze on an average/difference image whose last ``n`` trains all came from the bridge."""

    def attempt():
        page.locator(".pt-pause").click()
        page.wait_for_function(FROZEN_JS)
        shown = page.evaluate(SHOWN_JS)
        trains = [bridge.get(shown["train"] - k) for k in range(n)]
        if all(t is not None for t in trains):
            return shown
        page.locator(".pt-pause").click()  # unfreeze and try a later train
        page.wait_for_function(
            "() => !Bokeh.documents[0].get_model_by_name('image-status-0').text.includes('frozen')"
        )
        return None

    shown = wait_until(attempt, timeout=UI, what="an average of trains all seen by the bridge")
    images = [_train_image(bridge.get(shown["train"] - k), assembler, 4) for k in range(n)]
    return shown, shown_array(shown), images


def test_average_and_dark_subtraction_match_numpy(page, analysis_pipeline, bridge, assembler):
    sup, _ = analysis_pipeline
    n = sup.get(AVERAGE, "n_trains")
    view = page.locator(".pt-view select")
    view.select_option("average")
    wait_until(lambda: sup.get(AVERAGE, "mode") == "average", timeout=UI, what="mode = average")
    page.wait_for_function("() => window.pulsetrain.images['image-0'].kind == 'average'")
    shown, image, trains = _frozen_average(page, bridge, assembler, n)
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, np.mean(trains, axis=0), rtol=1e-5, atol=1e-3)
    page.locator(".pt-pause").click()
    # record a dark from the live stream with one button, then show the difference
    page.locator(".pt-record-dark button").click()
    wait_until(lambda: sup.get(AVERAGE, "hasDark"), timeout=UI, what="the dark recorded")
    view.select_option("difference")
    wait_until(
        lambda: sup.get(AVERAGE, "mode") == "difference", timeout=UI, what="mode = difference"
    )
    page.wait_for_function("() => window.pulsetrain.images['image-0'].kind == 'difference'")
    shown, diff, trains = _frozen_average(page, bridge, assembler, n)
    assert shown["kind"] == "difference"
    dark = np.mean(trains, axis=0) - diff  # what the device subtracted
    dark_trains = sup.get(AVERAGE, "dark_trains")
    candidates = [t for t in list(bridge.trains) if t < shown["train"]]
    found = False
    for start in candidates:
        group = [bridge.get(start + k) for k in range(dark_trains)]
        if any(g is None for g in group):
            continue
        mean = np.mean([_train_image(g, assembler, 4) for g in group], axis=0)
        if np.allclose(mean, dark, rtol=1e-4, atol=1e-2, equal_nan=True):
            found = True
            break
    assert found, "the subtracted dark is not the mean of consecutive trains after the click"
    page.locator(".pt-pause").click()
    view.select_option("pulse")
    page.wait_for_function("() => window.pulsetrain.images['image-0'].kind == 'pulse'")


def test_correlation_matches_numpy_and_resets(page, analysis_pipeline, bridge, assembler):
    sup, _ = analysis_pipeline
    rect = sup.get(ROI, "roi1")
    assert rect[2] > 0, "needs the ROI of the first test"
    x, y, rw, rh = rect
    sup.set(MOTOR, "targetPosition", 0.5)
    sup.call(MOTOR, "move")

    def points():
        data, bins = page.evaluate(
            "() => [Bokeh.documents[0].get_model_by_name('correlation-points-3').data,"
            " Bokeh.documents[0].get_model_by_name('correlation-bins-3').data]"
        )
        if not data["update"] or not bins["update"] or data["update"][0] != bins["update"][0]:
            return None  # one of the two sources is still on its way
        seen = [
            (int(t), v) for t, v in zip(data["train"], data["y"]) if bridge.get(int(t)) is not None
        ]
        return (data, bins, seen) if len(data["x"]) >= 10 and seen else None

    data, bins, seen = wait_until(
        points, timeout=UI, what="correlation points of trains from the bridge"
    )
    for tid, value in seen[-2:]:
        frames = frames_of(bridge.get(tid))
        expected = sum(
            float(
                np.nansum(assembler.assemble(frames[p])[y : y + rh, x : x + rw], dtype=np.float64)
            )
            for p in range(PULSES)
        )
        assert value == pytest.approx(expected, rel=1e-5)
    # binned mean and std of the points the page shows, by numpy
    px, py = np.asarray(data["x"], float), np.asarray(data["y"], float)
    edges = np.append(np.asarray(bins["left"], float), bins["right"][-1])
    idx = np.clip(np.digitize(px, edges) - 1, 0, len(edges) - 2)
    inside = (px >= edges[0]) & (px <= edges[-1])
    for b in range(len(edges) - 1):
        sel = py[inside & (idx == b)]
        if sel.size:
            assert bins["mean"][b] == pytest.approx(sel.mean(), rel=1e-9)
            assert bins["hi"][b] - bins["mean"][b] == pytest.approx(sel.std(), rel=1e-6, abs=1e-9)
    n_before = len(data["x"])
    page.locator(".pt-reset button").click()
    page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('correlation-points-3').data.x.length "
        f"< {min(n_before, 10)}"
    )


def test_save_downloads_the_displayed_frame(page, tmp_path):
    page.locator(".pt-view select").select_option("pulse")
    page.locator(".pt-pause").click()
    page.wait_for_function(FROZEN_JS)
    try:
        shown = page.evaluate(SHOWN_JS)
        with page.expect_download() as info:
            page.locator(".pt-save-h5 button").click()
        download = info.value
        path = tmp_path / download.suggested_filename
        download.save_as(path)
        assert path.suffix == ".h5" and str(shown["train"]) in path.name
        with h5py.File(path, "r") as f:
            np.testing.assert_array_equal(f["frame/image"][()], shown_array(shown))
            assert int(f["frame/trainId"][()]) == shown["train"]
            assert int(f["frame/pulseId"][()]) == shown["pulse_id"]
            assert int(f["frame/pulseIndex"][()]) == shown["pulse"]
            assert f["geometry"].attrs["downsample"] >= 1
            assert "roi_vs_train_sumTrain" in f["trends"]
            assert ROI in f["configuration"]
        with page.expect_download() as info:
            page.locator(".pt-save-png button").click()
        png = tmp_path / info.value.suggested_filename
        info.value.save_as(png)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        from PIL import Image

        assert Image.open(io.BytesIO(png.read_bytes())).size == tuple(shown["shape"][::-1])
    finally:
        page.locator(".pt-pause").click()


def test_page_fits_1280_wide_without_warning_flood(page):
    warnings: list[str] = []
    page.on("console", lambda m: warnings.append(m.text) if m.type == "warning" else None)
    page.set_viewport_size({"width": 1280, "height": 800})
    t0 = time.monotonic()
    page.wait_for_timeout(4000)
    elapsed = time.monotonic() - t0
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 1280, f"the page scrolls sideways: {width} px wide"
    controls = page.locator("input, select, button, textarea")
    outside = []
    for k in range(controls.count()):
        box = controls.nth(k).bounding_box()
        if box is not None and box["width"] > 0 and box["x"] + box["width"] > 1280:
            outside.append(box)
    assert not outside, f"{len(outside)} controls beyond 1280 px: {outside[:3]}"
    assert len(warnings) <= elapsed, f"console warnings: {warnings[:5]}"
