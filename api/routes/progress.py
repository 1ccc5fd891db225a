from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from temporalio.client import Client

from api.cursors import decode_cursor, encode_cursor
from api.deps import OwnerDep, ResourcesDep, TemporalDep
from api.schemas import ErrorBody, TasksPublic, TaskStatus, TaskStatusValue
from api.task_status import list_tasks
from api.temporal_errors import temporal_unavailable_as_503
from core.errors import InvalidRequest
from core.temporal import AGENT_ID, INGEST_STATUS, OWNER_ID, iso_utc
from workflows.types import WORKFLOW_NAME, Status

router = APIRouter(prefix="/api", tags=["progress"], responses={401: {"model": ErrorBody}})

# Visibility clauses per status: the execution status decides for terminated, timed-out and
# cancelled workflows, whose IngestStatus attribute could not be updated.
_STATUS_FILTERS = {
    Status.QUEUED: f"ExecutionStatus = 'Running' AND {INGEST_STATUS.name} = 'queued'",
    Status.PROCESSING: f"ExecutionStatus = 'Running' AND {INGEST_STATUS.name} = 'processing'",
    # A workflow says `complete` before its staging cleanup, the last step: still running, or
    # stopped during it, it is `complete` (as `/upload/status` answers), never `error`.
    Status.COMPLETE: (
        f"ExecutionStatus = 'Completed' OR (ExecutionStatus IN ('Running', 'Terminated', "
        f"'TimedOut') AND {INGEST_STATUS.name} = 'complete')"
    ),
    # A task that failed says so, then writes its record (until the database answers): still
    # running meanwhile, or stopped then, it is `failed` or `error` already.
    Status.FAILED: (
        f"ExecutionStatus IN ('Failed', 'Running', 'Terminated', 'TimedOut') "
        f"AND {INGEST_STATUS.name} = 'failed'"
    ),
    Status.ERROR: (
        f"(ExecutionStatus IN ('Terminated', 'TimedOut') AND ({INGEST_STATUS.name} IS NULL "
        f"OR {INGEST_STATUS.name} NOT IN ('complete', 'failed'))) OR (ExecutionStatus = "
        f"'Failed' AND {INGEST_STATUS.name} != 'failed') OR (ExecutionStatus = 'Running' "
        f"AND {INGEST_STATUS.name} = 'error')"
    ),
    Status.CANCELLED: "ExecutionStatus = 'Canceled'",
}


def visibility_query(owner: uuid.UUID, agent_id: str | None, status: str | None) -> str:
    clauses = [f"WorkflowType = '{WORKFLOW_NAME}'", f"{OWNER_ID.name} = '{owner}'"]
    if agent_id is not None:
        try:
            clauses.append(f"{AGENT_ID.name} = '{uuid.UUID(agent_id)}'")
        except ValueError as exc:
            raise InvalidRequest(f"agent_id {agent_id[:100]!r} is not a valid id") from exc
    if status is not None:
        clauses.append(f"({_STATUS_FILTERS[status]})")
    return " AND ".join(clauses)


@router.get("/progress", responses={422: {"model": ErrorBody}})
async def list_progress(
    owner: OwnerDep,
    temporal: TemporalDep,
    resources: ResourcesDep,
    agent_id: Annotated[str | None, Query(max_length=200)] = None,
    status: TaskStatusValue | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=300, description="The `next_cursor` of the page before")
    ] = None,
) -> TasksPublic:
    """The caller's upload tasks, newest first, from Temporal visibility (a snapshot at most
    DOCINGEST_PROGRESS_MAX_AGE old: see api/listing_cache.py); `cursor`: the page after."""
    query = visibility_query(owner, agent_id, status)
    after: tuple[str, str] | None = None  # the place of the page before's last task
    if cursor is not None:
        # Past a cursor, tasks of its millisecond that the page before listed are read again
        # and dropped: room for them, and a check on later runs (a task retried since the walk
        # began is at the top now, and its earlier run no longer stands for it).
        started, task_id = decode_cursor(cursor)
        after = (iso_utc(started), task_id)
        query = f"{query} AND StartTime < '{iso_utc(started + timedelta(milliseconds=1))}'"
    # One task more than the page (and its ties): a page that ends the list says so, with no
    # cursor to an empty page.
    read = limit + 1 if after is None else limit + _TIE_ROOM + 1
    filtered = status is not None or after is not None
    tasks = await resources.listings.get(
        owner, (query, read), lambda: newest_tasks(temporal, owner, query, read, filtered)
    )
    listed = [task for task in tasks if after is None or _place_of(task) < after]
    page = listed[:limit]
    more = len(tasks) == read or len(listed) > limit
    return TasksPublic(tasks=page, next_cursor=_cursor(page[-1]) if page and more else None)


# Tasks that can start in one millisecond: a batch starts up to 100.
_TIE_ROOM = 100


def _place_of(task: TaskStatus) -> tuple[str, str]:
    """Where a task stands in the newest-first order (`_newest_first`)."""
    return task.started_at or "", task.task_id


def _cursor(task: TaskStatus) -> str:
    return encode_cursor(*_place_of(task))


async def newest_tasks(
    temporal: Client, owner: uuid.UUID, query: str, limit: int, filtered: bool = False
) -> list[TaskStatus]:
    """The newest `limit` tasks the query finds; `filtered`: it selects on status, so an
    earlier run of a retried task may match it (see `list_tasks`)."""
    with temporal_unavailable_as_503("Cannot list tasks"):
        tasks = await list_tasks(temporal, owner, query, limit + 1, filtered=filtered)
        if len(tasks) > limit:
            tasks = await _newest_of_many(temporal, owner, query, limit, filtered)
    return _newest_first(tasks)[:limit]


# How many tasks beyond `limit` one read of those started since a threshold holds; a read
# that fills it raises the threshold and reads again.
NEWEST_SCAN_MAX = 1000


async def _newest_of_many(
    temporal: Client, owner: uuid.UUID, query: str, limit: int, filtered: bool
) -> list[TaskStatus]:
    """More than a page: visibility lists running workflows first, then closed ones by close
    time, and SQL visibility refuses ORDER BY. The first `limit` of each group give a start
    time that the newest `limit` all reach; every task started since then is read and sorted
    (a closed one that started later may have closed earlier than those listed first). When
    more started since than one read holds, the newest `limit` of those read give a later
    start time, and the tasks started since that one are read again: a read that stopped
    short would leave out the newest tasks that closed first."""
    groups = [
        f"{query} AND ExecutionStatus = 'Running'",
        f"{query} AND ExecutionStatus != 'Running'",
    ]
    found = await asyncio.gather(
        *(list_tasks(temporal, owner, group, limit, filtered=filtered) for group in groups)
    )
    # A retried task whose new run is running has its earlier run in the closed group.
    candidates = _newest_first(_latest_runs([task for group in found for task in group]))[:limit]
    running, closed = found
    started = [task.started_at for task in running if task.started_at]
    if len(running) == limit and started:
        # Visibility lists running workflows by start time, but those started in one
        # millisecond (a batch) in its own order, not by task id: a group read in part may
        # cut such a tie, and leave out the task that sorts first in it, which a page of one
        # then skipped for good (its cursor is past it). The cut millisecond is read whole.
        edge = min(started)
        tie = await list_tasks(
            temporal, owner, _started_in_millisecond(query, edge), _TIE_ROOM, filtered=filtered
        )
        candidates = _newest_first(_latest_runs([*candidates, *tie]))[:limit]
    # Running workflows are listed newest first: read whole or not, the group holds the newest.
    # A closed group read whole holds every closed task: no later start is left to find (one
    # more read of `limit` + 1,000 tasks, where every task ran).
    while len(candidates) == limit and len(closed) == limit:
        oldest = candidates[-1].started_at
        read = limit + NEWEST_SCAN_MAX
        since = await list_tasks(
            temporal, owner, f"{query} AND StartTime >= '{oldest}'", read, filtered=filtered
        )
        newest = _newest_first(_latest_runs([*candidates, *since]))[:limit]
        if len(since) < read or newest[-1].started_at == oldest:  # all read, or all tied
            return newest
        candidates = newest
    return candidates


def _started_in_millisecond(query: str, started_at: str) -> str:
    """The query narrowed to tasks started in the millisecond of `started_at` (ISO, ms)."""
    start = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
    end = iso_utc(start + timedelta(milliseconds=1))
    return f"{query} AND StartTime >= '{started_at}' AND StartTime < '{end}'"


def _latest_runs(tasks: list[TaskStatus]) -> list[TaskStatus]:
    """Each task once, as its latest run (the one that started last) shows it."""
    latest: dict[str, TaskStatus] = {}
    for task in tasks:
        known = latest.get(task.task_id)
        if known is None or (task.started_at or "") > (known.started_at or ""):
            latest[task.task_id] = task
    return list(latest.values())


def _newest_first(tasks: list[TaskStatus]) -> list[TaskStatus]:
    """Newest start first; tasks started in the same millisecond (a batch) by task id, so a
    page lists them in the same order every time."""
    return sorted(tasks, key=lambda task: (task.started_at or "", task.task_id), reverse=True)
