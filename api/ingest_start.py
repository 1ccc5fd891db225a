"""From a staged file to a started workflow: sniff, dedup, start; shared by every upload route."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from temporalio.client import Client
from temporalio.common import (
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.ownership import owned_id
from api.schemas import UploadAccepted
from api.task_starts import QueuedStart, is_refusal, queue_start, start_error
from api.temporal_errors import temporal_unavailable_as_503
from api.upload_stream import ReceivedFile, made_durable
from api.workflow_start import START_TIMEOUT, start_workflow
from core.dedup import StoredCopy, settled, stored_copy
from core.errors import InvalidRequest, ServiceUnavailable, UnsupportedMediaType
from core.formats import DocumentFormat, UnreadableContent, is_zip, sniff_format, sniff_head
from core.models import Agent
from core.settings import Settings
from core.staging import StagingStore
from core.temporal import iso_utc
from workflows.types import (
    IngestTask,
    already_stored,
    task_from_memo,
)


class AlreadyStarted(Exception):
    """A workflow with this task id exists already (a repeated idempotency key)."""


class StartUnconfirmed(ServiceUnavailable):
    """Temporal answered neither start of a task: its workflow may exist. The staged file
    stays for the staging sweep to judge (kept while a workflow of the task exists, removed
    past the orphan grace when none does), so a task that did start still finds it."""


async def find_agent(reads: AsyncEngine, owner: uuid.UUID, agent_id: str) -> uuid.UUID:
    """The id of the caller's agent `agent_id`; 404 for a malformed, missing or foreign one.
    One statement on a connection of its own (an upload may stream for long)."""
    return await owned_id(reads, Agent, owner, agent_id, "Agent")


class AgentLookup:
    """The caller's agent, looked up while the upload body streams rather than before it.

    Under load every await of a request waits its turn on the event loop, so a lookup ahead of
    the stream added its whole latency to each acknowledgment. Errors keep their precedence
    (see `stream`), as when the lookup ran first. Leaving the block cancels a lookup nobody
    awaited.
    """

    def __init__(self, reads: AsyncEngine, owner: uuid.UUID, agent_id: str) -> None:
        self._query = (reads, owner, agent_id)
        self._task: asyncio.Future[uuid.UUID] | None = None

    async def __aenter__(self) -> AgentLookup:
        self._task = asyncio.ensure_future(find_agent(*self._query))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task = self._started()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task

    def _started(self) -> asyncio.Future[uuid.UUID]:
        if self._task is None:
            raise RuntimeError("use AgentLookup in `async with`")
        return self._task

    async def agent_id(self) -> uuid.UUID:
        return await self._started()

    async def stream(self, receiving: Coroutine[Any, Any, None]) -> None:
        """Receive the body while the lookup runs; the lookup's error stops it and comes first.

        A missing agent cancels the body's reception at once (a client sending a large file,
        or a stalled one, gets its 404 without sending the rest); a body error waits for the
        lookup, so a missing agent is still what the client hears.
        """
        lookup = self._started()
        receiver = asyncio.ensure_future(receiving)
        both: set[asyncio.Future[Any]] = {receiver, lookup}
        try:
            await asyncio.wait(both, return_when=asyncio.FIRST_COMPLETED)
            if not receiver.done() and _failed(lookup):
                receiver.cancel()
            with contextlib.suppress(Exception):
                await asyncio.shield(lookup)
            await asyncio.wait({receiver})
        finally:
            if not receiver.done():  # the request itself was cancelled (client gone)
                receiver.cancel()
                await asyncio.wait({receiver})
        if _failed(lookup):
            with contextlib.suppress(BaseException):
                receiver.result()
            lookup.result()
        receiver.result()


def _unanswered(exc: ServiceUnavailable) -> bool:
    """Whether a failed start got no answer (Temporal unreachable, or silent past the start's
    deadlines), as against a refusal."""
    return isinstance(exc, StartUnconfirmed) or not is_refusal(exc.__cause__)


def _failed(task: asyncio.Future[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


def chunking(settings: Settings, size: int | None, overlap: int | None) -> tuple[int, int]:
    """Chunk size and overlap of an upload; the overlap is at most half the size.

    Each chunk starts about `chunk_overlap` characters before the end of the one before, and
    at least a word after its start: an overlap near the size makes about a chunk per word,
    each nearly `chunk_size` long, and the document fails past its chunk limit.
    """
    chosen_size = size if size is not None else settings.chunk_size
    default_overlap = min(settings.chunk_overlap, chosen_size // 2)
    chosen_overlap = overlap if overlap is not None else default_overlap
    if chosen_overlap > chosen_size // 2:
        raise InvalidRequest(
            f"chunk_overlap ({chosen_overlap}) must be at most half of chunk_size "
            f"({chosen_size}), so at most {chosen_size // 2}"
        )
    return chosen_size, chosen_overlap


@dataclasses.dataclass
class IngestRequest:
    """What every file of one upload request shares."""

    temporal: Client
    settings: Settings
    reads: AsyncEngine | AsyncConnection  # a connection: an Idempotency-Key's turn (its lock)
    staging: StagingStore
    owner: uuid.UUID
    agent_id: uuid.UUID
    chunk_size: int
    chunk_overlap: int
    batch_id: str | None = None
    idempotent: bool = False


async def accept_file(request: IngestRequest, received: ReceivedFile) -> UploadAccepted:
    """Sniff the upload, answer a duplicate from the database, or start its workflow."""
    fmt = await _sniff(request.staging, received)
    duplicate = await _stored_copy(request, received.sha256)
    if duplicate is not None:
        await anyio.to_thread.run_sync(request.staging.remove, received.task_id, received.original)
        message = already_stored(
            received.filename, duplicate.filename, str(duplicate.document_id),
            duplicate.chunking, (request.chunk_size, request.chunk_overlap),
        )  # fmt: skip
        return UploadAccepted(
            message=message,
            filename=received.filename,
            agent_id=str(request.agent_id),
            task_id=duplicate.task_id,
            status="complete",
            size_bytes=received.size_bytes,
            duplicate=True,
            document_id=str(duplicate.document_id),
        )
    task = _ingest_task(request, received, fmt)
    try:
        await start_ingest(
            request.temporal, request.settings, task, request.owner, request.idempotent
        )
    except ServiceUnavailable as exc:
        if request.idempotent or not _unanswered(exc):
            raise  # a refusal is heard; an Idempotency-Key's repeats need its workflow
        # Temporal did not answer: the upload is kept (api/task_starts.py), its file on the
        # disk before its start is recorded.
        await made_durable(received)
        queued = QueuedStart(task, request.owner, request.settings.task_queue, datetime.now(UTC))
        with anyio.CancelScope(shield=True):  # committed, or the staged file is discarded
            await queue_start(request.reads, queued, start_error(exc.__cause__ or exc))
    else:
        await made_durable(received)
    return UploadAccepted(
        filename=task.filename, agent_id=task.agent_id, task_id=task.task_id,
        size_bytes=task.size_bytes,
    )  # fmt: skip


async def _sniff(staging: StagingStore, received: ReceivedFile) -> DocumentFormat:
    """From the head kept while streaming; only a ZIP archive is read back from staging.

    Under load a hop to a thread and back waited ~50 ms at the median (measured in figure 3),
    as long as the dedup query it ran beside; the head is already in memory."""
    if received.size_bytes == 0:
        # Nothing was sent (a file attached by mistake, or not yet saved): no format is at
        # fault, and a 415 "Supported: PDF, DOCX, ..." sent the user looking for one.
        raise InvalidRequest(
            f"{received.filename} is empty (0 bytes): there is nothing to ingest; "
            "check that the right file was attached"
        )

    def sniff_staged() -> DocumentFormat:
        with staging.open_read(received.task_id, received.original) as original:
            return sniff_format(original, received.filename)

    try:
        if not is_zip(received.head):
            return sniff_head(received.head, received.filename)
        return await anyio.to_thread.run_sync(sniff_staged)
    except UnreadableContent as exc:
        raise UnsupportedMediaType(
            f"{received.filename} cannot be ingested: {exc}. "
            "Supported: PDF, DOCX, HTML, Markdown and plain text."
        ) from exc


async def _stored_copy(request: IngestRequest, sha256: str) -> StoredCopy | None:
    """The agent's stored copy of these bytes, once its task ended: while that task runs, its
    cancel may still delete the copy, so the upload starts a task of its own (whose store
    joins the copy, or stores its own, once the other task ended)."""
    async with AsyncSession(request.reads) as session:  # an engine's, or the turn's connection
        found = await stored_copy(session, request.agent_id, sha256)
    if found is None:
        return None
    with temporal_unavailable_as_503("The task queue is unavailable, nothing was stored"):
        return found if await settled(request.temporal, found) else None


def _ingest_task(request: IngestRequest, received: ReceivedFile, fmt: DocumentFormat) -> IngestTask:
    settings = request.settings
    return IngestTask(
        task_id=received.task_id,
        owner_id=str(request.owner),
        agent_id=str(request.agent_id),
        filename=received.filename,
        format=fmt.value,
        size_bytes=received.size_bytes,
        sha256=received.sha256,
        chunk_size=request.chunk_size,
        chunk_overlap=request.chunk_overlap,
        embed_task_queue=settings.embed_task_queue,
        embed_activity_chunks=settings.embed_activity_chunks,
        embed_window=settings.embed_window,
        original=received.original,
        batch_id=request.batch_id,
        max_chunks=settings.max_document_chunks,
        heartbeat_timeout_s=max(1, int(settings.activity_heartbeat_timeout.total_seconds())),
        database_attempts=settings.database_attempts,
    )


async def start_ingest(
    temporal: Client,
    settings: Settings,
    task: IngestTask,
    owner: uuid.UUID,
    idempotent: bool = False,
    *,
    rerun: bool = False,
    retried_run: str | None = None,
) -> None:
    """Start IngestDocument with id = task id; raise AlreadyStarted when the id is taken.

    A repeated idempotency key must never start a second run, even after the first closed
    (REJECT_DUPLICATE); a retry (`rerun`) starts a new run of a closed task (ALLOW_DUPLICATE).

    A start whose answer did not come within its deadline may still have reached the server,
    so it is sent once more (`_start_again`) rather than answered "nothing was stored" while
    the task runs; when that one goes unanswered too, `StartUnconfirmed` says so.
    """
    queued_at = iso_utc(datetime.now(UTC))
    reuse = WorkflowIDReusePolicy.ALLOW_DUPLICATE
    if idempotent and not rerun:
        reuse = WorkflowIDReusePolicy.REJECT_DUPLICATE

    async def start(reuse: WorkflowIDReusePolicy, conflict: WorkflowIDConflictPolicy) -> None:
        await start_workflow(temporal, settings.task_queue, task, owner, queued_at, reuse, conflict)

    try:
        with temporal_unavailable_as_503("The task queue is unavailable, nothing was stored"):
            try:
                await start(reuse, WorkflowIDConflictPolicy.FAIL)
            except RPCError as exc:
                if exc.status is not RPCStatusCode.DEADLINE_EXCEEDED:
                    raise
                await _start_again(
                    start, temporal, task, idempotent=idempotent, rerun=rerun,
                    retried_run=retried_run,
                )  # fmt: skip
    except WorkflowAlreadyStartedError as exc:
        raise AlreadyStarted(task.task_id) from exc


async def _start_again(
    start: Callable[[WorkflowIDReusePolicy, WorkflowIDConflictPolicy], Awaitable[None]],
    temporal: Client,
    task: IngestTask,
    *,
    idempotent: bool,
    rerun: bool,
    retried_run: str | None = None,
) -> None:
    """The second start of a task whose first start went unanswered: a workflow of this id
    found running, or closed since it was started, is the one the first start made.

    A new upload's id is new, so any run of it is ours (REJECT_DUPLICATE, USE_EXISTING); an
    idempotent upload's id is its key's, so a run found is ours only when it reads the file
    this request staged (else AlreadyStarted: the caller answers it as a repeat). A retry
    takes its running run, or one that completed meanwhile (a task is retried only after it
    failed, so a completed run is the retry's); a run other than `retried_run` (the run the
    retry was asked for) is the retry's too, whatever its end: one that failed again before
    the late answer must not be started a third time.
    """
    reuse = WorkflowIDReusePolicy.REJECT_DUPLICATE
    if rerun:
        reuse = WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY
    try:
        if rerun and retried_run is not None:
            latest = await temporal.get_workflow_handle(task.task_id).describe(
                rpc_timeout=START_TIMEOUT
            )
            if latest.run_id != retried_run:
                return  # the first start made it: running, or closed since
        with contextlib.suppress(WorkflowAlreadyStartedError):  # closed since: still ours
            await start(reuse, WorkflowIDConflictPolicy.USE_EXISTING)
        if idempotent and not rerun and not await _reads_this_upload(temporal, task):
            raise AlreadyStarted(task.task_id)
    except RPCError as exc:
        raise StartUnconfirmed(
            f"Temporal did not confirm the start of task {task.task_id} ({exc.message}): it "
            f"may have started. GET /upload/status/{task.task_id} tells: 404 means it did "
            "not, and the file can be sent again"
        ) from exc


async def _reads_this_upload(temporal: Client, task: IngestTask) -> bool:
    """Whether the workflow of `task.task_id` was started for this very staged file."""
    description = await temporal.get_workflow_handle(task.task_id).describe(
        rpc_timeout=START_TIMEOUT
    )
    started = task_from_memo(await description.memo())
    return started is not None and started.original == task.original
