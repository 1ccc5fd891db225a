"""The one definition of "already stored": a complete document with the same bytes (sha256)
for the same agent, whose task has ended. The upload answers such a copy at once; the store
step settles on it when two identical uploads raced past that check.

A copy whose task still runs is not settled yet: its store committed, but a cancel that came
while it stored still ends that task `cancelled` and deletes the copy's chunks (workflows/
ingest.py). An upload answered with it then (the same file sent twice at once, one of the two
cancelled) would say `complete` with nothing stored."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from core.models import Document
from workflows.types import Status, chunking_of

DESCRIBE_TIMEOUT = timedelta(seconds=5)


@dataclass(frozen=True)
class StoredCopy:
    document_id: uuid.UUID
    task_id: str
    chunk_count: int
    filename: str
    chunking: tuple[int, int] | None  # chunk_size, chunk_overlap; None: unknown (older row)


async def stored_copy(
    session: AsyncSession | AsyncConnection,
    agent_id: uuid.UUID,
    sha256: str,
    *,
    other_than_task: str | None = None,
) -> StoredCopy | None:
    """The agent's complete document with these bytes (not `other_than_task`'s), if any."""
    query = select(
        Document.id,
        Document.task_id,
        Document.chunk_count,
        Document.filename,
        Document.chunk_size,
        Document.chunk_overlap,
    ).where(
        Document.agent_id == agent_id,
        Document.sha256 == sha256,
        Document.status == Status.COMPLETE,
    )
    if other_than_task is not None:
        query = query.where(Document.task_id != other_than_task)
    found = (await session.execute(query)).first()
    if found is None:
        return None
    chunking = chunking_of(found.chunk_size, found.chunk_overlap)
    return StoredCopy(found.id, found.task_id, found.chunk_count, found.filename, chunking)


async def settled(temporal: Client, copy: StoredCopy) -> bool:
    """Whether the task that stored `copy` has ended (or Temporal's retention forgot it), so
    the copy stays: a running one may still be cancelled, which deletes it."""
    try:
        description = await temporal.get_workflow_handle(copy.task_id).describe(
            rpc_timeout=DESCRIBE_TIMEOUT
        )
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return True
        raise
    return description.status is not WorkflowExecutionStatus.RUNNING
