"""Storing, finding and loading constants (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import h5py
import numpy as np
import pytest
from _catalog_helpers import DETECTOR, T0
from sqlalchemy import text

from pulsetrain.catalog import (
    Catalog,
    CatalogError,
    ChecksumMismatchError,
    Conditions,
    ConstantNotFoundError,
)
from pulsetrain.catalog.storage import array_to_npy
from pulsetrain.errors import CalibrationError, ConfigurationError

DAY = timedelta(days=1)


def random_array(seed=0, shape=(3, 8, 16, 4), dtype="f4"):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1000).astype(dtype)


@pytest.mark.parametrize("store", ["file", "db"])
@pytest.mark.parametrize(
    "array",
    [
        random_array(1, (3, 4, 16, 8), "f4"),
        random_array(2, (2, 5), "f8"),
        (random_array(3, (3, 4, 8)) > 500).astype("u4") * 4,
        np.arange(24, dtype=">i2").reshape(2, 3, 4),  # big-endian survives
        np.array(12.5),  # 0-d
        np.ones((0, 3), "u1"),  # empty
        random_array(4, (4, 6)).T,  # not C-contiguous
    ],
    ids=["f4", "f8", "u4", "be-i2", "0d", "empty", "transposed"],
)
def test_store_and_load_roundtrip(agipd, dark_conditions, store, array):
    rec = agipd.add_constant(DETECTOR, 0, "Offset", array, dark_conditions, T0, store=store)
    assert rec.storage == store
    assert rec.shape == array.shape and rec.dtype == array.dtype.str
    assert rec.nbytes == array.nbytes
    assert rec.conditions == dark_conditions
    loaded = agipd.load_array(rec)
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    np.testing.assert_array_equal(loaded, array)
    # by ID, from a freshly opened catalogue (a second process would do this)
    again = Catalog(agipd.engine.url, store_dir=agipd.store_dir)
    np.testing.assert_array_equal(again.load_array(rec.id), array)
    assert again.get_constant(rec.id) == rec
    again.close()


def test_file_storage_layout(agipd, dark_conditions, store_dir):
    arr = random_array()
    rec = agipd.add_constant(DETECTOR, 3, "Offset", arr, dark_conditions, T0, comment="test")
    assert rec.module_name == "AGIPD_SIV1_AGIPDV11_M305" and rec.comment == "test"
    assert not rec.file_path.startswith("/"), "paths inside the store are kept relative"
    path = agipd.constant_path(rec)
    assert path.is_file() and path.is_relative_to(store_dir)
    with h5py.File(path, "r") as f:
        ds = f[rec.dataset]
        np.testing.assert_array_equal(ds[()], arr)
        assert ds.attrs["constant_type"] == "Offset"
        assert ds.attrs["memory_cells"] == 352
        assert ds.attrs["sha256"] == rec.checksum
    # db storage writes no file
    before = sorted(store_dir.rglob("*.h5"))
    agipd.add_constant(DETECTOR, 3, "Noise", arr, dark_conditions, T0, store="db")
    assert sorted(store_dir.rglob("*.h5")) == before


def test_validity_interval_is_half_open(agipd, dark_conditions):
    rec = agipd.add_constant(
        DETECTOR, 0, "Offset", random_array(), dark_conditions, T0, valid_to=T0 + 10 * DAY
    )
    find = lambda at: agipd.find_constant(DETECTOR, 0, "Offset", dark_conditions, at=at)
    assert find(T0).id == rec.id
    assert find(T0 + 5 * DAY).id == rec.id
    assert find(T0 + 10 * DAY - timedelta(microseconds=1)).id == rec.id
    for at in (T0 - timedelta(microseconds=1), T0 + 10 * DAY, T0 + 100 * DAY):
        with pytest.raises(ConstantNotFoundError, match="valid at other times"):
            find(at)


def test_newest_valid_constant_wins(agipd, dark_conditions):
    add = lambda seed, start, end=None: agipd.add_constant(
        DETECTOR, 0, "Offset", random_array(seed), dark_conditions, start, end
    )
    old = add(1, T0)  # open-ended
    newer = add(2, T0 + 10 * DAY, T0 + 20 * DAY)
    newest = add(3, T0 + 30 * DAY)
    find = lambda at: agipd.find_constant(DETECTOR, 0, "Offset", dark_conditions, at=at).id
    assert find(T0 + 5 * DAY) == old.id
    assert find(T0 + 15 * DAY) == newer.id
    assert find(T0 + 25 * DAY) == old.id  # newer expired: the older open one is valid again
    assert find(T0 + 35 * DAY) == newest.id
    assert find(None) == newest.id  # default: now
    # same valid_from: the one added last wins
    again = add(4, T0 + 30 * DAY)
    assert find(T0 + 35 * DAY) == again.id
    np.testing.assert_array_equal(agipd.load_array(again), random_array(4))


def test_tolerances(agipd, dark_conditions):
    rec = agipd.add_constant(DETECTOR, 0, "Offset", random_array(), dark_conditions, T0)
    at = T0 + DAY

    def find(tolerances=None, **changes):
        query = dark_conditions.replace(**changes)
        return agipd.find_constant(DETECTOR, 0, "Offset", query, at=at, tolerances=tolerances)

    for ok in (
        {"bias_voltage": 305},
        {"bias_voltage": 295.0},
        {"acquisition_rate": 1.0},
        {"acquisition_rate": 1.2},
        {"integration_time": 13},
    ):
        assert find(**ok).id == rec.id, ok
    for bad, name in (
        ({"bias_voltage": 305.5}, "bias_voltage"),
        ({"acquisition_rate": 2.2}, "acquisition_rate"),
        ({"memory_cells": 202}, "memory_cells"),
        ({"gain_setting": 1}, "gain_setting"),
        ({"gain_mode": 1}, "gain_mode"),
        ({"integration_time": 14}, "integration_time"),
    ):
        with pytest.raises(ConstantNotFoundError) as info:
            find(**bad)
        (candidate, mismatched) = info.value.candidates[0]
        assert candidate.id == rec.id
        assert [m.name for m in mismatched] == [name]
        assert name in str(info.value)
    assert find({"bias_voltage": 50}, bias_voltage=340).id == rec.id
    assert find({"memory_cells": 200}, memory_cells=202).id == rec.id


def test_photon_energy_tolerance_and_none_conditions(agipd, dark_conditions):
    ff = dark_conditions.replace(photon_energy=9.2)
    flat = agipd.add_constant(DETECTOR, 0, "SlopesFF", random_array(1), ff, T0)
    dark = agipd.add_constant(DETECTOR, 0, "Offset", random_array(2), dark_conditions, T0)
    at = T0 + DAY
    query = dark_conditions.replace(photon_energy=9.35)
    # the dark constant has no photon energy: it matches any
    assert agipd.find_constant(DETECTOR, 0, "Offset", query, at=at).id == dark.id
    assert agipd.find_constant(DETECTOR, 0, "SlopesFF", query, at=at).id == flat.id
    with pytest.raises(ConstantNotFoundError, match="photon_energy is 9.2 keV"):
        agipd.find_constant(DETECTOR, 0, "SlopesFF", query.replace(photon_energy=9.5), at=at)
    # None in the query: not constrained, newest wins across memory-cell settings
    later = agipd.add_constant(
        DETECTOR, 0, "Offset", random_array(3), dark_conditions.replace(memory_cells=202), T0 + DAY
    )
    loose = dark_conditions.replace(memory_cells=None)
    assert agipd.find_constant(DETECTOR, 0, "Offset", loose, at=at + DAY).id == later.id
    assert agipd.find_constant(DETECTOR, 0, "Offset", Conditions(), at=at + DAY).id == later.id
    assert agipd.find_constant(DETECTOR, 0, "Offset", dark_conditions, at=at + DAY).id == dark.id
    # a mapping works as conditions too
    assert (
        agipd.find_constant(DETECTOR, 0, "Offset", {"memory_cells": 202}, at=at + DAY).id
        == later.id
    )


def test_modules_and_detectors_are_separate(agipd, dark_conditions):
    agipd.add_detector("FXE_DET_LPD1M-1", "LPD", 16)
    a = agipd.add_constant(DETECTOR, 0, "Offset", random_array(1), dark_conditions, T0)
    b = agipd.add_constant(DETECTOR, 3, "Offset", random_array(2), dark_conditions, T0)
    c = agipd.add_constant("FXE_DET_LPD1M-1", 0, "Offset", random_array(3), dark_conditions, T0)
    at = T0 + DAY
    assert agipd.find_constant(DETECTOR, 0, "Offset", dark_conditions, at=at).id == a.id
    assert agipd.find_constant(DETECTOR, 3, "Offset", dark_conditions, at=at).id == b.id
    by_name = agipd.find_constant(
        DETECTOR, "AGIPD_SIV1_AGIPDV11_M305", "Offset", dark_conditions, at=at
    )
    assert by_name.id == b.id and by_name.module == 3
    assert agipd.find_constant("FXE_DET_LPD1M-1", 0, "Offset", dark_conditions, at=at).id == c.id
    with pytest.raises(ConstantNotFoundError, match="no Offset constant for this module at all"):
        agipd.find_constant(DETECTOR, 1, "Offset", dark_conditions, at=at)
    assert [r.id for r in agipd.list_constants(DETECTOR)] == [a.id, b.id]
    assert [r.id for r in agipd.list_constants(DETECTOR, 3)] == [b.id]
    assert [r.id for r in agipd.list_constants(ctype="Offset")] == [c.id, a.id, b.id]
    assert len(agipd.list_constants(limit=2)) == 2


def test_not_found_message_names_everything(agipd, dark_conditions):
    agipd.add_constant(DETECTOR, 3, "Noise", random_array(), dark_conditions, T0)
    at = T0 + DAY
    with pytest.raises(ConstantNotFoundError) as info:
        agipd.find_constant(DETECTOR, 3, "Offset", dark_conditions, at=at)
    err = info.value
    assert isinstance(err, CatalogError) and isinstance(err, CalibrationError)
    message = str(err)
    for part in (
        DETECTOR,
        "module 3",
        "AGIPD_SIV1_AGIPDV11_M305",
        "Offset",
        "memory_cells=352",
        "it has: Noise",
    ):
        assert part in message, part
    assert (err.detector, err.module, err.constant_type) == (DETECTOR, 3, "Offset")
    assert err.conditions == dark_conditions and err.at == at and err.candidates == []

    off = agipd.add_constant(
        DETECTOR, 3, "Offset", random_array(), dark_conditions.replace(memory_cells=202), T0
    )
    off2 = agipd.add_constant(
        DETECTOR,
        3,
        "Offset",
        random_array(),
        dark_conditions.replace(bias_voltage=200, memory_cells=64),
        T0,
    )
    with pytest.raises(ConstantNotFoundError) as info:
        agipd.find_constant(DETECTOR, 3, "Offset", dark_conditions, at=at)
    message = str(info.value)
    assert "memory_cells is 202 (wanted 352)" in message
    assert "bias_voltage is 200 V (wanted 300 ± 5 V)" in message
    # nearest first: one mismatch before two
    assert [c.id for c, _ in info.value.candidates] == [off.id, off2.id]

    with pytest.raises(ConstantNotFoundError, match="'NO_SUCH_DET' is not in the catalogue"):
        agipd.find_constant("NO_SUCH_DET", 0, "Offset", dark_conditions)
    with pytest.raises(ConstantNotFoundError, match="has no module 16"):
        agipd.find_constant(DETECTOR, 16, "Offset", dark_conditions)


def test_find_constants(agipd, dark_conditions):
    recs = {
        t: agipd.add_constant(DETECTOR, 2, t, random_array(i), dark_conditions, T0)
        for i, t in enumerate(["Offset", "Noise", "ThresholdsDark"])
    }
    found = agipd.find_constants(
        DETECTOR, 2, dark_conditions, T0 + DAY, types=["Offset", "ThresholdsDark"]
    )
    assert {t: r.id for t, r in found.items()} == {
        "Offset": recs["Offset"].id,
        "ThresholdsDark": recs["ThresholdsDark"].id,
    }
    types = ["Offset", "BadPixelsDark", "RelativeGain"]
    with pytest.raises(ConstantNotFoundError) as info:
        agipd.find_constants(DETECTOR, 2, dark_conditions, T0 + DAY, types=types)
    assert "BadPixelsDark" in str(info.value) and "RelativeGain" in str(info.value)
    assert info.value.constant_type == ["BadPixelsDark", "RelativeGain"]
    partial = agipd.find_constants(
        DETECTOR, 2, dark_conditions, T0 + DAY, types=types, missing_ok=True
    )
    assert list(partial) == ["Offset"]
    # an unknown module: one clear error, or nothing found with missing_ok
    with pytest.raises(ConstantNotFoundError, match="module"):
        agipd.find_constants(DETECTOR, 99, dark_conditions, T0 + DAY, types=types)
    assert (
        agipd.find_constants(DETECTOR, 99, dark_conditions, T0, types=types, missing_ok=True) == {}
    )


def test_find_constants_of_modules_picks_as_find_constant(agipd, dark_conditions):
    """One query for several modules picks, per module and type, what find_constant picks:
    the newest valid version with matching conditions, never another module's."""
    other = dark_conditions.replace(bias_voltage=200)
    add = agipd.add_constant
    add(DETECTOR, 2, "Offset", random_array(1), dark_conditions, T0)
    newest2 = add(DETECTOR, 2, "Offset", random_array(2), dark_conditions, T0 + DAY)
    add(DETECTOR, 2, "Offset", random_array(3), dark_conditions, T0 + 5 * DAY)  # not yet valid
    add(DETECTOR, 2, "Offset", random_array(4), other, T0 + 2 * DAY)  # other conditions
    gain2 = add(DETECTOR, 2, "ThresholdsDark", random_array(5), dark_conditions, T0)
    add(DETECTOR, 3, "Offset", random_array(6), dark_conditions, T0, T0 + DAY)  # expired
    newest3 = add(DETECTOR, "AGIPD_SIV1_AGIPDV11_M305", "Offset", random_array(7),
                  dark_conditions, T0 + DAY)
    gain3 = add(DETECTOR, 3, "ThresholdsDark", random_array(8), dark_conditions, T0 + DAY)
    at = T0 + 2 * DAY
    types = ["Offset", "ThresholdsDark"]
    found = agipd.find_constants_of_modules(
        DETECTOR, [2, "AGIPD_SIV1_AGIPDV11_M305"], dark_conditions, at, types=types
    )
    ids = {m: {t: r.id for t, r in recs.items()} for m, recs in found.items()}
    assert ids == {
        2: {"Offset": newest2.id, "ThresholdsDark": gain2.id},
        "AGIPD_SIV1_AGIPDV11_M305": {"Offset": newest3.id, "ThresholdsDark": gain3.id},
    }
    for module in (2, 3):
        for t in types:
            single = agipd.find_constant(DETECTOR, module, t, dark_conditions, at=at)
            assert single.id == found[2 if module == 2 else "AGIPD_SIV1_AGIPDV11_M305"][t].id
    # missing: every missing module and type in one error, or left out with missing_ok
    with pytest.raises(ConstantNotFoundError) as info:
        agipd.find_constants_of_modules(
            DETECTOR, [2, 3, 4], dark_conditions, at, types=[*types, "BadPixelsDark"]
        )
    message = str(info.value)
    assert message.startswith("5 constants missing")
    assert "module 2" in message and "module 4" in message and "module 3" in message
    partial = agipd.find_constants_of_modules(
        DETECTOR, [2, 4, 99], dark_conditions, at, types=types, missing_ok=True
    )
    assert {m: sorted(r) for m, r in partial.items()} == {2: types, 4: [], 99: []}


def _tamper_file(catalog, rec, new_value):
    with h5py.File(catalog.constant_path(rec), "r+") as f:
        del f[rec.dataset]
        f[rec.dataset] = new_value


def test_checksum_mismatch_file(agipd, dark_conditions):
    arr = random_array()
    rec = agipd.add_constant(DETECTOR, 0, "Offset", arr, dark_conditions, T0)
    changed = arr.copy()
    changed[1, 2, 3, 1] += 1
    _tamper_file(agipd, rec, changed)
    with pytest.raises(ChecksumMismatchError, match="SHA-256") as info:
        agipd.load_array(rec)
    assert str(agipd.constant_path(rec)) in str(info.value)
    assert f"#{rec.id}" in str(info.value)
    np.testing.assert_array_equal(agipd.load_array(rec, verify=False), changed)
    _tamper_file(agipd, rec, arr[:2])
    with pytest.raises(ChecksumMismatchError, match="shape"):
        agipd.load_array(rec)
    _tamper_file(agipd, rec, arr.astype("f8"))
    with pytest.raises(ChecksumMismatchError, match="dtype"):
        agipd.load_array(rec)
    _tamper_file(agipd, rec, arr)
    np.testing.assert_array_equal(agipd.load_array(rec), arr)
    agipd.constant_path(rec).unlink()
    with pytest.raises(CatalogError, match="does not exist"):
        agipd.load_array(rec)


def test_checksum_mismatch_db(agipd, dark_conditions):
    arr = random_array()
    rec = agipd.add_constant(DETECTOR, 0, "Offset", arr, dark_conditions, T0, store="db")
    changed = arr.copy()
    changed.flat[7] = -1
    with agipd.engine.begin() as connection:
        connection.execute(
            text("UPDATE constants SET data = :data WHERE id = :id"),
            {"data": array_to_npy(changed), "id": rec.id},
        )
    with pytest.raises(ChecksumMismatchError, match="in the database has SHA-256"):
        agipd.load_array(rec)
    with agipd.engine.begin() as connection:
        connection.execute(
            text("UPDATE constants SET data = :data WHERE id = :id"),
            {"data": b"garbage", "id": rec.id},
        )
    with pytest.raises(CatalogError, match="not valid .npy"):
        agipd.load_array(rec)


def test_store_dir_must_be_shared(agipd, dark_conditions, tmp_path):
    rec = agipd.add_constant(DETECTOR, 0, "Offset", random_array(), dark_conditions, T0)
    other = Catalog(agipd.engine.url, store_dir=tmp_path / "elsewhere")
    with pytest.raises(CatalogError, match="elsewhere.*does not exist"):
        other.load_array(rec.id)
    other.close()


def test_source_runs_provenance(agipd, dark_conditions, tmp_path):
    runs = [
        agipd.add_run(900001, n, tmp_path / f"r{n:04d}", run_type=f"dark-{g}")
        for n, g in ((1, "HG"), (2, "MG"), (3, "LG"))
    ]
    rec = agipd.add_constant(
        DETECTOR,
        0,
        "Offset",
        random_array(),
        dark_conditions,
        T0,
        source_runs=[runs[2], runs[0].id],
    )
    assert rec.source_runs == (runs[0].id, runs[2].id)
    assert agipd.get_constant(rec.id).source_runs == (runs[0].id, runs[2].id)
    with pytest.raises(CatalogError, match=r"source runs \[999\]"):
        agipd.add_constant(
            DETECTOR, 0, "Offset", random_array(), dark_conditions, T0, source_runs=[999]
        )


def test_invalid_input_leaves_nothing_behind(agipd, dark_conditions, store_dir):
    arr = random_array()
    with pytest.raises(ConfigurationError, match="store"):
        agipd.add_constant(DETECTOR, 0, "Offset", arr, dark_conditions, T0, store="s3")
    with pytest.raises(ConfigurationError, match="valid_to"):
        agipd.add_constant(DETECTOR, 0, "Offset", arr, dark_conditions, T0, valid_to=T0)
    with pytest.raises(CatalogError, match="dtype object"):
        agipd.add_constant(DETECTOR, 0, "Offset", np.array([{}, 1]), dark_conditions, T0)
    with pytest.raises(CatalogError, match="has no module 99"):
        agipd.add_constant(DETECTOR, 99, "Offset", arr, dark_conditions, T0)
    with pytest.raises(ConfigurationError, match="unknown condition"):
        agipd.add_constant(DETECTOR, 0, "Offset", arr, {"cells": 352}, T0)
    # a failing database insert removes the file it had written
    with pytest.raises(CatalogError):
        agipd.add_constant(DETECTOR, 0, "Offset", arr, dark_conditions, T0, source_runs=[12345])
    assert list(store_dir.rglob("*.h5")) == []
    assert agipd.list_constants() == []


def test_naive_datetimes_are_local_time(agipd, dark_conditions):
    naive = datetime(2024, 6, 1, 12, 0)
    rec = agipd.add_constant(DETECTOR, 0, "Offset", random_array(), dark_conditions, naive)
    assert rec.valid_from.tzinfo is timezone.utc
    assert rec.valid_from == naive.astimezone(timezone.utc)
    assert agipd.get_constant(rec.id).valid_from == naive.astimezone(timezone.utc)
    assert rec.created.tzinfo is timezone.utc


def test_detectors(catalog):
    det = catalog.add_detector(DETECTOR, "agipd", 16)
    assert det.detector_type == "AGIPD" and len(det.modules) == 16
    assert all(m.physical_name is None for m in det.modules)
    again = catalog.add_detector(DETECTOR, "AGIPD", 16, module_names={5: "AGIPD_M999"})
    assert again.id == det.id and again.modules[5].physical_name == "AGIPD_M999"
    with pytest.raises(CatalogError, match="already in the catalogue as a AGIPD with 16"):
        catalog.add_detector(DETECTOR, "AGIPD", 8)
    names = [f"JF_M{i}" for i in range(8)]
    jf = catalog.add_detector("SPB_IRDA_JF4M", "JUNGFRAU", 8, module_names=names)
    assert [m.physical_name for m in jf.modules] == names
    assert [d.name for d in catalog.detectors()] == [DETECTOR, "SPB_IRDA_JF4M"]
    assert catalog.get_detector("SPB_IRDA_JF4M") == jf
    with pytest.raises(ConfigurationError, match="2 module names given for 4"):
        catalog.add_detector("X", "LPD", 4, module_names=["a", "b"])
    with pytest.raises(CatalogError, match="'nope' is not in the catalogue"):
        catalog.get_detector("nope")
