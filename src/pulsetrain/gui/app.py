"""The GUI web server: an embedded Bokeh server with one page per scene.

:class:`GuiServer` connects to a running topology (:class:`GuiBackend`: output taps, property
polling, guarded writes), and serves each scene at ``/<scene name>`` (plus ``/status.json``).
Every browser tab is a :class:`SceneSession`: its panels read the shared backend, and a callback
every 25 ms pushes new pipeline data — at most ``update_rate`` (≤ 10) pushes per second and
panel, latest train wins.

Security: the server binds 127.0.0.1 unless told otherwise, and accepts websocket connections
only from the origins it serves.  Pages can change devices only after the user entered the
control token (checked again by the device servers, which receive that token); a GUI started
read-only disables every editor and refuses changes on the server side.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import Button, CustomJS, Div, InlineStyleSheet, PasswordInput
from bokeh.server.server import Server
from tornado.template import Template
from tornado.web import RequestHandler

from pulsetrain.errors import ConfigurationError, PulsetrainError
from pulsetrain.gui.backend import GuiBackend, lower_priority
from pulsetrain.gui.imagestream import PATH as IMAGE_PATH
from pulsetrain.gui.imagestream import ImageChannel, ImageChannels, ImageSocket
from pulsetrain.gui.panels import PanelBase, build_panel
from pulsetrain.gui.scene import Panel, Scene, auto_scene, load_scene
from pulsetrain.runtime.control import TopologyClient
from pulsetrain.runtime.ports import free_port

__all__ = ["STATIC_DIR", "GuiServer", "SceneSession"]

log = logging.getLogger(__name__)

#: Static assets of the GUI (index template, style sheet).
STATIC_DIR = Path(__file__).with_name("static")

#: Browser code (a function for ``page.wait_for_function``) true once every panel of a page is
#: built and drawn: the server tags the page's last root "built" after its last panel.
PAGE_BUILT_JS = """() => {
  if (!window.Bokeh || !Bokeh.documents || Bokeh.documents.length == 0) { return false; }
  const last = Bokeh.documents[0].get_model_by_name('pt-download');
  return last != null && last.tags.includes('built') && Bokeh.index.find_one(last) != null;
}"""

#: Seconds after which a page's other panels are built even if its first image has not come.
LATER_SECONDS = 1.5

#: A page opened less than this many seconds ago and still without its first image keeps
#: other pages from building their deferred panels (see ``SceneSession._build_later``).
OPENING_SECONDS = 4.0

#: Seconds between two checks for new pipeline data in a page.
TICK_SECONDS = 0.025

#: Seconds a file offered for download stays available.
DOWNLOAD_SECONDS = 300.0


class SceneSession:
    """One browser tab showing one scene.

    Parameters
    ----------
    server : GuiServer
    scene : Scene
    doc : bokeh.document.Document
    """

    def __init__(self, server: GuiServer, scene: Scene, doc: Document):
        self.server = server
        self.scene = scene
        self.backend = server.backend
        self.doc = doc
        self.token: str | None = None
        self.updating = False
        self.editors: list[Any] = []
        self.stylesheet = InlineStyleSheet(css=server.css)
        self.msg = Div(text="", width=600, name="message", css_classes=["pt-message"])
        self.download_link = _download_trigger()
        #: the image panels' WebSockets, named in the page's HTML (see gui/imagestream.py)
        self.image_channels: list[dict[str, Any]] = []
        self._later: list[tuple[Panel, Any]] = []  # panels still to build
        self._building_root: Any = None  # the page root of the panel being built
        header = self._header()
        self.panels: list[PanelBase] = []
        doc.title = f"{scene.title} — pulsetrain"
        # Each panel is a layout root of its own, placed in a CSS grid by the page template:
        # BokehJS lays out a whole root again whenever a text, a range or an axis label in it
        # changes, so with one root for the page every status line redrawn anywhere laid out
        # every figure of the page (measured: half the browser's time on the detector page;
        # image updates fell to 0.1-2 per second on a loaded 2-core machine).
        # A served page gets its detector images at once and the other panels right after the
        # HTML went out, one per turn of the web server's loop: building every panel's Bokeh
        # models first took 2.5-6 s before the browser got anything (measured: 746 models on
        # the detector page), and the image can be on the screen before the rest is built.
        later: list[tuple[Panel, Any]] = []
        served = doc.session_context is not None
        with doc.models.freeze():  # one walk over the models for all the roots, not one each
            doc.add_root(column(header, name="pt-header"))
            for k, p in enumerate(scene.panels):
                root = column(name=f"pt-panel-root-{k}")
                if served and p.type != "detector_image":
                    root.children = [Div(text="loading …", css_classes=["pt-loading"])]
                    later.append((p, root))
                else:
                    self._add_panel(p, root)
                doc.add_root(root)
            self._last_root = column(self.download_link, name="pt-download")
            doc.add_root(self._last_root)
        if later:
            # after the page's first image (the web server's loop free for its WebSocket and
            # that image), or after LATER_SECONDS if no image comes
            self._later = later
            doc.add_timeout_callback(self._start_later, int(LATER_SECONDS * 1000))
        else:
            self._last_root.tags = ["built"]
        if served and self.image_channels:
            server.opening[id(self)] = time.monotonic()
        doc.template = _page_template(scene.columns)
        doc.template_variables["pt_image_script"] = _image_script(self.image_channels)
        self._last_poll = self.backend.polls
        doc.add_periodic_callback(self._tick, int(TICK_SECONDS * 1000))

    def _add_panel(self, spec: Panel, root: Any) -> None:
        self._building_root = root
        try:
            panel = build_panel(self, spec)
        finally:
            self._building_root = None
        root.children = [panel.layout]
        self.panels.append(panel)
        self.panels.sort(key=lambda p: p.panel.index)

    def _start_later(self) -> None:
        later, self._later = self._later, []
        if later:
            self._build_later(later)

    def _build_later(self, later: list[tuple[Panel, Any]]) -> None:
        """Build the next deferred panel, then give the loop back (images, other pages).

        While another page is opening (served, first image not yet sent, for at most
        :data:`OPENING_SECONDS`), wait: building a panel holds the web server's only loop for a
        good part of a second on a loaded machine, and the other page's HTML, its image
        WebSocket and its first image all wait for that loop (measured: the HTML of a page took
        5.0-5.6 s instead of 0.4 s to come while another page built its panels).
        """
        if self.server.another_page_opening(id(self)):
            self.doc.add_timeout_callback(functools.partial(self._build_later, later), 50)
            return
        spec, root = later.pop(0)
        try:
            self._add_panel(spec, root)
        except Exception:  # the page keeps its other panels
            log.exception("panel %d (%s) could not be built", spec.index, spec.type)
        if later:
            self.doc.add_next_tick_callback(functools.partial(self._build_later, later))
        else:  # every panel is there (for tests and scripts: the root "pt-download" says so)
            self._last_root.tags = ["built"]

    # ------------------------------------------------------------ header and token
    def _header(self) -> Any:
        links = " · ".join(
            f"<a href='/{s.name}'>{html.escape(s.title)}</a>"
            if s.name != self.scene.name
            else f"<b>{html.escape(s.title)}</b>"
            for s in self.server.scenes
        )
        topo = html.escape(str(self.backend.topology.state.get("topology", "")))
        title = Div(
            text=f"<h2 style='margin:2px 0'>{html.escape(self.scene.title)}</h2>"
            f"<div>topology <b>{topo}</b> · pages: {links}</div>",
            width=560,
        )
        self.mode = Div(text="", width=260, name="mode", css_classes=["pt-mode"])
        parts: list[Any] = [title, self.mode]
        if not self.backend.read_only:
            self.token_input = PasswordInput(
                title="control token (to change devices)",
                placeholder="paste the token",
                width=260,
                name="token",
                css_classes=["pt-token"],
            )
            self.token_input.on_change("value", self._token_entered)
            self.lock_button = Button(
                label="lock", width=70, name="lock", css_classes=["pt-lock"], disabled=True
            )
            self.lock_button.on_click(self._lock)
            parts += [self.token_input, self.lock_button]
        self._show_mode()
        return column(row(*parts), self.msg)

    @property
    def can_edit(self) -> bool:
        """Whether this page may change devices (not read-only, and the token was entered)."""
        return not self.backend.read_only and self.token is not None

    def _show_mode(self) -> None:
        if self.backend.read_only:
            text = "<b style='color:#6e6e6e'>read-only</b>: changes are disabled"
        elif self.token is None:
            text = "<b style='color:#b35900'>locked</b>: enter the control token to change devices"
        else:
            text = "<b style='color:#1a7f37'>unlocked</b>: changes are sent with your token"
        self.mode.text = text

    def _token_entered(self, attr: str, old: Any, new: Any) -> None:
        if self.updating or not new:
            return
        if self.backend.check_token(str(new)):
            self.token = str(new)
            self.message("token accepted: devices can be changed from this page")
        else:
            self.token = None
            self.message("wrong control token", error=True)
        with self.programmatic():
            self.token_input.value = ""  # do not keep the secret in the page's model
        self._set_editable()

    def _lock(self, event: Any = None) -> None:
        self.token = None
        self._set_editable()
        self.message("locked")

    def _set_editable(self) -> None:
        enabled = self.can_edit
        for widget in self.editors:
            widget.disabled = not enabled
        if not self.backend.read_only:
            self.lock_button.disabled = not enabled
        self._show_mode()

    # ------------------------------------------------------------ what panels use (Page)
    @property
    def preview_output(self) -> str:
        """The output detector images show when their panel names none."""
        return self.server.preview_output

    def on_document_ready(self, callback: Any) -> None:
        """Run browser code (a ``CustomJS``) once the page is shown."""
        self.doc.js_on_event("document_ready", callback)
        if self._building_root is not None:
            # a panel built after the page may already be shown: run it when the panel comes
            self._building_root.js_on_change("children", callback)

    def add_editor(self, widget: Any) -> None:
        """Register a widget that changes devices: enabled only while the page may edit."""
        self.editors.append(widget)

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
        """A WebSocket of its own for an image panel's pixels, drawn under ``figure``.

        Until BokehJS has drawn the figure, the image is shown at the top of the panel's place
        on the page (``index``), ``size`` CSS pixels (width, height) at most.
        """
        channel = self.server.image_channels.open(key, on_connect, on_ack)
        self.image_channels.append(
            {
                "key": key,
                "token": channel.token,
                "path": IMAGE_PATH,
                "figure": figure,
                "root": f"pt-panel-root-{index}",
                "size": list(size),
                "colours": colours,
            }
        )
        return channel

    def count_image_push(self) -> None:
        """Count one image sent to the browser (``image_pushes`` in ``/status.json``)."""
        self.server.image_pushes += 1
        self.server.opening.pop(id(self), None)
        if self._later:
            self.doc.add_next_tick_callback(self._start_later)

    def run_on_page(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the page's thread (from another thread, e.g. a finished request)."""
        try:
            self.doc.add_next_tick_callback(fn)
        except Exception:  # noqa: BLE001 - the page was closed meanwhile
            log.debug("page gone before a callback")

    def page_devices(self) -> set[str]:
        """Every device the page's panels read or change."""
        return set().union(*(p.devices() for p in self.panels)) if self.panels else set()

    def trend_data(self) -> dict[str, dict[str, Any]]:
        """The page's trends as columns (name → column → values), for saving."""
        out: dict[str, dict[str, Any]] = {}
        for p in self.panels:
            out.update(p.trends())
        return out

    def offer_download(self, filename: str, data: bytes, mime: str) -> str:
        """Make the browser download ``data`` as ``filename``; returns the download's URL."""
        url = self.server.add_download(filename, data, mime)
        self.download_link.text = json.dumps({"url": url, "filename": filename})
        return url

    @contextlib.contextmanager
    def programmatic(self) -> Iterator[None]:
        """Change widgets from the server without their callbacks sending requests."""
        old, self.updating = self.updating, True
        try:
            yield
        finally:
            self.updating = old

    def message(self, text: str, error: bool = False) -> None:
        """Show a one-line message at the top of the page."""
        colour = "#c01c28" if error else "#1a7f37"
        self.msg.text = f"<span style='color:{colour}'>{html.escape(text)}</span>"
        (log.warning if error else log.info)("page %s: %s", self.scene.name, text)

    def _refuse(self) -> str | None:
        if self.backend.read_only:
            return "refused: this GUI is read-only (started with --read-only)"
        if self.token is None:
            return "refused: enter the control token to change devices"
        return None

    def request_set(
        self, device: str, key: str, value: Any, on_fail: Callable[[], None] | None = None
    ) -> None:
        """Set a device property off the web thread; report the result in the page."""
        refusal = self._refuse()
        if refusal:  # checked here, on the server: a crafted page message cannot bypass it
            self.message(refusal, error=True)
            if on_fail:
                on_fail()
            return
        future = self.backend.submit(self.backend.set_property, device, key, value, self.token)
        future.add_done_callback(
            functools.partial(
                self._from_thread,
                functools.partial(self._done, f"{device}.{key} = {value!r}", on_fail),
            )
        )

    def request_call(self, device: str, slot: str) -> None:
        """Call a device slot off the web thread; report the result in the page."""
        refusal = self._refuse()
        if refusal:
            self.message(refusal, error=True)
            return
        future = self.backend.submit(self.backend.call_slot, device, slot, self.token)
        future.add_done_callback(
            functools.partial(
                self._from_thread, functools.partial(self._done, f"{device}.{slot}()", None)
            )
        )

    def _from_thread(self, callback: Any, future: Any) -> None:
        try:
            self.doc.add_next_tick_callback(functools.partial(callback, future))
        except Exception:  # noqa: BLE001 - the page was closed meanwhile
            log.debug("page gone before a request finished")

    def _done(self, what: str, on_fail: Any, future: Any) -> None:
        try:
            future.result()
        except (PulsetrainError, TimeoutError) as exc:
            self.message(f"{what}: {exc}", error=True)
            if on_fail:
                on_fail()
            return
        self.message(f"{what}: done")

    # ------------------------------------------------------------ updates
    def _tick(self) -> None:
        now = time.monotonic()
        # A browser short of CPU (a loaded machine) has not taken the last images yet: only
        # the flow-controlled panels (images) may send now; the others wait (a poll missed
        # meanwhile is caught up at the next one), instead of queueing trends and histograms in
        # the websocket ahead of the next image.
        behind = [p for p in self.panels if p.browser_behind(now)]
        polled = self.backend.polls != self._last_poll and not behind
        if polled:
            self._last_poll = self.backend.polls
        with one_patch_per_tick(self.doc):
            for panel in behind or self.panels:
                try:
                    panel.on_tick(now)
                    if polled:
                        panel.on_poll()
                except Exception:  # one broken panel must not stop the others
                    log.exception("panel %s of scene %s failed", panel.panel.type, self.scene.name)


async def _sent_later() -> None:
    """What a held patch hands the session to wait for (the real write comes at the end)."""


@contextlib.contextmanager
def one_patch_per_tick(doc: Document) -> Iterator[None]:
    """Send the changes made inside to each browser as **one** ``PATCH-DOC`` message.

    The Bokeh server sends a message per changed property; BokehJS applies each in a task of
    its own and may repaint a figure after each (a histogram, its two ranges and its status
    line: three paints).  Measured on the detector page: 20-28 messages a second, 2-3 paints
    per figure and update.  One message per tick lets BokehJS apply them together and paint
    each figure once.  Uses the server session's connections (not public API): with a Bokeh
    that lacks them, the changes go out one by one as before.
    """
    context = doc.session_context
    session = getattr(context, "_session", None) if context is not None else None
    connections = list(getattr(session, "_subscribed_connections", ()) or ())
    if not connections or not all(
        hasattr(c, "send_patch_document") and hasattr(c, "_socket") for c in connections
    ):
        yield
        return
    held: dict[Any, list[Any]] = {}

    def holder(connection: Any) -> Callable[[Any], Any]:
        def hold(event: Any) -> Any:
            held.setdefault(connection, []).append(event)
            return _sent_later()

        return hold

    for connection in connections:
        connection.send_patch_document = holder(connection)
    try:
        yield
    finally:
        for connection in connections:
            del connection.send_patch_document  # the class's method again
        pending = getattr(session, "_pending_writes", None)
        for connection, events in held.items():
            message = connection.protocol.create("PATCH-DOC", events)
            write = connection._socket.send_message(message)
            if pending is not None:
                pending.append(write)  # awaited by the session after the callback


#: The BokehJS bundles the pages use (no TeX, data tables or WebGL).
JS_BUNDLES = ("bokeh", "bokeh-widgets")


def _load_only_needed_bundles(server: Server) -> None:
    """Make the pages load only :data:`JS_BUNDLES`.

    A Bokeh server page loads every bundle by default — with MathJax 3.9 MB of JavaScript, 2.3
    MB of which these pages never use; compiling it took seconds of a page's first image on a
    loaded machine, for every page opened.
    """
    app = getattr(server, "_tornado", None)
    if app is None or not hasattr(app, "resources"):  # another Bokeh: keep its default
        return
    resources = app.resources

    def needed(absolute_url: Any = None) -> Any:
        found = resources(absolute_url)
        found.components = [c for c in found.components if c in JS_BUNDLES]
        return found

    app.resources = needed


def _page_template(columns: int) -> Any:
    """The page: the header, the panels' roots in a grid of ``columns`` columns, the download
    trigger (Bokeh's page template with its ``contents`` block replaced).

    The image script comes first in the head (its WebSocket opens while the rest loads), and
    BokehJS (1.65 MB) is loaded *after* the grid: the browser shows the page's places, and the
    image in its own, while it fetches and compiles BokehJS, instead of a blank page.
    """
    from jinja2 import Template as JinjaTemplate

    return JinjaTemplate(
        """{% extends base %}
{% block preamble %}{{ pt_image_script }}{% endblock %}
{% block js_resources %}{% endblock %}
{% block contents %}
{{ embed(roots["pt-header"]) }}
<div class="pt-grid" style="display: grid; grid-template-columns: repeat("""
        + str(int(columns))
        + """, max-content); column-gap: 10px; row-gap: 6px; align-items: start;">
{% for root in roots %}{% if root.name.startswith("pt-panel-root-") %}<div class="pt-cell" data-root="{{ root.name }}">{{ embed(root) }}</div>
{% endif %}{% endfor %}</div>
{{ embed(roots["pt-download"]) }}
{{ bokeh_js if bokeh_js }}
{% endblock %}"""
    )


def _image_script(channels: list[dict[str, Any]]) -> str:
    """The page's image channels and the scripts that draw them (``static/image*.js``)."""
    if not channels:
        return ""
    names = json.dumps(channels).replace("</", "<\\/")
    return f"<script>window.ptImageChannels = {names};\n{_image_scripts()}</script>"


@functools.cache
def _image_scripts() -> str:
    """``static/image-render.js`` and ``static/image.js``, read once per process."""
    return "\n".join((STATIC_DIR / f).read_text() for f in ("image-render.js", "image.js"))


def _download_trigger() -> Div:
    """An invisible element: when the server sets its text to ``{url, filename}`` the browser
    downloads that URL (an ``<a download>`` clicked from the page)."""
    div = Div(text="", visible=False, name="download-link")
    div.js_on_change(
        "text",
        CustomJS(
            code="""
        if (!cb_obj.text) { return; }
        const info = JSON.parse(cb_obj.text);
        const a = document.createElement('a');
        a.href = info.url;
        a.download = info.filename;
        document.body.appendChild(a);
        a.click();
        a.remove();
    """
        ),
    )
    return div


class _DownloadHandler(RequestHandler):
    """``/download/<key>``: a file a page offered (unguessable key, kept a few minutes)."""

    def initialize(self, server: GuiServer) -> None:
        self.gui = server

    def get(self, key: str) -> None:
        item = self.gui.downloads.get(key)
        if item is None:
            self.set_status(404)
            self.write("no such download (they expire after a few minutes)")
            return
        filename, data, mime, _ = item
        self.set_header("Content-Type", mime)
        self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
        self.set_header("Cache-Control", "no-store")
        self.write(data)


class _StatusHandler(RequestHandler):
    def initialize(self, server: GuiServer) -> None:
        self.gui = server

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.write(json.dumps(self.gui.status(), default=str))


def scene_devices(scenes: Sequence[Scene], devices: dict[str, Any]) -> list[str]:
    """The running devices the scenes' panels read or change (every device if a counters or
    device panel names none: it then shows them all)."""
    wanted: set[str] = set()
    for scene in scenes:
        for p in scene.panels:
            if p.type in ("counters", "device_panel"):
                if not p["devices"]:
                    return sorted(devices)
                wanted |= {d["id"] for d in p["devices"]}
            elif p.type == "trend":
                wanted |= {s["device"] for s in p["series"]}
            else:
                for key in ("source", "roi_device", "average_device"):
                    value = p.options.get(key) or ""
                    wanted.add(value.rsplit(":", 1)[0] if key == "source" else value)
    if any(p.type == "detector_image" and not p["source"] for s in scenes for p in s.panels):
        return sorted(devices)  # the default preview: whichever the topology has
    return sorted(d for d in wanted if d in devices)


class _IndexHandler(RequestHandler):
    """``/``: the scenes by title (Bokeh's own index lists only the URL paths)."""

    def initialize(self, server: GuiServer) -> None:
        self.gui = server

    def get(self) -> None:
        template = Template((STATIC_DIR / "index.html").read_text())
        self.set_header("Cache-Control", "no-store")
        self.write(
            template.generate(
                prefix="",
                topology=str(self.gui.backend.topology.state.get("topology", "")),
                scenes=[(s.name, s.title) for s in self.gui.scenes],
            )
        )


class GuiServer:
    """Serve the scenes of a running topology in the browser.

    Parameters
    ----------
    topology : str or TopologyClient
        A running topology: its name, its TOML file, or a client.
    scenes : sequence of Scene or path
        Pages to serve (default: one automatic "overview" scene).
    port : int
        TCP port (0: a free one).
    address : str
        Address to bind (default 127.0.0.1: this machine only).
    read_only : bool
        Disable and refuse every change to a device.
    preview_output : str
        ``DEVICE:output`` shown by detector-image panels that name no source (default: the
        first ``PreviewAssembler`` of the topology).
    allow_origin : sequence of str
        Extra ``host:port`` origins allowed to open the websocket (for remote browsers).
    token : str, optional
        The control token (default: read from the running topology's token file).
    nice : int
        Lower the CPU priority of the GUI's threads by this much (``pulsetrain demo`` runs its
        GUI in its own process beside the pipeline's supervisor and uses 10).

    Only the devices the scenes show are polled (all of them if a panel lists every device).
    """

    def __init__(
        self,
        topology: str | TopologyClient,
        scenes: Sequence[Scene | str | Path] = (),
        *,
        port: int = 0,
        address: str = "127.0.0.1",
        read_only: bool = False,
        preview_output: str = "",
        allow_origin: Sequence[str] = (),
        token: str | None = None,
        nice: int = 0,
    ):
        client = (
            topology
            if isinstance(topology, TopologyClient)
            else TopologyClient.for_topology(str(topology), token=token)
        )
        loaded = [s if isinstance(s, Scene) else load_scene(s) for s in scenes]
        devices = client.devices()
        if preview_output and preview_output not in client.state.get("outputs", {}):
            raise ConfigurationError(
                f"--preview-output {preview_output!r} is not an output of the running topology"
            )
        self.preview_output = preview_output or next(
            (
                f"{d}:output"
                for d, info in sorted(devices.items())
                if info.get("class") == "PreviewAssembler"
            ),
            "",
        )
        if not loaded:
            loaded = [auto_scene(devices, self.preview_output)]
        names = [s.name for s in loaded]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"scene names must be unique, got {names}")
        self.scenes = loaded
        poll = min(s.poll_interval for s in loaded)
        self.nice = int(nice)
        self.backend = GuiBackend(
            client,
            read_only=read_only,
            poll_interval=poll,
            devices=scene_devices(loaded, devices),
            nice=self.nice,
        )
        self.address = address
        self.port = port or free_port(address)
        origins = {f"127.0.0.1:{self.port}", f"localhost:{self.port}", *allow_origin}
        if address not in ("127.0.0.1", "localhost", "0.0.0.0", "::"):
            origins.add(f"{address}:{self.port}")
        self.allow_origin = sorted(origins)
        self.css = (STATIC_DIR / "pulsetrain.css").read_text()
        self.sessions = 0
        self.image_pushes = 0
        #: pages opening: id(SceneSession) → time.monotonic() when served (until a first image)
        self.opening: dict[int, float] = {}
        self.image_channels = ImageChannels()
        #: key → (filename, bytes, MIME type, time.monotonic() when offered)
        self.downloads: dict[str, tuple[str, bytes, str, float]] = {}
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ------------------------------------------------------------ info
    @property
    def url(self) -> str:
        """The address of the first page."""
        return self.scene_url(self.scenes[0].name)

    def scene_url(self, name: str) -> str:
        """The address of a scene's page."""
        host = "127.0.0.1" if self.address in ("0.0.0.0", "::") else self.address
        return f"http://{host}:{self.port}/{name}"

    def status(self) -> dict[str, Any]:
        """What ``/status.json`` returns."""
        return {
            **self.backend.status(),
            "scenes": [s.name for s in self.scenes],
            "sessions_opened": self.sessions,
            "image_pushes": self.image_pushes,
            "preview_output": self.preview_output,
        }

    def add_download(self, filename: str, data: bytes, mime: str) -> str:
        """Keep a file for a page to download (for :data:`DOWNLOAD_SECONDS`); returns its URL."""
        now = time.monotonic()
        for key, item in list(self.downloads.items()):
            if now - item[3] > DOWNLOAD_SECONDS:
                self.downloads.pop(key, None)
        key = secrets.token_urlsafe(16)
        self.downloads[key] = (filename, data, mime, now)
        return f"/download/{key}"

    # ------------------------------------------------------------ serving
    def another_page_opening(self, me: int) -> bool:
        """Whether a page other than ``me`` is opening (see ``SceneSession._build_later``)."""
        now = time.monotonic()
        for key, since in list(self.opening.items()):
            if now - since > OPENING_SECONDS:  # no image came: it holds nobody up any longer
                self.opening.pop(key, None)
            elif key != me:
                return True
        return False

    def _make_document(self, scene: Scene, doc: Document) -> None:
        self.sessions += 1
        SceneSession(self, scene, doc)

    def _create_server(self) -> Server:
        apps = {
            f"/{s.name}": Application(FunctionHandler(functools.partial(self._make_document, s)))
            for s in self.scenes
        }
        server = Server(
            apps,
            port=self.port,
            address=self.address,
            allow_websocket_origin=self.allow_origin,
            extra_patterns=[
                ("/", _IndexHandler, {"server": self}),
                ("/status.json", _StatusHandler, {"server": self}),
                (r"/download/([A-Za-z0-9_-]+)", _DownloadHandler, {"server": self}),
                (
                    IMAGE_PATH,
                    ImageSocket,
                    {"channels": self.image_channels, "allow_origin": self.allow_origin},
                ),
            ],
            check_unused_sessions_milliseconds=5000,
            unused_session_lifetime_milliseconds=10000,
        )
        _load_only_needed_bundles(server)
        return server

    def start(self, timeout: float = 30.0) -> GuiServer:
        """Start polling and serve in a background thread; returns once the port listens."""
        self.backend.start()
        # The schemas the pages' editors and panels need, fetched now rather than while the
        # first page is built (control requests to busy servers delayed its first image).
        for device in self.backend.device_ids:
            self.backend.submit(self.backend.schema, device)
        self._thread = threading.Thread(target=self._serve, name="gui-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise PulsetrainError(f"the GUI server did not start within {timeout} s")
        if self._error is not None:
            raise PulsetrainError(f"the GUI server failed to start: {self._error}")
        return self

    def _serve(self) -> None:
        lower_priority(self.nice)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            self._server = self._create_server()
            self._server.start()
        except BaseException as exc:  # noqa: BLE001 - reported by start() in the caller
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        log.info("GUI serving %s", ", ".join(self.scene_url(s.name) for s in self.scenes))
        self._server.io_loop.start()
        loop.close()

    def run(self) -> None:
        """Serve in the calling thread until :meth:`stop` (or Ctrl-C)."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving and disconnect from the topology."""
        server = self._server
        if server is not None:

            def shutdown() -> None:
                server.stop()
                server.io_loop.stop()

            server.io_loop.add_callback(shutdown)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self.backend.stop()

    def __enter__(self) -> GuiServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
