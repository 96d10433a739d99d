"""``FileReplay``: send a recorded run through a pipeline as if it were live."""

from __future__ import annotations

import threading
import time

from pulsetrain.device import Device, Property, State, slot
from pulsetrain.files.naming import module_number

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


class FileReplay(Device):
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
    autostart = Property(bool, True, access="init")
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

    sentTrains = Property(int, 0, access="readonly")
    trainId = Property(int, 0, access="readonly")
    passes = Property(int, 0, access="readonly", description="completed passes over the run")

    def initialize(self) -> None:
        from pulsetrain.files import run_info

        if not self.run_dir:
            raise ValueError("run_dir is not set")
        self.info = run_info(self.run_dir)
        self._run = threading.Event()
        threading.Thread(target=self._produce, daemon=True, name=f"replay:{self.device_id}").start()
        self.set_state(State.ON, f"{self.info.n_trains} trains, {len(self.info.sources)} sources")
        if self.autostart:
            self.start_replay()

    @slot(allowed_states=("ON", "STOPPED"), description="Start (or resume) the replay")
    def start_replay(self) -> None:
        """Start (or resume) sending trains."""
        self._run.set()
        self.set_state(State.ACQUIRING)

    @slot(allowed_states=("ACQUIRING",), description="Pause the replay")
    def stop_replay(self) -> None:
        """Pause sending."""
        self._run.clear()
        self.set_state(State.STOPPED)

    def _split(self, data: dict, meta: dict) -> dict[str, tuple[dict, dict]]:
        parts: dict[str, tuple[dict, dict]] = {}
        for src, props in data.items():
            m = None if self.all_in_output else module_number(src)
            name = f"module{m}" if m is not None and m < N_MODULES else "output"
            d, mt = parts.setdefault(name, ({}, {}))
            d[src] = props
            mt[src] = meta[src]
        return parts

    def _await_consumers(self) -> None:
        """Data written before an input connects is lost for it: wait for the consumers."""
        import fnmatch

        sources = [
            s
            for s in self.info.sources
            if not self.sources or any(fnmatch.fnmatchcase(s, p) for p in self.sources)
        ]
        names = set(self._split({s: {} for s in sources}, {s: {} for s in sources}))
        deadline = time.monotonic() + self.connect_timeout
        for name in sorted(names):
            left = deadline - time.monotonic()
            if left <= 0 or not self.output_channels[name].wait_for_inputs(1, left):
                self.log.warning("output %s has no input: its trains are not delivered", name)

    def _produce(self) -> None:
        from contextlib import closing

        from pulsetrain.files import iter_run_trains
        from pulsetrain.files.prefetch import read_ahead
        from pulsetrain.protocol import make_meta

        while not self._run.wait(0.2):
            if self._stopping.is_set():
                return
        self._await_consumers()
        while not self._stopping.is_set():
            t_next = time.monotonic()
            reader = iter_run_trains(
                self.run_dir,
                sources=self.sources or None,
                trains=parse_train_range(self.trains),
            )
            with closing(
                read_ahead(reader, depth=self.read_ahead, name=f"replay-reader:{self.device_id}")
            ) as trains:
                for tid, data, meta in trains:
                    while not self._run.wait(0.2):
                        if self._stopping.is_set():
                            return
                    if self._stopping.is_set():
                        return
                    if self.retimestamp:
                        now = time.time()
                        meta = {s: make_meta(s, tid, now) for s in meta}
                    for name, (d, mt) in self._split(data, meta).items():
                        self.write(name, d, mt)
                    self._values["sentTrains"] += 1
                    self._values["trainId"] = tid
                    if self.rate > 0:
                        t_next += 1.0 / self.rate
                        delay = t_next - time.monotonic()
                        if delay > 0:
                            self._stopping.wait(delay)
            self._values["passes"] += 1
            if not self.repeat:
                break
        for name in self.outputs:
            self.signal_eos(name)
        self.run_in_device(lambda: self.set_state(State.STOPPED, "replay finished"))
