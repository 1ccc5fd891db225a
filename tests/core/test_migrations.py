"""The migrations build the schema the models describe, on the real PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine, make_url, pool, text

import migrations
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


def _config(url: str) -> Config:
    """The shipped migrations, on `url` (as `docingest migrate` runs them)."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser
    return config


@contextmanager
def scratch_database(stack: Stack) -> Iterator[str]:
    """A new, empty database on the session's PostgreSQL server: its URL."""
    assert stack.settings.database_url is not None
    url = make_url(stack.settings.database_url)
    name = f"migrate_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        host=str(url.query["host"]), user=url.username, dbname="postgres"
    ) as admin:
        admin.autocommit = True
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def _documents(url: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return list(
                connection.execute(
                    text(
                        "SELECT filename, status, embedding_precision, embedding_model "
                        "FROM documents ORDER BY filename"
                    )
                )
            )
    finally:
        engine.dispose()


def test_migration_0007_keeps_documents_stored_before_it_as_of_unknown_embedding(
    stack: Stack,
) -> None:
    """A database at 0006 that holds documents upgrades in place: they are all kept, their
    embedding unknown (null), and a document stored after says its own; a downgrade drops
    the two columns and keeps the rows."""
    with scratch_database(stack) as url:
        command.upgrade(_config(url), "0006")
        engine = create_engine(url, poolclass=pool.NullPool)
        with engine.begin() as connection:
            owner = connection.scalar(text("INSERT INTO owners (name) VALUES ('o') RETURNING id"))
            agent = connection.scalar(
                text("INSERT INTO agents (owner_id, name) VALUES (:o, 'a') RETURNING id"),
                {"o": owner},
            )
            for filename, status in (("old.txt", "complete"), ("cut.pdf", "failed")):
                connection.execute(
                    text(
                        "INSERT INTO documents (owner_id, agent_id, task_id, filename, "
                        "content_type, size_bytes, sha256, chunk_count, status) VALUES "
                        "(:o, :a, :t, :f, 'text/plain', 1, :s, 1, :st)"
                    ),
                    {
                        "o": owner,
                        "a": agent,
                        "t": filename,
                        "f": filename,
                        "s": filename,
                        "st": status,
                    },
                )
        command.upgrade(_config(url), "head")
        assert _documents(url) == [
            ("cut.pdf", "failed", None, None),
            ("old.txt", "complete", None, None),
        ]
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO documents (owner_id, agent_id, task_id, filename, content_type, "
                    "size_bytes, sha256, chunk_count, status, embedding_precision, "
                    "embedding_model) VALUES (:o, :a, 'new', 'new.txt', 'text/plain', 1, 'n', 1, "
                    "'complete', 'int8', 'all-MiniLM-L6-v2')"
                ),
                {"o": owner, "a": agent},
            )
        assert _documents(url)[1] == ("new.txt", "complete", "int8", "all-MiniLM-L6-v2")

        command.downgrade(_config(url), "0006")
        with engine.connect() as connection:
            columns = set(
                connection.scalars(
                    text(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_name = 'documents'"
                    )
                )
            )
            kept = connection.scalar(text("SELECT count(*) FROM documents"))
        engine.dispose()
        assert not {"embedding_precision", "embedding_model"} & columns
        assert kept == 3
