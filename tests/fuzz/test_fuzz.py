"""Fuzzing: malformed and random messages get a clear error each time, never a crash or hang.

Each fuzzer runs ``FUZZ_CASES`` cases (10 000 by default, the acceptance figure; CI runs the
same).  Inputs mix pure random bytes with structured near-misses (valid msgpack of the wrong
shape, real messages with fields mutated), which is where decoders actually break.
"""

from __future__ import annotations

import os
import time

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pulsetrain import protocol
from pulsetrain.errors import ProtocolError, PulsetrainError
from pulsetrain.runtime import control

FUZZ_CASES = int(os.environ.get("PULSETRAIN_FUZZ_CASES", "10000"))
HYPOTHESIS_CASES = int(os.environ.get("PULSETRAIN_HYPOTHESIS_CASES", "500"))
SETTINGS = settings(max_examples=HYPOTHESIS_CASES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=64),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10) | st.binary(max_size=5), children, max_size=5),
    max_leaves=20,
)

GOOD = protocol.serialize(
    {"SRC": {"image.data": np.arange(24, dtype=np.uint16).reshape(2, 3, 4), "x": 1}},
    {"SRC": protocol.make_meta("SRC", 1)},
)


def mutate(rng: np.random.Generator, frames: list[bytes]) -> list[bytes]:
    """A near-miss of a valid message: flipped/truncated/extended bytes, dropped/duplicated/
    swapped frames, or a frame replaced by random bytes (what a coverage fuzzer would try)."""
    frames = [bytearray(f) for f in frames]
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(0, 7))
        if not frames:
            frames.append(bytearray(rng.bytes(int(rng.integers(0, 64)))))
            continue
        i = int(rng.integers(0, len(frames)))
        f = frames[i]
        if op == 0 and f:
            for _ in range(int(rng.integers(1, 4))):
                f[int(rng.integers(0, len(f)))] = int(rng.integers(0, 256))
        elif op == 1:
            frames[i] = f[: int(rng.integers(0, len(f) + 1))]
        elif op == 2:
            frames[i] = f + bytearray(rng.bytes(int(rng.integers(1, 16))))
        elif op == 3:
            del frames[i]
        elif op == 4:
            frames.insert(i, bytearray(f))
        elif op == 5 and len(frames) > 1:
            j = int(rng.integers(0, len(frames)))
            frames[i], frames[j] = frames[j], frames[i]
        else:
            frames[i] = bytearray(rng.bytes(int(rng.integers(0, 64))))
    return [bytes(f) for f in frames]


def test_protocol_decoder_random_mutations():
    """FUZZ_CASES mutated messages (both protocol versions): a ProtocolError or a valid train."""
    rng = np.random.default_rng(12345)
    seeds = [[bytes(f) for f in GOOD], [bytes(f) for f in protocol.serialize(
        {"A": {"v": np.ones(3)}}, {"A": protocol.make_meta("A", 2)}, "1.0")]]
    outcomes = {"ok": 0, "error": 0}
    t0 = time.monotonic()
    for case in range(FUZZ_CASES):
        frames = mutate(rng, seeds[case % 2])
        try:
            data, meta = protocol.deserialize(frames)
            assert isinstance(data, dict) and isinstance(meta, dict)
            outcomes["ok"] += 1
        except ProtocolError as exc:
            assert str(exc)
            outcomes["error"] += 1
    assert sum(outcomes.values()) == FUZZ_CASES
    assert outcomes["error"] > FUZZ_CASES / 4  # the mutations really are malformed
    print(f"decoder: {outcomes} in {time.monotonic() - t0:.1f} s")


frame_strategy = st.one_of(
    st.binary(max_size=200),
    msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.sampled_from([bytes(f) for f in GOOD]),
    st.fixed_dictionaries({
        "source": st.text(max_size=5) | st.none(),
        "content": st.sampled_from(["array", "msgpack", "other", None]),
        "path": st.text(max_size=5),
        "dtype": st.sampled_from(["<u2", "float32", "bogus", "O", "V8", "<U3", ""]),
        "shape": st.lists(st.integers(-2, 5), max_size=4) | msgpack_values,
    }).map(lambda d: msgpack.packb(d, use_bin_type=True)),
)


@SETTINGS
@given(st.lists(frame_strategy, min_size=0, max_size=8))
def test_protocol_decoder_never_crashes(frames):
    try:
        data, meta = protocol.deserialize(frames)
    except ProtocolError as exc:
        assert str(exc)  # a clear message
        return
    assert isinstance(data, dict) and isinstance(meta, dict)


@pytest.fixture(scope="module")
def server():
    from pulsetrain.runtime.server import DeviceServer

    srv = DeviceServer("fuzz", token="tok").start()
    srv.instantiate("SimulatedMotor", "FUZZ/MOTOR")
    yield srv
    srv.close()


request_strategy = st.one_of(
    st.binary(max_size=100),
    msgpack_values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.fixed_dictionaries({
        "id": msgpack_values,
        "token": st.sampled_from(["tok", "", "wrong", None]) | msgpack_values,
        "op": st.sampled_from(sorted(control.READ_OPS | control.WRITE_OPS) + ["bogus"])
        | msgpack_values,
        "device": st.sampled_from(["FUZZ/MOTOR", "nope"]) | msgpack_values,
        "key": st.sampled_from(["targetPosition", "velocity", "state", "x"]) | msgpack_values,
        "value": msgpack_values,
        "slot": st.sampled_from(["move", "stop", "reset", "nope"]) | msgpack_values,
        "args": msgpack_values,
    }).filter(lambda d: not (d["op"] in ("shutdown", "kill", "instantiate", "directory")
                             and d["token"] == "tok"))
    .map(lambda d: msgpack.packb(d, use_bin_type=True)),
)


def test_control_endpoint_survives_mutated_requests(server):
    """FUZZ_CASES mutated control requests: each gets an error reply, none a crash or hang."""
    rng = np.random.default_rng(54321)
    valid = [
        {"id": 1, "token": "tok", "op": "get", "device": "FUZZ/MOTOR", "key": "velocity"},
        {"id": 2, "token": "tok", "op": "set", "device": "FUZZ/MOTOR", "key": "velocity",
         "value": 1.0},
        {"id": 3, "token": "wrong", "op": "call", "device": "FUZZ/MOTOR", "slot": "stop"},
        {"id": 4, "token": "tok", "op": "schema", "device": "FUZZ/MOTOR"},
    ]
    seeds = [[control.pack(v)] for v in valid]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.control_endpoint)
    t0 = time.monotonic()
    errors = 0
    for case in range(FUZZ_CASES):
        frames = mutate(rng, seeds[case % len(seeds)]) or [b""]
        body = frames[0]
        sock.send_multipart([b"", body])
        assert sock.poll(10_000), f"the control endpoint hung on {body!r}"
        reply = control.unpack(sock.recv_multipart()[-1])
        assert isinstance(reply, dict) and "ok" in reply
        if not reply["ok"]:
            assert reply["error"]
            errors += 1
    sock.close(0)
    assert errors > FUZZ_CASES / 4
    client = control.Client(server.control_endpoint, token="tok")
    assert client.ping()["server"] == "fuzz"
    print(f"control: {FUZZ_CASES} requests, {errors} refused, {time.monotonic() - t0:.1f} s")


def test_control_endpoint_survives_random_requests(server):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.control_endpoint)
    replies = 0
    t0 = time.monotonic()

    @SETTINGS
    @given(request_strategy)
    def fuzz(body):
        nonlocal replies
        sock.send_multipart([b"", body])
        assert sock.poll(10_000), "the control endpoint hung"
        reply = control.unpack(sock.recv_multipart()[-1])
        assert isinstance(reply, dict) and "ok" in reply
        if not reply["ok"]:
            assert reply["error"]
        replies += 1

    fuzz()
    sock.close(0)
    assert replies >= HYPOTHESIS_CASES
    # still serving normal requests, and the motor is unharmed
    client = control.Client(server.control_endpoint, token="tok")
    assert client.get("FUZZ/MOTOR", "state") in ("ON", "MOVING", "ERROR")
    assert client.ping()["server"] == "fuzz"
    print(f"{replies} control requests in {time.monotonic() - t0:.1f} s")


def test_control_values_roundtrip_or_clear_error():
    @SETTINGS
    @given(st.binary(max_size=100))
    def fuzz(body):
        try:
            control.unpack(body)
        except ProtocolError as exc:
            assert str(exc)
        except PulsetrainError:  # pragma: no cover - any other of ours is still a clear error
            pass

    fuzz()


def test_input_adapter_survives_mutated_pushes(tmp_path, server):
    """FUZZ_CASES mutated messages pushed (authenticated) into a BridgeInput: every one is
    accepted or counted as malformed/rejected; the device stays up and the next good train
    passes."""
    from pulsetrain.devices.bridge_input import write_key_pair
    from pulsetrain.runtime.channels import InputChannel

    _, server_secret = write_key_pair(tmp_path / "server", "bridge-input")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    tool_pub, tool_secret = write_key_pair(tmp_path / "tool", "tool")
    (allowed / "tool.key").write_bytes(open(tool_pub, "rb").read())
    tool_public, tool_secret_key = zmq.auth.load_certificate(tool_secret)
    server.instantiate("BridgeInput", "FUZZ/INPUT", {
        "server_key_file": str(server_secret), "authorized_keys_dir": str(allowed),
        "max_rate": 0.0, "max_queue": 1000,
    })
    dev = server.devices["FUZZ/INPUT"]
    tap = InputChannel("fuzz:tap", on_slowness="queueDrop", max_queue_length=1000, window=64)
    tap.connect(dev.output_channels["output"].endpoints[0])
    assert dev.output_channels["output"].wait_for_inputs(1, 10)
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_serverkey = dev.get("serverPublicKey").encode()
    sock.curve_publickey = tool_public
    sock.curve_secretkey = tool_secret_key
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sock.connect(dev.get("boundEndpoint"))
    # send only once the CURVE handshake succeeded (as a careful tool does)
    assert monitor.poll(10_000), "no CURVE handshake with the input adapter"
    sock.disable_monitor()
    monitor.close(0)
    rng = np.random.default_rng(777)
    seed = [bytes(f) for f in protocol.serialize(
        {"SPB_EXTERNAL/TOOL/RESULTS:output": {"score": np.arange(4.0)}},
        {"SPB_EXTERNAL/TOOL/RESULTS:output": protocol.make_meta(
            "SPB_EXTERNAL/TOOL/RESULTS:output", 5)})]
    for _ in range(FUZZ_CASES):
        sock.send_multipart(mutate(rng, seed) or [b""])

    def counted():
        return dev.get("received") + dev.get("malformed") + dev.get("rejected") + dev.get(
            "dropped")

    deadline = time.monotonic() + 120
    while counted() < FUZZ_CASES and time.monotonic() < deadline:
        time.sleep(0.1)
    assert counted() == FUZZ_CASES, {"queued": dev._trains.qsize(), **{k: dev.get(k) for k in
                                     ("received", "malformed", "rejected", "dropped", "refused")}}
    assert dev.get("malformed") + dev.get("rejected") > FUZZ_CASES / 4
    assert dev.get("lastError")
    # the next good train passes
    good = protocol.serialize(
        {"SPB_EXTERNAL/TOOL/RESULTS:output": {"score": np.full(4, 9.0)}},
        {"SPB_EXTERNAL/TOOL/RESULTS:output": protocol.make_meta(
            "SPB_EXTERNAL/TOOL/RESULTS:output", 99999)})
    sock.send_multipart(good)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        item = tap.get(timeout=30)
        props = item.data.get("SPB_EXTERNAL/TOOL/RESULTS:output", {})
        if item.meta["SPB_EXTERNAL/TOOL/RESULTS:output"]["timestamp.tid"] == 99999:
            np.testing.assert_array_equal(props["score"], np.full(4, 9.0))
            break
    else:
        pytest.fail("the good train did not pass")
    sock.close(0)
    tap.close()
    assert dev.state != "ERROR" or "malformed" in dev.status
