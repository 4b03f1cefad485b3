"""Alembic environment: run migrations on the connection handed over by driftwatch.store.db.

No alembic.ini is needed: :func:`driftwatch.store.db.upgrade` builds the Alembic Config in code
and passes an open connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from driftwatch.store.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None:  # pragma: no cover - only reachable by running alembic by hand
        from sqlalchemy import create_engine

        url = context.config.get_main_option("sqlalchemy.url")
        with create_engine(url).connect() as conn:
            _run(conn)
        return
    _run(connection)


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():  # pragma: no cover
    raise SystemExit("driftwatch migrations run online only")
run_migrations_online()
