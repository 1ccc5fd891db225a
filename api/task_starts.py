"""The outbox of workflow starts: an upload is kept when Temporal does not answer its start.

An upload (without an Idempotency-Key) starts its workflow before it is answered, as ever. When
Temporal does not answer (unreachable, or silent past the start's two deadlines), the upload is
no longer refused with a 503 and its file removed: its file is on the disk, its start is
committed to the `task_starts` table, and it is answered 202 `queued`. Then:
- the dispatcher (`TaskStarts.run`, in every API process) tries the start again, later and
  later, until it succeeds;
- a read of the task by id (`GET /upload/status`, the WebSocket, cancel, a batch's status)
  starts it at once when its next try is due, and otherwise says why it waits.

Every start of a queued task is the same idempotent call (`start_queued`): a workflow of its
id, running or closed, is its own (its id is new to this upload), so a start repeated by the
dispatcher and a read, or one whose lost answer sent the upload here, never makes a second run.

The outbox is not on every upload's path: measured, committing each upload's start there and
starting the workflow after the answer made figure 3's p50 ~10 % worse and its p99 no better
(docs/performance.md, "the outbox of starts").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api.temporal_errors import NO_ANSWER, unreachable
from api.workflow_start import start_queued_workflow
from core.db import violates
from core.errors import DocingestError, NotFound
from core.models import TaskStart
from core.temporal import iso_utc
from workflows.types import MEMO_TASK, IngestTask, task_from_memo

log = logging.getLogger(__name__)

# How often the dispatcher looks for rows due, and the most it takes at once.
DISPATCH_INTERVAL_S = 1.0
DISPATCH_BATCH = 64
# How long a claimed row is left to the dispatcher that claimed it, before any may take it.
CLAIM = timedelta(seconds=30)
# Starts in flight at once, per dispatcher round.
_PARALLEL_STARTS = 8
# The wait after a failed start doubles from FIRST_RETRY up to LAST_RETRY.
FIRST_RETRY = timedelta(seconds=1)
LAST_RETRY = timedelta(seconds=60)
_MAX_ERROR = 500
# What a start that got no answer fails with, as against a refusal.
_NO_ANSWER = NO_ANSWER | {RPCStatusCode.RESOURCE_EXHAUSTED}  # a start put off, not refused


@dataclasses.dataclass(frozen=True)
class QueuedStart:
    """A task acknowledged and not yet started: what its `task_starts` row holds."""

    task: IngestTask
    owner: uuid.UUID
    task_queue: str
    queued_at: datetime
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: datetime | None = None

    @property
    def due(self) -> bool:
        """Whether a read may start it: its next try is due. A start waits for its turn, so
        reads add no load to a Temporal that is struggling."""
        return self.next_attempt_at is None or self.next_attempt_at <= datetime.now(UTC)

    @classmethod
    def of_row(cls, row: TaskStart | Row[Any]) -> QueuedStart:
        try:  # fields of another release are left out
            task = task_from_memo({MEMO_TASK: row.task})
        except TypeError as exc:  # fields missing
            task, why = None, str(exc)
        else:
            why = "not a task"
        if task is None:
            raise ValueError(f"the outbox row of task {row.task_id} holds no task ({why})")
        return cls(
            task=task,
            owner=row.owner_id,
            task_queue=row.task_queue,
            queued_at=row.queued_at,
            attempts=row.attempts,
            last_error=row.last_error,
            next_attempt_at=row.next_attempt_at,
        )


async def queue_start(
    reads: AsyncEngine | AsyncConnection, queued: QueuedStart, error: str
) -> None:
    """Record the start that Temporal did not answer (`error`), to be tried again in a second
    (committed when this returns: `reads` autocommits)."""
    task = queued.task
    statement = insert(TaskStart).values(
        task_id=task.task_id,
        owner_id=queued.owner,
        agent_id=uuid.UUID(task.agent_id),
        task_queue=queued.task_queue,
        task=dataclasses.asdict(task),
        queued_at=queued.queued_at,
        attempts=1,
        last_error=error,
        next_attempt_at=queued.queued_at + FIRST_RETRY,
    )
    try:
        async with AsyncSession(reads) as session:  # an engine's, as the dedup query's
            await session.execute(statement)
            await session.commit()
    except IntegrityError as exc:
        if not violates(exc, "fk"):
            raise
        raise NotFound(
            f"Agent {task.agent_id} not found: it was deleted while the file was received"
        ) from exc


async def start_queued(temporal: Client, queued: QueuedStart) -> None:
    """Start the queued task's workflow, or find it started (by an earlier try whose answer
    was lost, another API process, or a read). Raises what Temporal raised when it did not
    answer, or refused."""
    await start_queued_workflow(
        temporal, queued.task_queue, queued.task, queued.owner, iso_utc(queued.queued_at)
    )


async def queued_start(session: AsyncSession, owner: uuid.UUID, task_id: str) -> QueuedStart | None:
    """The caller's task that is acknowledged and not yet started, if `task_id` is one."""
    if "\x00" in task_id:
        return None
    row = await session.scalar(
        select(TaskStart).where(TaskStart.task_id == task_id, TaskStart.owner_id == owner)
    )
    if row is None:
        return None
    try:
        return QueuedStart.of_row(row)
    except ValueError:  # put off by the dispatcher, which logged it
        return None


def expected(exc: BaseException) -> bool:
    """Whether a failed start is Temporal's answer, or its absence: no traceback to log."""
    return isinstance(exc, RPCError) or unreachable(exc)


def start_error(exc: BaseException) -> str:
    """What a failed start says, for the row and the task's status: no exception's own text,
    which is for the operator's log."""
    if isinstance(exc, RPCError):
        if exc.status in _NO_ANSWER:
            return "Temporal did not answer"
        return f"Temporal refused it: {exc.message}"[:_MAX_ERROR]
    if unreachable(exc):
        return "Temporal cannot be reached"
    if isinstance(exc, DocingestError):
        return exc.detail[:_MAX_ERROR]
    return "an unexpected error (logged)"


def is_refusal(exc: BaseException | None) -> bool:
    """Whether Temporal answered with a refusal (an unknown search attribute, a missing
    namespace), as against no answer."""
    return isinstance(exc, RPCError) and exc.status not in _NO_ANSWER


def retry_delay(attempts: int) -> timedelta:
    """The wait before the next try of a start that failed `attempts` times."""
    delay: timedelta = FIRST_RETRY * 2 ** min(attempts - 1, 16)
    return min(LAST_RETRY, delay)


async def _put_off(connection: AsyncConnection, queued: QueuedStart, exc: Exception) -> None:
    """Record a failed start in its row, and when to try it again (the row's own count of
    tries: a read and a dispatcher may both have failed it)."""
    attempts = await connection.scalar(
        update(TaskStart)
        .where(TaskStart.task_id == queued.task.task_id)
        .values(attempts=TaskStart.attempts + 1, last_error=start_error(exc))
        .returning(TaskStart.attempts)
    )
    if attempts is None:
        return  # started and deleted meanwhile, or its agent deleted
    await connection.execute(
        update(TaskStart)
        .where(TaskStart.task_id == queued.task.task_id)
        .values(next_attempt_at=now_plus(retry_delay(attempts)))
    )
    if attempts == 1 or attempts % 10 == 0:  # not a line a row a try while Temporal is away
        log.warning(
            "starting task %s failed (try %d), tried again in %s: %s",
            queued.task.task_id, attempts, retry_delay(attempts), start_error(exc),
            exc_info=not expected(exc),
        )  # fmt: skip


def now_plus(delay: timedelta) -> datetime:
    return datetime.now(UTC) + delay


class TaskStarts:
    """The dispatcher: starts the outbox's rows as they fall due (`run`)."""

    def __init__(
        self,
        temporal: Client,
        engine: AsyncEngine,
        reads: AsyncEngine,
        on_started: Callable[[uuid.UUID], None] = lambda owner: None,
    ) -> None:
        self._temporal = temporal
        self._engine = engine  # transactions: the dispatcher's claim
        self._reads = reads  # autocommit: one statement each
        self._on_started = on_started  # e.g. drop the owner's cached listings

    async def run(self) -> None:
        """The dispatcher: start every row due, for as long as the API runs."""
        failing = False
        while True:
            try:
                taken = await self.dispatch()
                failing = False
            except Exception:
                if not failing:  # once, not every second while the database is away
                    log.warning("the outbox of task starts could not be read", exc_info=True)
                failing, taken = True, 0
            if taken < DISPATCH_BATCH:
                await asyncio.sleep(DISPATCH_INTERVAL_S)

    async def dispatch(self) -> int:
        """One round: claim the rows due (rows another API process is claiming are skipped)
        by putting them off for `CLAIM`, start them with no transaction open, then delete
        the started ones and put the others off. How many it took."""
        async with self._engine.connect() as connection, connection.begin():
            rows = (
                await connection.execute(
                    select(TaskStart)
                    .where(TaskStart.next_attempt_at <= datetime.now(UTC))
                    .order_by(TaskStart.next_attempt_at)
                    .limit(DISPATCH_BATCH)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            claimed = [row.task_id for row in rows]
            await connection.execute(
                update(TaskStart)
                .where(TaskStart.task_id.in_(claimed))
                .values(next_attempt_at=now_plus(CLAIM))
            )
        try:
            await self._start_claimed(rows)
        except BaseException:
            # Stopped (the API shutting down) or failed: give the claims back, so the rows
            # wait no longer than their own turn.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                async with self._reads.connect() as connection:
                    await connection.execute(
                        update(TaskStart)
                        .where(TaskStart.task_id.in_(claimed))
                        .values(next_attempt_at=datetime.now(UTC))
                    )
            raise
        return len(rows)

    async def _start_claimed(self, rows: Sequence[Row[Any]]) -> None:
        """Start the claimed rows, delete the started ones and put the others off."""
        queued = []
        async with self._reads.connect() as connection:
            for row in rows:
                try:
                    queued.append(QueuedStart.of_row(row))
                except ValueError as exc:  # a row no release can start: put off, not blocking
                    log.error("%s", exc)
                    await connection.execute(
                        update(TaskStart)
                        .where(TaskStart.task_id == row.task_id)
                        .values(last_error=str(exc), next_attempt_at=now_plus(LAST_RETRY))
                    )
        gate = asyncio.Semaphore(_PARALLEL_STARTS)

        async def start(one: QueuedStart) -> Exception | None:
            async with gate:
                try:
                    await start_queued(self._temporal, one)
                except Exception as exc:
                    return exc
                self._on_started(one.owner)
                return None

        outcomes = await asyncio.gather(*(start(one) for one in queued))
        done = list(zip(queued, outcomes, strict=True))
        started = [one.task.task_id for one, error in done if error is None]
        async with self._reads.connect() as connection:
            if started:
                await connection.execute(delete(TaskStart).where(TaskStart.task_id.in_(started)))
            for one, error in done:
                if error is not None:
                    await _put_off(connection, one, error)
