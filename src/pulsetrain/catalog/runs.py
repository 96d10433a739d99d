"""Runs in the catalogue: recording them, finding them, and linking them to constants."""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from pulsetrain.catalog.engine import Database
from pulsetrain.catalog.models import (
    ConstantRow,
    RunConstantRow,
    RunFileRow,
    RunRow,
    to_utc,
    utc_now,
)
from pulsetrain.catalog.records import ConstantRecord, RunFile, RunRecord
from pulsetrain.catalog.rows import constant_id, constant_query, constant_record, run_id, run_record
from pulsetrain.errors import CatalogError

__all__ = [
    "OnExisting",
    "add_run",
    "constants_of_run",
    "find_runs",
    "get_run",
    "link_run_constants",
    "next_run_number",
    "run_files",
    "runs_using_constant",
    "unlink_run_constants",
    "update_run",
]

FileSpec = str | os.PathLike | RunFile | tuple[str, int]


class OnExisting(enum.Enum):
    """What :func:`add_run` does when the run (proposal, number, category) is recorded."""

    REFUSE = "refuse"  #: raise CatalogError naming the record and the next free run number
    REPLACE = "replace"  #: overwrite the record


def _scan_run_dir(path: Path) -> list[RunFile]:
    """Every ``*.h5`` file directly in ``path`` (none if it is not a directory)."""
    if not path.is_dir():
        return []
    return [
        RunFile(p.name, p.stat().st_size)
        for p in sorted(path.iterdir())
        if p.is_file() and p.suffix.lower() == ".h5"
    ]


def _listed_files(path: Path, files: Iterable[FileSpec]) -> list[RunFile]:
    """The files given, sizes read from disk for paths (relative to ``path`` or absolute)."""
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


def run_files(path: Path, files: Iterable[FileSpec] | None) -> list[RunFile]:
    """The files of a run: those given, or (``None``) the ``*.h5`` files in ``path``."""
    return _scan_run_dir(path) if files is None else _listed_files(path, files)


def _next_run_number(session: Session, proposal: int) -> int:
    highest = session.scalar(
        select(func.max(RunRow.run_number)).where(RunRow.proposal == int(proposal))
    )
    return 1 if highest is None else highest + 1


def _duplicate_run(session: Session, row: RunRow) -> CatalogError:
    return CatalogError(
        f"run p{row.proposal:06d} r{row.run_number:04d} {row.data_category} is already in "
        f"the catalogue as #{row.id} ({row.path}); pass replace=True to overwrite it, or use "
        f"the next free run number {_next_run_number(session, row.proposal)}"
    )


def _recorded_run(session: Session, proposal: int, run_number: int, data_category: str):
    return session.scalar(
        select(RunRow)
        .where(
            RunRow.proposal == int(proposal),
            RunRow.run_number == int(run_number),
            RunRow.data_category == data_category,
        )
        .options(selectinload(RunRow.files))
    )


def _set_files(session: Session, row: RunRow, files: list[RunFile]) -> None:
    row.files = []
    session.flush()
    row.files = [RunFileRow(name=f.name, size=f.size) for f in files]


def add_run(
    db: Database,
    proposal: int,
    run_number: int,
    path: str | os.PathLike,
    *,
    data_category: str = "RAW",
    run_type: str = "raw",
    sample: str | None = None,
    files: Iterable[FileSpec] | None = None,
    n_trains: int | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    on_existing: OnExisting = OnExisting.REFUSE,
    corrections: Iterable[str] | None = None,
) -> RunRecord:
    """Record a run; see :meth:`pulsetrain.catalog.Catalog.add_run`."""
    run_path = Path(path).expanduser().resolve()
    data_category = str(data_category).upper()
    file_list = run_files(run_path, files)
    values = {
        "sample": sample,
        "run_type": str(run_type),
        "path": str(run_path),
        "n_trains": None if n_trains is None else int(n_trains),
        "start_time": to_utc(start_time) if start_time is not None else None,
        "end_time": to_utc(end_time) if end_time is not None else None,
        "corrections": None if corrections is None else ",".join(map(str, corrections)),
    }
    with db.session() as session:
        row = _recorded_run(session, proposal, run_number, data_category)
        if row is not None and on_existing is OnExisting.REFUSE:
            raise _duplicate_run(session, row)
        if row is None:
            row = RunRow(
                proposal=int(proposal),
                run_number=int(run_number),
                data_category=data_category,
                created=utc_now(),
                **values,
            )
            session.add(row)
            row.files = [RunFileRow(name=f.name, size=f.size) for f in file_list]
        else:
            for key, value in values.items():
                setattr(row, key, value)
            _set_files(session, row, file_list)
        try:
            session.commit()
        except IntegrityError as exc:
            session.rollback()
            existing = _recorded_run(session, proposal, run_number, data_category)
            if existing is not None:
                raise _duplicate_run(session, existing) from exc
            raise CatalogError(f"cannot record run: {exc.orig}") from exc
        return run_record(row)


def update_run(
    db: Database,
    run: RunRecord | int,
    *,
    n_trains: int | None = None,
    start_time: datetime | None = None,
    end_time: datetime | None = None,
    sample: str | None = None,
    run_type: str | None = None,
    files: Iterable[FileSpec] | None = None,
    rescan: bool = False,
) -> RunRecord:
    """Change fields of a recorded run; see :meth:`pulsetrain.catalog.Catalog.update_run`."""
    with db.session() as session:
        row = session.get(RunRow, run_id(run))
        if row is None:
            raise CatalogError(f"there is no run #{run_id(run)} in {db.url}")
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
            _set_files(session, row, run_files(Path(row.path), files))
        session.commit()
        return run_record(row)


def get_run(db: Database, run_id_: int) -> RunRecord:
    """The run with catalogue ID ``run_id_``."""
    with db.session() as session:
        row = session.scalar(
            select(RunRow).where(RunRow.id == int(run_id_)).options(selectinload(RunRow.files))
        )
        if row is None:
            raise CatalogError(f"there is no run #{run_id_} in {db.url}")
        return run_record(row)


def find_runs(
    db: Database,
    proposal: int | None = None,
    run_number: int | None = None,
    *,
    data_category: str | None = None,
    run_type: str | None = None,
    sample: str | None = None,
    path: str | os.PathLike | None = None,
) -> list[RunRecord]:
    """Runs matching every given field; see :meth:`pulsetrain.catalog.Catalog.find_runs`."""
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
    if path is not None:
        query = query.where(RunRow.path == str(Path(path).expanduser().resolve()))
    query = query.order_by(RunRow.proposal, RunRow.run_number, RunRow.data_category)
    with db.session() as session:
        return [run_record(row) for row in session.scalars(query)]


def next_run_number(db: Database, proposal: int) -> int:
    """One more than the highest run number recorded for ``proposal`` (1 if none)."""
    with db.session() as session:
        return _next_run_number(session, proposal)


def link_run_constants(
    db: Database, run: RunRecord | int, constants: Iterable[ConstantRecord | int]
) -> None:
    """Record that ``run`` was produced with ``constants`` (idempotent)."""
    rid = run_id(run)
    ids = sorted({constant_id(c) for c in constants})
    with db.session() as session:
        if session.get(RunRow, rid) is None:
            raise CatalogError(f"there is no run #{rid} in {db.url}")
        found = set(session.scalars(select(ConstantRow.id).where(ConstantRow.id.in_(ids))))
        missing = sorted(set(ids) - found)
        if missing:
            raise CatalogError(f"constants {missing} are not in the catalogue")
        linked = set(
            session.scalars(select(RunConstantRow.constant_id).where(RunConstantRow.run_id == rid))
        )
        session.add_all(
            RunConstantRow(run_id=rid, constant_id=cid) for cid in ids if cid not in linked
        )
        session.commit()


def unlink_run_constants(
    db: Database, run: RunRecord | int, constants: Iterable[ConstantRecord | int] | None = None
) -> None:
    """Remove links of ``run`` to ``constants`` (all of them if ``None``)."""
    statement = delete(RunConstantRow).where(RunConstantRow.run_id == run_id(run))
    if constants is not None:
        ids = [constant_id(c) for c in constants]
        statement = statement.where(RunConstantRow.constant_id.in_(ids))
    with db.session() as session:
        session.execute(statement)
        session.commit()


def constants_of_run(db: Database, run: RunRecord | int) -> list[ConstantRecord]:
    """The constants linked to ``run``, by ID."""
    query = (
        constant_query()
        .join(RunConstantRow, RunConstantRow.constant_id == ConstantRow.id)
        .where(RunConstantRow.run_id == run_id(run))
        .order_by(ConstantRow.id)
    )
    with db.session() as session:
        return [constant_record(row) for row in session.scalars(query).unique()]


def runs_using_constant(db: Database, constant: ConstantRecord | int) -> list[RunRecord]:
    """The runs linked to ``constant`` (those corrected with it), by ID."""
    query = (
        select(RunRow)
        .options(selectinload(RunRow.files))
        .join(RunConstantRow, RunConstantRow.run_id == RunRow.id)
        .where(RunConstantRow.constant_id == constant_id(constant))
        .order_by(RunRow.id)
    )
    with db.session() as session:
        return [run_record(row) for row in session.scalars(query)]
