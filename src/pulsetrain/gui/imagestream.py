"""The detector image's own way to the page: one binary WebSocket per image panel and a canvas.

Why not a Bokeh data source: every change of a figure's data makes BokehJS apply a JSON patch
and repaint the whole figure — axes, tick labels (measured with the page's text styles), the
overlays — and often lay it out again.  Profiled in Chromium at 10 images per second, that was
~85 % of a detector page's time; colour-mapping and drawing the pixels was ~1 %.  So the image
travels on a WebSocket of its own as raw bytes and is drawn on a canvas placed *under* the
Bokeh figure's frame (the figure's background is transparent).  The page hands that canvas to a
Web Worker (``static/image-render.js``; ``static/image.js`` places it), which receives,
colour-maps, draws and acknowledges each image on a thread of its own: while BokehJS keeps the
page's main thread busy redrawing trends and histograms, images still reach the screen (with
two analysis pages on 2 cores, the slower page got 6-9 images a second when the main thread
drew them).  The figure
keeps what it is good at and repaints only when they change: axes in mm or pixels, the beam
centre, q rings, ROI boxes drawn with the mouse, zoom and pan, and the hover read-out (which
reads the values of the image on the canvas).

A message (little-endian)::

    uint32 N | N bytes of JSON metadata | padding | uint8 levels (h*w) | padding | float32 values

The metadata says where the arrays start (``levels_at``, ``values_at``, 8-byte aligned) and what
the image is (``train``, ``pulse``, ``kind``, ``unit``, levels ``vmin``/``vmax``/``scale``,
``push``: the image's number).  Level 0 is "no detector pixel".  The page answers each message
with ``{"ack": push}`` once it has drawn it: the panel sends a new image only while at most
one is unanswered (two in flight at most), so a page short of CPU gets fewer images, never a
queue of stale ones.

The WebSocket is found by a random token that only the page's own HTML carries; it is served by
the GUI's web server on :data:`PATH` and answers only origins the GUI allows.
"""

from __future__ import annotations

import json
import logging
import secrets
import struct
import weakref
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from tornado.websocket import WebSocketClosedError, WebSocketHandler

__all__ = [
    "PATH",
    "ImageChannel",
    "ImageChannels",
    "ImageSocket",
    "decode",
    "encode",
    "lookup_table",
]

log = logging.getLogger(__name__)

#: Where the GUI's web server answers image WebSockets (``?c=TOKEN``).
PATH = "/image-stream"


def _aligned(n: int, to: int = 8) -> int:
    return (n + to - 1) // to * to


def encode(meta: dict[str, Any], levels: np.ndarray, values: np.ndarray | None = None) -> bytes:
    """One message: ``meta`` as JSON, then the uint8 ``levels`` and the float32 ``values``.

    Parameters
    ----------
    meta : dict
        JSON-serialisable description of the image (train, pulse, unit, ...).
    levels : numpy.ndarray
        ``(h, w)`` uint8 colour levels (0: no detector pixel).
    values : numpy.ndarray, optional
        ``(h, w)`` values in data units, for the hover read-out.
    """
    levels = np.ascontiguousarray(levels, dtype=np.uint8)
    h, w = levels.shape
    if values is not None:
        values = np.ascontiguousarray(values, dtype="<f4")
        if values.shape != levels.shape:
            raise ValueError(f"values {values.shape} and levels {levels.shape} differ in shape")
    meta = {**meta, "h": int(h), "w": int(w), "levels_at": 0, "values_at": None}
    # The offsets depend on the header's length, which depends on the offsets' digits: give the
    # header room for them once, then fill them in.
    probe = json.dumps({**meta, "levels_at": 10**9, "values_at": 10**9}).encode()
    levels_at = _aligned(4 + len(probe))
    values_at = _aligned(levels_at + levels.nbytes) if values is not None else None
    header = json.dumps({**meta, "levels_at": levels_at, "values_at": values_at}).encode()
    out = bytearray(values_at + values.nbytes if values is not None else levels_at + levels.nbytes)
    out[0:4] = struct.pack("<I", len(header))
    out[4 : 4 + len(header)] = header
    out[levels_at : levels_at + levels.nbytes] = levels.tobytes()
    if values is not None:
        out[values_at : values_at + values.nbytes] = values.tobytes()
    return bytes(out)


def decode(message: bytes) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
    """``(meta, levels, values)`` of a message made by :func:`encode` (what the page reads)."""
    (n,) = struct.unpack_from("<I", message)
    meta = json.loads(message[4 : 4 + n])
    shape = (meta["h"], meta["w"])
    levels = np.frombuffer(message, np.uint8, shape[0] * shape[1], meta["levels_at"])
    values = None
    if meta["values_at"] is not None:
        values = np.frombuffer(message, "<f4", shape[0] * shape[1], meta["values_at"])
        values = values.reshape(shape)
    return meta, levels.reshape(shape), values


def lookup_table(palette: Sequence[str], gap: str) -> list[str]:
    """The 256 colours of levels 0..255: level 0 ``gap``, the rest ``palette`` spread evenly.

    The same mapping as Bokeh's ``LinearColorMapper(low=0, high=255)`` over ``[gap, *palette[1:]]``,
    so that the canvas, the colour bar and a saved PNG agree.
    """
    colours = [gap, *palette[1:]]
    n = len(colours)
    return [colours[min(n - 1, int(level / 255 * n))] for level in range(256)]


class ImageChannel:
    """The image WebSocket of one panel on one page (at most one browser connection).

    Parameters
    ----------
    key : str
        The panel's name in the page (``image-0``...).
    on_connect : callable
        Called (on the web server's thread) when the page connects or reconnects.
    on_ack : callable
        Called with the number of an image the page has drawn.
    """

    def __init__(self, key: str, on_connect: Callable[[], None], on_ack: Callable[[int], None]):
        self.key = key
        self.token = secrets.token_urlsafe(18)
        self.socket: WebSocketHandler | None = None
        self._on_connect = on_connect
        self._on_ack = on_ack

    @property
    def connected(self) -> bool:
        return self.socket is not None

    def attach(self, socket: WebSocketHandler) -> None:
        if self.socket is not None and self.socket is not socket:
            self.socket.close(4000, "replaced by a newer connection")
        self.socket = socket
        self._on_connect()

    def detach(self, socket: WebSocketHandler) -> None:
        if self.socket is socket:
            self.socket = None

    def acked(self, n: int) -> None:
        self._on_ack(n)

    def send(self, meta: dict[str, Any], levels: np.ndarray, values: np.ndarray | None) -> bool:
        """Send one image; False if no page is connected (nothing was sent)."""
        socket = self.socket
        if socket is None:
            return False
        try:
            socket.write_message(encode(meta, levels, values), binary=True)
        except WebSocketClosedError:
            self.detach(socket)
            return False
        return True


class ImageChannels:
    """The channels of all open pages, by token (forgotten with their panels)."""

    def __init__(self) -> None:
        self._by_token: weakref.WeakValueDictionary[str, ImageChannel] = (
            weakref.WeakValueDictionary()
        )

    def open(
        self, key: str, on_connect: Callable[[], None], on_ack: Callable[[int], None]
    ) -> ImageChannel:
        channel = ImageChannel(key, on_connect, on_ack)
        self._by_token[channel.token] = channel
        return channel

    def get(self, token: str) -> ImageChannel | None:
        return self._by_token.get(token)

    def __len__(self) -> int:
        return len(self._by_token)


class ImageSocket(WebSocketHandler):
    """``PATH?c=TOKEN``: the page's end of an :class:`ImageChannel`."""

    def initialize(self, channels: ImageChannels, allow_origin: Sequence[str]) -> None:
        self.channels = channels
        self.allow_origin = set(allow_origin)
        self.channel: ImageChannel | None = None

    def check_origin(self, origin: str) -> bool:
        host = urlsplit(origin).netloc.lower()
        return host in self.allow_origin or host == self.request.host.lower()

    def open(self, *args: Any, **kwargs: Any) -> None:
        channel = self.channels.get(self.get_query_argument("c", ""))
        if channel is None:
            self.close(4404, "no such image channel (the page was closed or the GUI restarted)")
            return
        self.set_nodelay(True)
        self.channel = channel
        channel.attach(self)

    def on_message(self, message: str | bytes) -> None:
        if self.channel is None:
            return
        try:
            n = int(json.loads(message)["ack"])
        except (ValueError, TypeError, KeyError):
            log.debug("image channel %s: ignored message %r", self.channel.key, message[:80])
            return
        self.channel.acked(n)

    def on_close(self) -> None:
        if self.channel is not None:
            self.channel.detach(self)
