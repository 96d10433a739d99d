"""Where the catalogue and its constant files are, by default and by configuration."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
from _catalog_helpers import DETECTOR, T0

from pulsetrain.catalog import Catalog, Conditions, default_catalog_path, resolve_url


def test_resolve_url(monkeypatch, tmp_path):
    monkeypatch.delenv("PULSETRAIN_CATALOG", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_catalog_path() == tmp_path / "xdg" / "pulsetrain" / "catalog.sqlite"
    assert resolve_url() == f"sqlite:///{tmp_path / 'xdg' / 'pulsetrain' / 'catalog.sqlite'}"
    monkeypatch.setenv("PULSETRAIN_CATALOG", str(tmp_path / "env.sqlite"))
    assert resolve_url() == f"sqlite:///{tmp_path / 'env.sqlite'}"
    monkeypatch.setenv("PULSETRAIN_CATALOG", "postgresql+psycopg://u:p@h:1/db")
    assert resolve_url() == "postgresql+psycopg://u:p@h:1/db"
    assert resolve_url(tmp_path / "x.sqlite") == f"sqlite:///{tmp_path / 'x.sqlite'}"
    monkeypatch.chdir(tmp_path)
    assert resolve_url("rel.sqlite") == f"sqlite:///{tmp_path / 'rel.sqlite'}"


def test_default_store_next_to_sqlite_file(monkeypatch, tmp_path):
    monkeypatch.delenv("PULSETRAIN_CATALOG_STORE", raising=False)
    monkeypatch.setenv("PULSETRAIN_CATALOG", str(tmp_path / "deep" / "cal.sqlite"))
    with Catalog() as cat:
        assert cat.url == f"sqlite:///{tmp_path / 'deep' / 'cal.sqlite'}"
        assert cat.store_dir == tmp_path / "deep" / "cal-constants"
        cat.add_detector(DETECTOR, "AGIPD", 1)
        rec = cat.add_constant(DETECTOR, 0, "Offset", np.zeros(3), Conditions(), T0)
        assert cat.constant_path(rec).is_relative_to(tmp_path / "deep" / "cal-constants")
    monkeypatch.setenv("PULSETRAIN_CATALOG_STORE", str(tmp_path / "shared"))
    with Catalog() as cat:
        assert cat.store_dir == tmp_path / "shared"
    assert Path(tmp_path / "deep" / "cal.sqlite").is_file()


def test_in_memory_catalogue(tmp_path):
    with Catalog("sqlite://", store_dir=tmp_path) as cat:
        cat.add_detector(DETECTOR, "AGIPD", 2)
        rec = cat.add_constant(DETECTOR, 1, "Offset", np.arange(4), Conditions(), T0, store="db")
        found = cat.find_constant(DETECTOR, 1, "Offset", Conditions(memory_cells=4))
        np.testing.assert_array_equal(cat.load_array(found), np.arange(4))
        assert found == rec


def _use_inherited(catalog, queue):
    try:
        rec = catalog.find_constant(DETECTOR, 0, "Offset", Conditions())
        queue.put(("ok", catalog.load_array(rec).tolist()))
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(("error", repr(exc)))


def test_catalogue_survives_fork(catalog, dark_conditions):
    """A Catalog inherited by a forked child opens its own connections and keeps working."""
    catalog.add_detector(DETECTOR, "AGIPD", 1)
    catalog.add_constant(DETECTOR, 0, "Offset", np.arange(3.0), dark_conditions, T0)
    catalog.find_constant(DETECTOR, 0, "Offset", Conditions())  # parent has a pooled connection
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_use_inherited, args=(catalog, queue))
    child.start()
    result = queue.get(timeout=60)
    child.join(60)
    assert result == ("ok", [0.0, 1.0, 2.0])
    # and the parent's connections are still fine
    assert catalog.find_constant(DETECTOR, 0, "Offset", Conditions()).module == 0
