"""``DAQWriter``: record pipeline data as European XFEL run files, and catalogue the runs."""

from __future__ import annotations

from typing import Any, ClassVar

from pulsetrain.errors import CatalogError, FileFormatError, StorageError
from pulsetrain.files.recorder import RunRecorder
from pulsetrain.runtime.device import Device, Property, State, slot

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

    ``recording`` is false whenever the device is in ERROR, whatever put it there: the open run
    is then closed at once (what was accepted and can still be written is written first) and
    catalogued; ``start_run`` opens a new one.  The recording itself is a
    :class:`~pulsetrain.files.recorder.RunRecorder`; this device only feeds it.
    """

    inputs: ClassVar[dict[str, dict[str, Any]]] = {"input": {"on_slowness": "wait"}}

    directory = Property(str, "data/raw", access="init", description="where run directories go")
    proposal = Property(int, 900001, minimum=0)
    data_category = Property(str, "RAW", options=("RAW", "CORR"), access="init")
    sample = Property(str, "")
    run_type = Property(str, "raw")
    catalog = Property(
        str, "", access="init", description="catalogue URL to record runs in (empty: none)"
    )
    sequence_trains = Property(int, 500, minimum=1, description="trains per sequence file")
    compression = Property(str, "", options=("", "gzip", "lzf"))
    gather_trains = Property(
        int,
        3,
        minimum=0,
        maximum=1000,
        description="trains to wait for late sources before writing",
    )
    autostart = Property(bool, False, access="init", description="start a run at once")
    max_trains = Property(int, 0, minimum=0, description="stop the run after this many trains")

    recording = Property(bool, False, access="readonly")
    runNumber = Property(int, 0, access="readonly", description="current or last run number")
    runDirectory = Property(str, "", access="readonly")
    trainsWritten = Property(int, 0, access="readonly")
    bytesWritten = Property(int, 0, access="readonly")
    filesClosed = Property(list, [], access="readonly")
    lateData = Property(int, 0, access="readonly", description="data for trains already written")
    notRecorded = Property(
        int,
        0,
        access="readonly",
        description="trains received while not recording or after a write failure",
    )
    lastRun = Property(dict, {}, access="readonly", description="summary of the last run")

    def initialize(self) -> None:
        self._run: RunRecorder | None = None
        self._close_after_error = False
        self.set_state(State.ON)
        if self.autostart:
            self.start_run()
        self.every(1.0, self._stats)

    # ------------------------------------------------------------ state
    def set_state(self, state: State | str, status: str | None = None) -> None:
        """Change the state; entering ERROR stops the recording first (``recording`` false)."""
        if State(state) is State.ERROR and self.recording:
            self.update(recording=False)  # before the state: whoever sees ERROR sees this
            self._close_after_error = True
        super().set_state(state, status)

    def _close_run_after_error(self) -> None:
        """Close the run that an error interrupted (on the device's thread)."""
        self._close_after_error = False
        if self._run is not None:
            self._close_run()

    # ------------------------------------------------------------ runs
    @slot(allowed_states=("ON", "ERROR"), description="Open a new run and start recording")
    def start_run(self) -> int:
        """Open a new run directory and start recording; returns the run number."""
        if self._run is not None:
            self._close_run()
        run = RunRecorder(
            self.directory,
            proposal=self.proposal,
            data_category=self.data_category,
            sequence_trains=self.sequence_trains,
            compression=self.compression or None,
            sample=self.sample,
            run_type=self.run_type,
            gather_trains=self.gather_trains,
            catalog=self.catalog,
        )
        self._run = run
        self._close_after_error = False
        self.update(
            recording=True,
            runNumber=run.run_number,
            runDirectory=str(run.run_dir),
            trainsWritten=0,
            bytesWritten=0,
            filesClosed=[],
        )
        self.set_state(State.ACQUIRING, f"recording run {run.run_number} in {run.run_dir}")
        return run.run_number

    @slot(allowed_states=("ACQUIRING", "ERROR"), description="Close the run and catalogue it")
    def stop_run(self) -> dict:
        """Write what is pending, close the files, record the run; returns its summary."""
        if self._run is None:  # never started, or already closed by an error
            return dict(self.lastRun)
        summary = self._close_run()
        if self.state != State.ERROR.value:
            self.set_state(
                State.ON,
                f"run {summary['run']}: {summary['trains']} trains, {len(summary['files'])} files",
            )
        return summary

    def _close_run(self) -> dict:
        """Close the open run (writing what it holds back) and publish its summary."""
        run, self._run = self._run, None
        self.update(recording=False)
        try:
            summary = run.close()
        except StorageError as exc:
            summary = run.summary
            self.set_error(f"closing run {run.run_number} failed: {exc}")
        except CatalogError as exc:
            summary = run.summary
            self.set_error(str(exc))
        summary = {k: v for k, v in summary.items() if k != "paths"}
        self._publish(run)
        self.update(lastRun=summary, trainsWritten=summary["trains"])
        return summary

    # ------------------------------------------------------------ data
    def on_data(self, data: dict, meta: dict, channel: str) -> None:
        if self._close_after_error:
            self._close_run_after_error()
        run = self._run
        if run is None or run.failure is not None:
            self.count("notRecorded")
            return
        try:
            run.add(data, meta)
        except FileFormatError as exc:  # not this train's to break the run: refused, said
            raise FileFormatError(f"train not recorded: {exc}") from exc
        except StorageError as exc:
            self._fail(run, exc)
            return
        finally:
            self.record(lateData=run.late, trainsWritten=run.trains_written)
        if self.max_trains and run.trains_written >= self.max_trains:
            self.stop_run()

    def on_eos(self, channel: str) -> None:
        run = self._run
        if run is None:
            return
        try:
            run.flush()
        except StorageError as exc:
            self._fail(run, exc)
        self.record(trainsWritten=run.trains_written)

    def _fail(self, run: RunRecorder, exc: StorageError) -> None:
        self.count("notRecorded", run.not_recorded)
        closed = [str(p) for p in run.files]
        self.update(filesClosed=closed)
        self.set_error(f"run {run.run_number}: {exc}; {len(closed)} closed files are valid")

    def _publish(self, run: RunRecorder) -> None:
        self.update(
            bytesWritten=run.bytes_written,
            filesClosed=[str(p) for p in run.files],
            lateData=run.late,
        )

    def _stats(self) -> None:
        if self._close_after_error:
            self._close_run_after_error()
        if self._run is not None:
            self._publish(self._run)

    def shutdown(self) -> None:
        if self._run is not None:
            self.stop_run()
