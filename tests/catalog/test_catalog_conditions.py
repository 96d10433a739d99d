"""Operating conditions and the tolerance rules (no database)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulsetrain.catalog import CONDITION_NAMES, Conditions, Tolerances
from pulsetrain.catalog.conditions import mismatches
from pulsetrain.errors import ConfigurationError


def test_conditions_coerce_numbers():
    c = Conditions(memory_cells=np.int64(352), bias_voltage=300, gain_mode=np.uint8(1))
    assert c.memory_cells == 352 and type(c.memory_cells) is int
    assert c.bias_voltage == 300.0 and type(c.bias_voltage) is float
    assert c.gain_mode == 1 and type(c.gain_mode) is int
    assert Conditions(memory_cells=64.0).memory_cells == 64


@pytest.mark.parametrize(
    "kwargs",
    [
        {"memory_cells": 1.5},
        {"memory_cells": True},
        {"bias_voltage": "300"},
        {"photon_energy": float("nan")},
        {"acquisition_rate": float("inf")},
    ],
)
def test_conditions_reject_bad_values(kwargs):
    with pytest.raises(ConfigurationError, match=next(iter(kwargs))):
        Conditions(**kwargs)


def test_conditions_from_dict_and_str():
    c = Conditions.from_dict({"memory_cells": 202, "photon_energy": 9.3})
    assert c == Conditions(memory_cells=202, photon_energy=9.3)
    assert str(c) == "memory_cells=202, photon_energy=9.3"
    assert c.as_dict(drop_none=True) == {"memory_cells": 202, "photon_energy": 9.3}
    assert set(c.as_dict()) == set(CONDITION_NAMES)
    assert str(Conditions()) == "(no conditions)"
    with pytest.raises(ConfigurationError, match="bias"):
        Conditions.from_dict({"bias": 300})


def test_tolerances_defaults_and_overrides():
    t = Tolerances()
    assert (t.memory_cells, t.gain_setting, t.gain_mode) == (0, 0, 0)
    assert (t.bias_voltage, t.acquisition_rate, t.integration_time, t.photon_energy) == (
        5.0,
        0.1,
        1,
        0.2,
    )
    t2 = Tolerances.coerce({"bias_voltage": 20})
    assert t2.bias_voltage == 20 and t2.photon_energy == 0.2
    assert Tolerances.coerce(t2) is t2
    with pytest.raises(ConfigurationError, match="must be a finite number >= 0"):
        Tolerances(bias_voltage=-1)
    with pytest.raises(ConfigurationError, match="unknown tolerance"):
        Tolerances.coerce({"voltage": 1})


def test_mismatch_rules():
    stored = Conditions(
        memory_cells=352, bias_voltage=300, acquisition_rate=1.1, photon_energy=None
    )
    # within tolerance, including the boundaries
    assert mismatches(Conditions(bias_voltage=305), stored) == []
    assert mismatches(Conditions(bias_voltage=295), stored) == []
    # 1.0 -> 1.1 is 0.10000000000000009 in binary floating point and must still match
    assert mismatches(Conditions(acquisition_rate=1.0), stored) == []
    assert mismatches(Conditions(acquisition_rate=1.2), stored) == []
    # outside
    (m,) = mismatches(Conditions(bias_voltage=305.5), stored)
    assert (m.name, m.stored, m.wanted, m.tolerance) == ("bias_voltage", 300.0, 305.5, 5.0)
    assert "bias_voltage is 300 V (wanted 305.5 ± 5 V)" == str(m)
    (m,) = mismatches(Conditions(memory_cells=202), stored)
    assert str(m) == "memory_cells is 352 (wanted 202)"
    # None in the query: unconstrained; None in the stored constant: independent
    assert mismatches(Conditions(), stored) == []
    assert mismatches(Conditions(photon_energy=12.0), stored) == []
    # several at once, custom tolerance
    found = mismatches(
        Conditions(memory_cells=64, bias_voltage=320), stored, Tolerances(bias_voltage=10)
    )
    assert [m.name for m in found] == ["memory_cells", "bias_voltage"]
    assert mismatches(Conditions(bias_voltage=320), stored, Tolerances(bias_voltage=20)) == []


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)


@given(wanted=finite, stored=finite, tolerance=st.floats(min_value=0, max_value=100))
def test_tolerance_property(wanted, stored, tolerance):
    tol = Tolerances(bias_voltage=tolerance)
    found = mismatches(Conditions(bias_voltage=wanted), Conditions(bias_voltage=stored), tol)
    gap = abs(stored - wanted)
    if gap <= tolerance:
        assert found == []
    elif gap > tolerance + 1e-6 * max(1.0, abs(wanted)):
        assert [m.name for m in found] == ["bias_voltage"]
