"""``pulsetrain.bridge.Client`` receives from karabo-bridge-py's simulator
(``karabo-bridge-server-sim``, a subprocess) whatever ``karabo_bridge.Client`` receives."""

from __future__ import annotations

import shutil
import socket
import sys

import karabo_bridge
import numpy as np
import pytest

from pulsetrain.bridge import Client

STARTED = r"Simulated Karabo-bridge server started"
# Values that change from train to train in the peer's simulator.
VARYING = {"image.data", "image.trainId", "image.gain"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def karabo_sim(port: int, pattern: str, version: str) -> list[str]:
    script = shutil.which("karabo-bridge-server-sim")
    command = [script] if script else [sys.executable, "-m", "karabo_bridge.cli.simulation"]
    return [*command, str(port), "-z", pattern, "-p", version, "-d", "AGIPDModule", "-r"]


def describe(data: dict, meta: dict) -> dict:
    """Sources, keys, types, shapes and dtypes of a train, and its constant values."""
    out = {}
    for src, props in data.items():
        for key, value in props.items():
            if isinstance(value, np.ndarray):
                entry = ("array", value.shape, str(value.dtype))
                if key not in VARYING:
                    entry += (value.tobytes(),)
            elif key == "metadata" or key in VARYING:
                entry = (type(value).__name__,)
            else:
                entry = (type(value).__name__, repr(value))
            out[(src, key)] = entry
        out[(src, "<meta keys>")] = tuple(sorted(meta[src]))
    return out


@pytest.mark.parametrize(
    "pattern,sock,version",
    [("REP", "REQ", "2.2"), ("REP", "REQ", "1.0"), ("PUSH", "PULL", "2.2"), ("PUB", "SUB", "2.2")],
)
def test_same_trains_as_karabo_client(processes, pattern, sock, version):
    port = free_port()
    proc = processes(*karabo_sim(port, pattern, version))
    proc.wait_for_line(STARTED)
    endpoint = f"tcp://127.0.0.1:{port}"

    theirs = karabo_bridge.Client(endpoint, sock=sock, timeout=60)
    try:
        reference = theirs.next()
    finally:
        theirs._context.destroy(linger=0)
    with Client(endpoint, sock, timeout=60) as ours:
        trains = [ours.next() for _ in range(2)]

    expected = describe(*reference)
    assert expected  # the peer sent something to compare
    tids = []
    for data, meta in trains:
        assert describe(data, meta) == expected
        src = next(iter(data))
        assert data[src]["image.data"].dtype == np.uint16
        tids.append(meta[src]["timestamp.tid"])
        assert np.all(data[src]["image.trainId"] == tids[-1])
    assert tids[1] > tids[0] > reference[1][src]["timestamp.tid"]
