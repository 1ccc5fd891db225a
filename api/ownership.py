"""Rows the caller owns, looked up by an id from a path or query string."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

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
    parsed = parse_id(raw_id)
    row = None
    if parsed is not None:
        table: Any = model  # every owned model has `id` and `owner_id` columns
        row = await session.scalar(select(model).where(table.id == parsed, table.owner_id == owner))
    if row is None:
        raise NotFound(f"{label} {raw_id[:100]!r} not found")
    return row


async def owned_agent(session: AsyncSession, owner: uuid.UUID, agent_id: str) -> Agent:
    return await owned_row(session, Agent, owner, agent_id, "Agent")
