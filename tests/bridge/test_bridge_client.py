"""pulsetrain.bridge.Client: malformed messages, timeouts and recovery, zero copy, API."""

from __future__ import annotations

import threading

import msgpack
import numpy as np
import pytest
import zmq
from _bridge_helpers import SOURCE, check_train, small_train, wait_until

from pulsetrain.bridge import BridgeServer, Client
from pulsetrain.errors import ChannelError, ConfigurationError, ProtocolError
from pulsetrain.protocol import make_meta, serialize

LOCAL = "tcp://127.0.0.1:0"


def good(i: int) -> list[bytes]:
    return [bytes(f) for f in serialize(*small_train(i))]


def _set_header(frames: list[bytes], i: int, **changes) -> list[bytes]:
    header = msgpack.unpackb(frames[i])
    header.update(changes)
    return [*frames[:i], msgpack.packb(header), *frames[i + 1 :]]


# (malformed message, what the ProtocolError must say)
MALFORMED = [
    (good(0)[:-1], "truncated message"),
    (_set_header(good(0), 2, dtype="float17"), "unknown dtype 'float17'"),
    (_set_header(good(0), 2, shape=[3, 3]), "needs 36 bytes but the buffer has"),
    ([b"\xc1 this is not msgpack"], "not valid msgpack"),
    (good(0)[2:], "arrived before the source's msgpack header"),  # frames missing
    ([b"\x92\x01\x02", b"x"], "header frame 0 is a list"),
    (_set_header(good(0), 0, metadata=[1, 2]), "metadata is a list, not a map"),
    (_set_header(good(0), 0, metadata="tid 0"), "metadata is a str, not a map"),
]


# ----------------------------------------------------------------------------------------------
# A rogue server
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sock", ["REQ", "PULL", "SUB"])
def test_malformed_messages_raise_and_the_next_train_arrives(context, sock):
    server_type = {"REQ": zmq.REP, "PULL": zmq.PUSH, "SUB": zmq.XPUB}[sock]
    rogue = context.socket(server_type)
    port = rogue.bind_to_random_port("tcp://127.0.0.1")
    with Client(f"tcp://127.0.0.1:{port}", sock, timeout=10) as client:
        result: list = []

        def receive_all() -> None:
            for _ in MALFORMED:
                try:
                    client.next()
                except ProtocolError as exc:
                    result.append(str(exc))
                else:
                    result.append(None)
            result.append(client.next())

        if sock == "SUB":  # a publisher only reaches subscribers already subscribed
            assert rogue.poll(10_000)
            assert rogue.recv() == b"\x01"
        receiver = threading.Thread(target=receive_all)
        receiver.start()
        for frames, _ in [*MALFORMED, (good(1), None)]:
            if sock == "REQ":
                assert rogue.poll(10_000)
                assert rogue.recv() == b"next"
            rogue.send_multipart(frames)
        receiver.join(20)
        assert not receiver.is_alive()
        for (_, expected), message in zip(MALFORMED, result):
            assert message is not None and expected in message
        check_train(*result[-1], 1)
        assert client.protocol_errors == len(MALFORMED)
        assert client.received == len(MALFORMED) + 1


def test_error_reply_of_a_server_is_a_protocol_error(context):
    """What karabo-bridge-py's server answers to a bad request is not a train."""
    rogue = context.socket(zmq.REP)
    port = rogue.bind_to_random_port("tcp://127.0.0.1")
    with Client(f"tcp://127.0.0.1:{port}", timeout=10) as client:
        t = threading.Thread(target=lambda: (rogue.recv(), rogue.send(b"Error: bad request")))
        t.start()
        with pytest.raises(ProtocolError, match="not valid msgpack"):
            client.next()
        t.join(10)


# ----------------------------------------------------------------------------------------------
# Timeouts
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern,sock", [("REP", "REQ"), ("PUSH", "PULL"), ("PUB", "SUB")])
def test_timeout_then_recovery(pattern, sock):
    server = BridgeServer(LOCAL, pattern)
    with server, Client(server.endpoint, sock, timeout=0.2) as client:
        for _ in range(2):
            with pytest.raises(TimeoutError, match="no data received from"):
                client.next()
        if pattern == "PUB":
            assert wait_until(lambda: server.subscribers == 1)
        server.feed(*small_train(1))
        client.timeout = 10
        check_train(*client.next(), 1)
        server.feed(*small_train(2))
        check_train(*client.next(), 2)


def test_req_timeout_keeps_the_request_so_no_train_is_skipped():
    with BridgeServer(LOCAL, "REP") as server, Client(server.endpoint, timeout=0.2) as client:
        with pytest.raises(TimeoutError):
            client.next()
        assert wait_until(lambda: server.pending_requests == 1)
        for i in range(3):
            server.feed(*small_train(i))
        client.timeout = 10
        for i in range(3):
            check_train(*client.next(), i)
        assert wait_until(lambda: server.sent == 3)


def test_req_recovers_when_the_server_restarts_during_a_request():
    """The pending request dies with the server; the client asks the new server again."""
    first = BridgeServer(LOCAL, "REP").start()
    endpoint = first.endpoint
    with Client(endpoint, timeout=0.3) as client:
        with pytest.raises(TimeoutError):
            client.next()
        assert wait_until(lambda: first.pending_requests == 1)
        first.stop()
        with BridgeServer(endpoint, "REP") as second:
            second.feed(*small_train(5))
            client.timeout = 20
            check_train(*client.next(), 5)
            second.feed(*small_train(6))
            check_train(*client.next(), 6)


def test_client_waits_for_a_server_started_later():
    port_probe = BridgeServer(LOCAL, "REP")
    endpoint = port_probe.endpoint
    port_probe.stop()
    with Client(endpoint, timeout=0.2) as client:
        with pytest.raises(TimeoutError):
            client.next()
        with BridgeServer(endpoint, "REP") as server:
            server.feed(*small_train(3))
            client.timeout = 20
            check_train(*client.next(), 3)


# ----------------------------------------------------------------------------------------------
# Zero copy and API
# ----------------------------------------------------------------------------------------------


def test_received_arrays_are_views_on_the_zmq_frames():
    image = np.random.default_rng(0).random((8, 512, 128), dtype=np.float32)
    with BridgeServer(LOCAL, "PUSH") as server:
        server.feed({SOURCE: {"image.data": image}}, {SOURCE: make_meta(SOURCE, 1)})
        with Client(server.endpoint, "PULL", timeout=10) as client:
            data, _ = client.next()
    array = data[SOURCE]["image.data"]
    assert np.array_equal(array, image)
    base = array
    while not isinstance(base, memoryview):
        base = base.base
    frame = base.obj
    assert isinstance(frame, zmq.Frame)
    view = np.frombuffer(frame.buffer, np.uint8)
    assert np.shares_memory(array, view)
    assert array.__array_interface__["data"][0] == view.__array_interface__["data"][0]


def test_iteration_and_context_manager(context):
    with BridgeServer(LOCAL, "PUSH", context=context) as server:
        for i in range(3):
            server.feed(*small_train(i))
        with Client(server.endpoint, "PULL", timeout=10, context=context) as client:
            for i, (data, meta) in zip(range(3), client):
                check_train(data, meta, i)
        with pytest.raises(ChannelError, match="closed"):
            client.next()
    # a context passed in is the caller's: still usable
    context.socket(zmq.PAIR).close()


def test_invalid_arguments():
    with pytest.raises(ConfigurationError, match="socket type 'DEALER'"):
        Client("tcp://127.0.0.1:5555", "DEALER")
    with pytest.raises(ConfigurationError, match="serialisation 'pickle'"):
        Client("tcp://127.0.0.1:5555", ser="pickle")
    with pytest.raises(ChannelError, match="cannot connect"):
        Client("nonsense://nowhere")
    client = Client("tcp://127.0.0.1:5555", "sub")  # case-insensitive, as a convenience
    assert client.sock_type == "SUB"
    client.close()
    client.close()  # idempotent


def test_timeout_can_be_changed_and_none_waits():
    with BridgeServer(LOCAL, "PUSH") as server, Client(server.endpoint, "PULL") as client:
        assert client.timeout is None
        client.timeout = 0.1
        with pytest.raises(TimeoutError):
            client.next()
        client.timeout = None  # wait as long as it takes
        server.feed(*small_train(8))
        check_train(*client.next(), 8)
        with pytest.raises(ConfigurationError, match="timeout"):
            client.timeout = -1
