"""What a correction lacks in the catalogue, said once for all modules.

A correction of a 16-module detector asks for 4 constant types per module; when the catalogue
lacks them, one message per module and type would repeat the same conditions 64 times.
:func:`missing_constants_error` instead groups what is missing (``modules 0-15: Offset,
ThresholdsDark, BadPixelsDark``), states the conditions asked once, and says how the nearest
constants the catalogue does hold differ (grouped the same way), using the catalogue's own
explanation of each miss (:class:`~pulsetrain.errors.ConstantNotFoundError` candidates).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pulsetrain.errors import ConstantNotFoundError, MissingConstantsError

__all__ = ["missing_constants_error", "module_ranges"]

#: Width the longer lines of the summary are wrapped at.
LINE_WIDTH = 100
#: Lines of "nearest in the catalogue" shown; the rest are counted.
MAX_NEAREST_LINES = 8


def module_ranges(modules: Iterable[int]) -> str:
    """``[0, 1, 2, 3, 8]`` → ``"modules 0-3, 8"``; ``[5]`` → ``"module 5"``."""
    values = sorted({int(m) for m in modules})
    if len(values) == 1:
        return f"module {values[0]}"
    runs: list[str] = []
    start = prev = None
    for value in [*values, None]:
        if value is not None and prev is not None and value == prev + 1:
            prev = value
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = value
    return "modules " + ", ".join(runs)


def _ids(ids: Iterable[int]) -> str:
    values = sorted(set(ids))
    shown = ", ".join(f"#{i}" for i in values[:3])
    return shown + (f" and {len(values) - 3} more" if len(values) > 3 else "")


def _difference(record: Any, mismatches: Sequence[Any]) -> str:
    """How a candidate differs from the query: its conditions, or when it is valid."""
    if mismatches:
        return ", ".join(str(m) for m in mismatches)
    until = record.valid_to.isoformat() if record.valid_to is not None else "open end"
    return f"conditions match, but valid {record.valid_from.isoformat()} -> {until}"


def _nearest_lines(
    missing_pairs: Sequence[tuple[int, str]],
    candidates: Iterable[tuple[Any, Sequence[Any]]],
    stored: Mapping[str, set[int]],
) -> list[str]:
    """One line per (types, difference) group: modules, example IDs and the difference."""
    best: dict[tuple[int, str], tuple[Any, Sequence[Any]]] = {}
    for record, mismatches in candidates:  # nearest first, per module and type
        best.setdefault((int(record.module), record.constant_type), (record, mismatches))
    groups: dict[str, dict[str, tuple[set[int], set[int]]]] = {}
    for module, ctype in missing_pairs:
        found = best.get((module, ctype))
        if found is not None:
            text = _difference(*found)
            ids = {int(found[0].id)}
        elif module in stored.get(ctype, set()):
            text, ids = "none valid at that time with these or other conditions", set()
        else:
            text, ids = "none stored", set()
        modules, all_ids = groups.setdefault(text, {}).setdefault(ctype, (set(), set()))
        modules.add(module)
        all_ids.update(ids)
    lines = []
    for text, per_type in groups.items():
        by_modules: dict[tuple[int, ...], tuple[list[str], set[int]]] = {}
        for ctype, (modules, ids) in per_type.items():
            types, all_ids = by_modules.setdefault(tuple(sorted(modules)), ([], set()))
            types.append(ctype)
            all_ids.update(ids)
        for modules, (types, ids) in by_modules.items():
            where = f" ({_ids(ids)})" if ids else ""
            lines.append(f"  {', '.join(types)} of {module_ranges(modules)}{where}: {text}")
    if len(lines) > MAX_NEAREST_LINES:
        rest = len(lines) - MAX_NEAREST_LINES
        lines = [*lines[:MAX_NEAREST_LINES], f"  ... and {rest} more"]
    return lines


def _conditions_text(conditions: Any) -> str:
    from pulsetrain.catalog.conditions import CONDITION_UNITS

    parts = []
    for name, value in conditions.as_dict().items():
        if value is None:
            parts.append(f"{name} any")
        else:
            number = int(value) if isinstance(value, float) and value.is_integer() else value
            parts.append(f"{name} {number}{CONDITION_UNITS.get(name, '')}")
    return ", ".join(parts)


def missing_constants_error(
    catalog: Any,
    detector: str,
    found: Mapping[int, Mapping[str, Any]],
    modules: Sequence[int],
    types: Sequence[str],
    conditions: Any,
    at: datetime,
) -> MissingConstantsError | None:
    """One error naming every constant a job lacks, or None if nothing is missing.

    Parameters
    ----------
    catalog : Catalog
        The catalogue that was asked.
    detector : str
        Detector name.
    found : mapping
        ``{module: {type: record}}`` the catalogue found (``missing_ok=True``).
    modules, types : sequence
        The modules and constant types the job needs.
    conditions : Conditions
        The conditions asked.
    at : datetime
        The time the constants must be valid at.
    """
    missing_pairs = [(m, t) for m in modules for t in types if t not in found.get(m, {})]
    if not missing_pairs:
        return None
    missing: dict[str, list[int]] = {}
    for module, ctype in missing_pairs:
        missing.setdefault(ctype, []).append(module)
    by_modules: dict[tuple[int, ...], list[str]] = {}
    for ctype in types:
        if ctype in missing:
            by_modules.setdefault(tuple(missing[ctype]), []).append(ctype)
    candidates, stored, known = _explanations(catalog, detector, missing_pairs, conditions, at)
    lines = [f"constants missing for {detector} (valid at {at.isoformat()}):"]
    lines += [f"  {module_ranges(ms)}: {', '.join(ts)}" for ms, ts in by_modules.items()]
    lines.append(
        textwrap.fill(
            f"conditions asked: {_conditions_text(conditions)}",
            width=LINE_WIDTH,
            subsequent_indent="  ",
            break_on_hyphens=False,
            break_long_words=False,
        )
    )
    if known:
        lines.append("nearest in the catalogue:")
        lines += _nearest_lines(missing_pairs, candidates, stored)
    else:
        lines.append(f"the catalogue {catalog.url} has no detector {detector!r}")
    return MissingConstantsError(
        "\n".join(lines),
        detector=detector,
        module=sorted({m for m, _ in missing_pairs}),
        constant_type=[t for t in types if t in missing],
        conditions=conditions,
        at=at,
        candidates=candidates,
        missing=missing,
    )


def _explanations(
    catalog: Any,
    detector: str,
    missing_pairs: Sequence[tuple[int, str]],
    conditions: Any,
    at: datetime,
) -> tuple[list[tuple[Any, list[Any]]], dict[str, set[int]], bool]:
    """The catalogue's candidates for the missing pairs (nearest first), the modules holding
    any constant of each missing type, and whether the detector is known at all."""
    if not any(d.name == detector for d in catalog.detectors()):
        return [], {}, False
    modules = sorted({m for m, _ in missing_pairs})
    types = sorted({t for _, t in missing_pairs})
    candidates: list[tuple[Any, list[Any]]] = []
    for module in modules:
        wanted = [t for t in types if (module, t) in set(missing_pairs)]
        try:
            catalog.find_constants(detector, module, conditions, at, types=wanted)
        except ConstantNotFoundError as exc:  # the catalogue's explanation of this module
            candidates.extend(exc.candidates)
    stored = {
        ctype: {int(r.module) for r in catalog.list_constants(detector, ctype=ctype)}
        for ctype in types
    }
    return candidates, stored, True
