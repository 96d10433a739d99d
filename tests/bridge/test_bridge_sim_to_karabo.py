"""``pulsetrain bridge-sim`` (a subprocess) serves karabo-bridge-py's ``Client`` exactly the
trains the simulator makes, over REQ/REP, SUB/PUB and PULL/PUSH, in protocols 1.0 and 2.2."""

from __future__ import annotations

import karabo_bridge
import numpy as np
import pytest
from _bridge_helpers import pulsetrain_cmd

from pulsetrain.cli.bridge_sim import SimulatedSource

SEED = 3
FRAMES = 2
MODULES = [0, 1]
ENDPOINT = r"serving on (tcp://\S+)"


def expected_trains(corrected: bool):
    """The same simulation, in this process: train ID -> (data, meta)."""
    source = SimulatedSource("AGIPD", FRAMES, SEED, modules=MODULES, corrected=corrected)
    while True:
        tid, data, meta = source.next_train()
        yield tid, data, meta


def assert_same_train(data: dict, meta: dict, expected_data: dict) -> None:
    assert sorted(data) == sorted(expected_data)
    for src, props in expected_data.items():
        got = {k: v for k, v in data[src].items() if k != "metadata"}  # 1.0 carries it inline
        assert sorted(got) == sorted(props), src
        for key, value in props.items():
            assert isinstance(got[key], np.ndarray), (src, key)
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, (src, key)
            assert got[key].tobytes() == value.tobytes(), (src, key)
        assert meta[src]["source"] == src


def sim_args(pattern: str, version: str, *extra: str) -> list[str]:
    return pulsetrain_cmd(
        "bridge-sim",
        "--port",
        "0",
        "--pattern",
        pattern,
        "--protocol",
        version,
        "--detector",
        "AGIPD",
        "--frames",
        str(FRAMES),
        "--modules",
        "0-1",
        "--seed",
        str(SEED),
        *extra,
    )


@pytest.mark.parametrize("version", ["2.2", "1.0"])
@pytest.mark.parametrize("pattern,sock", [("REP", "REQ"), ("PUSH", "PULL")])
def test_karabo_client_receives_every_train_fed(processes, pattern, sock, version):
    n = 3
    proc = processes(*sim_args(pattern, version, "--raw", "--rate", "0", "--trains", str(n)))
    endpoint = proc.wait_for_line(ENDPOINT).group(1)
    client = karabo_bridge.Client(endpoint, sock=sock, timeout=60)
    try:
        expected = expected_trains(corrected=False)
        for _ in range(n):
            data, meta = client.next()
            tid, exp_data, _ = next(expected)
            assert {m["timestamp.tid"] for m in meta.values()} == {tid}
            assert_same_train(data, meta, exp_data)
    finally:
        client._context.destroy(linger=0)
    assert proc.wait(60) == 0
    assert f"fed {n}, sent {n}, dropped 0" in proc.output


@pytest.mark.parametrize("version", ["2.2", "1.0"])
def test_karabo_subscriber_receives_the_trains_published(processes, version):
    proc = processes(*sim_args("PUB", version, "--raw", "--rate", "20"))
    endpoint = proc.wait_for_line(ENDPOINT).group(1)
    client = karabo_bridge.Client(endpoint, sock="SUB", timeout=60)
    try:
        received = [client.next() for _ in range(3)]
    finally:
        client._context.destroy(linger=0)
    tids = [next(iter(meta.values()))["timestamp.tid"] for _, meta in received]
    assert tids == sorted(tids) and len(set(tids)) == 3
    expected = {}
    for tid, data, _ in expected_trains(corrected=False):
        expected[tid] = data
        if tid >= tids[-1]:
            break
    for data, meta in received:
        assert_same_train(data, meta, expected[next(iter(meta.values()))["timestamp.tid"]])


def test_corrected_trains(processes):
    proc = processes(*sim_args("REP", "2.2", "--corrected", "--rate", "0", "--trains", "2"))
    endpoint = proc.wait_for_line(ENDPOINT).group(1)
    client = karabo_bridge.Client(endpoint, timeout=90)
    try:
        received = [client.next() for _ in range(2)]
    finally:
        client._context.destroy(linger=0)
    expected = expected_trains(corrected=True)
    for data, meta in received:
        _, exp_data, _ = next(expected)
        assert_same_train(data, meta, exp_data)
        src = "SPB_DET_AGIPD1M-1/CORR/0CH0:output"
        assert data[src]["image.data"].dtype == np.float32
        assert data[src]["image.data"].shape == (FRAMES, 512, 128)
        assert data[src]["image.gain"].dtype == np.uint8
        assert data[src]["image.mask"].dtype == np.uint32
    assert proc.wait(60) == 0
