"""IngestDocument on the real Temporal dev server and PostgreSQL, with a fake embedder."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    RetryState,
    TimeoutError,
    TimeoutType,
)
from temporalio.worker import Replayer, Worker

from activities.chunk import MANIFEST, shard_starts
from activities.embed import EmbedActivities
from activities.errors import staging_missing
from activities.store import StoreActivities
from core.db import create_engine, create_sessionmaker
from core.formats import DocumentFormat
from core.models import Chunk, Document
from core.settings import Settings
from core.staging import ORIGINAL, StagingStore
from tests.documents import lorem, make_pdf
from tests.support import (
    FakeEmbedder,
    Stack,
    Tenant,
    chunks_stored,
    local_activity_markers,
    running_workers,
    stack_settings,
    unreachable_database_url,
    workers_running,
)
from worker.main import EXECUTOR_THREADS, Role, build_workers
from workflows.ingest import NOT_REGISTERED, IngestDocument, _describe_failure
from workflows.types import (
    CHUNK,
    CLEANUP,
    EMBED,
    EMBED_AND_STORE,
    EXTRACT,
    EXTRACT_AND_CHUNK,
    RECORD_OUTCOME,
    STORE,
    EmbeddedAndStored,
    IngestTask,
    Stage,
    Status,
    TaskProgress,
)

# A document ingested by the release before the short steps became local activities.
HISTORY_BEFORE_LOCAL_STEPS = Path(__file__).parent / "histories/ingest-before-local-steps.json"
# A text document ingested by the release with local short steps, before a small file's
# extract and chunk became one step.
HISTORY_LOCAL_STEPS = Path(__file__).parent / "histories/ingest-local-steps.json"
# A text document of one embed batch ingested by the release with one local step for its
# extract and chunk, before such a document was embedded and stored by one activity.
HISTORY_QUICK_STEPS = Path(__file__).parent / "histories/ingest-quick-steps.json"
# A one-batch document whose `embed_and_store` reached an embed worker without that activity,
# on the release before the fallback: five attempts, then the task ended `error`.
HISTORY_NOT_REGISTERED = (
    Path(__file__).parent / "histories/ingest-embed-and-store-not-registered.json"
)
# A one-batch document cancelled while `embed_and_store` ran, which then raised a retryable
# error, on the release before a failure that hid a cancel cancelled the task: it ended `error`.
HISTORY_CANCEL_HIDDEN = (
    Path(__file__).parent / "histories/ingest-cancel-hidden-by-step-failure.json"
)
# The same, but the step then completed and stored the document: on the release before, the
# task went on to `complete`, its cancel forgotten.
HISTORY_CANCEL_HIDDEN_BY_SUCCESS = (
    Path(__file__).parent / "histories/ingest-cancel-hidden-by-step-success.json"
)
# A complete task cancelled while it removed its staging: on the release before, the removal
# stopped and was not run again.
HISTORY_CLEANUP_CANCELLED = Path(__file__).parent / "histories/ingest-cleanup-cancelled.json"
# A task that said `error` (the database down) cancelled while its record waited for the
# database: on the release before, the record stopped and the task ended with no row.
HISTORY_RECORD_CANCELLED = Path(__file__).parent / "histories/ingest-record-cancelled.json"


@pytest.fixture(scope="module")
async def fake_settings(stack: Stack) -> AsyncIterator[Settings]:
    """Workers with the fake embedder on task queues of their own."""
    settings = stack_settings(stack, embed_activity_chunks=4, embed_window=2)
    async with running_workers(stack, settings, FakeEmbedder()):
        yield settings


def stage(stack: Stack, settings: Settings, tenant: Tenant, data: bytes, fmt: DocumentFormat,
          filename: str) -> IngestTask:  # fmt: skip
    task_id = str(uuid.uuid4())
    stack.staging.write_bytes(task_id, ORIGINAL, data)
    return IngestTask(
        task_id=task_id,
        owner_id=str(tenant.owner_id),
        agent_id=tenant.agent_id,
        filename=filename,
        format=fmt.value,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=300,
        chunk_overlap=30,
        embed_task_queue=settings.embed_task_queue,
        embed_activity_chunks=settings.embed_activity_chunks,
        embed_window=settings.embed_window,
    )


async def run_to_failure(
    stack: Stack, settings: Settings, task: IngestTask
) -> tuple[WorkflowHandle[IngestDocument, TaskProgress], ApplicationError]:
    """Run the task's workflow, which must fail; its handle and the ApplicationError it ended
    with."""
    handle = await stack.client.start_workflow(
        IngestDocument.run, task, id=task.task_id, task_queue=settings.task_queue
    )
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    return handle, cause


async def test_ingest_stores_every_chunk_once_and_cleans_staging(
    stack: Stack, fake_settings: Settings, tenant: Tenant
) -> None:
    text = lorem(120)
    task = stage(stack, fake_settings, tenant, text.encode(), DocumentFormat.TEXT, "notes.txt")
    result = await stack.client.execute_workflow(
        IngestDocument.run, task, id=task.task_id, task_queue=fake_settings.task_queue
    )
    assert result.status == Status.COMPLETE
    assert result.message == "Successfully processed notes.txt"
    assert result.chunks_total > 8  # several embed batches of 4, window 2
    assert result.chunks_embedded == result.chunks_total
    assert result.document_id is not None
    document_id = uuid.UUID(result.document_id)
    async with stack.sessionmaker() as session:
        document = await session.get(Document, document_id)
        stored = await session.scalar(
            select(func.count()).select_from(Chunk).where(Chunk.document_id == document_id)
        )
    assert document is not None
    assert document.status == Status.COMPLETE
    assert document.chunk_count == stored == result.chunks_total
    assert not stack.staging.exists(task.task_id, ORIGINAL)

    queried = await stack.client.get_workflow_handle(task.task_id).query(IngestDocument.progress)
    assert queried == result


async def test_a_one_batch_document_the_embed_step_could_not_store_is_stored_by_the_store_step(
    stack: Stack, tenant: Tenant
) -> None:
    """The embed queue's worker cannot reach the database (restarting, or apart from it): the
    document is embedded once, then stored by the ordinary store step on the main queue."""
    settings = stack_settings(stack, embed_activity_chunks=4, embed_window=2)
    nowhere = create_engine(unreachable_database_url())
    try:
        async with running_workers(stack, settings, FakeEmbedder(), create_sessionmaker(nowhere)):
            task = stage(stack, settings, tenant, lorem(3).encode(), DocumentFormat.TEXT, "a.txt")
            handle = await stack.client.start_workflow(
                IngestDocument.run, task, id=task.task_id, task_queue=settings.task_queue
            )
            result = await handle.result()
    finally:
        await nowhere.dispose()
    assert result.status == Status.COMPLETE
    assert result.message == "Successfully processed a.txt"
    assert result.chunks_embedded == result.chunks_total
    assert scheduled_activities(await handle.fetch_history()) == [EMBED_AND_STORE, STORE]
    assert result.document_id is not None
    assert await chunks_stored(stack, task.task_id) == result.chunks_total


@asynccontextmanager
async def main_workers_beside(
    stack: Stack, settings: Settings, embed_activities: list[Callable[..., Any]]
) -> AsyncIterator[None]:
    """This release's main workers, beside an embed worker of the release before that has
    only `embed_activities`."""
    with ThreadPoolExecutor(max_workers=EXECUTOR_THREADS) as executor:
        main = build_workers(
            stack.client, settings, stack.staging, stack.sessionmaker, None, executor, Role.MAIN
        )
        release_before = Worker(
            stack.client,
            task_queue=settings.embed_task_queue,
            activities=embed_activities,
            activity_executor=executor,
        )
        async with workers_running([*main, release_before]):
            yield


async def test_a_one_batch_document_on_an_embed_worker_of_the_release_before_is_still_stored(
    stack: Stack, tenant: Tenant
) -> None:
    """Main workers upgraded before the embed workers: the embed worker has no
    `embed_and_store`, so the document is embedded, then stored, as that release did, at once
    rather than after retries, and ends `complete` with each chunk stored once."""
    settings = stack_settings(stack, embed_activity_chunks=64)
    embed = EmbedActivities(stack.staging, FakeEmbedder(), settings.embedding_batch_size)
    async with main_workers_beside(stack, settings, [embed.embed]):
        task = stage(stack, settings, tenant, lorem(3).encode(), DocumentFormat.TEXT, "a.txt")
        handle = await stack.client.start_workflow(
            IngestDocument.run, task, id=task.task_id, task_queue=settings.task_queue
        )
        async with asyncio.timeout(120):  # a worker that failed to run would hang it
            result = await handle.result()
    assert result.status == Status.COMPLETE
    assert result.chunks_embedded == result.chunks_total
    history = await handle.fetch_history()
    assert scheduled_activities(history) == [EMBED_AND_STORE, EMBED, STORE]
    assert len(patch_markers(history)) == 2  # the release's, and the fallback's
    failed = [
        RetryState(event.activity_task_failed_event_attributes.retry_state)
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
    ]
    assert failed == [RetryState.NON_RETRYABLE_FAILURE]  # one attempt, no retries
    assert await chunks_stored(stack, task.task_id) == result.chunks_total
    replay = await Replayer(workflows=[IngestDocument]).replay_workflow(history)
    assert replay.replay_failure is None


async def cancelled_while_its_step_runs(
    stack: Stack, settings: Settings, task: IngestTask, began: asyncio.Event, end: asyncio.Event
) -> WorkflowHandle[IngestDocument, TaskProgress]:
    """Run the task's workflow; once its step has `began`, cancel the task, wait until the
    workflow has asked the step to stop, then let the step `end` (fail, or complete as if it
    never heard of the cancel). The task must then end `cancelled`, as the user was told;
    returns its handle."""
    handle = await stack.client.start_workflow(
        IngestDocument.run, task, id=task.task_id, task_queue=settings.task_queue
    )
    async with asyncio.timeout(120):
        await began.wait()
        await handle.cancel()
        while EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED not in {
            event.event_type async for event in handle.fetch_history_events()
        }:
            await asyncio.sleep(0.05)
        end.set()
        with pytest.raises(WorkflowFailureError) as ended:
            await handle.result()
        progress = await handle.query(IngestDocument.progress)
    assert isinstance(ended.value.cause, CancelledError)
    assert (progress.status, progress.message) == (
        Status.CANCELLED,
        f"Processing of {task.filename} was cancelled",
    )
    return handle


async def test_a_cancel_that_came_while_an_embed_worker_without_the_step_failed_it_cancels(
    stack: Stack, tenant: Tenant
) -> None:
    """The task's cancel reaches the workflow while an embed worker of the release before is
    failing `embed_and_store` (which it lacks). The failure comes back instead of the cancel:
    the task must still end `cancelled`, with nothing embedded or stored, not take the
    fallback and end `complete`."""
    settings = stack_settings(stack, embed_activity_chunks=64)
    embed = EmbedActivities(stack.staging, FakeEmbedder(), settings.embedding_batch_size)
    began, fail = asyncio.Event(), asyncio.Event()

    @activity.defn(name=EMBED_AND_STORE)
    async def lacking(task: IngestTask) -> EmbeddedAndStored:
        """Fails as the SDK fails an activity its worker lacks, once the test says so."""
        began.set()
        await fail.wait()
        raise ApplicationError(
            f"Activity function {EMBED_AND_STORE} is not registered on this worker",
            type=NOT_REGISTERED,
        )

    async with main_workers_beside(stack, settings, [embed.embed, lacking]):
        task = stage(stack, settings, tenant, lorem(3).encode(), DocumentFormat.TEXT, "a.txt")
        handle = await cancelled_while_its_step_runs(stack, settings, task, began, fail)
    history = await handle.fetch_history()
    assert scheduled_activities(history) == [EMBED_AND_STORE, RECORD_OUTCOME]
    assert await chunks_stored(stack, task.task_id) == 0
    assert not stack.staging.exists(task.task_id, ORIGINAL)
    replay = await Replayer(workflows=[IngestDocument]).replay_workflow(history)
    assert replay.replay_failure is None


def step_endings(history: WorkflowHistory) -> list[tuple[str, RetryState]]:
    """How each attempt of an activity that did not complete ended, and its retry state."""
    endings = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            state = event.activity_task_failed_event_attributes.retry_state
            endings.append(("failed", RetryState(state)))
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
            state = event.activity_task_timed_out_event_attributes.retry_state
            endings.append(("timed out", RetryState(state)))
    return endings


async def ended_cancelled_and_replays(
    stack: Stack, task: IngestTask, history: WorkflowHistory
) -> None:
    """A one-batch task whose cancel a step's end hid: cancelled, nothing stored or staged,
    one patch marker besides the release's, and its history replays."""
    assert scheduled_activities(history) == [EMBED_AND_STORE, RECORD_OUTCOME]
    assert len(patch_markers(history)) == 2  # the release's, and the hidden cancel's
    async with stack.sessionmaker() as session:
        document = await session.scalar(select(Document).where(Document.task_id == task.task_id))
    assert document is not None
    assert document.status == Status.CANCELLED
    assert await chunks_stored(stack, task.task_id) == 0
    assert not stack.staging.exists(task.task_id, ORIGINAL)
    replay = await Replayer(workflows=[IngestDocument]).replay_workflow(history)
    assert replay.replay_failure is None


@pytest.mark.parametrize("worker_dies", [False, True], ids=["step-raises", "worker-dies"])
async def test_a_cancel_that_came_while_a_step_ran_cancels_when_the_step_then_fails(
    stack: Stack, tenant: Tenant, worker_dies: bool
) -> None:
    """The task's cancel reaches the workflow while `embed_and_store` runs; the step then fails
    by itself (it raises a retryable error, or its worker dies and stops heartbeating), and the
    server, which does not retry a step whose cancel was requested, reports that failure
    instead of the cancel. The user was told "cancelling": the task must end `cancelled`, with
    nothing stored and its staging removed, not `error`."""
    settings = stack_settings(stack, embed_activity_chunks=64)
    embed = EmbedActivities(stack.staging, FakeEmbedder(), settings.embedding_batch_size)
    began, fail = asyncio.Event(), asyncio.Event()

    @activity.defn(name=EMBED_AND_STORE)
    async def failing(task: IngestTask) -> EmbeddedAndStored:
        """Fails once the test says so, without heartbeating, as a step on a dying worker."""
        began.set()
        await fail.wait()
        if worker_dies:
            await asyncio.Event().wait()  # never answers: the worker shuts it down at the end
        raise ApplicationError("the model ran out of memory")

    async with main_workers_beside(stack, settings, [embed.embed, failing]):
        task = stage(stack, settings, tenant, lorem(3).encode(), DocumentFormat.TEXT, "a.txt")
        # A lost worker is noticed after 2 s without a heartbeat.
        task = dataclasses.replace(task, heartbeat_timeout_s=2)
        handle = await cancelled_while_its_step_runs(stack, settings, task, began, fail)
    history = await handle.fetch_history()
    ending = "timed out" if worker_dies else "failed"
    assert step_endings(history) == [(ending, RetryState.CANCEL_REQUESTED)]  # one attempt
    await ended_cancelled_and_replays(stack, task, history)


async def test_a_cancel_that_came_while_a_step_ran_cancels_when_the_step_then_completes(
    stack: Stack, tenant: Tenant
) -> None:
    """The task's cancel reaches the workflow while `embed_and_store` runs, but its worker
    hears of it only at a heartbeat the SDK sends (throttled to 0.8 x the heartbeat timeout),
    so the step completes and stores the document. The user was told "cancelling": the task
    must end `cancelled` with nothing stored, not go on to `complete` (an extract that
    completed so went on to embed and store the whole document)."""
    settings = stack_settings(stack, embed_activity_chunks=64)
    embedder = FakeEmbedder()
    embed = EmbedActivities(stack.staging, embedder, settings.embedding_batch_size)
    store = StoreActivities(stack.staging, stack.sessionmaker)
    began, finish = asyncio.Event(), asyncio.Event()

    @activity.defn(name=EMBED_AND_STORE)
    async def completes_anyway(task: IngestTask) -> EmbeddedAndStored:
        """Embeds and stores, once the test says so, as a step that never heard of the cancel."""
        began.set()
        await finish.wait()
        manifest = stack.staging.read_json(task.task_id, MANIFEST)
        shards = []
        for start in shard_starts(manifest):
            chunks = embed.read_shard(task.task_id, start)
            shards.append((chunks, embedder.encode([chunk["text"] for chunk in chunks])))
        stored = await store.save(task, manifest, shards, embed.embedding)
        return EmbeddedAndStored(embedded=stored.chunks, stored=stored)

    async with main_workers_beside(stack, settings, [embed.embed, completes_anyway]):
        task = stage(stack, settings, tenant, lorem(3).encode(), DocumentFormat.TEXT, "a.txt")
        handle = await cancelled_while_its_step_runs(stack, settings, task, began, finish)
    history = await handle.fetch_history()
    await ended_cancelled_and_replays(stack, task, history)


class FirstRemovalWaitsForACancel(StagingStore):
    """A staging store whose first removal of a task is stopped by the task's cancel."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.began = threading.Event()
        self.removals = 0

    def remove_task(self, task_id: str) -> None:
        self.removals += 1
        if self.removals == 1:
            self.began.set()
            for _ in range(600):  # 30 s at most
                if activity.is_cancelled():
                    return  # stopped before it removed anything
                time.sleep(0.05)
        super().remove_task(task_id)


async def test_a_cancel_that_came_while_a_complete_task_cleaned_up_still_cleans_up(
    stack: Stack, tenant: Tenant
) -> None:
    """The task's cancel (its agent deleted, or from the Temporal UI) comes while the task,
    already `complete`, removes its staging: it stays `complete`, and its staging still goes
    now rather than at the sweep after the TTL."""
    settings = stack_settings(stack, embed_activity_chunks=64)
    staging = FirstRemovalWaitsForACancel(stack.settings.resolved_staging_url)
    with ThreadPoolExecutor(max_workers=EXECUTOR_THREADS) as executor:
        workers = [
            *build_workers(
                stack.client, settings, staging, stack.sessionmaker, None, executor, Role.MAIN
            ),
            *build_workers(
                stack.client, settings, stack.staging, stack.sessionmaker, FakeEmbedder(),
                executor, Role.EMBED,
            ),
        ]  # fmt: skip
        async with workers_running(workers):
            task = stage(stack, settings, tenant, lorem(3).encode(), DocumentFormat.TEXT, "a.txt")
            handle = await stack.client.start_workflow(
                IngestDocument.run, task, id=task.task_id, task_queue=settings.task_queue
            )
            async with asyncio.timeout(120):
                await asyncio.to_thread(staging.began.wait, 60)
                await handle.cancel()
                result = await handle.result()
    assert result.status == Status.COMPLETE
    assert staging.removals == 2
    assert not stack.staging.exists(task.task_id, ORIGINAL)
    assert await chunks_stored(stack, task.task_id) == result.chunks_total
    history = await handle.fetch_history()
    assert local_steps(history) == [EXTRACT_AND_CHUNK, CLEANUP, CLEANUP]
    replay = await Replayer(workflows=[IngestDocument]).replay_workflow(history)
    assert replay.replay_failure is None


async def staging_failure(
    stack: Stack, settings: Settings, task: IngestTask, message: str
) -> Document:
    """Run a task whose staged upload is missing or damaged: it fails as `StagingMissing` with
    `message`, its progress says the same, and its document row is returned."""
    handle, cause = await run_to_failure(stack, settings, task)
    assert (cause.type, cause.message) == ("StagingMissing", message)
    progress = await handle.query(IngestDocument.progress)
    assert (progress.status, progress.message) == (Status.ERROR, message)
    async with stack.sessionmaker() as session:
        document = await session.scalar(select(Document).where(Document.task_id == task.task_id))
    assert document is not None
    return document


async def test_a_task_whose_upload_left_staging_ends_error_and_asks_for_it_again(
    stack: Stack, fake_settings: Settings, tenant: Tenant
) -> None:
    """The staged original is gone (removed by hand, or swept): one attempt, then `error`, and
    the message does not promise a retry that `/retry` would refuse."""
    task = stage(stack, fake_settings, tenant, lorem(3).encode(), DocumentFormat.TEXT, "a.txt")
    stack.staging.remove_task(task.task_id)
    message = (
        "Processing a.txt stopped: the uploaded file is no longer in the staging store; "
        "upload it again"
    )
    document = await staging_failure(stack, fake_settings, task, message)
    assert (document.status, document.error_type) == (Status.ERROR, "StagingMissing")


@pytest.mark.parametrize("damage", ["cut short", "changed"])
async def test_a_task_whose_staged_upload_is_damaged_ends_error_and_stores_nothing(
    stack: Stack, fake_settings: Settings, tenant: Tenant, damage: str
) -> None:
    """The staged original is not what was received: cut short, or other bytes of its size
    (a host that crashed after the 202, a disk that lost a block). It was ingested as it was,
    part of the file stored `complete` and no one told; the task now ends `error` saying so."""
    data = lorem(40, seed=7).encode()
    task = stage(stack, fake_settings, tenant, data, DocumentFormat.TEXT, "a.txt")
    damaged = data[: len(data) // 2] if damage == "cut short" else data.upper()
    stack.staging.write_bytes(task.task_id, ORIGINAL, damaged)
    differs = (
        f"{len(damaged)} of its {len(data)} bytes are there"
        if damage == "cut short"
        else "its bytes differ from those received (SHA-256)"
    )
    message = (
        "Processing a.txt stopped: the uploaded file in the staging store is damaged: "
        f"{differs}; upload it again"
    )
    document = await staging_failure(stack, fake_settings, task, message)
    assert (document.status, document.chunk_count) == (Status.ERROR, 0)


async def reset_to_first_workflow_task(
    stack: Stack, handle: WorkflowHandle[IngestDocument, TaskProgress]
) -> WorkflowHandle[IngestDocument, TaskProgress]:
    """Reset the task's run as `temporal workflow reset --type FirstWorkflowTask` does; the
    handle of the run that starts from there."""
    history = await handle.fetch_history()
    first = next(
        event.event_id
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    )
    reset = await stack.client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=stack.settings.temporal_namespace,
            workflow_execution=WorkflowExecution(workflow_id=handle.id, run_id=history.run_id),
            reason="an operator's reset",
            workflow_task_finish_event_id=first,
            request_id=str(uuid.uuid4()),
        )
    )
    return stack.client.get_workflow_handle_for(IngestDocument.run, handle.id, run_id=reset.run_id)


async def test_a_complete_task_reset_to_its_first_step_keeps_its_document(
    stack: Stack, fake_settings: Settings, tenant: Tenant
) -> None:
    """An operator resets a complete task (its staging already removed): the run again finds
    the document it stored and is `complete` with it; before, it ended `error`
    (StagingMissing) and its record deleted the document's chunks."""
    task = stage(stack, fake_settings, tenant, lorem(20).encode(), DocumentFormat.TEXT, "a.txt")
    handle = await stack.client.start_workflow(
        IngestDocument.run, task, id=task.task_id, task_queue=fake_settings.task_queue
    )
    first = await handle.result()
    stored = await chunks_stored(stack, task.task_id)
    assert first.status == Status.COMPLETE and stored > 1
    again = await reset_to_first_workflow_task(stack, handle)
    async with asyncio.timeout(60):
        progress = await again.result()
    assert (progress.status, progress.document_id) == (Status.COMPLETE, first.document_id)
    assert progress.message == "Successfully processed a.txt"
    assert progress.chunks_total == progress.chunks_embedded == stored
    assert await chunks_stored(stack, task.task_id) == stored
    async with stack.sessionmaker() as session:
        document = await session.scalar(select(Document).where(Document.task_id == task.task_id))
    assert document is not None
    assert (document.status, document.chunk_count) == (Status.COMPLETE, stored)
    replay = await Replayer(workflows=[IngestDocument]).replay_workflow(await again.fetch_history())
    assert replay.replay_failure is None


async def test_a_cancel_while_a_task_missing_its_upload_looks_for_its_document_ends_cancelled(
    stack: Stack, fake_settings: Settings, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload left staging: the task asks `store` for a document an earlier run stored.
    A cancel that comes meanwhile stops that look, and the task is `cancelled`; the look's
    failure was taken for its answer, and the task ended `error` (StagingMissing)."""
    begun = asyncio.Event()
    look_up = StoreActivities._stored_by_this_task

    async def slow_look_up(self: StoreActivities, task: IngestTask) -> Any:
        begun.set()
        await asyncio.sleep(3)  # a busy database
        return await look_up(self, task)

    monkeypatch.setattr(StoreActivities, "_stored_by_this_task", slow_look_up)
    task = stage(stack, fake_settings, tenant, lorem(3).encode(), DocumentFormat.TEXT, "a.txt")
    stack.staging.remove_task(task.task_id)
    handle = await stack.client.start_workflow(
        IngestDocument.run, task, id=task.task_id, task_queue=fake_settings.task_queue
    )
    async with asyncio.timeout(30):
        await begun.wait()
    await handle.cancel()
    async with asyncio.timeout(60):
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    assert isinstance(failure.value.cause, CancelledError)
    progress = await handle.query(IngestDocument.progress)
    assert progress.status == Status.CANCELLED, progress.message
    async with stack.sessionmaker() as session:
        document = await session.scalar(select(Document).where(Document.task_id == task.task_id))
    assert document is not None and document.status == Status.CANCELLED


async def test_a_task_missing_its_upload_takes_another_tasks_copy_only_once_that_task_ended(
    stack: Stack, fake_settings: Settings, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upload of task A left staging; task B of the same bytes has committed its copy but
    still runs, and is then cancelled, which deletes the copy. A's look for a stored document
    took B's copy at once and A said `complete` with a cancelled document of no chunks; it
    now waits for B to end, as the store step does, and ends `error` with its own row."""
    data = lorem(40, seed=34).encode()
    b = stage(stack, fake_settings, tenant, data, DocumentFormat.TEXT, "b.txt")
    committed = asyncio.Event()
    save = StoreActivities.save

    async def save_then_answer_late(
        self: StoreActivities, task: IngestTask, *args: Any, **kwargs: Any
    ) -> Any:
        stored = await save(self, task, *args, **kwargs)
        if task.task_id == b.task_id:
            committed.set()
            await asyncio.sleep(8)  # B's copy is committed, B still runs
        return stored

    monkeypatch.setattr(StoreActivities, "save", save_then_answer_late)
    b_handle = await stack.client.start_workflow(
        IngestDocument.run, b, id=b.task_id, task_queue=fake_settings.task_queue
    )
    async with asyncio.timeout(60):
        await committed.wait()
    a = stage(stack, fake_settings, tenant, data, DocumentFormat.TEXT, "a.txt")
    stack.staging.remove_task(a.task_id)
    a_handle = await stack.client.start_workflow(
        IngestDocument.run, a, id=a.task_id, task_queue=fake_settings.task_queue
    )
    await asyncio.sleep(2)  # A looks meanwhile
    await b_handle.cancel()
    async with asyncio.timeout(120):
        for handle in (b_handle, a_handle):
            with pytest.raises(WorkflowFailureError):
                await handle.result()
    assert (await b_handle.query(IngestDocument.progress)).status == Status.CANCELLED
    progress = await a_handle.query(IngestDocument.progress)
    assert (progress.status, progress.error_type) == (Status.ERROR, "StagingMissing")
    async with stack.sessionmaker() as session:
        rows = (await session.execute(select(Document.task_id, Document.status))).all()
    mine = {row.task_id: row.status for row in rows if row.task_id in (a.task_id, b.task_id)}
    assert mine == {a.task_id: Status.ERROR, b.task_id: Status.CANCELLED}


@pytest.mark.parametrize(
    ("changes", "refused"),
    [
        ({"task_id": "", "agent_id": str(uuid.uuid4())}, "its task_id '' is not the workflow id"),
        ({"owner_id": "someone"}, "its owner_id 'someone' is not a UUID"),
        ({"format": "exe"}, "its format 'exe' is none of pdf, "),
    ],
    ids=["empty-task-id", "owner-not-a-uuid", "unknown-format"],
)
async def test_a_workflow_started_by_hand_with_a_bogus_task_fails_at_once(
    stack: Stack, fake_settings: Settings, tenant: Tenant, changes: dict[str, Any], refused: str
) -> None:
    """An operator starts IngestDocument by hand (`temporal workflow start --input ...`) with
    an input the API never sends: it fails at once, saying why, and touches nothing. Before,
    an empty task id removed the whole staging store (here: the other upload's original), and
    an owner or format it could not record kept the task retrying its record for a day."""
    other = stage(stack, fake_settings, tenant, lorem(3).encode(), DocumentFormat.TEXT, "a.txt")
    bogus = dataclasses.replace(other, **{"task_id": str(uuid.uuid4()), **changes})
    handle = await stack.client.start_workflow(
        IngestDocument.run,
        bogus,
        id=bogus.task_id or str(uuid.uuid4()),
        task_queue=fake_settings.task_queue,
    )
    async with asyncio.timeout(30):
        with pytest.raises(WorkflowFailureError) as failure:
            await handle.result()
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    assert cause.type == "InvalidTask" and cause.non_retryable
    assert cause.message.startswith(f"Not an upload task: {refused}")
    history = await handle.fetch_history()
    scheduled = EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    assert not local_activity_markers(history)
    assert not [event for event in history.events if event.event_type == scheduled]
    assert stack.staging.exists(other.task_id, ORIGINAL)


async def test_a_task_whose_chunked_text_left_staging_ends_error_and_can_be_retried(
    stack: Stack, tenant: Tenant
) -> None:
    """A later step's input (the chunked text) is gone but the upload may still be staged: the
    message offers the retry, which makes that input again."""
    settings = stack_settings(stack, embed_activity_chunks=64)

    @activity.defn(name=EMBED_AND_STORE)
    async def without_its_input(task: IngestTask) -> EmbeddedAndStored:
        """Fails as `embed_and_store` does when the chunks' manifest is not in staging."""
        raise staging_missing("the chunked text")

    async with main_workers_beside(stack, settings, [without_its_input]):
        task = stage(stack, settings, tenant, lorem(3).encode(), DocumentFormat.TEXT, "a.txt")
        async with asyncio.timeout(120):
            handle, cause = await run_to_failure(stack, settings, task)
            progress = await handle.query(IngestDocument.progress)
    message = (
        "Processing a.txt stopped: the chunked text is no longer in the staging store. "
        "Retry the task, or upload the file again if its upload was removed too."
    )
    assert (cause.type, cause.message) == ("StagingMissing", message)
    assert (progress.status, progress.message) == (Status.ERROR, message)
    history = await handle.fetch_history()
    assert step_endings(history) == [("failed", RetryState.NON_RETRYABLE_FAILURE)]
    assert stack.staging.exists(task.task_id, ORIGINAL)  # kept for the retry


class FailingEmbedder(FakeEmbedder):
    """A model that raises, with words of its own: a library's path, as CUDA's errors do."""

    def encode(self, texts: list[str]) -> Any:
        raise RuntimeError("CUDA error: out of memory (/opt/models/lib/libtorch_cuda.so)")


async def test_a_task_whose_database_stays_down_says_so_without_the_drivers_words(
    stack: Stack, tenant: Tenant
) -> None:
    """The user reads what failed and that a retry can help; the driver's text (the database's
    host and port, SQLAlchemy's links) stays in the failure's cause chain for operators. The
    task says so at once; its workflow ends once its record is written, the database back."""
    settings = stack_settings(stack)
    nowhere = create_engine(unreachable_database_url())
    down = dataclasses.replace(stack, sessionmaker=create_sessionmaker(nowhere))
    task = stage(stack, settings, tenant, lorem(3).encode(), DocumentFormat.TEXT, "a.txt")
    task = dataclasses.replace(task, database_attempts=2)
    handle = await stack.client.start_workflow(
        IngestDocument.run, task, id=task.task_id, task_queue=settings.task_queue
    )
    try:
        async with running_workers(down, settings, FakeEmbedder()), asyncio.timeout(120):
            while (await handle.query(IngestDocument.progress)).status != Status.ERROR:
                await asyncio.sleep(0.1)
    finally:
        await nowhere.dispose()
    async with running_workers(stack, settings, FakeEmbedder()):
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=120)
        progress = await handle.query(IngestDocument.progress)
    cause = failure.value.cause
    assert isinstance(cause, ApplicationError)
    message = (
        "Processing a.txt stopped after repeated errors: the database could not store the "
        "document (it may be unavailable). The upload is kept and can be retried."
    )
    assert cause.message == message
    assert (progress.status, progress.stage, progress.message) == (
        Status.ERROR,
        Stage.STORING,
        message,
    )
    assert (
        progress.error_message
        == "the database could not store the document (it may be unavailable)"
    )
    step = cause.__cause__
    assert isinstance(step, ActivityError) and isinstance(step.cause, ApplicationError)
    assert "Connection refused" in step.cause.message  # for operators, in the Temporal UI


async def test_a_task_whose_model_keeps_failing_says_so_without_the_models_words(
    stack: Stack, tenant: Tenant
) -> None:
    settings = stack_settings(stack)
    async with running_workers(stack, settings, FailingEmbedder()):
        task = stage(stack, settings, tenant, lorem(3).encode(), DocumentFormat.TEXT, "a.txt")
        async with asyncio.timeout(120):
            _, cause = await run_to_failure(stack, settings, task)
    assert cause.message == (
        "Processing a.txt stopped after repeated errors: the embedding model failed. "
        "The upload is kept and can be retried."
    )
    async with stack.sessionmaker() as session:
        document = await session.scalar(select(Document).where(Document.task_id == task.task_id))
    assert document is not None  # the documents list and the status after retention
    assert (document.status, document.error_message) == (
        Status.ERROR,
        "the embedding model failed",
    )


async def test_ingest_of_a_corrupt_pdf_fails_after_one_attempt(
    stack: Stack, fake_settings: Settings, tenant: Tenant
) -> None:
    broken = make_pdf(["a page that will be cut"])[:300]
    task = stage(stack, fake_settings, tenant, broken, DocumentFormat.PDF, "broken.pdf")
    handle, cause = await run_to_failure(stack, fake_settings, task)
    assert cause.type == "CorruptDocument"
    assert cause.message.startswith("Failed to process broken.pdf: the PDF is damaged")

    attempts = [
        event.activity_task_started_event_attributes.attempt
        async for event in handle.fetch_history_events()
        if event.HasField("activity_task_started_event_attributes")
    ]
    assert attempts == [1, 1]  # extract once, then record_outcome once: no retry of a bad file
    async with stack.sessionmaker() as session:
        document = await session.scalar(select(Document).where(Document.task_id == task.task_id))
    assert document is not None
    assert (document.status, document.error_type) == (Status.FAILED, "CorruptDocument")
    assert stack.staging.exists(task.task_id, ORIGINAL)  # kept so the task can be retried


@pytest.mark.parametrize(
    ("fmt", "failed_stage"),
    [(DocumentFormat.TEXT, "extracting"), (DocumentFormat.PDF, "chunking")],
)
async def test_a_document_refused_by_a_local_chunk_step_fails_with_its_reason(
    stack: Stack, fake_settings: Settings, tenant: Tenant, fmt: DocumentFormat, failed_stage: str
) -> None:
    """A local activity's failure reaches the workflow unwrapped (no ActivityError): it must
    still end the task `failed` with its type and reason, not as an unexpected error. A text
    file is extracted and chunked by one step, so it fails in the `extracting` stage; a PDF's
    chunking is a step of its own."""
    data = lorem(40).encode() if fmt is DocumentFormat.TEXT else make_pdf([lorem(40)])
    task = stage(stack, fake_settings, tenant, data, fmt, f"long.{fmt.value}")
    task = dataclasses.replace(task, max_chunks=3)
    handle, cause = await run_to_failure(stack, fake_settings, task)
    assert cause.type == "DocumentTooLarge"
    assert cause.message.startswith(f"Failed to process long.{fmt.value}: the document makes ")
    assert cause.message.endswith("over the limit of 3; split it or use a larger chunk_size")
    progress = await handle.query(IngestDocument.progress)
    assert (progress.status, progress.stage, progress.error_type) == (
        Status.FAILED,
        failed_stage,
        "DocumentTooLarge",
    )
    async with stack.sessionmaker() as session:
        document = await session.scalar(select(Document).where(Document.task_id == task.task_id))
    assert document is not None
    assert (document.status, document.error_type) == (Status.FAILED, "DocumentTooLarge")


def scheduled_activities(history: WorkflowHistory) -> list[str]:
    return [
        event.activity_task_scheduled_event_attributes.activity_type.name
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


def patch_markers(history: WorkflowHistory) -> list[HistoryEvent]:
    """The history's patch markers (a local activity's marker carries its result as data)."""
    return [
        event
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and "data" not in event.marker_recorded_event_attributes.details
    ]


def local_steps(history: WorkflowHistory) -> list[str]:
    """The activity types of the local activities the history records, in order."""
    return [marker["activity_type"] for marker in local_activity_markers(history)]


@pytest.mark.parametrize(
    ("fmt", "paragraphs", "queued", "local"),
    [
        (DocumentFormat.TEXT, 3, [EMBED_AND_STORE], [EXTRACT_AND_CHUNK, CLEANUP]),
        (DocumentFormat.PDF, 3, [EXTRACT, EMBED_AND_STORE], [CHUNK, CLEANUP]),
        (DocumentFormat.TEXT, 12, [EMBED] * 2 + [STORE], [EXTRACT_AND_CHUNK, CLEANUP]),
    ],
)
async def test_short_steps_run_locally_and_the_history_replays(
    stack: Stack,
    fake_settings: Settings,
    tenant: Tenant,
    fmt: DocumentFormat,
    paragraphs: int,
    queued: list[str],
    local: list[str],
) -> None:
    """A small text file is extracted and chunked by one local step, a PDF's extraction (slow,
    heartbeating) still goes through the task queue, a PDF's chunk and every cleanup are local;
    a document of one embed batch is embedded and stored by one activity, a longer one by its
    embed batches and then the store."""
    text = lorem(paragraphs)
    data = text.encode() if fmt is DocumentFormat.TEXT else make_pdf([text])
    task = stage(stack, fake_settings, tenant, data, fmt, f"a.{fmt.value}")
    handle = await stack.client.start_workflow(
        IngestDocument.run, task, id=task.task_id, task_queue=fake_settings.task_queue
    )
    result = await handle.result()
    assert result.status == Status.COMPLETE
    assert result.chunks_embedded == result.chunks_total
    history = await handle.fetch_history()
    assert scheduled_activities(history) == queued
    assert local_steps(history) == local
    # one patch marker, whatever the number of releases behind it
    assert len(patch_markers(history)) == 1
    await Replayer(workflows=[IngestDocument]).replay_workflow(history)
    assert await chunks_stored(stack, task.task_id) == result.chunks_total


async def test_an_empty_text_file_extracted_locally_fails_with_its_reason(
    stack: Stack, fake_settings: Settings, tenant: Tenant
) -> None:
    task = stage(stack, fake_settings, tenant, b"  \n\t ", DocumentFormat.TEXT, "blank.txt")
    _, cause = await run_to_failure(stack, fake_settings, task)
    assert (cause.type, cause.message) == (
        "EmptyDocument",
        "Failed to process blank.txt: the document contains no text",
    )


async def test_a_document_in_flight_across_the_upgrade_replays_its_old_history() -> None:
    """A worker upgraded while documents were in flight must replay their histories, in which
    every step was an ordinary activity, without a nondeterminism error."""
    history = WorkflowHistory.from_json(
        "ingest-before-local-steps", HISTORY_BEFORE_LOCAL_STEPS.read_text()
    )
    assert scheduled_activities(history) == [EXTRACT, CHUNK, EMBED, EMBED, STORE, CLEANUP]
    result = await Replayer(workflows=[IngestDocument]).replay_workflow(history)
    assert result.replay_failure is None


async def test_a_document_in_flight_across_the_quick_steps_upgrade_replays_its_history() -> None:
    """A history written with separate local extract and chunk steps still replays (the patch
    keeps it on its own release's steps)."""
    history = WorkflowHistory.from_json("ingest-local-steps", HISTORY_LOCAL_STEPS.read_text())
    assert scheduled_activities(history) == [EMBED] * 4 + [STORE]
    assert local_steps(history) == [EXTRACT, CHUNK, CLEANUP]
    result = await Replayer(workflows=[IngestDocument]).replay_workflow(history)
    assert result.replay_failure is None


async def test_a_task_ended_by_an_embed_worker_without_embed_and_store_replays_as_it_was() -> None:
    """On the release before the fallback, such a task ended `error` after five attempts; its
    history replays on this release without taking the fallback."""
    history = WorkflowHistory.from_json(
        "ingest-embed-and-store-not-registered", HISTORY_NOT_REGISTERED.read_text()
    )
    assert scheduled_activities(history) == [EMBED_AND_STORE, RECORD_OUTCOME]
    result = await Replayer(workflows=[IngestDocument]).replay_workflow(history)
    assert result.replay_failure is None


async def test_a_task_whose_step_failure_hid_its_cancel_replays_as_it_ended() -> None:
    """On the release before, a step failure that came after the task's cancel ended the task
    `error`, keeping its staging; its history replays without being cancelled instead."""
    history = WorkflowHistory.from_json(
        "ingest-cancel-hidden-by-step-failure", HISTORY_CANCEL_HIDDEN.read_text()
    )
    assert step_endings(history) == [("failed", RetryState.CANCEL_REQUESTED)]
    assert scheduled_activities(history) == [EMBED_AND_STORE, RECORD_OUTCOME]
    result = await Replayer(workflows=[IngestDocument]).replay_workflow(history)
    assert result.replay_failure is None


async def test_a_task_whose_completed_step_hid_its_cancel_replays_as_it_ended() -> None:
    history = WorkflowHistory.from_json(
        "ingest-cancel-hidden-by-step-success", HISTORY_CANCEL_HIDDEN_BY_SUCCESS.read_text()
    )
    assert scheduled_activities(history) == [EMBED_AND_STORE]
    assert history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
    result = await Replayer(workflows=[IngestDocument]).replay_workflow(history)
    assert result.replay_failure is None


async def test_a_task_whose_cleanup_was_cancelled_replays_as_it_ended() -> None:
    history = WorkflowHistory.from_json(
        "ingest-cleanup-cancelled", HISTORY_CLEANUP_CANCELLED.read_text()
    )
    assert local_steps(history) == [EXTRACT_AND_CHUNK, CLEANUP]
    result = await Replayer(workflows=[IngestDocument]).replay_workflow(history)
    assert result.replay_failure is None


async def test_a_task_whose_record_was_cancelled_replays_as_it_ended() -> None:
    history = WorkflowHistory.from_json(
        "ingest-record-cancelled", HISTORY_RECORD_CANCELLED.read_text()
    )
    assert scheduled_activities(history)[-1] == RECORD_OUTCOME
    assert history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED
    result = await Replayer(workflows=[IngestDocument]).replay_workflow(history)
    assert result.replay_failure is None


async def test_a_one_batch_document_in_flight_across_the_embed_and_store_upgrade_replays() -> None:
    """A history written with `embed` then `store` for a one-batch document still replays."""
    history = WorkflowHistory.from_json("ingest-quick-steps", HISTORY_QUICK_STEPS.read_text())
    assert scheduled_activities(history) == [EMBED, STORE]
    assert local_steps(history) == [EXTRACT_AND_CHUNK, CLEANUP]
    result = await Replayer(workflows=[IngestDocument]).replay_workflow(history)
    assert result.replay_failure is None


def test_a_local_step_that_ran_past_its_limit_is_named_by_its_stage() -> None:
    """A local step's timeout is its own (a dead worker's local step runs again elsewhere);
    an activity's may be a lost worker."""
    timeout = TimeoutError("timeout", type=TimeoutType.START_TO_CLOSE, last_heartbeat_details=[])
    assert _describe_failure(timeout, Stage.STORING) == (
        "Timeout",
        "the storing step ran past its time limit",
    )

    def lost(activity_type: str) -> ActivityError:
        failure = ActivityError(
            "activity timed out", scheduled_event_id=1, started_event_id=2, identity="w",
            activity_type=activity_type, activity_id="1", retry_state=RetryState.TIMEOUT,
        )  # fmt: skip
        failure.__cause__ = timeout
        return failure

    assert _describe_failure(lost(EXTRACT), Stage.EXTRACTING) == (
        "Timeout",
        "the extract step timed out (a worker may have died)",
    )
    # `embed_and_store` is named as people know the step.
    assert _describe_failure(lost(EMBED_AND_STORE), Stage.EMBEDDING) == (
        "Timeout",
        "the embed step timed out (a worker may have died)",
    )
