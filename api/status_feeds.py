"""A task's status looked up when it may have changed, however many followers watch it.

`/ws/upload/{task_id}` follows a task by looking at its status (a describe() on Temporal). Each
socket polled by itself: 50 sockets on one task were 200 describe() calls a second, 44 % of a
core of the Temporal dev server and 28 % of one of the API's (measured). The sockets of one
owner on one task now follow a single feed: its poller looks, from its first follower's arrival
until its last one leaves or the status is final, and keeps the latest look. Each follower
takes the looks that changed, in order; one that is slower than the changes skips to the
latest, as a socket's own loop did.

Between looks the poller waits at least one interval, then until the task may have changed
(`Changed`: the route waits for its workflow to record something new). Looking every interval
whatever happened, 100 sockets on the 100 queued tasks of a batch were 400 describe() calls a
second: 49 % of a core of the Temporal dev server and 29 % of one of the API's (measured),
taken from the embedding that would end the wait.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from api.schemas import TaskStatus
from core.errors import ServiceUnavailable
from workflows.types import Status

POLL_INTERVAL_S = 0.25

# A look at the task: its status, why it cannot be read, or None when it is not found (or is
# another owner's).
Look = TaskStatus | ServiceUnavailable | None
Poll = Callable[[], Awaitable[TaskStatus | None]]
# Returns once the task may have changed since its previous call returned (the first: at once).
Changed = Callable[[], Awaitable[None]]


def is_final(look: Look) -> bool:
    """Nothing comes after this look: the task ended, is unknown, or cannot be read."""
    return not isinstance(look, TaskStatus) or look.status in Status.TERMINAL


class Feed:
    """The looks of one poller, for its followers."""

    def __init__(self) -> None:
        self.followers = 0
        self.looks = 0  # how many changed looks were published
        self._latest: Look = None
        self._error: Exception | None = None
        self._changed = asyncio.Event()
        self.poller: asyncio.Task[None] | None = None

    async def after(self, seen: int) -> tuple[int, Look]:
        """The latest look and its number, once it is newer than look number `seen`."""
        while self.looks <= seen and self._error is None:
            await self._changed.wait()
        if self._error is not None:
            raise self._error
        return self.looks, self._latest

    def publish(self, look: Look) -> None:
        if self.looks and look == self._latest:
            return
        self._latest, self.looks = look, self.looks + 1
        self._wake()

    def fail(self, error: Exception) -> None:
        """An unexpected error: each follower raises it, as its own polling did."""
        self._error = error
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class StatusFeeds:
    """The feeds being followed, one per owner and task."""

    def __init__(self, interval_s: float = POLL_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._feeds: dict[tuple[uuid.UUID, str], Feed] = {}

    def __len__(self) -> int:
        """How many pollers run."""
        return len(self._feeds)

    @asynccontextmanager
    async def follow(
        self, owner: uuid.UUID, task_id: str, poll: Poll, changed: Changed
    ) -> AsyncIterator[Feed]:
        """The owner's feed of the task, started with `poll` and `changed` unless it runs
        already; its poller stops once the last follower leaves."""
        key = (owner, task_id)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = Feed()
            feed.poller = asyncio.create_task(self._poll(key, feed, poll, changed))
        feed.followers += 1
        try:
            yield feed
        finally:
            feed.followers -= 1
            if feed.followers == 0:
                self._forget(key, feed)
                if feed.poller is not None:
                    feed.poller.cancel()

    async def _poll(
        self, key: tuple[uuid.UUID, str], feed: Feed, poll: Poll, changed: Changed
    ) -> None:
        try:
            while True:
                look: Look
                try:
                    look = await poll()
                except ServiceUnavailable as exc:
                    look = exc
                feed.publish(look)
                if is_final(look):
                    return
                await asyncio.sleep(self.interval_s)  # a busy task: one look per interval
                await changed()
        except Exception as exc:
            feed.fail(exc)
        finally:
            # A final feed is done: whoever comes next polls afresh (and sees the final look).
            self._forget(key, feed)

    def _forget(self, key: tuple[uuid.UUID, str], feed: Feed) -> None:
        if self._feeds.get(key) is feed:
            del self._feeds[key]
