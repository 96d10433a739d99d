"""Why a constant was not found: the nearest candidates and how they differ.

:func:`explain_missing` builds the :class:`~pulsetrain.errors.ConstantNotFoundError` of one
missing (module, type): its message names the detector, module, type, time and conditions and
says how the nearest constants differ; its ``candidates`` list the constants nearest first, each
with its :class:`~pulsetrain.catalog.conditions.Mismatch` list (empty for constants that match
but are valid at other times).  :func:`combine_missing` joins several into one error.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from pulsetrain.catalog.conditions import Conditions, Mismatch, Tolerances, mismatches
from pulsetrain.catalog.models import ConstantRow, ModuleRow
from pulsetrain.catalog.records import ConstantRecord
from pulsetrain.catalog.rows import constant_query, constant_record, module_label
from pulsetrain.errors import ConstantNotFoundError

__all__ = ["combine_missing", "explain_missing"]

#: Candidates named in a message (all of them are in ``ConstantNotFoundError.candidates``).
SHOWN = 3

Candidate = tuple[ConstantRecord, list[Mismatch]]


def _isoformat(value: datetime | None) -> str:
    return value.isoformat() if value is not None else "open"


def _nearest_in_conditions(
    records: Sequence[ConstantRecord], conditions: Conditions, when: datetime, tol: Tolerances
) -> list[Candidate]:
    """The constants valid at ``when``, fewest and smallest condition mismatches first."""
    valid = [r for r in records if r.is_valid_at(when)]
    return sorted(
        ((r, mismatches(conditions, r.conditions, tol)) for r in valid),
        key=lambda item: (
            len(item[1]),
            sum(m.distance for m in item[1]),
            -item[0].valid_from.timestamp(),
        ),
    )


def _nearest_in_time(
    records: Sequence[ConstantRecord], conditions: Conditions, when: datetime, tol: Tolerances
) -> list[ConstantRecord]:
    """The constants whose conditions match but that are not valid at ``when``, nearest first."""

    def distance_in_time(r: ConstantRecord) -> float:
        if when < r.valid_from:
            return (r.valid_from - when).total_seconds()
        assert r.valid_to is not None
        return (when - r.valid_to).total_seconds()

    elsewhere = [
        r
        for r in records
        if not r.is_valid_at(when) and not mismatches(conditions, r.conditions, tol)
    ]
    return sorted(elsewhere, key=distance_in_time)


def _other_types(session: Session, row: ModuleRow) -> list[str]:
    return sorted(
        session.scalars(
            select(ConstantRow.constant_type).where(ConstantRow.module_id == row.id).distinct()
        ).all()
    )


def explain_missing(
    session: Session,
    module_row: ModuleRow,
    ctype: str,
    conditions: Conditions,
    when: datetime,
    tol: Tolerances,
) -> ConstantNotFoundError:
    """The error for "no ``ctype`` constant of this module matches at ``when``".

    Parameters
    ----------
    session
        An open session of the catalogue.
    module_row
        The module asked for.
    ctype
        The constant type asked for.
    conditions, when, tol
        The conditions, time and tolerances of the query.

    Returns
    -------
    ConstantNotFoundError
        Not raised: the caller raises it, or joins several with :func:`combine_missing`.
    """
    detector = module_row.detector.name
    label = module_label(module_row.module_index, module_row.physical_name)
    head = (
        f"no {ctype} constant for {detector} {label} valid at {when.isoformat()} with {conditions}"
    )
    rows = session.scalars(
        constant_query().where(
            ConstantRow.module_id == module_row.id, ConstantRow.constant_type == ctype
        )
    ).all()
    records = [constant_record(row) for row in rows]
    candidates: list[Candidate] = []
    if not records:
        others = _other_types(session, module_row)
        reason = f"the catalogue has no {ctype} constant for this module at all" + (
            f" (it has: {', '.join(others)})" if others else ""
        )
    else:
        reasons = []
        ranked = _nearest_in_conditions(records, conditions, when, tol)
        if ranked:
            candidates.extend(ranked)
            shown = "; ".join(
                f"#{r.id} (valid from {r.valid_from.isoformat()}): " + ", ".join(str(m) for m in mm)
                for r, mm in ranked[:SHOWN]
            )
            reasons.append(
                f"{len(ranked)} {ctype} constant(s) are valid then but differ in conditions; "
                f"nearest: {shown}"
            )
        else:
            reasons.append(
                f"none of the {len(records)} {ctype} constant(s) of this module is valid then"
            )
        elsewhere = _nearest_in_time(records, conditions, when, tol)
        if elsewhere:
            candidates.extend((r, []) for r in elsewhere)
            reasons.append(
                "matching conditions but valid at other times: "
                + "; ".join(
                    f"#{r.id} valid {r.valid_from.isoformat()} -> {_isoformat(r.valid_to)}"
                    for r in elsewhere[:SHOWN]
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


def combine_missing(
    errors: Sequence[ConstantNotFoundError], when: datetime
) -> ConstantNotFoundError:
    """One error for several missing constants (the one error itself if there is one).

    Its ``constant_type`` lists the missing types in order, ``candidates`` all candidates;
    ``detector``, ``module`` and ``conditions`` are those of the first.
    """
    if len(errors) == 1:
        return errors[0]
    first = errors[0]
    return ConstantNotFoundError(
        f"{len(errors)} constants missing: " + " | ".join(str(e) for e in errors),
        detector=first.detector,
        module=first.module,
        constant_type=[e.constant_type for e in errors],
        conditions=first.conditions,
        at=when,
        candidates=[c for e in errors for c in e.candidates],
    )
