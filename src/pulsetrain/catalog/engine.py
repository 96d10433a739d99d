"""Where a catalogue lives and how to reach it: URL, engine, sessions, schema upgrade.

:class:`Database` is the one object the other catalogue modules (``detectors``,
``constants``, ``explain``, ``runs``) work through; :class:`~pulsetrain.catalog.Catalog`
owns one.  SQLite catalogues run in WAL mode, so many processes can read while one writes.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from pulsetrain.catalog.migrate import current_revision
from pulsetrain.catalog.migrate import upgrade as upgrade_schema
from pulsetrain.errors import CatalogError, ConfigurationError

log = logging.getLogger(__name__)

__all__ = [
    "CATALOG_ENV",
    "STORE_ENV",
    "Database",
    "default_catalog_path",
    "resolve_url",
]

#: Environment variable naming the default catalogue (a URL or a SQLite file path).
CATALOG_ENV = "PULSETRAIN_CATALOG"
#: Environment variable naming the default store directory of constant files.
STORE_ENV = "PULSETRAIN_CATALOG_STORE"


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "pulsetrain"


def default_catalog_path() -> Path:
    """The default SQLite catalogue, ``~/.local/share/pulsetrain/catalog.sqlite``."""
    return _data_home() / "catalog.sqlite"


def resolve_url(url: str | os.PathLike | URL | None = None) -> str:
    """Turn a catalogue location into a SQLAlchemy URL.

    ``url`` may be a SQLAlchemy ``URL``, a URL string, or a path; ``None`` means
    ``$PULSETRAIN_CATALOG`` or else :func:`default_catalog_path`; a string containing ``://``
    is taken as a URL, anything else as the path of a SQLite file.
    """
    if url is None:
        url = os.environ.get(CATALOG_ENV) or default_catalog_path()
    if isinstance(url, URL):
        return url.render_as_string(hide_password=False)
    text = os.fspath(url)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def _enable_wal(cursor: sqlite3.Cursor, timeout: float, database: str) -> None:
    """Switch a SQLite database to WAL mode (persistent; a no-op when it already is).

    Switching needs an exclusive lock and SQLite does not apply the busy timeout to it, so
    processes opening a new catalogue together retry here until one has switched it.
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower()
            if mode != "wal":
                log.warning(
                    "SQLite catalogue %s cannot use WAL mode (journal mode %s): concurrent "
                    "readers may wait for writers",
                    database,
                    mode,
                )
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _is_in_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in database


def _sqlite_engine(url: URL, busy_timeout: float, echo: bool) -> Engine:
    database = url.database or ""
    in_memory = _is_in_memory(url)
    if in_memory:
        engine = create_engine(
            url, echo=echo, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": busy_timeout})

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record):  # pragma: no branch
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        if not in_memory:
            _enable_wal(cursor, busy_timeout, database)
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _server_engine(url: URL, echo: bool) -> Engine:
    try:
        return create_engine(url, echo=echo, pool_pre_ping=True)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        raise CatalogError(
            f"no database driver for {url.render_as_string(hide_password=True)}: {exc}; for "
            "PostgreSQL install 'psycopg[binary]' (pip install 'pulsetrain[postgres]') and use "
            "a postgresql+psycopg:// URL"
        ) from exc


class Database:
    """The database of one catalogue: its URL, engine, sessions and constant store directory.

    Parameters
    ----------
    url
        Anything :func:`resolve_url` accepts.
    store_dir
        Directory of constant files; default ``$PULSETRAIN_CATALOG_STORE``, else
        ``<name>-constants/`` next to a SQLite file, else ``~/.local/share/pulsetrain/constants``.
    busy_timeout
        SQLite only: seconds to wait for another process's write lock.
    echo
        Log every SQL statement.

    Notes
    -----
    The engine belongs to the process that made it: in a forked child :attr:`engine` replaces
    the inherited connections before first use.
    """

    def __init__(
        self,
        url: str | os.PathLike | URL | None = None,
        *,
        store_dir: str | os.PathLike | None = None,
        busy_timeout: float = 30.0,
        echo: bool = False,
    ) -> None:
        text = resolve_url(url)
        try:
            self._url = make_url(text)
        except ArgumentError as exc:
            raise ConfigurationError(f"not a database URL or path: {text!r} ({exc})") from exc
        if self.is_sqlite:
            self._engine = _sqlite_engine(self._url, busy_timeout, echo)
        else:
            self._engine = _server_engine(self._url, echo)
        self._pid = os.getpid()
        self.store_dir = self._choose_store_dir(store_dir)

    def _choose_store_dir(self, store_dir: str | os.PathLike | None) -> Path:
        if store_dir is not None:
            return Path(store_dir).expanduser().resolve()
        if os.environ.get(STORE_ENV):
            return Path(os.environ[STORE_ENV]).expanduser().resolve()
        if self.is_sqlite and not _is_in_memory(self._url):
            path = Path(self._url.database or "")
            return path.with_name(f"{path.stem}-constants")
        return _data_home() / "constants"

    @property
    def url(self) -> str:
        """The database URL, with any password hidden."""
        return self._url.render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        """Whether the catalogue is a SQLite database."""
        return self._url.get_backend_name() == "sqlite"

    @property
    def engine(self) -> Engine:
        """The engine of this process (a forked child gets fresh connections)."""
        if os.getpid() != self._pid:
            # Inherited through fork: never reuse the parent's connections.
            self._engine.dispose(close=False)
            self._pid = os.getpid()
        return self._engine

    def session(self) -> Session:
        """A new ORM session; use it in a ``with`` block."""
        return Session(self.engine, expire_on_commit=False)

    def upgrade(self) -> None:
        """Bring the schema to the newest revision; on failure the connections are closed."""
        try:
            upgrade_schema(self._engine)
        except OperationalError as exc:
            self._engine.dispose()
            raise CatalogError(f"cannot open the catalogue at {self.url}: {exc.orig}") from exc
        except BaseException:
            self._engine.dispose()
            raise

    @property
    def revision(self) -> str | None:
        """Schema revision of the database (Alembic)."""
        return current_revision(self.engine)

    def close(self) -> None:
        """Close all database connections."""
        self._engine.dispose()
