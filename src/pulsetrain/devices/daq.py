"""``DAQWriter``: record pipeline data as European XFEL run files, and catalogue the runs."""

from __future__ import annotations

import collections
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pulsetrain.device import Device, Property, State, slot
from pulsetrain.errors import PulsetrainError, TrainOrderError
from pulsetrain.protocol import train_id_of

__all__ = ["DAQWriter"]


class DAQWriter(Device):
    """Write the trains arriving on ``input`` to run directories (``r0001``, ``r0002``, ...).

    Several outputs may feed the input (the matched detector, slow data, results of external
    tools); their sources are gathered per train ID for ``gather_trains`` trains and written
    together, one file per aggregator (detector module, ``DA01`` for the rest).  ``start_run``
    opens a new run (run numbers count up, from the catalogue when one is configured);
    ``stop_run`` closes its files and records the run in the catalogue.

    Failures never stop the pipeline: a full disk or any write error puts the device in ERROR
    with the message, the files already closed stay valid, and later trains are counted as
    ``notRecorded`` until a new run starts.  Data for a train already written is counted in
    ``lateData`` (refused, not silently lost).
    """

    inputs = {"input": {"on_slowness": "wait"}}

    directory = Property(str, "data/raw", access="init", description="where run directories go")
    proposal = Property(int, 900001, minimum=0)
    data_category = Property(str, "RAW", options=("RAW", "CORR"), access="init")
    sample = Property(str, "")
    run_type = Property(str, "raw")
    catalog = Property(str, "", access="init",
                       description="catalogue URL to record runs in (empty: none)")
    sequence_trains = Property(int, 500, minimum=1, description="trains per sequence file")
    compression = Property(str, "", options=("", "gzip", "lzf"))
    gather_trains = Property(int, 3, minimum=0, maximum=1000,
                             description="trains to wait for late sources before writing")
    autostart = Property(bool, False, access="init", description="start a run at once")
    max_trains = Property(int, 0, minimum=0, description="stop the run after this many trains")

    recording = Property(bool, False, access="readonly")
    runNumber = Property(int, 0, access="readonly", description="current or last run number")
    runDirectory = Property(str, "", access="readonly")
    trainsWritten = Property(int, 0, access="readonly")
    bytesWritten = Property(int, 0, access="readonly")
    filesClosed = Property(list, [], access="readonly")
    lateData = Property(int, 0, access="readonly", description="data for trains already written")
    notRecorded = Property(int, 0, access="readonly", description="trains received while not "
                           "recording or after a write failure")
    lastRun = Property(dict, {}, access="readonly", description="summary of the last run")

    def initialize(self) -> None:
        self._writer = None
        self._pending: collections.OrderedDict[int, tuple[dict, dict]] = collections.OrderedDict()
        self._written_below = -1
        self._started: datetime | None = None
        self._failed = False
        self.set_state(State.ON)
        if self.autostart:
            self.start_run()
        self.every(1.0, self._stats)

    # ------------------------------------------------------------ runs
    def _next_run_number(self) -> int:
        base = Path(self.directory)
        existing = [int(p.name[1:]) for p in base.glob("r[0-9][0-9][0-9][0-9]") if p.is_dir()]
        number = max(existing, default=0) + 1
        if self.catalog:
            from pulsetrain.catalog import Catalog

            cat = Catalog(self.catalog)
            try:
                number = max(number, cat.next_run_number(self.proposal))
            finally:
                cat.close()
        return number

    @slot(allowed_states=("ON", "ERROR"), description="Open a new run and start recording")
    def start_run(self) -> int:
        """Open a new run directory and start recording; returns the run number."""
        from pulsetrain.files import RunWriter

        number = self._next_run_number()
        run_dir = Path(self.directory) / f"r{number:04d}"
        self._writer = RunWriter(
            run_dir, proposal=self.proposal, run_number=number,
            data_category=self.data_category, sequence_trains=self.sequence_trains,
            compression=self.compression or None,
            run_metadata={"sample": self.sample or "unknown", "run_type": self.run_type},
        )
        self._pending.clear()
        self._written_below = -1
        self._failed = False
        self._started = datetime.now(timezone.utc)
        self.update(recording=True, runNumber=number, runDirectory=str(run_dir),
                    trainsWritten=0, bytesWritten=0, filesClosed=[])
        self.set_state(State.ACQUIRING, f"recording run {number} in {run_dir}")
        return number

    @slot(allowed_states=("ACQUIRING", "ERROR"), description="Close the run and catalogue it")
    def stop_run(self) -> dict:
        """Write what is pending, close the files, record the run; returns its summary."""
        if self._writer is None:
            return {}
        if not self._failed:
            self._flush(everything=True)
        writer, self._writer = self._writer, None
        try:
            writer.close()
        except PulsetrainError as exc:
            self.set_error(f"closing run {self.runNumber} failed: {exc}")
        manifest = writer.manifest()
        summary = {
            "run": self.runNumber, "directory": str(writer.run_dir),
            "trains": manifest["trains"], "files": [f["name"] for f in manifest["files"]],
            "bytes": manifest["bytes"], "error": manifest.get("error"),
        }
        if self.catalog:
            try:
                self._catalogue(writer, manifest)
            except Exception as exc:
                self.set_error(f"run {self.runNumber} written but not catalogued: {exc}")
        self.update(recording=False, lastRun=summary,
                    filesClosed=[str(p) for p in writer.files], trainsWritten=manifest["trains"])
        if self.state != State.ERROR.value:
            self.set_state(State.ON, f"run {self.runNumber}: {manifest['trains']} trains, "
                                     f"{len(manifest['files'])} files")
        return summary

    def _catalogue(self, writer: Any, manifest: dict) -> None:
        from pulsetrain.catalog import Catalog

        cat = Catalog(self.catalog)
        try:
            cat.add_run(
                self.proposal, self.runNumber, writer.run_dir,
                data_category=self.data_category, run_type=self.run_type,
                sample=self.sample or None, files=[f["name"] for f in manifest["files"]],
                n_trains=manifest["trains"], start_time=self._started,
                end_time=datetime.now(timezone.utc),
            )
        finally:
            cat.close()

    # ------------------------------------------------------------ data
    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        if self._writer is None or self._failed:
            self.count("notRecorded")
            return
        tid = train_id_of(meta)
        if tid is None:
            raise ValueError(f"data from {sorted(data)} carries no train ID")
        if tid <= self._written_below:
            self.count("lateData")
            return
        entry = self._pending.get(tid)
        if entry is None:
            entry = self._pending[tid] = ({}, {})
            if len(self._pending) > 1 and tid < next(reversed(self._pending)):
                self._pending = collections.OrderedDict(sorted(self._pending.items()))
        entry[0].update(data)
        entry[1].update(meta)
        self._flush()

    def on_eos(self, channel: str) -> None:
        self._flush(everything=True)

    def _flush(self, everything: bool = False) -> None:
        if not self._pending:
            return
        newest = next(reversed(self._pending))
        while self._pending:
            tid = next(iter(self._pending))
            if not everything and tid > newest - self.gather_trains:
                return
            data, meta = self._pending.pop(tid)
            self._written_below = tid
            try:
                self._writer.write_train(data, meta)
            except TrainOrderError as exc:  # a source older than what its file holds: refused
                self.count("lateData")
                self.log.warning("late data not written: %s", exc)
                continue
            except PulsetrainError as exc:
                self._fail(exc)
                return
            self.count("trainsWritten")
            if self.max_trains and self.trainsWritten >= self.max_trains:
                self.stop_run()
                return

    def _fail(self, exc: Exception) -> None:
        self._failed = True
        lost = len(self._pending) + 1
        self._pending.clear()
        self.count("notRecorded", lost)
        closed = [str(p) for p in self._writer.files] if self._writer is not None else []
        self.update(filesClosed=closed)
        self.set_error(f"run {self.runNumber}: {exc}; {len(closed)} closed files are valid")

    def _stats(self) -> None:
        if self._writer is not None:
            self.update(bytesWritten=int(self._writer.bytes_written),
                        filesClosed=[str(p) for p in self._writer.files])

    def shutdown(self) -> None:
        if self._writer is not None:
            self.stop_run()


