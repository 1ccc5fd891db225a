"""Database URLs, the async engine and its sessionmaker."""

from __future__ import annotations

from sqlalchemy import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from core.embedded import embedded_postgres_url
from core.settings import PSYCOPG_DRIVERS, Settings


def resolve_database_url(settings: Settings) -> str:
    """The configured URL, or the embedded PostgreSQL under DOCINGEST_HOME (started if needed)."""
    if settings.database_url:
        return normalize_url(settings.database_url)
    return embedded_postgres_url(settings.resolved_home)


def normalize_url(url: str) -> str:
    """Use the psycopg 3 driver whatever scheme the user wrote."""
    parsed = make_url(url)
    if parsed.drivername in PSYCOPG_DRIVERS:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


# Seconds a new connection may take before it fails (and its step retries): a database host
# that drops packets would otherwise hold a worker's step for the OS's TCP timeout (minutes).
# A `connect_timeout` in the URL wins.
CONNECT_TIMEOUT_S = 10


def connect_args(url: str) -> dict[str, int]:
    """What every connection to `url` is opened with, migrations' included."""
    return (
        {} if "connect_timeout" in make_url(url).query else {"connect_timeout": CONNECT_TIMEOUT_S}
    )


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 10) -> AsyncEngine:
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        connect_args=connect_args(url),
    )


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, for single-statement reads: no BEGIN before and no ROLLBACK after, two
    round trips fewer per read on a hot path (the upload's agent and dedup checks)."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def violates(exc: IntegrityError, kind: str) -> bool:
    """Whether a constraint of this kind (`fk` for foreign keys, `uq` for unique) failed."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return sqlstate == {"fk": "23503", "uq": "23505"}[kind]
