"""Alembic environment of the pulsetrain catalogue.

Used in two ways: programmatically by :func:`pulsetrain.catalog.migrate.upgrade`, which hands
over an open connection in ``config.attributes["connection"]``; or by the ``alembic`` command
line with ``alembic.ini`` next to this file, where the URL comes from ``-x url=...``.
Logging is never reconfigured here: the application owns it.
"""

from alembic import context
from sqlalchemy import create_engine, pool

from pulsetrain.catalog.models import Base

config = context.config
target_metadata = Base.metadata


def _configure_and_run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    from pulsetrain.catalog.engine import resolve_url

    return resolve_url(context.get_x_argument(as_dictionary=True).get("url"))


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _configure_and_run(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
