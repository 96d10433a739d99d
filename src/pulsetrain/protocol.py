"""The Karabo bridge wire format: trains to ZeroMQ frames and back.

A *train* is the pair ``(data, meta)``: ``data[source][key]`` holds the values of one source
(numpy arrays, scalars, strings, bytes, lists, nested dicts) and ``meta[source]`` its metadata
(``source``, ``timestamp``, ``timestamp.sec``, ``timestamp.frac``, ``timestamp.tid``).

Two protocol versions are implemented, byte-compatible with karabo-bridge-py:

``'2.2'``
    Per source (sorted by name) a msgpack header ``{source, content: 'msgpack', metadata}`` and
    a msgpack map of every non-array value; then, per array, a header ``{source, content:
    'array', path, dtype, shape}`` followed by the raw C-contiguous buffer.  Arrays are sent
    without copying (contiguous input) and received without copying: the numpy array returned
    by :func:`deserialize` is a view on the received frame.
``'1.0'``
    One msgpack map ``{source: {key: value, ..., 'metadata': meta}}`` with arrays encoded as
    msgpack-numpy maps.  Receiving copies each array once (msgpack returns ``bytes``).

Nothing here touches sockets; :mod:`pulsetrain.bridge` and :mod:`pulsetrain.runtime.channels` do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from pulsetrain.errors import ProtocolError

__all__ = [
    "PROTOCOL_VERSIONS",
    "deserialize",
    "make_meta",
    "serialize",
    "train_id_of",
]

PROTOCOL_VERSIONS = ("1.0", "2.2")

# Largest single binary payload we accept when unpacking (2 GiB - 1, as karabo-bridge-py).
_MAX_BIN = 0x7FFFFFFF

Data = dict[str, dict[str, Any]]
Meta = dict[str, dict[str, Any]]


def make_meta(source: str, train_id: int, timestamp: float | None = None) -> dict[str, Any]:
    """Build the metadata dict of one source for one train.

    Parameters
    ----------
    source : str
        Source name, e.g. ``'SPB_DET_AGIPD1M-1/DET/0CH0:xtdf'``.
    train_id : int
        The train ID.
    timestamp : float, optional
        Unix time of the train in seconds; defaults to now.

    Returns
    -------
    dict
        ``{'source', 'timestamp', 'timestamp.sec', 'timestamp.frac', 'timestamp.tid'}`` with
        ``timestamp.frac`` in attoseconds as an 18-digit string, as Karabo writes it.
    """
    if timestamp is None:
        timestamp = time.time()
    # Microsecond precision, rounded once so that the fraction never reaches a full second.
    sec, micro = divmod(round(timestamp * 1e6), 10**6)
    frac = micro * 10**12  # in attoseconds
    return {
        "source": source,
        "timestamp": float(timestamp),
        "timestamp.sec": str(sec),
        "timestamp.frac": f"{frac:018d}",
        "timestamp.tid": int(train_id),
    }


def train_id_of(meta: Meta) -> int | None:
    """Return the train ID recorded in a train's metadata (first source that has one)."""
    for src_meta in meta.values():
        tid = src_meta.get("timestamp.tid") if isinstance(src_meta, Mapping) else None
        if tid is not None:
            return int(tid)
    return None


def _dummy_timestamp() -> dict[str, Any]:
    epoch = time.time()
    meta = make_meta("", 0, epoch)
    return {k: meta[k] for k in ("timestamp", "timestamp.sec", "timestamp.frac")}


# --------------------------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Convert numpy scalars to Python ones so msgpack can pack them."""
    if isinstance(value, np.generic):
        return value.item()
    return value


# Values msgpack packs as they are (exact types: subclasses go the long way).
_NATIVE = frozenset({int, float, str, bytes, bool, type(None)})

# str(dtype) of the array headers, cached: numpy builds the name anew each time.
_DTYPE_NAMES: dict[np.dtype, str] = {}


def _dtype_name(dtype: np.dtype) -> str:
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype)
    return name


def _split_source(
    props: Mapping[str, Any], prefix: str, plain: dict[str, Any], arrays: list
) -> None:
    """Separate a source's values into msgpack-able values and arrays.

    Nested dicts that contain arrays are flattened to dotted paths (the Karabo convention),
    nested dicts without arrays are kept as they are.
    """
    for key, value in props.items():
        path = f"{prefix}{key}"
        if type(value) in _NATIVE:  # the common case, checked first: no conversion
            plain[path] = value
        elif isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise ProtocolError(f"cannot send object array at {path!r}: no wire dtype")
            arrays.append((path, value))
        elif isinstance(value, Mapping) and _contains_array(value):
            _split_source(value, path + ".", plain, arrays)
        else:
            plain[path] = _plain(value)


def _contains_array(mapping: Mapping) -> bool:
    for value in mapping.values():
        if isinstance(value, np.ndarray):
            return True
        if isinstance(value, Mapping) and _contains_array(value):
            return True
    return False


def _msgpack_default(obj: Any) -> Any:
    """msgpack hook for values msgpack cannot pack itself (protocol 2.2 headers/maps)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"cannot serialise value of type {type(obj).__name__}")


def _numpy_v1_default(obj: Any) -> Any:
    """Encode numpy values in the msgpack-numpy layout used by protocol 1.0."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("object arrays cannot be sent")
        if obj.dtype.kind == "V":
            kind, descr = b"V", obj.dtype.descr
        else:
            kind, descr = b"", obj.dtype.str
        payload = obj.data if obj.flags.c_contiguous else obj.tobytes()
        return {b"nd": True, b"type": descr, b"kind": kind, b"shape": obj.shape, b"data": payload}
    if isinstance(obj, (np.bool_, np.number)):
        return {b"nd": False, b"type": obj.dtype.str, b"data": obj.tobytes()}
    if isinstance(obj, complex):
        return {b"complex": True, b"data": repr(obj)}
    raise TypeError(f"cannot serialise value of type {type(obj).__name__}")


def serialize(
    data: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Mapping[str, Any]] | None = None,
    protocol_version: str = "2.2",
    *,
    dummy_timestamps: bool = False,
) -> list[bytes | memoryview]:
    """Serialise one train to the frames of a Karabo bridge message.

    Parameters
    ----------
    data : mapping
        ``data[source][key]`` values of the train.
    meta : mapping, optional
        ``meta[source]`` metadata.  If omitted, ``data[source]['metadata']`` is used when present.
    protocol_version : {'2.2', '1.0'}
        Protocol to speak.
    dummy_timestamps : bool
        Add the current time as timestamp to sources whose metadata has none (for tools such
        as OnDA which require timestamps).

    Returns
    -------
    list of bytes or memoryview
        The frames to send as one multipart message.  Array frames are memoryviews on the
        (contiguous) input arrays: do not modify the arrays until the message is sent.

    Raises
    ------
    ProtocolError
        Unknown protocol version or a value that cannot be put on the wire.
    """
    if protocol_version not in PROTOCOL_VERSIONS:
        raise ProtocolError(
            f"unknown protocol version {protocol_version!r}; expected one of {PROTOCOL_VERSIONS}"
        )
    if meta is None:
        meta = {src: props.get("metadata", {}) for src, props in data.items()}
    stamp = _dummy_timestamp() if dummy_timestamps else None

    def source_meta(src: str) -> dict[str, Any]:
        try:
            m = dict(meta[src])
        except KeyError:
            raise ProtocolError(f"no metadata for source {src!r}") from None
        if stamp is not None and "timestamp" not in m:
            m.update(stamp)
        return m

    try:
        if protocol_version == "1.0":
            body = {}
            for src, props in data.items():
                entry = dict(props)
                entry["metadata"] = source_meta(src)
                body[src] = entry
            return [msgpack.packb(body, use_bin_type=True, default=_numpy_v1_default)]

        pack = msgpack.Packer(use_bin_type=True, default=_msgpack_default).pack
        frames: list[bytes | memoryview] = []
        for src in sorted(data):
            plain: dict[str, Any] = {}
            arrays: list[tuple[str, np.ndarray]] = []
            _split_source(data[src], "", plain, arrays)
            frames.append(pack({"source": src, "content": "msgpack", "metadata": source_meta(src)}))
            frames.append(pack(plain))
            for path, array in arrays:
                if not array.flags.c_contiguous:
                    array = np.ascontiguousarray(array)
                frames.append(
                    pack(
                        {
                            "source": src,
                            "content": "array",
                            "path": path,
                            "dtype": _dtype_name(array.dtype),
                            "shape": array.shape,
                        }
                    )
                )
                frames.append(array.data if array.ndim else memoryview(array.tobytes()))
        return frames
    except ProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"cannot serialise train: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Deserialisation
# --------------------------------------------------------------------------------------------


def _frame_buffer(frame: Any) -> memoryview:
    """A memoryview on one received frame (zmq.Frame, bytes, bytearray or memoryview)."""
    buf = getattr(frame, "buffer", None)
    if buf is not None:
        return buf if isinstance(buf, memoryview) else memoryview(buf)
    try:
        return memoryview(frame)
    except TypeError:
        raise ProtocolError(f"frame of type {type(frame).__name__} is not a buffer") from None


def _unpack(buf: memoryview, what: str, **kwargs: Any) -> Any:
    try:
        return msgpack.unpackb(buf, raw=False, max_bin_len=_MAX_BIN, strict_map_key=False, **kwargs)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"{what} is not valid msgpack: {exc}") from exc


def _dtype(descr: Any, where: str) -> np.dtype:
    try:
        if isinstance(descr, (bytes, bytearray)):
            descr = descr.decode("ascii")
        if isinstance(descr, list):  # structured dtype description (msgpack-numpy 'V' kind)
            descr = [tuple(x.decode() if isinstance(x, bytes) else x for x in d) for d in descr]
        dt = np.dtype(descr)
    except Exception as exc:
        raise ProtocolError(f"unknown dtype {descr!r} in {where}") from exc
    if dt.hasobject:
        raise ProtocolError(f"object dtype {descr!r} not allowed in {where}")
    return dt


def _shape(shape: Any, where: str) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise ProtocolError(f"invalid shape {shape!r} in {where}")
    return tuple(shape)


def _array_from(buf: Any, dtype: np.dtype, shape: tuple[int, ...], where: str) -> np.ndarray:
    expected = math.prod(shape) * dtype.itemsize
    nbytes = len(buf) if isinstance(buf, (bytes, bytearray)) else memoryview(buf).nbytes
    if nbytes != expected:
        raise ProtocolError(
            f"{where}: shape {shape} of {dtype} needs {expected} bytes but the buffer has {nbytes}"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


def _v1_object_hook(obj: dict) -> Any:
    if b"nd" in obj:
        where = "msgpack-numpy value"
        if obj[b"nd"] is True:
            if obj.get(b"kind") == b"O":
                raise ProtocolError("pickled object arrays are refused (unsafe)")
            dt = _dtype(obj.get(b"type"), where)
            shape = _shape(obj.get(b"shape"), where)
            data = obj.get(b"data")
            if not isinstance(data, (bytes, bytearray)):
                raise ProtocolError(f"{where}: array data missing")
            return _array_from(data, dt, shape, where)
        dt = _dtype(obj.get(b"type"), where)
        data = obj.get(b"data")
        if not isinstance(data, (bytes, bytearray)) or len(data) != dt.itemsize:
            raise ProtocolError(f"{where}: scalar data does not fit {dt}")
        return np.frombuffer(data, dtype=dt)[0]
    if b"complex" in obj:
        try:
            data = obj[b"data"]
            return complex(data.decode() if isinstance(data, bytes) else data)
        except Exception as exc:
            raise ProtocolError(f"invalid complex value: {exc}") from exc
    return obj


def _deserialize_v1(buf: memoryview) -> tuple[Data, Meta]:
    body = _unpack(buf, "protocol 1.0 message", object_hook=_v1_object_hook)
    if not isinstance(body, dict):
        raise ProtocolError(f"protocol 1.0 message is a {type(body).__name__}, not a map")
    data: Data = {}
    meta: Meta = {}
    for src, props in body.items():
        if not isinstance(src, str) or not isinstance(props, dict):
            raise ProtocolError(f"protocol 1.0 entry {src!r} is not a source map")
        data[src] = props
        m = props.get("metadata", {})
        if not isinstance(m, dict):
            raise ProtocolError(f"metadata of source {src!r} is a {type(m).__name__}, not a map")
        meta[src] = m
    return data, meta


def deserialize(frames: Sequence[Any]) -> tuple[Data, Meta]:
    """Decode the frames of one Karabo bridge message into ``(data, meta)``.

    Parameters
    ----------
    frames : sequence of zmq.Frame, bytes or memoryview
        The multipart message.  A single frame is protocol 1.0, an even number of frames is
        protocol 2.2.

    Returns
    -------
    data, meta : dict
        The train.  With protocol 2.2, arrays are views on the frames (zero-copy; writeable
        when the frame is, as received ``zmq.Frame`` buffers are, read-only for ``bytes``):
        keep them alive as long as the arrays are used (numpy does, through ``array.base``).

    Raises
    ------
    ProtocolError
        The message is malformed: truncated, not msgpack, an unknown dtype, a shape that does
        not fit its buffer, an array without its source header, an unknown content type.
    """
    n = len(frames)
    if n == 0:
        raise ProtocolError("empty message: no frames")
    if n == 1:
        return _deserialize_v1(_frame_buffer(frames[0]))
    if n % 2:
        raise ProtocolError(
            f"truncated message: {n} frames, but protocol 2.2 needs header/payload pairs"
        )
    data: Data = {}
    meta: Meta = {}
    for i in range(0, n, 2):
        header = _unpack(_frame_buffer(frames[i]), f"header frame {i}")
        if not isinstance(header, dict):
            raise ProtocolError(f"header frame {i} is a {type(header).__name__}, not a map")
        source = header.get("source")
        content = header.get("content")
        if not isinstance(source, str):
            raise ProtocolError(f"header frame {i} has no source name")
        if content == "msgpack":
            props = _unpack(_frame_buffer(frames[i + 1]), f"data frame {i + 1} of {source!r}")
            if not isinstance(props, dict):
                raise ProtocolError(f"data frame {i + 1} of {source!r} is not a map")
            data[source] = props
            m = header.get("metadata", {})
            if not isinstance(m, dict):
                raise ProtocolError(
                    f"header frame {i} of {source!r}: metadata is a {type(m).__name__}, not a map"
                )
            meta[source] = m
        elif content == "array":
            path = header.get("path")
            where = f"array {path!r} of {source!r} (frame {i + 1})"
            if not isinstance(path, str):
                raise ProtocolError(f"array header frame {i} of {source!r} has no path")
            if source not in data:
                raise ProtocolError(f"{where} arrived before the source's msgpack header")
            dt = _dtype(header.get("dtype"), where)
            shape = _shape(header.get("shape"), where)
            data[source][path] = _array_from(_frame_buffer(frames[i + 1]), dt, shape, where)
        else:
            raise ProtocolError(f"header frame {i} of {source!r}: unknown content {content!r}")
    return data, meta
