"""Detectors and their modules in the catalogue."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from pulsetrain.catalog.engine import Database
from pulsetrain.catalog.models import DetectorRow, ModuleRow
from pulsetrain.catalog.records import DetectorRecord
from pulsetrain.catalog.rows import detector_record, detector_row
from pulsetrain.errors import CatalogError, ConfigurationError

log = logging.getLogger(__name__)

__all__ = ["KNOWN_DETECTOR_TYPES", "add_detector", "get_detector", "list_detectors"]

#: Detector families the rest of pulsetrain knows; others are accepted with a warning.
KNOWN_DETECTOR_TYPES = ("AGIPD", "LPD", "JUNGFRAU", "DSSC", "EPIX100", "PNCCD")


def _plugin_names() -> list[str]:
    from pulsetrain.detectors import detector_names

    return detector_names()


def _module_names(
    n_modules: int, module_names: Sequence[str | None] | Mapping[int, str] | None
) -> dict[int, str | None]:
    """``{index: physical name}`` of the names given, checked against ``n_modules``."""
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
    return names


def add_detector(
    db: Database,
    name: str,
    detector_type: str,
    n_modules: int,
    module_names: Sequence[str | None] | Mapping[int, str] | None = None,
) -> DetectorRecord:
    """Add a detector (or update the module names of an existing one); see
    :meth:`pulsetrain.catalog.Catalog.add_detector`."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"detector name must be a non-empty string, not {name!r}")
    if not isinstance(n_modules, (int, np.integer)) or n_modules < 1:
        raise ConfigurationError(f"n_modules must be a positive integer, not {n_modules!r}")
    detector_type = str(detector_type).strip().upper()
    if detector_type not in KNOWN_DETECTOR_TYPES and detector_type not in _plugin_names():
        log.warning(
            "detector type %r is not one of %s", detector_type, ", ".join(KNOWN_DETECTOR_TYPES)
        )
    names = _module_names(n_modules, module_names)

    for attempt in range(2):
        with db.session() as session:
            row = session.scalar(select(DetectorRow).where(DetectorRow.name == name))
            if row is None:
                row = DetectorRow(name=name, detector_type=detector_type, n_modules=n_modules)
                row.modules = [
                    ModuleRow(module_index=i, physical_name=names.get(i)) for i in range(n_modules)
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
            return detector_record(row)
    raise AssertionError("unreachable")  # pragma: no cover


def list_detectors(db: Database) -> list[DetectorRecord]:
    """All detectors, by name."""
    with db.session() as session:
        rows = session.scalars(
            select(DetectorRow)
            .options(selectinload(DetectorRow.modules))
            .order_by(DetectorRow.name)
        ).all()
        return [detector_record(row) for row in rows]


def get_detector(db: Database, name: str) -> DetectorRecord:
    """The detector called ``name`` (``CatalogError`` if there is none)."""
    with db.session() as session:
        return detector_record(detector_row(db, session, name))
