"""Embed and store in one step, for a document whose chunks make one embed batch.

Most documents people upload are a few pages: one embed batch (`embed_activity_chunks`
chunks). For those the workflow (workflows/ingest.py) runs this activity on the embed queue
instead of `embed` then `store`: the vectors go from the model to PostgreSQL in memory, and
the document takes one activity and one workflow task fewer through the Temporal server,
whose CPU the model shares on a small machine.

The store is tried once here, for at most `STORE_ATTEMPT_LIMIT_S`. When it fails (the
database restarting, a deleted agent, a lock held past the limit...),
the vectors are written to staging as `embed` writes them and the activity still succeeds
without a `stored` result: the workflow then runs the ordinary `store` step, with the
database steps' own retries and failure messages. Running this activity twice stores each
chunk once, as `store` does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.chunk import MANIFEST, shard_starts
from activities.embed import EmbedActivities
from activities.errors import staging_missing
from activities.heartbeats import heartbeating_thread
from activities.store import RUN_ENDED, Shard, StoreActivities
from workflows.types import EMBED_AND_STORE, EmbeddedAndStored, IngestTask, StoreResult

log = logging.getLogger(__name__)

# A store of one batch takes well under a second; one stuck longer (a lock, a half-open
# connection) is given up, rolled back, and left to the `store` step, so it never holds an
# embed slot for long.
STORE_ATTEMPT_LIMIT_S = 60.0


class EmbedAndStoreActivities:
    def __init__(
        self, embed: EmbedActivities, store: StoreActivities, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.embed = embed
        self.store = store
        self.loop = loop  # the worker's loop: the store's database engine belongs to it
        self.store_limit_s = STORE_ATTEMPT_LIMIT_S

    @activity.defn(name=EMBED_AND_STORE)
    def embed_and_store(self, task: IngestTask) -> EmbeddedAndStored:
        """Embed every chunk of `task`, then store the document; see the module's docstring."""
        if _running_loop() is self.loop:
            raise RuntimeError("embed_and_store must run in a thread, not on the worker's loop")
        try:
            manifest: dict[str, Any] = self.embed.staging.read_json(task.task_id, MANIFEST)
        except FileNotFoundError as exc:
            raise staging_missing("the chunked text") from exc
        starts = shard_starts(manifest)
        shards: list[Shard] = []
        for start in starts:
            chunks = self.embed.read_shard(task.task_id, start)
            shards.append((chunks, self.embed.encode([chunk["text"] for chunk in chunks])))
        stored = self._try_store(task, manifest, shards)
        if stored is None:
            for start, (_, vectors) in zip(starts, shards, strict=True):
                self.embed.write_vectors(task.task_id, start, vectors)
        embedded = sum(len(chunks) for chunks, _ in shards)
        return EmbeddedAndStored(embedded=embedded, stored=stored)

    def _try_store(
        self, task: IngestTask, manifest: dict[str, Any], shards: list[Shard]
    ) -> StoreResult | None:
        """The store's result, or None when it failed (logged). A cancel that arrives meanwhile
        waits for the store's transaction to end, so nothing is written after the activity
        reported back (the workflow's cleanup follows that report)."""
        # The store runs on the worker's event loop; this thread waits for it, heartbeating.
        with activity.shield_thread_cancel_exception(), heartbeating_thread():
            running = asyncio.run_coroutine_threadsafe(
                self._save(task, manifest, shards, activity.info().workflow_run_id), self.loop
            )
            try:
                return running.result()
            except Exception as exc:  # the store step runs it again, and reports its failure
                if isinstance(exc, ApplicationError) and exc.type == RUN_ENDED:
                    raise  # no store step follows: the task's workflow run has ended
                log.warning(
                    "storing %s in the embed step failed (%s: %s); the store step runs next",
                    task.task_id,
                    type(exc).__name__,
                    exc,
                )
                return None

    async def _save(
        self, task: IngestTask, manifest: dict[str, Any], shards: list[Shard], run_id: str | None
    ) -> StoreResult:
        async with asyncio.timeout(self.store_limit_s):  # cancelled: the transaction rolls back
            return await self.store.save(
                task, manifest, shards, self.embed.embedding, run_id=run_id
            )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
