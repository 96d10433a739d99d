"""TrainMatcher: match, buffer, the buffer limit, stacking, out-of-order data and duplicates.

Each test runs the device in the in-process harness and sends source data one message at a
time (in order, nothing dropped); a later complete train is the synchronisation point that
shows what the matcher did with the earlier ones, since its output keeps the order it sends.
"""

from __future__ import annotations

import numpy as np
import pytest

from pulsetrain.testing import DeviceHarness

A, B = "SRC/A:out", "SRC/B:out"


def send(dev: DeviceHarness, source: str, tid: int, value: float | None = None) -> None:
    value = float(tid) if value is None else value
    dev.send({source: {"v": np.array([value]), "trainId": tid}}, train_id=tid)


def tid_of(meta: dict) -> int:
    (tid,) = {m["timestamp.tid"] for m in meta.values()}
    return tid


@pytest.fixture
def matcher(request):
    config = {"sources": [A, B], **getattr(request, "param", {})}
    with DeviceHarness("TrainMatcher", config, device_id="TEST/MATCH/1") as dev:
        yield dev


def test_match_sends_a_train_once_every_source_delivered_it(matcher):
    send(matcher, A, 1)
    send(matcher, B, 1)
    data, meta = matcher.receive()
    assert sorted(data) == [A, B] and tid_of(meta) == 1
    assert float(data[A]["v"][0]) == 1.0 and float(data[B]["v"][0]) == 1.0
    matcher.wait_for("matchedTrains", 1)
    assert matcher.get("currentTrainId") == 1


def test_match_discards_older_incomplete_trains_and_counts_late_data(matcher):
    send(matcher, A, 1)  # B never comes for train 1
    send(matcher, A, 2)
    send(matcher, B, 2)
    assert tid_of(matcher.receive()[1]) == 2
    matcher.wait_for("incompleteTrains", 1)
    send(matcher, B, 1)  # too late: train 1 was given up
    send(matcher, A, 3)
    send(matcher, B, 3)
    assert tid_of(matcher.receive()[1]) == 3
    matcher.wait_for("lateData", 1)
    assert matcher.get("matchedTrains") == 2


def test_out_of_order_sources_are_matched_by_train_id(matcher):
    send(matcher, A, 2)
    send(matcher, A, 1)
    send(matcher, B, 1)
    send(matcher, B, 2)
    assert [tid_of(matcher.receive()[1]) for _ in range(2)] == [1, 2]
    matcher.wait_for("matchedTrains", 2)
    assert matcher.get("incompleteTrains") == 0 and matcher.get("lateData") == 0


def test_duplicates_are_merged_and_a_duplicate_after_sending_is_late(matcher):
    send(matcher, A, 1, value=10.0)
    send(matcher, A, 1, value=11.0)  # the same source again before the train is complete
    send(matcher, B, 1)
    data, meta = matcher.receive()
    assert tid_of(meta) == 1 and float(data[A]["v"][0]) == 11.0  # the newest copy wins
    send(matcher, A, 1)  # after the train was sent
    send(matcher, A, 2)
    send(matcher, B, 2)
    assert tid_of(matcher.receive()[1]) == 2
    matcher.wait_for("lateData", 1)
    assert matcher.get("uniqueTrains") == 2 and matcher.get("matchedTrains") == 2


@pytest.mark.parametrize("matcher", [{"buffer_size": 2}], indirect=True)
def test_match_gives_up_trains_beyond_the_buffer(matcher):
    """The buffer size is the matcher's time-out, counted in trains."""
    for tid in (1, 2, 3):
        send(matcher, A, tid)  # three incomplete trains: the oldest no longer fits
    matcher.wait_for("incompleteTrains", 1)
    send(matcher, B, 1)  # given up already
    send(matcher, B, 3)  # completes 3; 2 is older and incomplete: discarded
    assert tid_of(matcher.receive()[1]) == 3
    matcher.wait_for("incompleteTrains", 2)
    matcher.wait_for("lateData", 1)


@pytest.mark.parametrize("matcher", [{"mode": "buffer", "buffer_size": 2}], indirect=True)
def test_buffer_releases_trains_after_a_fixed_delay_partial_or_not(matcher):
    send(matcher, A, 1)
    send(matcher, B, 1)
    send(matcher, A, 2)  # B never comes for train 2
    send(matcher, A, 3)  # 3 - 2 >= 1: train 1 goes
    data, meta = matcher.receive()
    assert tid_of(meta) == 1 and sorted(data) == [A, B]
    send(matcher, A, 4)  # train 2 goes, partial
    data, meta = matcher.receive()
    assert tid_of(meta) == 2 and sorted(data) == [A]
    matcher.wait_for("incompleteTrains", 1)
    matcher.end_of_stream()  # the rest goes, then end-of-stream
    assert [tid_of(matcher.receive()[1]) for _ in range(2)] == [3, 4]
    assert matcher.receive_eos() == 0
    matcher.wait_for("incompleteTrains", 3)


def test_end_of_stream_in_match_mode_drops_what_is_pending_and_is_forwarded(matcher):
    send(matcher, A, 1)
    matcher.end_of_stream()
    assert matcher.receive_eos() == 0
    matcher.wait_for("incompleteTrains", 1)
    assert matcher.get("matchedTrains") == 0


def test_stacking_puts_modules_on_a_new_axis():
    mods = [f"DET/{m}CH0:xtdf" for m in range(3)]
    config = {"sources": mods, "stack_pattern": r"DET/\d+CH0", "stack_keys": ["image.data"]}
    with DeviceHarness("TrainMatcher", config, device_id="TEST/STACK/1") as dev:
        for m, src in enumerate(mods):
            frames = np.full((4, 2, 3), m, dtype=np.uint16)
            dev.send({src: {"image.data": frames, "image.cellId": np.arange(4)}}, train_id=7)
        data, meta = dev.receive()
    assert list(data) == ["DET/APPEND"] and tid_of(meta) == 7
    stacked = data["DET/APPEND"]
    assert stacked["image.data"].shape == (3, 4, 2, 3)
    for m in range(3):
        assert (stacked["image.data"][m] == m).all()
    assert stacked["modulesPresent"].tolist() == [True, True, True]
    assert stacked["image.cellId"].tolist() == [0, 1, 2, 3]
