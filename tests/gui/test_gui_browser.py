"""The GUI in a real browser (Debian chromium driven by Playwright) against a live pipeline.

The pipeline runs at 10 Hz (see gui_pipeline.py); ``pulsetrain gui`` runs as a separate process,
as an operator would start it, and a second, read-only GUI runs in this process.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from gui_pipeline import MOTOR, PREVIEW, PREVIEW_OUTPUT, PULSES
from pages import open_scene

from waiting import wait_until

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

LIVE_SCENE = f"""
[scene]
name = "live"
title = "Live"
update_rate = 10

[[panel]]
type = "detector_image"
source = "{PREVIEW_OUTPUT}"
controls = false
width = 560
"""

CONTROL_SCENE = f"""
[scene]
name = "control"
title = "Control"
columns = 1

[[panel]]
type = "device_panel"
devices = [
  {{ id = "{MOTOR}", properties = ["targetPosition", "velocity", "actualPosition"] }},
  {{ id = "{PREVIEW}", properties = ["auto_levels", "vmin", "vmax", "levels"] }},
]
"""

# Every panel type on one page (checked for JavaScript errors and data).
ALL_SCENE = f"""
[scene]
name = "all"
columns = 2
[[panel]]
type = "detector_image"
source = "{PREVIEW_OUTPUT}"
[[panel]]
type = "line"
source = "{PREVIEW_OUTPUT}"
x = "profile.radial"
y = "profile.intensity"
[[panel]]
type = "trend"
series = [{{ device = "{PREVIEW}", key = "trainsIn", rate = true }},
          {{ device = "{MOTOR}", key = "actualPosition", axis = "right" }}]
[[panel]]
type = "counters"
[[panel]]
type = "device_panel"
"""

# What the page shows: the image on the first image panel's canvas (pixels as base64).
SHOWN_JS = """() => {
  const s = window.pulsetrain.images['image-0'];
  const img = s.levels;
  let bytes = '';
  for (let i = 0; i < img.length; i += 8192) {
    bytes += String.fromCharCode.apply(null, img.subarray(i, i + 8192));
  }
  return {train: s.train, pulse: s.pulse, shape: [s.h, s.w], image: btoa(bytes)};
}"""


def shown_image(shown: dict) -> np.ndarray:
    """The displayed pixels, from :data:`SHOWN_JS`."""
    return np.frombuffer(base64.b64decode(shown["image"]), np.uint8).reshape(shown["shape"])


def model_js(name: str, attr: str) -> str:
    return f"() => Bokeh.documents[0].get_model_by_name({name!r}).{attr}"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    path = os.environ.get("PULSETRAIN_ARTIFACTS")
    directory = Path(path) / "gui" if path else tmp_path_factory.mktemp("test-artifacts")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    d = tmp_path_factory.mktemp("scenes")
    (d / "live.toml").write_text(LIVE_SCENE)
    (d / "control.toml").write_text(CONTROL_SCENE)
    (d / "all.toml").write_text(ALL_SCENE)
    return d


@pytest.fixture(scope="module")
def gui(pipeline, scenes):
    """``pulsetrain gui`` in its own process; yields {scene name: URL}."""
    _, path = pipeline
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
            str(scenes / "live.toml"),
            "--scene",
            str(scenes / "control.toml"),
            "--scene",
            str(scenes / "all.toml"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    urls: dict[str, str] = {}
    output = []
    deadline = time.monotonic() + 60
    while len(urls) < 3:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            proc.kill()
            pytest.fail(f"pulsetrain gui printed no URLs within 60 s: {''.join(output)}")
        output.append(line)
        match = re.search(r"(http://\S+/(live|control|all))\s*$", line)
        if match:
            urls[match.group(2)] = match.group(1)
    yield urls
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


@pytest.fixture(scope="module")
def read_only_gui(pipeline, scenes):
    """A read-only GUI in this process."""
    from pulsetrain.gui import GuiServer

    _, path = pipeline
    server = GuiServer(str(path), [scenes / "control.toml"], read_only=True).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Debian chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


def test_image_updates_at_the_train_rate(gui, page, artifacts, capsys):
    open_scene(page, gui["live"])
    # measure once the page is warm (first frames, JIT)
    page.wait_for_function("window.pulsetrain && window.pulsetrain.total >= 10", timeout=60000)
    first = page.evaluate(SHOWN_JS)
    n0 = page.evaluate("window.pulsetrain.total")
    t0 = time.monotonic()
    page.wait_for_timeout(10_000)  # the measurement window itself
    n1 = page.evaluate("window.pulsetrain.total")
    elapsed = time.monotonic() - t0
    last = page.evaluate(SHOWN_JS)
    rate = (n1 - n0) / elapsed
    shot = artifacts / "gui-live.png"
    page.screenshot(path=str(shot), full_page=True)
    with capsys.disabled():
        print(
            f"\n[gui] {n1 - n0} image updates in {elapsed:.2f} s = {rate:.2f}/s; "
            f"trains {first['train']} -> {last['train']}; screenshot: {shot}"
        )
    assert rate >= 9.0, f"only {rate:.2f} image updates per second"
    assert last["train"] - first["train"] >= 9 * elapsed
    assert len(first["shape"]) == 2 and shown_image(first).size > 10_000
    assert shot.stat().st_size > 10_000


def test_slider_shows_the_chosen_pulse(gui, page, collector):
    open_scene(page, gui["live"])
    page.wait_for_function("window.pulsetrain && window.pulsetrain.total >= 2", timeout=60000)
    page.locator(".pt-pause").click()  # freeze on the current train
    page.wait_for_function(
        model_js("image-status-0", "text") + ".includes('frozen')", timeout=10000
    )
    page.wait_for_function(
        "() => { const s = window.pulsetrain.images['image-0'];"
        " const t = Bokeh.documents[0].get_model_by_name('image-status-0').text;"
        " return t.includes('>' + s.train + '<'); }"
    )
    shown = page.evaluate(SHOWN_JS)
    train = shown["train"]
    values = wait_until(lambda: collector.get(train), what=f"train {train} in the collector")
    images = values["preview.images"]
    assert images.shape[0] == PULSES
    assert shown["pulse"] == 0
    np.testing.assert_array_equal(shown_image(shown), images[0])
    handle = page.locator(".pt-pulse-slider .noUi-handle")
    handle.focus()
    for expected in range(1, PULSES):
        handle.press("ArrowRight")
        page.wait_for_function(f"() => window.pulsetrain.images['image-0'].pulse == {expected}")
        shown = page.evaluate(SHOWN_JS)
        assert shown["train"] == train  # still the frozen train
        assert page.evaluate(model_js("pulse-slider-0", "value")) == expected
        np.testing.assert_array_equal(shown_image(shown), images[expected])
    assert not np.array_equal(images[0], images[PULSES - 1])  # the pulses do differ
    page.locator(".pt-pause").click()  # unfreeze: new trains again
    page.wait_for_function(f"() => window.pulsetrain.images['image-0'].train > {train}")


#: The canvas under the image figure's frame: its pixels, where the frame is, and the image's
#: place in it (data coordinates 0..dw, 0..dh to canvas pixels).
CANVAS_JS = """async () => {
  const p = window.pulsetrain.imagePanels[0];
  const f = p.view.frame, b = f.bbox, c = p.canvas;
  const shot = await p.snapshot();  // from the worker that draws on the canvas
  const px = shot.rgba;
  let text = '';
  for (let i = 0; i < px.length; i += 8192) {
    text += String.fromCharCode.apply(null, px.subarray(i, i + 8192));
  }
  const d = p.image;
  return {width: shot.width, height: shot.height, rgba: btoa(text), colours: p.info.colours,
          worker: p.worker !== null,
          left: c.getBoundingClientRect().left - p.view.canvas_view.el.getBoundingClientRect().left,
          frame_left: b.left, x0: f.x_scale.compute(0) - b.left, x1: f.x_scale.compute(d.dw) - b.left,
          y0: f.y_scale.compute(0) - b.top, y1: f.y_scale.compute(d.dh) - b.top};
}"""


@pytest.mark.parametrize("worker", [True, False], ids=["worker", "main-thread"])
def test_canvas_shows_the_image_in_its_colours(gui, page, worker):
    """What reaches the screen: every canvas pixel has the palette colour of the image pixel under
    it (level 0, no detector pixel, in the gap colour), and the canvas sits on the figure's frame.
    Drawn by a worker (Chromium), and on the main thread where a browser cannot give a canvas
    to a worker."""
    if not worker:
        page.add_init_script("delete HTMLCanvasElement.prototype.transferControlToOffscreen;")
    open_scene(page, gui["live"])
    page.wait_for_function("window.pulsetrain && window.pulsetrain.total >= 2", timeout=60000)
    page.locator(".pt-pause").click()  # a still image: the canvas and the image agree
    page.wait_for_function(
        "() => { const s = window.pulsetrain.images['image-0'];"
        " const t = Bokeh.documents[0].get_model_by_name('image-status-0').text;"
        " return t.includes('frozen') && t.includes('>' + s.train + '<'); }"
    )
    page.wait_for_timeout(300)  # two animation frames: a redraw scheduled by the layout
    shown = page.evaluate(SHOWN_JS)
    canvas = page.evaluate(CANVAS_JS)
    levels = shown_image(shown)
    h, w = levels.shape
    assert canvas["worker"] is worker
    assert canvas["left"] == pytest.approx(canvas["frame_left"], abs=1)
    rgba = np.frombuffer(base64.b64decode(canvas["rgba"]), np.uint8).reshape(
        canvas["height"], canvas["width"], 4
    )
    lut = np.array([[int(c[k : k + 2], 16) for k in (1, 3, 5)] for c in canvas["colours"]])
    # the image pixel under each canvas pixel's centre
    cy, cx = np.mgrid[0 : canvas["height"], 0 : canvas["width"]] + 0.5
    col = np.floor((cx - canvas["x0"]) / (canvas["x1"] - canvas["x0"]) * w).astype(int)
    row = np.floor((cy - canvas["y0"]) / (canvas["y1"] - canvas["y0"]) * h).astype(int)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    assert inside.mean() > 0.9, "the image does not fill the frame"
    expected = lut[levels[row[inside], col[inside]]]
    got = rgba[inside][:, :3].astype(int)
    exact = np.all(got == expected, axis=1)
    # nearest-neighbour scaling may round a canvas pixel on an image pixel's edge either way
    assert exact.mean() > 0.95, f"only {exact.mean():.1%} of the canvas has the image's colours"
    assert (rgba[inside][:, 3] == 255).all()
    assert len(np.unique(levels)) > 20  # a real image, not a flat one


def test_setting_properties_from_the_page(gui, page, pipeline, collector, artifacts):
    sup, _ = pipeline
    open_scene(page, gui["control"])
    target = page.locator(f".pt-edit-{MOTOR.replace('/', '_')}-targetPosition input")
    target.wait_for()
    assert target.is_disabled()  # locked until the token is entered
    before = sup.get(MOTOR, "targetPosition")
    # a page message that bypasses the disabled widget is refused by the server
    page.evaluate(f"""() => {{
        const m = Bokeh.documents[0].get_model_by_name('edit:{MOTOR}:targetPosition');
        m.disabled = false; m.value = '-4.5'; }}""")
    page.wait_for_function(model_js("message", "text") + ".includes('enter the control token')")
    assert sup.get(MOTOR, "targetPosition") == before
    token_box = page.locator(".pt-token input")
    token_box.fill("wrong-token")
    token_box.press("Enter")
    page.wait_for_function(model_js("message", "text") + ".includes('wrong control token')")
    token_box.fill(sup.token)
    token_box.press("Enter")
    page.wait_for_function(model_js("mode", "text") + ".includes('unlocked')")
    assert target.is_enabled()
    target.fill("2.5")
    target.press("Enter")
    wait_until(lambda: sup.get(MOTOR, "targetPosition") == 2.5, what="targetPosition = 2.5")
    page.locator(f".pt-slot-{MOTOR.replace('/', '_')}-move button").click()
    wait_until(lambda: sup.get(MOTOR, "actualPosition") > 0.05, what="the motor moving")
    # the preview's colour limits: fixed levels from the page reach the device and its output
    page.get_by_text("PROC/PREVIEW", exact=True).click()  # its tab: the ID's last two parts
    auto = page.locator(f".pt-edit-{PREVIEW.replace('/', '_')}-auto_levels select")
    auto.select_option("false")
    wait_until(lambda: sup.get(PREVIEW, "auto_levels") is False, what="auto_levels false")
    vmax = page.locator(f".pt-edit-{PREVIEW.replace('/', '_')}-vmax input")
    vmax.fill("7000")
    vmax.press("Enter")
    try:
        wait_until(lambda: sup.get(PREVIEW, "vmax") == 7000.0, what="vmax = 7000")
        page.wait_for_function(model_js("message", "text") + ".includes('vmax = 7000.0: done')")
        tid = sup.get(PREVIEW, "lastTrainId")
        values = wait_until(
            lambda: next((v for t, v in list(collector.trains.items()) if t > tid), None),
            what="a train after the change",
        )
        assert values["preview.vmax"] == 7000.0 and not values["preview.autoLevels"]
        page.screenshot(path=str(artifacts / "gui-control.png"), full_page=True)
        # a value the device refuses is reported in the page and the old one kept
        vmax.fill("-1")
        vmax.press("Enter")
        page.wait_for_function(model_js("message", "text") + ".includes('colour limits need vmin')")
        assert sup.get(PREVIEW, "vmax") == 7000.0
    finally:
        sup.set(PREVIEW, "auto_levels", True)
        sup.set(PREVIEW, "vmax", 10000.0)
        sup.call(MOTOR, "stop") if sup.get(MOTOR, "state") == "MOVING" else None


def test_read_only_gui_refuses_changes(read_only_gui, page, pipeline):
    sup, _ = pipeline
    open_scene(page, read_only_gui.scene_url("control"))
    target = page.locator(f".pt-edit-{MOTOR.replace('/', '_')}-targetPosition input")
    target.wait_for()
    assert target.is_disabled()
    assert page.locator(".pt-token").count() == 0
    assert page.locator(f".pt-slot-{MOTOR.replace('/', '_')}-move button").is_disabled()
    page.wait_for_function(model_js("mode", "text") + ".includes('read-only')")
    before = sup.get(MOTOR, "targetPosition")
    page.evaluate(f"""() => {{
        const m = Bokeh.documents[0].get_model_by_name('edit:{MOTOR}:targetPosition');
        m.disabled = false; m.value = '{before + 1.0}'; }}""")
    page.wait_for_function(model_js("message", "text") + ".includes('read-only')")
    page.wait_for_function(
        model_js(f"edit:{MOTOR}:targetPosition", "value") + f" == '{float(before)!r}'"
    )
    assert sup.get(MOTOR, "targetPosition") == before


def test_every_panel_type_renders(gui, page):
    events_per_patch: list[int] = []

    def on_websocket(ws):
        def frame(payload):
            if isinstance(payload, str) and payload.startswith("{") and '"events"' in payload:
                events_per_patch.append(len(json.loads(payload)["events"]))

        ws.on("framereceived", frame)

    page.on("websocket", on_websocket)
    open_scene(page, gui["all"])
    page.wait_for_function("window.pulsetrain && window.pulsetrain.total >= 3", timeout=60000)
    page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('line-source-1').data.x.length == 50"
    )
    page.wait_for_function(
        "() => Bokeh.documents[0].get_model_by_name('trend-2-0').data.t.length >= 2"
    )
    page.wait_for_function(model_js("counters-3", "text") + ".includes('PROCESSING')")
    assert page.locator(".pt-slot").count() >= 4  # slot buttons of the devices
    # the changes of one page tick reach the browser as one message, not one per property
    for _ in range(40):  # Playwright hands over the frames while it is called
        if len(events_per_patch) >= 5:
            break
        page.wait_for_timeout(500)
    assert len(events_per_patch) >= 5, "fewer than 5 patches of the page in 20 s"
    assert max(events_per_patch) >= 2, events_per_patch


def test_device_tabs_show_id_and_class_on_hover(gui, page):
    """The device tabs are named short (``MOTOR/X``); hovering shows the full ID and class."""
    open_scene(page, gui["control"])
    tab = page.locator(".bk-tab").filter(has_text="PROC/PREVIEW")
    tab.wait_for()
    wait_until(
        lambda: tab.get_attribute("title") == f"{PREVIEW} (PreviewAssembler)",
        timeout=20,
        what="the preview tab's hover title",
    )
    tab.hover()
    tab.click()  # BokehJS rebuilds the tab headers: the titles must come back
    motor = page.locator(".bk-tab").filter(has_text="MOTOR/X")
    wait_until(
        lambda: (
            motor.get_attribute("title") == f"{MOTOR} (SimulatedMotor)"
            and tab.get_attribute("title") == f"{PREVIEW} (PreviewAssembler)"
        ),
        timeout=20,
        what="the titles after changing tabs",
    )
    assert page.locator(".bk-tab").first.inner_text() == "MOTOR/X"
