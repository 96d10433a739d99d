"""``FileReplay``: send a recorded run through a pipeline as if it were live."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterator

from pulsetrain.files.naming import module_number
from pulsetrain.runtime.device import ProducerDevice, Property, State, slot

__all__ = ["FileReplay", "parse_train_range"]

N_MODULES = 16


def parse_train_range(text: str) -> tuple[int, int] | slice | None:
    """``"A:B"`` → train IDs ``A <= tid < B``; ``"#A:B"`` → positions; ``""`` → all."""
    text = text.strip()
    if not text:
        return None
    positional = text.startswith("#")
    a, _, b = text.lstrip("#").partition(":")
    start = int(a) if a else None
    stop = int(b) if b else None
    if positional:
        return slice(start, stop)
    return (start if start is not None else 0, stop if stop is not None else 2**63 - 1)


class FileReplay(ProducerDevice):
    """Replay a run directory train by train (read by :func:`pulsetrain.files.iter_run_trains`).

    Detector module sources go to outputs ``module0`` … ``module15`` (by the module number in
    the source name), so a raw run can feed the per-module correction pipeline; every other
    source (or, with ``all_in_output``, everything) goes to ``output``.  With ``rate = 0`` it
    replays as fast as the pipeline accepts: connect with ``on_slowness = 'wait'`` so nothing is
    dropped — the "preprocessed data on request" of the design's figure 4.
    """

    outputs = tuple(f"module{m}" for m in range(N_MODULES)) + ("output",)

    run_dir = Property(str, "", access="init")
    sources = Property(list, [], access="init", description="source globs (empty: all)")
    trains = Property(str, "", access="init", description='"A:B" train IDs, "#A:B" positions')
    rate = Property(
        float,
        10.0,
        minimum=0.0,
        maximum=10000.0,
        unit="Hz",
        description="0: as fast as the pipeline accepts",
    )
    repeat = Property(bool, False)
    all_in_output = Property(bool, False, access="init")
    retimestamp = Property(bool, False, description="stamp trains with the replay time")
    read_ahead = Property(
        int,
        2,
        minimum=0,
        maximum=64,
        access="init",
        description="trains read by a background thread ahead of sending "
        "(0: read in the sending thread)",
    )
    connect_timeout = Property(
        float,
        10.0,
        minimum=0.0,
        unit="s",
        access="init",
        description="before the first train, wait this long for every "
        "output that carries data to have an input connected",
    )

    trainId = Property(int, 0, access="readonly")
    passes = Property(int, 0, access="readonly", description="completed passes over the run")

    def initialize(self) -> None:
        from pulsetrain.files import run_info

        if not self.run_dir:
            raise ValueError("run_dir is not set")
        self.info = run_info(self.run_dir)
        self._trains: Iterator | None = None  # the pass over the run being sent
        self._consumers_due: float | None = None
        self.set_state(State.ON, f"{self.info.n_trains} trains, {len(self.info.sources)} sources")

    @slot(allowed_states=("ON", "STOPPED"), description="Start (or resume) the replay")
    def start_replay(self) -> None:
        """Start (or resume) sending trains."""
        self.start_acquisition()

    @slot(allowed_states=("ACQUIRING",), description="Pause the replay")
    def stop_replay(self) -> None:
        """Pause sending."""
        self.stop_acquisition()

    def _split(self, data: dict, meta: dict) -> dict[str, tuple[dict, dict]]:
        parts: dict[str, tuple[dict, dict]] = {}
        for src, props in data.items():
            m = None if self.all_in_output else module_number(src)
            name = f"module{m}" if m is not None and m < N_MODULES else "output"
            d, mt = parts.setdefault(name, ({}, {}))
            d[src] = props
            mt[src] = meta[src]
        return parts

    def _consumers_ready(self) -> bool:
        """Data written before an input connects is lost for it: wait (up to
        ``connect_timeout``) for every output that carries data to have an input."""
        sources = [
            s
            for s in self.info.sources
            if not self.sources or any(fnmatch.fnmatchcase(s, p) for p in self.sources)
        ]
        names = sorted(self._split({s: {} for s in sources}, {s: {} for s in sources}))
        waiting = [n for n in names if not self.output_channels[n].wait_for_inputs(1, 0)]
        if not waiting:
            return True
        now = time.monotonic()
        if self._consumers_due is None:
            self._consumers_due = now + self.connect_timeout
        if now < self._consumers_due:
            return False
        for name in waiting:
            self.log.warning("output %s has no input: its trains are not delivered", name)
        return True

    def _open_pass(self) -> None:
        from pulsetrain.files import iter_run_trains
        from pulsetrain.files.prefetch import read_ahead

        reader = iter_run_trains(
            self.run_dir, sources=self.sources or None, trains=parse_train_range(self.trains)
        )
        self._trains = read_ahead(
            reader, depth=self.read_ahead, name=f"replay-reader:{self.device_id}"
        )

    def _close_pass(self) -> None:
        if self._trains is not None:
            self._trains.close()
            self._trains = None

    def produce(self) -> bool:
        from pulsetrain.protocol import make_meta

        if self._trains is None:
            if self.passes == 0 and not self._consumers_ready():
                return False
            self._open_pass()
        try:
            tid, data, meta = next(self._trains)
        except StopIteration:
            self._close_pass()
            self.count("passes")
            if not self.repeat:
                self.end_of_stream("replay finished")
            return False
        if self.retimestamp:
            now = time.time()
            meta = {s: make_meta(s, tid, now) for s in meta}
        for name, (d, mt) in self._split(data, meta).items():
            self.write(name, d, mt)
        self.record(trainId=tid)
        return True

    def shutdown(self) -> None:
        self._close_pass()
