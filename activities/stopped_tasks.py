"""The record of a task whose run was stopped from outside: terminated by an operator (Web UI,
`temporal workflow terminate`) or past its execution timeout.

Such a run writes no documents row (its workflow no longer runs), and the row is what tells a
task once Temporal's retention dropped its workflow: without it the task's status turned 404
and it was missing from the documents list. The staging sweep, which judges every task that
still has an upload (a stopped task keeps its own), writes the row as the API tells the task.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus

from core.db import violates
from core.formats import DocumentFormat
from core.models import Document
from core.temporal import STOPPED_FROM_OUTSIDE, termination_reason
from workflows.types import (
    MEMO_PROGRESS,
    IngestTask,
    Status,
    stopped,
    task_from_memo,
)

HISTORY_TIMEOUT = timedelta(seconds=10)


@dataclass(frozen=True)
class StoppedTask:
    """How a stopped run ended, as the API tells it: its row's status and error."""

    task: IngestTask
    status: str
    error_type: str
    error_message: str
    closed_at: datetime


def ended_as(
    task: IngestTask, error_type: str, reason: str, progress: object, closed_at: datetime
) -> StoppedTask | None:
    """The record of a run stopped from outside; its memo's `progress` decides. A task that
    had said `failed` or `error` (and was writing that row when stopped) keeps what it said;
    `complete` and `cancelled` were recorded before they were said: None."""
    said = progress.get("status") if isinstance(progress, dict) else None
    if said in (Status.COMPLETE, Status.CANCELLED):
        return None
    if said in Status.TERMINAL and isinstance(progress, dict):
        error = (progress.get("error_type"), progress.get("error_message"))
        if isinstance(error[0], str) and isinstance(error[1], str):
            return StoppedTask(task, said, error[0], error[1], closed_at)
    _, error_message = stopped(task.filename, error_type, reason)
    return StoppedTask(task, Status.ERROR, error_type, error_message, closed_at)


async def stopped_task(
    client: Client, description: WorkflowExecutionDescription
) -> StoppedTask | None:
    """What the row of a run stopped from outside says; None for any other run."""
    error_type = STOPPED_FROM_OUTSIDE.get(description.status or WorkflowExecutionStatus.RUNNING)
    if error_type is None or description.close_time is None:
        return None
    memo = await description.memo()
    task = task_from_memo(memo) or await _started_with(client, description)
    if task is None:
        return None
    reason = ""
    if description.status is WorkflowExecutionStatus.TERMINATED:
        reason = await termination_reason(client, description, HISTORY_TIMEOUT)
    return ended_as(task, error_type, reason, memo.get(MEMO_PROGRESS), description.close_time)


async def _started_with(
    client: Client, description: WorkflowExecutionDescription
) -> IngestTask | None:
    """The task a run was started with, from its first event (a workflow started by hand,
    with no memo)."""
    handle = client.get_workflow_handle(description.id, run_id=description.run_id)
    async for event in handle.fetch_history_events(rpc_timeout=HISTORY_TIMEOUT):
        if not event.HasField("workflow_execution_started_event_attributes"):
            return None
        payloads = event.workflow_execution_started_event_attributes.input.payloads
        decoded = await client.data_converter.decode(payloads, [IngestTask])
        return decoded[0] if decoded and isinstance(decoded[0], IngestTask) else None
    return None


async def recorded_since(
    sessionmaker: async_sessionmaker[AsyncSession], task_id: str, closed_at: datetime
) -> bool:
    """Whether the task's row was written when its run closed or later (by this sweep, or a
    later run): nothing to record then."""
    async with sessionmaker() as session:
        written = await session.scalar(
            select(Document.updated_at).where(Document.task_id == task_id)
        )
    return written is not None and written >= closed_at


async def record_stopped(sessionmaker: async_sessionmaker[AsyncSession], stop: StoppedTask) -> None:
    """Write the task's row, dated when its run closed. A row of the task that a later run
    wrote, or that holds a stored document, another file or another agent's, is left as it
    is; so is a task whose agent was deleted (its documents went with it). Retry-safe: a
    second write changes nothing."""
    task = stop.task
    statement = insert(Document).values(
        owner_id=uuid.UUID(task.owner_id),
        agent_id=uuid.UUID(task.agent_id),
        task_id=task.task_id,
        filename=task.filename,
        content_type=DocumentFormat(task.format).media_type,
        size_bytes=task.size_bytes,
        sha256=task.sha256,
        chunk_count=0,
        status=stop.status,
        error_type=stop.error_type,
        error_message=stop.error_message,
        created_at=stop.closed_at,
        updated_at=stop.closed_at,
    )
    excluded = statement.excluded
    upsert = statement.on_conflict_do_update(
        index_elements=[Document.task_id],
        set_={
            "status": excluded.status,
            "error_type": excluded.error_type,
            "error_message": excluded.error_message,
            "updated_at": excluded.updated_at,
        },
        where=(Document.status != Status.COMPLETE)
        & (Document.updated_at < excluded.updated_at)
        & (Document.sha256 == excluded.sha256)
        & (Document.agent_id == excluded.agent_id),
    )
    try:
        async with sessionmaker.begin() as session:
            await session.execute(upsert)
    except IntegrityError as exc:
        if not violates(exc, "fk"):
            raise
