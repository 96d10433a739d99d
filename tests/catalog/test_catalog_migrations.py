"""Alembic migrations: fresh creation, upgrade of existing data, downgrade, model consistency."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from _catalog_helpers import DETECTOR, T0
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, select, text
from sqlalchemy.pool import NullPool

from pulsetrain.catalog import Catalog, CatalogError, Conditions, migrate
from pulsetrain.catalog.models import Base
from pulsetrain.catalog.storage import array_checksum, array_to_npy


@pytest.fixture
def engine(catalog_url):
    eng = create_engine(catalog_url, poolclass=NullPool)
    yield eng
    eng.dispose()


def test_packaged_revisions():
    script = ScriptDirectory.from_config(migrate.alembic_config())
    revisions = [s.revision for s in reversed(list(script.walk_revisions()))]
    assert revisions == ["0001", "0002", "0003"]
    assert migrate.head_revision() == "0003"
    assert (migrate.MIGRATIONS_DIR / "script.py.mako").is_file()


def test_fresh_catalogue_is_at_head(catalog, engine):
    assert catalog.revision == migrate.head_revision()
    assert migrate.current_revision(engine) == "0003"


def test_models_match_migrations(catalog, engine):
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def fill_revision_0001(engine, tmp_path):
    """Insert a detector, a DB-stored constant, runs and links with the 0001 schema."""
    array = np.arange(24, dtype="f4").reshape(2, 3, 4)
    meta = MetaData()
    meta.reflect(engine)
    t = meta.tables
    assert "comment" not in t["constants"].c
    with engine.begin() as c:
        det_id = c.execute(
            t["detectors"]
            .insert()
            .values(name=DETECTOR, detector_type="AGIPD", n_modules=2, created=T0)
        ).inserted_primary_key[0]
        for index in (0, 1):
            c.execute(
                t["modules"]
                .insert()
                .values(detector_id=det_id, module_index=index, physical_name=f"M{index}")
            )
        module_id = c.execute(
            select(t["modules"].c.id).where(t["modules"].c.module_index == 1)
        ).scalar_one()
        raw_id = c.execute(
            t["runs"]
            .insert()
            .values(
                proposal=900001,
                run_number=1,
                run_type="dark",
                data_category="RAW",
                path=str(tmp_path / "r0001"),
                n_trains=10,
                created=T0,
            )
        ).inserted_primary_key[0]
        corr_id = c.execute(
            t["runs"]
            .insert()
            .values(
                proposal=900001,
                run_number=2,
                run_type="corr",
                data_category="CORR",
                path=str(tmp_path / "r0002"),
                created=T0,
            )
        ).inserted_primary_key[0]
        c.execute(t["run_files"].insert().values(run_id=raw_id, name="RAW-R0001-A.h5", size=42))
        const_id = c.execute(
            t["constants"]
            .insert()
            .values(
                module_id=module_id,
                constant_type="Offset",
                memory_cells=352,
                bias_voltage=300.0,
                valid_from=T0,
                created=T0,
                storage="db",
                data=array_to_npy(array),
                checksum=array_checksum(array),
                shape="[2, 3, 4]",
                dtype="<f4",
                nbytes=array.nbytes,
            )
        ).inserted_primary_key[0]
        c.execute(t["constant_sources"].insert().values(constant_id=const_id, run_id=raw_id))
        c.execute(t["run_constants"].insert().values(constant_id=const_id, run_id=corr_id))
    return array, const_id, raw_id, corr_id


def test_upgrade_existing_database_keeps_data(catalog_url, engine, tmp_path):
    migrate.upgrade(engine, "0001")
    assert migrate.current_revision(engine) == "0001"
    array, const_id, raw_id, corr_id = fill_revision_0001(engine, tmp_path)

    old = Catalog(catalog_url, store_dir=tmp_path / "store", upgrade=False)
    assert old.revision == "0001"
    old.close()

    cat = Catalog(catalog_url, store_dir=tmp_path / "store")  # upgrades on open
    assert cat.revision == "0003"
    rec = cat.find_constant(
        DETECTOR,
        "M1",
        "Offset",
        Conditions(memory_cells=352, bias_voltage=302),
        at=T0 + timedelta(days=1),
    )
    assert rec.id == const_id and rec.comment is None and rec.source_runs == (raw_id,)
    np.testing.assert_array_equal(cat.load_array(rec), array)
    assert [c.id for c in cat.constants_of_run(corr_id)] == [const_id]
    assert cat.get_run(raw_id).files[0].size == 42
    assert cat.get_run(corr_id).corrections == ()  # runs from before 0003: none recorded
    new = cat.add_constant(DETECTOR, 0, "Noise", array, Conditions(), T0, comment="after upgrade")
    assert cat.get_constant(new.id).comment == "after upgrade"
    cat.close()

    # and back down: 0003 -> 0001 keeps rows and links (SQLite rebuilds the table for this)
    migrate.downgrade(engine, "0001")
    assert migrate.current_revision(engine) == "0001"
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM constants")).scalar_one() == 2
        assert c.execute(text("SELECT count(*) FROM run_constants")).scalar_one() == 1
        assert c.execute(text("SELECT count(*) FROM constant_sources")).scalar_one() == 1
    again = Catalog(catalog_url, store_dir=tmp_path / "store")
    assert again.revision == "0003"
    assert [c.id for c in again.constants_of_run(corr_id)] == [const_id]
    again.close()
    migrate.downgrade(engine, "base")
    assert migrate.current_revision(engine) is None
    meta = MetaData()
    meta.reflect(engine)
    assert set(meta.tables) <= {"alembic_version"}


def test_unknown_revision_is_refused(catalog, engine, catalog_url, tmp_path):
    with engine.begin() as c:
        c.execute(text("UPDATE alembic_version SET version_num = 'f00dcafe'"))
    with pytest.raises(
        CatalogError, match="revision f00dcafe, which this pulsetrain does not know"
    ):
        Catalog(catalog_url, store_dir=tmp_path / "store")
