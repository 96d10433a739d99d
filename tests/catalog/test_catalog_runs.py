"""Run records and the links between runs and constants."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from _catalog_helpers import DETECTOR, T0

from pulsetrain.catalog import CatalogError, RunFile


def make_run_dir(path, sizes):
    path.mkdir(parents=True, exist_ok=True)
    for name, size in sizes.items():
        (path / name).write_bytes(b"x" * size)
    return path


def test_add_run_scans_files(catalog, tmp_path):
    run_dir = make_run_dir(
        tmp_path / "raw" / "r0007",
        {
            "RAW-R0007-AGIPD01-S00000.h5": 1500,
            "RAW-R0007-AGIPD00-S00000.h5": 1000,
            "RAW-R0007-DA01-S00000.h5": 10,
            "notes.txt": 3,
        },
    )
    start = datetime(2024, 5, 1, 8, 0, tzinfo=timezone.utc)
    run = catalog.add_run(
        900001,
        7,
        run_dir,
        run_type="dark-HG",
        sample="No Sample",
        n_trains=100,
        start_time=start,
        end_time=start + timedelta(seconds=10),
    )
    assert (run.proposal, run.run_number, run.data_category, run.run_type) == (
        900001,
        7,
        "RAW",
        "dark-HG",
    )
    assert run.path == str(run_dir.resolve())
    assert run.files == (
        RunFile("RAW-R0007-AGIPD00-S00000.h5", 1000),
        RunFile("RAW-R0007-AGIPD01-S00000.h5", 1500),
        RunFile("RAW-R0007-DA01-S00000.h5", 10),
    )
    assert run.total_size == 2510
    assert run.n_trains == 100 and run.start_time == start
    assert run.end_time - run.start_time == timedelta(seconds=10)
    assert catalog.get_run(run.id) == run


def test_explicit_file_lists(catalog, tmp_path):
    run_dir = make_run_dir(tmp_path / "r0001", {"a.h5": 5})
    (run_dir / "sub").mkdir()
    (run_dir / "sub" / "b.h5").write_bytes(b"12345678")
    run = catalog.add_run(
        1, 1, run_dir, files=["a.h5", run_dir / "sub" / "b.h5", RunFile("c.h5", 77), ("d.h5", 9)]
    )
    assert run.files == (
        RunFile("a.h5", 5),
        RunFile("c.h5", 77),
        RunFile("d.h5", 9),
        RunFile("sub/b.h5", 8),
    )
    with pytest.raises(CatalogError, match="missing.h5 does not exist"):
        catalog.add_run(1, 2, run_dir, files=["missing.h5"])
    with pytest.raises(CatalogError, match="listed twice"):
        catalog.add_run(1, 3, run_dir, files=["a.h5", ("a.h5", 5)])
    # a directory that does not exist (yet) gives an empty file list
    assert catalog.add_run(1, 4, tmp_path / "later").files == ()


def test_duplicates_replace_and_categories(catalog, tmp_path):
    first = catalog.add_run(900001, 3, make_run_dir(tmp_path / "a", {"x.h5": 1}))
    with pytest.raises(
        CatalogError, match=rf"already in the catalogue as #{first.id}.*next free run number 4"
    ):
        catalog.add_run(900001, 3, tmp_path / "b")
    corr = catalog.add_run(900001, 3, tmp_path / "proc", data_category="corr", run_type="corr")
    assert corr.data_category == "CORR" and corr.id != first.id
    replaced = catalog.add_run(
        900001, 3, make_run_dir(tmp_path / "b", {"y.h5": 2, "z.h5": 3}), replace=True, n_trains=5
    )
    assert replaced.id == first.id
    assert [f.name for f in replaced.files] == ["y.h5", "z.h5"] and replaced.n_trains == 5
    assert catalog.get_run(first.id).path == str((tmp_path / "b").resolve())


def test_find_runs_and_next_run_number(catalog, tmp_path):
    assert catalog.next_run_number(900001) == 1
    for number, run_type, category in (
        (1, "dark-HG", "RAW"),
        (2, "dark-MG", "RAW"),
        (3, "raw", "RAW"),
        (3, "corr", "CORR"),
    ):
        catalog.add_run(
            900001,
            number,
            tmp_path / str(number),
            run_type=run_type,
            data_category=category,
            sample="lysozyme" if number == 3 else None,
        )
    catalog.add_run(900002, 10, tmp_path / "other")
    assert catalog.next_run_number(900001) == 4
    assert catalog.next_run_number(900002) == 11
    key = lambda runs: [(r.proposal, r.run_number, r.data_category) for r in runs]
    assert key(catalog.find_runs(900001)) == [
        (900001, 1, "RAW"),
        (900001, 2, "RAW"),
        (900001, 3, "CORR"),
        (900001, 3, "RAW"),
    ]
    assert key(catalog.find_runs(run_number=3)) == [(900001, 3, "CORR"), (900001, 3, "RAW")]
    assert key(catalog.find_runs(data_category="corr")) == [(900001, 3, "CORR")]
    assert key(catalog.find_runs(run_type="dark-MG")) == [(900001, 2, "RAW")]
    assert len(catalog.find_runs(sample="lysozyme")) == 2
    assert len(catalog.find_runs()) == 5
    assert catalog.find_runs(900003) == []


def test_update_run(catalog, tmp_path):
    run_dir = tmp_path / "r0001"
    run = catalog.add_run(900001, 1, run_dir, start_time=T0)
    assert run.files == () and run.n_trains is None
    make_run_dir(run_dir, {"RAW-R0001-AGIPD00-S00000.h5": 64})
    done = catalog.update_run(run, n_trains=50, end_time=T0 + timedelta(minutes=1), rescan=True)
    assert done.n_trains == 50 and done.start_time == T0
    assert done.end_time == T0 + timedelta(minutes=1)
    assert done.files == (RunFile("RAW-R0001-AGIPD00-S00000.h5", 64),)
    assert catalog.update_run(run.id, sample="s", run_type="dark").sample == "s"
    assert catalog.get_run(run.id).files == done.files
    with pytest.raises(CatalogError, match="no run #999"):
        catalog.update_run(999, n_trains=1)


def test_run_constant_links(agipd, dark_conditions, tmp_path):
    consts = [
        agipd.add_constant(DETECTOR, m, t, np.zeros((2, 2)), dark_conditions, T0, store="db")
        for m in (0, 1)
        for t in ("Offset", "ThresholdsDark")
    ]
    raw = agipd.add_run(900001, 5, tmp_path / "raw")
    corr = agipd.add_run(900001, 5, tmp_path / "proc", data_category="CORR", run_type="corr")
    assert agipd.constants_of_run(corr) == []
    agipd.link_run_constants(corr, consts[:3])
    agipd.link_run_constants(corr.id, [consts[2].id, consts[3]])  # idempotent for #3
    assert [c.id for c in agipd.constants_of_run(corr)] == [c.id for c in consts]
    assert agipd.constants_of_run(raw) == []
    assert [r.id for r in agipd.runs_using_constant(consts[0])] == [corr.id]
    agipd.unlink_run_constants(corr, [consts[0]])
    assert [c.id for c in agipd.constants_of_run(corr)] == [c.id for c in consts[1:]]
    with pytest.raises(CatalogError, match=r"constants \[4242\]"):
        agipd.link_run_constants(corr, [4242])
    with pytest.raises(CatalogError, match="no run #4242"):
        agipd.link_run_constants(4242, consts)
    agipd.unlink_run_constants(corr)
    assert agipd.constants_of_run(corr) == []


def test_corrections_of_a_corr_run_are_recorded(catalog, tmp_path):
    rec = catalog.add_run(
        900003, 7, tmp_path / "corr", data_category="CORR", run_type="corr",
        corrections=("offset", "gainstage", "badpixels"),
    )  # fmt: skip
    assert rec.corrections == ("offset", "gainstage", "badpixels")
    assert catalog.get_run(rec.id).corrections == ("offset", "gainstage", "badpixels")
    assert catalog.add_run(900003, 7, tmp_path / "raw").corrections == ()
