"""Finding rows by what a caller names them, and turning rows into plain records.

Shared by the modules of the catalogue (``detectors``, ``constants``, ``explain``, ``runs``);
nothing here opens a session of its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, selectinload

from pulsetrain.catalog.conditions import CONDITION_NAMES, Conditions
from pulsetrain.catalog.engine import Database
from pulsetrain.catalog.models import ConstantRow, DetectorRow, ModuleRow, RunRow
from pulsetrain.catalog.records import (
    ConstantRecord,
    DetectorRecord,
    ModuleRecord,
    RunFile,
    RunRecord,
)
from pulsetrain.catalog.storage import shape_from_text
from pulsetrain.errors import CatalogError, ConfigurationError

__all__ = [
    "constant_id",
    "constant_query",
    "constant_record",
    "detector_record",
    "detector_row",
    "module_label",
    "module_row",
    "run_id",
    "run_record",
]


def _is_index(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def module_label(index: int, name: str | None) -> str:
    """``"module 3"`` or ``"module 3 (AGIPD_M305)"``."""
    return f"module {index}" + (f" ({name})" if name else "")


def detector_record(row: DetectorRow) -> DetectorRecord:
    """The record of a detector row (its modules loaded)."""
    return DetectorRecord(
        id=row.id,
        name=row.name,
        detector_type=row.detector_type,
        n_modules=row.n_modules,
        modules=tuple(ModuleRecord(m.module_index, m.physical_name) for m in row.modules),
        created=row.created,
    )


def detector_row(
    db: Database, session: Session, detector: str | DetectorRecord, error: type = CatalogError
) -> DetectorRow:
    """The row of a detector by name or record; ``error`` (a CatalogError) if there is none."""
    name = detector.name if isinstance(detector, DetectorRecord) else detector
    row = session.scalar(select(DetectorRow).where(DetectorRow.name == name))
    if row is None:
        known = session.scalars(select(DetectorRow.name).order_by(DetectorRow.name)).all()
        raise error(
            f"detector {name!r} is not in the catalogue at {db.url} "
            f"(known: {', '.join(known) or 'none'}; add it with add_detector)"
        )
    return row


def module_row(
    db: Database,
    session: Session,
    detector: str | DetectorRecord,
    module: int | str,
    error: type = CatalogError,
) -> ModuleRow:
    """The row of a module by index or physical name; ``error`` if there is none."""
    det = detector_row(db, session, detector, error)
    query = select(ModuleRow).where(ModuleRow.detector_id == det.id)
    if isinstance(module, str):
        row = session.scalar(query.where(ModuleRow.physical_name == module))
    elif _is_index(module):
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


def constant_query():
    """``SELECT`` of constant rows with their module, detector and source runs loaded."""
    return select(ConstantRow).options(
        joinedload(ConstantRow.module).joinedload(ModuleRow.detector),
        selectinload(ConstantRow.source_runs),
    )


def constant_record(row: ConstantRow) -> ConstantRecord:
    """The record of a constant row loaded by :func:`constant_query`."""
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


def run_record(row: RunRow) -> RunRecord:
    """The record of a run row (its files loaded)."""
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
        corrections=tuple(s for s in (row.corrections or "").split(",") if s),
    )


def _catalogue_id(value: Any, record_type: type, what: str) -> int:
    if isinstance(value, record_type):
        return value.id
    if _is_index(value):
        return int(value)
    raise ConfigurationError(
        f"expected a {record_type.__name__} or a catalogue {what} ID, not {value!r}"
    )


def run_id(run: RunRecord | int) -> int:
    """The catalogue ID of a run given as a record or an ID."""
    return _catalogue_id(run, RunRecord, "run")


def constant_id(constant: ConstantRecord | int) -> int:
    """The catalogue ID of a constant given as a record or an ID."""
    return _catalogue_id(constant, ConstantRecord, "constant")
