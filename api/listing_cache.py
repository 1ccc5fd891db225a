"""Recent `/api/progress` answers, so a dashboard's polling does not wait on Temporal's list.

A visibility list costs the Temporal server a query of its store; on a busy machine it waits
for the CPU like everything else (p99 ~70 ms on the 2-core benchmark machine, 17 ms idle).
Each answer is kept per owner and query for at most `max_age` seconds. A request finding one
younger than that gets it at once, and one older than a quarter of `max_age` also starts a
single background refresh, so a client polling steadily always gets a snapshot under
`max_age` old without ever waiting on the list itself. Nobody polling: nothing runs.

Freshness: visibility is eventually consistent anyway; this adds at most `max_age`. Writes
made through this process (uploads, retries, cancels, deletes, and the start of an upload's
workflow, which follows its 202) drop the owner's snapshots at once, so a client that uploads
and then lists sees its task. `max_age` 0 turns it off.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
Fetch = Callable[[], Awaitable[T]]


@dataclass
class _Snapshot(Generic[T]):
    value: T
    taken: float
    generation: int
    refresh: asyncio.Task[None] | None = field(default=None, repr=False)


class ListingCache(Generic[T]):
    def __init__(self, max_age: float, max_entries: int = 1024) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._snapshots: OrderedDict[tuple[uuid.UUID, Hashable], _Snapshot[T]] = OrderedDict()
        self._generations: dict[uuid.UUID, int] = {}

    async def get(self, owner: uuid.UUID, query: Hashable, fetch: Fetch[T]) -> T:
        """The owner's answer to `query`: a recent snapshot, else what `fetch` returns now."""
        if self.max_age <= 0:
            return await fetch()
        key = (owner, query)
        generation = self._generations.get(owner, 0)
        snapshot = self._snapshots.get(key)
        if snapshot is not None and snapshot.generation == generation:
            age = time.monotonic() - snapshot.taken
            if age < self.max_age:
                self._snapshots.move_to_end(key)
                if age >= self.max_age / 4 and snapshot.refresh is None:
                    snapshot.refresh = asyncio.create_task(self._refresh(key, snapshot, fetch))
                return snapshot.value
        taken = time.monotonic()
        value = await fetch()
        self._store(key, _Snapshot(value, taken, generation))
        return value

    def invalidate(self, owner: uuid.UUID) -> None:
        """Forget the owner's snapshots (after a write that changes what a list shows)."""
        self._generations[owner] = self._generations.get(owner, 0) + 1
        for key in [key for key in self._snapshots if key[0] == owner]:
            self._drop(key)

    async def _refresh(
        self, key: tuple[uuid.UUID, Hashable], old: _Snapshot[T], fetch: Fetch[T]
    ) -> None:
        taken = time.monotonic()
        try:
            value = await fetch()
        except Exception:  # the next request fetches itself and reports the error
            log.warning("refreshing a task list failed", exc_info=True)
            if self._snapshots.get(key) is old:
                self._drop(key)
            return
        if self._snapshots.get(key) is old:  # not invalidated or replaced meanwhile
            self._store(key, _Snapshot(value, taken, old.generation))

    def _store(self, key: tuple[uuid.UUID, Hashable], snapshot: _Snapshot[T]) -> None:
        if snapshot.generation != self._generations.get(key[0], 0):
            return  # a write happened while this was fetched: it may predate the write
        current = self._snapshots.get(key)
        if current is not None and current.taken > snapshot.taken:
            return  # a fetch that began later answered first: this one may predate it
        self._snapshots[key] = snapshot
        self._snapshots.move_to_end(key)
        while len(self._snapshots) > self.max_entries:
            self._drop(next(iter(self._snapshots)))

    def _drop(self, key: tuple[uuid.UUID, Hashable]) -> None:
        snapshot = self._snapshots.pop(key, None)
        if snapshot is not None and snapshot.refresh is not None:
            snapshot.refresh.cancel()
