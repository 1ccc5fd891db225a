"""clean_staging: remove the staging folders of tasks finished (or vanished) past the TTL.

A task's folder goes once its workflow closed longer ago than the TTL, or once Temporal no
longer knows the task (retention passed, or an upload never got its workflow started) and
nothing in the folder changed within the TTL. The folder of an upload acknowledged and whose
workflow is yet to be started (a `task_starts` row: api/task_starts.py) is kept, however old.
A folder with a recent change is always kept: an upload stages its file before it starts its
workflow, and an idempotent retry stages again under the same task id, so young files mean
someone is at work there.

Before judging a folder, the sweep records the end of a task whose run was stopped from
outside (terminated, timed out) in its documents row (`activities/stopped_tasks.py`): its
workflow could not, and the row is what tells the task once Temporal forgot it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import fsspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.stopped_tasks import record_stopped, recorded_since, stopped_task
from core.models import TaskStart
from core.staging import StagingStore
from core.temporal import STOPPED_FROM_OUTSIDE
from workflows.staging_cleanup import CLEAN_STAGING, StagingCleanupResult

DESCRIBE_TIMEOUT = timedelta(seconds=10)
_UNKNOWN = (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT)


@dataclass(frozen=True)
class TaskFate:
    """Temporal's word on a folder's task: no workflow, still running, or closed at a time."""

    exists: bool
    closed_at: datetime | None = None


VANISHED = TaskFate(exists=False)


def expired(
    fate: TaskFate,
    newest_change: datetime | None,
    now: datetime,
    ttl: timedelta,
    orphan_grace: timedelta | None = None,
) -> bool:
    """Whether a task folder may go; an unknown age keeps a vanished task's folder.

    Nothing can use the folder of a task Temporal no longer knows (a retry needs the
    workflow), so it goes once untouched for `orphan_grace` (default: the TTL): that covers
    uploads that never got a 202 (an API killed mid-stream) without touching one still
    streaming into its folder.
    """
    if not fate.exists:
        grace = ttl if orphan_grace is None else orphan_grace
        return newest_change is not None and now - newest_change > grace
    if newest_change is not None and now - newest_change <= ttl:
        return False
    return fate.closed_at is not None and now - fate.closed_at > ttl


def modified_at(info: Mapping[str, Any]) -> datetime | None:
    """An fsspec entry's modification time: `mtime` locally, `LastModified` on S3."""
    value = info.get("mtime", info.get("LastModified"))
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return None


def task_folders(staging: StagingStore) -> list[str]:
    """Names of the task folders in the store, sorted; anything not named by a task id is
    not ours to judge."""
    # An object store's filesystem (s3fs) caches listings with no expiry, and the API writes
    # from another machine: each sweep lists afresh.
    staging.fs.invalidate_cache()
    names = []
    for entry in staging.fs.ls(staging.root, detail=True):
        name = str(entry["name"]).rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") == "directory" and _is_task_id(name):
            names.append(name)
    return sorted(names)


def _is_task_id(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True


def folder_files(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, Mapping[str, Any]]:
    files: dict[str, Mapping[str, Any]] = fs.find(folder, detail=True)
    return files


def newest_change(
    fs: fsspec.AbstractFileSystem, folder: str, files: Mapping[str, Mapping[str, Any]]
) -> datetime | None:
    """When the folder's newest file changed (the folder's own time when it is empty);
    None when any of them cannot tell."""
    entries = list(files.values()) or [fs.info(folder)]
    times = [modified_at(entry) for entry in entries]
    if any(moment is None for moment in times):
        return None
    return max(moment for moment in times if moment is not None)


def remove_files(fs: fsspec.AbstractFileSystem, folder: str, files: list[str]) -> None:
    """Remove the files judged, then the folders they leave empty. A file staged after the
    listing survives with its folder; one another sweep removed first is no error."""
    for path in files:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            continue
    try:
        subfolders = fs.find(folder, withdirs=True, detail=True)
    except FileNotFoundError:
        return  # another sweep removed the folder meanwhile
    empty_first = sorted(
        (path for path, info in subfolders.items() if info.get("type") == "directory"),
        key=lambda path: path.count("/"),
        reverse=True,
    )
    for path in [*empty_first, folder]:
        try:
            if fs.exists(path) and not fs.ls(path):
                fs.rmdir(path)
        except OSError:
            continue  # something was staged into it meanwhile: it stays for the next sweep


class StagingCleanupActivities:
    def __init__(
        self,
        staging: StagingStore,
        client: Client,
        sessionmaker: async_sessionmaker[AsyncSession],
        ttl: timedelta,
        orphan_grace: timedelta | None = None,
    ) -> None:
        self.staging = staging
        self.client = client
        self.sessionmaker = sessionmaker
        self.ttl = ttl
        self.orphan_grace = orphan_grace

    @activity.defn(name=CLEAN_STAGING)
    async def clean_staging(self) -> StagingCleanupResult:
        """One sweep; running it twice, or beside uploads, removes nothing it should keep."""
        now = datetime.now(UTC)
        done, kept, removed = _resumed()
        unrecorded: list[tuple[str, Exception]] = []
        # Read before Temporal is asked of any folder: a start that happens meanwhile deletes
        # its row and makes a workflow that the describe then finds. An upload queued later
        # has a young folder, which no sweep removes.
        awaiting = await self._awaiting_start()
        for name in await asyncio.to_thread(task_folders, self.staging):
            if done is not None and name <= done:
                continue  # judged by an earlier attempt of this sweep
            try:
                swept = name not in awaiting and await self._sweep(name, now)
            except UnrecordedStop as exc:
                unrecorded.append((name, exc.cause))
                swept = False
            if swept:
                removed += 1
            else:
                kept += 1
            activity.heartbeat(name, kept, removed)
        activity.logger.info("staging sweep: removed %d folders, kept %d", removed, kept)
        if unrecorded:
            raise unrecorded_stops(unrecorded)
        return StagingCleanupResult(kept=kept, removed=removed)

    async def _sweep(self, task_id: str, now: datetime) -> bool:
        """Remove one task's folder when it expired; whether it did."""
        fs, folder = self.staging.fs, self.staging.folder(task_id)
        try:
            files = await asyncio.to_thread(folder_files, fs, folder)
            changed = await asyncio.to_thread(newest_change, fs, folder, files)
        except FileNotFoundError:
            return False  # another sweep removed it meanwhile
        description = await self._describe(task_id)
        if description is not None:
            # Before its folder may go: no later sweep would see the task again.
            try:
                await self._record_if_stopped(description)
            except Exception as exc:
                # Its folder is kept, and the sweep fails once the others are judged: raised
                # here, each retry stopped at this folder, and no later one was ever swept.
                activity.logger.exception("staging sweep: task %s's end not recorded", task_id)
                raise UnrecordedStop(exc) from exc
        if not expired(fate_of(description), changed, now, self.ttl, self.orphan_grace):
            return False
        await asyncio.to_thread(remove_files, fs, folder, list(files))
        return True

    async def _awaiting_start(self) -> set[str]:
        """The tasks acknowledged whose workflow is still to be started (api/task_starts.py):
        their folders are kept, however old."""
        async with self.sessionmaker() as session:
            return set(await session.scalars(select(TaskStart.task_id)))

    async def _describe(self, task_id: str) -> WorkflowExecutionDescription | None:
        """The task's latest run; None when Temporal does not know the task."""
        handle = self.client.get_workflow_handle(task_id)
        try:
            return await handle.describe(rpc_timeout=DESCRIBE_TIMEOUT)
        except RPCError as exc:
            if exc.status in _UNKNOWN:
                return None
            raise

    async def _record_if_stopped(self, description: WorkflowExecutionDescription) -> None:
        """Write the row of a run terminated or timed out, unless written since it closed."""
        closed_at = description.close_time
        if closed_at is None or description.status not in STOPPED_FROM_OUTSIDE:
            return
        if await recorded_since(self.sessionmaker, description.id, closed_at):
            return
        stop = await stopped_task(self.client, description)
        if stop is not None:
            await record_stopped(self.sessionmaker, stop)


class UnrecordedStop(Exception):
    """The documents row of a task stopped from outside could not be written."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def unrecorded_stops(unrecorded: list[tuple[str, Exception]]) -> ApplicationError:
    """The sweep's failure once every other folder was judged: the tasks whose end could not
    be recorded (their folders kept), for the operator, and not retried before the next sweep
    (a retry resumes past them)."""
    named = "; ".join(f"{task_id}: {type(exc).__name__}: {exc}" for task_id, exc in unrecorded)
    error = ApplicationError(
        f"the end of {len(unrecorded)} stopped task(s) could not be recorded, so their staging "
        f"folders are kept until a sweep records it: {named[:2000]}",
        type="UnrecordedStop",
        non_retryable=True,
    )
    error.__cause__ = unrecorded[0][1]
    return error


def fate_of(description: WorkflowExecutionDescription | None) -> TaskFate:
    """Temporal's word on a task, from its latest run (None: Temporal does not know it)."""
    if description is None:
        return VANISHED
    if description.status is WorkflowExecutionStatus.RUNNING:
        return TaskFate(exists=True)
    return TaskFate(exists=True, closed_at=description.close_time)


def _resumed() -> tuple[str | None, int, int]:
    """Where a retried sweep picks up: the last folder judged and the counts so far."""
    details = activity.info().heartbeat_details
    if len(details) != 3:
        return None, 0, 0
    done, kept, removed = details
    return str(done), int(kept), int(removed)
