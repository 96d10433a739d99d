"""An output's count of lost trains when one of its inputs is replaced or cannot be reached.

Each train an output writes for a copy input is either sent to it or counted as dropped for
it, once: an input process that froze and was replaced by a new process of the same device
must not go on collecting drops after the new one took over.
"""

from __future__ import annotations

import msgpack
import numpy as np
import zmq

from pulsetrain.protocol import make_meta
from pulsetrain.runtime.channels import EndOfStream, InputChannel, OutputChannel, ipc_endpoint
from waiting import wait_until

INPUT = "CORR/0:input"


def _train(i: int) -> tuple[dict, dict]:
    return {"SRC": {"n": np.full(4, i, dtype=np.uint16)}}, {"SRC": make_meta("SRC", 1000 + i)}


def _frozen_input(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    """An input process that says it can take two trains and then never answers again."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"frozen")
    sock.connect(endpoint)
    credit = {"t": "credit", "in": INPUT, "isess": "old", "ep": 0, "rcv": 0, "win": 2}
    sock.send(msgpack.packb(credit))
    return sock


def _drain(inp: InputChannel, got: list) -> bool:
    while True:
        try:
            item = inp.get(timeout=0.05)
        except TimeoutError:
            return False
        if isinstance(item, EndOfStream):
            return True
        got.append(int(item.data["SRC"]["n"][0]))
        inp.release()


def test_a_replaced_input_stops_counting_drops_once_the_old_one_timed_out(tmp_path):
    ctx = zmq.Context.instance()
    out = OutputChannel("SIM:out", ipc_endpoint(str(tmp_path / "out")), liveness=0.6)
    old = _frozen_input(ctx, out.endpoints[0])
    new = InputChannel(INPUT, window=64, shared_memory=False)
    got: list[int] = []
    try:
        wait_until(lambda: len(out.connections()) == 1, timeout=10, what="the frozen input")
        for i in range(5):  # 2 sent to the frozen input, 3 dropped for it
            out.write(*_train(i), timeout=5)
        new.connect(out.endpoints[0])  # the device's new process, while the old one hangs
        wait_until(lambda: len(out.connections()) == 2, timeout=10, what="the new input")
        for i in range(5, 10):  # the new one gets them; the old one drops them
            out.write(*_train(i), timeout=5)
        wait_until(lambda: _drain(new, got) or len(got) == 5, timeout=10, what="5 trains")
        # The old connection times out: its 8 losses go to the new connection of the same
        # input, and it is forgotten (no further drops counted for a process that is gone).
        wait_until(lambda: len(out.connections()) == 1, timeout=10, what="the old one gone")
        assert out.connections()[0]["dropped"] == 8
        for i in range(10, 15):
            out.write(*_train(i), timeout=5)
        wait_until(lambda: _drain(new, got) or len(got) == 10, timeout=10, what="10 trains")
        assert got == list(range(5, 15))
        assert out.dropped == 8
        assert out.written == 15
    finally:
        old.close(0)
        new.close()
        out.close(linger=0)
