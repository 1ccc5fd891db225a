from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from typing import Annotated

from fastapi import APIRouter, Header, Request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from api.deps import (
    ChangesTasks,
    OwnerDep,
    ReadsDep,
    SessionDep,
    SessionmakerDep,
    SettingsDep,
    StagingDep,
    TemporalDep,
)
from api.ingest_start import (
    AgentLookup,
    IngestRequest,
    accept_file,
    chunking,
)
from api.ownership import owned_row
from api.routes.agents import cancel_for_deleted_agent
from api.routes.uploads import (
    BATCH_BODY,
    UPLOAD_ERRORS,
    AgentIdQuery,
    ChunkOverlap,
    ChunkSize,
    discard,
)
from api.schemas import (
    BatchAccepted,
    BatchStatus,
    ErrorBody,
    TaskStatus,
    UploadAccepted,
    UploadRejected,
)
from api.task_status import describe_owned, list_tasks, record_status, render_all, started_now
from api.temporal_errors import temporal_unavailable_as_503
from api.upload_stream import ReceivedFile, kept_fresh, receive_files
from core.db import violates
from core.errors import DocingestError, InvalidRequest, NotFound
from core.models import Document, UploadBatch
from core.staging import ORIGINAL
from core.temporal import BATCH_ID, OWNER_ID
from workflows.types import WORKFLOW_NAME

router = APIRouter(prefix="/upload", tags=["batches"], responses={401: {"model": ErrorBody}})
log = logging.getLogger(__name__)


def _rejected(received: ReceivedFile, error: DocingestError) -> UploadRejected:
    return UploadRejected(
        filename=received.filename,
        status_code=error.status_code,
        code=error.code,
        detail=error.detail,
    )


@router.post(
    "/agent/batch",
    dependencies=[ChangesTasks],
    status_code=202,
    openapi_extra=BATCH_BODY,
    response_model_exclude_none=True,
    responses=UPLOAD_ERRORS,
)
async def upload_batch(
    request: Request,
    owner: OwnerDep,
    settings: SettingsDep,
    sessionmaker: SessionmakerDep,
    reads: ReadsDep,
    staging: StagingDep,
    temporal: TemporalDep,
    agent_id: AgentIdQuery,
    chunk_size: ChunkSize = None,
    chunk_overlap: ChunkOverlap = None,
    # Read only to refuse it: the schema does not offer it (a client sent it, believing it kept).
    idempotency_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> BatchAccepted:
    """Upload several documents (repeated `file` fields); a bad file does not sink the rest."""
    if idempotency_key is not None:
        # Ignored, it let a client that sent the batch again believe nothing ran twice.
        raise InvalidRequest(
            "Idempotency-Key is not supported on a batch upload, whose files each become a "
            "task of their own; send each file to /upload/agent with a key of its own"
        )
    size, overlap = chunking(settings, chunk_size, chunk_overlap)
    batch_id = str(uuid.uuid4())
    received: list[ReceivedFile] = []
    # A long batch: its first files must outlive the staging sweep's orphan grace.
    async with kept_fresh(staging, received, settings.upload_orphan_grace / 4):
        async with AgentLookup(reads, owner, agent_id) as lookup:
            try:
                await lookup.stream(
                    receive_files(
                        request, staging, received,
                        next_target=lambda: (str(uuid.uuid4()), ORIGINAL),
                        max_file_bytes=settings.max_upload_bytes,
                        max_files=settings.max_batch_files,
                        max_request_bytes=settings.max_batch_bytes,
                        batch=True,
                    )
                )  # fmt: skip
                agent = await lookup.agent_id()
            except BaseException:
                await discard(staging, received)
                raise
        ingest = IngestRequest(
            temporal, settings, reads, staging, owner, agent, size, overlap, batch_id=batch_id
        )
        entries = await _accept_all(ingest, received)
    rejected = [entry for entry in entries if isinstance(entry, UploadRejected)]
    duplicates = [
        entry for entry in entries if isinstance(entry, UploadAccepted) and entry.duplicate
    ]
    task_ids = [
        entry.task_id
        for entry in entries
        if isinstance(entry, UploadAccepted) and not entry.duplicate
    ]
    try:
        async with sessionmaker.begin() as session:
            session.add(
                UploadBatch(
                    id=uuid.UUID(batch_id),
                    owner_id=owner,
                    agent_id=agent,
                    files=len(received),
                    rejected=[entry.model_dump() for entry in rejected],
                    duplicates=[entry.model_dump() for entry in duplicates],
                    task_ids=task_ids,
                )
            )
    except IntegrityError as exc:
        if not violates(exc, "fk"):
            raise
        # The agent was deleted while the batch came in, after its tasks were looked up and
        # before they started: its delete could not cancel them. They are cancelled here, as
        # it cancels those it finds, and remove their staged files.
        await cancel_for_deleted_agent(temporal, [(task_id, None) for task_id in task_ids])
        raise NotFound(
            f"Agent {agent} not found: it was deleted while the batch was received"
        ) from exc
    return BatchAccepted(batch_id=batch_id, tasks=list(entries))


Entry = UploadAccepted | UploadRejected


async def _accept_all(ingest: IngestRequest, received: list[ReceivedFile]) -> list[Entry]:
    """Each file's entry, in the order sent. The same bytes sent twice in one batch make one
    task: both ran the whole pipeline (extract, embed) before the second store found the
    first's copy. A later copy is answered as a duplicate of the first one's task; until one
    starts (the first was refused, or the agent had them stored), each is checked as sent."""
    groups: dict[str | int, list[int]] = {}
    for index, item in enumerate(received):
        groups.setdefault(item.sha256 if item.error is None else index, []).append(index)
    entries: list[Entry | None] = [None] * len(received)

    async def accept_group(indexes: list[int]) -> None:
        started: UploadAccepted | None = None
        for index in indexes:
            item = received[index]
            if started is not None:
                await discard(ingest.staging, [item])
                entries[index] = _sent_twice(item, started)
                continue
            entry = await _accept_one(ingest, item)
            if isinstance(entry, UploadAccepted) and not entry.duplicate:
                started = entry
            entries[index] = entry

    await asyncio.gather(*(accept_group(indexes) for indexes in groups.values()))
    return [entry for entry in entries if entry is not None]


def _sent_twice(item: ReceivedFile, first: UploadAccepted) -> UploadAccepted:
    """The entry of a file whose bytes an earlier file of the batch started a task for
    (`first`): a duplicate of that task, whose status it shows (see `batch_status`)."""
    return first.model_copy(
        update={
            "message": (
                f"{item.filename} has the same content as {first.filename}, sent in this "
                f"batch: its task {first.task_id} stores it once; nothing more will be stored"
            ),
            "filename": item.filename,
            "size_bytes": item.size_bytes,
            "duplicate": True,
        }
    )


async def _accept_one(ingest: IngestRequest, item: ReceivedFile) -> Entry:
    try:
        if item.error is not None:
            raise item.error
        return await accept_file(ingest, item)
    except DocingestError as error:
        await discard(ingest.staging, [item])
        return _rejected(item, error)
    except Exception:
        # The other files' tasks start meanwhile: a 500 for the batch left them unanswered.
        log.exception("unexpected error on file %r of batch %s", item.filename, ingest.batch_id)
        await discard(ingest.staging, [item])
        return UploadRejected(
            filename=item.filename,
            status_code=500,
            code="internal_error",
            detail="Internal error; it has been logged",
        )
    except BaseException:
        await discard(ingest.staging, [item])
        raise


@router.get("/batch/{batch_id}", responses={404: {"model": ErrorBody}})
async def batch_status(
    batch_id: str, owner: OwnerDep, temporal: TemporalDep, session: SessionDep
) -> BatchStatus:
    """The tasks of a batch with their statuses, and a count per status."""
    batch = await owned_row(session, UploadBatch, owner, batch_id, "Batch")
    query = (
        f"WorkflowType = '{WORKFLOW_NAME}' AND {BATCH_ID.name} = '{batch.id}' "
        f"AND {OWNER_ID.name} = '{owner}'"
    )
    with temporal_unavailable_as_503("Cannot list the batch's tasks"):
        tasks = await list_tasks(temporal, owner, query, batch.files)
    tasks += await _recorded(session, owner, batch, {task.task_id for task in tasks})
    tasks += await _described(temporal, session, owner, batch, {task.task_id for task in tasks})
    tasks.sort(key=lambda task: task.started_at or "")
    # A file whose start went unconfirmed (batches stored before the outbox of starts kept
    # its task id with its rejection) is a task once its workflow (or its row) turns up.
    listed = {task.task_id for task in tasks}
    rejected = [
        UploadRejected.model_validate(entry)
        for entry in batch.rejected
        if entry.get("task_id") not in listed
    ]
    by_task = {task.task_id: task for task in tasks}
    duplicates = [
        _as_now(UploadAccepted.model_validate(entry), by_task) for entry in batch.duplicates
    ]
    summary: Counter[str] = Counter(str(task.status) for task in tasks)
    if rejected:
        summary["rejected"] = len(rejected)
    if duplicates:
        summary["duplicate"] = len(duplicates)
    return BatchStatus(
        batch_id=str(batch.id),
        agent_id=str(batch.agent_id),
        created_at=batch.created_at,
        files=batch.files,
        tasks=tasks,
        rejected=rejected,
        duplicates=duplicates,
        summary=dict(summary),
    )


def _as_now(duplicate: UploadAccepted, tasks: dict[str, TaskStatus]) -> UploadAccepted:
    """A duplicate as it is now: one of a file sent earlier in the batch follows that file's
    task; one of a copy the agent had stored stays as answered (`complete`)."""
    task = tasks.get(duplicate.task_id)
    if task is None:
        return duplicate
    return duplicate.model_copy(update={"status": task.status, "document_id": task.document_id})


async def _recorded(
    session: AsyncSession, owner: uuid.UUID, batch: UploadBatch, listed: set[str]
) -> list[TaskStatus]:
    """The batch's tasks that Temporal no longer lists (its retention dropped their workflows),
    as their documents rows tell them. A task that wrote no row (it ended as a duplicate of a
    document stored by another task) cannot be told, and is left out."""
    missing = [task_id for task_id in batch.task_ids if task_id not in listed]
    if not missing:
        return []
    documents = await session.scalars(
        select(Document).where(Document.owner_id == owner, Document.task_id.in_(missing))
    )
    return [record_status(document) for document in documents]


async def _described(
    temporal: Client,
    session: AsyncSession,
    owner: uuid.UUID,
    batch: UploadBatch,
    listed: set[str],
) -> list[TaskStatus]:
    """The batch's tasks that visibility does not list yet, as describe() tells them.
    Visibility is eventually consistent: read just after the batch's answer, it missed tasks
    that had started, and the batch listed those files nowhere."""
    missing = [task_id for task_id in batch.task_ids if task_id not in listed]
    found = await asyncio.gather(*(describe_owned(temporal, owner, task_id) for task_id in missing))
    runs = [run for run in found if run is not None]
    queued: list[TaskStatus] = []
    for task_id in (task_id for task_id, run in zip(missing, found, strict=True) if run is None):
        # Acknowledged, and its start still in the outbox: started now.
        started = await started_now(temporal, session, owner, task_id)
        if isinstance(started, TaskStatus):
            queued.append(started)
        elif started is not None:
            runs.append(started)
    return await render_all(temporal, runs) + queued
