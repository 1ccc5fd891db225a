"""Turns on one task: requests that must not interleave on a task (the uploads of one
Idempotency-Key; a retry of a task and the delete of its document) take a PostgreSQL advisory
lock named by the task id, shared by every API process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.upload_stream import to_the_end
from core.errors import ServiceUnavailable

# How long a request waits before it asks again for its turn.
TURN_POLL_S = 0.01
# How long a retry or a document's delete waits for its task's turn: a turn is a few reads and
# a workflow start, and a retry may wait up to 5 s for the run before to close.
TURN_PATIENCE_S = 60.0


def task_busy(task_id: str) -> str:
    """The 503 of a retry, or a delete of the task's document, that waited `TURN_PATIENCE_S`."""
    return (
        f"Another retry of task {task_id}, or a delete of its document, has been in progress "
        f"for {TURN_PATIENCE_S:.0f} s; try again shortly"
    )


def turn_lock(task_id: str) -> int:
    """The advisory lock of a task id: its first 8 bytes (a hash of it for an id that is no
    UUID, which no upload has, but a path may give)."""
    try:
        key = uuid.UUID(task_id).bytes
    except ValueError:
        key = hashlib.sha256(task_id.encode()).digest()
    return int.from_bytes(key[:8], "big", signed=True)


@contextlib.asynccontextmanager
async def task_turn(
    reads: AsyncEngine, task_id: str, patience_s: float, busy: str
) -> AsyncIterator[AsyncConnection]:
    """The turn of `task_id`, on the connection that holds its lock. A request waiting for it
    holds no connection meanwhile, so turns cannot exhaust the pool; one that waited
    `patience_s` is answered 503 with `busy`."""
    lock = turn_lock(task_id)
    deadline = time.monotonic() + patience_s
    while True:
        async with reads.connect() as connection:
            if await _took_lock(connection, lock):
                try:
                    yield connection
                finally:
                    with anyio.CancelScope(shield=True):
                        await connection.execute(select(func.pg_advisory_unlock(lock)))
                return
        if time.monotonic() > deadline:
            raise ServiceUnavailable(busy)
        await asyncio.sleep(TURN_POLL_S)


async def _took_lock(connection: AsyncConnection, lock: int) -> bool:
    """Whether `pg_try_advisory_lock` took the lock on `connection`. A cancel that came while
    the server answered must not leave that unknown: a lock held by a connection back in the
    pool would keep every later request of the task waiting."""

    async def release(taken: Any) -> None:
        if taken:
            await connection.execute(select(func.pg_advisory_unlock(lock)))

    taken = await to_the_end(connection.scalar(select(func.pg_try_advisory_lock(lock))), release)
    return bool(taken)
