"""The one definition of "already stored": a complete document with the same bytes (sha256)
for the same agent. The upload answers such a copy at once; the store step settles on it when
two identical uploads raced past that check."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from core.models import Document
from workflows.types import Status


@dataclass(frozen=True)
class StoredCopy:
    document_id: uuid.UUID
    task_id: str
    chunk_count: int


async def stored_copy(
    session: AsyncSession | AsyncConnection,
    agent_id: uuid.UUID,
    sha256: str,
    *,
    other_than_task: str | None = None,
) -> StoredCopy | None:
    """The agent's complete document with these bytes (not `other_than_task`'s), if any."""
    query = select(Document.id, Document.task_id, Document.chunk_count).where(
        Document.agent_id == agent_id,
        Document.sha256 == sha256,
        Document.status == Status.COMPLETE,
    )
    if other_than_task is not None:
        query = query.where(Document.task_id != other_than_task)
    found = (await session.execute(query)).first()
    if found is None:
        return None
    return StoredCopy(found.id, found.task_id, found.chunk_count)
