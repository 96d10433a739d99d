"""Fixtures of the catalogue tests: every catalogue test runs against SQLite, and against
PostgreSQL when ``PULSETRAIN_TEST_PG_URL`` names a server (``eval "$(.ci/postgres.sh)"``).

Each PostgreSQL test gets its own schema (through ``search_path`` in the URL), dropped after
the test, so tests never see each other's tables.
"""

from __future__ import annotations

import os
import uuid

import pytest
from _catalog_helpers import DETECTOR
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from pulsetrain.catalog import Catalog, Conditions

PG_ENV = "PULSETRAIN_TEST_PG_URL"
SKIP_PG = (
    f"PostgreSQL catalogue tests need {PG_ENV}; start a local server with "
    "'eval \"$(.ci/postgres.sh)\"'"
)


def fresh_pg_schema_url(base: str) -> tuple[str, str]:
    """Create a new schema and return (URL using it, schema name)."""
    schema = f"pt_{uuid.uuid4().hex[:12]}"
    engine = create_engine(base, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), schema


def drop_pg_schema(base: str, schema: str) -> None:
    engine = create_engine(base, poolclass=NullPool)
    with engine.begin() as connection:
        connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog_url(request, tmp_path):
    """URL of an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(SKIP_PG)
    url, schema = fresh_pg_schema_url(base)
    yield url
    drop_pg_schema(base, schema)


@pytest.fixture
def store_dir(tmp_path):
    return tmp_path / "store"


@pytest.fixture
def catalog(catalog_url, store_dir):
    """An open, empty catalogue."""
    cat = Catalog(catalog_url, store_dir=store_dir)
    yield cat
    cat.close()


@pytest.fixture
def agipd(catalog):
    """The catalogue with a 16-module AGIPD registered."""
    catalog.add_detector(DETECTOR, "AGIPD", 16, module_names={3: "AGIPD_SIV1_AGIPDV11_M305"})
    return catalog


@pytest.fixture
def dark_conditions():
    return Conditions(
        memory_cells=352,
        bias_voltage=300,
        acquisition_rate=1.1,
        gain_setting=0,
        gain_mode=0,
        integration_time=12,
    )
