"""The panels a scene is made of, as Bokeh models bound to the shared :class:`GuiBackend`.

Each panel has a ``layout`` (the Bokeh model to place on the page) and two hooks the page calls
on the web server's thread: ``on_tick(now)`` often (every 25 ms) to push new pipeline data —
rate-limited, latest train wins — and ``on_poll()`` after every property poll.  Panels never
compute images: the :class:`~pulsetrain.devices.preview.PreviewAssembler` device did that once
per train; a panel only picks one pulse's uint8 image and hands it to Bokeh, which sends it to
the browser as a binary buffer.
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
from bokeh import palettes
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    ColorBar,
    ColumnDataSource,
    CustomJS,
    Div,
    HoverTool,
    LinearAxis,
    LinearColorMapper,
    LogColorMapper,
    Range1d,
    Select,
    Slider,
    TabPanel,
    Tabs,
    TextInput,
    Toggle,
    Tooltip,
)
from bokeh.plotting import figure

from pulsetrain.errors import ConfigurationError, PulsetrainError
from pulsetrain.gui.backend import GuiBackend, TapFrame, lookup
from pulsetrain.gui.scene import Panel, Scene, short_device

__all__ = ["Page", "PropertyEditor", "RateLimiter", "axis_limits", "build_panel", "css_name"]

log = logging.getLogger(__name__)

#: Preview-device properties offered under a detector image (when the device has them).
IMAGE_CONTROLS = ("vmin", "vmax", "auto_levels", "scale", "downsample", "max_pulses")

#: Colour of image pixels where no detector pixel is (level 0 of a preview image).
GAP_COLOUR = "#d0d0d0"

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

    def count_image_push(self) -> None:
        """Count one image sent to the browser (``image_pushes`` in ``/status.json``)."""


def css_name(text: str) -> str:
    """``text`` made safe for a CSS class name (``/`` and ``:`` become ``_``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def _state_html(state: Any) -> str:
    state = str(state or "UNKNOWN")
    colour = STATE_COLOURS.get(state, "#6e6e6e")
    return f'<b style="color:{colour}">{html.escape(state)}</b>'


def _fmt(value: Any) -> str:
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


def _frame_source(frame: TapFrame, wanted: str, key: str) -> tuple[str, dict] | None:
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


class DetectorImagePanel(PanelBase):
    """The assembled detector preview with a pulse slider, freeze, colour bar and controls."""

    default_width = 620

    def __init__(self, session: Page, panel: Panel, output: str):
        super().__init__(session, panel)
        self.output = output
        self.device = output.rsplit(":", 1)[0]
        self.tap = self.backend.tap(output)
        self.limiter = RateLimiter(session.scene.update_rate)
        self.pulse = 0
        self.paused = False
        self.frozen: TapFrame | None = None
        self.shown: tuple[int, int] | None = None  # (seq, pulse)
        self.shape = (1, 1)
        self.n_pulses = 0
        self.pushes: list[float] = []
        self.status_time = 0.0
        palette = list(getattr(palettes, panel["palette"]))
        self.source = self._image_source()
        self.fig = self._image_figure(palette)
        self.bar_fig = self._colour_bar(palette)
        self.slider, self.pause = self._pulse_controls()
        self.status = Div(
            text="waiting for the first train ...",
            width=self.width,
            name=f"image-status-{panel.index}",
            css_classes=["pt-image-status"],
        )
        children: list[Any] = [
            row(self.fig, self.bar_fig),
            row(self.slider, self.pause),
            self.status,
        ]
        self.editors = self._property_editors() if panel["controls"] else []
        if self.editors:
            children.append(row(*[e.widget for e in self.editors]))
        self.layout = self.wrap(*children)

    # ------------------------------------------------------------ building
    def _image_source(self) -> ColumnDataSource:
        """The data source of the image, counting its updates in the page (``window.pulsetrain``)."""
        i = self.panel.index
        source = ColumnDataSource(
            {
                "image": [np.zeros((1, 1), dtype=np.uint8)],
                "dw": [1],
                "dh": [1],
                "train": [-1],
                "pulse": [0],
            },
            name=f"image-source-{i}",
        )
        # A counter in the page, for tests and for a glance at the browser's frame rate.
        source.js_on_change(
            "data",
            CustomJS(
                args={"key": f"image-{i}"},
                code="""
            const pt = window.pulsetrain = window.pulsetrain || {frames: {}, total: 0};
            pt.frames[key] = (pt.frames[key] || 0) + 1;
            pt.total += 1;
            pt.last = performance.now();
        """,
            ),
        )
        return source

    def _image_figure(self, palette: list[str]) -> Any:
        """The figure drawing the uint8 image (level 0, no detector pixel, in grey)."""
        self.mapper = LinearColorMapper(palette=[GAP_COLOUR, *palette[1:]], low=0, high=255)
        fig = figure(
            frame_width=self.width - 90,
            frame_height=self.width - 90,
            x_range=Range1d(0, 1),
            y_range=Range1d(1, 0),  # row 0 at the top
            tools="pan,wheel_zoom,box_zoom,reset,save",
            toolbar_location="above",
            name=f"image-figure-{self.panel.index}",
        )
        fig.grid.visible = False
        fig.axis.visible = False
        renderer = fig.image(
            image="image", x=0, y=0, dw="dw", dh="dh", source=self.source, color_mapper=self.mapper
        )
        fig.add_tools(
            HoverTool(
                renderers=[renderer], tooltips=[("x, y", "$x{0}, $y{0}"), ("level", "@image")]
            )
        )
        return fig

    def _colour_bar(self, palette: list[str]) -> Any:
        """The colour bar, in a figure of its own refreshed with the status line.

        Drawn in the image's figure it would be redrawn with every image (about 40 % of the
        browser's work for this panel at 10 Hz, measured).
        """
        self.bar_mapper: LinearColorMapper | LogColorMapper = LinearColorMapper(
            palette=palette, low=0, high=1
        )
        self.bar = ColorBar(color_mapper=self.bar_mapper, width=12, title="value", location=(0, 0))
        bar_fig = figure(
            x_range=Range1d(0, 1),  # fixed ranges: an empty figure cannot fit data ranges,
            y_range=Range1d(0, 1),  # and BokehJS would warn at every layout
            frame_width=1,
            frame_height=self.width - 90,
            width=80,
            toolbar_location=None,
            min_border_top=36,
            outline_line_color=None,
            name=f"image-colourbar-{self.panel.index}",
        )
        bar_fig.axis.visible = False
        bar_fig.grid.visible = False
        bar_fig.scatter([], [])  # a figure needs a renderer
        bar_fig.add_layout(self.bar, "right")
        return bar_fig

    def _pulse_controls(self) -> tuple[Slider, Toggle]:
        """The pulse slider and the freeze toggle."""
        i = self.panel.index
        slider = Slider(
            start=0,
            end=1,
            value=0,
            step=1,
            title="pulse",
            disabled=True,
            width=self.width - 140,
            name=f"pulse-slider-{i}",
            css_classes=["pt-pulse-slider"],
        )
        slider.on_change("value", self._pulse_changed)
        pause = Toggle(
            label="freeze", active=False, width=90, name=f"pause-{i}", css_classes=["pt-pause"]
        )
        pause.on_change("active", self._pause_changed)
        return slider, pause

    def _property_editors(self) -> list[PropertyEditor]:
        """Editors of the preview device's reconfigurable :data:`IMAGE_CONTROLS`."""
        schema = self.backend.schema(self.device) or {}
        props = schema.get("properties", {})
        editors = []
        for key in IMAGE_CONTROLS:
            entry = props.get(key)
            if entry and entry.get("access") == "reconfigurable":
                editor = PropertyEditor(self.session, self.device, key, entry)
                editor.widget.width = 95
                editors.append(editor)
        return editors

    # ------------------------------------------------------------ interaction
    def _pulse_changed(self, attr: str, old: Any, new: Any) -> None:
        if self.session.updating:
            return
        self.pulse = int(new)
        self.status_time = 0.0
        frame = self.frozen if self.paused else self.tap.latest
        if frame is not None:
            self.show(frame)

    def _pause_changed(self, attr: str, old: Any, new: Any) -> None:
        self.paused = bool(new)
        self.frozen = self.tap.latest if self.paused else None
        self.pause.label = "frozen" if self.paused else "freeze"
        if self.frozen is not None:
            self.show(self.frozen)

    # ------------------------------------------------------------ pushing
    def on_tick(self, now: float) -> None:
        frame = self.frozen if self.paused else self.tap.latest
        if frame is None or self.shown == (frame.seq, self.pulse):
            return
        if not self.paused and not self.limiter.take(now):
            return
        self.show(frame)

    def show(self, frame: TapFrame) -> None:
        """Display pulse ``self.pulse`` of ``frame`` (the device already scaled it to uint8)."""
        found = _frame_source(frame, self.panel["data_source"], "preview.images")
        if found is None:
            self.status.text = (
                f"<span style='color:#c01c28'>no <code>preview.images</code> in "
                f"{html.escape(self.output)}</span>"
            )
            self.shown = (frame.seq, self.pulse)
            return
        _, values = found
        images = values["preview.images"]
        if images.ndim == 2:
            images = images[np.newaxis]
        n, h, w = images.shape
        pulse = min(self.pulse, n - 1)
        with self.session.programmatic():
            if n != self.n_pulses:
                self.n_pulses = n
                self.slider.end = max(1, n - 1)
                self.slider.disabled = n <= 1
            if pulse != self.pulse:
                self.pulse = pulse
                self.slider.value = pulse
        if (h, w) != self.shape:
            self.shape = (h, w)
            self.fig.x_range.update(start=0, end=w)
            self.fig.y_range.update(start=h, end=0)
            self.fig.frame_height = max(100, round((self.width - 90) * h / w))
            self.bar_fig.frame_height = self.fig.frame_height
        tid = frame.train_id if frame.train_id is not None else -1
        self.source.data = {
            "image": [images[pulse]],
            "dw": [w],
            "dh": [h],
            "train": [tid],
            "pulse": [pulse],
        }
        self.shown = (frame.seq, self.pulse)
        self.session.count_image_push()
        now = time.monotonic()
        self.pushes = [t for t in self.pushes[-30:] if now - t < 3.0] + [now]
        # The status line and the colour bar change layout in the browser: refresh them at most
        # twice a second while running (a third of the browser's work at 10 Hz otherwise), at
        # once when frozen or when the pulse was chosen.
        if self.paused or now - self.status_time >= 0.5:
            self.status_time = now
            self._update_levels(values)
            self._update_status(frame, values, pulse, n)

    def _update_levels(self, values: dict) -> None:
        vmin = float(values.get("preview.vmin", 0.0))
        vmax = float(values.get("preview.vmax", 1.0))
        log_scale = values.get("preview.scale") == "log" and vmin > 0
        wanted = LogColorMapper if log_scale else LinearColorMapper
        if not isinstance(self.bar_mapper, wanted):
            self.bar_mapper = wanted(palette=self.bar_mapper.palette, low=vmin, high=vmax)
            self.bar.color_mapper = self.bar_mapper
        elif (self.bar_mapper.low, self.bar_mapper.high) != (vmin, vmax):
            self.bar_mapper.update(low=vmin, high=vmax)

    def _update_status(self, frame: TapFrame, values: dict, pulse: int, n: int) -> None:
        pulse_ids = values.get("preview.pulseIds")
        cell_ids = values.get("preview.cellIds")
        pid = (
            int(pulse_ids[pulse])
            if isinstance(pulse_ids, np.ndarray) and len(pulse_ids) > pulse
            else pulse
        )
        cid = (
            int(cell_ids[pulse])
            if isinstance(cell_ids, np.ndarray) and len(cell_ids) > pulse
            else pulse
        )
        rate = (
            (len(self.pushes) - 1) / (self.pushes[-1] - self.pushes[0])
            if len(self.pushes) > 2
            else 0.0
        )
        lat = f" · latency {frame.latency * 1e3:.0f} ms" if frame.latency is not None else ""
        auto = " auto" if values.get("preview.autoLevels") else ""
        frozen = " · <b>frozen</b>" if self.paused else ""
        self.status.text = (
            f"train <b class='pt-train-id'>{frame.train_id}</b> · pulse "
            f"<b class='pt-pulse'>{pulse}</b>/{n} (pulse ID {pid}, cell {cid}) · levels "
            f"{float(values.get('preview.vmin', 0)):.4g}–{float(values.get('preview.vmax', 0)):.4g}"
            f" {html.escape(str(values.get('preview.scale', '')))}{auto} · "
            f"{rate:.1f} updates/s{lat}{frozen}"
        )

    def on_poll(self) -> None:
        for editor in self.editors:
            editor.refresh()


class LinePanel(PanelBase):
    """One or more curves from a pipeline output (e.g. an azimuthal profile)."""

    def __init__(self, session: Page, panel: Panel):
        super().__init__(session, panel)
        self.tap = self.backend.tap(panel["source"])
        # A plot redraw costs the browser as much as an image: profiles default to 2 per second.
        self.limiter = RateLimiter(min(panel["update_rate"], session.scene.update_rate), 1.0)
        self.shown_seq = 0
        self.ys = panel["y"]
        self.source = ColumnDataSource(
            {"x": [], **{f"y{k}": [] for k in range(len(self.ys))}},
            name=f"line-source-{panel.index}",
        )
        self.fig = figure(
            width=self.width,
            height=self.height or 320,
            y_axis_type="log" if panel["log_y"] else "linear",
            x_axis_label=panel["x_label"] or panel["x"] or "index",
            y_axis_label=panel["y_label"] or ", ".join(panel["labels"]),
            tools="pan,wheel_zoom,box_zoom,reset,save,hover",
        )
        colours = palettes.Category10[10]
        for k, label in enumerate(panel["labels"]):
            self.fig.line(
                "x",
                f"y{k}",
                source=self.source,
                line_width=2,
                color=colours[k % 10],
                legend_label=label,
            )
        self.fig.legend.location = "top_right"
        self.status = Div(text="waiting for data ...", width=self.width)
        self.layout = self.wrap(self.fig, self.status)

    def _reduce(self, arr: np.ndarray) -> np.ndarray:
        arr = np.asarray(arr, dtype=float)
        if arr.ndim <= 1:
            return arr.reshape(-1)
        arr = arr.reshape(arr.shape[0], -1)
        row_ = self.panel["row"]
        if row_ == "mean":
            with np.errstate(all="ignore"):
                return np.nanmean(arr, axis=0) if np.isnan(arr).any() else arr.mean(axis=0)
        if row_ == "first":
            return arr[0]
        if row_ == "last":
            return arr[-1]
        return arr[min(int(row_), len(arr) - 1)]

    def on_tick(self, now: float) -> None:
        frame = self.tap.latest
        if frame is None or frame.seq == self.shown_seq or not self.limiter.take(now):
            return
        self.shown_seq = frame.seq
        found = _frame_source(frame, self.panel["data_source"], self.ys[0])
        if found is None:
            self.status.text = f"no key {html.escape(self.ys[0])} in {html.escape(self.tap.output)}"
            return
        _, values = found
        ys = [self._reduce(values[k]) if k in values else None for k in self.ys]
        n = max((len(y) for y in ys if y is not None), default=0)
        xkey = self.panel["x"]
        x = (
            np.asarray(values[xkey], dtype=float).reshape(-1)[:n]
            if xkey in values
            else np.arange(n, dtype=float)
        )
        data = {"x": x}
        for k, y in enumerate(ys):
            data[f"y{k}"] = y[: len(x)] if y is not None else np.full(len(x), np.nan)
        self.source.data = data
        self.status.text = f"train {frame.train_id}"


class TrendPanel(PanelBase):
    """Device properties over time (polled), optionally as a rate of change.

    A series with ``rate = true`` shows the change per second of a counter, averaged over
    :attr:`RATE_WINDOW` seconds (polls are not exactly periodic, so a difference of two
    consecutive polls would jitter).  Series get one y axis per unit (from the device schema,
    or the series' ``unit``): the first unit on the left, every other one on the right, each
    axis fitted to its own curves only — a hit probability of 2e-6 beside a rate of 10/s gets
    an axis of its own instead of a flat line.  ``axis = "left"`` / ``"right"`` forces a side.
    """

    #: Seconds over which a counter's rate is averaged.
    RATE_WINDOW = 2.0

    def __init__(self, session: Page, panel: Panel):
        super().__init__(session, panel)
        self.series = panel["series"]
        self.window = float(panel["window"])
        units = [self._unit(s) for s in self.series]
        self.axis_names = self._axes(units)
        self.fig = figure(
            width=self.width,
            height=self.height or 260,
            x_axis_type="datetime",
            y_range=Range1d(0, 1),
            tools="pan,wheel_zoom,box_zoom,reset,save,hover",
            name=f"trend-figure-{panel.index}",
        )
        labels: dict[str, str] = {}
        for name, unit in zip(self.axis_names, units):
            labels.setdefault(name, unit)
        self.fig.yaxis.axis_label = panel["y_label"] or labels.get("default", "")
        for name in dict.fromkeys(self.axis_names):
            if name != "default":
                self.fig.extra_y_ranges[name] = Range1d(0, 1)
                self.fig.add_layout(LinearAxis(y_range_name=name, axis_label=labels[name]), "right")
        colours = palettes.Category10[10]
        self.sources = []
        for k, s in enumerate(self.series):
            src = ColumnDataSource({"t": [], "y": []}, name=f"trend-{panel.index}-{k}")
            extra = {"y_range_name": self.axis_names[k]} if self.axis_names[k] != "default" else {}
            unit = f" [{units[k]}]" if units[k] and len(set(units)) > 1 else ""
            self.fig.line(
                "t",
                "y",
                source=src,
                line_width=2,
                color=colours[k % 10],
                legend_label=s["label"] + unit,
                **extra,
            )
            self.sources.append(src)
        self.fig.legend.location = "top_left"
        self.fig.legend.label_text_font_size = "11px"
        self.fig.legend.background_fill_alpha = 0.6
        self.last_t = [0.0] * len(self.series)
        self.rollover = int(self.window / max(0.05, self.backend.poll_interval)) + 10
        self.layout = self.wrap(self.fig)
        self.on_poll()

    def _unit(self, series: dict[str, Any]) -> str:
        """The unit of a series: given in the scene, else from the device schema (``/s`` added)."""
        unit = series.get("unit")
        if unit is None:
            schema = self.backend.schema(series["device"]) or {}
            entry = schema.get("properties", {}).get(series["key"], {})
            unit = entry.get("unit") or ""
        if series["rate"]:
            return f"{unit}/s" if unit else "1/s"
        return str(unit)

    def _axes(self, units: list[str]) -> list[str]:
        """The y range of each series: ``"default"`` (left) or one right axis per other unit."""
        sides = [s["axis"] for s in self.series]
        left = next((u for u, side in zip(units, sides) if side == "left"), None)
        if left is None:
            left = next((u for u, side in zip(units, sides) if side == "auto"), "")
        names = []
        for unit, side in zip(units, sides):
            if side == "left" or (side == "auto" and unit == left):
                names.append("default")
            else:
                names.append(f"unit:{unit}")
        return names

    def _fit(self) -> None:
        """Fit every y axis to its own curves over the window (a flat curve gets ±5 %)."""
        groups: dict[str, list[np.ndarray]] = {}
        for name, src in zip(self.axis_names, self.sources):
            y = np.asarray(src.data["y"], dtype=float)
            groups.setdefault(name, []).append(y[np.isfinite(y)])
        for name, parts in groups.items():
            y = np.concatenate(parts) if parts else np.empty(0)
            if not y.size:
                continue
            start, end = axis_limits(float(y.min()), float(y.max()))
            rng = self.fig.y_range if name == "default" else self.fig.extra_y_ranges[name]
            if (rng.start, rng.end) != (start, end):
                rng.update(start=start, end=end)

    @classmethod
    def rates(cls, t: np.ndarray, y: np.ndarray, since: float) -> tuple[np.ndarray, np.ndarray]:
        """Change per second of ``y`` at each ``t > since``, over the preceding RATE_WINDOW s."""
        keep = t > since
        start = np.searchsorted(t, t - cls.RATE_WINDOW, side="left")
        dt = t - t[start]
        with np.errstate(all="ignore"):
            rate = np.where(dt > 0, (y - y[start]) / np.where(dt > 0, dt, 1.0), np.nan)
        return t[keep], rate[keep]

    def on_poll(self) -> None:
        now = time.time()
        for k, s in enumerate(self.series):
            since = max(self.last_t[k], now - self.window)
            lookback = self.RATE_WINDOW + 1.0 if s["rate"] else 0.0
            t, y = self.backend.history(s["device"], s["key"], since - lookback)
            if not len(t) or t[-1] <= since:
                continue
            self.last_t[k] = float(t[-1])
            if s["rate"]:
                t, y = self.rates(t, y, since)
            else:
                keep = t > since
                t, y = t[keep], y[keep]
            self.sources[k].stream({"t": t * 1000.0, "y": y}, rollover=self.rollover)
        self._fit()


def axis_limits(lo: float, hi: float) -> tuple[float, float]:
    """Axis limits showing values from ``lo`` to ``hi``: 5 % margins; a flat curve ±5 % of it.

    A constant 2.2e-6 gets (2.09e-6, 2.31e-6), not Bokeh's default span of −1..1 around it.
    """
    span = hi - lo
    if span <= 1e-12 * max(abs(lo), abs(hi)) or span == 0.0:
        half = 0.05 * abs(hi) if hi != 0.0 else 1.0
        return lo - half, hi + half
    return lo - 0.05 * span, hi + 0.05 * span


class CountersPanel(PanelBase):
    """Trains in and out, rates, drops and latency of every device — and of the GUI's taps."""

    default_width = 900

    COLUMNS = (
        "device",
        "state",
        "restarts",
        "in",
        "in/s",
        "missed",
        "out",
        "out/s",
        "dropped",
        "latency p50",
        "latency p99",
    )

    def __init__(self, session: Page, panel: Panel):
        super().__init__(session, panel)
        self.devices = [d["id"] for d in panel["devices"]] or list(self.backend.device_ids)
        self.table = Div(
            text="", width=self.width, name=f"counters-{panel.index}", css_classes=["pt-counters"]
        )
        self.layout = self.wrap(self.table)
        self.on_poll()

    def _rate(self, device: str, key: str) -> float | None:
        t, y = self.backend.history(device, key, time.time() - 5.0)
        if len(t) < 2 or t[-1] <= t[0]:
            return None
        return float((y[-1] - y[0]) / (t[-1] - t[0]))

    def rows(self) -> list[dict[str, Any]]:
        """The table's rows as plain values (also used by tests)."""
        rows = []
        for d in self.devices:
            snap = self.backend.snapshot(d) or {}
            channels = snap.get("channels") or {}
            missed = sum(int(i.get("missed", 0)) for i in channels.get("inputs", {}).values())
            dropped = sum(int(o.get("dropped", 0)) for o in channels.get("outputs", {}).values())
            lat = snap.get("outputLatency") if isinstance(snap.get("outputLatency"), dict) else {}
            p50 = lat.get("p50") if lat else snap.get("latency")
            p99 = lat.get("p99") if lat else None
            restarts, cause = self.backend.restarts(d)
            rows.append(
                {
                    "device": d,
                    "state": snap.get("state", "UNKNOWN"),
                    "status": snap.get("status", ""),
                    "stalled": bool(snap.get("stalled")),
                    "restarts": restarts,
                    "restart cause": cause,
                    "in": snap.get("trainsIn"),
                    "in/s": self._rate(d, "trainsIn"),
                    "missed": missed,
                    "out": snap.get("trainsOut"),
                    "out/s": self._rate(d, "trainsOut"),
                    "dropped": dropped,
                    "latency p50": p50,
                    "latency p99": p99,
                }
            )
        for name, tap in sorted(self.backend.taps.items()):
            lat = tap.latency_percentiles()
            rows.append(
                {
                    "device": f"GUI ← {name}",
                    "state": "MONITORING",
                    "status": "",
                    "stalled": False,
                    "restarts": None,
                    "restart cause": None,
                    "in": tap.received,
                    "in/s": None,
                    "missed": tap.missed,
                    "out": None,
                    "out/s": None,
                    "dropped": None,
                    "latency p50": lat.get("p50"),
                    "latency p99": lat.get("p99"),
                }
            )
        return rows

    def on_poll(self) -> None:
        def cell(key: str, v: Any, row: dict[str, Any]) -> str:
            if v is None:
                return "–"
            if key == "state":  # a stalled device: the state, marked, its status on hover
                mark = " <b style='color:#d97c00'>stalled</b>" if row["stalled"] else ""
                title = html.escape(str(row["status"] or ""), quote=True)
                return f"<span title='{title}'>{_state_html(v)}{mark}</span>"
            if key == "restarts" and v:
                title = html.escape(f"last: {row['restart cause']}", quote=True)
                return f"<b title='{title}' style='color:#d97c00'>{int(v)}</b>"
            if key.startswith("latency"):
                return f"{float(v) * 1e3:.1f} ms"
            if key.endswith("/s"):
                return f"{float(v):.1f}"
            return html.escape(str(v))

        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{cell(c, r[c], r)}</td>" for c in self.COLUMNS) + "</tr>"
            for r in self.rows()
        )
        self.table.text = (
            f"<table class='pt-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )


class DevicePanel(PanelBase):
    """Devices with their state, properties (reconfigurable ones editable) and slot buttons."""

    default_width = 620

    def __init__(self, session: Page, panel: Panel):
        super().__init__(session, panel)
        entries = panel["devices"] or [{"id": d, "properties": []} for d in self.backend.device_ids]
        self.cards: list[dict[str, Any]] = []
        tabs = []
        for entry in entries:
            device = entry["id"]
            wanted = entry["properties"] or panel["properties"]
            card = self._card(device, wanted)
            self.cards.append(card)
            cls = self.backend.devices().get(device, {}).get("class", "not running")
            tabs.append(
                TabPanel(
                    child=card["layout"],
                    title=short_device(device),
                    tooltip=Tooltip(content=f"{device} ({cls})", position="bottom"),
                )
            )
        content: Any = (
            Tabs(tabs=tabs, width=self.width)
            if len(tabs) > 1
            else (tabs[0].child if tabs else Div(text="no devices"))
        )
        self.layout = self.wrap(content)
        self.on_poll()

    def _card(self, device: str, wanted: list[str]) -> dict[str, Any]:
        head = Div(
            text="",
            width=self.width - 20,
            css_classes=["pt-device-head"],
            name=f"device-head:{device}",
        )
        schema = self.backend.schema(device)
        if device not in self.backend.devices() or schema is None:
            head.text = (
                f"<span style='color:#c01c28'>{html.escape(device)}: not in the "
                "running topology</span>"
                if device not in self.backend.devices()
                else f"{html.escape(device)}: unreachable"
            )
            # a card without a table: on_poll leaves it alone
            return {
                "device": device,
                "head": head,
                "editors": [],
                "table": None,
                "readonly": [],
                "layout": column(head),
            }
        props = schema.get("properties", {})
        keys = [k for k in (wanted or props) if k in props and k not in ("state", "status")]
        editors = [
            PropertyEditor(self.session, device, k, props[k])
            for k in keys
            if props[k].get("access") == "reconfigurable"
        ]
        readonly = [
            (k, props[k].get("unit") or "")
            for k in keys
            if props[k].get("access") != "reconfigurable"
        ]
        buttons = []
        for slot_name, info in sorted(schema.get("slots", {}).items()):
            button = Button(
                label=slot_name,
                width=130,
                disabled=not self.session.can_edit,
                name=f"slot:{device}:{slot_name}",
                css_classes=["pt-slot", f"pt-slot-{css_name(device)}-{slot_name}"],
            )
            button.on_click(self._slot_callback(device, slot_name))
            self.session.add_editor(button)
            buttons.append(button)
        table = Div(text="", width=self.width - 20, css_classes=["pt-readonly"])
        grid = [row(*editors_row) for editors_row in _chunks([e.widget for e in editors], 4)]
        parts: list[Any] = [head, *grid]
        if buttons:
            parts += [row(*b) for b in _chunks(buttons, 4)]
        parts.append(table)
        return {
            "device": device,
            "head": head,
            "editors": editors,
            "table": table,
            "readonly": readonly,
            "layout": column(*parts),
        }

    def _slot_callback(self, device: str, slot_name: str) -> Callable[[Any], None]:
        def click(event: Any = None) -> None:
            self.session.request_call(device, slot_name)

        return click

    def on_poll(self) -> None:
        for card in self.cards:
            device = card["device"]
            snap = self.backend.snapshot(device)
            if card["table"] is None or snap is None:
                continue
            status = html.escape(str(snap.get("status", "")))
            card["head"].text = (
                f"<b>{html.escape(device)}</b> "
                f"({html.escape(self.backend.devices()[device]['class'])}) — "
                f"{_state_html(snap.get('state'))} <i>{status}</i>"
            )
            rows = "".join(
                f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(lookup(snap, k)))}</td>"
                f"<td>{html.escape(u)}</td></tr>"
                for k, u in card["readonly"]
            )
            card["table"].text = f"<table class='pt-table'>{rows}</table>" if rows else ""
            for editor in card["editors"]:
                editor.refresh()


def _chunks(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def build_panel(session: Page, panel: Panel) -> PanelBase:
    """Build the Bokeh panel for a scene panel (an error panel if it cannot be built)."""
    try:
        if panel.type == "detector_image":
            output = panel["source"] or session.preview_output
            if not output:
                raise ConfigurationError(
                    "no preview output: give 'source' in the scene, "
                    "--preview-output, or run a PreviewAssembler"
                )
            return DetectorImagePanel(session, panel, output)
        if panel.type == "line":
            return LinePanel(session, panel)
        if panel.type == "trend":
            return TrendPanel(session, panel)
        if panel.type == "counters":
            return CountersPanel(session, panel)
        if panel.type == "device_panel":
            return DevicePanel(session, panel)
    except PulsetrainError as exc:
        log.warning("panel %d (%s): %s", panel.index, panel.type, exc)
        return ErrorPanel(session, panel, str(exc))
    raise ConfigurationError(f"unknown panel type {panel.type!r}")  # pragma: no cover
