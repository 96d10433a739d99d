"""AGIPD constants in the catalogue (kept for callers of the names before detector plug-ins).

The generic functions are :mod:`pulsetrain.catalog.detector_constants`; the constant types and
what each correction step needs are the AGIPD plug-in's
(:class:`pulsetrain.detectors.agipd.AGIPD`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import numpy as np

from pulsetrain.calibration import AGIPDConstants, DarkResult
from pulsetrain.catalog.catalog import Catalog
from pulsetrain.catalog.conditions import Conditions
from pulsetrain.catalog.detector_constants import load_constants, store_constants
from pulsetrain.catalog.records import ConstantRecord

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
#: What a correction with the default steps needs.
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
    arrays = {ctype: getattr(dark, attr) for ctype, attr in DARK_TYPES.items()}
    return store_constants(
        catalog, detector, module, arrays, conditions, valid_from,
        source_runs=source_runs, store=store,
    )  # fmt: skip


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
    arrays = {"RelativeGain": np.asarray(rel_gain, dtype=np.float32)}
    return store_constants(
        catalog, detector, module, arrays, conditions, valid_from, store=store, comment=comment
    )["RelativeGain"]


def load_agipd_constants(
    catalog: Catalog,
    detector: str,
    module: int,
    conditions: Conditions | Mapping[str, Any],
    at: datetime | None = None,
) -> tuple[AGIPDConstants, dict[str, ConstantRecord]]:
    """Find and load the constants a correction of ``module`` with the default steps needs.

    Raises
    ------
    ConstantNotFoundError
        Naming every missing type and why the candidates did not match.
    """
    from pulsetrain.detectors import get_detector

    plugin = get_detector("AGIPD")
    return load_constants(catalog, plugin, detector, module, conditions, at, plugin.default_steps)
