"""The catalogue: detectors, calibration constants and runs in a SQL database.

:class:`Catalog` is a thin front: each method delegates to the module of its concern —
:mod:`~pulsetrain.catalog.engine` (URL, engine, sessions, schema upgrade),
:mod:`~pulsetrain.catalog.detectors`, :mod:`~pulsetrain.catalog.constants` (storing, finding
and reading constants), :mod:`~pulsetrain.catalog.explain` (why a constant is missing, nearest
candidates) and :mod:`~pulsetrain.catalog.runs`.  See ``docs/catalog.md`` for the schema, the
matching rules and how to use PostgreSQL.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.engine import URL

import pulsetrain.catalog.constants as _constants
import pulsetrain.catalog.detectors as _detectors
import pulsetrain.catalog.runs as _runs
from pulsetrain.catalog.conditions import Conditions, Tolerances
from pulsetrain.catalog.constants import KNOWN_CONSTANT_TYPES, Storage
from pulsetrain.catalog.detectors import KNOWN_DETECTOR_TYPES
from pulsetrain.catalog.engine import (
    CATALOG_ENV,
    STORE_ENV,
    Database,
    default_catalog_path,
    resolve_url,
)
from pulsetrain.catalog.records import ConstantRecord, DetectorRecord, RunFile, RunRecord
from pulsetrain.catalog.runs import OnExisting

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

__all__ = [
    "CATALOG_ENV",
    "KNOWN_CONSTANT_TYPES",
    "KNOWN_DETECTOR_TYPES",
    "STORE_ENV",
    "Catalog",
    "default_catalog_path",
    "resolve_url",
]


class Catalog:
    """A catalogue of detectors, calibration constants and runs.

    Parameters
    ----------
    url : str or path-like, optional
        SQLAlchemy URL (``sqlite:///path``, ``postgresql+psycopg://user:pw@host:port/db``) or the
        path of a SQLite file.  Default: ``$PULSETRAIN_CATALOG``, else
        ``~/.local/share/pulsetrain/catalog.sqlite``.
    store_dir : path-like, optional
        Directory of the HDF5 files of constants stored with ``store="file"``.  Default:
        ``$PULSETRAIN_CATALOG_STORE``, else ``<name>-constants/`` next to a SQLite file, else
        ``~/.local/share/pulsetrain/constants``.  Processes sharing a catalogue must see the
        same store directory.
    upgrade : bool
        Bring the schema to the newest revision on open (default).  With ``False`` an
        out-of-date schema is used as it is.
    busy_timeout : float
        SQLite only: seconds to wait for another process's write lock.
    echo : bool
        Log every SQL statement.

    Notes
    -----
    Each ``Catalog`` owns its engine (connection pool).  Make one per process; a catalogue that
    finds itself in a forked child replaces its inherited connections.  SQLite catalogues run in
    WAL mode, so many processes can read while one writes.

    Examples
    --------
    >>> from datetime import datetime, timezone
    >>> cat = Catalog("/tmp/demo-catalog.sqlite")  # doctest: +SKIP
    >>> cat.add_detector("SPB_DET_AGIPD1M-1", "AGIPD", 16)  # doctest: +SKIP
    >>> cond = Conditions(memory_cells=352, bias_voltage=300, acquisition_rate=1.1)
    >>> rec = cat.add_constant("SPB_DET_AGIPD1M-1", 3, "Offset", offsets, cond,
    ...                        valid_from=datetime(2024, 5, 1, tzinfo=timezone.utc))  # doctest: +SKIP
    >>> found = cat.find_constant("SPB_DET_AGIPD1M-1", 3, "Offset", cond)  # doctest: +SKIP
    >>> offsets = cat.load_array(found)  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str | os.PathLike | URL | None = None,
        *,
        store_dir: str | os.PathLike | None = None,
        upgrade: bool = True,
        busy_timeout: float = 30.0,
        echo: bool = False,
    ) -> None:
        self._db = Database(url, store_dir=store_dir, busy_timeout=busy_timeout, echo=echo)
        if upgrade:
            self._db.upgrade()
        log.debug("opened catalogue %s (store %s)", self.url, self.store_dir)

    # ------------------------------------------------------------------ the database

    @property
    def database(self) -> Database:
        """The :class:`~pulsetrain.catalog.engine.Database` the catalogue's modules work on
        (to call :mod:`~pulsetrain.catalog.constants`, :mod:`~pulsetrain.catalog.runs`, ...
        directly)."""
        return self._db

    @property
    def url(self) -> str:
        """The database URL, with any password hidden."""
        return self._db.url

    @property
    def is_sqlite(self) -> bool:
        """Whether the catalogue is a SQLite database."""
        return self._db.is_sqlite

    @property
    def store_dir(self) -> Path:
        """Directory of constant files stored with ``store="file"``."""
        return self._db.store_dir

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for inspection and tests; prefer the methods)."""
        return self._db.engine

    @property
    def revision(self) -> str | None:
        """Schema revision of the database (Alembic)."""
        return self._db.revision

    def close(self) -> None:
        """Close all database connections."""
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({self.url!r})"

    # ------------------------------------------------------------------ detectors and modules

    def add_detector(
        self,
        name: str,
        detector_type: str,
        n_modules: int,
        module_names: Sequence[str | None] | Mapping[int, str] | None = None,
    ) -> DetectorRecord:
        """Add a detector with modules ``0 .. n_modules-1`` (or return it if already there).

        Parameters
        ----------
        name : str
            Detector name, e.g. ``"SPB_DET_AGIPD1M-1"``.
        detector_type : str
            ``"AGIPD"``, ``"LPD"``, ``"JUNGFRAU"``, ...
        n_modules : int
            Number of modules.
        module_names : sequence or mapping, optional
            Physical module names (e.g. ``"AGIPD_SIV1_AGIPDV11_M305"``), by index.  For an
            existing detector, given names replace the stored ones.

        Raises
        ------
        CatalogError
            The detector exists with another type or number of modules.
        """
        return _detectors.add_detector(self._db, name, detector_type, n_modules, module_names)

    def detectors(self) -> list[DetectorRecord]:
        """All detectors, by name."""
        return _detectors.list_detectors(self._db)

    def get_detector(self, name: str) -> DetectorRecord:
        """The detector called ``name`` (``CatalogError`` if there is none)."""
        return _detectors.get_detector(self._db, name)

    # ------------------------------------------------------------------ constants

    def add_constant(
        self,
        detector: str | DetectorRecord,
        module: int | str,
        ctype: str,
        array: Any,
        conditions: Conditions | Mapping[str, Any],
        valid_from: datetime,
        valid_to: datetime | None = None,
        *,
        store: str | Storage = "file",
        source_runs: Iterable[RunRecord | int] = (),
        comment: str | None = None,
    ) -> ConstantRecord:
        """Store a calibration constant.

        Parameters
        ----------
        detector : str or DetectorRecord
            Detector name.
        module : int or str
            Module index or physical module name.
        ctype : str
            Constant type (``"Offset"``, ``"Noise"``, ``"ThresholdsDark"``, ...).
        array : array-like
            The constant (numeric or boolean).
        conditions : Conditions or mapping
            Operating conditions; ``None`` fields mean the constant does not depend on them.
        valid_from, valid_to : datetime
            Validity interval ``[valid_from, valid_to)``; ``valid_to=None`` leaves it open.
            Naive datetimes are local time.
        store : {"file", "db"} or Storage
            Write the array to an HDF5 file in :attr:`store_dir` (default) or into the database.
        source_runs : iterable of RunRecord or int
            Runs (records or catalogue IDs) the constant was computed from.
        comment : str, optional
            Free text (how the constant was made).

        Returns
        -------
        ConstantRecord
        """
        return _constants.add_constant(
            self._db,
            detector,
            module,
            ctype,
            array,
            conditions,
            valid_from,
            valid_to,
            store=store,
            source_runs=source_runs,
            comment=comment,
        )

    def constant_path(self, record: ConstantRecord) -> Path | None:
        """Absolute path of the HDF5 file of a ``store="file"`` constant (else ``None``)."""
        return _constants.constant_path(self._db, record)

    def get_constant(self, constant_id: int) -> ConstantRecord:
        """The constant with catalogue ID ``constant_id``."""
        return _constants.get_constant(self._db, constant_id)

    def list_constants(
        self,
        detector: str | DetectorRecord | None = None,
        module: int | str | None = None,
        ctype: str | None = None,
        *,
        limit: int | None = None,
    ) -> list[ConstantRecord]:
        """Constants, optionally of one detector / module / type; newest ``valid_from`` first."""
        return _constants.list_constants(self._db, detector, module, ctype, limit=limit)

    def find_constant(
        self,
        detector: str | DetectorRecord,
        module: int | str,
        ctype: str,
        conditions: Conditions | Mapping[str, Any],
        at: datetime | None = None,
        tolerances: Tolerances | Mapping[str, float] | None = None,
    ) -> ConstantRecord:
        """The newest constant valid at ``at`` whose conditions match the query.

        "Newest" is the latest ``valid_from`` (then the latest added).  Conditions match per
        :mod:`pulsetrain.catalog.conditions`: ``None`` in the query is unconstrained, ``None``
        in a stored constant matches anything, numbers must agree within ``tolerances``
        (defaults: exact memory cells, gain setting and gain mode; bias ±5 V, acquisition rate
        ±0.1 MHz, integration time ±1, photon energy ±0.2 keV).

        Parameters
        ----------
        detector : str or DetectorRecord
            Detector name.
        module : int or str
            Module index or physical name.
        ctype : str
            Constant type.
        conditions : Conditions or mapping
            The operating conditions of the data to correct.
        at : datetime, optional
            Time the constant must be valid at (default: now).
        tolerances : Tolerances or mapping, optional
            Overrides of the default tolerances.

        Raises
        ------
        ConstantNotFoundError
            Nothing matches; the message names the detector, module, type and conditions and
            says how the nearest candidates differ (:mod:`pulsetrain.catalog.explain`).
        """
        return self.find_constants(
            detector, module, conditions, at, types=[ctype], tolerances=tolerances
        )[ctype]

    def find_constants(
        self,
        detector: str | DetectorRecord,
        module: int | str,
        conditions: Conditions | Mapping[str, Any],
        at: datetime | None = None,
        *,
        types: Iterable[str],
        tolerances: Tolerances | Mapping[str, float] | None = None,
        missing_ok: bool = False,
    ) -> dict[str, ConstantRecord]:
        """:meth:`find_constant` for several types at once: ``{type: record}``.

        With ``missing_ok=False`` (default) one ``ConstantNotFoundError`` names every missing
        type; with ``True`` missing types are left out of the result.
        """
        return self.find_constants_of_modules(
            detector,
            [module],
            conditions,
            at,
            types=types,
            tolerances=tolerances,
            missing_ok=missing_ok,
        )[module]

    def find_constants_of_modules(
        self,
        detector: str | DetectorRecord,
        modules: Iterable[int | str],
        conditions: Conditions | Mapping[str, Any],
        at: datetime | None = None,
        *,
        types: Iterable[str],
        tolerances: Tolerances | Mapping[str, float] | None = None,
        missing_ok: bool = False,
    ) -> dict[int | str, dict[str, ConstantRecord]]:
        """:meth:`find_constants` for several modules: ``{module: {type: record}}``.

        One database query for all modules and types (a 16-module detector's correction asks
        for 64 constants before it starts).  With ``missing_ok=False`` (default) one
        ``ConstantNotFoundError`` names every missing module and type
        (:func:`pulsetrain.catalog.constants.find_required`); with ``True`` they are left out
        and an unknown module gives ``{}`` (:func:`pulsetrain.catalog.constants.find_available`).
        """
        find = _constants.find_available if missing_ok else _constants.find_required
        return find(self._db, detector, modules, conditions, at, types=types, tolerances=tolerances)

    def load_array(self, record: ConstantRecord | int, *, verify: bool = True) -> np.ndarray:
        """Read the array of a constant, verifying its SHA-256 checksum, shape and dtype.

        ``verify=False`` skips the check (:func:`pulsetrain.catalog.constants.read_array`).

        Raises
        ------
        ChecksumMismatchError
            The stored array differs from what was recorded (file edited or corrupted).
        CatalogError
            The file or dataset is missing or unreadable.
        """
        if verify:
            return _constants.load_array(self._db, record)
        if not isinstance(record, ConstantRecord):
            record = self.get_constant(record)
        return _constants.read_array(self._db, record)[0]

    # ------------------------------------------------------------------ runs

    def add_run(
        self,
        proposal: int,
        run_number: int,
        path: str | os.PathLike,
        *,
        data_category: str = "RAW",
        run_type: str = "raw",
        sample: str | None = None,
        files: Iterable[str | os.PathLike | RunFile | tuple[str, int]] | None = None,
        n_trains: int | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        replace: bool = False,
        corrections: Iterable[str] | None = None,
    ) -> RunRecord:
        """Record a run.

        Parameters
        ----------
        proposal, run_number : int
            Proposal and run number.
        path : path-like
            The run directory.
        data_category : str
            File class: ``"RAW"`` (default), ``"CORR"``, ...  (upper-cased).  A proposal, run
            number and data category identify a run.
        run_type : str
            ``"raw"``, ``"dark"``, ``"dark-HG"``, ``"corr"``, ...
        sample : str, optional
            Sample name.
        files : iterable, optional
            File paths (relative to ``path`` or absolute; sizes are read from disk),
            ``RunFile`` or ``(name, size)`` pairs.  Default: every ``*.h5`` in ``path``.
        n_trains : int, optional
            Number of trains.
        start_time, end_time : datetime, optional
            When the run started and ended.
        replace : bool
            Overwrite an existing record of the same run instead of raising ``CatalogError``
            (:class:`pulsetrain.catalog.runs.OnExisting`).
        corrections : iterable of str, optional
            The correction steps a CORR run was made with (``RunRecord.corrections``).
        """
        return _runs.add_run(
            self._db,
            proposal,
            run_number,
            path,
            data_category=data_category,
            run_type=run_type,
            sample=sample,
            files=files,
            n_trains=n_trains,
            start_time=start_time,
            end_time=end_time,
            on_existing=OnExisting.REPLACE if replace else OnExisting.REFUSE,
            corrections=corrections,
        )

    def update_run(
        self,
        run: RunRecord | int,
        *,
        n_trains: int | None = None,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        sample: str | None = None,
        run_type: str | None = None,
        files: Iterable[str | os.PathLike | RunFile | tuple[str, int]] | None = None,
        rescan: bool = False,
    ) -> RunRecord:
        """Change fields of a recorded run (``None`` leaves a field as it is).

        ``files`` replaces the file list; ``rescan=True`` re-reads the ``*.h5`` files of the
        run directory (e.g. when a writer closes a run it recorded at its start).
        """
        return _runs.update_run(
            self._db,
            run,
            n_trains=n_trains,
            start_time=start_time,
            end_time=end_time,
            sample=sample,
            run_type=run_type,
            files=files,
            rescan=rescan,
        )

    def get_run(self, run_id: int) -> RunRecord:
        """The run with catalogue ID ``run_id``."""
        return _runs.get_run(self._db, run_id)

    def find_runs(
        self,
        proposal: int | None = None,
        run_number: int | None = None,
        *,
        data_category: str | None = None,
        run_type: str | None = None,
        sample: str | None = None,
        path: str | os.PathLike | None = None,
    ) -> list[RunRecord]:
        """Runs matching every given field, by proposal, run number and data category.

        ``path`` matches the run directory (resolved, as :meth:`add_run` records it).
        """
        return _runs.find_runs(
            self._db,
            proposal,
            run_number,
            data_category=data_category,
            run_type=run_type,
            sample=sample,
            path=path,
        )

    def next_run_number(self, proposal: int) -> int:
        """One more than the highest run number recorded for ``proposal`` (1 if none)."""
        return _runs.next_run_number(self._db, proposal)

    def link_run_constants(
        self, run: RunRecord | int, constants: Iterable[ConstantRecord | int]
    ) -> None:
        """Record that ``run`` (typically a CORR run) was produced with ``constants``.

        Links that already exist are kept; the call is idempotent.
        """
        _runs.link_run_constants(self._db, run, constants)

    def unlink_run_constants(
        self, run: RunRecord | int, constants: Iterable[ConstantRecord | int] | None = None
    ) -> None:
        """Remove links of ``run`` to ``constants`` (all of them if ``None``)."""
        _runs.unlink_run_constants(self._db, run, constants)

    def constants_of_run(self, run: RunRecord | int) -> list[ConstantRecord]:
        """The constants linked to ``run``, by ID."""
        return _runs.constants_of_run(self._db, run)

    def runs_using_constant(self, constant: ConstantRecord | int) -> list[RunRecord]:
        """The runs linked to ``constant`` (those corrected with it), by ID."""
        return _runs.runs_using_constant(self._db, constant)
