"""The detector image panel: the assembled preview with a pulse slider, physical axes, the beam
centre and q rings, a hover read-out in data units, ROIs drawn with the mouse, the average /
dark-subtracted image and Save buttons.

Coordinates: the figure's data coordinates are always **full-resolution assembled-image pixels**
(column to the right, row downwards: the coordinates of the ROI devices, see
``docs/analysis-devices.md``), whatever the preview's binning.  The "mm" axes only relabel the
ticks (placed at round millimetres from the beam, y up); so a rectangle drawn with the mouse is
an ROI without conversion, and the beam centre and q rings come from the preview output's keys.
Nothing here computes on detector data: the pipeline's devices did, the panel only draws.
"""

from __future__ import annotations

import html
import json
import logging
import math
import time
from typing import Any

import numpy as np
from bokeh import palettes
from bokeh.layouts import row
from bokeh.models import (
    BasicTicker,
    BoxEditTool,
    Button,
    ColorBar,
    ColumnDataSource,
    CustomJSHover,
    CustomJSTickFormatter,
    Div,
    FixedTicker,
    HoverTool,
    LinearColorMapper,
    LogColorMapper,
    Range1d,
    Select,
    Slider,
    TextInput,
    Toggle,
)
from bokeh.plotting import figure

from pulsetrain.errors import ConfigurationError, PulsetrainError
from pulsetrain.gui.backend import TapFrame
from pulsetrain.gui.base import Page, PanelBase, PropertyEditor, RateLimiter, frame_source
from pulsetrain.gui.export import frame_hdf5, frame_png
from pulsetrain.gui.imagestream import lookup_table
from pulsetrain.gui.scene import Panel

__all__ = ["DetectorImagePanel", "rect_from_box"]

log = logging.getLogger(__name__)

#: Preview-device properties offered under a detector image (when the device has them).
IMAGE_CONTROLS = ("vmin", "vmax", "auto_levels", "scale", "downsample", "max_pulses")

#: Colour of image pixels where no detector pixel is (level 0 of a preview image).
GAP_COLOUR = "#d0d0d0"

#: Edge of one detector pixel (AGIPD), mm: what the "mm" axes use when the output says nothing.
DETECTOR_PIXEL_MM = 0.2

#: Seconds without an acknowledgement from the browser after which images are sent anyway.
ACK_TIMEOUT = 2.0

#: Rectangles an ROI device has (``roi1`` .. ``roi4``) and their colours.
ROI_COLOURS = ("#e6194b", "#f58231", "#ffe119", "#3cb44b")

#: What the image shows: the live pulse, or the image of the ImageAverage device in one mode.
VIEWS = ("pulse", "average", "last", "difference")

# The hover read-out: the detector pixel under the mouse from the preview's pixel map
# (module * 65536 + ss * 128 + fs of the block's first pixel, -1 in gaps).
_PIXEL_JS = """
const m = map.data.pixel;
if (!m || m.length == 0 || !m[0]) { return 'unknown (no pixel map)'; }
const idx = special_vars.image_index;
if (idx == null) { return ''; }
const v = m[0][idx.flat_index];
if (v == null || v < 0) { return 'gap (no detector pixel)'; }
const module = Math.floor(v / 65536), rest = v % 65536;
const ss = Math.floor(rest / 128), fs = rest % 128;
const asic = Math.floor(ss / 64) * 2 + Math.floor(fs / 64);
return 'module ' + module + ', ASIC ' + asic + ', pixel (ss ' + ss + ', fs ' + fs + ')';
"""

# The value under the mouse (from the image on the canvas, ``window.pulsetrain.images``):
# exact when the image came with values, else the range of its colour level.
_VALUE_JS = """
const d = ((window.pulsetrain || {}).images || {})[key];
const idx = special_vars.image_index;
if (!d || idx == null || idx.flat_index >= d.levels.length) { return ''; }
const unit = d.unit || '';
if (d.values) {
  const v = d.values[idx.flat_index];
  return (Number.isFinite(v) ? v.toPrecision(4) : 'no pixel') + ' ' + unit;
}
const L = d.levels[idx.flat_index];
if (L == 0) { return 'no detector pixel'; }
const lo = d.vmin, hi = d.vmax, log = d.scale == 'log';
const step = log ? (Math.log(hi) - Math.log(lo)) / 255 : (hi - lo) / 255;
const f = (x) => log ? Math.exp(Math.log(lo) + x * step) : lo + x * step;
return f(L - 0.5).toPrecision(3) + ' .. ' + f(L + 0.5).toPrecision(3) + ' ' + unit;
"""

# Train and pulse of the image under the mouse.
_TRAIN_JS = """
const d = ((window.pulsetrain || {}).images || {})[key];
if (!d) { return ''; }
if (d.kind != 'pulse') { return d.kind + ' up to train ' + d.train; }
return d.train + ', ' + d.pulse + ' (pulse ID ' + d.pulse_id + ')';
"""

# Position under the mouse, in pixels and mm from the beam (y up).
_POSITION_JS = """
const x = special_vars.x, y = special_vars.y;
const g = geo.data;
const p = g.pixel_mm[0], bx = g.beam_x[0], by = g.beam_y[0];
return 'x ' + x.toFixed(0) + ', y ' + y.toFixed(0) + ' px = ' + ((x - bx) * p).toFixed(1) +
  ', ' + ((by - y) * p).toFixed(1) + ' mm from the beam';
"""


def rect_from_box(x: float, y: float, width: float, height: float, shape: tuple[int, int]) -> list:
    """An ROI ``[x, y, w, h]`` (integer full-resolution pixels inside ``shape``) from a box.

    Parameters
    ----------
    x, y : float
        The box centre (Bokeh's rectangle glyph), full-resolution pixels.
    width, height : float
        Its size (may be negative when drawn leftwards or upwards).
    shape : (int, int)
        (height, width) of the full-resolution image.

    Returns
    -------
    list of int
        ``[x, y, w, h]`` clipped to the image; ``[0, 0, 0, 0]`` if nothing is left.
    """
    h_img, w_img = int(shape[0]), int(shape[1])
    x0, x1 = sorted((x - abs(width) / 2.0, x + abs(width) / 2.0))
    y0, y1 = sorted((y - abs(height) / 2.0, y + abs(height) / 2.0))
    c0, c1 = max(0, round(x0)), min(w_img, round(x1))
    r0, r1 = max(0, round(y0)), min(h_img, round(y1))
    if c1 <= c0 or r1 <= r0:
        return [0, 0, 0, 0]
    return [int(c0), int(r0), int(c1 - c0), int(r1 - r0)]


def _nice_step(span: float, ticks: int = 6) -> float:
    raw = span / max(1, ticks)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


class DetectorImagePanel(PanelBase):
    """The assembled detector preview with physical axes, hover, ROIs, average view and Save."""

    default_width = 620

    def __init__(self, session: Page, panel: Panel, output: str):
        super().__init__(session, panel)
        self.output = output
        self.device = output.rsplit(":", 1)[0]
        self.tap = self.backend.tap(output)
        self.limiter = RateLimiter(session.scene.update_rate)
        self.avg_limiter = RateLimiter(min(2.0, session.scene.update_rate), 1.0)
        self.pulse = 0
        self.paused = False
        self.frozen: TapFrame | None = None
        self.shown: tuple[int, int, str] | None = None  # (seq, pulse, view)
        self.shape = (1, 1)
        self.full_shape = (1, 1)
        self.factor = 1
        self.n_pulses = 0
        self.pushes: list[float] = []
        self.status_time = 0.0
        self.sent = self.acked = 0
        self.sent_at = self.acked_at = 0.0
        self.geometry: dict[str, Any] = {}
        self.geometry_key: tuple | None = None
        self.map_version: Any = None
        self.displayed: dict[str, Any] | None = None
        self.shown_frame: TapFrame | None = None  # the train of the image on the page
        self.roi_device = panel["roi_device"]
        self.average_device = panel["average_device"]
        self.avg_tap = (
            self.backend.tap(f"{self.average_device}:output") if self.average_device else None
        )
        self.view = "pulse"
        self.palette = list(getattr(palettes, panel["palette"]))
        self.source = self._image_source()
        self._open_channel()
        self.geo_source = ColumnDataSource(
            {"pixel_mm": [DETECTOR_PIXEL_MM], "beam_x": [0.0], "beam_y": [0.0]},
            name=f"image-geometry-{panel.index}",
        )
        self.map_source = ColumnDataSource({"pixel": []}, name=f"image-pixelmap-{panel.index}")
        self.fig = self._image_figure()
        self.bar_fig = self._colour_bar()
        self.slider, self.pause = self._pulse_controls()
        self.status = Div(
            text="waiting for the first train ...",
            width=self.width,
            height=40,
            name=f"image-status-{panel.index}",
            css_classes=["pt-image-status"],
        )
        # Controls above the image, the status line right under it: at 1280 x 800 everything
        # one works with during a shift is visible without scrolling.
        children: list[Any] = [
            row(self.slider, self.pause),
            self._view_controls(),
            row(self.fig, self.bar_fig),
            self.status,
        ]
        if self.roi_device:
            children.append(self._roi_controls())
        self.editors = self._property_editors() if panel["controls"] else []
        if self.editors:
            children.append(row(*[e.widget for e in self.editors]))
        self.layout = self.wrap(*children)

    # ------------------------------------------------------------ building
    def _image_source(self) -> ColumnDataSource:
        """The figure's stand-in for the image: an invisible, all-zero image of the shown image's
        shape, so that BokehJS's hover finds the pixel under the mouse.  The pixels themselves
        go on the panel's own WebSocket (:mod:`pulsetrain.gui.imagestream`)."""
        return ColumnDataSource(
            {"image": [np.zeros((1, 1), dtype=np.uint8)], "dw": [1], "dh": [1]},
            name=f"image-source-{self.panel.index}",
        )

    def _open_channel(self) -> None:
        i = self.panel.index
        self.key = f"image-{i}"
        self.channel = self.session.open_image_channel(
            self.key,
            figure=f"image-figure-{i}",
            colours=lookup_table(self.palette, GAP_COLOUR),
            on_connect=self._connected,
            on_ack=self._acked,
            index=i,
            size=(self.width - 110, self.width - 110),
        )

    def _connected(self) -> None:
        """A page (re)connected its image WebSocket: send it the current image at once."""
        self.sent = self.acked = 0
        self.acked_at = 0.0
        self.shown = None
        self.session.run_on_page(lambda: self.on_tick(time.monotonic()))

    def _acked(self, n: int) -> None:
        self.acked = max(self.acked, n)
        self.acked_at = time.monotonic()

    def _may_push(self, now: float) -> bool:
        """Whether the browser took the images sent so far (at most two in flight).

        Each image carries its number (``push``), which the page sends back once it has drawn
        it.  Nothing goes before the page has connected; after :data:`ACK_TIMEOUT` seconds
        without an answer, images go at the normal rate again.
        """
        if not self.channel.connected:
            return False
        if self.sent - self.acked < 2:
            return True
        return now - max(self.acked_at, self.sent_at) > ACK_TIMEOUT

    def browser_behind(self, now: float) -> bool:
        return self.channel.connected and not self._may_push(now)

    def _image_figure(self) -> Any:
        """The figure: the image, the beam centre, q rings, ROI boxes; hover read-out."""
        i = self.panel.index
        self.mapper = LinearColorMapper(palette=[GAP_COLOUR, *self.palette[1:]], low=0, high=255)
        tools = "pan,wheel_zoom,box_zoom,reset"
        fig = figure(
            frame_width=self.width - 110,
            frame_height=self.width - 110,
            x_range=Range1d(0, 1),
            y_range=Range1d(1, 0),  # row 0 at the top
            tools=tools,
            toolbar_location="above",
            name=f"image-figure-{i}",
            min_border_left=50,
        )
        fig.grid.visible = False
        fig.background_fill_alpha = 0  # the image is drawn under the frame (imagestream)
        fig.xaxis.axis_label_standoff = 2
        fig.yaxis.axis_label_standoff = 2
        self.renderer = fig.image(
            image="image",
            x=0,
            y=0,
            dw="dw",
            dh="dh",
            source=self.source,
            color_mapper=self.mapper,
            global_alpha=0,  # only for the hover: the pixels are on the canvas underneath
        )
        self.beam_source = ColumnDataSource({"x": [], "y": []}, name=f"image-beam-{i}")
        fig.scatter(
            "x", "y", source=self.beam_source, marker="cross", size=16, line_width=2, color="red"
        )
        self.ring_source = ColumnDataSource(
            {"x": [], "y": [], "r": [], "lx": [], "ly": [], "label": []}, name=f"image-rings-{i}"
        )
        fig.circle(
            "x",
            "y",
            radius="r",
            source=self.ring_source,
            fill_alpha=0,
            line_color="white",
            line_alpha=0.8,
            line_dash="dashed",
        )
        fig.text(
            "lx",
            "ly",
            text="label",
            source=self.ring_source,
            text_color="white",
            text_font_size="10px",
        )
        if self.roi_device:
            self.roi_source = ColumnDataSource(
                {"x": [], "y": [], "width": [], "height": [], "colour": [], "label": []},
                name=f"image-rois-{i}",
            )
            boxes = fig.rect(
                "x",
                "y",
                "width",
                "height",
                source=self.roi_source,
                fill_alpha=0.1,
                fill_color="colour",
                line_color="colour",
                line_width=2,
            )
            fig.text(
                "x",
                "y",
                text="label",
                source=self.roi_source,
                text_color="colour",
                text_font_size="11px",
                text_align="center",
                text_baseline="middle",
            )
            self.box_tool = BoxEditTool(
                renderers=[boxes], num_objects=4, description="draw ROIs (shift + drag)"
            )
            fig.add_tools(self.box_tool)
            fig.toolbar.active_drag = self.box_tool
            self.roi_source.on_change("data", self._boxes_changed)
            self.rois_shown: list[list[int]] = [[0, 0, 0, 0]] * 4
        self.value_hover = CustomJSHover(args={"key": f"image-{i}"}, code=_VALUE_JS)
        fig.add_tools(
            HoverTool(
                renderers=[self.renderer],
                tooltips=[
                    ("value", "@image{custom}"),
                    ("detector", "$y{custom}"),
                    ("position", "$x{custom}"),
                    ("train, pulse", "$index{custom}"),
                ],
                formatters={
                    "@image": self.value_hover,
                    "$y": CustomJSHover(args={"map": self.map_source}, code=_PIXEL_JS),
                    "$x": CustomJSHover(args={"geo": self.geo_source}, code=_POSITION_JS),
                    "$index": CustomJSHover(args={"key": f"image-{i}"}, code=_TRAIN_JS),
                },
            )
        )
        self.fig = fig
        self._set_axes(self.panel["axes"])
        return fig

    def _colour_bar(self) -> Any:
        """The colour bar, in a figure of its own refreshed with the status line.

        Drawn in the image's figure it would be redrawn with every image (about 40 % of the
        browser's work for this panel at 10 Hz, measured).
        """
        self.bar_mapper: LinearColorMapper | LogColorMapper = LinearColorMapper(
            palette=self.palette, low=0, high=1
        )
        self.bar = ColorBar(color_mapper=self.bar_mapper, width=12, title="value", location=(0, 0))
        bar_fig = figure(
            x_range=Range1d(0, 1),  # fixed ranges: an empty figure cannot fit data ranges,
            y_range=Range1d(0, 1),  # and BokehJS would warn at every layout
            frame_width=1,
            frame_height=self.width - 110,
            width=80,
            toolbar_location=None,
            min_border_top=36,
            outline_line_color=None,
            name=f"image-colourbar-{self.panel.index}",
        )
        bar_fig.axis.visible = False
        bar_fig.grid.visible = False
        bar_fig.scatter([0.5], [0.5], alpha=0)  # a figure needs a renderer
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

    def _view_controls(self) -> Any:
        """Axes unit, what to show (pulse / average ...), record dark, Save."""
        i = self.panel.index
        self.axes_select = Select(
            title="axes",
            options=[("mm", "mm from the beam"), ("px", "pixels")],
            value=self.panel["axes"],
            width=130,
            name=f"axes-{i}",
            css_classes=["pt-axes"],
        )
        self.axes_select.on_change("value", lambda a, o, n: self._set_axes(n))
        parts: list[Any] = [self.axes_select]
        if self.average_device:
            self.view_select = Select(
                title="show",
                options=list(VIEWS),
                value="pulse",
                width=110,
                name=f"view-{i}",
                css_classes=["pt-view"],
            )
            self.view_select.on_change("value", self._view_changed)
            self.dark_button = Button(
                label="record dark",
                width=105,
                name=f"record-dark-{i}",
                css_classes=["pt-record-dark"],
                disabled=not self.session.can_edit,
            )
            self.dark_button.on_click(
                lambda event=None: self.session.request_call(self.average_device, "recordDark")
            )
            self.session.add_editor(self.dark_button)
            parts += [self.view_select, self.dark_button]
        if self.panel["save"]:
            self.save_h5 = Button(
                label="HDF5", width=60, name=f"save-h5-{i}", css_classes=["pt-save-h5"]
            )
            self.save_h5.on_click(lambda event=None: self.save("h5"))
            self.save_png = Button(
                label="PNG", width=55, name=f"save-png-{i}", css_classes=["pt-save-png"]
            )
            self.save_png.on_click(lambda event=None: self.save("png"))
            parts += [
                Div(text="save:", width=38, styles={"margin-top": "26px"}),
                self.save_h5,
                self.save_png,
            ]
        return row(*parts, css_classes=["pt-image-controls"])

    def _roi_controls(self) -> Any:
        """The four ROIs as numbers ``x, y, w, h`` (full-resolution pixels; empty: off)."""
        self.roi_inputs = []
        for k in range(4):
            box = TextInput(
                title=f"ROI {k + 1}: x, y, w, h",
                value="",
                width=(self.width - 30) // 4,
                name=f"roi-{self.panel.index}-{k + 1}",
                css_classes=["pt-roi-input", f"pt-roi-{k + 1}"],
                disabled=not self.session.can_edit,
            )
            box.on_change("value", self._roi_typed(k))
            self.session.add_editor(box)
            self.roi_inputs.append(box)
        return row(*self.roi_inputs)

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

    def devices(self) -> set[str]:
        """The devices this panel reads or changes."""
        return {d for d in (self.device, self.roi_device, self.average_device) if d}

    # ------------------------------------------------------------ axes and geometry
    def _set_axes(self, unit: str) -> None:
        """Label the axes in mm from the beam (y up) or in full-resolution pixels."""
        g = self.geometry
        if unit == "mm" and g:
            pix = g["pixel_mm"]
            bx, by = g["beam_x"], g["beam_y"]
            h, w = self.full_shape
            step = _nice_step(max(w, h) * pix)
            xs = np.arange(math.ceil(-bx * pix / step), math.floor((w - bx) * pix / step) + 1)
            ys = np.arange(math.ceil((by - h) * pix / step), math.floor(by * pix / step) + 1)
            self.fig.xaxis.ticker = FixedTicker(ticks=list(bx + xs * step / pix))
            self.fig.yaxis.ticker = FixedTicker(ticks=list(by - ys * step / pix))
            self.fig.xaxis.formatter = CustomJSTickFormatter(
                args={"b": bx, "p": pix}, code="return ((tick - b) * p).toFixed(0);"
            )
            self.fig.yaxis.formatter = CustomJSTickFormatter(
                args={"b": by, "p": pix}, code="return ((b - tick) * p).toFixed(0);"
            )
            self.fig.xaxis.axis_label = "x [mm]"
            self.fig.yaxis.axis_label = "y [mm]"
        else:
            self.fig.xaxis.ticker = BasicTicker()
            self.fig.yaxis.ticker = BasicTicker()
            self.fig.xaxis.formatter = CustomJSTickFormatter(code="return tick.toFixed(0);")
            self.fig.yaxis.formatter = CustomJSTickFormatter(code="return tick.toFixed(0);")
            self.fig.xaxis.axis_label = "x [pixel]"
            self.fig.yaxis.axis_label = "y [pixel]"

    def _update_geometry(self, values: dict, h: int, w: int) -> None:
        """Beam centre, q rings, axes and the pixel map when the preview's geometry changed."""
        factor = int(values.get("preview.downsample", 1) or 1)
        full = values.get("preview.fullShape")
        full_shape = (int(full[0]), int(full[1])) if full is not None else (h * factor, w * factor)
        pixel_mm = float(values.get("preview.pixelSize", DETECTOR_PIXEL_MM * factor)) / factor
        bc = values.get("preview.beamCentre")
        beam_y, beam_x = (
            (float(bc[0]) * factor, float(bc[1]) * factor) if bc is not None else (0, 0)
        )
        radii = np.asarray(values.get("preview.qRingRadiiPx", []), dtype=float) * factor
        rings = np.asarray(values.get("preview.qRings", []), dtype=float)
        key = (h, w, factor, full_shape, pixel_mm, beam_x, beam_y, tuple(radii), tuple(rings))
        if key == self.geometry_key:
            return
        self.geometry_key = key
        self.factor, self.full_shape = factor, full_shape
        self.geometry = {
            "pixel_mm": pixel_mm,
            "beam_x": beam_x,
            "beam_y": beam_y,
            "downsample": factor,
            "full_shape": list(full_shape),
            "preview_shape": [h, w],
            "distance_m": values.get("preview.distance"),
            "photon_energy_keV": values.get("preview.photonEnergy"),
            "q_rings_per_A": rings.tolist(),
            "extent_mm": np.asarray(values.get("preview.extentMm", [])).tolist(),
        }
        self.geo_source.data = {"pixel_mm": [pixel_mm], "beam_x": [beam_x], "beam_y": [beam_y]}
        if bc is not None:
            self.beam_source.data = {"x": [beam_x], "y": [beam_y]}
        ok = np.isfinite(radii) & (radii > 0)
        diag = 0.7071
        self.ring_source.data = {
            "x": [beam_x] * int(ok.sum()),
            "y": [beam_y] * int(ok.sum()),
            "r": radii[ok].tolist(),
            "lx": (beam_x + diag * radii[ok]).tolist(),
            "ly": (beam_y - diag * radii[ok]).tolist(),
            "label": [f"q = {q:g} Å⁻¹" for q in rings[ok]],
        }
        self._set_axes(self.axes_select.value)

    def _fetch_pixel_map(self, version: Any) -> None:
        """Fetch the preview's ``pixelMap`` (once per geometry version) for the hover read-out."""
        self.map_version = version
        future = self.backend.submit(self.backend.fetch, self.device, "pixelMap")

        def done(fut: Any) -> None:
            try:
                pixel_map = np.asarray(fut.result(), dtype=np.int32)
            except (PulsetrainError, TimeoutError, ValueError, TypeError) as exc:
                log.debug("pixel map of %s: %s", self.device, exc)
                return
            if pixel_map.ndim == 2:
                self.session.run_on_page(lambda: self.map_source.data.update(pixel=[pixel_map]))

        future.add_done_callback(done)

    # ------------------------------------------------------------ interaction
    def _pulse_changed(self, attr: str, old: Any, new: Any) -> None:
        if self.session.updating:
            return
        self.pulse = int(new)
        self.status_time = 0.0
        frame = self.frozen if self.paused else self.tap.latest
        if frame is not None and self.view == "pulse":
            self.show(frame)

    def _pause_changed(self, attr: str, old: Any, new: Any) -> None:
        self.paused = bool(new)
        self.pause.label = "frozen" if self.paused else "freeze"
        # freeze what the page shows (the tap may hold a newer train the page has not got yet)
        if self.view == "pulse":
            self.frozen = (self.shown_frame or self.tap.latest) if self.paused else None
            if self.frozen is not None:
                self.show(self.frozen)
        else:
            latest = self.avg_tap.latest if self.avg_tap else None
            self.frozen = (self.shown_frame or latest) if self.paused else None
            if self.frozen is not None:
                self.show_average(self.frozen)

    def _view_changed(self, attr: str, old: Any, new: Any) -> None:
        if self.session.updating:
            return
        self.view = str(new)
        self.frozen = self.shown_frame = None
        self.shown = None
        self.status_time = 0.0
        if self.view != "pulse":
            current = self.backend.value(self.average_device, "mode")
            if current != self.view:
                self.session.request_set(self.average_device, "mode", self.view)

    def _boxes_changed(self, attr: str, old: Any, new: Any) -> None:
        """Rectangles drawn, moved or deleted with the mouse → the ROI device's roi1..roi4."""
        if self.session.updating:
            return
        data = self.roi_source.data
        n = len(data["x"])
        rects = [
            rect_from_box(
                data["x"][k], data["y"][k], data["width"][k], data["height"][k], self.full_shape
            )
            for k in range(min(n, 4))
        ]
        rects += [[0, 0, 0, 0]] * (4 - len(rects))
        for k, rect in enumerate(rects):
            if rect != self.rois_shown[k]:
                self.session.request_set(self.roi_device, f"roi{k + 1}", rect)
        self.rois_shown = rects
        self._show_rois(rects, boxes=False)

    def _roi_typed(self, k: int) -> Any:
        def changed(attr: str, old: Any, new: Any) -> None:
            if self.session.updating:
                return
            text = str(new).strip()
            try:
                rect = (
                    [round(float(v)) for v in text.replace(";", ",").split(",")]
                    if text
                    else [0, 0, 0, 0]
                )
                if len(rect) != 4:
                    raise ValueError
            except ValueError:
                self.session.message(
                    f"ROI {k + 1}: give x, y, w, h (pixels), not {text!r}", error=True
                )
                return
            self.session.request_set(self.roi_device, f"roi{k + 1}", rect)

        return changed

    def _show_rois(self, rects: list[list[int]], boxes: bool = True) -> None:
        """Show the ROI device's rectangles as boxes and numbers."""
        with self.session.programmatic():
            on = [(k, r) for k, r in enumerate(rects) if r[2] > 0 and r[3] > 0]
            if boxes:
                self.roi_source.data = {
                    "x": [r[0] + r[2] / 2 for _, r in on],
                    "y": [r[1] + r[3] / 2 for _, r in on],
                    "width": [r[2] for _, r in on],
                    "height": [r[3] for _, r in on],
                    "colour": [ROI_COLOURS[k] for k, _ in on],
                    "label": [f"{k + 1}" for k, _ in on],
                }
            for k, r in enumerate(rects):
                text = ", ".join(str(v) for v in r) if r[2] > 0 and r[3] > 0 else ""
                if self.roi_inputs[k].value != text:
                    self.roi_inputs[k].value = text

    # ------------------------------------------------------------ pushing
    def on_tick(self, now: float) -> None:
        if self.view != "pulse":
            frame = self.frozen if self.paused else (self.avg_tap.latest if self.avg_tap else None)
            if frame is None or (
                self.shown and self.shown[0] == frame.seq and self.shown[2] == self.view
            ):
                return
            if not self._may_push(now) or (not self.paused and not self.avg_limiter.take(now)):
                return
            self.show_average(frame)
            return
        frame = self.frozen if self.paused else self.tap.latest
        if frame is None or self.shown == (frame.seq, self.pulse, "pulse"):
            return
        if not self._may_push(now) or (not self.paused and not self.limiter.take(now)):
            return
        self.show(frame)

    def show(self, frame: TapFrame) -> None:
        """Display pulse ``self.pulse`` of ``frame`` (the device already scaled it to uint8)."""
        found = frame_source(frame, self.panel["data_source"], "preview.images")
        if found is None:
            self.status.text = (
                f"<span style='color:#c01c28'>no <code>preview.images</code> in "
                f"{html.escape(self.output)}</span>"
            )
            self.shown = (frame.seq, self.pulse, "pulse")
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
        self._update_geometry(values, h, w)
        version = values.get("preview.geometryVersion")
        if version is not None and version != self.map_version:
            self._fetch_pixel_map(version)
        self._resize(h, w)
        tid = frame.train_id if frame.train_id is not None else -1
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
        unit = str(values.get("preview.unit", "") or "")
        vmin = float(values.get("preview.vmin", 0.0))
        vmax = float(values.get("preview.vmax", 1.0))
        image = images[pulse]
        scale = str(values.get("preview.scale", "linear"))
        pixel_values = values.get("preview.values")
        exact = None
        if (
            isinstance(pixel_values, np.ndarray)
            and pixel_values.ndim == 3
            and len(pixel_values) > pulse
        ):
            exact = pixel_values[pulse]
        meta = {
            "dw": w * self.factor,
            "dh": h * self.factor,
            "train": tid,
            "pulse": pulse,
            "pulse_id": pid,
            "vmin": vmin,
            "vmax": vmax,
            "scale": scale,
            "unit": unit,
            "kind": "pulse",
        }
        if not self._send(meta, image, exact):
            return
        self.displayed = {
            "image": image,
            "values": exact,
            "unit": unit,
            "trainId": tid,
            "pulseId": pid,
            "cellId": cid,
            "pulseIndex": pulse,
            "kind": "pulse",
            "vmin": vmin,
            "vmax": vmax,
            "scale": scale,
        }
        self.shown = (frame.seq, self.pulse, "pulse")
        self.shown_frame = frame
        self._pushed()
        now = time.monotonic()
        # The status line and the colour bar change layout in the browser: refresh them at most
        # once a second while running (a third of the browser's work at 10 Hz otherwise), at
        # once when frozen or when the pulse was chosen.
        if self.paused or now - self.status_time >= 1.0:
            self.status_time = now
            self._update_levels(vmin, vmax, values.get("preview.scale") == "log", unit)
            self._update_status(frame, values, pulse, n, pid, cid)

    def show_average(self, frame: TapFrame) -> None:
        """Display the ImageAverage device's image (average, last or difference, float)."""
        found = frame_source(frame, "", "average.image")
        if found is None:
            self.status.text = (
                f"no <code>average.image</code> in {html.escape(self.average_device)}:output"
            )
            self.shown = (frame.seq, 0, self.view)
            return
        _, values = found
        image = np.asarray(values["average.image"], dtype=np.float32)
        h, w = image.shape
        factor = int(values.get("average.downsample", 1) or 1)
        unit = str(values.get("average.unit", "") or "")
        vmin = float(values.get("average.vmin", np.nan))
        vmax = float(values.get("average.vmax", np.nan))
        if not (np.isfinite(vmin) and np.isfinite(vmax) and vmax > vmin):
            vmin, vmax = 0.0, 1.0
        self._resize(h * factor // max(1, self.factor), w * factor // max(1, self.factor))
        tid = frame.train_id if frame.train_id is not None else -1
        shown = str(values.get("average.shown", self.view))
        meta = {
            "dw": w * factor,
            "dh": h * factor,
            "train": tid,
            "pulse": -1,
            "pulse_id": -1,
            "vmin": vmin,
            "vmax": vmax,
            "scale": "linear",
            "unit": unit,
            "kind": shown,
        }
        levels = self._levels_of({"image": image, "vmin": vmin, "vmax": vmax})
        if not self._send(meta, levels, image):
            return
        self.displayed = {
            "image": image,
            "values": None,
            "unit": unit,
            "trainId": tid,
            "pulseId": None,
            "cellId": None,
            "pulseIndex": None,
            "kind": shown,
            "vmin": vmin,
            "vmax": vmax,
            "scale": "linear",
            "downsample": factor,
            "trains": int(values.get("average.trains", 0)),
        }
        self.shown = (frame.seq, 0, self.view)
        self.shown_frame = frame
        self._pushed()
        self._update_levels(vmin, vmax, False, unit)
        dark = int(values.get("average.darkTrains", 0))
        recording = " · <b>recording a dark</b>" if values.get("average.darkRecording") else ""
        self.status.text = (
            f"train <b class='pt-train-id'>{tid}</b> · <b class='pt-shown'>{html.escape(shown)}</b>"
            f" of {int(values.get('average.trains', 0))} trains, "
            f"{int(values.get('average.pulses', 0))} pulses each · dark: "
            f"{f'{dark} trains' if dark else 'none'}{recording}"
            + (" · <b>frozen</b>" if self.paused else "")
        )

    def _send(self, meta: dict[str, Any], levels: np.ndarray, values: np.ndarray | None) -> bool:
        """Send an image on the panel's WebSocket; keep the hover's stand-in in its shape."""
        h, w = levels.shape
        stand_in = self.source.data
        if stand_in["image"][0].shape != (h, w) or (stand_in["dw"][0], stand_in["dh"][0]) != (
            meta["dw"],
            meta["dh"],
        ):
            self.source.data = {
                "image": [np.zeros((h, w), dtype=np.uint8)],
                "dw": [meta["dw"]],
                "dh": [meta["dh"]],
            }
        return self.channel.send({**meta, "push": self.sent + 1}, levels, values)

    def _resize(self, h: int, w: int) -> None:
        if (h, w) != self.shape:
            self.shape = (h, w)
            fw, fh = w * self.factor, h * self.factor
            self.fig.x_range.update(start=0, end=fw)
            self.fig.y_range.update(start=fh, end=0)
            self.fig.frame_height = max(100, round((self.width - 110) * h / w))
            self.bar_fig.frame_height = self.fig.frame_height

    def _pushed(self) -> None:
        self.session.count_image_push()
        now = time.monotonic()
        self.sent += 1
        self.sent_at = now
        self.pushes = [t for t in self.pushes[-30:] if now - t < 3.0] + [now]

    def _update_levels(self, vmin: float, vmax: float, log_scale: bool, unit: str) -> None:
        log_scale = log_scale and vmin > 0
        wanted = LogColorMapper if log_scale else LinearColorMapper
        if not isinstance(self.bar_mapper, wanted):
            self.bar_mapper = wanted(palette=self.bar_mapper.palette, low=vmin, high=vmax)
            self.bar.color_mapper = self.bar_mapper
        elif (self.bar_mapper.low, self.bar_mapper.high) != (vmin, vmax):
            self.bar_mapper.update(low=vmin, high=vmax)
        title = unit or "value"
        if self.bar.title != title:
            self.bar.title = title

    def _update_status(
        self, frame: TapFrame, values: dict, pulse: int, n: int, pid: int, cid: int
    ) -> None:
        rate = (
            (len(self.pushes) - 1) / (self.pushes[-1] - self.pushes[0])
            if len(self.pushes) > 2
            else 0.0
        )
        lat = f" · latency {frame.latency * 1e3:.0f} ms" if frame.latency is not None else ""
        auto = " auto" if values.get("preview.autoLevels") else ""
        frozen = " · <b>frozen</b>" if self.paused else ""
        unit = html.escape(str(values.get("preview.unit", "") or ""))
        self.status.text = (
            f"train <b class='pt-train-id'>{frame.train_id}</b> · pulse "
            f"<b class='pt-pulse'>{pulse}</b>/{n} (pulse ID {pid}, cell {cid}) · levels "
            f"{float(values.get('preview.vmin', 0)):.4g}–{float(values.get('preview.vmax', 0)):.4g}"
            f" {unit} {html.escape(str(values.get('preview.scale', '')))}{auto} · "
            f"{rate:.1f} updates/s{lat}{frozen}"
        )

    def on_poll(self) -> None:
        for editor in self.editors:
            editor.refresh()
        if self.roi_device:
            snap = self.backend.snapshot(self.roi_device) or {}
            rects = []
            for k in range(4):
                r = snap.get(f"roi{k + 1}")
                try:
                    rects.append(
                        [int(v) for v in r] if r is not None and len(r) == 4 else [0, 0, 0, 0]
                    )
                except (TypeError, ValueError):
                    rects.append([0, 0, 0, 0])
            if snap and rects != self.rois_shown:
                self.rois_shown = rects
                self._show_rois(rects)

    # ------------------------------------------------------------ saving
    def save(self, kind: str) -> None:
        """Offer the displayed frame as an HDF5 file (with trends, geometry, configuration) or PNG."""
        shown = self.displayed
        if shown is None:
            self.session.message("nothing to save yet: no image shown", error=True)
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{self.session.scene.name}-train{shown['trainId']}"
        if shown["pulseIndex"] is not None:
            name += f"-pulse{shown['pulseIndex']}"
        else:
            name += f"-{shown['kind']}"
        try:
            if kind == "png":
                data = frame_png(self._levels_of(shown), self.palette, GAP_COLOUR)
                self.session.offer_download(f"{name}.png", data, "image/png")
            else:
                data = self._hdf5(shown, stamp)
                self.session.offer_download(f"{name}.h5", data, "application/x-hdf5")
        except (OSError, ValueError, ConfigurationError) as exc:
            self.session.message(f"saving failed: {exc}", error=True)
            return
        self.session.message(f"saved {name}.{'png' if kind == 'png' else 'h5'} ({len(data)} bytes)")

    @staticmethod
    def _levels_of(shown: dict[str, Any]) -> np.ndarray:
        """The displayed image as uint8 levels (float images scaled with their colour limits)."""
        image = shown["image"]
        if image.dtype == np.uint8:
            return image
        lo, hi = shown["vmin"], shown["vmax"]
        with np.errstate(invalid="ignore"):
            levels = 1 + np.clip((image - lo) / (hi - lo), 0, 1) * 254
        return np.where(np.isfinite(image), levels, 0).astype(np.uint8)

    def _hdf5(self, shown: dict[str, Any], stamp: str) -> bytes:
        devices = sorted(self.devices() | set(self.session.page_devices()))
        configuration = {d: self.backend.snapshot(d) for d in devices if self.backend.snapshot(d)}
        average = None
        if self.avg_tap is not None and self.avg_tap.latest is not None:
            found = frame_source(self.avg_tap.latest, "", "average.image")
            if found is not None:
                average = found[1]["average.image"]
        return frame_hdf5(
            shown,
            geometry=self.geometry,
            average=average,
            trends=self.session.trend_data(),
            configuration=configuration,
            attrs={
                "scene": self.session.scene.name,
                "output": self.output,
                "shown": shown["kind"],
                "saved": stamp,
                "levels": json.dumps([shown["vmin"], shown["vmax"], shown["scale"]]),
            },
        )
