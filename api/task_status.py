"""Task status from Temporal: describe() and visibility, never a worker or process memory.

The workflow mirrors its progress object into its memo on every change, so `describe()` (one
read of the server's state, answered with no worker running) returns what the `progress`
query would, and list results carry the same object for `/api/progress`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
)
from temporalio.service import RPCError, RPCStatusCode

from api.schemas import TaskError, TaskProgressCounts, TaskStatus
from api.task_starts import QueuedStart, expected, queued_start, start_error, start_queued
from api.temporal_errors import temporal_unavailable_as_503
from core.errors import ServiceUnavailable
from core.models import Document
from core.temporal import (
    AGENT_ID,
    INGEST_STATUS,
    OWNER_ID,
    STOPPED_FROM_OUTSIDE,
    iso_utc,
    termination_reason,
)
from workflows.types import (
    MEMO_PROGRESS,
    WORKFLOW_NAME,
    Stage,
    Status,
    TaskProgress,
    cancelled_message,
    recorded_stop,
    stopped,
)

log = logging.getLogger(__name__)
RPC_DEADLINE = timedelta(seconds=2)
_MISSING = (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT)


async def describe_owned(
    client: Client, owner_id: uuid.UUID, task_id: str
) -> tuple[WorkflowExecutionDescription, dict[str, Any]] | None:
    """The task's workflow description and memo, or None when missing or another owner's."""
    handle = client.get_workflow_handle(task_id)
    try:
        with temporal_unavailable_as_503("Cannot read the task"):
            description = await handle.describe(rpc_timeout=RPC_DEADLINE)
    except ServiceUnavailable as exc:
        cause = exc.__cause__
        if isinstance(cause, RPCError) and cause.status in _MISSING:
            return None
        raise
    if not _owned_by(description, owner_id):
        return None
    return description, dict(await description.memo())


async def find_task(
    client: Client, session: AsyncSession, owner_id: uuid.UUID, task_id: str
) -> tuple[TaskStatus, dict[str, Any] | None] | None:
    """The caller's task and its workflow's memo; once Temporal's retention dropped the
    workflow, as its documents row tells it (no memo). None when neither knows it, or it is
    another owner's."""
    found: tuple[WorkflowExecutionDescription, dict[str, Any]] | TaskStatus | None
    try:
        found = await describe_owned(client, owner_id, task_id)
    except ServiceUnavailable as exc:
        queued = await queued_start(session, owner_id, task_id)
        if queued is None:
            raise
        # Acknowledged; started once Temporal answers.
        return queued_status(queued, start_error(exc.__cause__ or exc)), None
    if found is None:
        found = await started_now(client, session, owner_id, task_id)
    if isinstance(found, TaskStatus):
        return found, None
    if found is not None:
        description, memo = found
        return await render_with_reason(client, description, memo), memo
    document = await owned_record(session, owner_id, task_id)
    return None if document is None else (record_status(document), None)


async def started_now(
    client: Client, session: AsyncSession, owner_id: uuid.UUID, task_id: str
) -> tuple[WorkflowExecutionDescription, dict[str, Any]] | TaskStatus | None:
    """An acknowledged task whose workflow is yet to start (api/task_starts.py), started now:
    its workflow's description, or its queued status when Temporal still cannot start it.
    None when `task_id` is no such task (or a task Temporal's retention dropped)."""
    queued = await queued_start(session, owner_id, task_id)
    if queued is None:
        # Or started since the describe that missed it, its row deleted: describe it again.
        return await describe_owned(client, owner_id, task_id)
    if not queued.due:
        return queued_status(queued)
    try:
        await start_queued(client, queued)
    except Exception as exc:  # the outbox tries again; the status says why it waits
        if not expected(exc):
            log.warning("starting queued task %s failed", task_id, exc_info=True)
        return queued_status(queued, start_error(exc))
    return await describe_owned(client, owner_id, task_id)


def _owned_by(execution: WorkflowExecution, owner_id: uuid.UUID) -> bool:
    attributes = execution.typed_search_attributes
    return execution.workflow_type == WORKFLOW_NAME and attributes.get(OWNER_ID) == str(owner_id)


async def list_tasks(
    client: Client, owner_id: uuid.UUID, query: str, limit: int, *, filtered: bool = False
) -> list[TaskStatus]:
    """The caller's tasks among the workflows a visibility query finds, at most `limit`, each
    task once, as its latest run shows it.

    A retry starts a new run under the task's id, and visibility lists every run. A query
    that matches the latest run lists it first (running runs come first, then closed ones by
    close time, and a retry starts after its run closed), so a later run of a listed task is
    skipped. A query on status (`filtered`) may match only an earlier run (the retry of a
    failed task completed): closed runs are checked against the task's latest run, and a
    superseded one is left out.
    """
    runs = client.list_workflows(
        query,
        page_size=page_size(limit),
        limit=limit + SUPERSEDED_SCAN_MAX,  # runs read at most, however many were superseded
        rpc_timeout=LIST_DEADLINE,
    )
    latest: dict[str, WorkflowExecution] = {}
    seen: set[str] = set()  # a task's later runs come first: its other runs are skipped
    exhausted = False
    while not exhausted and len(latest) < limit:
        found: dict[str, WorkflowExecution] = {}
        exhausted = True
        async for execution in runs:
            if execution.id not in seen and _owned_by(execution, owner_id):
                seen.add(execution.id)
                found[execution.id] = execution
                if len(latest) + len(found) >= limit:
                    exhausted = False
                    break
        if filtered:
            found = await _unsuperseded(client, owner_id, found)
        latest.update(found)
    return await render_all(
        client, [(execution, dict(await execution.memo())) for execution in latest.values()]
    )


LIST_DEADLINE = timedelta(seconds=5)
# The most runs visibility answers in one page.
MAX_PAGE_SIZE = 1000


def page_size(wanted: int) -> int:
    """Pages of one size that hold `wanted` runs in as few pages as visibility allows: each
    page is fetched and decoded whole, and 1,002 runs read in pages of 1,000 read 2,000."""
    pages = -(-wanted // MAX_PAGE_SIZE)
    return -(-wanted // pages)


# How many runs beyond `limit` a listing reads to skip earlier runs of retried tasks: a page
# may come short when more were retried than this.
SUPERSEDED_SCAN_MAX = 1000
# Task ids per visibility query that looks for later runs; the ids it can quote (a task's id
# is a UUID; a workflow started by hand under another id is listed as it is).
_IDS_PER_QUERY = 100
_QUOTABLE = re.compile(r"[0-9A-Za-z_.:-]+")


async def _unsuperseded(
    client: Client, owner_id: uuid.UUID, runs: dict[str, WorkflowExecution]
) -> dict[str, WorkflowExecution]:
    """`runs` without the closed runs that a later run of the same task has superseded."""
    closed = [
        task_id
        for task_id, run in runs.items()
        if run.close_time is not None and _QUOTABLE.fullmatch(task_id)
    ]
    superseded: set[str] = set()
    for first in range(0, len(closed), _IDS_PER_QUERY):
        ids = ", ".join(f"'{task_id}'" for task_id in closed[first : first + _IDS_PER_QUERY])
        query = (
            f"WorkflowType = '{WORKFLOW_NAME}' AND {OWNER_ID.name} = '{owner_id}' "
            f"AND WorkflowId IN ({ids})"
        )
        async for other in client.list_workflows(query, rpc_timeout=LIST_DEADLINE):
            listed = runs[other.id]
            if other.run_id != listed.run_id and other.start_time > listed.start_time:
                superseded.add(other.id)
    return {task_id: run for task_id, run in runs.items() if task_id not in superseded}


async def render_all(
    client: Client, runs: Sequence[tuple[WorkflowExecution, Mapping[str, Any]]]
) -> list[TaskStatus]:
    """`render_with_reason` of each run and its memo, at once."""
    return list(
        await asyncio.gather(*(render_with_reason(client, run, memo) for run, memo in runs))
    )


async def render_with_reason(
    client: Client, execution: WorkflowExecution, memo: Mapping[str, Any]
) -> TaskStatus:
    """`render`, with the reason an operator gave when terminating the task (read from its
    history's close event: neither the memo nor visibility has it)."""
    reason = ""
    if execution.status is WorkflowExecutionStatus.TERMINATED:
        # A history that cannot be read: the task says it was terminated, without a reason.
        with contextlib.suppress(RPCError):
            reason = await termination_reason(client, execution, RPC_DEADLINE)
    return render(execution, memo, stop_reason=reason)


def render(
    execution: WorkflowExecution, memo: Mapping[str, Any], *, stop_reason: str = ""
) -> TaskStatus:
    raw = memo.get(MEMO_PROGRESS)
    progress = _progress_from(raw) if isinstance(raw, dict) else _from_attributes(execution)
    # When the run started, as Temporal (and `StartTime` in a visibility query) tells it: the
    # memo's is the API's clock until the first step, then the worker's first workflow task
    # (`workflow.info().start_time`), which comes later whenever the task waited for a worker.
    progress = _replace(progress, started_at=iso_utc(execution.start_time))
    progress = _reconcile(progress, execution.status, execution.close_time, stop_reason)
    return to_public(progress)


def queued_status(queued: QueuedStart, error: str | None = None) -> TaskStatus:
    """The status of a task whose workflow has not started yet (`queued`, api/task_starts.py);
    with the reason its start is waiting when one failed (`error`, else the row's last)."""
    progress = TaskProgress.queued(queued.task, iso_utc(queued.queued_at))
    reason = error or queued.last_error
    if reason:
        message = f"{progress.message}; its start waits for the task queue ({reason}) and is "
        progress = _replace(progress, message=message + "tried again")
    return to_public(progress)


def _progress_from(raw: dict[str, Any]) -> TaskProgress:
    """Tolerate memos written by older or newer workflow versions."""
    known = {field.name for field in dataclasses.fields(TaskProgress)}
    return TaskProgress(**{key: value for key, value in raw.items() if key in known})


def _from_attributes(execution: WorkflowExecution) -> TaskProgress:
    """For a workflow started without a memo (e.g. from the CLI): what visibility knows."""
    status = execution.typed_search_attributes.get(INGEST_STATUS) or Status.QUEUED
    return TaskProgress(
        task_id=execution.id,
        filename="",
        agent_id=execution.typed_search_attributes.get(AGENT_ID) or "",
        status=status,
        message="",
        stage=Stage.QUEUED,
        started_at=iso_utc(execution.start_time),
    )


def _reconcile(
    progress: TaskProgress,
    status: WorkflowExecutionStatus | None,
    closed: datetime | None,
    stop_reason: str = "",
) -> TaskProgress:
    """The memo cannot know of a terminate or timeout: the execution status decides then."""
    completed_at = progress.completed_at or (iso_utc(closed) if closed else None)
    error_type = STOPPED_FROM_OUTSIDE.get(status) if status else None
    if error_type is not None and progress.status not in Status.TERMINAL:
        message, error = stopped(progress.filename, error_type, stop_reason)
        return _replace(
            progress,
            status=Status.ERROR,
            message=f"{message}; the upload can be retried",
            error_type=error_type,
            error_message=error,
            completed_at=completed_at,
        )
    if status is WorkflowExecutionStatus.CANCELED and progress.status != Status.CANCELLED:
        return _replace(
            progress,
            status=Status.CANCELLED,
            message=f"Processing of {progress.filename} was cancelled",
            completed_at=completed_at,
        )
    if status is WorkflowExecutionStatus.FAILED and progress.status not in Status.TERMINAL:
        return _replace(
            progress,
            status=Status.ERROR,
            message=f"Processing {progress.filename} failed unexpectedly",
            completed_at=completed_at,
        )
    return progress


def _replace(progress: TaskProgress, **changes: Any) -> TaskProgress:
    return TaskProgress(**{**progress.__dict__, **changes})


def to_public(progress: TaskProgress) -> TaskStatus:
    total, embedded = progress.chunks_total, progress.chunks_embedded
    if progress.status == Status.COMPLETE:
        percent = 100.0
    else:
        percent = round(100.0 * embedded / total, 1) if total else 0.0
    return TaskStatus(
        task_id=progress.task_id,
        filename=progress.filename,
        agent_id=progress.agent_id,
        status=progress.status,
        message=progress.message,
        document_id=progress.document_id,
        started_at=progress.started_at,
        completed_at=progress.completed_at,
        stage=progress.stage,
        progress=TaskProgressCounts(chunks_total=total, chunks_embedded=embedded, percent=percent),
        error=TaskError.recorded(progress.error_type, progress.error_message),
    )


async def owned_record(session: AsyncSession, owner: uuid.UUID, task_id: str) -> Document | None:
    """The permanent record of the caller's task: its `documents` row, if it wrote one."""
    if "\x00" in task_id:  # no task id holds NUL, and PostgreSQL refuses it in a query
        return None
    document: Document | None = await session.scalar(
        select(Document).where(Document.task_id == task_id, Document.owner_id == owner)
    )
    return document


def record_status(document: Document) -> TaskStatus:
    """The status of a task as its `documents` row tells it, in the workflow's words. The row
    is written when the task ends: its stage is `done`, and when the task started is not
    known (`started_at` is null)."""
    complete = document.status == Status.COMPLETE
    # A cancel is no error: the workflow says none. The row keeps its reason for the message.
    error = None if document.status == Status.CANCELLED else document.error_type
    status = to_public(
        TaskProgress(
            task_id=document.task_id,
            filename=document.filename,
            agent_id=str(document.agent_id),
            status=document.status,
            message=_recorded_message(document),
            stage=Stage.DONE,
            started_at="",
            completed_at=iso_utc(document.updated_at),
            document_id=str(document.id) if complete else None,
            chunks_total=document.chunk_count,
            chunks_embedded=document.chunk_count,
            error_type=error,
            error_message=document.error_message,
        )
    )
    return status.model_copy(update={"started_at": None})


def _recorded_message(document: Document) -> str:
    name, reason = document.filename, document.error_message
    if document.status == Status.COMPLETE:
        return f"Successfully processed {name}"
    if document.status == Status.FAILED:
        return f"Failed to process {name}: {reason}"
    if document.status == Status.CANCELLED:
        return cancelled_message(name, reason or "")
    # A stop from outside, recorded by the staging sweep: as the task said it, less that its
    # upload can be retried (no retry can run once its workflow is gone).
    return (
        recorded_stop(name, document.error_type, reason) or f"Processing {name} stopped: {reason}"
    )
