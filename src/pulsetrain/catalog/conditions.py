"""Operating conditions of a detector and the rules for matching them.

A calibration constant is only valid for the conditions it was measured under (number of
memory cells, sensor bias voltage, ...).  :class:`Conditions` holds those values, and
:class:`Tolerances` says how far a stored constant may differ from a query and still match.

Matching rule, per condition:

* if the query leaves the condition at ``None``, it is not constrained;
* if the stored constant has ``None`` for it, the constant does not depend on it and matches
  any value (dark constants, for example, do not record a photon energy);
* otherwise the two values match when ``|stored - wanted| <= tolerance`` (a tolerance of 0 means
  equality).  A relative slack of 1e-9 absorbs binary rounding (1.1 - 1.0 > 0.1 in floating point).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pulsetrain.errors import ConfigurationError

__all__ = [
    "CONDITION_NAMES",
    "Conditions",
    "Mismatch",
    "Tolerances",
    "condition_bounds",
    "mismatches",
]

#: Names of the operating conditions, in the order they are shown.
CONDITION_NAMES: tuple[str, ...] = (
    "memory_cells",
    "bias_voltage",
    "acquisition_rate",
    "gain_setting",
    "gain_mode",
    "integration_time",
    "photon_energy",
)

#: Conditions whose values are whole numbers.
INTEGER_CONDITIONS = frozenset({"memory_cells", "gain_setting", "gain_mode"})

#: Units, used in messages and tables.
CONDITION_UNITS: dict[str, str] = {
    "memory_cells": "",
    "bias_voltage": " V",
    "acquisition_rate": " MHz",
    "gain_setting": "",
    "gain_mode": "",
    "integration_time": "",
    "photon_energy": " keV",
}

_RELATIVE_SLACK = 1e-9


def _coerce_value(name: str, value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"condition {name} must be a number or None, not {value!r}")
    if name in INTEGER_CONDITIONS:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigurationError(f"condition {name} must be a whole number, not {value!r}")
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise ConfigurationError(f"condition {name} must be finite, not {value!r}")
    return value


def _format_number(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Conditions:
    """Operating conditions a constant was measured under, or that a query asks for.

    Every field is optional: ``None`` on a query means "any value", ``None`` on a stored
    constant means "does not depend on this condition".

    Parameters
    ----------
    memory_cells : int, optional
        Number of memory cells in use (AGIPD: 4, 32, ..., 352).
    bias_voltage : float, optional
        Sensor bias voltage in volts.
    acquisition_rate : float, optional
        Pulse (acquisition) rate in MHz, e.g. 1.1 or 4.5.
    gain_setting : int, optional
        Gain setting (AGIPD CDS setting, 0 or 1).
    gain_mode : int, optional
        Gain mode: 0 adaptive, non-zero a fixed gain stage.
    integration_time : float, optional
        Integration time (AGIPD default 12).
    photon_energy : float, optional
        Photon (source) energy in keV; used by flat-field constants.
    """

    memory_cells: int | None = None
    bias_voltage: float | None = None
    acquisition_rate: float | None = None
    gain_setting: int | None = None
    gain_mode: int | None = None
    integration_time: float | None = None
    photon_energy: float | None = None

    def __post_init__(self) -> None:
        for name in CONDITION_NAMES:
            object.__setattr__(self, name, _coerce_value(name, getattr(self, name)))

    def as_dict(self, *, drop_none: bool = False) -> dict[str, int | float | None]:
        """Return the conditions as a dict (optionally without the ``None`` ones)."""
        values = {name: getattr(self, name) for name in CONDITION_NAMES}
        if drop_none:
            values = {k: v for k, v in values.items() if v is not None}
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Conditions:
        """Build conditions from a mapping; unknown keys raise ``ConfigurationError``."""
        unknown = sorted(set(values) - set(CONDITION_NAMES))
        if unknown:
            raise ConfigurationError(
                f"unknown condition(s) {', '.join(unknown)}; known: {', '.join(CONDITION_NAMES)}"
            )
        return cls(**dict(values))

    def replace(self, **changes: Any) -> Conditions:
        """Return a copy with some conditions changed."""
        return dataclasses.replace(self, **changes)

    def __str__(self) -> str:
        parts = [
            f"{name}={_format_number(value)}"
            for name, value in self.as_dict(drop_none=True).items()
        ]
        return ", ".join(parts) if parts else "(no conditions)"


@dataclass(frozen=True)
class Tolerances:
    """How far a stored condition may be from the queried one and still match.

    The defaults are exact for memory cells, gain setting and gain mode; ±5 V bias voltage,
    ±0.1 MHz acquisition rate, ±1 integration time and ±0.2 keV photon energy.
    """

    memory_cells: float = 0
    bias_voltage: float = 5.0
    acquisition_rate: float = 0.1
    gain_setting: float = 0
    gain_mode: float = 0
    integration_time: float = 1
    photon_energy: float = 0.2

    def __post_init__(self) -> None:
        for name in CONDITION_NAMES:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigurationError(
                    f"tolerance for {name} must be a finite number >= 0, not {value!r}"
                )

    @classmethod
    def coerce(cls, value: Tolerances | Mapping[str, float] | None) -> Tolerances:
        """Return ``value`` as :class:`Tolerances`; a mapping overrides the defaults."""
        if value is None:
            return cls()
        if isinstance(value, Tolerances):
            return value
        unknown = sorted(set(value) - set(CONDITION_NAMES))
        if unknown:
            raise ConfigurationError(
                f"unknown tolerance(s) {', '.join(unknown)}; known: {', '.join(CONDITION_NAMES)}"
            )
        return cls(**dict(value))

    def as_dict(self) -> dict[str, float]:
        """Return the tolerances as a dict."""
        return {name: getattr(self, name) for name in CONDITION_NAMES}


def condition_bounds(value: float, tolerance: float) -> tuple[float, float]:
    """Return the inclusive interval of stored values matching ``value`` within ``tolerance``."""
    slack = tolerance + _RELATIVE_SLACK * max(1.0, abs(value))
    return value - slack, value + slack


@dataclass(frozen=True)
class Mismatch:
    """One condition in which a stored constant differs from a query."""

    name: str
    stored: float | int
    wanted: float | int
    tolerance: float

    def __str__(self) -> str:
        unit = CONDITION_UNITS.get(self.name, "")
        wanted = _format_number(self.wanted)
        if self.tolerance:
            wanted = f"{wanted} ± {_format_number(self.tolerance)}"
        return f"{self.name} is {_format_number(self.stored)}{unit} (wanted {wanted}{unit})"

    @property
    def distance(self) -> float:
        """How far outside the tolerance the stored value is, relative to the wanted value."""
        excess = abs(self.stored - self.wanted) - self.tolerance
        return max(excess, 0.0) / max(abs(self.wanted), 1.0)


def mismatches(
    wanted: Conditions, stored: Conditions, tolerances: Tolerances | None = None
) -> list[Mismatch]:
    """List the conditions in which ``stored`` fails to match the query ``wanted``.

    An empty list means the constant matches (see the module docstring for the rule).
    """
    tol = tolerances or Tolerances()
    result = []
    for name in CONDITION_NAMES:
        want = getattr(wanted, name)
        have = getattr(stored, name)
        if want is None or have is None:
            continue
        low, high = condition_bounds(want, getattr(tol, name))
        if not low <= have <= high:
            result.append(Mismatch(name, have, want, getattr(tol, name)))
    return result
