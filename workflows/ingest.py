"""IngestDocument: orchestration only. Every step is an activity; this code does no I/O."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    TimeoutError,
    is_cancelled_exception,
)
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from core.formats import DocumentFormat
    from core.temporal import INGEST_STATUS, iso_utc, markdown_text
    from workflows.types import (
        CANCELLED_ON_REQUEST,
        CHUNK,
        CLEANUP,
        EMBED,
        EMBED_AND_STORE,
        EXTRACT,
        EXTRACT_AND_CHUNK,
        MEMO_PROGRESS,
        PROGRESS_QUERY,
        QUICK_EXTRACT_MAX_BYTES,
        RECORD_OUTCOME,
        STORE,
        WORKFLOW_NAME,
        ChunkResult,
        EmbedBatch,
        EmbeddedAndStored,
        EmbedResult,
        ExtractResult,
        FailureType,
        IngestTask,
        Outcome,
        Stage,
        Status,
        StoreResult,
        TaskProgress,
        already_stored,
        cancelled_message,
        chunking_of,
    )

_STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=list(FailureType.NON_RETRYABLE),
)
# On cancel, wait for a running activity to stop (at its next heartbeat) before cleaning up,
# else the cleanup races it and leaves rows or files behind.
_WAIT = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
_CLEANUP_RETRY = dataclasses.replace(_STEP_RETRY, maximum_attempts=3)
NOT_REGISTERED = "NotFoundError"  # the SDK's failure type for an activity a worker lacks
INVALID_TASK = "InvalidTask"  # a workflow started by hand with an input the API never sends
# Not retried: another try would most likely find the same worker (see the fallback patch).
_EMBED_AND_STORE_RETRY = dataclasses.replace(
    _STEP_RETRY, non_retryable_error_types=[*FailureType.NON_RETRYABLE, NOT_REGISTERED]
)
# Steps that take milliseconds run as local activities, in the workflow's own worker within
# its workflow task, instead of a round trip through the server's task queue: chunking,
# cleanup, and extracting a small text, Markdown or HTML file (a PDF or DOCX, or a large file,
# can take minutes and heartbeats, so it stays an ordinary activity). For figure 1's corpus
# that cut the Temporal server's CPU by a quarter or more and brought the first embed batch
# sooner. Workflows started before this change replay these steps as the activities they were.
LOCAL_STEPS_PATCH = "local-short-steps"
# Then (`QUICK_STEPS_PATCH`): a small text, Markdown or HTML file is extracted and chunked by
# one local step (a burst of uploads had queued every file's extraction ahead of the first
# file's chunking on the worker's two local-activity slots). `store` stays an ordinary
# activity: as a local step it took those two slots under a burst of uploads (the load test
# took 278 s instead of 126), and a store cancelled with its evicted workflow task left its
# database connection busy.
QUICK_STEPS_PATCH = "one-step-small-documents"
# Then (`EMBED_AND_STORE_PATCH`): a document whose chunks make one embed batch (most
# documents) is embedded and stored by one activity on the embed queue, one activity and one
# workflow task fewer through the server; `store` runs only if that activity could not store.
EMBED_AND_STORE_PATCH = "embed-and-store-one-batch"
# A step the workflow's cancel reached while it ran (a local step, or an activity that
# heartbeats) comes back as its failure, with a CancelledError cause: the task is `cancelled`,
# not `error`. Histories written before (where it became `error`) replay as they were.
CANCELLED_STEP_PATCH = "cancelled-step-is-cancelled"
# An embed worker of the release before `EMBED_AND_STORE_PATCH` (main workers upgraded first)
# has no `embed_and_store`: the SDK fails the task at once with NOT_REGISTERED, which that
# activity does not retry, and the document is embedded and stored as that release did.
# Histories in which such a failure ended the task replay as they were.
EMBED_AND_STORE_FALLBACK_PATCH = "embed-and-store-falls-back"
# A step the workflow's cancel reached that then failed on its own (its worker died, or it
# raised) comes back as that failure, not as a cancellation: the server does not retry a
# step whose cancel was requested. The cancel was asked for, so the task is `cancelled`, not
# `error`. Histories written before (where it became `error`) replay as they were.
CANCEL_HIDDEN_BY_FAILURE_PATCH = "cancel-hidden-by-step-failure"
# A step the workflow's cancel reached may still complete: its worker hears of the cancel only
# in the answer to a heartbeat, and the SDK sends those at most every 0.8 x heartbeat timeout
# (48 s by default), so an extract of a few seconds runs to its end and the SDK hands the
# workflow its result, the cancel forgotten. The cancel was asked for: the task stops at the
# next step, `cancelled`, instead of storing the document. Histories written before (where it
# went on to `complete`) replay as they were.
CANCEL_HIDDEN_BY_SUCCESS_PATCH = "cancel-hidden-by-step-success"
# The formats `extract` only decodes (and parses, for HTML): core.formats.DocumentFormat values.
QUICK_EXTRACT_FORMATS = frozenset({"text", "markdown", "html"})
# What a failure message calls a step whose activity name is not the one people know.
STEP_NAMES = {EMBED_AND_STORE: "embed"}
# How a step fails: an activity's failure comes wrapped in ActivityError; a local activity's
# comes as its own error (ApplicationError, or TimeoutError), unwrapped.
STEP_FAILURES = (ActivityError, ApplicationError, TimeoutError)
StepFailure = ActivityError | ApplicationError | TimeoutError
T = TypeVar("T")
# The task's cancel (its agent deleted, or from the Temporal UI) that came while its last
# step removed its staging stopped that removal and the task ended `complete` with its staging
# left until the hourly sweep: the removal now runs once more (the cancel is spent). Histories
# written before replay as they were.
CLEANUP_AFTER_CANCEL_PATCH = "cleanup-runs-again-after-cancel"


# A task that failed (`failed`, or `error`: often the database down past the steps' budget)
# first says so, then writes its documents row, the record that outlives Temporal's retention,
# trying until the database is back. Before, that write had the same budget as the step that
# had just failed, failed with it, and the task was 404 once Temporal forgot it (and never in
# the documents list). Histories written before record, then say, as they did.
OUTCOME_RECORDED_UNTIL_DONE_PATCH = "outcome-recorded-until-done"
# An operator's reset of a complete task to an earlier point (Web UI, `temporal workflow
# reset --type FirstWorkflowTask`) runs it again after its cleanup removed the staging: the
# missing upload ended it `error`, and its record replaced the stored document (its chunks
# deleted). The task now asks `store`, which finds what an earlier run stored, and is
# `complete` again with that document. Histories written before replay as they ended.
STORED_BEFORE_PATCH = "staging-missing-finds-the-stored-document"
# A workflow an operator started by hand (`temporal workflow start`, the Web UI) with an input
# the API never sends fails at once, naming what is wrong. Before, its steps ran: an owner
# that is no UUID kept its record retrying for a day, and an empty or relative task id made
# the cleanup remove the whole staging store (every upload's original) or the folder above it.
# Histories written before (none the API started are refused) replay as they were.
TASK_CHECKED_PATCH = "task-input-checked"
# The task's cancel (from the Temporal UI) that came while its record waited for the database
# stopped that record: the task ended as it had said, with no documents row (404 once Temporal
# forgot it). The record now runs once more (the cancel is spent). Histories written before
# replay as they ended.
OUTCOME_RECORDED_AFTER_CANCEL_PATCH = "outcome-recorded-after-cancel"
OUTCOME_RECORD_FOR = timedelta(days=1)
# Each try is one connection, refused at once by a database that is down; tries a minute
# apart left the row (and a retry of the task, 409 until the row is written) a minute behind
# a database that was back.
_OUTCOME_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=0,  # until OUTCOME_RECORD_FOR has passed
)


def _database_retry(task: IngestTask) -> RetryPolicy:
    """The database may be restarting: its steps keep trying for a few minutes by default."""
    return dataclasses.replace(_STEP_RETRY, maximum_attempts=max(1, task.database_attempts))


@workflow.defn(name=WORKFLOW_NAME)
class IngestDocument:
    """Extract → chunk → embed (batched, bounded window) → store → clean up."""

    @workflow.init
    def __init__(self, task: IngestTask) -> None:
        self._progress = TaskProgress.queued(task, iso_utc(workflow.info().start_time))
        self._release: int | None = None
        self._record_only_over_its_row = False

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> TaskProgress:
        return self._progress

    @workflow.run
    async def run(self, task: IngestTask) -> TaskProgress:
        refused = _not_an_upload(task, workflow.info().workflow_id)
        if refused is not None and workflow.patched(TASK_CHECKED_PATCH):
            raise ApplicationError(
                f"Not an upload task: {refused}; uploads are started by the API",
                type=INVALID_TASK,
                non_retryable=True,
            )
        try:
            await self._ingest(task)
        except STEP_FAILURES as failure:
            if _step_cancelled(failure):
                await self._cancelled(task)
                raise
            if _cancel_hidden_by(failure):
                await self._cancelled(task)
                raise asyncio.CancelledError from failure
            if await self._stored_before(task, failure):
                return self._progress
            await self._fail(task, failure)
        except asyncio.CancelledError:
            await self._cancelled(task)
            raise
        return self._progress

    async def _ingest(self, task: IngestTask) -> None:
        self._update(Status.PROCESSING, Stage.EXTRACTING, f"Processing {task.filename}...")
        release = self._steps_release()
        if release >= 2 and _quick_to_extract(task):
            chunked = await _short_step(
                EXTRACT_AND_CHUNK, task, ChunkResult, timedelta(minutes=5), local=True
            )
        else:
            if release >= 1 and _quick_to_extract(task):
                await _short_step(EXTRACT, task, ExtractResult, timedelta(minutes=2), local=True)
            else:
                await workflow.execute_activity(
                    EXTRACT,
                    task,
                    result_type=ExtractResult,
                    start_to_close_timeout=timedelta(minutes=10),
                    heartbeat_timeout=timedelta(seconds=task.heartbeat_timeout_s),
                    retry_policy=_STEP_RETRY,
                    cancellation_type=_WAIT,
                )
            _stop_if_cancelled()
            self._update(Status.PROCESSING, Stage.CHUNKING)
            chunked = await _short_step(
                CHUNK, task, ChunkResult, timedelta(minutes=5), local=release >= 1
            )
        _stop_if_cancelled()
        self._update(Status.PROCESSING, Stage.EMBEDDING, chunks_total=chunked.chunks)
        if release >= 3 and chunked.chunks <= task.embed_activity_chunks:
            stored = await self._embed_and_store(task, chunked.chunks)
        else:
            await self._embed_all(task, chunked.chunks)
            stored = await self._store(task)
        _stop_if_cancelled()
        self._complete(task, stored)
        await self._cleanup(task)

    def _complete(self, task: IngestTask, stored: StoreResult) -> None:
        message = f"Successfully processed {task.filename}"
        if stored.duplicate:
            message = f"{task.filename} is already stored for this agent; nothing new was stored"
        if stored.duplicate and stored.stored_as is not None:
            # Named by a store of this release (a recorded result of the release before
            # names no copy, so its history replays with the message above).
            kept = chunking_of(stored.stored_chunk_size, stored.stored_chunk_overlap)
            message = already_stored(
                task.filename, stored.stored_as, stored.document_id, kept,
                (task.chunk_size, task.chunk_overlap),
            )  # fmt: skip
        self._update(
            Status.COMPLETE,
            Stage.DONE,
            message,
            document_id=stored.document_id,
            duplicate=stored.duplicate,
            completed_at=iso_utc(workflow.now()),
        )

    async def _stored_before(self, task: IngestTask, failure: StepFailure) -> bool:
        """Whether an earlier run of the task stored its document, found when its upload is
        no longer staged (see `STORED_BEFORE_PATCH`); the task is then `complete` with it."""
        missing = _describe_failure(failure, self._progress.stage)[0] == FailureType.STAGING_MISSING
        if (
            not missing
            or self._progress.stage != Stage.EXTRACTING
            or not workflow.patched(STORED_BEFORE_PATCH)
        ):
            return False
        try:
            # With no staged chunks, `store` only reads: this task's complete document, or
            # the agent's copy of the same file; else it fails StagingMissing again.
            stored: StoreResult = await workflow.execute_activity(
                STORE,
                task,
                result_type=StoreResult,
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=_database_retry(task),
                cancellation_type=_WAIT,
            )
        except STEP_FAILURES as looked:
            if is_cancelled_exception(looked) or workflow.cancellation_reason() is not None:
                # The task's cancel came while it looked: it ends `cancelled`, as a step that
                # the cancel stopped does (the look's failure is not the task's).
                await self._cancelled(task)
                raise asyncio.CancelledError from looked
            # A reset run of a task whose upload is gone found no document: it had one, and it
            # was deleted since (its staging goes with it). Its record must not bring it back.
            self._record_only_over_its_row = _reset_run()
            return False
        self._progress = dataclasses.replace(
            self._progress, chunks_total=stored.chunks, chunks_embedded=stored.chunks
        )
        self._complete(task, stored)
        await self._cleanup(task)
        return True

    async def _embed_and_store(self, task: IngestTask, total: int) -> StoreResult:
        """A document of one embed batch: one activity on the embed queue embeds and stores
        it (activities/embed_and_store.py); the store step runs only if that store failed.
        An embed worker of the release before embeds it, and the store step stores it."""
        try:
            done = await _on_embed_queue(
                EMBED_AND_STORE, task, EmbeddedAndStored, task, _EMBED_AND_STORE_RETRY
            )
        except ActivityError as failure:
            if not _not_registered(failure) or not workflow.patched(EMBED_AND_STORE_FALLBACK_PATCH):
                raise
            if workflow.cancellation_reason() is not None:
                # The task's cancel came while the step failed: the failure hid it. Cancelled
                # here, before the fallback starts, as histories written since that patch
                # record (not by `CANCEL_HIDDEN_BY_FAILURE_PATCH` in `run`).
                raise asyncio.CancelledError from failure
            workflow.logger.warning(
                "an embed worker has no %s (an older release): embedding, then storing",
                EMBED_AND_STORE,
            )
            await self._embed_all(task, total)
            return await self._store(task)
        # No memo of its own: the next update (`complete`, or `storing`) mirrors the count.
        self._progress = dataclasses.replace(self._progress, chunks_embedded=done.embedded)
        if done.stored is not None:
            return done.stored
        return await self._store(task)

    async def _store(self, task: IngestTask) -> StoreResult:
        _stop_if_cancelled()
        self._update(Status.PROCESSING, Stage.STORING)
        stored: StoreResult = await workflow.execute_activity(
            STORE,
            task,
            result_type=StoreResult,
            start_to_close_timeout=timedelta(minutes=10),
            # It heartbeats: a worker lost mid-store is retried after this, not ten minutes.
            heartbeat_timeout=timedelta(seconds=task.heartbeat_timeout_s),
            retry_policy=_database_retry(task),
            cancellation_type=_WAIT,
        )
        return stored

    async def _embed_all(self, task: IngestTask, total: int) -> None:
        """Embed in batches with at most `embed_window` in flight, in order of start."""
        step = max(1, task.embed_activity_chunks)
        window = max(1, task.embed_window)
        running: list[asyncio.Task[EmbedResult]] = []  # a list: iteration order is replayed
        try:
            for start in range(0, total, step):
                if len(running) >= window:
                    running = await self._collect_one(running)
                batch = EmbedBatch(task.task_id, start, min(start + step, total))
                running.append(asyncio.ensure_future(self._embed(task, batch)))
            while running:
                running = await self._collect_one(running)
        except GeneratorExit:
            raise  # the worker evicts this workflow from its cache: nothing may be awaited
        except BaseException:
            # On failure or cancel, stop the other batches and wait until they have stopped,
            # so nothing writes to staging after the cleanup.
            for pending in running:
                pending.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            raise

    async def _collect_one(
        self, running: list[asyncio.Task[EmbedResult]]
    ) -> list[asyncio.Task[EmbedResult]]:
        done, still_running = await workflow.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for finished in done:
            embedded = finished.result().embedded
            self._update(
                Status.PROCESSING,
                Stage.EMBEDDING,
                chunks_embedded=self._progress.chunks_embedded + embedded,
            )
        return still_running

    async def _embed(self, task: IngestTask, batch: EmbedBatch) -> EmbedResult:
        return await _on_embed_queue(EMBED, batch, EmbedResult, task)

    async def _fail(self, task: IngestTask, failure: StepFailure) -> None:
        error_type, reason = _describe_failure(failure, self._progress.stage)
        if error_type in FailureType.PERMANENT:
            status = Status.FAILED
            message = f"Failed to process {task.filename}: {reason}"
        elif error_type == FailureType.AGENT_DELETED:
            status = Status.ERROR
            message = f"Processing {task.filename} stopped: {reason}"
        elif error_type == FailureType.STAGING_MISSING:
            status = Status.ERROR
            message = _staging_missing_message(task, reason, self._progress.stage)
        else:
            status = Status.ERROR
            message = (
                f"Processing {task.filename} stopped after repeated errors: {reason}. "
                "The upload is kept and can be retried."
            )
        say_it_first = workflow.patched(OUTCOME_RECORDED_UNTIL_DONE_PATCH)
        if not say_it_first:
            await self._record_outcome(task, status, error_type, reason)
        self._update(
            status,
            self._progress.stage,
            message,
            error_type=error_type,
            error_message=reason,
            completed_at=iso_utc(workflow.now()),
        )
        if say_it_first:
            await self._record_outcome(task, status, error_type, reason, until_done=True)
        raise ApplicationError(message, type=error_type, non_retryable=True) from failure

    async def _cancelled(self, task: IngestTask) -> None:
        """Remove what the task wrote, then say `cancelled`: the status is the last word. The
        reason the cancel came with (its agent deleted; an operator's, typed in the Web UI) is
        said too; the API's cancel route sends none."""
        reason = workflow.cancellation_reason() or ""
        await self._record_outcome(
            task, Status.CANCELLED, FailureType.CANCELLED, reason or CANCELLED_ON_REQUEST
        )
        await self._cleanup(task)
        self._update(
            Status.CANCELLED,
            self._progress.stage,
            cancelled_message(task.filename, reason),
            completed_at=iso_utc(workflow.now()),
        )

    async def _record_outcome(
        self, task: IngestTask, status: str, error_type: str, reason: str, until_done: bool = False
    ) -> None:
        """Write the task's end into its documents row; `until_done`: keep trying while the
        database is down, for up to `OUTCOME_RECORD_FOR` (the task already says how it ended)."""
        for _ in range(2):
            try:
                await workflow.execute_activity(
                    RECORD_OUTCOME,
                    Outcome(task, status, error_type, reason, self._record_only_over_its_row),
                    start_to_close_timeout=timedelta(minutes=1),
                    schedule_to_close_timeout=OUTCOME_RECORD_FOR if until_done else None,
                    retry_policy=_OUTCOME_RETRY if until_done else _database_retry(task),
                )
                return
            except STEP_FAILURES as failure:
                if not (
                    until_done
                    and is_cancelled_exception(failure)
                    and workflow.patched(OUTCOME_RECORDED_AFTER_CANCEL_PATCH)
                ):
                    break
        # The workflow's own failure remains the record in Temporal; the database row is a
        # convenience that can be missing when the database stayed down.
        workflow.logger.warning("could not record the outcome of %s", task.task_id)

    async def _cleanup(self, task: IngestTask) -> None:
        local = self._steps_release() >= 1
        run_step = workflow.execute_local_activity if local else workflow.execute_activity
        for _ in range(2):
            try:
                await run_step(
                    CLEANUP,
                    task.task_id,
                    start_to_close_timeout=timedelta(minutes=2),
                    retry_policy=_CLEANUP_RETRY,
                )
                return
            except STEP_FAILURES as failure:
                if not is_cancelled_exception(failure) or not workflow.patched(
                    CLEANUP_AFTER_CANCEL_PATCH
                ):
                    break
        workflow.logger.warning("could not clean up staging of %s", task.task_id)

    def _steps_release(self) -> int:
        """Which release's steps this workflow runs, from the patches its history records (a
        worker upgraded while documents were in flight replays each as it was written):
        3, a document of one embed batch embedded and stored by one activity; 2, one local
        step for a small file's extract and chunk; 1, short steps local
        (`LOCAL_STEPS_PATCH`); 0, every step an activity. Asked once, where the first step is
        chosen, so a new workflow records one patch."""
        if self._release is None:
            if workflow.patched(EMBED_AND_STORE_PATCH):
                self._release = 3
            elif workflow.patched(QUICK_STEPS_PATCH):
                self._release = 2
            else:
                self._release = 1 if workflow.patched(LOCAL_STEPS_PATCH) else 0
        return self._release

    def _update(
        self, status: str, stage: str, message: str | None = None, **counts: object
    ) -> None:
        """Change the progress object and mirror it where describe() and the UI can see it."""
        previous_status = self._progress.status
        changes: dict[str, object] = {"status": status, "stage": stage, **counts}
        if message is not None:
            changes["message"] = message
        self._progress = dataclasses.replace(self._progress, **changes)  # type: ignore[arg-type]
        workflow.upsert_memo({MEMO_PROGRESS: dataclasses.asdict(self._progress)})
        if status != previous_status:
            workflow.upsert_search_attributes([INGEST_STATUS.value_set(status)])
        workflow.set_current_details(_details(self._progress))


async def _short_step(
    activity: str, task: IngestTask, result_type: type[T], start_to_close: timedelta, local: bool
) -> T:
    """Run a step of `task` that takes milliseconds, with the steps' retry and cancellation:
    as a local activity, or as an ordinary one when replaying an older history."""
    run = workflow.execute_local_activity if local else workflow.execute_activity
    result: T = await run(
        activity,
        task,
        result_type=result_type,
        start_to_close_timeout=start_to_close,
        retry_policy=_STEP_RETRY,
        cancellation_type=_WAIT,
    )
    return result


async def _on_embed_queue(
    activity: str,
    argument: object,
    result_type: type[T],
    task: IngestTask,
    retry_policy: RetryPolicy = _STEP_RETRY,
) -> T:
    """Run an activity that embeds (it heartbeats) on the embed workers' task queue."""
    result: T = await workflow.execute_activity(
        activity,
        argument,
        result_type=result_type,
        task_queue=task.embed_task_queue,
        start_to_close_timeout=timedelta(minutes=10),
        heartbeat_timeout=timedelta(seconds=task.heartbeat_timeout_s),
        retry_policy=retry_policy,
        cancellation_type=_WAIT,
    )
    return result


def _not_registered(failure: ActivityError) -> bool:
    """Whether the activity failed because the worker that took it does not have it."""
    return isinstance(failure.cause, ApplicationError) and failure.cause.type == NOT_REGISTERED


def _step_cancelled(failure: StepFailure) -> bool:
    """Whether the step failed because the workflow was cancelled while it ran."""
    return is_cancelled_exception(failure) and workflow.patched(CANCELLED_STEP_PATCH)


def _cancel_hidden_by(failure: StepFailure) -> bool:
    """Whether the workflow's cancel came while the step ran, and the step's own failure (a
    dead worker's timeout, an error it raised) came back instead of the cancellation."""
    return (
        not is_cancelled_exception(failure)
        and workflow.cancellation_reason() is not None
        and workflow.patched(CANCEL_HIDDEN_BY_FAILURE_PATCH)
    )


def _stop_if_cancelled() -> None:
    """Stop here, `cancelled`, when the task's cancel came while a step that then completed
    ran (see `CANCEL_HIDDEN_BY_SUCCESS_PATCH`)."""
    if workflow.cancellation_reason() is not None and workflow.patched(
        CANCEL_HIDDEN_BY_SUCCESS_PATCH
    ):
        raise asyncio.CancelledError


def _not_an_upload(task: IngestTask, workflow_id: str) -> str | None:
    """Why `task` is not an upload the API started (its task id is the workflow's, and it,
    the owner and the agent are UUIDs; its format is one we read); None when it is one."""
    if task.task_id != workflow_id:
        return f"its task_id {task.task_id!r} is not the workflow id {workflow_id!r}"
    ids = (("task_id", task.task_id), ("owner_id", task.owner_id), ("agent_id", task.agent_id))
    for field, value in ids:
        try:
            uuid.UUID(value)
        except (TypeError, ValueError, AttributeError):
            return f"its {field} {value!r} is not a UUID"
    if task.format not in set(DocumentFormat):
        return f"its format {task.format!r} is none of {', '.join(DocumentFormat)}"
    return None


def _reset_run() -> bool:
    """Whether this run is an operator's reset of an earlier one (the API starts each run,
    a retry too, afresh; a reset keeps the first run's id as the original's)."""
    info = workflow.info()
    return info.run_id != info.original_execution_run_id


def _quick_to_extract(task: IngestTask) -> bool:
    """A file `extract` turns into text in milliseconds, with no page to heartbeat."""
    return task.format in QUICK_EXTRACT_FORMATS and task.size_bytes <= QUICK_EXTRACT_MAX_BYTES


def _describe_failure(failure: StepFailure, stage: str) -> tuple[str, str]:
    """The error type and a sentence a person understands, from the failure of a step
    (named by its activity, or else by the stage it failed in)."""
    cause = failure.cause if isinstance(failure, ActivityError) else failure
    if isinstance(cause, ApplicationError):
        error_type = cause.type or "ActivityError"
        if error_type in FailureType.WORDED:
            return error_type, cause.message
        return error_type, _unexpected(stage)
    if isinstance(cause, TimeoutError):
        if isinstance(failure, ActivityError):
            step = STEP_NAMES.get(failure.activity_type, failure.activity_type)
            return FailureType.TIMEOUT, f"the {step} step timed out (a worker may have died)"
        # A local step: a dead worker's is run again elsewhere, so this one ran too long.
        return FailureType.TIMEOUT, f"the {stage} step ran past its time limit"
    return "ActivityError", _unexpected(stage)


# What failed, for a step that raised an exception no code of ours worded for people. Its own
# text stays in the failure's cause chain (the Temporal UI, the worker's log) for operators.
UNEXPECTED_FAILURES = {
    Stage.EXTRACTING: "reading the file failed with an internal error",
    Stage.CHUNKING: "cutting the text into chunks failed with an internal error",
    Stage.EMBEDDING: "the embedding model failed",
    Stage.STORING: "the database could not store the document (it may be unavailable)",
}


def _unexpected(stage: str) -> str:
    return UNEXPECTED_FAILURES.get(stage, f"the {stage} step failed with an internal error")


def _staging_missing_message(task: IngestTask, reason: str, stage: str) -> str:
    """A staged file vanished (a step tried once: retrying it could not bring the file back).
    Only the extracting stage reads the uploaded file: there it is gone, and a retry of the
    task is refused. A later step's input is the task's own output: a retry makes it again,
    from the uploaded file if that is still staged."""
    if stage == Stage.EXTRACTING:
        return f"Processing {task.filename} stopped: {reason}; upload it again"
    return (
        f"Processing {task.filename} stopped: {reason}. Retry the task, or upload the file "
        "again if its upload was removed too."
    )


def _details(progress: TaskProgress) -> str:
    """The workflow's current details in the Web UI (Markdown; "3/12" would show as a
    typeset fraction there)."""
    message = markdown_text(progress.message)
    lines = [f"**{progress.status}** — {message}", f"stage: {progress.stage}"]
    if progress.chunks_total:
        lines.append(f"chunks: {progress.chunks_embedded} of {progress.chunks_total} embedded")
    return "\n\n".join(lines)
