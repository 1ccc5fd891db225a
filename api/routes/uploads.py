from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from api.deps import OwnerDep, SessionDep, SessionmakerDep, SettingsDep, StagingDep, TemporalDep
from api.schemas import ErrorBody, TaskStatus, UploadAccepted
from api.task_status import get_task_status, to_public
from api.temporal_errors import temporal_unavailable_as_503
from api.upload_stream import StagedUpload, receive_upload
from core.errors import InvalidRequest, NotFound, UnsupportedMediaType
from core.formats import DocumentFormat, UnreadableContent, sniff_format
from core.models import Agent, Document
from core.settings import Settings
from core.staging import ORIGINAL, StagingStore
from core.temporal import AGENT_ID, INGEST_STATUS, OWNER_ID, iso_utc
from workflows.ingest import IngestDocument
from workflows.types import MEMO_PROGRESS, IngestTask, Stage, Status, TaskProgress

router = APIRouter(prefix="/upload", tags=["uploads"], responses={401: {"model": ErrorBody}})

_MULTIPART_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


async def find_agent(
    sessionmaker: async_sessionmaker[AsyncSession], owner: uuid.UUID, agent_id: str
) -> Agent:
    """The caller's agent; 404 for a malformed id, a missing one, or another owner's."""
    try:
        parsed = uuid.UUID(agent_id)
    except ValueError:
        parsed = None
    async with sessionmaker() as session:
        agent = None
        if parsed is not None:
            agent = await session.scalar(
                select(Agent).where(Agent.id == parsed, Agent.owner_id == owner)
            )
    if agent is None:
        raise NotFound(f"Agent {agent_id[:100]!r} not found")
    return agent


def chunking(settings: Settings, size: int | None, overlap: int | None) -> tuple[int, int]:
    chosen_size = size if size is not None else settings.chunk_size
    chosen_overlap = (
        overlap if overlap is not None else min(settings.chunk_overlap, chosen_size // 2)
    )
    if chosen_overlap >= chosen_size:
        raise InvalidRequest(
            f"chunk_overlap ({chosen_overlap}) must be smaller than chunk_size ({chosen_size})"
        )
    return chosen_size, chosen_overlap


def _sniff(staging: StagingStore, task_id: str, filename: str) -> DocumentFormat:
    with staging.open_read(task_id, ORIGINAL) as original:
        return sniff_format(original, filename)


async def _start_ingest(
    temporal: Client, settings: Settings, task: IngestTask, owner: uuid.UUID
) -> None:
    queued = TaskProgress(
        task_id=task.task_id,
        filename=task.filename,
        agent_id=task.agent_id,
        status=Status.QUEUED,
        message=f"Queued {task.filename} for processing",
        stage=Stage.QUEUED,
        started_at=iso_utc(datetime.now(UTC)),
        size_bytes=task.size_bytes,
    )
    with temporal_unavailable_as_503("The task queue is unavailable, nothing was stored"):
        await temporal.start_workflow(
            IngestDocument.run,
            task,
            id=task.task_id,
            task_queue=settings.task_queue,
            memo={MEMO_PROGRESS: queued.__dict__},
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(OWNER_ID, str(owner)),
                    SearchAttributePair(AGENT_ID, task.agent_id),
                    SearchAttributePair(INGEST_STATUS, Status.QUEUED),
                ]
            ),
            static_summary=f"{task.filename} → agent {task.agent_id}",
            static_details=(
                f"**{task.filename}** ({task.format}, {task.size_bytes} bytes)\n\n"
                f"agent `{task.agent_id}` · owner `{owner}` · sha256 `{task.sha256[:16]}…`"
            ),
            rpc_timeout=timedelta(seconds=5),
        )


@router.post(
    "/agent",
    status_code=202,
    openapi_extra=_MULTIPART_BODY,
    responses={
        404: {"model": ErrorBody},
        413: {"model": ErrorBody},
        415: {"model": ErrorBody},
        422: {"model": ErrorBody},
        503: {"model": ErrorBody},
    },
)
async def upload_document(
    request: Request,
    owner: OwnerDep,
    settings: SettingsDep,
    sessionmaker: SessionmakerDep,
    staging: StagingDep,
    temporal: TemporalDep,
    agent_id: Annotated[str, Query(max_length=200)],
    chunk_size: Annotated[int | None, Query(ge=100, le=20_000)] = None,
    chunk_overlap: Annotated[int | None, Query(ge=0, le=10_000)] = None,
) -> UploadAccepted:
    """Upload one document for an agent; returns at once with the task id."""
    size, overlap = chunking(settings, chunk_size, chunk_overlap)
    agent = await find_agent(sessionmaker, owner, agent_id)
    task_id = str(uuid.uuid4())
    try:
        staged = await receive_upload(request, staging, task_id, settings.max_upload_bytes)
        fmt = await _sniff_or_reject(staging, task_id, staged)
        task = _ingest_task(settings, owner, agent, task_id, staged, fmt, size, overlap)
        await _start_ingest(temporal, settings, task, owner)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(staging.remove_task, task_id)
        raise
    return UploadAccepted(
        filename=staged.filename,
        agent_id=str(agent.id),
        task_id=task_id,
        size_bytes=staged.size_bytes,
    )


async def _sniff_or_reject(
    staging: StagingStore, task_id: str, staged: StagedUpload
) -> DocumentFormat:
    try:
        return await anyio.to_thread.run_sync(_sniff, staging, task_id, staged.filename)
    except UnreadableContent as exc:
        raise UnsupportedMediaType(
            f"{staged.filename} cannot be ingested: {exc}. "
            "Supported: PDF, DOCX, HTML, Markdown and plain text."
        ) from exc


def _ingest_task(
    settings: Settings,
    owner: uuid.UUID,
    agent: Agent,
    task_id: str,
    staged: StagedUpload,
    fmt: DocumentFormat,
    size: int,
    overlap: int,
) -> IngestTask:
    return IngestTask(
        task_id=task_id,
        owner_id=str(owner),
        agent_id=str(agent.id),
        filename=staged.filename,
        format=fmt.value,
        size_bytes=staged.size_bytes,
        sha256=staged.sha256,
        chunk_size=size,
        chunk_overlap=overlap,
        embed_task_queue=settings.embed_task_queue,
        embed_activity_chunks=settings.embed_activity_chunks,
        embed_window=settings.embed_window,
    )


@router.get("/status/{task_id}", responses={404: {"model": ErrorBody}})
async def upload_status(
    task_id: str, owner: OwnerDep, temporal: TemporalDep, session: SessionDep
) -> TaskStatus:
    """The status of one upload task, answered from its workflow."""
    status = await get_task_status(temporal, owner, task_id)
    if status is None:
        status = await _status_from_record(session, owner, task_id)
    if status is None:
        raise NotFound(f"Task {task_id[:100]!r} not found")
    return status


async def _status_from_record(
    session: AsyncSession, owner: uuid.UUID, task_id: str
) -> TaskStatus | None:
    """After Temporal's retention removed the workflow, the document row still answers."""
    document = await session.scalar(
        select(Document).where(Document.task_id == task_id, Document.owner_id == owner)
    )
    if document is None:
        return None
    complete = document.status == Status.COMPLETE
    message = (
        f"Successfully processed {document.filename}"
        if complete
        else f"Processing {document.filename} ended {document.status}: {document.error_message}"
    )
    return to_public(
        TaskProgress(
            task_id=task_id,
            filename=document.filename,
            agent_id=str(document.agent_id),
            status=document.status,
            message=message,
            stage=Stage.DONE if complete else Stage.QUEUED,
            started_at=iso_utc(document.created_at),
            completed_at=iso_utc(document.updated_at),
            document_id=str(document.id) if complete else None,
            chunks_total=document.chunk_count,
            chunks_embedded=document.chunk_count,
            error_type=document.error_type,
            error_message=document.error_message,
        )
    )
