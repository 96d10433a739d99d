"""BridgeServer semantics: REP exactly-once ordering, bad requests, PUB drops, PUSH
backpressure, shutdown that never hangs."""

from __future__ import annotations

import queue
import threading
import time

import karabo_bridge
import numpy as np
import pytest
import zmq
from _bridge_helpers import SOURCE, check_train, small_train, tid_of, wait_until

from pulsetrain.bridge import BridgeServer, Client
from pulsetrain.errors import BridgeError, ChannelError, ConfigurationError, ProtocolError

LOCAL = "tcp://127.0.0.1:0"


def test_endpoint_is_resolved_and_counters_start_at_zero():
    with BridgeServer(LOCAL) as server:
        assert server.endpoint.startswith("tcp://127.0.0.1:")
        assert int(server.endpoint.rsplit(":", 1)[1]) > 0
        assert server.stats() == {"fed": 0, "sent": 0, "dropped": 0, "bad_requests": 0, "queued": 0}


def test_invalid_arguments():
    with pytest.raises(ConfigurationError, match="pattern 'DEALER'"):
        BridgeServer(LOCAL, "DEALER")
    with pytest.raises(ConfigurationError, match="protocol version '2.1'"):
        BridgeServer(LOCAL, protocol_version="2.1")
    with pytest.raises(ConfigurationError, match="maxlen"):
        BridgeServer(LOCAL, maxlen=0)
    with BridgeServer(LOCAL) as server:
        with pytest.raises(ChannelError, match="cannot bind"):
            BridgeServer(server.endpoint)
        with pytest.raises(BridgeError, match="already started"):
            server.start()
        with pytest.raises(ProtocolError, match="no metadata for source"):
            server.feed({SOURCE: {"x": 1}}, {})
    with pytest.raises(BridgeError, match="stopped"):
        server.feed(*small_train(0))
    with pytest.raises(BridgeError, match="stopped"):
        server.start()


# ----------------------------------------------------------------------------------------------
# REP
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2.2", "1.0"])
def test_rep_answers_each_request_in_order(version):
    with BridgeServer(LOCAL, "REP", version) as server:
        for i in range(5):
            server.feed(*small_train(i))
        with Client(server.endpoint, timeout=10) as client:
            for i in range(5):
                check_train(*client.next(), i)
        assert wait_until(lambda: server.sent == 5 and server.queued == 0)
        assert server.dropped == 0


def test_rep_exactly_once_with_concurrent_clients():
    """Three clients (two pulsetrain, one karabo-bridge-py) pull 60 trains concurrently: each
    train reaches exactly one client, and every client sees increasing train IDs."""
    n = 60
    with BridgeServer(LOCAL, "REP", maxlen=4) as server:
        got: dict[str, list[int]] = {}
        lock = threading.Lock()
        total = [0]

        def pull(name: str, client) -> None:
            mine = got.setdefault(name, [])
            while True:
                with lock:
                    if total[0] >= n:
                        return
                    total[0] += 1
                data, meta = client.next()
                check_train(data, meta, tid_of(meta))
                mine.append(tid_of(meta))

        clients = {
            "pt1": Client(server.endpoint, timeout=20),
            "pt2": Client(server.endpoint, timeout=20),
            "kb": karabo_bridge.Client(server.endpoint, timeout=20),
        }
        threads = [threading.Thread(target=pull, args=item) for item in clients.items()]
        for t in threads:
            t.start()
        for i in range(n):
            server.feed(*small_train(i), timeout=20)
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
        clients["pt1"].close()
        clients["pt2"].close()
        clients["kb"]._context.destroy(linger=0)
    received = sorted(t for tids in got.values() for t in tids)
    assert received == list(range(n))
    for tids in got.values():
        assert tids == sorted(tids)
    assert server.sent == n and server.dropped == 0


def test_rep_request_of_departed_client_does_not_swallow_a_train(context):
    """A client that asks and leaves before any train exists must not take one with it."""
    with BridgeServer(LOCAL, "REP") as server:
        req = context.socket(zmq.REQ)
        req.connect(server.endpoint)
        req.send(b"next")
        assert wait_until(lambda: server.pending_requests == 1 and server.connections == 1)
        req.close(linger=0)
        assert wait_until(lambda: server.connections == 0)
        server.feed(*small_train(0))
        server.feed(*small_train(1))
        with Client(server.endpoint, timeout=10) as client:
            check_train(*client.next(), 0)
            check_train(*client.next(), 1)
        assert wait_until(lambda: server.sent == 2)


def test_rep_bad_requests_are_answered_and_counted(context):
    with BridgeServer(LOCAL, "REP") as server:
        req = context.socket(zmq.REQ)
        req.connect(server.endpoint)
        req.send(b"hello")
        assert req.poll(10_000)
        assert req.recv() == b"Error: bad request hello"
        req.send_multipart([b"next", b"please"])
        assert req.poll(10_000)
        assert req.recv().startswith(b"Error: bad request next")
        dealer = context.socket(zmq.DEALER)  # no envelope delimiter at all
        dealer.connect(server.endpoint)
        dealer.send(b"\x00garbage")
        assert dealer.poll(10_000)
        assert dealer.recv_multipart()[-1].startswith(b"Error: bad request")
        assert server.bad_requests == 3
        # ... and the server still serves
        server.feed(*small_train(7))
        req.send(b"next")
        assert req.poll(10_000)
        from pulsetrain.protocol import deserialize

        check_train(*deserialize(req.recv_multipart(copy=False)), 7)
        assert wait_until(lambda: server.sent == 1) and server.bad_requests == 3


def test_rep_stop_while_client_waits():
    server = BridgeServer(LOCAL, "REP").start()
    client = Client(server.endpoint, timeout=0.2)
    with pytest.raises(TimeoutError):
        client.next()
    assert wait_until(lambda: server.pending_requests == 1)
    t0 = time.monotonic()
    server.stop()
    assert time.monotonic() - t0 < 5
    client.close()


# ----------------------------------------------------------------------------------------------
# PUB
# ----------------------------------------------------------------------------------------------


def test_pub_drops_trains_nobody_reads_without_blocking():
    with BridgeServer(LOCAL, "PUB", maxlen=1) as server:
        t0 = time.monotonic()
        for i in range(50):
            server.feed(*small_train(i))  # never blocks, even with maxlen 1
        assert time.monotonic() - t0 < 10
        assert wait_until(lambda: server.dropped == 50 and server.queued == 0)
        assert server.sent == 0 and server.fed == 50


def test_pub_slow_subscriber_gets_exactly_the_trains_counted_as_sent():
    """A subscriber that does not read while 40 trains of 8 MB are fed: trains overtaken in
    the latest-wins slot are counted as dropped, the newest waits in the slot, and the
    subscriber then receives exactly the trains counted as sent, in order, ending with the
    newest."""
    n = 40
    server = BridgeServer(LOCAL, "PUB", maxlen=2)
    with server, Client(server.endpoint, "SUB", timeout=1.0) as client:
        assert wait_until(lambda: server.subscribers == 1)
        for i in range(n):
            server.feed(*small_train(i, nbytes=8 << 20))
        assert wait_until(
            lambda: server.queued <= 1 and server.sent + server.dropped + server.queued == n,
            30,
        )
        assert server.dropped > 0
        tids = []
        while True:
            try:
                data, meta = client.next()
            except TimeoutError:
                break
            check_train(data, meta, tid_of(meta))
            tids.append(tid_of(meta))
        assert server.sent + server.dropped == n and server.queued == 0
        assert len(tids) == server.sent
        assert tids == sorted(tids) and tids[-1] == n - 1


def test_pub_subscriber_count_follows_connections():
    with BridgeServer(LOCAL, "PUB") as server:
        a = Client(server.endpoint, "SUB")
        b = karabo_bridge.Client(server.endpoint, sock="SUB")
        assert wait_until(lambda: server.subscribers == 2)
        a.close()
        assert wait_until(lambda: server.subscribers == 1)
        server.feed(*small_train(3))
        b._socket.setsockopt(zmq.RCVTIMEO, 10_000)  # karabo_bridge.Client has no setter
        data, meta = b.next()
        check_train(data, meta, 3)
        b._context.destroy(linger=0)
        assert wait_until(lambda: server.subscribers == 0)


# ----------------------------------------------------------------------------------------------
# PUSH
# ----------------------------------------------------------------------------------------------


def test_push_backpressure_blocks_the_feeder_and_loses_nothing():
    n_before = 4  # 1 in the sending thread's hand + maxlen 3 waiting
    with BridgeServer(LOCAL, "PUSH", maxlen=3) as server:
        for i in range(n_before):
            server.feed(*small_train(i), timeout=10)
        assert wait_until(lambda: server.queued == n_before)
        with pytest.raises(queue.Full):
            server.feed(*small_train(99), block=False)
        with pytest.raises(queue.Full):
            server.feed(*small_train(99), timeout=0.1)

        fed = threading.Event()

        def feed_more() -> None:
            for i in range(n_before, 10):
                server.feed(*small_train(i))
            fed.set()

        feeder = threading.Thread(target=feed_more)
        feeder.start()
        assert not fed.wait(0.5), "feed() should block while nobody reads"
        assert server.sent == 0
        with Client(server.endpoint, "PULL", timeout=10) as client:
            for i in range(10):
                check_train(*client.next(), i)
        assert fed.wait(10)
        feeder.join(10)
        assert wait_until(lambda: server.sent == 10)
        assert server.fed == 10 and server.dropped == 0


def test_push_stop_with_absent_peer_and_blocked_feeder():
    server = BridgeServer(LOCAL, "PUSH", maxlen=1).start()
    server.feed(*small_train(0))
    server.feed(*small_train(1))
    errors = []

    def blocked() -> None:
        try:
            server.feed(*small_train(2))
        except BridgeError as exc:
            errors.append(exc)

    feeder = threading.Thread(target=blocked)
    feeder.start()
    assert wait_until(lambda: server.queued == 2)
    t0 = time.monotonic()
    server.stop()
    feeder.join(5)
    assert time.monotonic() - t0 < 5
    assert not feeder.is_alive() and len(errors) == 1
    assert server.dropped == 2 and server.sent == 0  # the unsent trains are counted


def test_flush_waits_until_everything_is_sent():
    with BridgeServer(LOCAL, "PUSH", maxlen=5) as server:
        for i in range(3):
            server.feed(*small_train(i))
        assert server.flush(timeout=0.2) is False
        with Client(server.endpoint, "PULL", timeout=10) as client:
            for i in range(3):
                check_train(*client.next(), i)
            assert server.flush(timeout=10) is True


def test_dummy_timestamps_and_zero_copy_send():
    image = np.arange(1 << 16, dtype=np.float32)
    with BridgeServer(LOCAL, "PUSH", dummy_timestamps=True) as server:
        t0 = time.time()
        server.feed({SOURCE: {"image.data": image}}, {SOURCE: {"timestamp.tid": 5}})
        with Client(server.endpoint, "PULL", timeout=10) as client:
            data, meta = client.next()
        assert t0 - 1 <= meta[SOURCE]["timestamp"] <= time.time() + 1
        assert meta[SOURCE]["timestamp.tid"] == 5
        assert np.array_equal(data[SOURCE]["image.data"], image)


@pytest.mark.parametrize("pattern", ["REP", "PUB", "PUSH"])
def test_sending_thread_sleeps_while_it_waits(pattern):
    """Waiting for a request, a subscriber or a PUSH peer costs no CPU (no busy loop)."""
    import resource

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    with BridgeServer(LOCAL, pattern, maxlen=2) as server:
        if pattern == "PUSH":
            server.feed(*small_train(0))
            server.feed(*small_train(1))
            assert wait_until(lambda: server.queued == 2)
        before = cpu()
        threading.Event().wait(0.5)  # an interval to measure, not a wait for a condition
        used = cpu() - before
    assert used < 0.15, f"{pattern} server used {used:.2f} s CPU in 0.5 s while waiting"
