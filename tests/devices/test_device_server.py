"""Devices hosted by a server, driven through the control plane."""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np
import pytest

from pulsetrain.errors import (
    AuthenticationError,
    ConfigurationError,
    DeviceError,
    PropertyError,
    ProtocolError,
)
from pulsetrain.protocol import make_meta
from pulsetrain.runtime import control
from pulsetrain.runtime.channels import InputChannel, OutputChannel
from pulsetrain.runtime.device import Device, Property, register_device_class, slot
from pulsetrain.runtime.server import DeviceServer
from waiting import wait_until

TOKEN = "test-token"


class Doubler(Device):
    """Multiplies ``v`` by ``factor``; raises when asked to."""

    factor = Property(float, 2.0, minimum=0.0, maximum=10.0, unit="")
    mode = Property(str, "fast", options=("fast", "slow"))
    label = Property(str, "x", access="init")
    processed = Property(int, 0, access="readonly")
    inputs: ClassVar[dict] = {"input": {"on_slowness": "wait"}}
    outputs = ("output",)

    def on_data(self, data, meta, channel):
        if data["S"].get("explode"):
            raise RuntimeError("explode requested")
        if data["S"].get("hang"):
            time.sleep(data["S"]["hang"])
        self.count("processed")
        self.write("output", {"S": {"v": data["S"]["v"] * self.factor}}, meta)

    @slot(allowed_states=("ON",))
    def triple(self):
        self.factor = self.factor * 3

    @slot
    def fail(self):
        raise ValueError("slot failed on purpose")


register_device_class(Doubler)


@pytest.fixture
def server():
    srv = DeviceServer("test", token=TOKEN, read_token="read-only", request_timeout=1.0).start()
    yield srv
    srv.close()


@pytest.fixture
def client(server):
    c = control.Client(server.control_endpoint, token=TOKEN)
    yield c
    c.close()


def wire(client, device_id):
    """Connect a source output to the device and a sink input to its output."""
    src = OutputChannel("src:out")
    client.request("connect", device=device_id, input="input", endpoint=src.endpoints[0])
    sink = InputChannel("sink:in", on_slowness="wait")
    sink.connect(client.get(device_id, "channels.outputs.output.endpoints")[0])
    assert src.wait_for_inputs(1, 10)
    client.wait_for(device_id, "channels.outputs.output.connections", lambda c: len(c) >= 1, 10)
    return src, sink


def test_properties_are_validated_and_refusals_keep_the_old_value(client):
    client.instantiate("Doubler", "d/1", {"factor": 1.5, "label": "a"})
    assert client.get("d/1", "factor") == 1.5
    with pytest.raises(PropertyError, match="expected a value of type float"):
        client.set("d/1", "factor", "lots")
    with pytest.raises(PropertyError, match="above the maximum"):
        client.set("d/1", "factor", 11)
    with pytest.raises(PropertyError, match="not one of"):
        client.set("d/1", "mode", "medium")
    with pytest.raises(PropertyError, match="init"):
        client.set("d/1", "label", "b")
    with pytest.raises(PropertyError, match="readonly"):
        client.set("d/1", "processed", 5)
    with pytest.raises(PropertyError, match="unknown property"):
        client.set("d/1", "nope", 1)
    assert client.get("d/1", "factor") == 1.5
    assert client.get("d/1", "label") == "a"
    assert client.set("d/1", "factor", 3) == 3.0
    assert client.get("d/1", "factor") == 3.0


def test_bad_initial_configuration_is_refused(client):
    with pytest.raises(ConfigurationError, match="unknown property"):
        client.instantiate("Doubler", "d/bad", {"colour": "red"})
    with pytest.raises(PropertyError, match="below the minimum"):
        client.instantiate("Doubler", "d/bad", {"factor": -1})
    assert "d/bad" not in client.list()


def test_slots_and_states(client):
    client.instantiate("Doubler", "d/2")
    client.call("d/2", "triple")
    assert client.get("d/2", "factor") == 6.0
    with pytest.raises(DeviceError, match="no slot"):
        client.call("d/2", "quadruple")
    with pytest.raises(DeviceError, match="slot failed on purpose"):
        client.call("d/2", "fail")
    assert client.get("d/2", "state") == "ERROR"
    with pytest.raises(DeviceError, match="not allowed in state ERROR"):
        client.call("d/2", "triple")
    client.call("d/2", "reset")
    assert client.get("d/2", "state") == "ON"


def test_tokens(server, client):
    client.instantiate("Doubler", "d/3")
    for token in ("", "wrong"):
        with pytest.raises(AuthenticationError, match="refused"):
            control.Client(server.control_endpoint, token=token).get("d/3", "factor")
    with pytest.raises(AuthenticationError, match="refused"):
        control.Client(server.control_endpoint, token="wrong").set("d/3", "factor", 1.0)
    reader = control.Client(server.control_endpoint, token="read-only")
    assert reader.get("d/3", "factor") == 2.0
    with pytest.raises(AuthenticationError, match="read-only"):
        reader.set("d/3", "factor", 1.0)
    assert client.get("d/3", "factor") == 2.0
    assert server.refused >= 4


def test_exception_in_device_code_sets_error_and_others_keep_running(client):
    client.instantiate("Doubler", "d/a")
    client.instantiate("Doubler", "d/b")
    src_a, sink_a = wire(client, "d/a")
    src_b, sink_b = wire(client, "d/b")
    src_a.write({"S": {"v": 1, "explode": True}}, {"S": make_meta("S", 1)})
    client.wait_for("d/a", "state", "ERROR", timeout=5)
    assert "explode requested" in client.get("d/a", "status")
    src_b.write({"S": {"v": 5}}, {"S": make_meta("S", 2)})
    assert sink_b.get(timeout=5).data["S"]["v"] == 10.0
    # the failed device still processes the next train and the server answers
    src_a.write({"S": {"v": 4}}, {"S": make_meta("S", 3)})
    assert sink_a.get(timeout=5).data["S"]["v"] == 8.0
    assert client.get("d/a", "errorCount") == 1
    assert client.ping()["server"] == "test"
    for ch in (src_a, src_b, sink_a, sink_b):
        ch.close()


def test_stuck_device_does_not_block_the_control_plane(client):
    client.instantiate("Doubler", "d/stuck")
    client.instantiate("Doubler", "d/fine")
    src, sink = wire(client, "d/stuck")
    src.write({"S": {"v": 1, "hang": 3.0}}, {"S": make_meta("S", 1)})
    # trainsIn is counted on the device's thread just before on_data: it is hanging from then
    wait_until(lambda: client.get("d/stuck", "trainsIn") == 1, what="the device to take the train")
    t0 = time.perf_counter()
    with pytest.raises(DeviceError, match="busy"):
        client.set("d/stuck", "factor", 1.0)
    assert time.perf_counter() - t0 < 2.5  # the request timeout, not the hang
    t0 = time.perf_counter()
    assert client.set("d/fine", "factor", 4.0) == 4.0
    assert client.get("d/stuck", "state") == "ON"
    assert time.perf_counter() - t0 < 0.5
    src.close()
    sink.close()


def test_malformed_requests_get_errors_and_the_server_survives(server, client):
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(server.control_endpoint)
    for junk in (
        b"\xc1\xc1",
        control.pack([1, 2]),
        control.pack({"op": "explode"}),
        control.pack({"op": "get", "token": TOKEN, "device": "nobody", "key": "x"}),
    ):
        sock.send_multipart([b"", junk])
        assert sock.poll(5000), "no reply to a malformed request"
        reply = control.unpack(sock.recv_multipart()[-1])
        assert reply["ok"] is False and reply["error"]
    sock.close(0)
    assert client.ping()["server"] == "test"


def test_arrays_and_events(server, client):
    client.instantiate("Doubler", "d/ev")
    events = control.subscribe(server.events_endpoint, ["d/ev"])
    beat = next(events)  # heartbeats arrive every second
    assert beat["device"] == "__heartbeat__" and "d/ev" in beat["devices"]
    client.set("d/ev", "factor", 7.0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ev = next(events)
        if ev["device"] == "d/ev" and ev["key"] == "factor":
            assert ev["value"] == 7.0
            break
    else:
        pytest.fail("no property-change event")
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(control.unpack(control.pack({"a": arr}))["a"], arr)
    with pytest.raises(ProtocolError):
        control.unpack(b"\xc1")
