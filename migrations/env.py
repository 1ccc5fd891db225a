"""Alembic environment: the URL comes from the config (set by `core.migrate`)."""

from __future__ import annotations

import time

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text

from core.db import connect_args
from core.models import Base

# Concurrent `docingest migrate` runs (several replicas starting at once) take turns.
_MIGRATION_LOCK = 4_242_001
_LOCK_POLL_S = 0.5


def _take_turn(connection: Connection) -> None:
    """Wait for the migration lock outside any transaction: blocked in `pg_advisory_lock`, a
    process holds a snapshot, which the CREATE INDEX CONCURRENTLY of the process it waits for
    (0006) waits for in turn, and PostgreSQL fails one of them as a deadlock."""
    while not connection.scalar(
        text("SELECT pg_try_advisory_lock(:key)"), {"key": _MIGRATION_LOCK}
    ):
        connection.commit()
        time.sleep(_LOCK_POLL_S)
    connection.commit()


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("sqlalchemy.url is not set")
    # Gives up as every other connection does: `docingest migrate` (a deployment's first step)
    # waited without end for a database host that accepted the connection and never answered.
    engine = create_engine(url, poolclass=pool.NullPool, connect_args=connect_args(url))
    with engine.connect() as connection:
        _take_turn(connection)
        try:
            context.configure(connection=connection, target_metadata=Base.metadata)
            with context.begin_transaction():
                context.run_migrations()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK})
            connection.commit()
    engine.dispose()


run_migrations_online()
