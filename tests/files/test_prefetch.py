"""read_ahead: same items in order, errors passed on, the thread stops when the consumer does."""

from __future__ import annotations

import threading

import pytest

from pulsetrain.files.prefetch import read_ahead


def test_items_come_in_order_from_another_thread():
    producers = set()

    def gen():
        for i in range(50):
            producers.add(threading.get_ident())
            yield i

    assert list(read_ahead(gen(), depth=3)) == list(range(50))
    assert producers and threading.get_ident() not in producers


def test_depth_zero_iterates_in_the_callers_thread():
    producers = set()

    def gen():
        for i in range(5):
            producers.add(threading.get_ident())
            yield i

    assert list(read_ahead(gen(), depth=0)) == list(range(5))
    assert producers == {threading.get_ident()}


def test_production_stays_at_most_depth_ahead():
    produced = []
    taken = threading.Event()

    def gen():
        for i in range(100):
            produced.append(i)
            yield i

    it = read_ahead(gen(), depth=2)
    assert next(it) == 0
    # wait (bounded) until the producer is blocked on the full queue
    for _ in range(200):
        if len(produced) >= 4:
            break
        taken.wait(0.01)
    # 1 taken + 2 in the queue + 1 waiting to be put
    assert len(produced) <= 4
    it.close()


def test_errors_reach_the_consumer_after_the_items_before_them():
    def gen():
        yield 1
        yield 2
        raise KeyError("broken file")

    got = []
    it = read_ahead(gen(), depth=4)
    got.append(next(it))
    got.append(next(it))
    with pytest.raises(KeyError, match="broken file"):
        next(it)
    assert got == [1, 2]


def test_leaving_early_stops_the_thread_and_closes_the_source():
    closed = threading.Event()

    def gen():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    before = {t.ident for t in threading.enumerate()}
    for item in read_ahead(gen(), depth=2, name="test-read-ahead"):
        if item == 3:
            break
    assert closed.wait(5)
    left = [t for t in threading.enumerate() if t.name == "test-read-ahead"]
    assert not [t for t in left if t.ident not in before]
