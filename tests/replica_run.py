"""The run-and-check of load-balanced replicas that the one-host test
(``tests/test_replicas_one_host.py``) and the two-test-host test
(``tests/multihost/test_replicas.py``) share.

The topology has ``R/SOURCE`` (a ``TrainSource`` of ``n`` trains from :data:`FIRST`, started by
the test), ``R/WORK`` (two replicas fed through a shared output, ``R/WORK/1`` and
``R/WORK/2``) and ``R/MATCH`` (a ``TrainMatcher`` of the replicas' ``MOD0``).  The check: every
train comes out of the matcher once and in order; with replica 2's server killed half-way
(while it holds a train) only what it held is lost, the matcher counts it, and later trains
still come out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from pulsetrain.errors import ChannelError
from pulsetrain.runtime.channels import EndOfStream, InputChannel
from waiting import wait_until

FIRST = 10_000_000  # TrainSource's first train ID


def replica_pipeline(n: int, rate: float, delay: float, work_servers: list[str]) -> str:
    """The topology's devices and connections (TOML, after its ``[servers.*]`` tables): servers
    ``src`` and ``sink`` for the source and the matcher, one replica of ``R/WORK`` per name in
    ``work_servers``."""
    names = ", ".join(f'"{s}"' for s in work_servers)
    return f"""
[devices."R/SOURCE"]
class = "TrainSource"
server = "src"
config = {{ rate = {rate}, n_trains = {n}, shape = [4, 32], source_prefix = "MOD", autostart = false }}

[devices."R/WORK"]
class = "Passthrough"
replicas = {len(work_servers)}
servers = [{names}]
config = {{ delay = {delay} }}

[devices."R/MATCH"]
class = "TrainMatcher"
server = "sink"
config = {{ sources = ["MOD0"], buffer_size = 50 }}

[[connections]]
from = "R/SOURCE:output"
to = "R/WORK:input"
data_distribution = "shared"
on_slowness = "wait"

[[connections]]
from = "R/WORK:output"
to = "R/MATCH:input"
on_slowness = "wait"
"""


def tid_of(meta: dict) -> int:
    """The one train ID of a train's metadata (all sources agree)."""
    (tid,) = {m["timestamp.tid"] for m in meta.values()}
    return tid


class Reader:
    """Reads train IDs from an input channel in a thread (the test must keep reading: the
    pipeline waits for it) until train ``last`` or end of stream."""

    def __init__(self, endpoint: str, last: int):
        self.tap = InputChannel("test:tap", on_slowness="wait", window=8)
        self.tap.connect(endpoint)
        self.last = last
        self.got: list[int] = []
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                item = self.tap.get(timeout=0.2)
            except TimeoutError:
                continue
            except ChannelError:
                return
            if isinstance(item, EndOfStream):
                break
            self.got.append(tid_of(item.meta))
            if self.got[-1] >= self.last:
                break
        self.done.set()

    def close(self) -> None:
        self.done.set()
        self._thread.join(5)
        self.tap.close()


@dataclass
class ReplicaRun:
    """What a checked run gave: train IDs out of the matcher, trains lost, and how many
    trains the source had sent when replica 2 was killed (``None``: none was)."""

    got: list[int]
    lost: int
    killed_at: int | None


def run_and_check(
    sup, n: int, kill: Callable[[], None] | None = None, *, timeout: float = 90.0
) -> ReplicaRun:
    """Send ``n`` trains through the replicas of a running supervisor ``sup`` and check them.

    Parameters
    ----------
    sup
        A started :class:`pulsetrain.runtime.supervisor.Supervisor` of the topology above.
    n
        Trains the source sends (its ``n_trains``).
    kill
        Kills replica 2's server for good; called half-way while the replica holds a train.
        ``None``: every replica stays alive, so no train may be lost and both share the load.
    timeout
        Seconds to wait for the last train out of the matcher.
    """
    last = FIRST + n - 1
    reader = Reader(sup.endpoints()["R/MATCH:output"], last)
    killed_at = None
    try:
        wait_until(
            lambda: len(sup.get("R/MATCH", "channels.outputs.output.connections")) == 1,
            20,
            "the test reads the matcher",
        )
        sup.call("R/SOURCE", "start_acquisition")
        if kill is not None:
            wait_until(lambda: sup.get("R/SOURCE", "sentTrains") >= n // 2, 60, "half the trains")

            def busy() -> bool:  # it holds a train: killing it now loses that train
                values = sup.get("R/WORK/2")
                return values["trainsIn"] > values["processed"]

            wait_until(busy, 20, "replica 2 busy with a train")
            kill()
            killed_at = sup.get("R/SOURCE", "sentTrains")
        wait_until(reader.done.is_set, timeout, f"train {last} out of the matcher")
    finally:
        reader.close()
    got = reader.got
    assert len(got) == len(set(got)), "a train came out twice"
    assert got == sorted(got), "trains out of order"
    assert set(got) <= set(range(FIRST, FIRST + n))
    assert got and got[-1] == last, "the last train did not come out"
    lost = n - len(got)

    def stats_show_the_loss() -> bool:
        matcher = sup.get("R/MATCH")  # the whole configuration
        return (
            matcher["matchedTrains"] == len(got)
            and matcher["trainGaps"] + matcher["incompleteTrains"] == lost
            and matcher["sourceMissing"].get("MOD0", 0) == lost
        )

    wait_until(stats_show_the_loss, 20, "the matcher's statistics count the lost trains")
    assert sup.get("R/MATCH", "lateData") == 0 and sup.get("R/MATCH", "duplicateData") == 0
    if kill is None:
        assert lost == 0

        def shares() -> list[int]:
            return [sup.get(r, "processed") for r in ("R/WORK/1", "R/WORK/2")]

        wait_until(lambda: sum(shares()) == n, 10, f"the replicas to count {n} trains")
        assert min(shares()) > n // 5, f"load not shared: {shares()}"
    else:
        print(f"\nreplica 2 killed after {killed_at} trains: {lost} lost, {len(got)} of {n} out")
        assert lost >= 1, "the killed replica held a train"
        assert sum(1 for t in got if t >= FIRST + killed_at + 10) > 0, "no train after the kill"
    return ReplicaRun(got, lost, killed_at)
