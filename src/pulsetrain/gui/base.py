"""What every panel is built on: the page a panel lives in, property editors, the rate limiter.

:class:`Page` is the protocol of what a panel may use of its page; :class:`PanelBase` gives a
panel its title, width and the two hooks the page calls (``on_tick``, ``on_poll``).
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np
from bokeh.layouts import column
from bokeh.models import (
    Div,
    Select,
    TextInput,
)

from pulsetrain.errors import ConfigurationError
from pulsetrain.gui.backend import GuiBackend, TapFrame
from pulsetrain.gui.imagestream import ImageChannel
from pulsetrain.gui.scene import Panel, Scene

__all__ = [
    "ErrorPanel",
    "Page",
    "PanelBase",
    "PropertyEditor",
    "RateLimiter",
    "axis_limits",
    "css_name",
    "fmt_value",
    "frame_source",
    "state_html",
]

log = logging.getLogger(__name__)

STATE_COLOURS = {
    "ON": "#1a7f37",
    "ACQUIRING": "#0b5cad",
    "PROCESSING": "#0b5cad",
    "MONITORING": "#0b5cad",
    "MOVING": "#b35900",
    "CHANGING": "#b35900",
    "ERROR": "#c01c28",
    "UNREACHABLE": "#6e6e6e",
    "STOPPED": "#6e6e6e",
    "OFF": "#6e6e6e",
    "INIT": "#6e6e6e",
}


class Page(Protocol):
    """What a panel may use of the page it is placed on (:class:`~pulsetrain.gui.app.SceneSession`).

    Attributes
    ----------
    backend : GuiBackend
        The shared connection to the running topology (taps, polled values, schemas).
    scene : Scene
        The scene the page shows.
    updating : bool
        True while the server changes widgets itself (see :meth:`programmatic`): a widget's
        callback must then not send the change to a device.
    can_edit : bool
        Whether this page may change devices (not read-only, control token entered).
    preview_output : str
        ``DEVICE:output`` a detector image shows when its panel names no source ("" if none).
    """

    backend: GuiBackend
    scene: Scene
    updating: bool

    @property
    def can_edit(self) -> bool: ...

    @property
    def preview_output(self) -> str: ...

    def add_editor(self, widget: Any) -> None:
        """Register a widget that changes devices: enabled only while the page may edit."""

    def programmatic(self) -> AbstractContextManager[None]:
        """Change widgets from the server without their callbacks sending requests."""

    def message(self, text: str, error: bool = False) -> None:
        """Show a one-line message at the top of the page."""

    def request_set(
        self, device: str, key: str, value: Any, on_fail: Callable[[], None] | None = None
    ) -> None:
        """Set a device property (checked and sent off the web thread)."""

    def request_call(self, device: str, slot: str) -> None:
        """Call a device slot (checked and sent off the web thread)."""

    def open_image_channel(
        self,
        key: str,
        figure: str,
        colours: list[str],
        on_connect: Callable[[], None],
        on_ack: Callable[[int], None],
        index: int = 0,
        size: tuple[int, int] = (400, 400),
    ) -> ImageChannel:
        """A WebSocket of its own for an image panel's pixels, drawn under ``figure``
        (and, until the figure is drawn, in the place of the page's panel ``index``)."""

    def count_image_push(self) -> None:
        """Count one image sent to the browser (``image_pushes`` in ``/status.json``)."""

    def offer_download(self, filename: str, data: bytes, mime: str) -> str:
        """Make the browser download ``data`` as ``filename``; returns the download's URL."""

    def run_on_page(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the page's thread (from another thread, e.g. a finished request)."""

    def on_document_ready(self, callback: Any) -> None:
        """Run browser code (a ``CustomJS``) once the page is shown."""

    def page_devices(self) -> set[str]:
        """Every device the page's panels read or change."""

    def trend_data(self) -> dict[str, dict[str, Any]]:
        """The page's trends as columns (name → column → values), for saving."""


def css_name(text: str) -> str:
    """``text`` made safe for a CSS class name (``/`` and ``:`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def state_html(state: Any) -> str:
    state = str(state or "UNKNOWN")
    colour = STATE_COLOURS.get(state, "#6e6e6e")
    return f'<b style="color:{colour}">{html.escape(state)}</b>'


def fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 120 else text[:117] + "..."
    if isinstance(value, np.ndarray):
        return f"array{value.shape} {value.dtype}"
    return str(value)


class RateLimiter:
    """A token bucket: on average at most ``rate`` pushes per second, bursts of ``burst``.

    Pushing from a check every 25 ms through this bucket shows every train of a 10 Hz pipeline
    even with arrival jitter (a fixed 10 Hz timer beating against 10 Hz trains would skip some),
    and the latest train only when trains come faster than ``rate``.
    """

    def __init__(self, rate: float, burst: float = 2.0):
        self.rate = float(rate)
        self.capacity = float(burst)
        self.tokens = float(burst)
        self.t = time.monotonic()

    def take(self, now: float) -> bool:
        """Use one token if there is one."""
        self.tokens = min(self.capacity, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def frame_source(frame: TapFrame, wanted: str, key: str) -> tuple[str, dict] | None:
    """The source of a train holding ``key`` (``wanted`` if given)."""
    if wanted:
        values = frame.data.get(wanted)
        return (wanted, values) if isinstance(values, dict) and key in values else None
    for name, values in frame.data.items():
        if isinstance(values, dict) and key in values:
            return name, values
    return None


# ============================================================================================
# Property editors (device panel, image controls)
# ============================================================================================


class PropertyEditor:
    """A widget that edits one reconfigurable property; changes go through the session's token.

    Numbers and strings are text fields (Enter or leaving the field sends), properties with
    options and booleans are drop-downs, lists and dicts are JSON text.
    """

    def __init__(self, session: Page, device: str, key: str, entry: dict):
        self.session = session
        self.device = device
        self.key = key
        self.type = entry.get("type", "str")
        self.options = entry.get("options")
        unit = entry.get("unit") or ""
        title = f"{key} [{unit}]" if unit else key
        value = session.backend.value(device, key)
        self.last_device_value = value
        common = {
            "title": title,
            "name": f"edit:{device}:{key}",
            "css_classes": ["pt-edit", f"pt-edit-{css_name(device)}-{css_name(key)}"],
            "width": 150,
            "disabled": not session.can_edit,
        }
        if self.options:
            self._choices = {str(o): o for o in self.options}
            self.widget = Select(options=list(self._choices), value=str(value), **common)
        elif self.type == "bool":
            self._choices = {"true": True, "false": False}
            self.widget = Select(options=["true", "false"], value=self._text(value), **common)
        else:
            self._choices = None
            self.widget = TextInput(value=self._text(value), **common)
        if entry.get("description"):
            self.widget.description = entry["description"]
        self.widget.on_change("value", self._changed)
        session.add_editor(self.widget)

    def _text(self, value: Any) -> str:
        if value is None:
            return ""
        if self.type == "bool":
            return "true" if value else "false"
        if self.type in ("list", "dict", "array"):
            return json.dumps(
                np.asarray(value).tolist() if self.type == "array" else value, default=str
            )
        if self.type == "float":
            return repr(float(value))
        return str(value)

    def parse(self, text: str) -> Any:
        """Convert the widget's text to the property's type.

        Raises
        ------
        ConfigurationError
            If the text is not a value of that type.
        """
        if self._choices is not None:
            if text not in self._choices:
                raise ConfigurationError(
                    f"{self.key}: {text!r} is not one of {list(self._choices)}"
                )
            return self._choices[text]
        try:
            if self.type == "int":
                number = float(text)
                if number != int(number):
                    raise ValueError
                return int(number)
            if self.type == "float":
                return float(text)
            if self.type in ("list", "dict", "array"):
                return json.loads(text)
        except (ValueError, OverflowError, json.JSONDecodeError):
            raise ConfigurationError(f"{self.key}: {text!r} is not a {self.type}") from None
        return text

    def _changed(self, attr: str, old: Any, new: Any) -> None:
        if self.session.updating:
            return
        try:
            value = self.parse(new)
        except ConfigurationError as exc:
            self.session.message(str(exc), error=True)
            self.show(self.last_device_value)
            return
        self.session.request_set(
            self.device,
            self.key,
            value,
            on_fail=lambda: self.show(self.session.backend.value(self.device, self.key)),
        )

    def show(self, value: Any) -> None:
        """Display ``value`` without sending it back to the device."""
        text = (
            str(value) if self._choices is not None and self.type != "bool" else self._text(value)
        )
        with self.session.programmatic():
            self.widget.value = text

    def refresh(self) -> None:
        """Show the device's value if it changed since the last poll."""
        value = self.session.backend.value(self.device, self.key)
        if value != self.last_device_value:
            self.last_device_value = value
            if not self._shows(value):
                self.show(value)

    def _shows(self, value: Any) -> bool:
        """Whether the widget's text already is ``value`` (e.g. "7000" typed for 7000.0).

        The text is then left alone: rewriting it from the server while someone is typing
        the next value in the same field would replace what they typed.
        """
        try:
            return bool(self.parse(self.widget.value) == value)
        except (ConfigurationError, ValueError, TypeError):  # not parseable, or an array
            return False


# ============================================================================================
# Panels
# ============================================================================================


class PanelBase:
    """Common parts: a title, a width, the tick/poll hooks."""

    default_width = 560

    def __init__(self, session: Page, panel: Panel):
        self.session = session
        self.panel = panel
        self.backend = session.backend
        self.width = panel["width"] or self.default_width
        self.height = panel["height"] or 0
        self.layout: Any = None

    def on_tick(self, now: float) -> None:
        """Called every 25 ms on the web server's thread."""

    def on_poll(self) -> None:
        """Called after each property poll."""

    def browser_behind(self, now: float) -> bool:
        """Whether the browser has not yet taken what this panel sent (its own flow control).

        While a panel of the page says so, the page holds back the updates of the panels
        without flow control (trends, histograms, tables): they would queue in the websocket
        ahead of the next image on a browser that is short of CPU.
        """
        return False

    def devices(self) -> set[str]:
        """The devices this panel reads or changes (polled while a page shows the panel)."""
        return set()

    def trends(self) -> dict[str, dict[str, Any]]:
        """The panel's trend data as columns (name → column → values), for saving."""
        return {}

    def header(self) -> Div:
        return Div(
            text=f"<h3 style='margin:4px 0'>{html.escape(self.panel.title)}</h3>", width=self.width
        )

    def wrap(self, *children: Any) -> Any:
        return column(
            self.header(), *children, css_classes=["pt-panel", f"pt-panel-{self.panel.type}"]
        )


class ErrorPanel(PanelBase):
    """Shown instead of a panel that cannot be built (unknown output, unreachable device)."""

    def __init__(self, session: Page, panel: Panel, message: str):
        super().__init__(session, panel)
        self.layout = self.wrap(
            Div(text=f"<span style='color:#c01c28'>{html.escape(message)}</span>", width=self.width)
        )


def axis_limits(lo: float, hi: float) -> tuple[float, float]:
    """Axis limits showing values from ``lo`` to ``hi``: 5 % margins; a flat curve ±5 % of it.

    A constant 2.2e-6 gets (2.09e-6, 2.31e-6), not Bokeh's default span of −1..1 around it.
    """
    span = hi - lo
    if span <= 1e-12 * max(abs(lo), abs(hi)) or span == 0.0:
        half = 0.05 * abs(hi) if hi != 0.0 else 1.0
        return lo - half, hi + half
    return lo - 0.05 * span, hi + 0.05 * span


#: A fitted axis keeps its limits while the data stay inside and fill at least this fraction.
FIT_KEEP_FILL = 0.6


def fit_range(rng: Any, lo: float, hi: float) -> None:
    """Fit a ``Range1d`` to data from ``lo`` to ``hi`` (:func:`axis_limits`), with hysteresis.

    The limits stay while the data are inside them and span at least :data:`FIT_KEEP_FILL` of
    them: a new range makes the browser measure the tick labels again and often lay the page
    out again, which for noisy data at every redraw was a large part of a page's work.
    """
    start, end = rng.start, rng.end
    if start is not None and end is not None:
        low, high = min(start, end), max(start, end)
        span = high - low
        if low <= lo and hi <= high and span > 0 and hi - lo >= FIT_KEEP_FILL * span:
            return
    start, end = axis_limits(lo, hi)
    if (rng.start, rng.end) != (start, end):
        rng.update(start=start, end=end)


#: A growing axis (time, train ID) gets this fraction of its span as room ahead of the data.
FOLLOW_AHEAD = 0.15


def follow_range(rng: Any, first: float, last: float, min_span: float = 1.0) -> None:
    """Fit a ``Range1d`` to a growing axis (time, train ID) that changes only now and then.

    Data that advance at every update would move the range at every update, and each move
    makes the browser measure the axis's tick labels again: the end goes :data:`FOLLOW_AHEAD`
    of the data's span (at least ``min_span``) beyond the last value, and the range stays while
    the data are inside it and fill :data:`FIT_KEEP_FILL` of it (a trend of 300 s moves once
    every 45 s, not every second).
    """
    span = max(last - first, min_span)
    start, end = rng.start, rng.end
    if (
        start is not None
        and end is not None
        and start <= first
        and last <= end
        and span >= FIT_KEEP_FILL * (end - start)
    ):
        return
    new = (first, last + FOLLOW_AHEAD * span)
    if (rng.start, rng.end) != new:
        rng.update(start=new[0], end=new[1])
