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
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from bokeh import palettes
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    ColumnDataSource,
    CustomJS,
    Div,
    LinearAxis,
    Range1d,
    TabPanel,
    Tabs,
)
from bokeh.plotting import figure

from pulsetrain.errors import ConfigurationError, PulsetrainError
from pulsetrain.gui.analysis_panels import CorrelationPanel, HistogramPanel, RoiPanel
from pulsetrain.gui.backend import lookup
from pulsetrain.gui.base import (
    ErrorPanel,
    Page,
    PanelBase,
    PropertyEditor,
    RateLimiter,
    axis_limits,
    css_name,
    fit_range,
    fmt_value,
    follow_range,
    frame_source,
    state_html,
)
from pulsetrain.gui.image import DetectorImagePanel
from pulsetrain.gui.scene import Panel, short_device

__all__ = ["Page", "PropertyEditor", "RateLimiter", "axis_limits", "build_panel", "css_name"]

log = logging.getLogger(__name__)


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
            name=f"line-figure-{panel.index}",
            # ranges set with the data (one repaint per update; BokehJS fitting its own data
            # ranges after the data changed painted the figure twice)
            **({} if panel["log_y"] else {"x_range": Range1d(0, 1), "y_range": Range1d(0, 1)}),
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
        found = frame_source(frame, self.panel["data_source"], self.ys[0])
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
        if not self.panel["log_y"]:
            finite = np.isfinite(x)
            ys_ = np.concatenate([v[np.isfinite(v)] for k, v in data.items() if k != "x"] or [[]])
            if finite.any():
                fit_range(self.fig.x_range, float(x[finite].min()), float(x[finite].max()))
            if ys_.size:
                fit_range(self.fig.y_range, float(ys_.min()), float(ys_.max()))
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
            x_range=Range1d(0, 1),  # set with the data: one repaint per update, not two
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
            rng = self.fig.y_range if name == "default" else self.fig.extra_y_ranges[name]
            fit_range(rng, float(y.min()), float(y.max()))

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
        times = [np.asarray(src.data["t"], dtype=float) for src in self.sources]
        times = [t for t in times if t.size]
        if times:
            first = min(float(t[0]) for t in times)
            last = max(float(t[-1]) for t in times)
            follow_range(self.fig.x_range, first, last, min_span=1000.0)  # ms


class CountersPanel(PanelBase):
    """Trains in and out, rates, drops and latency of every device — and of the GUI's taps."""

    #: Wide enough for two panels side by side at 1280 px; the table scrolls inside if wider.
    default_width = 600

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
            text="",
            width=self.width,
            name=f"counters-{panel.index}",
            css_classes=["pt-counters"],
            styles={"overflow-x": "auto", "max-width": f"{self.width}px"},
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
                return f"<span title='{title}'>{state_html(v)}{mark}</span>"
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


def _tab_titles_js(tabs: Tabs, titles: list[str]) -> CustomJS:
    """Browser code giving each tab header a ``title`` (shown on hover): the full device ID and
    its class.  BokehJS rebuilds the headers when the active tab changes, so a mutation
    observer puts the titles back; a Bokeh ``Tooltip`` on the tab raised errors in BokehJS 3.9.
    """
    return CustomJS(
        args={"tabs": tabs, "titles": titles},
        code="""
        const attach = (tries) => {
          const view = tabs.document.views_manager.find_one(tabs);
          const root = view ? (view.shadow_el || view.el) : null;
          if (root == null) {
            if (tries > 0) { setTimeout(() => attach(tries - 1), 200); }
            return;
          }
          const apply = () => {
            const heads = view.headers_wrapper_el
              ? Array.from(view.headers_wrapper_el.children)
              : Array.from(root.querySelectorAll('.bk-tab'));
            heads.forEach((el, i) => {
              if (i < titles.length && el.title !== titles[i]) { el.title = titles[i]; }
            });
          };
          apply();
          new MutationObserver(apply).observe(root, {childList: true, subtree: true});
        };
        attach(50);
        """,
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
            tabs.append(TabPanel(child=card["layout"], title=short_device(device)))
        content: Any = (
            Tabs(tabs=tabs, width=self.width, name=f"device-tabs-{panel.index}")
            if len(tabs) > 1
            else (tabs[0].child if tabs else Div(text="no devices"))
        )
        if isinstance(content, Tabs):
            devices = self.backend.devices()
            self.tab_titles = [
                f"{e['id']} ({devices[e['id']]['class']})" if e["id"] in devices else e["id"]
                for e in entries
            ]
            session.on_document_ready(_tab_titles_js(content, self.tab_titles))
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
                f"{state_html(snap.get('state'))} <i>{status}</i>"
            )
            rows = "".join(
                f"<tr><td>{html.escape(k)}</td><td>{html.escape(fmt_value(lookup(snap, k)))}</td>"
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
        if panel.type == "roi":
            return RoiPanel(session, panel)
        if panel.type == "histogram":
            return HistogramPanel(session, panel)
        if panel.type == "correlation":
            return CorrelationPanel(session, panel)
    except PulsetrainError as exc:
        log.warning("panel %d (%s): %s", panel.index, panel.type, exc)
        return ErrorPanel(session, panel, str(exc))
    raise ConfigurationError(f"unknown panel type {panel.type!r}")  # pragma: no cover
