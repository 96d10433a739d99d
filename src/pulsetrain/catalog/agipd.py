"""AGIPD constants in the catalogue: the constant types a dark run and a gain export produce,
and loading the set a correction device needs.

Arrays are stored in pulsetrain's own layout ``(gain stage, memory cell, 512, 128)`` (CalCat
uses ``(fast scan, slow scan, cell, gain)``; we never need to convert because both the writer and
the reader are ours).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np

from pulsetrain.calibration import AGIPDConstants, DarkResult
from pulsetrain.catalog.catalog import Catalog
from pulsetrain.catalog.conditions import Conditions
from pulsetrain.catalog.records import ConstantRecord
from pulsetrain.errors import ConstantNotFoundError

__all__ = [
    "DARK_TYPES",
    "GAIN_TYPES",
    "REQUIRED_TYPES",
    "load_agipd_constants",
    "store_dark",
    "store_rel_gain",
]

#: Constant type → attribute of :class:`DarkResult`.
DARK_TYPES = {
    "Offset": "offset",
    "Noise": "noise",
    "ThresholdsDark": "thresholds",
    "BadPixelsDark": "bad_pixels",
}
#: Relative gain: keV per offset-subtracted ADU, per gain stage and cell.
GAIN_TYPES = {"RelativeGain": "rel_gain"}
#: What a correction needs.
REQUIRED_TYPES = ("Offset", "ThresholdsDark", "BadPixelsDark", "RelativeGain")


def store_dark(
    catalog: Catalog,
    detector: str,
    module: int,
    dark: DarkResult,
    conditions: Conditions | Mapping[str, Any],
    valid_from: datetime,
    *,
    source_runs: Iterable = (),
    store: str = "file",
) -> dict[str, ConstantRecord]:
    """Store the four dark constants of one module; returns ``{type: record}``."""
    return {
        ctype: catalog.add_constant(
            detector,
            module,
            ctype,
            np.asarray(getattr(dark, attr)),
            conditions,
            valid_from,
            store=store,
            source_runs=source_runs,
        )
        for ctype, attr in DARK_TYPES.items()
    }


def store_rel_gain(
    catalog: Catalog,
    detector: str,
    module: int,
    rel_gain: np.ndarray,
    conditions: Conditions | Mapping[str, Any],
    valid_from: datetime,
    *,
    store: str = "file",
    comment: str | None = None,
) -> ConstantRecord:
    """Store the relative gain ``(3, cells, 512, 128)`` of one module."""
    return catalog.add_constant(
        detector,
        module,
        "RelativeGain",
        np.asarray(rel_gain, dtype=np.float32),
        conditions,
        valid_from,
        store=store,
        comment=comment,
    )


def load_agipd_constants(
    catalog: Catalog,
    detector: str,
    module: int,
    conditions: Conditions | Mapping[str, Any],
    at: datetime | None = None,
) -> tuple[AGIPDConstants, dict[str, ConstantRecord]]:
    """Find and load the constants a correction of ``module`` needs at time ``at``.

    Raises
    ------
    ConstantNotFoundError
        Naming every missing type and why the candidates did not match.
    """
    records = catalog.find_constants(detector, module, conditions, at, types=REQUIRED_TYPES)
    try:
        noise_rec = catalog.find_constant(detector, module, "Noise", conditions, at)
        noise = catalog.load_array(noise_rec)
        records["Noise"] = noise_rec
    except ConstantNotFoundError:
        noise = None
    arrays = {
        ctype: catalog.load_array(rec) for ctype, rec in records.items() if ctype in REQUIRED_TYPES
    }
    constants = AGIPDConstants(
        offset=arrays["Offset"],
        rel_gain=arrays["RelativeGain"],
        thresholds=arrays["ThresholdsDark"],
        bad_pixels=arrays["BadPixelsDark"],
        noise=noise,
    )
    return constants, records
