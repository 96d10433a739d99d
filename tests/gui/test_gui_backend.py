"""The GUI backend against a running pipeline: taps, polling, token-guarded writes."""

from __future__ import annotations

import numpy as np
import pytest
from gui_pipeline import MOTOR, PREVIEW, PREVIEW_OUTPUT, PREVIEW_SOURCE, PULSES

from pulsetrain.errors import AuthenticationError, DeviceError
from pulsetrain.gui.backend import GuiBackend, flatten_numeric, lookup
from pulsetrain.runtime.control import TopologyClient
from waiting import wait_until


@pytest.fixture
def backend(pipeline):
    _, path = pipeline
    b = GuiBackend(TopologyClient.for_topology(str(path)), poll_interval=0.2).start()
    yield b
    b.stop()


def test_tap_keeps_the_latest_preview_with_the_drop_policy(backend, pipeline):
    sup, _ = pipeline
    tap = backend.tap(PREVIEW_OUTPUT)
    first = tap.wait(0, timeout=10)
    later = tap.wait(first.seq + 5, timeout=10)
    assert later.train_id > first.train_id
    values = later.data[PREVIEW_SOURCE]
    images = values["preview.images"]
    assert images.dtype == np.uint8 and images.shape[0] == PULSES
    assert later.latency is not None and 0 <= later.latency < 5

    # the preview device sees the GUI as a 'drop' input: a slow GUI never slows it
    def gui_connection():
        conns = sup.get(PREVIEW, "channels.outputs.output.connections")
        return [c for c in conns if c["remote_id"].startswith("gui-")]

    conns = wait_until(gui_connection, what="GUI connection listed")
    assert conns[0]["on_slowness"] == "drop"
    with pytest.raises(DeviceError, match="no output"):
        backend.tap("NO/SUCH:output")


def test_polling_keeps_states_and_history(backend):
    wait_until(lambda: backend.polls >= 3, what="three polls")
    snap = backend.snapshot(PREVIEW)
    assert snap["state"] == "PROCESSING" and "channels" in snap
    assert backend.value(PREVIEW, "channels.inputs.input.on_slowness") == "drop"
    t, y = backend.history(PREVIEW, "trainsIn")
    assert len(t) >= 3 and np.all(np.diff(t) > 0) and y[-1] > y[0]
    assert backend.schema(MOTOR)["properties"]["targetPosition"]["access"] == "reconfigurable"
    status = backend.status()
    assert status["devices"][MOTOR]["state"] == "ON"


def test_writes_need_the_token_and_are_refused_read_only(backend, pipeline):
    sup, path = pipeline
    token = backend.topology.token
    assert backend.check_token(token) and not backend.check_token("nope")
    with pytest.raises(AuthenticationError, match="enter the control token"):
        backend.set_property(MOTOR, "velocity", 2.0, None)
    with pytest.raises(AuthenticationError, match="wrong control token"):
        backend.set_property(MOTOR, "velocity", 2.0, "not-the-token")
    assert backend.set_property(MOTOR, "velocity", 2.0, token) == 2.0
    assert sup.get(MOTOR, "velocity") == 2.0
    read_only = GuiBackend(TopologyClient.for_topology(str(path)), read_only=True)
    try:
        with pytest.raises(AuthenticationError, match="read-only"):
            read_only.set_property(MOTOR, "velocity", 3.0, token)
        with pytest.raises(AuthenticationError, match="read-only"):
            read_only.call_slot(MOTOR, "move", token)
    finally:
        read_only.stop()
    assert sup.get(MOTOR, "velocity") == 2.0
    sup.set(MOTOR, "velocity", 1.0)


def test_flatten_and_lookup():
    config = {"a": 1, "b": {"p50": 0.5, "n": 3, "name": "x"}, "c": [1, 2], "d": True}
    assert dict(flatten_numeric(config)) == {"a": 1.0, "b.p50": 0.5, "b.n": 3.0, "d": 1.0}
    assert lookup(config, "b.p50") == 0.5 and lookup(config, "b.zz") is None
    assert lookup(None, "a") is None
