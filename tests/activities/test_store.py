"""The store activity against the real PostgreSQL: idempotent, one transaction, COPY."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete as sa_delete
from sqlalchemy import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.chunk import MANIFEST, ChunkActivities
from activities.cleanup import CleanupActivities
from activities.embed import EmbedActivities, from_npy, vectors_name
from activities.embedding_record import record_name
from activities.extract import ExtractActivities
from activities.store import StoreActivities
from core.formats import DocumentFormat
from core.models import Chunk, Document
from core.staging import ORIGINAL
from tests.documents import lorem, make_pdf
from tests.support import (
    DelayedStore,
    FakeEmbedder,
    Stack,
    Tenant,
    chunks_stored,
    documents_stored,
    embedding_recorded,
    new_tenant,
)
from workflows.types import EmbedBatch, IngestTask, Outcome, Status


async def test_store_twice_leaves_one_copy_of_the_chunks(stack: Stack, tenant: Tenant) -> None:
    """Also after the cleanup removed the staging. And the vectors read back are the
    embedder's, after a second store whose connection had learnt the `vector` type in an
    earlier one (it is looked up once per connection)."""
    pdf = make_pdf([f"Page {n} " + "words and more words. " * 60 for n in range(1, 4)])
    task = IngestTask(
        task_id=str(uuid.uuid4()),
        owner_id=str(tenant.owner_id),
        agent_id=tenant.agent_id,
        filename="twice.pdf",
        format=DocumentFormat.PDF.value,
        size_bytes=len(pdf),
        sha256=hashlib.sha256(pdf).hexdigest(),
        chunk_size=200,
        chunk_overlap=20,
        embed_task_queue="unused",
        embed_activity_chunks=5,
    )
    stack.staging.write_bytes(task.task_id, ORIGINAL, pdf)
    env = ActivityEnvironment()
    env.run(ExtractActivities(stack.staging).extract, task)
    total = env.run(ChunkActivities(stack.staging).chunk, task).chunks
    embed = EmbedActivities(stack.staging, FakeEmbedder()).embed
    for start in range(0, total, 5):
        env.run(embed, EmbedBatch(task.task_id, start, min(start + 5, total)))
    store = StoreActivities(stack.staging, stack.sessionmaker).store

    first = await env.run(store, task)
    second = await env.run(store, task)
    env.run(CleanupActivities(stack.staging).cleanup, task.task_id)
    # Run again after the cleanup: the staging is gone, what the first run stored stands.
    third = await env.run(store, task)

    assert first == second == third
    async with stack.sessionmaker() as session:
        rows = (
            await session.execute(
                select(Chunk.ordinal, Chunk.page, Chunk.text, Chunk.embedding).where(
                    Chunk.document_id == uuid.UUID(first.document_id)
                )
            )
        ).all()
    assert await documents_stored(stack, task.task_id) == 1
    assert sorted(row.ordinal for row in rows) == list(range(total))
    assert {row.page for row in rows} == {1, 2, 3}
    expected = FakeEmbedder().encode([row.text for row in rows])
    assert np.allclose(np.asarray([row.embedding for row in rows]), expected, atol=1e-6)


async def test_store_without_staging_or_a_stored_copy_ends_staging_missing(
    stack: Stack, tenant: Tenant
) -> None:
    task = IngestTask(
        task_id=str(uuid.uuid4()), owner_id=str(tenant.owner_id), agent_id=tenant.agent_id,
        filename="gone.txt", format=DocumentFormat.TEXT.value, size_bytes=1,
        sha256=hashlib.sha256(b"gone").hexdigest(), chunk_size=200, chunk_overlap=20,
        embed_task_queue="unused",
    )  # fmt: skip
    store = StoreActivities(stack.staging, stack.sessionmaker).store
    with pytest.raises(ApplicationError) as missing:
        await ActivityEnvironment().run(store, task)
    assert missing.value.type == "StagingMissing"
    assert missing.value.message == "the chunks or their vectors is no longer in the staging store"


def _chunked_and_embedded(stack: Stack, task: IngestTask, data: bytes) -> None:
    """Stage `data` as the task's original and run the steps before the store on it."""
    stack.staging.write_bytes(task.task_id, ORIGINAL, data)
    env = ActivityEnvironment()
    env.run(ExtractActivities(stack.staging).extract, task)
    total = env.run(ChunkActivities(stack.staging).chunk, task).chunks
    env.run(
        EmbedActivities(stack.staging, FakeEmbedder()).embed, EmbedBatch(task.task_id, 0, total)
    )


async def test_store_of_another_file_under_a_stored_task_id_fails_and_keeps_the_first(
    stack: Stack, tenant: Tenant
) -> None:
    """A task id reused for another file (an idempotency key after Temporal's retention)
    never replaces the document stored under it: the store fails at once, without retries,
    and so does recording the outcome, which would delete the first document's chunks."""
    january, february = lorem(8, seed=101).encode(), lorem(8, seed=202).encode()
    first = IngestTask(
        task_id=str(uuid.uuid4()), owner_id=str(tenant.owner_id), agent_id=tenant.agent_id,
        filename="jan.txt", format=DocumentFormat.TEXT.value, size_bytes=len(january),
        sha256=hashlib.sha256(january).hexdigest(), chunk_size=200, chunk_overlap=20,
        embed_task_queue="unused",
    )  # fmt: skip
    activities = StoreActivities(stack.staging, stack.sessionmaker)
    env = ActivityEnvironment()
    _chunked_and_embedded(stack, first, january)
    stored = await env.run(activities.store, first)
    env.run(CleanupActivities(stack.staging).cleanup, first.task_id)
    other = dataclasses.replace(
        first, filename="feb.txt", size_bytes=len(february),
        sha256=hashlib.sha256(february).hexdigest(),
    )  # fmt: skip
    _chunked_and_embedded(stack, other, february)

    with pytest.raises(ApplicationError) as refused:
        await env.run(activities.store, other)
    with pytest.raises(ApplicationError) as not_recorded:
        await env.run(
            activities.record_outcome,
            Outcome(other, Status.FAILED, refused.value.type or "", refused.value.message),
        )

    for failure in (refused.value, not_recorded.value):
        assert failure.type == "AnotherFileStored"
        assert failure.non_retryable
        assert failure.message == (
            f"task {first.task_id} already stored another file (jan.txt), which is kept; "
            "upload feb.txt with a new Idempotency-Key"
        )
    async with stack.sessionmaker() as session:
        document = await session.scalar(select(Document).where(Document.task_id == first.task_id))
    assert document is not None
    assert (str(document.id), document.filename, document.status) == (
        stored.document_id, "jan.txt", Status.COMPLETE,
    )  # fmt: skip
    assert document.sha256 == first.sha256
    assert await chunks_stored(stack, first.task_id) == stored.chunks > 0
    assert await documents_stored(stack, first.task_id) == 1


def _task(tenant: Tenant, data: bytes, filename: str) -> IngestTask:
    return IngestTask(
        task_id=str(uuid.uuid4()), owner_id=str(tenant.owner_id), agent_id=tenant.agent_id,
        filename=filename, format=DocumentFormat.TEXT.value, size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(), chunk_size=200, chunk_overlap=20,
        embed_task_queue="unused",
    )  # fmt: skip


async def test_a_retry_that_finds_a_stored_copy_drops_the_row_of_its_failed_run(
    stack: Stack, tenant: Tenant
) -> None:
    """Task B ended `error`; task C stored the same bytes since; B's retry ends as a duplicate
    of C's document. B's `error` row must not stay behind to list B as failed (in the
    documents list, and as its status once Temporal forgot the workflow)."""
    data = lorem(6, seed=303).encode()
    b, c = _task(tenant, data, "b.txt"), _task(tenant, data, "c.txt")
    activities = StoreActivities(stack.staging, stack.sessionmaker)
    env = ActivityEnvironment()
    await env.run(
        activities.record_outcome, Outcome(b, Status.ERROR, "Timeout", "the store timed out")
    )
    assert await documents_stored(stack, b.task_id) == 1
    _chunked_and_embedded(stack, c, data)
    stored = await env.run(activities.store, c)
    _chunked_and_embedded(stack, b, data)

    retried = await env.run(activities.store, b)

    assert (retried.document_id, retried.duplicate) == (stored.document_id, True)
    assert await documents_stored(stack, b.task_id) == 0
    assert await chunks_stored(stack, c.task_id) == stored.chunks


async def test_an_outcome_recorded_after_a_store_counts_no_chunks(
    stack: Stack, tenant: Tenant
) -> None:
    """A cancel that lands after the store committed: the outcome deletes the chunks, and the
    row says so (it kept the stored count before)."""
    data = lorem(6, seed=404).encode()
    task = _task(tenant, data, "late.txt")
    activities = StoreActivities(stack.staging, stack.sessionmaker)
    env = ActivityEnvironment()
    _chunked_and_embedded(stack, task, data)
    stored = await env.run(activities.store, task)
    assert stored.chunks > 0
    assert await embedding_recorded(stack, stored.document_id) == ("float32", "fake")

    await env.run(
        activities.record_outcome,
        Outcome(task, Status.CANCELLED, "Cancelled", "cancelled on request"),
    )

    async with stack.sessionmaker() as session:
        document = await session.scalar(select(Document).where(Document.task_id == task.task_id))
    assert document is not None
    assert (document.status, document.chunk_count, document.page_count) == (
        Status.CANCELLED, 0, None,
    )  # fmt: skip
    assert await chunks_stored(stack, task.task_id) == 0
    # No vectors left: nothing to say what made them.
    assert (document.embedding_precision, document.embedding_model) == (None, None)


async def test_the_store_heartbeats_while_it_stores_and_a_cancel_waits_for_the_store(
    stack: Stack, tenant: Tenant
) -> None:
    """A worker lost in the middle of a large document's store is noticed within the
    heartbeat timeout (the step's own is ten minutes). A cancel that arrives meanwhile stops
    the step only once the store's transaction ended: the workflow's cleanup follows the
    step's report, and a store still writing then would leave the chunks behind."""
    data = lorem(6, seed=505).encode()
    task = _task(tenant, data, "slow.txt")
    _chunked_and_embedded(stack, task, data)
    store = DelayedStore(stack, delay_s=0.5)
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=0.09))
    beats: list[tuple[Any, ...]] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    running = asyncio.ensure_future(env.run(store.store, task))
    assert await asyncio.to_thread(store.begun.wait, 30)
    await asyncio.sleep(0.1)
    env.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert len(beats) >= 3  # every 30 ms while the store waited
    assert await documents_stored(stack, task.task_id) == 1
    manifest = stack.staging.read_json(task.task_id, MANIFEST)
    assert await chunks_stored(stack, task.task_id) == manifest["chunks"]


class _StalledStore(StoreActivities):
    """A store whose first run stalls after reading its staging, until released."""

    def __init__(self, stack: Stack) -> None:
        super().__init__(stack.staging, stack.sessionmaker)
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()

    async def save(self, *args: Any, **kwargs: Any) -> Any:
        if not self.stalled.is_set():
            self.stalled.set()
            await self.release.wait()
        return await super().save(*args, **kwargs)


async def test_a_stale_store_does_not_write_back_a_document_deleted_after_its_task_ended(
    stack: Stack, tenant: Tenant
) -> None:
    """An attempt that stalled past its heartbeat timeout (its heartbeats lost) while another
    attempt stored: the task ended, its cleanup removed the staging, the user deleted the
    document (allowed once the task ended). The stalled attempt must not write it back."""
    data = lorem(6, seed=606).encode()
    task = _task(tenant, data, "stale.txt")
    _chunked_and_embedded(stack, task, data)
    store = _StalledStore(stack)
    env = ActivityEnvironment()
    stale = asyncio.ensure_future(env.run(store.store, task))
    await asyncio.wait_for(store.stalled.wait(), 30)
    stored = await ActivityEnvironment().run(store.store, task)  # the attempt that counted
    env_cleanup = ActivityEnvironment()
    env_cleanup.run(CleanupActivities(stack.staging).cleanup, task.task_id)
    async with stack.sessionmaker.begin() as session:  # DELETE /documents/{id}
        await session.execute(
            sa_delete(Document).where(Document.id == uuid.UUID(stored.document_id))
        )

    store.release.set()
    with pytest.raises(ApplicationError) as refused:
        await stale

    assert refused.value.type == "StagingMissing"
    assert await documents_stored(stack, task.task_id) == 0
    assert await chunks_stored(stack, task.task_id) == 0


class Bfloat16Embedder(FakeEmbedder):
    """The fake model as a worker that runs it in bfloat16 says it (a GPU worker)."""

    precision = "bfloat16"


def _embedded_in_shards(
    stack: Stack, tenant: Tenant, embedders: list[FakeEmbedder]
) -> tuple[IngestTask, int]:
    """A document chunked into one shard per embedder, each shard embedded by its own (the
    embed activities of one document on several workers); the task and its shard size."""
    data = lorem(40, seed=77).encode()
    task = dataclasses.replace(_task(tenant, data, "shards.txt"), embed_activity_chunks=4)
    stack.staging.write_bytes(task.task_id, ORIGINAL, data)
    env = ActivityEnvironment()
    env.run(ExtractActivities(stack.staging).extract, task)
    total = env.run(ChunkActivities(stack.staging).chunk, task).chunks
    assert total > 4 * (len(embedders) - 1)
    for number, start in enumerate(range(0, total, 4)):
        embedder = embedders[min(number, len(embedders) - 1)]
        batch = EmbedBatch(task.task_id, start, min(start + 4, total))
        env.run(EmbedActivities(stack.staging, embedder).embed, batch)
    return task, 4


async def test_store_records_the_precision_and_model_its_shards_were_embedded_with(
    stack: Stack, tenant: Tenant
) -> None:
    task, _ = _embedded_in_shards(stack, tenant, [FakeEmbedder()])
    stored = await ActivityEnvironment().run(
        StoreActivities(stack.staging, stack.sessionmaker).store, task
    )
    assert await embedding_recorded(stack, stored.document_id) == ("float32", "fake")


async def test_store_of_shards_embedded_in_different_precisions_records_mixed(
    stack: Stack, tenant: Tenant
) -> None:
    """A float32 CPU worker embedded the first shard, a bfloat16 one the others: the document
    says `mixed`, not the precision of either. The model was the same: it says which."""
    task, _ = _embedded_in_shards(stack, tenant, [FakeEmbedder(), Bfloat16Embedder()])
    stored = await ActivityEnvironment().run(
        StoreActivities(stack.staging, stack.sessionmaker).store, task
    )
    assert await embedding_recorded(stack, stored.document_id) == ("mixed", "fake")


async def test_store_of_a_shard_of_unknown_embedding_records_unknown_not_a_guess(
    stack: Stack, tenant: Tenant
) -> None:
    """A shard whose vectors came without a record (an embed worker of the release before)
    or whose record is another attempt's (two attempts of the shard, each writing one file
    last) is unknown: so is the document, though its other shards all say float32."""
    store = StoreActivities(stack.staging, stack.sessionmaker).store
    env = ActivityEnvironment()
    task, step = _embedded_in_shards(stack, tenant, [FakeEmbedder()])
    stack.staging.remove(task.task_id, record_name(step))
    stored = await env.run(store, task)
    assert await embedding_recorded(stack, stored.document_id) == (None, None)

    other, step = _embedded_in_shards(stack, await new_tenant(stack), [FakeEmbedder()])
    bfloat16 = EmbedActivities(stack.staging, Bfloat16Embedder())
    record = stack.staging.read_bytes(other.task_id, record_name(step))
    vectors = from_npy(stack.staging.read_bytes(other.task_id, vectors_name(step)))
    bfloat16.write_vectors(other.task_id, step, -vectors)
    stack.staging.write_bytes(other.task_id, record_name(step), record)  # the float32 one's
    stored = await env.run(store, other)
    assert await embedding_recorded(stack, stored.document_id) == (None, None)
