"""The catalogue of detectors, calibration constants and runs (SQLAlchemy + Alembic).

A SQLite file by default, PostgreSQL by URL.  The question a correction device asks is
:meth:`Catalog.find_constant`: the newest constant valid at a given time whose operating
conditions match within tolerance.  See ``docs/catalog.md``.

Examples
--------
>>> from pulsetrain.catalog import Catalog, Conditions
>>> cat = Catalog("postgresql+psycopg://user:pw@db.example.org/calib")  # doctest: +SKIP
>>> rec = cat.find_constant("SPB_DET_AGIPD1M-1", 0, "Offset",
...                         Conditions(memory_cells=352, bias_voltage=300))  # doctest: +SKIP
>>> offset = cat.load_array(rec)  # doctest: +SKIP
"""

from pulsetrain.catalog.catalog import (
    KNOWN_CONSTANT_TYPES,
    KNOWN_DETECTOR_TYPES,
    Catalog,
    default_catalog_path,
    resolve_url,
)
from pulsetrain.catalog.conditions import CONDITION_NAMES, Conditions, Mismatch, Tolerances
from pulsetrain.catalog.records import (
    ConstantRecord,
    DetectorRecord,
    ModuleRecord,
    RunFile,
    RunRecord,
)
from pulsetrain.errors import CatalogError, ChecksumMismatchError, ConstantNotFoundError

__all__ = [
    "CONDITION_NAMES",
    "KNOWN_CONSTANT_TYPES",
    "KNOWN_DETECTOR_TYPES",
    "Catalog",
    "CatalogError",
    "ChecksumMismatchError",
    "Conditions",
    "ConstantNotFoundError",
    "ConstantRecord",
    "DetectorRecord",
    "Mismatch",
    "ModuleRecord",
    "RunFile",
    "RunRecord",
    "Tolerances",
    "default_catalog_path",
    "resolve_url",
]
