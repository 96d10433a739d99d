"""Recording one run: open it, take trains, count what was written, close it cleanly.

:class:`RunRecorder` is what the ``DAQWriter`` device and ``pulsetrain simulate`` share.  Over a
:class:`~pulsetrain.files.writer.RunWriter` it adds what a recording needs beyond writing files:

* the run number (the next free ``rNNNN`` in the directory, or from a run catalogue);
* gathering: the sources of one train may come from several producers, in any order, so a
  train is held back until ``gather_trains`` newer trains have been seen (0: written at once);
* data for a train already written is refused and counted (``late``), never silently lost;
* a storage failure (full disk, I/O error) stops the recording: :class:`StorageError` is raised
  once, the files already closed stay valid, and further trains are counted as not recorded;
* :meth:`RunRecorder.close` writes what is still held back, closes the files, records the run in
  the catalogue when one is given and returns a summary.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from pulsetrain.errors import CatalogError, FileFormatError, StorageError, TrainOrderError
from pulsetrain.files.writer import RunWriter
from pulsetrain.pending import PendingTrains
from pulsetrain.protocol import train_id_of

__all__ = ["RunRecorder", "next_run_number"]

log = logging.getLogger(__name__)


def next_run_number(directory: str | os.PathLike[str], catalog: str = "", proposal: int = 0) -> int:
    """The run number after the highest ``rNNNN`` in ``directory`` (and in the catalogue).

    Parameters
    ----------
    directory : path-like
        Where run directories ``r0001``, ``r0002``, ... are made.
    catalog : str
        Catalogue URL; when given, its next run number of ``proposal`` is taken into account.
    proposal : int
        Proposal number (only used with ``catalog``).
    """
    base = Path(directory)
    existing = [int(p.name[1:]) for p in base.glob("r[0-9][0-9][0-9][0-9]") if p.is_dir()]
    number = max(existing, default=0) + 1
    if catalog:
        from pulsetrain.catalog import Catalog

        cat = Catalog(catalog)
        try:
            number = max(number, cat.next_run_number(proposal))
        finally:
            cat.close()
    return number


class RunRecorder:
    """One run being recorded (opened by the constructor; close it with :meth:`close`).

    Parameters
    ----------
    directory : path-like
        Where the run directory ``rNNNN`` is made.
    run_number : int, optional
        Default: :func:`next_run_number` of ``directory`` (and of the catalogue).
    proposal : int
        Proposal number.
    data_category : {"RAW", "CORR"}
        First part of the file names.
    sequence_trains : int
        Trains per sequence file.
    compression : {None, "gzip", "lzf"}
        Filter for detector data.
    sample, run_type : str
        Run metadata (also recorded in the catalogue).
    gather_trains : int
        Newer trains to wait for before a train is written (late sources of it); 0: at once.
    catalog : str
        Catalogue URL to record the run in when it is closed (empty: none).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        run_number: int | None = None,
        proposal: int = 900001,
        data_category: str = "RAW",
        sequence_trains: int = 500,
        compression: str | None = None,
        sample: str = "",
        run_type: str = "raw",
        gather_trains: int = 0,
        catalog: str = "",
    ):
        if run_number is None:
            run_number = next_run_number(directory, catalog, proposal)
        self.run_number = run_number
        self.run_dir = Path(directory) / f"r{run_number:04d}"
        self.proposal = proposal
        self.data_category = data_category
        self.sample = sample
        self.run_type = run_type
        self.gather_trains = gather_trains
        self.catalog = catalog
        self.started = datetime.now(timezone.utc)
        self._writer = RunWriter(
            self.run_dir,
            proposal=proposal,
            run_number=run_number,
            data_category=data_category,
            sequence_trains=sequence_trains,
            compression=compression or None,
            run_metadata={"sample": sample or "unknown", "run_type": run_type},
        )
        self._pending = PendingTrains()
        self._written_below = -1
        self._summary: dict[str, Any] | None = None
        #: Trains written to the files.
        self.trains_written = 0
        #: Data refused because its train was already written (or older than its file holds).
        self.late = 0
        #: Trains lost to a storage failure, or offered after it.
        self.not_recorded = 0
        #: The storage error that stopped the recording, or None.
        self.failure: StorageError | None = None

    # ------------------------------------------------------------ state
    @property
    def bytes_written(self) -> int:
        """Bytes of array data handed to the files so far (uncompressed payload)."""
        return int(self._writer.bytes_written)

    @property
    def files(self) -> list[Path]:
        """Sequence files closed so far (complete and valid)."""
        return self._writer.files

    @property
    def pending(self) -> int:
        """Trains held back, waiting for late sources."""
        return len(self._pending)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._summary is not None

    # ------------------------------------------------------------ trains
    def add(self, data: dict, meta: dict) -> int:
        """Take the data of one train (all of its sources or some); return trains written.

        Raises
        ------
        FileFormatError
            The data carries no train ID (nothing is taken), or cannot be stored.
        StorageError
            Writing failed (disk full, I/O error): the recording stops here, the files already
            closed stay valid; later trains are counted in ``not_recorded``.
        """
        if self.failure is not None or self.closed:
            self.not_recorded += 1
            return 0
        tid = train_id_of(meta)
        if tid is None:
            raise FileFormatError(f"data from {sorted(data)} carries no train ID")
        if tid <= self._written_below:
            self.late += 1
            return 0
        self._pending.add(tid, data, meta)
        newest = next(reversed(self._pending))
        return self._write_while(lambda t: t <= newest - self.gather_trains)

    def flush(self) -> int:
        """Write every train held back (at end of stream); return trains written."""
        if self.failure is not None:
            return 0
        return self._write_while(lambda t: True)

    def _write_while(self, due: Any) -> int:
        written = 0
        while self._pending:
            tid = next(iter(self._pending))
            if not due(tid):
                break
            data, meta = self._pending.pop(tid)
            self._written_below = tid
            try:
                self._writer.write_train(data, meta)
            except TrainOrderError as exc:  # a source older than what its file holds
                self.late += 1
                log.warning("late data not written: %s", exc)
                continue
            except StorageError as exc:
                self.failure = exc
                self.not_recorded += len(self._pending) + 1
                self._pending.clear()
                raise
            except FileFormatError:  # this train cannot be stored; the run goes on
                self.not_recorded += 1
                raise
            self.trains_written += 1
            written += 1
        return written

    # ------------------------------------------------------------ closing
    def close(self) -> dict[str, Any]:
        """Write what is held back, close the files and catalogue the run; return its summary.

        The summary (also :attr:`summary`) holds ``run``, ``directory``, ``trains``, ``files``
        (names), ``paths``, ``bytes`` (on disk) and ``error``.  Calling it again returns the
        same summary.

        Raises
        ------
        StorageError
            Writing the held-back trains or finishing a file failed (the summary is still made,
            the run still catalogued; files closed before stay valid).
        CatalogError
            The run was written but could not be recorded in the catalogue.
        """
        if self._summary is not None:
            return self._summary
        error: Exception | None = None
        try:
            self.flush()
        except StorageError as exc:
            error = exc
        try:
            self._writer.close()
        except StorageError as exc:
            error = error or exc
        manifest = self._writer.manifest()
        self.trains_written = manifest["trains"]
        self._summary = {
            "run": self.run_number,
            "directory": str(self.run_dir),
            "trains": manifest["trains"],
            "files": [f["name"] for f in manifest["files"]],
            "paths": [str(p) for p in self._writer.files],
            "bytes": manifest["bytes"],
            "error": manifest.get("error"),
        }
        if self.catalog:  # a run cut short by a failure is catalogued too: its files are valid
            try:
                self._catalogue(manifest)
            except CatalogError:
                if error is None:
                    raise
                log.exception("run %d: not catalogued", self.run_number)
        if error is not None:
            raise error
        return self._summary

    @property
    def summary(self) -> dict[str, Any] | None:
        """What :meth:`close` returned (None while the run is open)."""
        return self._summary

    def _catalogue(self, manifest: dict[str, Any]) -> None:
        from pulsetrain.catalog import Catalog

        try:
            cat = Catalog(self.catalog)
            try:
                cat.add_run(
                    self.proposal,
                    self.run_number,
                    self.run_dir,
                    data_category=self.data_category,
                    run_type=self.run_type,
                    sample=self.sample or None,
                    files=[f["name"] for f in manifest["files"]],
                    n_trains=manifest["trains"],
                    start_time=self.started,
                    end_time=datetime.now(timezone.utc),
                )
            finally:
                cat.close()
        except CatalogError as exc:
            raise CatalogError(f"run {self.run_number} written but not catalogued: {exc}") from exc
        except Exception as exc:  # the catalogue's engine (SQLAlchemy, the file system)
            raise CatalogError(
                f"run {self.run_number} written but not catalogued: {type(exc).__name__}: {exc}"
            ) from exc

    def __enter__(self) -> RunRecorder:  # noqa: PYI034
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # the original exception matters more
            log.exception("closing run %d after an error failed", self.run_number)
