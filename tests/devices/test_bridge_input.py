"""BridgeInput: results pushed by a karabo-bridge script appear on the pipeline, if authenticated."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from _bridge_input_helpers import (
    TOOL_SOURCE,
    expected_results,
    push_results_with_karabo_bridge,
    raw_message,
    train_message,
)
from _live_helpers import LiveServer, collect, wait_until

from pulsetrain.devices.bridge_input import parse_authorized_key, write_key_pair
from pulsetrain.errors import ConfigurationError
from pulsetrain.protocol import make_meta, serialize


@pytest.fixture
def keys(tmp_path):
    """Server certificate, and a directory with the public key of the authorised tool."""
    _, server_secret = write_key_pair(tmp_path / "server", "bridge-input")
    allowed = tmp_path / "allowed"
    tool_pub, tool_secret = write_key_pair(tmp_path / "tool", "analysis-tool")
    allowed.mkdir()
    (allowed / "analysis-tool.key").write_bytes(Path(tool_pub).read_bytes())
    tool_public, tool_secret_key = zmq.auth.load_certificate(tool_secret)
    return {
        "server_key_file": str(server_secret),
        "authorized_keys_dir": str(allowed),
        "tool": {"public_key": tool_public.decode(), "secret_key": tool_secret_key.decode()},
    }


@pytest.fixture
def adapter(keys):
    live = LiveServer()
    dev = live.add(
        "BridgeInput",
        "INPUT",
        {
            "server_key_file": keys["server_key_file"],
            "authorized_keys_dir": keys["authorized_keys_dir"],
            "max_rate": 0.0,
            # room for a whole burst of the tests' trains: with the default 4, a burst of 5
            # on a loaded machine drops one by design (the queue limit is tested on its own)
            "max_queue": 16,
        },
    )
    tap = live.tap(live.output(dev))
    wait_until(lambda: live.client.get(dev, "channels.outputs.output.connections"), 10)
    info = {
        "live": live,
        "tap": tap,
        "endpoint": live.client.get(dev, "boundEndpoint"),
        "server_key": live.client.get(dev, "serverPublicKey"),
    }
    yield info
    live.close()


def nothing_arrives(tap, seconds=1.5):
    try:
        tap.get(timeout=seconds)
    except TimeoutError:
        return True
    return False


def test_authorised_karabo_bridge_script_pushes_results_onto_the_pipeline(adapter, keys):
    c = adapter["live"].client
    assert adapter["server_key"] == zmq.auth.load_certificate(keys["server_key_file"])[0].decode()
    tids = [2000 + i for i in range(5)]
    code, sent = push_results_with_karabo_bridge(
        adapter["endpoint"],
        [train_message(t) for t in tids],
        server_key=adapter["server_key"],
        **keys["tool"],
    )
    assert (code, sent) == (0, 5)
    got = collect(adapter["tap"], 5)
    assert [item.meta[TOOL_SOURCE]["timestamp.tid"] for item in got] == tids
    for item, tid in zip(got, tids):
        values = item.data[TOOL_SOURCE]
        for key, value in expected_results(tid).items():
            np.testing.assert_array_equal(values[key], value)
    wait_until(lambda: c.get("INPUT", "received") == 5, 5)
    assert c.get("INPUT", "clients") == {"analysis-tool": 5}
    assert c.get("INPUT", "sources") == [TOOL_SOURCE]
    assert c.get("INPUT", "lastTrainId") == tids[-1]
    assert c.get("INPUT", "refused") == 0


def test_without_credentials_the_script_is_refused(adapter):
    c = adapter["live"].client
    code, sent = push_results_with_karabo_bridge(
        adapter["endpoint"], [train_message(1)], send_timeout_s=1.5
    )
    assert (code, sent) == (3, 0)  # no connection ever came up
    assert nothing_arrives(adapter["tap"])
    wait_until(lambda: c.get("INPUT", "refused") >= 1, 5, "the refusal to be counted")
    assert c.get("INPUT", "received") == 0
    assert "refused" in c.get("INPUT", "lastError")


def test_an_unknown_key_is_refused_until_an_operator_allows_it(adapter):
    c = adapter["live"].client
    public, secret = zmq.curve_keypair()
    stranger = {"public_key": public.decode(), "secret_key": secret.decode()}
    code, sent = push_results_with_karabo_bridge(
        adapter["endpoint"],
        [train_message(7)],
        server_key=adapter["server_key"],
        send_timeout_s=1.5,
        **stranger,
    )
    assert sent == 0
    assert nothing_arrives(adapter["tap"])
    wait_until(lambda: c.get("INPUT", "refused") >= 1, 5)
    assert "unknown CURVE client key" in c.get("INPUT", "lastError")
    # A key of the wrong form is refused by the control plane, and the old list is kept.
    with pytest.raises(ConfigurationError, match="Z85"):
        c.set("INPUT", "authorized_keys", ["guest:not-a-key"])
    # Allowed through the (token-protected) control plane, the same script gets through.
    c.set("INPUT", "authorized_keys", [f"guest:{stranger['public_key']}"])
    code, sent = push_results_with_karabo_bridge(
        adapter["endpoint"], [train_message(8)], server_key=adapter["server_key"], **stranger
    )
    assert (code, sent) == (0, 1)
    (item,) = collect(adapter["tap"], 1)
    assert item.meta[TOOL_SOURCE]["timestamp.tid"] == 8
    wait_until(lambda: c.get("INPUT", "clients") == {"guest": 1}, 5)
    # Revoked again: refused, and nothing more from it reaches the pipeline.
    c.set("INPUT", "authorized_keys", [])
    _, sent = push_results_with_karabo_bridge(
        adapter["endpoint"],
        [train_message(9)],
        server_key=adapter["server_key"],
        send_timeout_s=1.5,
        **stranger,
    )
    assert sent == 0
    assert nothing_arrives(adapter["tap"])


def test_malformed_messages_are_counted_and_the_next_good_train_passes(adapter, keys):
    c = adapter["live"].client
    header = msgpack.packb(
        {"source": "X", "content": "array", "path": "a", "dtype": "<f4", "shape": [1000]}
    )
    messages = [
        raw_message([b"this is not msgpack \xc1"]),  # protocol 1.0 frame that is garbage
        raw_message([b"\x81\xa1a\x01", b"\x80", b"extra"]),  # odd frame count: truncated
        raw_message(
            [
                msgpack.packb({"source": "X", "content": "msgpack", "metadata": {}}),
                msgpack.packb({}),
                header,
                b"\x00" * 12,
            ]
        ),  # shape does not fit buffer
        train_message(41, no_train_id=True),  # well-formed, but no train ID
        train_message(42),
    ]
    code, sent = push_results_with_karabo_bridge(
        adapter["endpoint"], messages, server_key=adapter["server_key"], **keys["tool"]
    )
    assert (code, sent) == (0, 5)
    (item,) = collect(adapter["tap"], 1)
    assert item.meta[TOOL_SOURCE]["timestamp.tid"] == 42
    wait_until(lambda: c.get("INPUT", "received") == 1, 5)
    assert c.get("INPUT", "malformed") == 3
    assert c.get("INPUT", "rejected") == 1
    assert c.get("INPUT", "state") == "MONITORING"
    assert nothing_arrives(adapter["tap"], 0.5)


def test_allowed_sources_and_protocol_1(adapter, keys):
    c = adapter["live"].client
    c.set("INPUT", "allowed_sources", ["SPB_EXTERNAL/*"])
    messages = [
        train_message(5, source="SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"),  # impersonation
        train_message(6, protocol="1.0"),
    ]
    _, sent = push_results_with_karabo_bridge(
        adapter["endpoint"], messages, server_key=adapter["server_key"], **keys["tool"]
    )
    assert sent == 2
    (item,) = collect(adapter["tap"], 1)
    assert item.meta[TOOL_SOURCE]["timestamp.tid"] == 6
    np.testing.assert_array_equal(
        item.data[TOOL_SOURCE]["result.score"], expected_results(6)["result.score"]
    )
    wait_until(lambda: c.get("INPUT", "rejected") == 1, 5)
    assert "not in allowed_sources" in c.get("INPUT", "lastError")


def test_flooding_is_rate_limited_and_counted(keys):
    live = LiveServer()
    try:
        dev = live.add(
            "BridgeInput",
            "FLOOD",
            {
                "server_key_file": keys["server_key_file"],
                "authorized_keys_dir": keys["authorized_keys_dir"],
                "max_rate": 5.0,
                "max_queue": 2,
            },
        )
        tap = live.tap(live.output(dev), queue=100)
        wait_until(lambda: live.client.get(dev, "channels.outputs.output.connections"), 10)
        t0 = time.monotonic()
        _, sent = push_results_with_karabo_bridge(
            live.client.get(dev, "boundEndpoint"),
            [train_message(i) for i in range(60)],
            server_key=live.client.get(dev, "serverPublicKey"),
            **keys["tool"],
        )
        assert sent == 60
        wait_until(
            lambda: live.client.get(dev, "received") + live.client.get(dev, "dropped") == 60,
            10,
            "every message to be accounted for",
        )
        elapsed = time.monotonic() - t0
        received = live.client.get(dev, "received")
        assert received <= 2 + 5.0 * elapsed + 1
        assert live.client.get(dev, "dropped") >= 60 - received
        assert len(collect(tap, received)) == received
    finally:
        live.close()


def test_connect_mode_reads_a_curve_bridge_server(keys):
    """The device pulls (REQ) from a tool's CURVE REP server, checking the tool's key."""
    ctx = zmq.Context()
    tool_public, tool_secret = zmq.curve_keypair()
    rep = ctx.socket(zmq.REP)
    rep.curve_server = True
    rep.curve_publickey, rep.curve_secretkey = tool_public, tool_secret
    rep.linger = 0
    port = rep.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    served = []

    def serve():
        tid = 100
        while not stop.is_set():
            if rep.poll(100):
                assert rep.recv() == b"next"
                src = TOOL_SOURCE
                rep.send_multipart(
                    serialize({src: {"result.x": np.arange(3)}}, {src: make_meta(src, tid)})
                )
                served.append(tid)
                tid += 1

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    live = LiveServer()
    try:
        dev = live.add(
            "BridgeInput",
            "PULLER",
            {
                "mode": "connect",
                "pattern": "REQ",
                "endpoint": f"tcp://127.0.0.1:{port}",
                "tool_public_key": tool_public.decode(),
                "max_rate": 0.0,
            },
        )
        tap = live.tap(live.output(dev))
        got = collect(tap, 3)
        tids = [item.meta[TOOL_SOURCE]["timestamp.tid"] for item in got]
        assert tids == sorted(tids) and set(tids) <= set(served)
        # Without the tool's key there is no authentication: the device refuses to run.
        live.client.instantiate("BridgeInput", "NOKEY", {"mode": "connect"})
        assert live.client.get("NOKEY", "state") == "ERROR"
        assert "tool_public_key" in live.client.get("NOKEY", "status")
    finally:
        live.close()
        stop.set()
        thread.join(2)
        ctx.destroy(linger=0)


def test_parse_authorized_key():
    public, _ = zmq.curve_keypair()
    key = public.decode()
    assert parse_authorized_key(f"alice:{key}") == ("alice", key)
    assert parse_authorized_key(key) == (key[:8], key)
    with pytest.raises(ConfigurationError):
        parse_authorized_key("alice:short")


def test_revoking_a_key_cuts_off_an_open_connection(adapter):
    c = adapter["live"].client
    public, secret = zmq.curve_keypair()
    c.set("INPUT", "authorized_keys", [f"live-tool:{public.decode()}"])
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.curve_serverkey = adapter["server_key"].encode()
    push.curve_publickey, push.curve_secretkey = public, secret
    push.linger = 0
    push.connect(adapter["endpoint"])
    try:
        push.send_multipart(
            serialize({TOOL_SOURCE: {"x": 1}}, {TOOL_SOURCE: make_meta(TOOL_SOURCE, 1)})
        )
        (item,) = collect(adapter["tap"], 1)
        assert item.data[TOOL_SOURCE]["x"] == 1
        c.set("INPUT", "authorized_keys", [])
        push.send_multipart(
            serialize({TOOL_SOURCE: {"x": 2}}, {TOOL_SOURCE: make_meta(TOOL_SOURCE, 2)})
        )
        wait_until(lambda: c.get("INPUT", "rejected") == 1, 5)
        assert "no longer allowed" in c.get("INPUT", "lastError")
        assert nothing_arrives(adapter["tap"], 0.5)
    finally:
        ctx.destroy(linger=0)
