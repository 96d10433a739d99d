"""Panels drawing the analysis devices' outputs: ROI trends, histograms, correlations.

The numbers come from pipeline devices (``RoiAnalysis``, ``PixelHistogram``, ``Correlator``;
see ``docs/analysis-devices.md``); these panels only draw them and edit the devices' properties
(with the page's control token).  Each panel reads its device's output through a tap (drop
policy: never slows the pipeline), redraws at most ``update_rate`` times a second, and leaves
figures in hidden tabs alone until they are shown.
"""

from __future__ import annotations

import html
import logging
from typing import Any, ClassVar

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    ColumnDataSource,
    Div,
    RadioButtonGroup,
    Range1d,
    Toggle,
)
from bokeh.plotting import figure

from pulsetrain.gui.backend import TapFrame
from pulsetrain.gui.base import (
    FIT_KEEP_FILL,
    Page,
    PanelBase,
    PropertyEditor,
    RateLimiter,
    fit_range,
    follow_range,
    frame_source,
)
from pulsetrain.gui.scene import Panel

__all__ = ["CorrelationPanel", "HistogramPanel", "RoiPanel"]

log = logging.getLogger(__name__)

#: Seconds between two updates of a panel's status line.
STATUS_SECONDS = 1.0

#: Colours of ROI 1..4 (the same as the boxes on the detector image).
ROI_COLOURS = ("#e6194b", "#f58231", "#c9a800", "#3cb44b")


def _editors(session: Page, device: str, keys: tuple[str, ...], width: int) -> list[PropertyEditor]:
    """Editors of the device's reconfigurable properties among ``keys`` (if it has them)."""
    schema = session.backend.schema(device) or {}
    props = schema.get("properties", {})
    out = []
    for key in keys:
        entry = props.get(key)
        if entry and entry.get("access") == "reconfigurable":
            editor = PropertyEditor(session, device, key, entry)
            editor.widget.width = width
            out.append(editor)
    return out


def _slot_button(session: Page, device: str, slot: str, label: str, name: str) -> Button:
    button = Button(
        label=label,
        width=110,
        name=name,
        css_classes=["pt-slot", f"pt-{slot}"],
        disabled=not session.can_edit,
    )
    button.on_click(lambda event=None: session.request_call(device, slot))
    session.add_editor(button)
    return button


class _OutputPanel(PanelBase):
    """A panel reading one device output: tap, rate limiter, status line, editors."""

    def __init__(self, session: Page, panel: Panel):
        super().__init__(session, panel)
        self.output = panel["source"]
        self.device = self.output.rsplit(":", 1)[0]
        self.tap = self.backend.tap(self.output)
        self.limiter = RateLimiter(min(panel["update_rate"], session.scene.update_rate), 1.0)
        self.shown_seq = 0
        self.status = Div(
            text="waiting for data ...",
            width=self.width,
            height=22,
            name=f"status-{panel.index}",
            css_classes=["pt-panel-status"],
        )
        self.status_time = 0.0
        self.editors: list[PropertyEditor] = []

    def set_status(self, text: str, now: float) -> None:
        """Show a status line, at most once per :data:`STATUS_SECONDS` (a changed text makes the
        browser lay out the whole page again: a few per second from every panel added up to
        more than a loaded machine gave the browser)."""
        if text == self.status.text or now - self.status_time < STATUS_SECONDS:
            return
        self.status_time = now
        self.status.text = text

    def devices(self) -> set[str]:
        return {self.device}

    def on_poll(self) -> None:
        for editor in self.editors:
            editor.refresh()

    def new_frame(self, now: float) -> TapFrame | None:
        """The latest train if there is a new one and the rate limit allows a redraw."""
        frame = self.tap.latest
        if frame is None or frame.seq == self.shown_seq or not self.limiter.take(now):
            return None
        self.shown_seq = frame.seq
        return frame

    def missing(self, key: str) -> None:
        self.status.text = (
            f"<span style='color:#c01c28'>no <code>{html.escape(key)}</code> in "
            f"{html.escape(self.output)}</span>"
        )


class RoiPanel(_OutputPanel):
    """ROI values of a ``RoiAnalysis`` device: against train ID, against pulse index, projections.

    The train trend takes every train the tap received (not only the drawn ones), so a redraw
    rate below the train rate leaves no gaps.
    """

    default_width = 600

    def __init__(self, session: Page, panel: Panel):
        super().__init__(session, panel)
        i = panel.index
        self.stat = panel["stat"]
        self.norm = panel["normalised"] and self.stat in ("sum", "mean")
        suffix = "Norm" if self.norm else ""
        self.train_key = f"{self.stat}{suffix}Train"
        self.pulse_key = f"{self.stat}{suffix}"
        self.window = int(panel["window"])
        self.last_train = -1
        height = self.height or 250
        self.trend = ColumnDataSource(
            {"train": [], **{f"roi{k}": [] for k in range(1, 5)}}, name=f"roi-trend-{i}"
        )
        self.pulses = ColumnDataSource(
            {"pulse": [], **{f"roi{k}": [] for k in range(1, 5)}}, name=f"roi-pulses-{i}"
        )
        self.proj = ColumnDataSource(
            {**{f"x{k}": [] for k in range(1, 5)}, **{f"roi{k}": [] for k in range(1, 5)}},
            name=f"roi-proj-{i}",
        )
        label = f"ROI {self.stat}{' / norm' if self.norm else ''}"
        common = {
            "width": self.width,
            "height": height,
            "tools": "pan,wheel_zoom,box_zoom,reset,hover",
            "y_range": Range1d(0, 1),
            "x_range": Range1d(0, 1),
        }
        self.fig_train = figure(
            x_axis_label="train ID", y_axis_label=label, name=f"roi-fig-{i}-train", **common
        )
        self.fig_pulse = figure(
            x_axis_label="pulse index", y_axis_label=label, name=f"roi-fig-{i}-pulse", **common
        )
        self.fig_proj = figure(
            x_axis_label="x [pixel]",
            y_axis_label="mean along y",
            name=f"roi-fig-{i}-projection",
            **common,
        )
        self.fig_train.xaxis.formatter.use_scientific = False
        for k in range(1, 5):
            colour = ROI_COLOURS[k - 1]
            legend = f"ROI {k}"
            self.fig_train.line(
                "train",
                f"roi{k}",
                source=self.trend,
                color=colour,
                legend_label=legend,
                line_width=2,
            )
            self.fig_pulse.line(
                "pulse",
                f"roi{k}",
                source=self.pulses,
                color=colour,
                legend_label=legend,
                line_width=2,
            )
            self.fig_pulse.scatter("pulse", f"roi{k}", source=self.pulses, color=colour, size=5)
            self.fig_proj.line(
                f"x{k}",
                f"roi{k}",
                source=self.proj,
                color=colour,
                legend_label=legend,
                line_width=2,
            )
        for fig in (self.fig_train, self.fig_pulse, self.fig_proj):
            fig.legend.location = "top_left"
            fig.legend.label_text_font_size = "10px"
            fig.legend.background_fill_alpha = 0.5
            fig.legend.click_policy = "hide"
        # One figure on the page at a time: BokehJS repaints every figure of a panel whenever
        # the panel's layout changes (its status line), hidden tabs included.
        self.views = (self.fig_train, self.fig_pulse, self.fig_proj)
        self.tabs = RadioButtonGroup(
            labels=["vs train ID", "vs pulse", "projection x"],
            active=0,
            name=f"roi-tabs-{i}",
            css_classes=["pt-roi-views"],
        )
        self.shown_fig = column(self.fig_train, name=f"roi-view-{i}")
        self.tabs.on_change("active", lambda a, o, n: self._show_view(n))
        self.editors = _editors(session, self.device, ("normaliser",), 260)
        self.clear = Button(
            label="clear trend", width=100, name=f"roi-clear-{i}", css_classes=["pt-roi-clear"]
        )
        self.clear.on_click(self._clear)
        controls = row(*[e.widget for e in self.editors], self.clear)
        self.layout = self.wrap(self.tabs, self.shown_fig, controls, self.status)
        self.latest_values: dict | None = None

    def _show_view(self, active: int) -> None:
        self.shown_fig.children = [self.views[int(active)]]
        self._redraw_now()

    def _clear(self, event: Any = None) -> None:
        self.trend.data = {"train": [], **{f"roi{k}": [] for k in range(1, 5)}}

    def _redraw_now(self) -> None:
        self.limiter.tokens = max(self.limiter.tokens, 1.0)
        self.shown_seq = 0

    def on_tick(self, now: float) -> None:
        frame = self.new_frame(now)
        if frame is None:
            return
        new = [f for f in self.tap.since(self.last_seen_seq()) if f.train_id is not None]
        rows: dict[str, list] = {"train": [], **{f"roi{k}": [] for k in range(1, 5)}}
        for f in new:
            found = frame_source(f, self.panel["data_source"], f"roi1.{self.train_key}")
            if found is None or f.train_id <= self.last_train:
                continue
            values = found[1]
            self.last_train = f.train_id
            rows["train"].append(int(values.get("roi.trainId", f.train_id)))
            for k in range(1, 5):
                rows[f"roi{k}"].append(float(values[f"roi{k}.{self.train_key}"]))
        self._last_seq = frame.seq
        found = frame_source(frame, self.panel["data_source"], f"roi1.{self.train_key}")
        if found is None:
            self.missing(f"roi1.{self.train_key}")
            return
        values = found[1]
        self.latest_values = values
        if rows["train"]:
            self.trend.stream(rows, rollover=self.window)
        active = self.tabs.active
        if active == 0:
            self._fit(self.fig_train, self.trend, "train")
        elif active == 1:
            n = len(np.atleast_1d(values[f"roi1.{self.pulse_key}"]))
            self.pulses.data = {
                "pulse": list(range(n)),
                **{
                    f"roi{k}": np.asarray(values[f"roi{k}.{self.pulse_key}"], float)
                    for k in range(1, 5)
                },
            }
            self._fit(self.fig_pulse, self.pulses, "pulse")
        else:
            rects = np.asarray(values.get("roi.rects", np.zeros((4, 4))))
            data = {}
            for k in range(1, 5):
                p = np.asarray(values.get(f"roi{k}.projXTrain", []), dtype=float)
                data[f"roi{k}"] = p
                data[f"x{k}"] = rects[k - 1][0] + np.arange(len(p), dtype=float) if len(p) else p
            # columns of a source must have equal lengths: pad with NaN
            n = max(len(v) for v in data.values()) if data else 0
            self.proj.data = {
                key: np.concatenate([v, np.full(n - len(v), np.nan)]) for key, v in data.items()
            }
            self._fit(self.fig_proj, self.proj, None)
        unit = html.escape(str(values.get("roi.unit", "")))
        active_rois = [
            str(k + 1) for k, on in enumerate(np.atleast_1d(values.get("roi.active", []))) if on
        ]
        self.set_status(
            (
                f"train <b class='pt-train-id'>{frame.train_id}</b> · ROIs on: "
                f"{', '.join(active_rois) or 'none (draw one on the image)'} · unit {unit}"
                f" · normaliser: {html.escape(str(self.backend.value(self.device, 'normaliser') or 'none'))}"
            ),
            now,
        )
        for fig in (self.fig_train, self.fig_pulse):
            fig.yaxis.axis_label = f"ROI {self.stat}{' / norm' if self.norm else ''} [{unit}]"

    def last_seen_seq(self) -> int:
        return getattr(self, "_last_seq", 0)

    @staticmethod
    def _fit(fig: Any, source: ColumnDataSource, xkey: str | None) -> None:
        """Fit the ranges to the finite data (flat data gets ±5 %)."""
        ys = [np.asarray(v, dtype=float) for k, v in source.data.items() if k.startswith("roi")]
        y = np.concatenate(ys) if ys else np.empty(0)
        y = y[np.isfinite(y)]
        xs = (
            [np.asarray(source.data[xkey], dtype=float)]
            if xkey
            else [np.asarray(v, dtype=float) for k, v in source.data.items() if k.startswith("x")]
        )
        x = np.concatenate(xs) if xs else np.empty(0)
        x = x[np.isfinite(x)]
        if y.size:
            fit_range(fig.y_range, float(y.min()), float(y.max()))
        if x.size and xkey == "train":  # train IDs: a growing axis
            follow_range(fig.x_range, float(x.min()) - 0.5, float(x.max()) + 0.5)
        elif x.size:  # pulse indices, pixels of a projection
            lo, hi = float(x.min()), float(x.max())
            fig.x_range.update(start=lo - 0.5, end=hi + 0.5 if hi > lo else lo + 0.5)

    def trends(self) -> dict[str, dict[str, Any]]:
        data = self.trend.data
        out = {f"roi_vs_train_{self.train_key}": {k: np.asarray(v) for k, v in data.items()}}
        if self.latest_values is not None:
            v = self.latest_values
            out[f"roi_vs_pulse_{self.pulse_key}"] = {
                "trainId": np.asarray([int(v.get("roi.trainId", 0))]),
                **{
                    f"roi{k}": np.asarray(v[f"roi{k}.{self.pulse_key}"], float) for k in range(1, 5)
                },
            }
        return out


class HistogramPanel(_OutputPanel):
    """A histogram from a ``PixelHistogram`` (``hist.*``) or ``RoiAnalysis`` (``roiHist.*``)."""

    default_width = 520

    KEYS: ClassVar[dict[str, tuple[str, tuple[str, ...]]]] = {
        "pixels": ("hist", ("bins", "range", "per", "region", "log_scale")),
        "roi": ("roiHist", ("roi_hist_roi", "roi_hist_bins", "roi_hist_range", "roi_hist_trains")),
    }

    def __init__(self, session: Page, panel: Panel):
        super().__init__(session, panel)
        i = panel.index
        self.prefix, keys = self.KEYS[panel["kind"]]
        # a source per figure, only the shown one's filled: a hidden figure sharing the source
        # was repainted with every update too
        self.sources = {
            scale: ColumnDataSource(
                {"left": [], "right": [], "top": [], "bottom_log": [], "train": []},
                name=f"histogram-{i}" if scale == "linear" else f"histogram-{i}-{scale}",
            )
            for scale in ("linear", "log")
        }
        height = self.height or 250
        xlabel = "pixel value" if panel["kind"] == "pixels" else "ROI intensity per pulse"
        self.figs = {}
        for scale in ("linear", "log"):
            fig = figure(
                width=self.width,
                height=height,
                y_axis_type=scale,
                x_axis_label=xlabel,
                y_axis_label="count",
                tools="pan,wheel_zoom,box_zoom,reset,hover",
                x_range=Range1d(0, 1),
                y_range=Range1d(0.5 if scale == "log" else 0, 1),
                name=f"histogram-fig-{i}-{scale}",
            )
            fig.quad(
                left="left",
                right="right",
                top="top",
                bottom="bottom_log" if scale == "log" else 0,
                source=self.sources[scale],
                fill_color="#1f77b4",
                line_color="#1f77b4",
                fill_alpha=0.6,
            )
            self.figs[scale] = fig
        self.log_toggle = Toggle(
            label="log counts", active=bool(panel["log_y"]), width=100, name=f"histogram-log-{i}"
        )
        self.log_toggle.on_change("active", lambda a, o, n: self._show_scale())
        # only the shown figure is on the page (a hidden one was repainted with every update)
        self.shown_fig = column(name=f"histogram-view-{i}")
        self._show_scale()
        self.editors = _editors(session, self.device, keys, 110)
        extra = []
        if panel["kind"] == "roi":
            extra.append(
                _slot_button(
                    session, self.device, "clearHistogram", "clear", f"histogram-clear-{i}"
                )
            )
        self.layout = self.wrap(
            self.shown_fig,
            row(self.log_toggle, *extra),
            row(*[e.widget for e in self.editors]),
            self.status,
        )

    @property
    def scale(self) -> str:
        """The histogram's shown scale, ``linear`` or ``log`` (the toggle's state)."""
        return "log" if self.log_toggle.active else "linear"

    def _show_scale(self) -> None:
        self.shown_fig.children = [self.figs[self.scale]]
        self.shown_seq = 0

    def on_tick(self, now: float) -> None:
        frame = self.new_frame(now)
        if frame is None:
            return
        key = f"{self.prefix}.counts"
        found = frame_source(frame, self.panel["data_source"], key)
        if found is None:
            self.missing(key)
            return
        values = found[1]
        counts = np.asarray(values[key], dtype=float)
        edges = np.asarray(values[f"{self.prefix}.edges"], dtype=float)
        if len(edges) != len(counts) + 1:
            return
        scale = self.scale
        fig = self.figs[scale]
        self.sources[scale].data = {
            "left": edges[:-1],
            "right": edges[1:],
            "top": counts,
            "bottom_log": np.full(len(counts), 0.5),
            "train": np.full(len(counts), frame.train_id or -1, dtype=np.int64),
        }
        top = float(counts.max()) if counts.size else 1.0
        # bins that move a little from train to train (an automatic range) keep the axis
        fit_range(fig.x_range, float(edges[0]), float(edges[-1]))
        if scale == "log":
            # a new top only when the highest count leaves the upper decade below the axis top
            if not 0.1 * fig.y_range.end <= max(1.0, top) <= fig.y_range.end / 1.5:
                fig.y_range.update(start=0.5, end=max(1.0, top) * 3.0)
        elif not FIT_KEEP_FILL * fig.y_range.end <= max(1.0, top) <= fig.y_range.end:
            # a new top only when the counts leave 60-100 % of the axis (see fit_range)
            fig.y_range.update(start=0.0, end=max(1.0, top) * 1.05)
        unit = html.escape(
            str(
                values.get(
                    f"{self.prefix.replace('roiHist', 'roi')}.unit", values.get("hist.unit", "")
                )
            )
        )
        n_values = int(values.get(f"{self.prefix}.nValues", counts.sum()))
        stats = ""
        if self.prefix == "hist":
            stats = (
                f" · mean {float(values.get('hist.mean', np.nan)):.4g}, std "
                f"{float(values.get('hist.std', np.nan)):.4g} {unit}"
            )
        self.set_status(
            (
                f"train <b class='pt-train-id'>{frame.train_id}</b> · {n_values} values in "
                f"{len(counts)} bins{stats}"
            ),
            now,
        )
        label = "pixel value" if self.prefix == "hist" else "ROI intensity per pulse"
        for fig in self.figs.values():
            fig.xaxis.axis_label = f"{label} [{unit}]" if unit else label


class CorrelationPanel(_OutputPanel):
    """A ``Correlator`` output: the points (x, y) and the binned mean ± standard deviation."""

    default_width = 520

    def __init__(self, session: Page, panel: Panel):
        super().__init__(session, panel)
        i = panel.index
        # "update": the train of the output drawn (the same in both sources once both arrived)
        self.points = ColumnDataSource(
            {"x": [], "y": [], "train": [], "update": []}, name=f"correlation-points-{i}"
        )
        self.bins = ColumnDataSource(
            {
                "x": [],
                "mean": [],
                "lo": [],
                "hi": [],
                "count": [],
                "left": [],
                "right": [],
                "update": [],
            },
            name=f"correlation-bins-{i}",
        )
        self.fig = figure(
            width=self.width,
            height=self.height or 280,
            tools="pan,wheel_zoom,box_zoom,reset,hover",
            x_range=Range1d(0, 1),
            y_range=Range1d(0, 1),
            name=f"correlation-fig-{i}",
        )
        self.fig.scatter(
            "x", "y", source=self.points, size=4, alpha=0.4, color="#7f7f7f", legend_label="trains"
        )
        self.fig.line(
            "x",
            "mean",
            source=self.bins,
            color="#d62728",
            line_width=2,
            legend_label="binned mean ± std",
        )
        self.fig.scatter("x", "mean", source=self.bins, color="#d62728", size=6)
        self.fig.segment("x", "lo", "x", "hi", source=self.bins, color="#d62728", line_width=2)
        self.fig.legend.location = "top_left"
        self.fig.legend.label_text_font_size = "10px"
        self.fig.legend.background_fill_alpha = 0.5
        self.editors = _editors(session, self.device, ("x", "y", "bins"), 200)
        reset = _slot_button(session, self.device, "reset", "reset", f"correlation-reset-{i}")
        self.layout = self.wrap(
            self.fig,
            row(*[e.widget for e in self.editors][:2]),
            row(*[e.widget for e in self.editors][2:], reset),
            self.status,
        )

    def on_tick(self, now: float) -> None:
        frame = self.new_frame(now)
        if frame is None:
            return
        found = frame_source(frame, self.panel["data_source"], "correlation.x")
        if found is None:
            self.missing("correlation.x")
            return
        v = found[1]
        x = np.asarray(v["correlation.x"], dtype=float)
        y = np.asarray(v["correlation.y"], dtype=float)
        centres = np.asarray(v["correlation.binCentres"], dtype=float)
        mean = np.asarray(v["correlation.binMean"], dtype=float)
        std = np.asarray(v["correlation.binStd"], dtype=float)
        count = np.asarray(v["correlation.binCount"], dtype=float)
        trains = np.asarray(v.get("correlation.trainIds", np.zeros(len(x))), dtype=np.int64)
        edges = np.asarray(v["correlation.binEdges"], dtype=float)
        update = int(frame.train_id or -1)
        self.points.data = {"x": x, "y": y, "train": trains, "update": np.full(len(x), update)}
        self.bins.data = {
            "left": edges[:-1],
            "right": edges[1:],
            "x": centres,
            "mean": mean,
            "lo": mean - std,
            "hi": mean + std,
            "count": count,
            "update": np.full(len(count), update),
        }
        if x.size:
            ys = np.concatenate(
                [y, (mean - std)[np.isfinite(mean)], (mean + std)[np.isfinite(mean)]]
            )
            xs = np.concatenate([x, np.asarray(v["correlation.binEdges"], float)])
            fit_range(self.fig.x_range, float(np.nanmin(xs)), float(np.nanmax(xs)))
            fit_range(self.fig.y_range, float(np.nanmin(ys)), float(np.nanmax(ys)))
        self.fig.xaxis.axis_label = str(v.get("correlation.xName", "x"))
        self.fig.yaxis.axis_label = str(v.get("correlation.yName", "y"))
        self.set_status(
            (
                f"train <b class='pt-train-id'>{frame.train_id}</b> · {len(x)} points in "
                f"{int((count > 0).sum())}/{len(count)} bins"
            ),
            now,
        )

    def trends(self) -> dict[str, dict[str, Any]]:
        return {
            f"correlation_{self.panel.index}": {
                "x": np.asarray(self.points.data["x"]),
                "y": np.asarray(self.points.data["y"]),
            }
        }
