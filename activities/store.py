"""Storage: one transaction upserts the document row and replaces its chunks with COPY.

A task's row is only ever updated by the same file (sha256) for the same agent: a task id
that already names another file's row (an Idempotency-Key reused once Temporal's retention
dropped its first workflow) fails the step instead of replacing that document."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import psycopg
from pgvector.psycopg.vector import register_vector_info
from psycopg.types import TypeInfo
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.service import RPCError, RPCStatusCode

from activities.chunk import MANIFEST, shard_name, shard_starts
from activities.embed import from_npy, vectors_name
from activities.embedding_record import Embedding, document_embedding, record_name, shard_embedding
from activities.errors import refusal, staging_missing
from activities.heartbeats import heartbeat_interval_s
from activities.vectors import Vectors
from core.db import violates
from core.dedup import DESCRIBE_TIMEOUT, StoredCopy, settled, stored_copy
from core.formats import DocumentFormat
from core.models import Chunk, Document
from core.staging import StagingStore
from workflows.types import (
    RECORD_OUTCOME,
    STORE,
    FailureType,
    IngestTask,
    Outcome,
    Status,
    StoreResult,
)

# One shard of a document: its chunks as `chunk` wrote them, and their vectors.
Shard = tuple[list[dict[str, Any]], Vectors]

_COPY_CHUNKS = (
    "COPY chunks (document_id, ordinal, text, start_char, end_char, page, embedding) "
    "FROM STDIN WITH (FORMAT BINARY)"
)
_COPY_TYPES = ["uuid", "int4", "text", "int4", "int4", "int4", "vector"]
# The failure of a store whose workflow run had ended: reported to no one (the server drops
# the result of a closed run's activity), but named in the worker's log.
RUN_ENDED = "RunEnded"
T = TypeVar("T")
log = logging.getLogger(__name__)


async def upsert_document(
    session: AsyncSession, task: IngestTask, status: str, **fields: Any
) -> uuid.UUID:
    """Insert or update the row of `task` (keyed by task id); return the document id. A row of
    the task id that holds another file, or another agent's, is left as it is: that raises
    a non-retryable AnotherFileStored."""
    values: dict[str, Any] = {
        "owner_id": uuid.UUID(task.owner_id),
        "agent_id": uuid.UUID(task.agent_id),
        "task_id": task.task_id,
        "filename": task.filename,
        "content_type": DocumentFormat(task.format).media_type,
        "size_bytes": task.size_bytes,
        "sha256": task.sha256,
        "chunk_size": task.chunk_size,
        "chunk_overlap": task.chunk_overlap,
        "status": status,
        "error_type": None,
        "error_message": None,
        # No vectors but those the store writes with their embedding (a failed or cancelled
        # task's row has none).
        "embedding_precision": None,
        "embedding_model": None,
        **fields,
    }
    statement = insert(Document).values(**values)
    updates = {key: statement.excluded[key] for key in values if key != "task_id"}
    upsert = statement.on_conflict_do_update(
        index_elements=[Document.task_id],
        set_={**updates, "updated_at": func.now()},
        where=(Document.sha256 == statement.excluded.sha256)
        & (Document.agent_id == statement.excluded.agent_id),
    ).returning(Document.id)
    document_id: uuid.UUID | None = (await session.execute(upsert)).scalar_one_or_none()
    if document_id is None:
        raise await _another_file_stored(session, task)
    return document_id


async def _another_file_stored(session: AsyncSession, task: IngestTask) -> ApplicationError:
    row = (
        await session.execute(
            select(Document.filename, Document.status).where(Document.task_id == task.task_id)
        )
    ).one()
    held = (
        f"already stored another file ({row.filename}), which is kept"
        if row.status == Status.COMPLETE
        else f"already holds the record of another upload ({row.filename}, {row.status})"
    )
    return refusal(
        f"task {task.task_id} {held}; upload {task.filename} with a new Idempotency-Key",
        FailureType.ANOTHER_FILE_STORED,
    )


async def copy_chunks(session: AsyncSession, rows: Iterator[tuple[Any, ...]]) -> None:
    """COPY rows into `chunks` on the session's own connection (same transaction)."""
    connection = await (await session.connection()).get_raw_connection()
    driver = connection.driver_connection
    if not isinstance(driver, psycopg.AsyncConnection):
        raise TypeError("COPY needs the psycopg async driver (postgresql+psycopg://)")
    await _know_vector(driver)
    async with driver.cursor() as cursor, cursor.copy(_COPY_CHUNKS) as copy:
        copy.set_types(_COPY_TYPES)
        for row in rows:
            await copy.write_row(row)


async def _know_vector(driver: psycopg.AsyncConnection[Any]) -> None:
    """Teach a pooled connection pgvector's `vector` type, once in its life.

    `register_vector_async` looked up four types (four round trips) and built eight adapter
    classes on every store; the connection keeps what it learnt, so later stores skip both."""
    if driver.adapters.types.get("vector") is None:
        register_vector_info(driver, await TypeInfo.fetch(driver, "vector"))


class StoreActivities:
    def __init__(
        self,
        staging: StagingStore,
        sessionmaker: async_sessionmaker[AsyncSession],
        temporal: Client | None = None,
    ) -> None:
        self.staging = staging
        self.sessionmaker = sessionmaker
        # Asked whether the task of a stored copy has ended (core/dedup.py); None (a store
        # used alone, in tests and benchmarks) takes every copy found as settled.
        self.temporal = temporal

    @activity.defn(name=STORE)
    async def store(self, task: IngestTask) -> StoreResult:
        """Make the document searchable; running it twice leaves one copy of each chunk.
        It heartbeats while it runs (see `heartbeating`)."""
        return await heartbeating(self._store(task))

    async def _store(self, task: IngestTask) -> StoreResult:
        try:
            manifest, shards, embedding = await asyncio.to_thread(self._load, task.task_id)
        except ApplicationError:
            # Run again after the cleanup removed its staging (not on the workflow's own path,
            # where the cleanup follows the store's recorded result): what was stored stands.
            stored = await self._stored_by_this_task(task)
            if stored is None:
                raise
            return stored
        return await self.save(
            task, manifest, shards, embedding, run_id=activity.info().workflow_run_id
        )

    async def save(
        self,
        task: IngestTask,
        manifest: dict[str, Any],
        shards: list[Shard],
        embedding: Embedding,
        *,
        run_id: str | None = None,
    ) -> StoreResult:
        """Store the document of `task`: its manifest, each shard's chunks with their vectors,
        and the embedding that made them, in one transaction (or find the copy another task
        stored first). `run_id`: the workflow run that asked; the transaction rolls back when
        that run has ended meanwhile (`_refuse_when_run_ended`)."""
        try:
            async with self.sessionmaker.begin() as session:
                existing = await self._settled_copy(session, task)
                if existing is not None:
                    await _drop_unstored_row(session, task)
                    return existing
                document_id = await upsert_document(
                    session,
                    task,
                    Status.COMPLETE,
                    chunk_count=manifest["chunks"],
                    page_count=manifest["pages"],
                    embedding_precision=embedding.precision,
                    embedding_model=embedding.model,
                )
                await self._refuse_when_moved_on(task)
                await session.execute(delete(Chunk).where(Chunk.document_id == document_id))
                await copy_chunks(session, _rows(document_id, shards))
                await self._refuse_when_run_ended(task, run_id)
        except IntegrityError as exc:
            return await self._settle_conflict(task, exc)
        return StoreResult(document_id=str(document_id), chunks=manifest["chunks"])

    async def _refuse_when_moved_on(self, task: IngestTask) -> None:
        """Roll back a run of this store whose task went on without it: an attempt that
        stalled past its timeout (its heartbeats lost, say) while another attempt stored, the
        workflow ended and its cleanup removed the staging. The document may have been deleted
        since (DELETE /documents is allowed once the task ended): writing it now would bring
        it back. Asked after the upsert took the row (or found none), so a delete that comes
        later waits for this transaction, and one that came before is seen as missing staging."""
        if not await asyncio.to_thread(self.staging.exists, task.task_id, MANIFEST):
            raise staging_missing("the chunks or their vectors")

    async def _refuse_when_run_ended(self, task: IngestTask, run_id: str | None) -> None:
        """Roll back a store whose workflow run ended while it ran: an operator terminated
        the task (or reset it, which ends the run) while the store waited for a lock or wrote
        a large document. The task says `error`, "the upload can be retried"; committed, its
        document would be `complete` and searchable all the same, and an upload of the same
        bytes answered as a duplicate of a task that says `error`. A cancel leaves the run
        open (the workflow deletes what was stored), so the store commits then. Asked last,
        before the commit; when Temporal does not answer, the store commits as it did."""
        if self.temporal is None or run_id is None:
            return
        handle = self.temporal.get_workflow_handle(task.task_id, run_id=run_id)
        try:
            description = await handle.describe(rpc_timeout=DESCRIBE_TIMEOUT)
        except RPCError as exc:
            if exc.status is not RPCStatusCode.NOT_FOUND:
                return
        else:
            if description.status is WorkflowExecutionStatus.RUNNING:
                return
        message = (
            f"the run {run_id} of task {task.task_id} ended (terminated or reset) while its "
            "document was being stored: the store was rolled back"
        )
        log.info("%s", message)
        raise ApplicationError(
            message, type=RUN_ENDED, non_retryable=True, category=ApplicationErrorCategory.BENIGN
        )

    async def _settled_copy(self, session: AsyncSession, task: IngestTask) -> StoreResult | None:
        """Another task's copy of the same bytes (`_other_copy`), once that task ended.
        While it runs, its cancel may still delete the copy, and this task, answered with it,
        would say `complete` with nothing stored: the step fails, and its retry looks again."""
        found = await _other_copy(session, task)
        if found is None:
            return None
        if self.temporal is not None and not await settled(self.temporal, found):
            raise ApplicationError(
                f"task {found.task_id} stored the same file for this agent and has not ended "
                "yet; this task joins its document, or stores its own, once it has",
                type=FailureType.COPY_NOT_SETTLED,
            )
        return _duplicate_of(found)

    async def _stored_by_this_task(self, task: IngestTask) -> StoreResult | None:
        """What an earlier run of this store left: this task's complete document, or the
        other task's copy it found, once that task ended (`_settled_copy`)."""
        async with self.sessionmaker() as session:
            row = (
                await session.execute(
                    select(Document.id, Document.chunk_count).where(
                        *_row_of_this_file(task), Document.status == Status.COMPLETE
                    )
                )
            ).first()
            if row is None:
                return await self._settled_copy(session, task)
        return StoreResult(document_id=str(row.id), chunks=row.chunk_count)

    async def _settle_conflict(self, task: IngestTask, exc: IntegrityError) -> StoreResult:
        """Another task stored the same bytes for this agent first, or the agent is gone."""
        async with self.sessionmaker.begin() as session:
            existing = await self._settled_copy(session, task)
            if existing is not None:
                await _drop_unstored_row(session, task)
        if existing is not None:
            return existing
        if violates(exc, "fk"):
            raise agent_deleted(task) from exc
        raise exc

    def _load(self, task_id: str) -> tuple[dict[str, Any], list[Shard], Embedding]:
        """The manifest, the shards, and the embedding their records name."""
        shards: list[Shard] = []
        embeddings: list[Embedding | None] = []
        try:
            manifest: dict[str, Any] = self.staging.read_json(task_id, MANIFEST)
            for start in shard_starts(manifest):
                vectors = self.staging.read_bytes(task_id, vectors_name(start))
                shards.append(
                    (self.staging.read_json(task_id, shard_name(start)), from_npy(vectors))
                )
                embeddings.append(shard_embedding(self._record(task_id, start), vectors))
        except FileNotFoundError as exc:
            raise staging_missing("the chunks or their vectors") from exc
        return manifest, shards, document_embedding(embeddings)

    def _record(self, task_id: str, start: int) -> object:
        """A shard's embedding record; None when it has none (an embed worker of the release
        before the records wrote its vectors)."""
        try:
            record: object = self.staging.read_json(task_id, record_name(start))
        except FileNotFoundError:
            return None
        return record

    @activity.defn(name=RECORD_OUTCOME)
    async def record_outcome(self, outcome: Outcome) -> None:
        """Keep a row for a task that ended without chunks: why it failed, or that it stopped."""
        try:
            async with self.sessionmaker.begin() as session:
                if outcome.only_over_its_row and not await _row_held(session, outcome.task):
                    return
                document_id = await upsert_document(
                    session,
                    outcome.task,
                    outcome.status,
                    error_type=outcome.error_type,
                    error_message=outcome.error_message,
                    chunk_count=0,  # a store that committed before a cancel counted its chunks
                    page_count=None,
                )
                await session.execute(delete(Chunk).where(Chunk.document_id == document_id))
        except IntegrityError as exc:
            if not violates(exc, "fk"):
                raise
            # The agent was deleted meanwhile: its documents are gone, nothing to record, and
            # the task can never be retried (409), so its staged upload goes now rather than
            # with the staging sweep, days later.
            await asyncio.to_thread(self.staging.remove_task, outcome.task.task_id)


async def heartbeating(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` (a store), heartbeating meanwhile, so that a worker lost in the middle of a
    large document's store is noticed within the heartbeat timeout, not the step's ten
    minutes. A cancel that arrives meanwhile waits for the store's transaction to end
    (committed or rolled back), then stops the step: nothing is written after it reported
    back, when the workflow's cleanup may already run."""
    running = asyncio.ensure_future(work)
    every = heartbeat_interval_s()
    cancel: asyncio.CancelledError | None = None
    while not running.done():
        try:
            await asyncio.wait({running}, timeout=every)
        except asyncio.CancelledError as exc:
            cancel = exc
            continue
        if not running.done():
            activity.heartbeat("storing")
    if cancel is not None:
        raise cancel
    return running.result()


async def _row_held(session: AsyncSession, task: IngestTask) -> bool:
    """Whether `task` has a row, locked until the transaction ends (a delete waits for it)."""
    row = await session.scalar(
        select(Document.id).where(Document.task_id == task.task_id).with_for_update()
    )
    return row is not None


async def _drop_unstored_row(session: AsyncSession, task: IngestTask) -> None:
    """The task ends as a duplicate of another task's document: the row an earlier run of it
    left (`error`, `failed` or `cancelled`, with no chunks) would list it as that, and
    tell its status so once Temporal forgot the workflow. A task answered as a duplicate keeps
    no row of its own, as an upload answered as one does."""
    await session.execute(
        delete(Document).where(*_row_of_this_file(task), Document.status != Status.COMPLETE)
    )


def _row_of_this_file(task: IngestTask) -> tuple[ColumnElement[bool], ...]:
    """The row of `task`'s id when it holds this task's file for its agent, not another's
    (the upsert's own condition: see `upsert_document`)."""
    return (
        Document.task_id == task.task_id,
        Document.sha256 == task.sha256,
        Document.agent_id == uuid.UUID(task.agent_id),
    )


async def _other_copy(session: AsyncSession, task: IngestTask) -> StoredCopy | None:
    return await stored_copy(
        session, uuid.UUID(task.agent_id), task.sha256, other_than_task=task.task_id
    )


def _duplicate_of(found: StoredCopy) -> StoreResult:
    size, overlap = found.chunking or (None, None)
    return StoreResult(
        document_id=str(found.document_id),
        chunks=found.chunk_count,
        duplicate=True,
        stored_as=found.filename,
        stored_chunk_size=size,
        stored_chunk_overlap=overlap,
    )


def agent_deleted(task: IngestTask) -> ApplicationError:
    return ApplicationError(
        f"the agent {task.agent_id} was deleted while the document was processed",
        type=FailureType.AGENT_DELETED,
        non_retryable=True,
    )


def _rows(document_id: uuid.UUID, shards: list[Shard]) -> Iterator[tuple[Any, ...]]:
    ordinal = 0
    for chunks, vectors in shards:
        for chunk, vector in zip(chunks, vectors, strict=True):
            yield (
                document_id,
                ordinal,
                chunk["text"],
                chunk["start"],
                chunk["end"],
                chunk["page"],
                vector,
            )
            ordinal += 1
