"""Constants of any detector type in the catalogue: store a module's set, find and load the set
a correction with chosen steps needs.

Which types a step needs, their shapes and how they become what the kernel reads is the
detector plug-in's business (:class:`pulsetrain.detectors.base.Detector`); this module only
asks the catalogue.  Arrays are stored in the plug-in's own layout (stage, cell, ss, fs).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from pulsetrain.catalog.catalog import Catalog
from pulsetrain.catalog.conditions import Conditions
from pulsetrain.catalog.records import ConstantRecord
from pulsetrain.errors import ConstantNotFoundError

if TYPE_CHECKING:
    from pulsetrain.detectors.base import Detector

__all__ = ["find_constant_records", "load_constants", "store_constants"]


def store_constants(
    catalog: Catalog,
    detector: str,
    module: int,
    arrays: Mapping[str, np.ndarray],
    conditions: Conditions | Mapping[str, Any],
    valid_from: datetime,
    *,
    source_runs: Iterable = (),
    store: str = "file",
    comment: str | None = None,
) -> dict[str, ConstantRecord]:
    """Store ``{type: array}`` of one module; returns ``{type: record}``."""
    runs = tuple(source_runs)
    return {
        ctype: catalog.add_constant(
            detector,
            module,
            ctype,
            np.asarray(array),
            conditions,
            valid_from,
            store=store,
            source_runs=runs,
            comment=comment,
        )
        for ctype, array in arrays.items()
    }


def find_constant_records(
    catalog: Catalog,
    plugin: Detector,
    detector: str,
    module: int,
    conditions: Conditions | Mapping[str, Any],
    at: datetime | None,
    steps: Collection[str],
) -> dict[str, ConstantRecord]:
    """The records of the constants ``steps`` need, plus the optional ones found (``Noise``).

    Raises
    ------
    ConstantNotFoundError
        Naming every missing type the steps need and why the candidates did not match.
    """
    required = plugin.required_constants(steps)
    records = (
        catalog.find_constants(detector, module, conditions, at, types=required) if required else {}
    )
    for ctype in plugin.constant_types:
        if ctype.name in records or ctype.steps:
            continue
        try:  # used by no step (Noise): loaded when there, for who wants it
            records[ctype.name] = catalog.find_constant(
                detector, module, ctype.name, conditions, at
            )
        except ConstantNotFoundError:
            pass
    return records


def load_constants(
    catalog: Catalog,
    plugin: Detector,
    detector: str,
    module: int,
    conditions: Conditions | Mapping[str, Any],
    at: datetime | None,
    steps: Collection[str],
) -> tuple[Any, dict[str, ConstantRecord]]:
    """Find, load and prepare the constants of ``module`` for a correction with ``steps``.

    Returns
    -------
    (prepared constants, {type: record})
        What :meth:`Detector.correct` reads, and the records used.

    Raises
    ------
    ConstantNotFoundError
        As :func:`find_constant_records`.
    """
    records = find_constant_records(catalog, plugin, detector, module, conditions, at, steps)
    arrays = {ctype: catalog.load_array(rec) for ctype, rec in records.items()}
    if arrays:
        return plugin.prepare_constants(arrays, steps), records
    if not isinstance(conditions, Conditions):
        conditions = Conditions.from_dict(conditions)
    # steps that need no constants: only the conditions tell the number of memory cells
    return plugin.prepare_constants(arrays, steps, memory_cells=conditions.memory_cells), records
