"""Tests of pulsetrain.protocol: round trips, byte-compatibility with karabo-bridge-py,
zero-copy receive and strict errors on malformed messages."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from karabo_bridge import serializer as kb_serializer

from pulsetrain.errors import ProtocolError
from pulsetrain.protocol import deserialize, make_meta, serialize, train_id_of

VERSIONS = ("1.0", "2.2")
DETECTOR_DTYPES = [
    np.dtype(t) for t in ("uint8", "uint16", "uint32", "uint64", "int32", "float32", "float64")
] + [np.dtype(bool)]

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------------------------
# Strategies
# ----------------------------------------------------------------------------------------------

arrays = st.sampled_from(DETECTOR_DTYPES).flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
)
# Keys: any text, dotted paths included ('image.data'), but never 'metadata' (reserved in 1.0).
keys = st.one_of(
    st.text(min_size=1, max_size=12),
    st.lists(st.text("abcxyz_", min_size=1, max_size=5), min_size=2, max_size=4).map(".".join),
).filter(lambda k: k != "metadata")
plain_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
plain_values = st.recursive(
    plain_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
numpy_scalars = st.sampled_from(DETECTOR_DTYPES).flatmap(
    lambda dt: hnp.from_dtype(dt).map(lambda v: np.asarray(v, dtype=dt)[()])
)


def sources(values):
    names = st.text(min_size=1, max_size=30)
    return st.dictionaries(names, st.dictionaries(keys, values, max_size=5), min_size=1, max_size=3)


def with_meta(data_strategy):
    return data_strategy.flatmap(
        lambda data: st.tuples(
            st.just(data),
            st.fixed_dictionaries(
                {
                    src: st.builds(
                        make_meta,
                        st.just(src),
                        st.integers(0, 2**63 - 1),
                        st.floats(0, 4e9, allow_nan=False),
                    )
                    for src in data
                }
            ),
        )
    )


# Everything pulsetrain sends, in both versions.
trains = with_meta(sources(st.one_of(arrays, plain_values, numpy_scalars)))
# What karabo-bridge-py can also serialise (its 2.2 packer refuses numpy bool scalars).
kb_trains = with_meta(sources(st.one_of(arrays, plain_values)))


# ----------------------------------------------------------------------------------------------
# Comparison helpers
# ----------------------------------------------------------------------------------------------


def same_array(got, expected) -> bool:
    return (
        isinstance(got, np.ndarray)
        and got.dtype == expected.dtype
        and got.shape == expected.shape
        and got.tobytes() == expected.tobytes()
    )


def same_value(got, expected) -> bool:
    """Equality as the wire defines it: tuples are lists, NaN equals NaN."""
    if isinstance(expected, np.ndarray):
        return same_array(got, expected)
    if isinstance(expected, np.generic):
        return same_value(got, expected.item()) or (
            isinstance(got, np.generic) and same_array(np.asarray(got), np.asarray(expected))
        )
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(expected, (list, tuple)):
        return (
            isinstance(got, list)
            and len(got) == len(expected)
            and all(same_value(g, e) for g, e in zip(got, expected))
        )
    if isinstance(expected, dict):
        return (
            isinstance(got, dict)
            and got.keys() == expected.keys()
            and all(same_value(got[k], v) for k, v in expected.items())
        )
    return type(got) is type(expected) and got == expected


def check_round_trip(data, meta, version):
    frames = serialize(data, meta, version)
    got_data, got_meta = deserialize([bytes(f) for f in frames])
    assert got_data.keys() == data.keys()
    for src, props in data.items():
        got = dict(got_data[src])
        if version == "1.0":
            assert got.pop("metadata") == meta[src]
        assert got.keys() == props.keys(), src
        for key, value in props.items():
            assert same_value(got[key], value), (src, key, got[key], value)
        assert got_meta[src] == meta[src]


# ----------------------------------------------------------------------------------------------
# Round trips and compatibility
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@SETTINGS
@given(train=trains)
def test_round_trip(version, train):
    data, meta = train
    check_round_trip(data, meta, version)


@pytest.mark.parametrize("version", VERSIONS)
@SETTINGS
@given(train=kb_trains)
def test_bytes_equal_karabo_bridge(version, train):
    data, meta = train
    ours = [bytes(f) for f in serialize(data, meta, version)]
    theirs = [bytes(f) for f in kb_serializer.serialize(data, meta, version)]
    assert ours == theirs


@pytest.mark.parametrize("version", VERSIONS)
@SETTINGS
@given(train=kb_trains)
def test_karabo_bridge_decodes_ours_and_we_decode_theirs(version, train):
    data, meta = train
    kb_data, kb_meta = kb_serializer.deserialize([bytes(f) for f in serialize(data, meta, version)])
    our_data, our_meta = deserialize(
        [bytes(f) for f in kb_serializer.serialize(data, meta, version)]
    )
    assert kb_meta == our_meta == meta
    for src in data:
        assert kb_data[src].keys() == our_data[src].keys()
        for key, value in kb_data[src].items():
            assert same_value(our_data[src][key], value), (src, key)


@pytest.mark.parametrize("version", VERSIONS)
def test_detector_train_round_trip(version):
    """A raw AGIPD module source, with every key of the train convention."""
    frames_ = 3
    src = "SPB_DET_AGIPD1M-1/DET/0CH0:xtdf"
    rng = np.random.default_rng(1)
    props = {
        "image.data": rng.integers(0, 2**16, (frames_, 2, 512, 128), dtype=np.uint16),
        "image.cellId": np.arange(frames_, dtype=np.uint16),
        "image.pulseId": np.arange(frames_, dtype=np.uint64),
        "image.trainId": np.full(frames_, 10_000, np.uint64),
        "image.length": np.full(frames_, 262144, np.uint32),
        "image.status": np.zeros(frames_, np.uint16),
        "header.majorTrainFormatVersion": 2,
        "detector.data": b"\x00" * 16,
    }
    check_round_trip({src: props}, {src: make_meta(src, 10_000)}, version)


def test_nested_dicts_with_arrays_become_dotted_paths():
    """Protocol 2.2 carries arrays one per frame, so nested dicts holding arrays are flattened
    to the dotted keys of the Karabo convention; nested dicts without arrays stay as they are."""
    data = {"s": {"image": {"data": np.ones(3, np.float32), "note": "x"}, "cfg": {"a": 1}}}
    got, _ = deserialize(serialize(data, {"s": make_meta("s", 1)}, "2.2"))
    assert sorted(got["s"]) == ["cfg", "image.data", "image.note"]
    assert same_array(got["s"]["image.data"], data["s"]["image"]["data"])
    assert got["s"]["cfg"] == {"a": 1}


def test_non_contiguous_arrays_are_sent_contiguous():
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    data = {"s": {"t": base.T, "step": base[:, ::2]}}
    for version in VERSIONS:
        got, _ = deserialize(serialize(data, {"s": make_meta("s", 1)}, version))
        assert same_array(got["s"]["t"], np.ascontiguousarray(base.T))
        assert same_array(got["s"]["step"], np.ascontiguousarray(base[:, ::2]))


def test_meta_from_data_and_train_id():
    meta = make_meta("s", 42, 1700000000.25)
    assert meta["timestamp.frac"] == "250000000000000000"
    assert meta["timestamp.sec"] == "1700000000"
    data = {"s": {"x": 1, "metadata": meta}}
    _, got_meta = deserialize(serialize(data, None, "2.2"))
    assert got_meta == {"s": meta}
    assert train_id_of(got_meta) == 42


def test_unknown_version_and_unserialisable_values():
    data = {"s": {"x": 1}}
    meta = {"s": make_meta("s", 1)}
    with pytest.raises(ProtocolError, match="unknown protocol version '3.0'"):
        serialize(data, meta, "3.0")
    with pytest.raises(ProtocolError, match="object array"):
        serialize({"s": {"x": np.array([object()])}}, meta, "2.2")
    with pytest.raises(ProtocolError, match="no metadata for source 'other'"):
        serialize({"other": {"x": 1}}, meta, "2.2")
    with pytest.raises(ProtocolError, match="cannot serialise"):
        serialize({"s": {"x": {1, 2}}}, meta, "2.2")


# ----------------------------------------------------------------------------------------------
# Zero copy
# ----------------------------------------------------------------------------------------------


def test_zero_copy_send_and_receive():
    """Array frames are views on the input when sent and on the received zmq.Frame when
    received: no copy on either side."""
    src = "SPB_DET_AGIPD1M-1/CORR/0CH0:output"
    image = np.random.default_rng(2).random((4, 512, 128), dtype=np.float32)
    data = {src: {"image.data": image, "image.cellId": np.arange(4, dtype=np.uint16)}}
    frames = serialize(data, {src: make_meta(src, 7)}, "2.2")
    assert any(np.shares_memory(np.frombuffer(f, np.uint8), image) for f in frames)

    ctx = zmq.Context()
    try:
        pull = ctx.socket(zmq.PULL)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push = ctx.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{port}")
        push.send_multipart(frames, copy=False)
        assert pull.poll(10_000), "nothing received over loopback"
        received = pull.recv_multipart(copy=False)
        got, meta = deserialize(received)
        array = got[src]["image.data"]
        assert same_array(array, image)
        assert meta[src]["timestamp.tid"] == 7
        payload = next(f for f in received if len(f.buffer) == image.nbytes)
        frame_view = np.frombuffer(payload.buffer, np.uint8)
        assert np.shares_memory(array, frame_view)
        assert array.__array_interface__["data"][0] == frame_view.__array_interface__["data"][0]
        push.close(linger=0)
        pull.close(linger=0)
    finally:
        ctx.destroy(linger=0)


# ----------------------------------------------------------------------------------------------
# Malformed messages
# ----------------------------------------------------------------------------------------------


def _good_frames():
    data = {
        "a": {"image.data": np.arange(12, dtype=np.uint16).reshape(3, 4), "x": 1},
        "b": {"y": "z"},
    }
    meta = {src: make_meta(src, 5) for src in data}
    return [bytes(f) for f in serialize(data, meta, "2.2")]


def _header(frames, i):
    return msgpack.unpackb(frames[i])


def _replace_header(frames, i, **changes):
    header = _header(frames, i)
    header.update(changes)
    frames = list(frames)
    frames[i] = msgpack.packb(header)
    return frames


def test_good_frames_decode():
    data, _ = deserialize(_good_frames())
    assert same_array(data["a"]["image.data"], np.arange(12, dtype=np.uint16).reshape(3, 4))


def test_truncated_multipart():
    frames = _good_frames()
    with pytest.raises(ProtocolError, match="truncated message: 5 frames"):
        deserialize(frames[:-1])


def test_missing_frame_pair():
    """Dropping the source's msgpack header and data leaves an array without its source."""
    frames = _good_frames()
    assert _header(frames, 2)["content"] == "array"
    with pytest.raises(ProtocolError, match="arrived before the source's msgpack header"):
        deserialize(frames[2:])


def test_missing_array_payload():
    """An array header followed by the next header instead of its payload."""
    frames = _good_frames()
    broken = frames[:3] + frames[4:] + [b""]
    with pytest.raises(ProtocolError, match="needs 24 bytes but the buffer has"):
        deserialize(broken)


def test_empty_message():
    with pytest.raises(ProtocolError, match="empty message"):
        deserialize([])


def test_unknown_dtype():
    frames = _replace_header(_good_frames(), 2, dtype="float17")
    with pytest.raises(ProtocolError, match=r"unknown dtype 'float17' in array 'image.data'"):
        deserialize(frames)


def test_object_dtype_refused():
    frames = _replace_header(_good_frames(), 2, dtype="O", shape=[1])
    with pytest.raises(ProtocolError, match="object dtype"):
        deserialize(frames)


@pytest.mark.parametrize("shape", [[3, 5], [24], [], [2, 2, 2, 2]])
def test_shape_does_not_fit_buffer(shape):
    frames = _replace_header(_good_frames(), 2, shape=shape)
    with pytest.raises(ProtocolError, match=r"needs \d+ bytes but the buffer has 24"):
        deserialize(frames)


@pytest.mark.parametrize("shape", [[-1, 4], "3x4", [3.0, 4], None])
def test_invalid_shape(shape):
    frames = _replace_header(_good_frames(), 2, shape=shape)
    with pytest.raises(ProtocolError, match="invalid shape"):
        deserialize(frames)


def test_header_not_msgpack():
    frames = _good_frames()
    frames[0] = b"\xc1 not msgpack"
    with pytest.raises(ProtocolError, match="header frame 0 is not valid msgpack"):
        deserialize(frames)


def test_data_not_msgpack():
    frames = _good_frames()
    frames[1] = b"\xc1"
    with pytest.raises(ProtocolError, match="data frame 1 of 'a' is not valid msgpack"):
        deserialize(frames)


@pytest.mark.parametrize("frame", [b"\xc1\xc1", b"plain text", msgpack.packb({"s": {"x": 1}})[:-1]])
def test_single_frame_not_msgpack(frame):
    with pytest.raises(ProtocolError, match="protocol 1.0 message is not valid msgpack"):
        deserialize([frame])


def test_v1_message_not_a_map():
    with pytest.raises(ProtocolError, match="not a map"):
        deserialize([msgpack.packb([1, 2, 3])])


def test_metadata_not_a_map():
    header = msgpack.packb({"source": "S", "content": "msgpack", "metadata": [1]})
    with pytest.raises(ProtocolError, match="metadata is a list, not a map"):
        deserialize([header, msgpack.packb({})])
    with pytest.raises(ProtocolError, match="metadata of source 'S' is a int, not a map"):
        deserialize([msgpack.packb({"S": {"metadata": 3}})])


def test_v1_array_does_not_fit():
    frame = bytes(
        serialize({"s": {"x": np.zeros(4, np.uint32)}}, {"s": make_meta("s", 1)}, "1.0")[0]
    )
    body = msgpack.unpackb(frame, raw=False)
    body["s"]["x"][b"shape"] = [5]
    with pytest.raises(ProtocolError, match="needs 20 bytes but the buffer has 16"):
        deserialize([msgpack.packb(body, use_bin_type=True)])


def test_unknown_content_and_missing_source():
    frames = _replace_header(_good_frames(), 2, content="pickle")
    with pytest.raises(ProtocolError, match="unknown content 'pickle'"):
        deserialize(frames)
    frames = _good_frames()
    header = _header(frames, 0)
    del header["source"]
    frames[0] = msgpack.packb(header)
    with pytest.raises(ProtocolError, match="header frame 0 has no source name"):
        deserialize(frames)
