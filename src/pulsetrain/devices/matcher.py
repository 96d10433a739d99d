"""``TrainMatcher``: merge the streams of several sources back into whole trains by train ID."""

from __future__ import annotations

import collections
import re
import time
from typing import Any

import numpy as np

from pulsetrain.pending import PendingTrains
from pulsetrain.protocol import train_id_of
from pulsetrain.runtime.device import Device, Property, State, slot

__all__ = ["TrainMatcher"]

#: Seconds without data after which complete trains held for older ones (``max_reorder``) go.
_IDLE_FLUSH = 1.0


def _natural_key(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


class TrainMatcher(Device):
    """Merge sources arriving on one input into trains, by train ID.

    Modes (as EuXFEL's TrainMatcher): ``match`` sends a train once every selected source has
    delivered it, and discards earlier trains that are still incomplete; ``buffer`` holds
    ``buffer_size`` trains and releases each one, possibly partial, when a train
    ``buffer_size`` IDs later starts arriving.  Optionally stacks one key of several sources into
    one array with a module axis (for tools such as OnDA that want a stacked detector).

    Replicas.  A source computed by several replicas of a device (a topology's ``replicas``)
    arrives out of train order: each replica finishes its own trains.  With ``max_reorder = N``
    the matcher still sends trains in train-ID order, exactly once: a complete train waits for
    older ones (incomplete, or not seen at all) until a train more than ``N`` IDs newer is
    complete, or until no data came for a second; then the older ones are given up.  Trains
    given up are counted: ``incompleteTrains`` (some sources came), ``trainGaps`` (no source
    came: e.g. lost with a replica that died) and, per source, ``sourceMissing``.  With
    ``max_reorder = 0`` (the default) a complete train gives up every older one at once.
    """

    inputs = ("input",)
    outputs = ("output",)

    mode = Property(
        str,
        "match",
        options=("match", "buffer"),
        access="init",
        description="match: only complete trains; buffer: fixed delay, may be partial",
    )
    sources = Property(list, [], description="sources to match (empty: learn from the stream)")
    learn_trains = Property(
        int,
        20,
        minimum=1,
        access="init",
        description="trains observed to learn the sources when none given",
    )
    buffer_size = Property(
        int,
        100,
        minimum=1,
        maximum=10000,
        description="trains held while waiting (match) or the delay (buffer)",
    )
    stack_pattern = Property(
        str, "", access="init", description="regex of sources to stack (empty: no stacking)"
    )
    stack_keys = Property(list, ["image.data"], access="init", description="keys to stack")
    stack_source = Property(
        str, "", access="init", description="source name of the stacked data (default: derived)"
    )
    stack_axis = Property(int, 0, minimum=0, access="init", description="position of module axis")
    keep_stacked_sources = Property(
        bool, False, access="init", description="also forward the sources that were stacked"
    )

    max_reorder = Property(
        int,
        0,
        minimum=0,
        maximum=10000,
        description="train IDs by which sources may arrive out of order (replicas); "
        "a topology with replicas sets it",
    )

    matchedTrains = Property(int, 0, access="readonly", description="trains sent")
    incompleteTrains = Property(
        int, 0, access="readonly", description="trains discarded (match) or sent partial (buffer)"
    )
    lateData = Property(
        int,
        0,
        access="readonly",
        description="source data that arrived after its train was sent/dropped",
    )
    trainGaps = Property(
        int,
        0,
        access="readonly",
        description="train IDs skipped: no source delivered them before later trains were done",
    )
    duplicateData = Property(
        int, 0, access="readonly", description="source data that came twice for one train"
    )
    uniqueTrains = Property(int, 0, access="readonly", description="distinct train IDs seen")
    matchingRatio = Property(
        float, 0.0, access="readonly", description="trains sent / distinct train IDs seen"
    )
    currentTrainId = Property(int, 0, access="readonly")
    sourceLatency = Property(
        dict,
        {},
        access="readonly",
        unit="s",
        description="mean latency of each source (arrival − train timestamp)",
    )
    sourceCounts = Property(dict, {}, access="readonly", description="items received per source")
    sourceMissing = Property(
        dict,
        {},
        access="readonly",
        description="trains finished (sent or given up) without this source's data, per source",
    )
    outputLatency = Property(
        dict,
        {},
        access="readonly",
        unit="s",
        description="p50/p99 of send time − train timestamp, last 1000",
    )

    def initialize(self) -> None:
        self._pending = PendingTrains()
        self._done_below = -1  # trains with ID <= this are finished (sent or dropped)
        self._newest_complete = -1  # newest train every wanted source delivered (match mode)
        self._last_arrival = time.monotonic()
        self._learned: set[str] = set()
        self._lat: dict[str, collections.deque] = collections.defaultdict(
            lambda: collections.deque(maxlen=100)
        )
        self._out_lat: collections.deque = collections.deque(maxlen=1000)
        self._counts: collections.Counter = collections.Counter()
        self._missing: collections.Counter = collections.Counter()
        self._seen_ids: collections.deque = collections.deque(maxlen=10000)
        self._seen_set: set[int] = set()
        self._stack_re = re.compile(self.stack_pattern) if self.stack_pattern else None
        self.every(1.0, self._tick)
        self.set_state(State.PROCESSING)

    # ------------------------------------------------------------ data
    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        tid = train_id_of(meta)
        if tid is None:
            raise ValueError(f"data from {sorted(data)} carries no train ID")
        now = time.time()
        self._last_arrival = time.monotonic()
        for src in data:
            self._counts[src] += 1
            ts = meta.get(src, {}).get("timestamp")
            if ts is not None:
                self._lat[src].append(now - float(ts))
        if tid not in self._seen_set:
            if len(self._seen_ids) == self._seen_ids.maxlen:
                self._seen_set.discard(self._seen_ids[0])
            self._seen_ids.append(tid)
            self._seen_set.add(tid)
            self.count("uniqueTrains")
        if tid <= self._done_below:
            self.count("lateData")
            return
        held = self._pending.get(tid)
        if held is not None and not held[0].keys().isdisjoint(data):
            self.count("duplicateData")  # the newest copy wins
        self._pending.add(tid, data, meta)
        if self.mode == "match":
            self._match(tid)
        else:
            self._buffer(tid)
        self.record(currentTrainId=tid)

    def _learning(self) -> bool:
        return not self.sources and self.uniqueTrains <= self.learn_trains

    def _wanted(self) -> set[str]:
        return set(self.sources) if self.sources else self._learned

    def _match(self, tid: int) -> None:
        if self._learning():
            # Sources are learned from the first trains; nothing is sent meanwhile.
            self._learned.update(self._pending[tid][0])
            while len(self._pending) > self.buffer_size:
                self._drop_oldest()
            return
        if self._wanted().issubset(self._pending[tid][0]):
            self._newest_complete = max(self._newest_complete, tid)
        self._release(self.max_reorder)
        while len(self._pending) > self.buffer_size:
            self._drop_oldest()

    def _release(self, max_reorder: int) -> None:
        """Send complete trains in train-ID order; give up older ones (incomplete or never
        seen) once a train more than ``max_reorder`` IDs newer is complete."""
        wanted = self._wanted()
        while self._pending:
            tid = next(iter(self._pending))
            expected = self._done_below + 1 if self._done_below >= 0 else tid
            if tid > expected and self._newest_complete - expected <= max_reorder:
                return  # an older train may still come (from a slower replica)
            data, meta = self._pending[tid]
            if wanted.issubset(data):
                self._pending.pop(tid)
                self._finish(tid, data, wanted)
                self._send({s: data[s] for s in wanted}, {s: meta[s] for s in wanted if s in meta})
            elif self._newest_complete - tid > max_reorder:
                self._pending.pop(tid)
                self._finish(tid, data, wanted)
                self.count("incompleteTrains")
            else:
                return

    def _finish(self, tid: int, data: dict, wanted: set[str]) -> None:
        """Train ``tid`` is done (sent or given up): count what it and the IDs skipped before
        it lacked."""
        if self._done_below >= 0 and tid > self._done_below + 1:
            gap = tid - self._done_below - 1
            self.count("trainGaps", gap)
            for src in wanted:
                self._missing[src] += gap
        for src in wanted:
            if src not in data:
                self._missing[src] += 1
        self._done_below = max(self._done_below, tid)

    def _drop_oldest(self) -> None:
        tid, (data, _) = self._pending.popitem(last=False)
        self._finish(tid, data, self._wanted())
        self.count("incompleteTrains")

    def _buffer(self, tid: int) -> None:
        newest = next(reversed(self._pending))
        while self._pending and next(iter(self._pending)) <= newest - self.buffer_size:
            self._release_oldest()

    def _release_oldest(self) -> None:
        tid, (data, meta) = self._pending.popitem(last=False)
        wanted = set(self.sources) if self.sources else set(data)
        self._finish(tid, data, wanted)
        if not wanted.issubset(data):
            self.count("incompleteTrains")
        self._send(
            {s: v for s, v in data.items() if s in wanted},
            {s: m for s, m in meta.items() if s in wanted},
        )

    def on_eos(self, channel: str) -> None:
        if self.mode == "buffer":
            while self._pending:
                self._release_oldest()
        else:
            if not self._learning():
                self._release(0)  # nothing more will come: held complete trains go
            self.count("incompleteTrains", len(self._pending))
            for tid, (data, _) in list(self._pending.items()):
                self._finish(tid, data, self._wanted())
            self._pending.clear()
        super().on_eos(channel)

    # ------------------------------------------------------------ output
    def _send(self, data: dict, meta: dict) -> None:
        if self._stack_re is not None:
            data, meta = self._stack(data, meta)
        self.write("output", data, meta)
        self.count("matchedTrains")
        ts = [m.get("timestamp") for m in meta.values() if m.get("timestamp") is not None]
        if ts:
            self._out_lat.append(time.time() - float(max(ts)))

    def _stack(self, data: dict, meta: dict) -> tuple[dict, dict]:
        names = [
            s for s in (self.sources or sorted(data, key=_natural_key)) if self._stack_re.search(s)
        ]
        names = [s for s in names if s in data] if self.mode == "match" else names
        present = [s for s in names if s in data]
        if not present:
            return data, meta
        target = self.stack_source or re.sub(r"\d+CH0:.*$", "APPEND", present[0])
        out = {s: v for s, v in data.items() if self.keep_stacked_sources or s not in present}
        omet = {s: v for s, v in meta.items() if self.keep_stacked_sources or s not in present}
        stacked: dict[str, Any] = {}
        for key in self.stack_keys:
            arrays = [np.asarray(data[s][key]) for s in present if key in data[s]]
            if not arrays:
                continue
            shape, dtype = arrays[0].shape, arrays[0].dtype
            axis = min(self.stack_axis, len(shape))
            full_shape = list(shape)
            full_shape.insert(axis, len(names))
            block = np.zeros(full_shape, dtype=dtype)
            view = np.moveaxis(block, axis, 0)
            for i, s in enumerate(names):
                if s in data and key in data[s]:
                    view[i] = data[s][key]
            stacked[key] = block
        first = data[present[0]]
        for key, value in first.items():  # per-frame metadata (cellId, pulseId...) of module 0
            if key not in stacked and not key.startswith("image.data"):
                stacked[key] = value
        stacked["modulesPresent"] = np.array([s in data for s in names])
        out[target] = stacked
        omet[target] = {**meta[present[0]], "source": target}
        return out, omet

    # ------------------------------------------------------------ status
    def _tick(self) -> None:
        if (
            self.mode == "match"
            and self.max_reorder
            and self._pending
            and not self._learning()
            and time.monotonic() - self._last_arrival >= _IDLE_FLUSH
        ):
            self._release(0)  # the stream paused: do not hold complete trains for ever
        self._publish_stats()

    def _publish_stats(self) -> None:
        seen = self.uniqueTrains
        lat = {s: float(np.mean(d)) for s, d in self._lat.items() if d}
        out = {}
        if self._out_lat:
            arr = np.array(self._out_lat)
            out = {
                "p50": float(np.percentile(arr, 50)),
                "p99": float(np.percentile(arr, 99)),
                "n": len(arr),
            }
        self.update(
            matchedTrains=self.matchedTrains,
            matchingRatio=self.matchedTrains / seen if seen else 0.0,
            sourceLatency=lat,
            sourceCounts=dict(self._counts),
            sourceMissing=dict(self._missing),
            outputLatency=out,
        )

    @slot(description="Forget pending trains and learned sources; zero the counters")
    def clear(self) -> None:
        """Forget pending trains, learned sources and counters."""
        self._pending.clear()
        self._learned.clear()
        self._done_below = -1
        self._newest_complete = -1
        self._missing.clear()
        self.update(
            matchedTrains=0,
            incompleteTrains=0,
            lateData=0,
            uniqueTrains=0,
            trainGaps=0,
            duplicateData=0,
            sourceMissing={},
        )
        self._seen_ids.clear()
        self._seen_set.clear()
        self._out_lat.clear()
