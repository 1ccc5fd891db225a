"""Rows the caller owns, looked up by an id from a path or query string."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.errors import NotFound
from core.models import Agent

Row = TypeVar("Row")


def parse_id(value: str) -> uuid.UUID | None:
    """The id in a path, or None when malformed: answered 404 like a missing id, never 422."""
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def owned_row(
    session: AsyncSession, model: type[Row], owner: uuid.UUID, raw_id: str, label: str
) -> Row:
    """The caller's row of `model`; 404 for a malformed id, a missing one, or another owner's."""
    row = await session.scalar(select(model).where(*_mine(model, owner, raw_id, label)))
    if row is None:
        raise _not_found(label, raw_id)
    return row


async def owned_id(
    reads: AsyncEngine, model: type[Any], owner: uuid.UUID, raw_id: str, label: str
) -> uuid.UUID:
    """The id of the caller's row of `model`, in one statement on a connection of its own
    from `reads` (no ORM object, no transaction needed); 404 exactly as `owned_row`, and for
    a malformed id before any connection is taken."""
    table: Any = model
    query = select(table.id).where(*_mine(model, owner, raw_id, label))
    async with reads.connect() as connection:
        found: uuid.UUID | None = await connection.scalar(query)
    if found is None:
        raise _not_found(label, raw_id)
    return found


def _mine(model: type[Any], owner: uuid.UUID, raw_id: str, label: str) -> list[Any]:
    """Where-clauses for the caller's row `raw_id` of `model`; 404 for a malformed id."""
    parsed = parse_id(raw_id)
    if parsed is None:
        raise _not_found(label, raw_id)
    table: Any = model  # every owned model has `id` and `owner_id` columns
    return [table.id == parsed, table.owner_id == owner]


def _not_found(label: str, raw_id: str) -> NotFound:
    return NotFound(f"{label} {raw_id[:100]!r} not found")


async def owned_agent(session: AsyncSession, owner: uuid.UUID, agent_id: str) -> Agent:
    return await owned_row(session, Agent, owner, agent_id, "Agent")
