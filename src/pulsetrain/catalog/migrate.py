"""Schema migrations of the catalogue with Alembic, run programmatically.

The migration scripts ship inside the package (``pulsetrain/catalog/migrations``).  Opening a
:class:`~pulsetrain.catalog.Catalog` calls :func:`upgrade`, which brings any database to the
newest revision.  Several processes may open a new catalogue at once: the first takes a lock
(a PostgreSQL advisory lock, or an ``flock`` on a file next to a SQLite database), upgrades, and
the others find the schema current once they get the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, inspect, text

from pulsetrain.errors import CatalogError

log = logging.getLogger(__name__)

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "upgrade",
]

#: Directory of the packaged Alembic environment and its ``versions`` folder.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

# Any fixed 64-bit number; identifies the catalogue's migration lock among advisory locks.
_PG_LOCK_KEY = 0x70756C7365  # "pulse"
_VERSION_TABLE = "alembic_version"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for the packaged migrations (optionally bound to a connection)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision this version of pulsetrain knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(_VERSION_TABLE):
            return None
        versions = connection.execute(text(f"SELECT version_num FROM {_VERSION_TABLE}")).scalars()
        heads = sorted(versions)
    if len(heads) > 1:
        raise CatalogError(f"the catalogue has several schema heads {heads}; it needs repair")
    return heads[0] if heads else None


def _known_revisions() -> set[str]:
    return {
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    }


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".migrate-lock")
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    dialect = engine.dialect.name
    lock = _sqlite_file_lock(engine) if dialect == "sqlite" else contextlib.nullcontext()
    with lock, engine.connect() as connection:
        if dialect == "sqlite":
            # Table rebuilds must not cascade deletes; the pragma only works outside a transaction.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                if dialect == "sqlite":
                    # pysqlite would run DDL outside any transaction; take the write lock now so
                    # the whole migration is one atomic transaction.
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                elif dialect == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY}
                    )
                before = MigrationContext.configure(connection).get_current_revision()
                if before is not None and before not in _known_revisions():
                    raise CatalogError(
                        f"the catalogue at {engine.url.render_as_string(hide_password=True)} is at "
                        f"schema revision {before}, which this pulsetrain does not know (newest "
                        f"known: {head_revision()}); upgrade pulsetrain"
                    )
                config = alembic_config(connection)
                if down:
                    command.downgrade(config, revision)
                else:
                    command.upgrade(config, revision)
                after = MigrationContext.configure(connection).get_current_revision()
            if before != after:
                log.info("catalogue schema migrated from %s to %s", before, after)
        except CommandError as exc:
            raise CatalogError(f"catalogue schema migration failed: {exc}") from exc
        finally:
            if dialect == "sqlite":
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database schema to ``revision`` (default: the newest).

    Cheap when the schema is already current: one read of the version table, no lock.
    """
    if revision == "head":
        try:
            if current_revision(engine) == head_revision():
                return
        except Exception:
            log.debug("could not read the catalogue revision without a lock", exc_info=True)
    _migrate(engine, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade the database schema to ``revision`` (``"base"`` drops every table)."""
    _migrate(engine, revision, down=True)
