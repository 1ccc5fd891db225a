"""The migrations build the schema the models describe, on the real PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from core.models import Base
from tests.support import Stack


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_the_migrated_database_matches_the_models(stack: Stack) -> None:
    """A column, index or type added to core/models.py without its migration (or the other way
    round) would work in tests that create nothing and fail on a database migrated in
    production."""
    engine = stack.sessionmaker.kw["bind"]
    async with engine.connect() as connection:
        differences = await connection.run_sync(_differences)
    assert differences == []
