"""Calibration constants in the catalogue: storing them, finding them, reading their arrays.

The question a correction asks is :func:`find_required`: for each module and type, the
newest constant valid at a time whose conditions match within tolerance, all in one query.
:func:`find_available` answers the same question but leaves out what is missing; why something
is missing is :mod:`pulsetrain.catalog.explain`'s business.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from pulsetrain.catalog.conditions import (
    CONDITION_NAMES,
    INTEGER_CONDITIONS,
    Conditions,
    Tolerances,
    condition_bounds,
)
from pulsetrain.catalog.engine import Database
from pulsetrain.catalog.explain import combine_missing, explain_missing
from pulsetrain.catalog.models import ConstantRow, DetectorRow, ModuleRow, RunRow, to_utc, utc_now
from pulsetrain.catalog.records import ConstantRecord, DetectorRecord, RunRecord
from pulsetrain.catalog.rows import (
    constant_query,
    constant_record,
    detector_row,
    module_row,
    run_id,
)
from pulsetrain.catalog.storage import (
    array_checksum,
    array_from_npy,
    array_to_npy,
    check_storable,
    constant_file_path,
    read_hdf5_array,
    safe_name,
    shape_to_text,
    write_hdf5_array,
)
from pulsetrain.errors import (
    CatalogError,
    ChecksumMismatchError,
    ConfigurationError,
    ConstantNotFoundError,
)

log = logging.getLogger(__name__)

__all__ = [
    "KNOWN_CONSTANT_TYPES",
    "Storage",
    "add_constant",
    "constant_path",
    "find_available",
    "find_required",
    "get_constant",
    "list_constants",
    "load_array",
    "read_array",
    "verify_array",
]

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


def _plugin_constant_types() -> set[str]:
    """Constant types of every detector plug-in (``pulsetrain.detectors``)."""
    from pulsetrain.detectors import detector_names, get_detector

    return {c.name for n in detector_names() for c in get_detector(n).constant_types}


class Storage(str, enum.Enum):
    """Where a constant's array is kept: an HDF5 file in the store directory, or the database."""

    FILE = "file"
    DB = "db"

    @classmethod
    def coerce(cls, value: str | Storage) -> Storage:
        """``value`` as a Storage (``ConfigurationError`` for anything else)."""
        try:
            return cls(value)
        except ValueError:
            raise ConfigurationError(f"store must be 'file' or 'db', not {value!r}") from None


# ---------------------------------------------------------------------------- storing


@dataclass(frozen=True)
class _NewConstant:
    """What :func:`add_constant` was asked to store, checked and normalised."""

    ctype: str
    conditions: Conditions
    valid_from: datetime
    valid_to: datetime | None
    storage: Storage
    array: np.ndarray
    source_run_ids: list[int]
    comment: str | None


def _check_new_constant(
    ctype: str,
    array: Any,
    conditions: Conditions | Mapping[str, Any],
    valid_from: datetime,
    valid_to: datetime | None,
    store: str | Storage,
    source_runs: Iterable[RunRecord | int],
    comment: str | None,
) -> _NewConstant:
    storage = Storage.coerce(store)
    if not isinstance(ctype, str) or not ctype:
        raise ConfigurationError(f"constant type must be a non-empty string, not {ctype!r}")
    if ctype not in KNOWN_CONSTANT_TYPES and ctype not in _plugin_constant_types():
        log.warning("constant type %r is not one of the known types", ctype)
    if not isinstance(conditions, Conditions):
        conditions = Conditions.from_dict(conditions)
    start = to_utc(valid_from)
    end = to_utc(valid_to) if valid_to is not None else None
    if end is not None and end <= start:
        raise ConfigurationError(
            f"valid_to ({end.isoformat()}) must be after valid_from ({start.isoformat()})"
        )
    return _NewConstant(
        ctype=ctype,
        conditions=conditions,
        valid_from=start,
        valid_to=end,
        storage=storage,
        array=check_storable(array),
        source_run_ids=sorted({run_id(run) for run in source_runs}),
        comment=comment,
    )


def _source_run_rows(session: Session, run_ids: Sequence[int]) -> list[RunRow]:
    if not run_ids:
        return []
    runs = list(session.scalars(select(RunRow).where(RunRow.id.in_(run_ids))))
    missing = sorted(set(run_ids) - {r.id for r in runs})
    if missing:
        raise CatalogError(f"source runs {missing} are not in the catalogue")
    return runs


def _constant_row(module: ModuleRow, new: _NewConstant) -> ConstantRow:
    arr = new.array
    return ConstantRow(
        module=module,
        constant_type=new.ctype,
        valid_from=new.valid_from,
        valid_to=new.valid_to,
        created=utc_now(),
        storage=new.storage.value,
        checksum=array_checksum(arr),
        shape=shape_to_text(arr.shape),
        dtype=arr.dtype.str,
        nbytes=int(arr.nbytes),
        comment=new.comment,
        **new.conditions.as_dict(),
    )


def _file_reference(db: Database, path: Path) -> str:
    """How a constant file is recorded: relative to the store directory when inside it."""
    try:
        return path.relative_to(db.store_dir).as_posix()
    except ValueError:
        return str(path)


def _write_constant_file(
    db: Database, path: Path, row: ConstantRow, module: ModuleRow, new: _NewConstant
) -> None:
    """Write the array to ``path`` (HDF5, with what it is as attributes) and record it in
    ``row``."""
    dataset = f"{safe_name(new.ctype)}/data"
    write_hdf5_array(
        path,
        dataset,
        new.array,
        attrs={
            "detector": module.detector.name,
            "module": module.module_index,
            "module_name": module.physical_name,
            "constant_type": new.ctype,
            "valid_from": new.valid_from.isoformat(),
            "sha256": row.checksum,
            **new.conditions.as_dict(drop_none=True),
        },
    )
    row.file_path = _file_reference(db, path)
    row.dataset = dataset


def add_constant(
    db: Database,
    detector: str | DetectorRecord,
    module: int | str,
    ctype: str,
    array: Any,
    conditions: Conditions | Mapping[str, Any],
    valid_from: datetime,
    valid_to: datetime | None = None,
    *,
    store: str | Storage = Storage.FILE,
    source_runs: Iterable[RunRecord | int] = (),
    comment: str | None = None,
) -> ConstantRecord:
    """Store a calibration constant; see :meth:`pulsetrain.catalog.Catalog.add_constant`.

    Steps: check the request, find the module and source runs, make the row, put the array in
    the database or write its file, commit.  A file written for a constant that then fails to
    commit is removed.
    """
    new = _check_new_constant(
        ctype, array, conditions, valid_from, valid_to, store, source_runs, comment
    )
    written: Path | None = None
    try:
        with db.session() as session:
            module_row_ = module_row(db, session, detector, module)
            runs = _source_run_rows(session, new.source_run_ids)
            row = _constant_row(module_row_, new)
            row.source_runs = runs
            if new.storage is Storage.DB:
                row.data = array_to_npy(new.array)
            else:
                stamp = new.valid_from.strftime("%Y%m%dT%H%M%SZ")
                written = constant_file_path(
                    db.store_dir, module_row_.detector.name, module_row_.module_index, ctype, stamp
                )
                _write_constant_file(db, written, row, module_row_, new)
            session.add(row)
            session.flush()
            record = constant_record(row)
            session.commit()
    except BaseException:
        if written is not None:
            written.unlink(missing_ok=True)
        raise
    log.info("stored constant %s", record.describe())
    return record


# ---------------------------------------------------------------------------- listing


def constant_path(db: Database, record: ConstantRecord) -> Path | None:
    """Absolute path of the HDF5 file of a file-stored constant (else ``None``)."""
    if record.file_path is None:
        return None
    path = Path(record.file_path)
    return path if path.is_absolute() else db.store_dir / path


def get_constant(db: Database, constant_id: int) -> ConstantRecord:
    """The constant with catalogue ID ``constant_id``."""
    with db.session() as session:
        row = session.scalar(constant_query().where(ConstantRow.id == int(constant_id)))
        if row is None:
            raise CatalogError(f"there is no constant #{constant_id} in {db.url}")
        return constant_record(row)


def list_constants(
    db: Database,
    detector: str | DetectorRecord | None = None,
    module: int | str | None = None,
    ctype: str | None = None,
    *,
    limit: int | None = None,
) -> list[ConstantRecord]:
    """Constants, optionally of one detector / module / type; newest ``valid_from`` first."""
    with db.session() as session:
        query = constant_query().join(ConstantRow.module).join(ModuleRow.detector)
        if detector is not None:
            if module is not None:
                query = query.where(
                    ConstantRow.module_id == module_row(db, session, detector, module).id
                )
            else:
                query = query.where(ModuleRow.detector_id == detector_row(db, session, detector).id)
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
        return [constant_record(row) for row in session.scalars(query).unique()]


# ---------------------------------------------------------------------------- finding


@dataclass(frozen=True)
class _Query:
    """The normalised question of a look-up."""

    conditions: Conditions
    tolerances: Tolerances
    when: datetime
    types: list[str]


def _query(
    conditions: Conditions | Mapping[str, Any],
    at: datetime | None,
    types: Iterable[str],
    tolerances: Tolerances | Mapping[str, float] | None,
) -> _Query:
    if not isinstance(conditions, Conditions):
        conditions = Conditions.from_dict(conditions)
    return _Query(
        conditions=conditions,
        tolerances=Tolerances.coerce(tolerances),
        when=to_utc(at) if at is not None else utc_now(),
        types=list(types),
    )


def _condition_filter(conditions: Conditions, tolerances: Tolerances) -> list:
    """SQL clauses: each wanted condition equals (within tolerance) or is unset in the row."""
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


def _newest(
    session: Session, module_ids: Sequence[int], query: _Query
) -> dict[tuple[int, str], ConstantRecord]:
    """``{(module row id, type): record}`` of the newest matching constants, for all these
    modules and types in one query (absent where none matches)."""
    when = query.when
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
            ConstantRow.constant_type.in_(query.types),
            ConstantRow.valid_from <= when,
            or_(ConstantRow.valid_to.is_(None), ConstantRow.valid_to > when),
            *_condition_filter(query.conditions, query.tolerances),
        )
        .subquery()
    )
    rows = session.scalars(
        constant_query().where(ConstantRow.id.in_(select(ranked.c.id).where(ranked.c.rank == 1)))
    ).unique()
    return {(row.module_id, row.constant_type): constant_record(row) for row in rows}


def _module_rows(
    db: Database, session: Session, detector: str | DetectorRecord, modules: Sequence[int | str]
) -> dict[int | str, ModuleRow | ConstantNotFoundError]:
    """The row of each module asked for, or the error saying the detector or module is
    unknown."""
    rows: dict[int | str, ModuleRow | ConstantNotFoundError] = {}
    for module in modules:
        try:
            rows[module] = module_row(db, session, detector, module, ConstantNotFoundError)
        except ConstantNotFoundError as exc:
            rows[module] = exc
    return rows


def _match(
    session: Session,
    modules: Sequence[int | str],
    rows: Mapping[int | str, ModuleRow],
    query: _Query,
) -> tuple[dict[int | str, dict[str, ConstantRecord]], list[tuple[ModuleRow, str]]]:
    """``({module: {type: record}}, [(module row, type) with no match])`` for the modules
    whose ``rows`` are known, in one query (``{}`` for the other modules)."""
    newest = _newest(session, [r.id for r in rows.values()], query)
    found: dict[int | str, dict[str, ConstantRecord]] = {m: {} for m in modules}
    missing: list[tuple[ModuleRow, str]] = []
    for module, row in rows.items():
        for ctype in query.types:
            record = newest.get((row.id, ctype))
            if record is None:
                missing.append((row, ctype))
            else:
                found[module][ctype] = record
    return found, missing


def find_available(
    db: Database,
    detector: str | DetectorRecord,
    modules: Iterable[int | str],
    conditions: Conditions | Mapping[str, Any],
    at: datetime | None = None,
    *,
    types: Iterable[str],
    tolerances: Tolerances | Mapping[str, float] | None = None,
) -> dict[int | str, dict[str, ConstantRecord]]:
    """``{module: {type: record}}`` of the constants that match; what is missing is left out
    (an unknown module gives ``{}``)."""
    query = _query(conditions, at, types, tolerances)
    modules = list(modules)
    with db.session() as session:
        rows = {
            m: r
            for m, r in _module_rows(db, session, detector, modules).items()
            if isinstance(r, ModuleRow)
        }
        found, _ = _match(session, modules, rows, query)
    return found


def find_required(
    db: Database,
    detector: str | DetectorRecord,
    modules: Iterable[int | str],
    conditions: Conditions | Mapping[str, Any],
    at: datetime | None = None,
    *,
    types: Iterable[str],
    tolerances: Tolerances | Mapping[str, float] | None = None,
) -> dict[int | str, dict[str, ConstantRecord]]:
    """``{module: {type: record}}`` of every module and type asked for.

    Raises
    ------
    ConstantNotFoundError
        An unknown detector or module; or one error naming every missing module and type,
        with the nearest candidates (:func:`pulsetrain.catalog.explain.combine_missing`).
    """
    query = _query(conditions, at, types, tolerances)
    modules = list(modules)
    with db.session() as session:  # one session and query for everything
        rows: dict[int | str, ModuleRow] = {}
        for module, row in _module_rows(db, session, detector, modules).items():
            if isinstance(row, ConstantNotFoundError):
                raise row
            rows[module] = row
        found, missing = _match(session, modules, rows, query)
        errors = [
            explain_missing(session, row, ctype, query.conditions, query.when, query.tolerances)
            for row, ctype in missing
        ]
    if errors:
        raise combine_missing(errors, query.when)
    return found


# ---------------------------------------------------------------------------- arrays


def _fetch_array_bytes(db: Database, constant_id: int) -> bytes | None:
    engine = db.engine
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
            # Binary transfer of bytea is about twice as fast as psycopg's default text.
            driver_connection = connection.connection.driver_connection
            with driver_connection.cursor(binary=True) as cursor:
                cursor.execute("SELECT data FROM constants WHERE id = %s", (constant_id,))
                row = cursor.fetchone()
            return None if row is None else row[0]
        return connection.scalar(select(ConstantRow.data).where(ConstantRow.id == constant_id))


def read_array(db: Database, record: ConstantRecord) -> tuple[np.ndarray, str]:
    """The stored array of a constant, unverified, and where it was read from."""
    if record.storage == Storage.DB.value:
        data = _fetch_array_bytes(db, record.id)
        if data is None:
            raise CatalogError(f"constant #{record.id} has no array bytes in the database")
        return array_from_npy(bytes(data)), "the database"
    path = constant_path(db, record)
    assert path is not None and record.dataset is not None
    return read_hdf5_array(path, record.dataset), f"{path}:{record.dataset}"


def verify_array(record: ConstantRecord, array: np.ndarray, where: str) -> None:
    """Check an array read from ``where`` against the shape, dtype and SHA-256 of its record.

    Raises
    ------
    ChecksumMismatchError
        They differ.
    """
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


def load_array(db: Database, record: ConstantRecord | int) -> np.ndarray:
    """The array of a constant, verified (:func:`read_array` then :func:`verify_array`)."""
    if not isinstance(record, ConstantRecord):
        record = get_constant(db, record)
    array, where = read_array(db, record)
    verify_array(record, array, where)
    return array
