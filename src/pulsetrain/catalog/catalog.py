"""The catalogue: detectors, calibration constants and runs in a SQL database.

See ``docs/catalog.md`` for the schema, the matching rules and how to use PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Engine, create_engine, delete, event, func, or_, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, joinedload, selectinload
from sqlalchemy.pool import StaticPool

from pulsetrain.catalog import migrate
from pulsetrain.catalog.conditions import (
    CONDITION_NAMES,
    INTEGER_CONDITIONS,
    Conditions,
    Mismatch,
    Tolerances,
    condition_bounds,
    mismatches,
)
from pulsetrain.catalog.models import (
    ConstantRow,
    DetectorRow,
    ModuleRow,
    RunConstantRow,
    RunFileRow,
    RunRow,
    to_utc,
    utc_now,
)
from pulsetrain.catalog.records import (
    ConstantRecord,
    DetectorRecord,
    ModuleRecord,
    RunFile,
    RunRecord,
)
from pulsetrain.catalog.storage import (
    array_checksum,
    array_from_npy,
    array_to_npy,
    check_storable,
    constant_file_path,
    read_hdf5_array,
    safe_name,
    shape_from_text,
    shape_to_text,
    write_hdf5_array,
)
from pulsetrain.errors import (
    CatalogError,
    ChecksumMismatchError,
    ConfigurationError,
    ConstantNotFoundError,
)

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)

__all__ = [
    "KNOWN_CONSTANT_TYPES",
    "KNOWN_DETECTOR_TYPES",
    "Catalog",
    "default_catalog_path",
    "resolve_url",
]

#: Detector families the rest of pulsetrain knows; others are accepted with a warning.
KNOWN_DETECTOR_TYPES = ("AGIPD", "LPD", "JUNGFRAU", "DSSC", "EPIX100", "PNCCD")

#: Constant types in use; others are accepted with a warning (a typo would never match).
KNOWN_CONSTANT_TYPES = (
    "Offset",
    "Noise",
    "ThresholdsDark",
    "BadPixelsDark",
    "SlopesPC",
    "BadPixelsPC",
    "SlopesFF",
    "BadPixelsFF",
    "SlopesCS",
    "BadPixelsCS",
    "RelativeGain",
)

#: Environment variable naming the default catalogue (a URL or a SQLite file path).
CATALOG_ENV = "PULSETRAIN_CATALOG"
#: Environment variable naming the default store directory of constant files.
STORE_ENV = "PULSETRAIN_CATALOG_STORE"


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "pulsetrain"


def default_catalog_path() -> Path:
    """The default SQLite catalogue, ``~/.local/share/pulsetrain/catalog.sqlite``."""
    return _data_home() / "catalog.sqlite"


def resolve_url(url: str | os.PathLike | URL | None = None) -> str:
    """Turn a catalogue location into a SQLAlchemy URL.

    ``url`` may be a SQLAlchemy ``URL``, a URL string, or a path; ``None`` means ``$PULSETRAIN_CATALOG`` or else :func:`default_catalog_path`; a string
    containing ``://`` is taken as a URL, anything else as the path of a SQLite file.
    """
    if url is None:
        url = os.environ.get(CATALOG_ENV) or default_catalog_path()
    if isinstance(url, URL):
        return url.render_as_string(hide_password=False)
    text = os.fspath(url)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def _enable_wal(cursor: sqlite3.Cursor, timeout: float, database: str) -> None:
    """Switch a SQLite database to WAL mode (persistent; a no-op when it already is).

    Switching needs an exclusive lock and SQLite does not apply the busy timeout to it, so
    processes opening a new catalogue together retry here until one has switched it.
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower()
            if mode != "wal":
                log.warning(
                    "SQLite catalogue %s cannot use WAL mode (journal mode %s): concurrent "
                    "readers may wait for writers",
                    database,
                    mode,
                )
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _module_label(index: int, name: str | None) -> str:
    return f"module {index}" + (f" ({name})" if name else "")


def _isoformat(value: datetime | None) -> str:
    return value.isoformat() if value is not None else "open"


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
        text = resolve_url(url)
        try:
            self._url = make_url(text)
        except ArgumentError as exc:
            raise ConfigurationError(f"not a database URL or path: {text!r} ({exc})") from exc
        self._engine = self._create_engine(busy_timeout, echo)
        self._pid = os.getpid()
        self._store_dir = self._choose_store_dir(store_dir)
        if upgrade:
            try:
                migrate.upgrade(self._engine)
            except OperationalError as exc:
                self._engine.dispose()
                raise CatalogError(f"cannot open the catalogue at {self.url}: {exc.orig}") from exc
            except BaseException:
                self._engine.dispose()
                raise
        log.debug("opened catalogue %s (store %s)", self.url, self._store_dir)

    # ------------------------------------------------------------------ set-up and plumbing

    def _create_engine(self, busy_timeout: float, echo: bool) -> Engine:
        url = self._url
        if url.get_backend_name() == "sqlite":
            database = url.database or ""
            in_memory = database in ("", ":memory:") or "mode=memory" in database
            if in_memory:
                engine = create_engine(
                    url,
                    echo=echo,
                    poolclass=StaticPool,
                    connect_args={"check_same_thread": False},
                )
            else:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, echo=echo, connect_args={"timeout": busy_timeout})

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no branch
                cursor = dbapi_connection.cursor()
                cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
                if not in_memory:
                    _enable_wal(cursor, busy_timeout, database)
                    cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()

            return engine
        try:
            return create_engine(url, echo=echo, pool_pre_ping=True)
        except (NoSuchModuleError, ModuleNotFoundError) as exc:
            raise CatalogError(
                f"no database driver for {self.url}: {exc}; for PostgreSQL install "
                "'psycopg[binary]' (pip install 'pulsetrain[postgres]') and use a "
                "postgresql+psycopg:// URL"
            ) from exc

    def _choose_store_dir(self, store_dir: str | os.PathLike | None) -> Path:
        if store_dir is not None:
            return Path(store_dir).expanduser().resolve()
        if os.environ.get(STORE_ENV):
            return Path(os.environ[STORE_ENV]).expanduser().resolve()
        database = self._url.database or ""
        if self.is_sqlite and database not in ("", ":memory:") and "mode=memory" not in database:
            path = Path(database)
            return path.with_name(f"{path.stem}-constants")
        return _data_home() / "constants"

    @property
    def url(self) -> str:
        """The database URL, with any password hidden."""
        return self._url.render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        """Whether the catalogue is a SQLite database."""
        return self._url.get_backend_name() == "sqlite"

    @property
    def store_dir(self) -> Path:
        """Directory of constant files stored with ``store="file"``."""
        return self._store_dir

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for inspection and tests; prefer the methods)."""
        return self._engine_here()

    @property
    def revision(self) -> str | None:
        """Schema revision of the database (Alembic)."""
        return migrate.current_revision(self._engine_here())

    def _engine_here(self) -> Engine:
        if os.getpid() != self._pid:
            # Inherited through fork: never reuse the parent's connections.
            self._engine.dispose(close=False)
            self._pid = os.getpid()
        return self._engine

    def _session(self) -> Session:
        return Session(self._engine_here(), expire_on_commit=False)

    def close(self) -> None:
        """Close all database connections."""
        self._engine.dispose()

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
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"detector name must be a non-empty string, not {name!r}")
        if not isinstance(n_modules, (int, np.integer)) or n_modules < 1:
            raise ConfigurationError(f"n_modules must be a positive integer, not {n_modules!r}")
        detector_type = str(detector_type).strip().upper()
        if detector_type not in KNOWN_DETECTOR_TYPES:
            log.warning(
                "detector type %r is not one of %s", detector_type, ", ".join(KNOWN_DETECTOR_TYPES)
            )
        names: dict[int, str | None] = {}
        if isinstance(module_names, Mapping):
            names = {int(k): v for k, v in module_names.items()}
        elif module_names is not None:
            if len(module_names) != n_modules:
                raise ConfigurationError(
                    f"{len(module_names)} module names given for {n_modules} modules"
                )
            names = dict(enumerate(module_names))
        bad = sorted(i for i in names if not 0 <= i < n_modules)
        if bad:
            raise ConfigurationError(f"module indices {bad} outside 0..{n_modules - 1}")

        for attempt in range(2):
            with self._session() as session:
                row = session.scalar(select(DetectorRow).where(DetectorRow.name == name))
                if row is None:
                    row = DetectorRow(name=name, detector_type=detector_type, n_modules=n_modules)
                    row.modules = [
                        ModuleRow(module_index=i, physical_name=names.get(i))
                        for i in range(n_modules)
                    ]
                    session.add(row)
                else:
                    if row.detector_type != detector_type or row.n_modules != n_modules:
                        raise CatalogError(
                            f"detector {name!r} is already in the catalogue as a "
                            f"{row.detector_type} with {row.n_modules} modules, not a "
                            f"{detector_type} with {n_modules}"
                        )
                    for module in row.modules:
                        if module.module_index in names:
                            module.physical_name = names[module.module_index]
                try:
                    session.commit()
                except IntegrityError:
                    if attempt:
                        raise
                    continue  # another process added it at the same moment: update that one
                return self._detector_record(row)
        raise AssertionError("unreachable")  # pragma: no cover

    def detectors(self) -> list[DetectorRecord]:
        """All detectors, by name."""
        with self._session() as session:
            rows = session.scalars(
                select(DetectorRow)
                .options(selectinload(DetectorRow.modules))
                .order_by(DetectorRow.name)
            ).all()
            return [self._detector_record(row) for row in rows]

    def get_detector(self, name: str) -> DetectorRecord:
        """The detector called ``name`` (``CatalogError`` if there is none)."""
        with self._session() as session:
            return self._detector_record(self._detector_row(session, name))

    @staticmethod
    def _detector_record(row: DetectorRow) -> DetectorRecord:
        return DetectorRecord(
            id=row.id,
            name=row.name,
            detector_type=row.detector_type,
            n_modules=row.n_modules,
            modules=tuple(ModuleRecord(m.module_index, m.physical_name) for m in row.modules),
            created=row.created,
        )

    def _detector_row(
        self, session: Session, detector: str | DetectorRecord, error: type = CatalogError
    ) -> DetectorRow:
        name = detector.name if isinstance(detector, DetectorRecord) else detector
        row = session.scalar(select(DetectorRow).where(DetectorRow.name == name))
        if row is None:
            known = session.scalars(select(DetectorRow.name).order_by(DetectorRow.name)).all()
            raise error(
                f"detector {name!r} is not in the catalogue at {self.url} "
                f"(known: {', '.join(known) or 'none'}; add it with add_detector)"
            )
        return row

    def _module_row(
        self,
        session: Session,
        detector: str | DetectorRecord,
        module: int | str,
        error: type = CatalogError,
    ) -> ModuleRow:
        det = self._detector_row(session, detector, error)
        query = select(ModuleRow).where(ModuleRow.detector_id == det.id)
        if isinstance(module, str):
            row = session.scalar(query.where(ModuleRow.physical_name == module))
        elif isinstance(module, (int, np.integer)) and not isinstance(module, bool):
            row = session.scalar(query.where(ModuleRow.module_index == int(module)))
        else:
            raise ConfigurationError(
                f"module must be an index or a physical module name, not {module!r}"
            )
        if row is None:
            raise error(
                f"detector {det.name!r} has no module {module!r} (indices 0..{det.n_modules - 1})"
            )
        return row

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
        store: str = "file",
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
        store : {"file", "db"}
            Write the array to an HDF5 file in :attr:`store_dir` (default) or into the database.
        source_runs : iterable of RunRecord or int
            Runs (records or catalogue IDs) the constant was computed from.
        comment : str, optional
            Free text (how the constant was made).

        Returns
        -------
        ConstantRecord
        """
        if store not in ("file", "db"):
            raise ConfigurationError(f"store must be 'file' or 'db', not {store!r}")
        if not isinstance(ctype, str) or not ctype:
            raise ConfigurationError(f"constant type must be a non-empty string, not {ctype!r}")
        if ctype not in KNOWN_CONSTANT_TYPES:
            log.warning("constant type %r is not one of the known types", ctype)
        if not isinstance(conditions, Conditions):
            conditions = Conditions.from_dict(conditions)
        valid_from = to_utc(valid_from)
        valid_to = to_utc(valid_to) if valid_to is not None else None
        if valid_to is not None and valid_to <= valid_from:
            raise ConfigurationError(
                f"valid_to ({valid_to.isoformat()}) must be after valid_from "
                f"({valid_from.isoformat()})"
            )
        arr = check_storable(array)
        run_ids = sorted({self._run_id(run) for run in source_runs})
        written: Path | None = None
        try:
            with self._session() as session:
                module_row = self._module_row(session, detector, module)
                detector_name = module_row.detector.name
                runs = []
                if run_ids:
                    runs = list(session.scalars(select(RunRow).where(RunRow.id.in_(run_ids))))
                    missing = sorted(set(run_ids) - {r.id for r in runs})
                    if missing:
                        raise CatalogError(f"source runs {missing} are not in the catalogue")
                row = ConstantRow(
                    module=module_row,
                    constant_type=ctype,
                    valid_from=valid_from,
                    valid_to=valid_to,
                    created=utc_now(),
                    storage=store,
                    checksum=array_checksum(arr),
                    shape=shape_to_text(arr.shape),
                    dtype=arr.dtype.str,
                    nbytes=int(arr.nbytes),
                    comment=comment,
                    **conditions.as_dict(),
                )
                row.source_runs = runs
                if store == "db":
                    row.data = array_to_npy(arr)
                else:
                    stamp = valid_from.strftime("%Y%m%dT%H%M%SZ")
                    written = constant_file_path(
                        self._store_dir, detector_name, module_row.module_index, ctype, stamp
                    )
                    dataset = f"{safe_name(ctype)}/data"
                    write_hdf5_array(
                        written,
                        dataset,
                        arr,
                        attrs={
                            "detector": detector_name,
                            "module": module_row.module_index,
                            "module_name": module_row.physical_name,
                            "constant_type": ctype,
                            "valid_from": valid_from.isoformat(),
                            "sha256": row.checksum,
                            **conditions.as_dict(drop_none=True),
                        },
                    )
                    row.file_path = self._file_reference(written)
                    row.dataset = dataset
                session.add(row)
                session.flush()
                record = self._constant_record(row)
                session.commit()
        except BaseException:
            if written is not None:
                written.unlink(missing_ok=True)
            raise
        log.info("stored constant %s", record.describe())
        return record

    def _file_reference(self, path: Path) -> str:
        try:
            return path.relative_to(self._store_dir).as_posix()
        except ValueError:
            return str(path)

    def constant_path(self, record: ConstantRecord) -> Path | None:
        """Absolute path of the HDF5 file of a ``store="file"`` constant (else ``None``)."""
        if record.file_path is None:
            return None
        path = Path(record.file_path)
        return path if path.is_absolute() else self._store_dir / path

    @staticmethod
    def _constant_record(row: ConstantRow) -> ConstantRecord:
        module = row.module
        return ConstantRecord(
            id=row.id,
            detector=module.detector.name,
            module=module.module_index,
            module_name=module.physical_name,
            constant_type=row.constant_type,
            conditions=Conditions(**{name: getattr(row, name) for name in CONDITION_NAMES}),
            valid_from=row.valid_from,
            valid_to=row.valid_to,
            created=row.created,
            storage=row.storage,
            file_path=row.file_path,
            dataset=row.dataset,
            checksum=row.checksum,
            shape=shape_from_text(row.shape),
            dtype=row.dtype,
            nbytes=row.nbytes,
            source_runs=tuple(run.id for run in row.source_runs),
            comment=row.comment,
        )

    @staticmethod
    def _constant_query():
        return select(ConstantRow).options(
            joinedload(ConstantRow.module).joinedload(ModuleRow.detector),
            selectinload(ConstantRow.source_runs),
        )

    def get_constant(self, constant_id: int) -> ConstantRecord:
        """The constant with catalogue ID ``constant_id``."""
        with self._session() as session:
            row = session.scalar(self._constant_query().where(ConstantRow.id == int(constant_id)))
            if row is None:
                raise CatalogError(f"there is no constant #{constant_id} in {self.url}")
            return self._constant_record(row)

    def list_constants(
        self,
        detector: str | DetectorRecord | None = None,
        module: int | str | None = None,
        ctype: str | None = None,
        *,
        limit: int | None = None,
    ) -> list[ConstantRecord]:
        """Constants, optionally of one detector / module / type; newest ``valid_from`` first."""
        with self._session() as session:
            query = self._constant_query().join(ConstantRow.module).join(ModuleRow.detector)
            if detector is not None:
                if module is not None:
                    query = query.where(
                        ConstantRow.module_id == self._module_row(session, detector, module).id
                    )
                else:
                    query = query.where(
                        ModuleRow.detector_id == self._detector_row(session, detector).id
                    )
            elif module is not None:
                raise ConfigurationError("a module can only be selected together with a detector")
            if ctype is not None:
                query = query.where(ConstantRow.constant_type == ctype)
            query = query.order_by(
                DetectorRow.name,
                ModuleRow.module_index,
                ConstantRow.constant_type,
                ConstantRow.valid_from.desc(),
                ConstantRow.id.desc(),
            )
            if limit is not None:
                query = query.limit(limit)
            return [self._constant_record(row) for row in session.scalars(query).unique()]

    @staticmethod
    def _condition_filter(conditions: Conditions, tolerances: Tolerances) -> list:
        clauses = []
        for name in CONDITION_NAMES:
            wanted = getattr(conditions, name)
            if wanted is None:
                continue
            column = getattr(ConstantRow, name)
            tolerance = getattr(tolerances, name)
            if name in INTEGER_CONDITIONS and tolerance == 0:
                match = column == wanted
            else:
                low, high = condition_bounds(wanted, tolerance)
                match = column.between(low, high)
            clauses.append(or_(column.is_(None), match))
        return clauses

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
            says how the nearest candidates differ.
        """
        return self.find_constants(
            detector, module, conditions, at, types=[ctype], tolerances=tolerances
        )[ctype]

    def _newest(
        self,
        session: Session,
        module_ids: Sequence[int],
        types: Sequence[str],
        conditions: Conditions,
        when: datetime,
        tol: Tolerances,
    ) -> dict[tuple[int, str], ConstantRecord]:
        """``{(module row id, type): record}`` of the constants :meth:`find_constant` picks,
        for all these modules and types in one query (absent where none matches)."""
        rank = (
            func.row_number()
            .over(
                partition_by=(ConstantRow.module_id, ConstantRow.constant_type),
                order_by=(
                    ConstantRow.valid_from.desc(),
                    ConstantRow.created.desc(),
                    ConstantRow.id.desc(),
                ),
            )
            .label("rank")
        )
        ranked = (
            select(ConstantRow.id, rank)
            .where(
                ConstantRow.module_id.in_(list(module_ids)),
                ConstantRow.constant_type.in_(list(types)),
                ConstantRow.valid_from <= when,
                or_(ConstantRow.valid_to.is_(None), ConstantRow.valid_to > when),
                *self._condition_filter(conditions, tol),
            )
            .subquery()
        )
        query = self._constant_query().where(
            ConstantRow.id.in_(select(ranked.c.id).where(ranked.c.rank == 1))
        )
        return {
            (row.module_id, row.constant_type): self._constant_record(row)
            for row in session.scalars(query).unique()
        }

    def _explain_missing(
        self,
        session: Session,
        module_row: ModuleRow,
        ctype: str,
        conditions: Conditions,
        when: datetime,
        tol: Tolerances,
    ) -> ConstantNotFoundError:
        detector = module_row.detector.name
        label = _module_label(module_row.module_index, module_row.physical_name)
        head = (
            f"no {ctype} constant for {detector} {label} valid at {when.isoformat()} "
            f"with {conditions}"
        )
        rows = session.scalars(
            self._constant_query().where(
                ConstantRow.module_id == module_row.id, ConstantRow.constant_type == ctype
            )
        ).all()
        records = [self._constant_record(row) for row in rows]
        candidates: list[tuple[ConstantRecord, list[Mismatch]]] = []
        if not records:
            others = session.scalars(
                select(ConstantRow.constant_type)
                .where(ConstantRow.module_id == module_row.id)
                .distinct()
            ).all()
            reason = f"the catalogue has no {ctype} constant for this module at all" + (
                f" (it has: {', '.join(sorted(others))})" if others else ""
            )
        else:
            valid = [r for r in records if r.is_valid_at(when)]
            reasons = []
            if valid:
                ranked = sorted(
                    ((r, mismatches(conditions, r.conditions, tol)) for r in valid),
                    key=lambda item: (
                        len(item[1]),
                        sum(m.distance for m in item[1]),
                        -item[0].valid_from.timestamp(),
                    ),
                )
                candidates.extend(ranked)
                shown = "; ".join(
                    f"#{r.id} (valid from {r.valid_from.isoformat()}): "
                    + ", ".join(str(m) for m in mm)
                    for r, mm in ranked[:3]
                )
                reasons.append(
                    f"{len(valid)} {ctype} constant(s) are valid then but differ in conditions; "
                    f"nearest: {shown}"
                )
            else:
                reasons.append(
                    f"none of the {len(records)} {ctype} constant(s) of this module is valid then"
                )
            elsewhere = [
                r
                for r in records
                if not r.is_valid_at(when) and not mismatches(conditions, r.conditions, tol)
            ]
            if elsewhere:

                def distance_in_time(r: ConstantRecord) -> float:
                    if when < r.valid_from:
                        return (r.valid_from - when).total_seconds()
                    assert r.valid_to is not None
                    return (when - r.valid_to).total_seconds()

                elsewhere.sort(key=distance_in_time)
                candidates.extend((r, []) for r in elsewhere)
                reasons.append(
                    "matching conditions but valid at other times: "
                    + "; ".join(
                        f"#{r.id} valid {r.valid_from.isoformat()} -> {_isoformat(r.valid_to)}"
                        for r in elsewhere[:3]
                    )
                )
            reason = "; ".join(reasons)
        return ConstantNotFoundError(
            f"{head}: {reason}",
            detector=detector,
            module=module_row.module_index,
            constant_type=ctype,
            conditions=conditions,
            at=when,
            candidates=candidates,
        )

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
        ``ConstantNotFoundError`` names every missing module and type; with ``True`` they are
        left out (an unknown module gives ``{}``).
        """
        if not isinstance(conditions, Conditions):
            conditions = Conditions.from_dict(conditions)
        tol = Tolerances.coerce(tolerances)
        when = to_utc(at) if at is not None else utc_now()
        modules = list(modules)
        types = list(types)
        found: dict[int | str, dict[str, ConstantRecord]] = {m: {} for m in modules}
        errors: list[ConstantNotFoundError] = []
        with self._session() as session:  # one session and query for everything
            module_rows: dict[int | str, ModuleRow] = {}
            for module in modules:
                try:
                    module_rows[module] = self._module_row(
                        session, detector, module, ConstantNotFoundError
                    )
                except ConstantNotFoundError:
                    if not missing_ok:  # an unknown detector or module
                        raise
            newest = self._newest(
                session, [r.id for r in module_rows.values()], types, conditions, when, tol
            )
            for module, row in module_rows.items():
                for ctype in types:
                    record = newest.get((row.id, ctype))
                    if record is not None:
                        found[module][ctype] = record
                    elif not missing_ok:
                        errors.append(
                            self._explain_missing(session, row, ctype, conditions, when, tol)
                        )
        if errors:
            if len(errors) == 1:
                raise errors[0]
            first = errors[0]
            raise ConstantNotFoundError(
                f"{len(errors)} constants missing: " + " | ".join(str(e) for e in errors),
                detector=first.detector,
                module=first.module,
                constant_type=[e.constant_type for e in errors],
                conditions=first.conditions,
                at=when,
                candidates=[c for e in errors for c in e.candidates],
            )
        return found

    def load_array(self, record: ConstantRecord | int, *, verify: bool = True) -> np.ndarray:
        """Read the array of a constant, verifying its SHA-256 checksum, shape and dtype.

        Raises
        ------
        ChecksumMismatchError
            The stored array differs from what was recorded (file edited or corrupted).
        CatalogError
            The file or dataset is missing or unreadable.
        """
        if not isinstance(record, ConstantRecord):
            record = self.get_constant(record)
        if record.storage == "db":
            data = self._fetch_array_bytes(record.id)
            if data is None:
                raise CatalogError(f"constant #{record.id} has no array bytes in the database")
            array = array_from_npy(bytes(data))
            where = "the database"
        else:
            path = self.constant_path(record)
            assert path is not None and record.dataset is not None
            array = read_hdf5_array(path, record.dataset)
            where = f"{path}:{record.dataset}"
        if verify:
            what = f"constant #{record.id} ({record.constant_type}, {record.detector} " + (
                f"module {record.module})"
            )
            if array.shape != record.shape or array.dtype.str != record.dtype:
                raise ChecksumMismatchError(
                    f"{what}: the array in {where} has shape {array.shape} dtype "
                    f"{array.dtype.str}, but the catalogue recorded shape {record.shape} dtype "
                    f"{record.dtype}"
                )
            digest = array_checksum(array)
            if digest != record.checksum:
                raise ChecksumMismatchError(
                    f"{what}: the array in {where} has SHA-256 {digest}, but the catalogue "
                    f"recorded {record.checksum}; it was changed or corrupted after it was stored"
                )
        return array

    def _fetch_array_bytes(self, constant_id: int) -> bytes | None:
        engine = self._engine_here()
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
                # Binary transfer of bytea is about twice as fast as psycopg's default text.
                driver_connection = connection.connection.driver_connection
                with driver_connection.cursor(binary=True) as cursor:
                    cursor.execute("SELECT data FROM constants WHERE id = %s", (constant_id,))
                    row = cursor.fetchone()
                return None if row is None else row[0]
            return connection.scalar(select(ConstantRow.data).where(ConstantRow.id == constant_id))

    # ------------------------------------------------------------------ runs

    @staticmethod
    def _run_id(run: RunRecord | int) -> int:
        if isinstance(run, RunRecord):
            return run.id
        if isinstance(run, (int, np.integer)) and not isinstance(run, bool):
            return int(run)
        raise ConfigurationError(f"expected a RunRecord or a catalogue run ID, not {run!r}")

    @staticmethod
    def _constant_id(constant: ConstantRecord | int) -> int:
        if isinstance(constant, ConstantRecord):
            return constant.id
        if isinstance(constant, (int, np.integer)) and not isinstance(constant, bool):
            return int(constant)
        raise ConfigurationError(
            f"expected a ConstantRecord or a catalogue constant ID, not {constant!r}"
        )

    @staticmethod
    def _scan_files(
        path: Path, files: Iterable[str | os.PathLike | RunFile | tuple[str, int]] | None
    ) -> list[RunFile]:
        if files is None:
            if not path.is_dir():
                return []
            return [
                RunFile(p.name, p.stat().st_size)
                for p in sorted(path.iterdir())
                if p.is_file() and p.suffix.lower() == ".h5"
            ]
        result = []
        for item in files:
            if isinstance(item, RunFile):
                result.append(item)
                continue
            if isinstance(item, tuple):
                name, size = item
                result.append(RunFile(str(name), int(size)))
                continue
            file_path = Path(item)
            full = file_path if file_path.is_absolute() else path / file_path
            if not full.is_file():
                raise CatalogError(f"run file {full} does not exist")
            try:
                name = full.relative_to(path).as_posix()
            except ValueError:
                name = str(full)
            result.append(RunFile(name, full.stat().st_size))
        names = [f.name for f in result]
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise CatalogError(f"run files listed twice: {twice}")
        return sorted(result, key=lambda f: f.name)

    @staticmethod
    def _run_record(row: RunRow) -> RunRecord:
        return RunRecord(
            id=row.id,
            proposal=row.proposal,
            run_number=row.run_number,
            data_category=row.data_category,
            run_type=row.run_type,
            sample=row.sample,
            path=row.path,
            n_trains=row.n_trains,
            start_time=row.start_time,
            end_time=row.end_time,
            created=row.created,
            files=tuple(RunFile(f.name, f.size) for f in row.files),
        )

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
            Overwrite an existing record of the same run instead of raising ``CatalogError``.
        """
        run_path = Path(path).expanduser().resolve()
        data_category = str(data_category).upper()
        file_list = self._scan_files(run_path, files)
        values = {
            "sample": sample,
            "run_type": str(run_type),
            "path": str(run_path),
            "n_trains": None if n_trains is None else int(n_trains),
            "start_time": to_utc(start_time) if start_time is not None else None,
            "end_time": to_utc(end_time) if end_time is not None else None,
        }
        with self._session() as session:
            row = session.scalar(
                select(RunRow)
                .where(
                    RunRow.proposal == int(proposal),
                    RunRow.run_number == int(run_number),
                    RunRow.data_category == data_category,
                )
                .options(selectinload(RunRow.files))
            )
            if row is not None and not replace:
                raise self._duplicate_run(session, row)
            if row is None:
                row = RunRow(
                    proposal=int(proposal),
                    run_number=int(run_number),
                    data_category=data_category,
                    created=utc_now(),
                    **values,
                )
                session.add(row)
            else:
                for key, value in values.items():
                    setattr(row, key, value)
                row.files = []
                session.flush()
            row.files = [RunFileRow(name=f.name, size=f.size) for f in file_list]
            try:
                session.commit()
            except IntegrityError as exc:
                session.rollback()
                existing = session.scalar(
                    select(RunRow).where(
                        RunRow.proposal == int(proposal),
                        RunRow.run_number == int(run_number),
                        RunRow.data_category == data_category,
                    )
                )
                if existing is not None:
                    raise self._duplicate_run(session, existing) from exc
                raise CatalogError(f"cannot record run: {exc.orig}") from exc
            return self._run_record(row)

    def _duplicate_run(self, session: Session, row: RunRow) -> CatalogError:
        return CatalogError(
            f"run p{row.proposal:06d} r{row.run_number:04d} {row.data_category} is already in "
            f"the catalogue as #{row.id} ({row.path}); pass replace=True to overwrite it, or use "
            f"the next free run number {self._next_run_number(session, row.proposal)}"
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
        with self._session() as session:
            row = session.get(RunRow, self._run_id(run))
            if row is None:
                raise CatalogError(f"there is no run #{self._run_id(run)} in {self.url}")
            if n_trains is not None:
                row.n_trains = int(n_trains)
            if start_time is not None:
                row.start_time = to_utc(start_time)
            if end_time is not None:
                row.end_time = to_utc(end_time)
            if sample is not None:
                row.sample = sample
            if run_type is not None:
                row.run_type = str(run_type)
            if files is not None or rescan:
                file_list = self._scan_files(Path(row.path), files)
                row.files = []
                session.flush()
                row.files = [RunFileRow(name=f.name, size=f.size) for f in file_list]
            session.commit()
            return self._run_record(row)

    def get_run(self, run_id: int) -> RunRecord:
        """The run with catalogue ID ``run_id``."""
        with self._session() as session:
            row = session.scalar(
                select(RunRow).where(RunRow.id == int(run_id)).options(selectinload(RunRow.files))
            )
            if row is None:
                raise CatalogError(f"there is no run #{run_id} in {self.url}")
            return self._run_record(row)

    def find_runs(
        self,
        proposal: int | None = None,
        run_number: int | None = None,
        *,
        data_category: str | None = None,
        run_type: str | None = None,
        sample: str | None = None,
    ) -> list[RunRecord]:
        """Runs matching every given field, by proposal, run number and data category."""
        query = select(RunRow).options(selectinload(RunRow.files))
        if proposal is not None:
            query = query.where(RunRow.proposal == int(proposal))
        if run_number is not None:
            query = query.where(RunRow.run_number == int(run_number))
        if data_category is not None:
            query = query.where(RunRow.data_category == data_category.upper())
        if run_type is not None:
            query = query.where(RunRow.run_type == run_type)
        if sample is not None:
            query = query.where(RunRow.sample == sample)
        query = query.order_by(RunRow.proposal, RunRow.run_number, RunRow.data_category)
        with self._session() as session:
            return [self._run_record(row) for row in session.scalars(query)]

    @staticmethod
    def _next_run_number(session: Session, proposal: int) -> int:
        highest = session.scalar(
            select(func.max(RunRow.run_number)).where(RunRow.proposal == int(proposal))
        )
        return 1 if highest is None else highest + 1

    def next_run_number(self, proposal: int) -> int:
        """One more than the highest run number recorded for ``proposal`` (1 if none)."""
        with self._session() as session:
            return self._next_run_number(session, proposal)

    def link_run_constants(
        self, run: RunRecord | int, constants: Iterable[ConstantRecord | int]
    ) -> None:
        """Record that ``run`` (typically a CORR run) was produced with ``constants``.

        Links that already exist are kept; the call is idempotent.
        """
        run_id = self._run_id(run)
        ids = sorted({self._constant_id(c) for c in constants})
        with self._session() as session:
            if session.get(RunRow, run_id) is None:
                raise CatalogError(f"there is no run #{run_id} in {self.url}")
            found = set(session.scalars(select(ConstantRow.id).where(ConstantRow.id.in_(ids))))
            missing = sorted(set(ids) - found)
            if missing:
                raise CatalogError(f"constants {missing} are not in the catalogue")
            linked = set(
                session.scalars(
                    select(RunConstantRow.constant_id).where(RunConstantRow.run_id == run_id)
                )
            )
            session.add_all(
                RunConstantRow(run_id=run_id, constant_id=cid) for cid in ids if cid not in linked
            )
            session.commit()

    def unlink_run_constants(
        self, run: RunRecord | int, constants: Iterable[ConstantRecord | int] | None = None
    ) -> None:
        """Remove links of ``run`` to ``constants`` (all of them if ``None``)."""
        statement = delete(RunConstantRow).where(RunConstantRow.run_id == self._run_id(run))
        if constants is not None:
            ids = [self._constant_id(c) for c in constants]
            statement = statement.where(RunConstantRow.constant_id.in_(ids))
        with self._session() as session:
            session.execute(statement)
            session.commit()

    def constants_of_run(self, run: RunRecord | int) -> list[ConstantRecord]:
        """The constants linked to ``run``, by ID."""
        query = (
            self._constant_query()
            .join(RunConstantRow, RunConstantRow.constant_id == ConstantRow.id)
            .where(RunConstantRow.run_id == self._run_id(run))
            .order_by(ConstantRow.id)
        )
        with self._session() as session:
            return [self._constant_record(row) for row in session.scalars(query).unique()]

    def runs_using_constant(self, constant: ConstantRecord | int) -> list[RunRecord]:
        """The runs linked to ``constant`` (those corrected with it), by ID."""
        query = (
            select(RunRow)
            .options(selectinload(RunRow.files))
            .join(RunConstantRow, RunConstantRow.run_id == RunRow.id)
            .where(RunConstantRow.constant_id == self._constant_id(constant))
            .order_by(RunRow.id)
        )
        with self._session() as session:
            return [self._run_record(row) for row in session.scalars(query)]
