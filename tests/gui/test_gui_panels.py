"""Every panel type built and driven against the live pipeline, without a browser."""

from __future__ import annotations

import time

import numpy as np
import pytest
from bokeh.document import Document
from gui_pipeline import DETECTOR, MATCHER, MOTOR, PREVIEW, PREVIEW_OUTPUT, PULSES

from pulsetrain.errors import ConfigurationError
from pulsetrain.gui import GuiServer, scene_from_dict
from pulsetrain.gui.imagestream import decode
from pulsetrain.gui.panels import RateLimiter, TrendPanel

SCENE = {
    "scene": {"name": "all", "poll_interval": 0.2, "columns": 3},
    "panel": [
        {"type": "detector_image", "source": PREVIEW_OUTPUT},
        {
            "type": "line",
            "source": PREVIEW_OUTPUT,
            "x": "profile.radial",
            "y": ["profile.intensity"],
            "update_rate": 10,
        },
        {
            "type": "trend",
            "series": [
                {"device": PREVIEW, "key": "trainsIn", "rate": True},
                {"device": MOTOR, "key": "actualPosition", "axis": "right"},
            ],
        },
        {"type": "counters"},
        {"type": "device_panel", "devices": [MOTOR, {"id": PREVIEW, "properties": ["vmax"]}]},
        {"type": "line", "source": "NO/SUCH:output", "y": "a"},
        {"type": "device_panel", "devices": ["NO/SUCH/DEVICE"]},
    ],
}


class PageSocket:
    """The page's end of an image panel's WebSocket: keeps the last image, acknowledges it."""

    def __init__(self, channel):
        self.channel = channel
        self.meta: dict = {}
        self.levels = self.values = None
        channel.attach(self)

    def write_message(self, message, binary=False):
        assert binary
        self.meta, self.levels, self.values = decode(message)
        self.channel.acked(self.meta["push"])

    def close(self, code=None, reason=None):
        self.channel.detach(self)


@pytest.fixture
def session(pipeline):
    _, path = pipeline
    server = GuiServer(str(path), [scene_from_dict(SCENE)])
    server.backend.start()
    from pulsetrain.gui.app import SceneSession

    doc = Document()
    yield SceneSession(server, server.scenes[0], doc)
    server.backend.stop()


def drive(session, test, timeout=10.0):
    """Run the page's periodic callback until ``test()`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        session._tick()
        if test():
            return
        time.sleep(0.025)
    raise AssertionError("the panels did not get there in time")


def test_all_panels_update(session):
    image, line, trend, counters, devices, bad_line, bad_device = session.panels
    page = PageSocket(image.channel)
    drive(
        session,
        lambda: (
            image.shown is not None
            and len(line.source.data["x"]) > 0
            and len(trend.sources[0].data["t"]) >= 3
        ),
    )
    assert page.levels.dtype == np.uint8 and page.meta["train"] > 0
    # the figure's invisible stand-in for the hover has the image's shape
    assert image.source.data["image"][0].shape == page.levels.shape
    assert image.slider.end == PULSES - 1 and not image.slider.disabled
    assert [e.key for e in image.editors] == [
        "vmin",
        "vmax",
        "auto_levels",
        "scale",
        "downsample",
        "max_pulses",
    ]
    assert len(line.source.data["x"]) == 50 and np.isfinite(line.source.data["y0"]).any()
    rates = np.asarray(trend.sources[0].data["y"], dtype=float)
    assert np.nanmax(rates) > 5  # trains per second through the preview (10 Hz)
    assert trend.fig.extra_y_ranges  # the motor on its own axis
    rows = {r["device"]: r for r in counters.rows()}
    assert set(rows) >= {DETECTOR, MATCHER, MOTOR, PREVIEW, f"GUI ← {PREVIEW_OUTPUT}"}
    assert rows[PREVIEW]["state"] == "PROCESSING" and rows[PREVIEW]["in"] > 0
    assert "<table" in counters.table.text
    assert [c["device"] for c in devices.cards] == [MOTOR, PREVIEW]
    assert [e.key for e in devices.cards[1]["editors"]] == ["vmax"]
    assert "SimulatedMotor" in devices.cards[0]["head"].text
    assert "no output" in bad_line.layout.children[1].text
    assert "not in the running topology" in bad_device.cards[0]["head"].text
    # every editor starts disabled: the page is locked until the token is entered
    assert session.editors and all(w.disabled for w in session.editors)
    session._token_entered("value", "", session.backend.topology.token)
    assert session.can_edit and not any(w.disabled for w in session.editors)
    assert session.token_input.value == ""  # the secret does not stay in the page model


def test_freeze_and_pulse_choice(session):
    image = session.panels[0]
    assert not image.channel.connected
    session._tick()
    assert image.shown is None  # no page connected: nothing is sent
    page = PageSocket(image.channel)
    drive(session, lambda: image.shown is not None)
    image.pause.active = True
    frozen = image.frozen
    image.slider.value = 2
    assert page.meta["pulse"] == 2 and page.meta["train"] == frozen.train_id
    values = next(iter(frozen.data.values()))
    np.testing.assert_array_equal(page.levels, values["preview.images"][2])
    time.sleep(0.3)
    session._tick()
    assert page.meta["train"] == frozen.train_id  # frozen: no newer train shown
    image.pause.active = False
    drive(session, lambda: page.meta["train"] > frozen.train_id)


def test_rate_limiter_and_trend_rates():
    limiter = RateLimiter(10.0, burst=2.0)
    t0 = limiter.t
    # checked every 25 ms for 10 s: 100 pushes (10/s), plus the initial burst
    taken = sum(limiter.take(t0 + k * 0.025) for k in range(1, 401))
    assert 100 <= taken <= 102
    t = np.arange(0.0, 10.0, 0.5)
    y = 10.0 * t  # a counter growing at 10/s
    tt, rate = TrendPanel.rates(t, y, since=3.0)
    assert tt[0] > 3.0 and np.allclose(rate, 10.0)


def test_editors_parse_the_property_types(session):
    editors = {e.key: e for e in session.panels[0].editors}
    assert editors["vmin"].parse("2.5") == 2.5
    assert editors["downsample"].parse("3") == 3 and editors["downsample"].parse("3.0") == 3
    assert editors["auto_levels"].parse("false") is False
    assert editors["scale"].parse("log") == "log"
    for key, text in (
        ("downsample", "2.5"),
        ("downsample", "inf"),
        ("vmin", "abc"),
        ("scale", "cubic"),
        ("auto_levels", "maybe"),
    ):
        with pytest.raises(ConfigurationError):
            editors[key].parse(text)
    # a value the page cannot parse is reported and the field shows the device's value again
    editors["vmin"].widget.value = "abc"
    assert "is not a float" in session.msg.text
    assert editors["vmin"].widget.value == repr(float(session.backend.value(PREVIEW, "vmin")))


def test_poll_keeps_typed_text_that_already_is_the_device_value(session):
    """A poll that brings the value just typed does not rewrite the field (the user may be
    typing the next value in it); a different value from the device is shown."""
    vmax = {e.key: e for e in session.panels[0].editors}["vmax"]
    token = session.backend.topology.token
    original = session.backend.value(PREVIEW, "vmax")
    with session.programmatic():
        vmax.widget.value = "7000"  # as typed in the page
    try:
        session.backend.set_property(PREVIEW, "vmax", 7000.0, token)
        drive(session, lambda: vmax.last_device_value == 7000.0)
        assert vmax.widget.value == "7000"
        session.backend.set_property(PREVIEW, "vmax", 8000.0, token)
        drive(session, lambda: vmax.widget.value == "8000.0")
    finally:
        session.backend.set_property(PREVIEW, "vmax", original, token)


def test_a_page_opening_holds_back_other_pages_deferred_panels_for_a_while(monkeypatch):
    """Deferred panels of page A wait while page B is served but has no first image yet (the
    web server's one loop goes to B's HTML, image socket and first image), at most
    OPENING_SECONDS; a page never holds itself up."""
    from pulsetrain.gui import app

    clock = [100.0]
    monkeypatch.setattr(app.time, "monotonic", lambda: clock[0])
    server = object.__new__(app.GuiServer)  # the bookkeeping only: no web server
    server.opening = {}
    assert not server.another_page_opening(1)
    server.opening[2] = clock[0]  # page 2 served, no image yet
    assert server.another_page_opening(1)
    assert not server.another_page_opening(2)
    clock[0] += app.OPENING_SECONDS - 0.1
    assert server.another_page_opening(1)
    clock[0] += 0.2  # no image came in time: page 2 holds nobody up any longer
    assert not server.another_page_opening(1)
    assert server.opening == {}
