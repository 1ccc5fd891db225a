"""The outbox of workflow starts (api/task_starts.py) on the real PostgreSQL and Temporal."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from api.task_starts import (
    LAST_RETRY,
    QueuedStart,
    TaskStarts,
    queue_start,
    retry_delay,
    start_queued,
)
from core.db import autocommit, create_engine
from core.models import TaskStart
from tests.support import Stack, Tenant, runs_of, stack_settings
from workflows.types import IngestTask


@pytest.fixture
async def engine(stack: Stack) -> AsyncIterator[AsyncEngine]:
    assert stack.settings.database_url is not None
    engine = create_engine(stack.settings.database_url, pool_size=2)
    yield engine
    await engine.dispose()


def queued_task(tenant: Tenant, task_queue: str, queued_at: datetime) -> QueuedStart:
    data = b"never read: no worker polls the queue"
    task = IngestTask(
        task_id=str(uuid.uuid4()),
        owner_id=str(tenant.owner_id),
        agent_id=tenant.agent_id,
        filename="queued.txt",
        format="text",
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=1000,
        chunk_overlap=100,
        embed_task_queue=f"{task_queue}-embed",
        embed_activity_chunks=128,
    )
    return QueuedStart(task, tenant.owner_id, task_queue, queued_at)


async def row_of(stack: Stack, task_id: str) -> TaskStart | None:
    async with stack.sessionmaker() as session:
        return await session.get(TaskStart, task_id)


def test_a_failed_start_is_tried_again_later_and_later_up_to_a_minute() -> None:
    delays = [retry_delay(attempts).total_seconds() for attempts in range(1, 10)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert retry_delay(10_000) == LAST_RETRY


async def test_the_dispatcher_starts_the_rows_due_and_puts_off_one_it_cannot_read(
    stack: Stack, tenant: Tenant, engine: AsyncEngine
) -> None:
    """A row is started by any API's dispatcher once due; a row not due yet is left alone; a
    row that no release can read (a task of another shape) is put off and blocks none of the
    others."""
    queue = stack_settings(stack).task_queue  # no worker polls it: the runs stay open
    reads = autocommit(engine)
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    due = queued_task(tenant, queue, long_ago)
    fresh = queued_task(tenant, queue, datetime.now(UTC) + timedelta(hours=1))  # not due
    for queued in (due, fresh):
        await queue_start(reads, queued, "Temporal cannot be reached")
    unreadable = str(uuid.uuid4())
    async with stack.sessionmaker.begin() as session:
        session.add(
            TaskStart(
                task_id=unreadable,
                owner_id=tenant.owner_id,
                agent_id=uuid.UUID(tenant.agent_id),
                task_queue=queue,
                task={"not": "a task"},
                queued_at=long_ago,
                next_attempt_at=long_ago,
            )
        )
    starts = TaskStarts(stack.client, engine, reads)
    try:
        # The session's API runs a dispatcher too, and may take a row first (the rows it
        # claims, this one skips): either way, a round later each row is as it should be.
        await starts.dispatch()
        async with asyncio.timeout(10):
            while await row_of(stack, due.task.task_id) is not None:
                await asyncio.sleep(0.1)
        assert await runs_of(stack, due.task.task_id) == 1
        assert await row_of(stack, fresh.task.task_id) is not None  # its turn is to come
        assert await runs_of(stack, fresh.task.task_id) == 0
        put_off = await row_of(stack, unreadable)
        assert put_off is not None
        assert put_off.next_attempt_at > datetime.now(UTC) + LAST_RETRY / 2
        assert (put_off.last_error or "").startswith(
            f"the outbox row of task {unreadable} holds no task (IngestTask.__init__() missing"
        ), put_off.last_error
    finally:
        async with stack.sessionmaker.begin() as session:
            for task_id in (fresh.task.task_id, unreadable):
                row = await session.get(TaskStart, task_id)
                if row is not None:
                    await session.delete(row)
        for task_id in (due.task.task_id,):
            await stack.client.get_workflow_handle(task_id).terminate("test over")


async def test_a_start_sent_again_after_its_run_started_or_ended_makes_no_second_run(
    stack: Stack, tenant: Tenant
) -> None:
    """The upload's own start (its answer lost), the dispatcher and a read may each start the
    same queued task: the first makes its run, the others find it, running or closed, and
    start nothing."""
    queued = queued_task(tenant, stack_settings(stack).task_queue, datetime.now(UTC))
    await start_queued(stack.client, queued)
    await start_queued(stack.client, queued)  # running: its run is taken
    handle = stack.client.get_workflow_handle(queued.task.task_id)
    await handle.terminate("closed before the last start")
    await start_queued(stack.client, dataclasses.replace(queued, attempts=3))  # closed
    assert await runs_of(stack, queued.task.task_id) == 1
