"""The embed-and-store activity of a one-batch document, against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import select
from temporalio.exceptions import CancelledError
from temporalio.testing import ActivityEnvironment

from activities.chunk import MANIFEST, ChunkActivities
from activities.embed import EmbedActivities, vectors_name
from activities.embed_and_store import EmbedAndStoreActivities
from activities.extract import ExtractActivities
from activities.store import StoreActivities
from core.db import create_engine, create_sessionmaker
from core.formats import DocumentFormat
from core.models import Chunk
from core.staging import ORIGINAL
from tests.documents import lorem
from tests.support import (
    DelayedStore,
    FakeEmbedder,
    Stack,
    Tenant,
    chunks_stored,
    documents_stored,
    embedding_recorded,
    unreachable_database_url,
)
from workflows.types import EmbeddedAndStored, IngestTask, StoreResult


def chunked_task(stack: Stack, tenant: Tenant) -> IngestTask:
    """A text document extracted and chunked in staging, as the workflow leaves it."""
    data = lorem(3).encode()
    task = IngestTask(
        task_id=str(uuid.uuid4()), owner_id=str(tenant.owner_id), agent_id=tenant.agent_id,
        filename="short.txt", format=DocumentFormat.TEXT.value, size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(), chunk_size=200, chunk_overlap=20,
        embed_task_queue="unused", embed_activity_chunks=16,
    )  # fmt: skip
    stack.staging.write_bytes(task.task_id, ORIGINAL, data)
    env = ActivityEnvironment()
    env.run(ExtractActivities(stack.staging).extract, task)
    env.run(ChunkActivities(stack.staging).chunk, task)
    return task


def activities_on_this_loop(stack: Stack, store: StoreActivities) -> EmbedAndStoreActivities:
    """The activity as the worker builds it, with this test's loop as the worker's."""
    return EmbedAndStoreActivities(
        EmbedActivities(stack.staging, FakeEmbedder(), 4), store, asyncio.get_running_loop()
    )


async def in_a_thread(activities: EmbedAndStoreActivities, task: IngestTask) -> EmbeddedAndStored:
    """Run the activity in a thread, as the worker does (its store runs on this loop)."""
    env = ActivityEnvironment()
    result: EmbeddedAndStored = await asyncio.to_thread(env.run, activities.embed_and_store, task)
    return result


async def embed_and_store(
    stack: Stack, task: IngestTask, store: StoreActivities
) -> EmbeddedAndStored:
    return await in_a_thread(activities_on_this_loop(stack, store), task)


async def stored_rows(stack: Stack, stored: StoreResult) -> list[tuple[int, str, list[float]]]:
    async with stack.sessionmaker() as session:
        rows = await session.execute(
            select(Chunk.ordinal, Chunk.text, Chunk.embedding)
            .where(Chunk.document_id == uuid.UUID(stored.document_id))
            .order_by(Chunk.ordinal)
        )
        return [(row.ordinal, row.text, row.embedding) for row in rows]


async def test_a_one_batch_document_is_embedded_and_stored_once_by_one_step(
    stack: Stack, tenant: Tenant
) -> None:
    """Run twice (a retry after a worker died past the store): one copy of each chunk, the
    embedder's vectors, and no vectors left in staging for a store step."""
    task = chunked_task(stack, tenant)
    store = StoreActivities(stack.staging, stack.sessionmaker)

    first = await embed_and_store(stack, task, store)
    second = await embed_and_store(stack, task, store)

    assert first.stored is not None
    assert first == second
    assert first.stored.chunks == first.embedded > 1
    assert not first.stored.duplicate
    rows = await stored_rows(stack, first.stored)
    assert [ordinal for ordinal, _, _ in rows] == list(range(first.embedded))
    expected = FakeEmbedder().encode([text for _, text, _ in rows])
    assert np.allclose(np.asarray([vector for _, _, vector in rows]), expected, atol=1e-6)
    assert await documents_stored(stack, task.task_id) == 1
    assert not stack.staging.exists(task.task_id, vectors_name(0))
    assert await embedding_recorded(stack, first.stored.document_id) == ("float32", "fake")


async def test_when_the_store_fails_the_vectors_wait_in_staging_for_the_store_step(
    stack: Stack, tenant: Tenant
) -> None:
    """A database that does not answer (restarting): the activity still succeeds, without a
    stored result, and the ordinary store step then stores what it embedded."""
    task = chunked_task(stack, tenant)
    nowhere = create_engine(unreachable_database_url())
    try:
        unreachable = StoreActivities(stack.staging, create_sessionmaker(nowhere))
        done = await embed_and_store(stack, task, unreachable)
    finally:
        await nowhere.dispose()

    assert done.stored is None
    assert stack.staging.exists(task.task_id, vectors_name(0))
    store = StoreActivities(stack.staging, stack.sessionmaker)
    stored = await ActivityEnvironment().run(store.store, task)
    assert stored.chunks == done.embedded
    rows = await stored_rows(stack, stored)
    expected = FakeEmbedder().encode([text for _, text, _ in rows])
    assert np.allclose(np.asarray([vector for _, _, vector in rows]), expected, atol=1e-6)
    # The vectors left in staging say what embedded them, and the store step records it.
    assert await embedding_recorded(stack, stored.document_id) == ("float32", "fake")


async def test_a_store_stuck_past_its_limit_is_given_up_and_left_to_the_store_step(
    stack: Stack, tenant: Tenant
) -> None:
    """The embed slot is not held by a stuck store: the attempt is cancelled (its transaction
    rolls back), and the vectors wait in staging for the `store` step."""
    task = chunked_task(stack, tenant)
    activities = activities_on_this_loop(stack, DelayedStore(stack, delay_s=60))
    activities.store_limit_s = 0.2
    async with asyncio.timeout(30):
        done = await in_a_thread(activities, task)
    assert done.stored is None
    assert stack.staging.exists(task.task_id, vectors_name(0))
    assert await documents_stored(stack, task.task_id) == 0


async def test_embed_and_store_refuses_to_run_on_the_loop_its_store_needs(
    stack: Stack, tenant: Tenant
) -> None:
    """Called on the worker's loop thread it would wait forever for its own store."""
    task = chunked_task(stack, tenant)
    activities = activities_on_this_loop(stack, StoreActivities(stack.staging, stack.sessionmaker))
    with pytest.raises(RuntimeError, match="must run in a thread"):
        ActivityEnvironment().run(activities.embed_and_store, task)


async def test_a_cancel_during_the_store_reaches_the_activity_only_once_the_store_ended(
    stack: Stack, tenant: Tenant
) -> None:
    """A cancelled task's chunks are removed once the step reports back: a store that went on
    writing after that would leave them behind. The cancel waits for the store instead."""
    task = chunked_task(stack, tenant)
    store = DelayedStore(stack, delay_s=0.5)
    env = ActivityEnvironment()
    # It heartbeats every 30 ms while the store runs: the cancel reaches it well before the end.
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=0.09))
    running = asyncio.create_task(
        asyncio.to_thread(env.run, activities_on_this_loop(stack, store).embed_and_store, task)
    )
    assert await asyncio.to_thread(store.begun.wait, 30)
    env.cancel()
    with pytest.raises(CancelledError):
        await running
    assert await documents_stored(stack, task.task_id) == 1
    chunks = stack.staging.read_json(task.task_id, MANIFEST)["chunks"]
    assert await chunks_stored(stack, task.task_id) == chunks
