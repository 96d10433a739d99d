"""The image WebSocket of the GUI: message layout, colour table, and the socket's rules."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.testing import bind_unused_port
from tornado.web import Application
from tornado.websocket import websocket_connect

from pulsetrain.gui.imagestream import (
    PATH,
    ImageChannels,
    ImageSocket,
    decode,
    encode,
    lookup_table,
)


def test_message_round_trip_keeps_arrays_aligned_and_exact():
    rng = np.random.default_rng(1)
    levels = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    values = rng.normal(size=(37, 53)).astype(np.float32)
    values[3, 4] = np.nan
    message = encode({"train": 10**12, "unit": "keV", "push": 7}, levels, values)
    meta, got_levels, got_values = decode(message)
    assert meta["train"] == 10**12 and meta["unit"] == "keV" and (meta["h"], meta["w"]) == (37, 53)
    assert meta["levels_at"] % 8 == 0 and meta["values_at"] % 8 == 0  # typed arrays in JS
    np.testing.assert_array_equal(got_levels, levels)
    np.testing.assert_array_equal(got_values, values)  # NaN where NaN
    meta, got_levels, got_values = decode(encode({}, levels))
    assert got_values is None and meta["values_at"] is None
    np.testing.assert_array_equal(got_levels, levels)
    with pytest.raises(ValueError, match="differ in shape"):
        encode({}, levels, values[:-1])


def test_colour_table_has_the_gap_at_level_0_and_the_palette_over_the_rest():
    palette = [f"#{k:02x}{k:02x}{k:02x}" for k in range(256)]
    table = lookup_table(palette, "#d0d0d0")
    assert len(table) == 256 and table[0] == "#d0d0d0"
    assert table[1:] == palette[1:]
    short = lookup_table(["#000000", "#111111", "#222222", "#333333"], "#ffffff")
    assert short[0] == "#ffffff" and short[255] == "#333333"
    assert short[1:64] == ["#ffffff"] * 63  # Bokeh's mapping: level 1-63 share the first bin
    assert short[64] == "#111111" and short[128] == "#222222"


@pytest.fixture
def server():
    """A web server answering image sockets, on an event loop of the test's own."""
    loop = asyncio.new_event_loop()
    channels = ImageChannels()
    sock, port = bind_unused_port()
    app = Application([(PATH, ImageSocket, {"channels": channels, "allow_origin": []})])

    async def start():
        from tornado.httpserver import HTTPServer

        http = HTTPServer(app)
        http.add_sockets([sock])
        return http

    http = loop.run_until_complete(start())
    yield loop, channels, port
    http.stop()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


def test_socket_sends_images_and_takes_acknowledgements(server):
    loop, channels, port = server
    acks, connects = [], []
    channel = channels.open("image-0", lambda: connects.append(1), acks.append)
    levels = np.arange(12, dtype=np.uint8).reshape(3, 4)

    async def page():
        ws = await websocket_connect(f"ws://127.0.0.1:{port}{PATH}?c={channel.token}")
        for _ in range(100):  # the server side attaches on open
            if channel.connected:
                break
            await asyncio.sleep(0.01)
        assert channel.send({"push": 1, "train": 5}, levels, None)
        message = await ws.read_message()
        meta, got, _ = decode(message)
        await ws.write_message(json.dumps({"ack": meta["push"]}))
        await ws.write_message("not json")  # ignored, not fatal
        await ws.write_message(json.dumps({"ack": 2}))
        for _ in range(100):
            if acks == [1, 2]:
                break
            await asyncio.sleep(0.01)
        ws.close()
        for _ in range(100):
            if not channel.connected:
                break
            await asyncio.sleep(0.01)
        return meta, got

    meta, got = loop.run_until_complete(page())
    assert meta["train"] == 5 and connects == [1] and acks == [1, 2]
    np.testing.assert_array_equal(got, levels)
    assert not channel.connected
    assert not channel.send({"push": 3}, levels, None)  # nobody to send to: says so


def test_socket_refuses_unknown_tokens_and_foreign_origins(server):
    loop, channels, port = server
    channel = channels.open("image-0", lambda: None, lambda n: None)
    token = channel.token

    async def unknown():
        ws = await websocket_connect(f"ws://127.0.0.1:{port}{PATH}?c=guessed")
        assert await ws.read_message() is None  # closed at once
        return ws.close_code, ws.close_reason

    code, reason = loop.run_until_complete(unknown())
    assert code == 4404 and "no such image channel" in reason

    async def foreign():
        request = HTTPRequest(
            f"ws://127.0.0.1:{port}{PATH}?c={token}",
            headers={"Origin": "http://evil.example"},
        )
        await websocket_connect(request)

    with pytest.raises(HTTPClientError, match="403"):
        loop.run_until_complete(foreign())
    assert not channel.connected
    del channel
    assert len(channels) == 0  # forgotten with its panel
