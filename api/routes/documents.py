"""Documents: the permanent record of each finished upload, and deleting one with its chunks."""

from __future__ import annotations

import logging
import uuid

import anyio
from fastapi import APIRouter
from sqlalchemy import Row, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionStatus

from api.deps import (
    ChangesTasks,
    OwnerDep,
    ReadsDep,
    SessionDep,
    SessionmakerDep,
    StagingDep,
    TemporalDep,
)
from api.ownership import owned_row, parse_id
from api.schemas import DocumentPublic, ErrorBody, TaskError
from api.task_status import describe_owned
from api.task_turns import TURN_PATIENCE_S, task_busy, task_turn
from core.errors import Conflict, NotFound, ServiceUnavailable
from core.models import Document
from core.staging import StagingStore

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/documents",
    tags=["documents"],
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}},
)


def document_public(document: Document) -> DocumentPublic:
    return DocumentPublic(
        id=document.id,
        agent_id=document.agent_id,
        filename=document.filename,
        content_type=document.content_type,
        size_bytes=document.size_bytes,
        sha256=document.sha256,
        page_count=document.page_count,
        chunk_count=document.chunk_count,
        status=document.status,
        error=TaskError.recorded(document.error_type, document.error_message),
        task_id=document.task_id,
        embedding_precision=document.embedding_precision,
        embedding_model=document.embedding_model,
        chunk_size=document.chunk_size,
        chunk_overlap=document.chunk_overlap,
        created_at=document.created_at,
        updated_at=document.updated_at,
    )


def _not_found(document_id: str) -> NotFound:
    return NotFound(f"Document {document_id[:100]!r} not found")


@router.get("/{document_id}")
async def get_document(document_id: str, owner: OwnerDep, session: SessionDep) -> DocumentPublic:
    """One of the caller's documents: file, counts, status and the task that made it."""
    return document_public(await owned_row(session, Document, owner, document_id, "Document"))


@router.delete(
    "/{document_id}",
    status_code=204,
    dependencies=[ChangesTasks],
    responses={409: {"model": ErrorBody}},
)
async def delete_document(
    document_id: str,
    owner: OwnerDep,
    sessionmaker: SessionmakerDep,
    reads: ReadsDep,
    temporal: TemporalDep,
    staging: StagingDep,
) -> None:
    """Delete one of the caller's documents, its chunks and its staged upload; 409 while its
    task runs."""
    parsed = parse_id(document_id)
    found = None if parsed is None else await _its_task(sessionmaker, owner, parsed)
    if parsed is None or found is None:
        raise _not_found(document_id)
    # A retry of the task takes the same turn: one that checked the staged upload before this
    # delete and started its run after it wrote the row back.
    async with task_turn(reads, found.task_id, TURN_PATIENCE_S, task_busy(found.task_id)) as turn:
        await _refuse_while_its_task_runs(temporal, owner, parsed, found.task_id, found.filename)
        # On the turn's connection (one per request: two, under a burst of deletes, took the
        # whole pool and waited on each other), which commits each statement: before the 204
        # is sent, so a search made once the caller has the answer never finds the chunks.
        # The chunks go in the same statement (ON DELETE CASCADE).
        deleted = await turn.scalar(
            delete(Document)
            .where(Document.id == parsed, Document.owner_id == owner)
            .returning(Document.task_id)
        )
        if deleted is None:
            raise _not_found(document_id)
        await remove_staged_uploads(staging, [deleted])


async def remove_staged_uploads(staging: StagingStore, task_ids: list[str]) -> None:
    """Remove what the tasks of deleted documents staged. A task that ended `failed` or
    `error` keeps its upload (and its text, chunks and vectors) for a retry: left there, the
    deleted file stayed on disk until the staging sweep (days), and a retry wrote the deleted
    document back. A failure is only logged: the delete stands, and the sweep removes them."""

    def remove_all() -> None:
        for task_id in task_ids:
            try:
                staging.remove_task(task_id)
            except OSError:  # the others are still removed
                log.warning("could not remove the staged upload of %s", task_id, exc_info=True)

    await anyio.to_thread.run_sync(remove_all)


async def _its_task(
    sessionmaker: async_sessionmaker[AsyncSession], owner: uuid.UUID, document_id: uuid.UUID
) -> Row[str, str] | None:
    """The task id and file name of the caller's document; None when there is no such one."""
    async with sessionmaker() as session:
        return (
            await session.execute(
                select(Document.task_id, Document.filename).where(
                    Document.id == document_id, Document.owner_id == owner
                )
            )
        ).first()


async def _refuse_while_its_task_runs(
    temporal: Client, owner: uuid.UUID, document_id: uuid.UUID, task_id: str, filename: str
) -> None:
    """409 when the document's task runs again (a retry): its store or its outcome would write
    the row back, and the delete would be undone. With Temporal out of reach the delete goes
    ahead (a retry running at that moment is rare; the delete should not wait for Temporal)."""
    try:
        found = await describe_owned(temporal, owner, task_id)
    except ServiceUnavailable:
        log.warning("could not ask Temporal whether task %s runs", task_id, exc_info=True)
        return
    if found is None:
        return
    description, _ = found
    if description.status is WorkflowExecutionStatus.RUNNING:
        raise Conflict(
            f"Document {document_id} ({filename}) is still being processed by task "
            f"{task_id}; cancel the task (POST /upload/{task_id}/cancel) or wait for it "
            "to end, then delete the document"
        )
