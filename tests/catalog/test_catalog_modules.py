"""The modules behind the ``Catalog`` front: each concern usable on its own, and the behaviour
switches of the front mapped onto separate functions and enums."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from _catalog_helpers import DETECTOR, T0

from pulsetrain.catalog import Catalog, constants, runs
from pulsetrain.catalog.engine import Database
from pulsetrain.catalog.explain import combine_missing, explain_missing
from pulsetrain.errors import CatalogError, ConfigurationError, ConstantNotFoundError

TYPES = ["Offset", "Noise"]


def test_catalog_is_a_thin_front():
    """No method of the front is long: each delegates to a module of its concern."""
    for name, method in inspect.getmembers(Catalog, inspect.isfunction):
        source = inspect.getsource(method)
        body = source.split('"""')[-1] if source.count('"""') >= 2 else source
        statements = [line for line in body.splitlines() if line.strip()]
        assert len(statements) <= 25, (name, len(statements))


def test_find_available_and_find_required(agipd, dark_conditions):
    db: Database = agipd.database
    agipd.add_constant(DETECTOR, 2, "Offset", np.zeros(3, "f4"), dark_conditions, T0)
    found = constants.find_available(db, DETECTOR, [2, 99], dark_conditions, T0, types=TYPES)
    assert set(found[2]) == {"Offset"} and found[99] == {}
    with pytest.raises(ConstantNotFoundError) as info:
        constants.find_required(db, DETECTOR, [2], dark_conditions, T0, types=TYPES)
    assert info.value.constant_type == "Noise" and info.value.module == 2
    with pytest.raises(ConstantNotFoundError, match="has no module 99"):
        constants.find_required(db, DETECTOR, [2, 99], dark_conditions, T0, types=TYPES)
    # the front's switch picks one or the other
    assert (
        agipd.find_constants_of_modules(
            DETECTOR, [2, 99], dark_conditions, T0, types=TYPES, missing_ok=True
        )
        == found
    )


def test_explain_missing_and_combine(agipd, dark_conditions):
    from pulsetrain.catalog.conditions import Tolerances
    from pulsetrain.catalog.rows import module_row

    db = agipd.database
    record = agipd.add_constant(DETECTOR, 2, "Offset", np.zeros(3, "f4"), dark_conditions, T0)
    other = dark_conditions.replace(memory_cells=64)
    with db.session() as session:
        row = module_row(db, session, DETECTOR, 2)
        offset = explain_missing(session, row, "Offset", other, T0, Tolerances())
        noise = explain_missing(session, row, "Noise", other, T0, Tolerances())
    assert offset.candidates[0][0] == record and "memory_cells" in str(offset)
    assert "no Noise constant for this module at all (it has: Offset)" in str(noise)
    both = combine_missing([offset, noise], T0)
    assert both.constant_type == ["Offset", "Noise"] and str(both).startswith("2 constants")
    assert combine_missing([noise], T0) is noise


def test_storage_enum_and_read_without_verify(agipd, dark_conditions):
    db = agipd.database
    assert constants.Storage.coerce("db") is constants.Storage.DB
    with pytest.raises(ConfigurationError, match="store must be 'file' or 'db'"):
        constants.Storage.coerce("cloud")
    record = agipd.add_constant(
        DETECTOR, 1, "Noise", np.arange(4.0), dark_conditions, T0, store=constants.Storage.DB
    )
    assert record.storage == "db"
    array, where = constants.read_array(db, record)
    assert where == "the database"
    constants.verify_array(record, array, where)
    np.testing.assert_array_equal(agipd.load_array(record.id, verify=False), np.arange(4.0))


def test_on_existing(catalog, tmp_path):
    db = catalog.database
    first = runs.add_run(db, 5, 1, tmp_path)
    with pytest.raises(CatalogError, match="already in the catalogue"):
        runs.add_run(db, 5, 1, tmp_path)
    again = runs.add_run(db, 5, 1, tmp_path, sample="x", on_existing=runs.OnExisting.REPLACE)
    assert again.id == first.id and again.sample == "x"
    assert [r.id for r in catalog.find_runs(path=tmp_path)] == [first.id]
    assert catalog.find_runs(path=tmp_path / "elsewhere") == []
