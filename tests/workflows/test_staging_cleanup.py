"""CleanStaging and its schedule on the real Temporal dev server, over a fresh staging folder
that real IngestDocument runs (production workers, fake embedder) leave behind."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio.client import (
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    WorkflowFailureError,
)
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from activities.staging_cleanup import (
    StagingCleanupActivities,
    TaskFate,
    expired,
    modified_at,
    remove_files,
)
from core.formats import DocumentFormat
from core.models import TaskStart
from core.settings import Settings
from core.staging import ORIGINAL, StagingStore
from tests.documents import lorem, make_pdf
from tests.support import FakeEmbedder, Stack, Tenant, running_workers, stack_settings
from worker.schedules import (
    STAGING_SCHEDULE_ID,
    STAGING_SWEEP_EVERY,
    ensure_staging_schedule,
    staging_schedule,
    staging_schedule_id,
)
from workflows.ingest import IngestDocument
from workflows.staging_cleanup import CleanStaging, StagingCleanupResult
from workflows.types import IngestTask, Status

TTL = timedelta(seconds=1)
LONG_AGO = time.time() - 3600


@dataclass
class Sweeper:
    """Ingest workers and a CleanStaging worker sharing one fresh staging folder."""

    ingest: Settings
    sweep: Settings
    staging: StagingStore
    root: Path

    def folder(self, task_id: str) -> Path:
        return self.root / task_id


def settings_for(stack: Stack, staging: Path) -> Settings:
    return stack_settings(stack, staging_url=str(staging), embed_activity_chunks=4)


@pytest.fixture
async def sweeper(stack: Stack, tmp_path: Path) -> AsyncIterator[Sweeper]:
    root = tmp_path / "staging"
    ingest, sweep = settings_for(stack, root), settings_for(stack, root)
    staging = StagingStore(str(root))
    own_stack = Stack(ingest, stack.client, stack.sessionmaker, staging)
    sweep_worker = Worker(
        stack.client,
        task_queue=sweep.task_queue,
        workflows=[CleanStaging],
        activities=[
            StagingCleanupActivities(staging, stack.client, stack.sessionmaker, TTL).clean_staging
        ],
    )
    async with running_workers(own_stack, ingest, FakeEmbedder()), sweep_worker:
        yield Sweeper(ingest, sweep, staging, root)


def stage(sweeper: Sweeper, tenant: Tenant, data: bytes, fmt: DocumentFormat) -> IngestTask:
    task_id = str(uuid.uuid4())
    sweeper.staging.write_bytes(task_id, ORIGINAL, data)
    return IngestTask(
        task_id=task_id,
        owner_id=str(tenant.owner_id),
        agent_id=tenant.agent_id,
        filename=f"upload.{fmt.value}",
        format=fmt.value,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=300,
        chunk_overlap=30,
        embed_task_queue=sweeper.ingest.embed_task_queue,
        embed_activity_chunks=4,
    )


def backdate(folder: Path) -> None:
    """Make every file of a folder look untouched for an hour."""
    for path in folder.rglob("*"):
        os.utime(path, (LONG_AGO, LONG_AGO))


def leave_folder(sweeper: Sweeper, task_id: str, *, old: bool) -> Path:
    """A task folder with one staged file, as an upload leaves it: untouched for an hour, or
    still being written (a change time a minute ahead, so it stays within the 1 s TTL however
    long a slow machine takes to run the sweep, retries included)."""
    sweeper.staging.write_bytes(task_id, ORIGINAL, b"staged bytes")
    if old:
        backdate(sweeper.folder(task_id))
    else:
        ahead = time.time() + 60
        os.utime(sweeper.folder(task_id) / ORIGINAL, (ahead, ahead))
    return sweeper.folder(task_id)


async def sweep(stack: Stack, sweeper: Sweeper) -> StagingCleanupResult:
    return await stack.client.execute_workflow(
        CleanStaging.run, id=f"sweep-{uuid.uuid4()}", task_queue=sweeper.sweep.task_queue
    )


async def run_ingest(stack: Stack, sweeper: Sweeper, task: IngestTask) -> str:
    """Run a real IngestDocument to its end; its final status."""
    try:
        result = await stack.client.execute_workflow(
            IngestDocument.run, task, id=task.task_id, task_queue=sweeper.ingest.task_queue
        )
    except WorkflowFailureError:
        return Status.FAILED
    return result.status


async def test_clean_staging_removes_expired_folders_and_keeps_live_ones(
    stack: Stack, sweeper: Sweeper, tenant: Tenant
) -> None:
    broken = stage(sweeper, tenant, make_pdf(["to be cut"])[:300], DocumentFormat.PDF)
    assert await run_ingest(stack, sweeper, broken) == Status.FAILED
    assert sweeper.folder(broken.task_id).joinpath(ORIGINAL).exists()  # kept for a retry
    done = stage(sweeper, tenant, lorem(20).encode(), DocumentFormat.TEXT)
    assert await run_ingest(stack, sweeper, done) == Status.COMPLETE
    assert not sweeper.folder(done.task_id).exists()  # complete cleans up after itself
    leave_folder(sweeper, done.task_id, old=True)  # as if its cleanup step had failed
    retried = stage(sweeper, tenant, lorem(5).encode(), DocumentFormat.TEXT)
    assert await run_ingest(stack, sweeper, retried) == Status.COMPLETE
    running = stage(sweeper, tenant, b"waiting", DocumentFormat.TEXT)
    await stack.client.start_workflow(
        IngestDocument.run, running, id=running.task_id, task_queue=f"nobody-{uuid.uuid4()}"
    )
    backdate(sweeper.folder(running.task_id))
    vanished_old = leave_folder(sweeper, str(uuid.uuid4()), old=True)
    not_a_task = sweeper.root / "operator-notes"
    not_a_task.mkdir()
    backdate(not_a_task)

    await asyncio.sleep(TTL.total_seconds() + 0.2)  # every closed workflow ages past the TTL
    vanished_young = leave_folder(sweeper, str(uuid.uuid4()), old=False)  # an upload staging
    leave_folder(sweeper, retried.task_id, old=False)  # an Idempotency-Key retry re-staging

    first = await sweep(stack, sweeper)
    assert first == StagingCleanupResult(kept=3, removed=3)
    assert not sweeper.folder(broken.task_id).exists()
    assert not sweeper.folder(done.task_id).exists()
    assert not vanished_old.exists()
    assert sweeper.folder(running.task_id).joinpath(ORIGINAL).exists()
    assert sweeper.folder(retried.task_id).joinpath(ORIGINAL).exists()
    assert vanished_young.joinpath(ORIGINAL).exists()
    assert not_a_task.exists()

    assert await sweep(stack, sweeper) == StagingCleanupResult(kept=3, removed=0)
    await stack.client.get_workflow_handle(running.task_id).terminate("test over")


async def test_clean_staging_sweeps_running_side_by_side_remove_each_folder(
    stack: Stack, sweeper: Sweeper
) -> None:
    expired_folders = [leave_folder(sweeper, str(uuid.uuid4()), old=True) for _ in range(20)]
    young = leave_folder(sweeper, str(uuid.uuid4()), old=False)
    results = await asyncio.gather(sweep(stack, sweeper), sweep(stack, sweeper))
    assert all(result.kept + result.removed <= 21 for result in results)
    assert sum(result.removed for result in results) >= 20
    assert not any(folder.exists() for folder in expired_folders)
    assert young.joinpath(ORIGINAL).exists()


async def test_an_upload_acknowledged_and_not_started_yet_keeps_its_folder(
    stack: Stack, sweeper: Sweeper, tenant: Tenant
) -> None:
    """An upload whose workflow waits in the outbox (api/task_starts.py: Temporal refused its
    start for an hour, say) has no workflow yet: its folder must outlive the orphan grace,
    or its start would come to a task whose file was swept."""
    task = stage(sweeper, tenant, lorem(3).encode(), DocumentFormat.TEXT)
    backdate(sweeper.folder(task.task_id))
    async with stack.sessionmaker.begin() as session:
        session.add(
            TaskStart(
                task_id=task.task_id,
                owner_id=tenant.owner_id,
                agent_id=uuid.UUID(tenant.agent_id),
                task_queue=sweeper.ingest.task_queue,
                task=dataclasses.asdict(task),
                queued_at=datetime.now(UTC) - timedelta(hours=1),
                next_attempt_at=datetime.now(UTC) + timedelta(hours=1),
            )
        )
    assert await sweep(stack, sweeper) == StagingCleanupResult(kept=1, removed=0)
    assert sweeper.folder(task.task_id).joinpath(ORIGINAL).exists()
    async with stack.sessionmaker.begin() as session:  # no start is waiting any more
        await session.delete(await session.get_one(TaskStart, task.task_id))
    assert await sweep(stack, sweeper) == StagingCleanupResult(kept=0, removed=1)


async def test_a_stopped_task_whose_end_cannot_be_recorded_keeps_its_folder_not_the_sweep(
    stack: Stack, sweeper: Sweeper
) -> None:
    """A terminated task whose row cannot be written (a workflow started by hand with a memo
    that is no task): each retry of the sweep stopped at its folder, and no folder after it
    was ever swept. Now the others are judged, its folder is kept, and the sweep fails naming
    it."""
    poisoned = f"00000000{str(uuid.uuid4())[8:]}"  # judged first: folders go in name order
    await stack.client.start_workflow(
        IngestDocument.run,
        id=poisoned,
        task_queue=f"nobody-{uuid.uuid4()}",
        memo={"task": {"filename": "hand-made.txt"}},
        args=[{"task_id": poisoned}],
    )
    await stack.client.get_workflow_handle(poisoned).terminate("test")
    kept = leave_folder(sweeper, poisoned, old=True)
    later = [f"ffffffff{str(uuid.uuid4())[8:]}" for _ in range(3)]
    expired_folders = [leave_folder(sweeper, task_id, old=True) for task_id in later]
    await asyncio.sleep(TTL.total_seconds() + 0.2)
    with pytest.raises(WorkflowFailureError) as failed:
        await sweep(stack, sweeper)
    step = failed.value.cause
    assert isinstance(step, ActivityError)
    cause = step.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "UnrecordedStop"
    assert cause.message.startswith(
        "the end of 1 stopped task(s) could not be recorded, so their staging folders are kept "
        f"until a sweep records it: {poisoned}: TypeError: "
    )
    assert kept.joinpath(ORIGINAL).exists()
    assert not any(folder.exists() for folder in expired_folders)


def test_expired_decides_from_the_workflow_and_the_folder_age() -> None:
    now = datetime.now(UTC)
    old, recent = now - timedelta(days=8), now - timedelta(hours=1)
    week = timedelta(days=7)
    running, closed_old = TaskFate(exists=True), TaskFate(exists=True, closed_at=old)
    vanished = TaskFate(exists=False)
    assert not expired(running, old, now, week)
    assert expired(closed_old, old, now, week)
    assert expired(closed_old, None, now, week)  # no file times: the close time decides
    assert not expired(closed_old, recent, now, week)  # re-staged since
    assert not expired(TaskFate(exists=True, closed_at=recent), old, now, week)
    assert expired(vanished, old, now, week)
    assert not expired(vanished, recent, now, week)
    assert not expired(vanished, None, now, week)  # age unknown: keep


def test_remove_files_of_a_folder_another_sweep_removed_first_is_no_error(tmp_path: Path) -> None:
    staging = StagingStore(str(tmp_path))
    staging.write_bytes("gone", ORIGINAL, b"staged bytes")
    listed = [str(tmp_path / "gone" / ORIGINAL)]
    remove_files(staging.fs, str(tmp_path / "gone"), listed)  # the other sweep
    remove_files(staging.fs, str(tmp_path / "gone"), listed)  # this one, a moment late
    assert not (tmp_path / "gone").exists()


def test_modified_at_reads_local_and_object_store_entries() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert modified_at({"mtime": moment.timestamp()}) == moment
    assert modified_at({"LastModified": moment}) == moment
    assert modified_at({"LastModified": moment.replace(tzinfo=None)}) == moment
    assert modified_at({"size": 3}) is None


def test_staging_schedule_id_is_per_task_queue_and_the_documented_one_by_default() -> None:
    assert staging_schedule_id(Settings()) == STAGING_SCHEDULE_ID == "docingest-staging-cleanup"
    assert staging_schedule_id(Settings(task_queue="eu")) == "docingest-staging-cleanup-eu"


async def test_ensure_staging_schedule_is_idempotent_and_trigger_runs_clean_staging(
    stack: Stack, sweeper: Sweeper
) -> None:
    await delete_schedule(stack, sweeper.sweep)
    handle = await ensure_staging_schedule(stack.client, sweeper.sweep)
    created = await handle.describe()
    action = created.schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert (action.workflow, action.task_queue) == ("CleanStaging", sweeper.sweep.task_queue)
    assert [interval.every for interval in created.schedule.spec.intervals] == [STAGING_SWEEP_EVERY]
    assert created.schedule.policy.overlap is ScheduleOverlapPolicy.SKIP
    assert "DOCINGEST_STAGING_TTL" in (await created.memo())["purpose"]
    assert "DOCINGEST_STAGING_TTL" in (created.schedule.state.note or "")

    await ensure_staging_schedule(stack.client, sweeper.sweep)  # a second worker starting
    assert (await handle.describe()).info.last_updated_at is None  # nothing to change

    await handle.pause(note="maintenance")
    # Another deployment in the namespace (its own task queue and staging) gets its own
    # schedule and leaves this one (task queue, the operator's pause) as it was.
    other = await ensure_staging_schedule(stack.client, sweeper.ingest)
    try:
        assert other.id != handle.id
        others = (await other.describe()).schedule.action
        assert isinstance(others, ScheduleActionStartWorkflow)
        assert others.task_queue == sweeper.ingest.task_queue
        kept = await handle.describe()
        assert isinstance(kept.schedule.action, ScheduleActionStartWorkflow)
        assert kept.schedule.action.task_queue == sweeper.sweep.task_queue
        assert kept.schedule.state.paused
    finally:
        await delete_schedule(stack, sweeper.ingest)
    await handle.unpause()

    vanished_old = leave_folder(sweeper, str(uuid.uuid4()), old=True)
    try:
        await handle.trigger()
        result = await triggered_result(stack, handle.id)
    finally:
        await delete_schedule(stack, sweeper.sweep)
    assert result.removed >= 1
    assert not vanished_old.exists()


async def triggered_result(stack: Stack, schedule_id: str) -> StagingCleanupResult:
    """The result of the first CleanStaging run the schedule started."""
    handle = stack.client.get_schedule_handle(schedule_id)
    async with asyncio.timeout(20):
        while True:
            if actions := (await handle.describe()).info.recent_actions:
                break
            await asyncio.sleep(0.1)
    started = actions[0].action
    assert isinstance(started, ScheduleActionExecutionStartWorkflow)
    assert started.workflow_id.startswith(STAGING_SCHEDULE_ID)
    run = stack.client.get_workflow_handle(started.workflow_id, result_type=StagingCleanupResult)
    result: StagingCleanupResult = await run.result()
    return result


async def delete_schedule(stack: Stack, settings: Settings) -> None:
    try:
        await stack.client.get_schedule_handle(staging_schedule_id(settings)).delete()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise


async def test_a_worker_on_its_own_queue_retires_the_shared_schedule_it_used_to_keep(
    stack: Stack, sweeper: Sweeper
) -> None:
    """Releases before per-queue ids kept a deployment's sweep under the shared id whatever
    its task queue; upgraded, it must not sweep twice. Another deployment's is left alone."""
    shared = Settings(task_queue=Settings.model_fields["task_queue"].default)
    assert sweeper.sweep.task_queue != shared.task_queue
    await delete_schedule(stack, shared)
    old = staging_schedule(sweeper.sweep)
    await stack.client.create_schedule(STAGING_SCHEDULE_ID, old)  # as the release before made it
    try:
        await ensure_staging_schedule(stack.client, sweeper.sweep)
        with pytest.raises(RPCError) as missing:
            await stack.client.get_schedule_handle(STAGING_SCHEDULE_ID).describe()
        assert missing.value.status == RPCStatusCode.NOT_FOUND

        await ensure_staging_schedule(stack.client, shared)  # a deployment on the default queue
        await ensure_staging_schedule(stack.client, sweeper.sweep)
        kept = (await stack.client.get_schedule_handle(STAGING_SCHEDULE_ID).describe()).schedule
        assert isinstance(kept.action, ScheduleActionStartWorkflow)
        assert kept.action.task_queue == shared.task_queue
    finally:
        await delete_schedule(stack, shared)
        await delete_schedule(stack, sweeper.sweep)
