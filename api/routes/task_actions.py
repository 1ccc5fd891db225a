from __future__ import annotations

import asyncio
import dataclasses
import uuid
from contextlib import suppress
from typing import Any

import anyio
from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)

from api.deps import (
    ChangesTasks,
    OwnerDep,
    ReadsDep,
    SessionDep,
    SettingsDep,
    StagingDep,
    TemporalDep,
)
from api.ingest_start import AlreadyStarted, start_ingest
from api.schemas import ErrorBody, TaskStatus, UploadAccepted
from api.task_status import find_task
from api.task_turns import TURN_PATIENCE_S, task_busy, task_turn
from api.temporal_errors import temporal_unavailable_as_503
from core.durations import describe_duration
from core.errors import Conflict, NotFound
from core.models import Agent
from core.settings import Settings
from core.temporal import iso_utc
from workflows.types import FailureType, IngestTask, Status, task_from_memo

router = APIRouter(
    prefix="/upload",
    tags=["uploads"],
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 409: {"model": ErrorBody}},
)

RETRY_MESSAGE = "Document retry started, processing in background"
# How long a retry waits for a task that said how it ended to write its record and close.
RECORD_WAIT_S = 5.0


async def _owned_status(
    temporal: Client, session: AsyncSession, owner: uuid.UUID, task_id: str
) -> tuple[TaskStatus, dict[str, Any] | None]:
    """The caller's task and its workflow's memo (None once only its documents row is left);
    404 when there is no such task."""
    found = await find_task(temporal, session, owner, task_id)
    if found is None:
        raise NotFound(f"Task {task_id[:100]!r} not found")
    return found


@router.post(
    "/{task_id}/retry",
    status_code=202,
    dependencies=[ChangesTasks],
    response_model_exclude_none=True,
)
async def retry_task(
    task_id: str,
    owner: OwnerDep,
    settings: SettingsDep,
    reads: ReadsDep,
    staging: StagingDep,
    temporal: TemporalDep,
    session: SessionDep,
) -> UploadAccepted:
    """Re-run a task that ended `error` or `failed`, from its staged original; same task id."""
    status, memo = await _owned_status(temporal, session, owner, task_id)
    if status.status not in (Status.ERROR, Status.FAILED):
        raise Conflict(
            f"Task {task_id} is {status.status}; only a task that ended error or failed "
            "can be retried"
        )
    if status.error is not None and status.error.type == FailureType.ANOTHER_FILE_STORED:
        raise Conflict(f"Task {task_id} cannot be retried: {status.error.message}")
    if memo is None:
        raise Conflict(
            f"Task {task_id} ended {status.status} at {status.completed_at}, and Temporal no "
            "longer keeps its workflow (its retention passed), so it cannot be retried; "
            "upload the file again"
        )
    task = task_from_memo(memo)
    if task is None:
        raise Conflict(f"Task {task_id} was started by an older version and cannot be retried")
    # Where its embed steps run is this deployment's, not the first run's: after a rename of
    # DOCINGEST_EMBED_TASK_QUEUE no worker polls the old queue, and the retry would wait there.
    task = dataclasses.replace(task, embed_task_queue=settings.embed_task_queue)
    await session.close()  # one connection at most per request: the turn's, below
    # The delete of the task's document takes the same turn: between this check of the staged
    # upload and the start, it removed row and upload, and the run wrote the row back.
    async with task_turn(reads, task_id, TURN_PATIENCE_S, task_busy(task_id)) as turn:
        agent = await turn.scalar(select(Agent.id).where(Agent.id == uuid.UUID(task.agent_id)))
        if agent is None:
            raise Conflict(
                f"The agent {task.agent_id} of task {task_id} was deleted; it cannot be retried"
            )
        if not await anyio.to_thread.run_sync(staging.exists, task.task_id, task.original):
            raise Conflict(
                f"The staged original of {task.filename} was removed (its document was "
                f"deleted, or staging is kept {describe_duration(settings.staging_ttl)} after "
                "a task ends); upload it again"
            )
        await _start_again(temporal, settings, task, owner, status)
    return UploadAccepted(
        message=RETRY_MESSAGE,
        filename=task.filename,
        agent_id=task.agent_id,
        task_id=task.task_id,
        size_bytes=task.size_bytes,
    )


async def _start_again(
    temporal: Client, settings: Settings, task: IngestTask, owner: uuid.UUID, status: TaskStatus
) -> None:
    """Start a new run of the task whose run ended `status` (once that run wrote its record
    and closed); 409 when another request retried it first."""
    task_id = task.task_id
    handle = temporal.get_workflow_handle(task_id)
    with temporal_unavailable_as_503("Cannot retry the task"):
        retried = _the_run_that_ended(task_id, status, await handle.describe())
        if retried.status == WorkflowExecutionStatus.RUNNING:
            # It said how it ended, and writes its record before it closes (workflows/
            # ingest.py): milliseconds, unless the database is down.
            with suppress(WorkflowFailureError, TimeoutError):
                await asyncio.wait_for(handle.result(follow_runs=False), RECORD_WAIT_S)
            retried = _the_run_that_ended(task_id, status, await handle.describe())
    if retried.status == WorkflowExecutionStatus.RUNNING:
        # A retry now would be refused by Temporal as a run already running.
        raise Conflict(
            f"Task {task_id} ended {status.status} but is still writing its record after "
            f"{RECORD_WAIT_S:.0f} s (the database may be unavailable); retry it once it has"
        )
    try:
        await start_ingest(temporal, settings, task, owner, rerun=True, retried_run=retried.run_id)
    except AlreadyStarted as exc:
        raise Conflict(
            f"Task {task_id} is already running again (retried by another request)"
        ) from exc


def _the_run_that_ended(
    task_id: str, status: TaskStatus, latest: WorkflowExecutionDescription
) -> WorkflowExecutionDescription:
    """`latest`, when it is the run whose end `status` tells; 409 when another request retried
    the task since (its run, running or ended, is the retry: a second one would run the task
    twice, or wait for that run as if it were writing its record)."""
    if iso_utc(latest.start_time) != status.started_at:
        raise Conflict(f"Task {task_id} is already running again (retried by another request)")
    return latest


@router.post("/{task_id}/cancel", status_code=202, dependencies=[ChangesTasks])
async def cancel_task(
    task_id: str, owner: OwnerDep, temporal: TemporalDep, session: SessionDep
) -> TaskStatus:
    """Cancel a queued or running task; it ends `cancelled` with nothing left behind."""
    status, _ = await _owned_status(temporal, session, owner, task_id)
    if status.status in Status.TERMINAL:
        raise Conflict(f"Task {task_id} already ended {status.status}")
    handle = temporal.get_workflow_handle(task_id)
    with temporal_unavailable_as_503("Cannot cancel the task"):
        await handle.cancel()
        description = await handle.describe()
    if description.status is WorkflowExecutionStatus.RUNNING:
        status = status.model_copy(update={"message": f"Cancelling {status.filename}…"})
    return status
