"""Pipeline channels: distribution, slowness policies, end-of-stream, zero copy, reconnection."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from pulsetrain.errors import ConfigurationError
from pulsetrain.protocol import make_meta
from pulsetrain.runtime.channels import (
    EndOfStream,
    InputChannel,
    OutputChannel,
    free_tcp_endpoint,
    ipc_endpoint,
)


def train(i: int, size: int = 16) -> tuple[dict, dict]:
    return (
        {"SRC": {"image.data": np.full(size, i, dtype=np.uint32), "n": i}},
        {"SRC": make_meta("SRC", 1000 + i)},
    )


def consume(inp: InputChannel, out: list, delay: float = 0.0, stop_at_eos: bool = True,
            timeout: float = 20.0) -> threading.Thread:
    def run() -> None:
        while True:
            try:
                item = inp.get(timeout=timeout)
            except TimeoutError:
                return
            if isinstance(item, EndOfStream):
                out.append("EOS")
                if stop_at_eos:
                    inp.release()
                    return
                continue
            out.append(item.data["SRC"]["n"])
            if delay:
                time.sleep(delay)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def connected(out: OutputChannel, *inputs: InputChannel) -> None:
    for inp in inputs:
        inp.connect(out.endpoints[0])
    assert out.wait_for_inputs(len(inputs), timeout=10), "inputs did not connect"


@pytest.fixture
def output():
    out = OutputChannel("test:output", "tcp://127.0.0.1:0")
    yield out
    out.close()


def test_bad_policy_is_refused():
    with pytest.raises(ConfigurationError, match="on_slowness"):
        InputChannel("x", on_slowness="throw")
    with pytest.raises(ConfigurationError, match="data_distribution"):
        InputChannel("x", data_distribution="round-robin")


def test_wait_delivers_everything_in_order_and_slows_the_producer(output):
    inp = InputChannel("c:in", on_slowness="wait")
    connected(output, inp)
    got: list = []
    t = consume(inp, got, delay=0.01)
    start = time.perf_counter()
    for i in range(60):
        output.write(*train(i))
    output.signal_eos()
    elapsed = time.perf_counter() - start
    t.join(20)
    assert got == list(range(60)) + ["EOS"]
    assert output.dropped == 0
    # 60 trains at >= 10 ms each: the producer was held back by the consumer
    assert elapsed > 0.5
    inp.close()


def test_drop_keeps_producer_rate_and_counts_drops(output):
    """A slow consumer under 'drop' does not slow the producer; every drop is counted."""
    rate, n = 100.0, 150

    def produce() -> float:
        t0 = time.perf_counter()
        for i in range(n):
            output.write(*train(i, size=250_000))  # 1 MB per train
            next_t = t0 + (i + 1) / rate
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        return n / (time.perf_counter() - t0)

    baseline = produce()  # nobody connected
    inp = InputChannel("slow:in", on_slowness="drop")
    connected(output, inp)
    got: list = []
    t = consume(inp, got, delay=0.05, stop_at_eos=True)
    written_before = output.written
    with_slow = produce()
    queued_max = max(c["queued"] for c in output.connections())
    output.signal_eos()
    t.join(20)
    assert got[-1] == "EOS"
    received = len(got) - 1
    dropped = output.connections()[0]["dropped"]
    assert with_slow == pytest.approx(baseline, rel=0.05)
    assert received < n / 2  # the consumer really was slow
    assert received + dropped == output.written - written_before
    assert queued_max == 0  # nothing piles up for a 'drop' input
    assert inp.missed == dropped  # the input sees the gaps too
    inp.close()


def test_queue_drop_bounds_the_queue(output):
    inp = InputChannel("q:in", on_slowness="queueDrop", max_queue_length=3)
    connected(output, inp)
    got: list = []
    t = consume(inp, got, delay=0.05)
    max_queued = 0
    for i in range(40):
        output.write(*train(i))
        max_queued = max(max_queued, output.connections()[0]["queued"])
        time.sleep(0.005)
    output.signal_eos()
    t.join(20)
    assert got[-1] == "EOS"
    data = got[:-1]
    dropped = output.connections()[0]["dropped"]
    assert 1 <= max_queued <= 3
    assert dropped > 0
    assert len(data) + dropped == 40
    assert data == sorted(data)  # order kept
    inp.close()


def test_shared_inputs_share_without_loss_or_duplicates(output):
    inputs = [InputChannel(f"w{i}:in", data_distribution="shared", on_slowness="wait")
              for i in range(3)]
    connected(output, *inputs)
    results: list[list] = [[], [], []]
    threads = [consume(inp, res, delay=0.01) for inp, res in zip(inputs, results)]
    n = 90
    for i in range(n):
        output.write(*train(i))
    output.signal_eos()
    for t in threads:
        t.join(20)
    data = [x for res in results for x in res if x != "EOS"]
    assert sorted(data) == list(range(n))  # nothing lost, nothing duplicated
    assert all(res[-1] == "EOS" for res in results)  # EOS reaches every shared input
    shares = [len(res) - 1 for res in results]
    assert all(s >= n / 10 for s in shares), shares  # each got a real share
    for inp in inputs:
        inp.close()


def test_copy_inputs_each_get_everything(output):
    a, b = InputChannel("a:in", on_slowness="wait"), InputChannel("b:in", on_slowness="wait")
    connected(output, a, b)
    ra: list = []
    rb: list = []
    ta, tb = consume(a, ra), consume(b, rb)
    for i in range(30):
        output.write(*train(i))
    output.signal_eos()
    ta.join(10)
    tb.join(10)
    assert ra == rb == list(range(30)) + ["EOS"]
    a.close()
    b.close()


def test_eos_only_after_every_output():
    out1 = OutputChannel("o1:out")
    out2 = OutputChannel("o2:out")
    inp = InputChannel("m:in", on_slowness="wait")
    inp.connect(out1.endpoints[0])
    inp.connect(out2.endpoints[0])
    assert out1.wait_for_inputs(1) and out2.wait_for_inputs(1)
    out1.write(*train(1))
    out2.write(*train(2))
    seen = {inp.get(timeout=5).data["SRC"]["n"], inp.get(timeout=5).data["SRC"]["n"]}
    assert seen == {1, 2}
    out1.signal_eos()
    with pytest.raises(TimeoutError):
        inp.get(timeout=0.5)  # one output still open: no EOS yet
    out2.signal_eos()
    assert isinstance(inp.get(timeout=5), EndOfStream)
    inp.close()
    out1.close()
    out2.close()


@pytest.mark.parametrize("kind", ["tcp", "ipc", "inproc"])
def test_arrays_arrive_without_copy(kind):
    endpoint = {"tcp": "tcp://127.0.0.1:0", "ipc": ipc_endpoint("zc"),
                "inproc": "inproc://zero-copy-test"}[kind]
    out = OutputChannel("zc:out", endpoint)
    inp = InputChannel("zc:in", on_slowness="wait")
    connected(out, inp)
    arr = np.arange(1 << 20, dtype=np.float32).reshape(1024, 1024)
    out.write({"S": {"a": arr}}, {"S": make_meta("S", 1)})
    got = inp.get(timeout=5).data["S"]["a"]
    np.testing.assert_array_equal(got, arr)
    # the received array is a view on the ZeroMQ frame, not a copy
    base = got
    while isinstance(base, np.ndarray):
        assert not base.flags.owndata
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, zmq.Frame)
    inp.close()
    out.close()


def test_restarted_output_is_reconnected():
    endpoint = free_tcp_endpoint()
    out = OutputChannel("r:out", endpoint)
    inp = InputChannel("r:in", on_slowness="wait", heartbeat=0.1)
    connected(out, inp)
    out.write(*train(1))
    assert inp.get(timeout=5).data["SRC"]["n"] == 1
    out.close()
    out = OutputChannel("r:out", endpoint)  # the restarted peer, same address
    assert out.wait_for_inputs(1, timeout=10)
    out.write(*train(2))
    assert inp.get(timeout=5).data["SRC"]["n"] == 2
    inp.close()
    out.close()


def test_address_still_in_use_is_retried_then_refused():
    import socket

    from pulsetrain.errors import ChannelError

    endpoint = free_tcp_endpoint()
    port = int(endpoint.rsplit(":", 1)[1])
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    with pytest.raises(ChannelError, match="cannot bind"):
        OutputChannel("busy:out", endpoint, bind_retry=0.3)
    released = threading.Timer(0.3, holder.close)  # the previous owner exits a moment later
    released.start()
    out = OutputChannel("busy:out", endpoint, bind_retry=10)
    assert out.endpoints == [endpoint]
    released.join()
    out.close()


def test_vanished_wait_input_does_not_block_forever():
    out = OutputChannel("v:out", liveness=1.0)
    inp = InputChannel("v:in", on_slowness="wait", window=1)
    connected(out, inp)
    out.write(*train(1))  # fills the window; the consumer never asks again
    inp.close()  # says goodbye
    t0 = time.perf_counter()
    out.write(*train(2))
    out.write(*train(3))
    assert time.perf_counter() - t0 < 3
    out.close()


def test_malformed_data_is_counted_and_the_next_train_arrives():
    router_ep = free_tcp_endpoint()
    ctx = zmq.Context.instance()
    rogue = ctx.socket(zmq.ROUTER)
    rogue.bind(router_ep)
    inp = InputChannel("bad:in", on_slowness="wait")
    inp.connect(router_ep)
    ident, _credit = rogue.recv_multipart()
    import msgpack

    head = msgpack.packb({"t": "data", "s": "x", "w": 0})
    rogue.send_multipart([ident, head, b"\xc1not msgpack"])
    good = OutputChannel.__new__(OutputChannel)  # only to reuse serialize
    from pulsetrain.protocol import serialize

    rogue.send_multipart([ident, msgpack.packb({"t": "data", "s": "x", "w": 1}),
                          *serialize(*train(7))])
    item = inp.get(timeout=5)
    assert item.data["SRC"]["n"] == 7
    assert inp.errors == 1 and "not valid msgpack" in inp.last_error
    del good
    inp.close()
    rogue.close(0)
