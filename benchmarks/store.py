"""Figure 5 — store: rows/s of the store activity for 10,000 chunks (COPY into `chunks`).

A fake task is staged the way `chunk` and `embed` leave a real one (manifest, shards of
`embed_activity_chunks` chunks, one .npy of normalized float32 vectors per shard) in a staging
folder of its own, for a fresh owner and agent; then `StoreActivities.store` runs once in this
process under temporalio's ActivityEnvironment against the benchmark's PostgreSQL: it reads the
staging, upserts the document row and COPYs the rows in one transaction, with the HNSW index
(cosine) in place. The time covers the whole activity, reading the staging included.

This is an absolute figure with no target: rows/s, to compare between versions and machines.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import asdict

import numpy as np
from sqlalchemy import func, select
from temporalio.testing import ActivityEnvironment

from activities.chunk import MANIFEST, TextChunk, shard_name
from activities.embed import to_npy, vectors_name
from activities.store import StoreActivities
from api.routes.search import SearchPlan, nearest_chunks
from benchmarks.backends import agreement
from benchmarks.context import Context
from benchmarks.corpus import Prose
from benchmarks.measure import BenchmarkError, FigureResult, percentile
from benchmarks.stack import Stack, Tenant
from core.models import EMBEDDING_DIMENSION, Chunk
from core.settings import Settings
from core.staging import StagingStore
from workflows.types import IngestTask

KEY = "store"
TITLE = "5 store (COPY)"


def fake_chunks(rows: int, seed: int = 51) -> list[TextChunk]:
    """`rows` chunks of about 1000 characters with consecutive offsets."""
    prose = Prose(seed)
    distinct = [prose.plain_text(950)[:1000].strip() for _ in range(min(rows, 500))]
    chunks: list[TextChunk] = []
    offset = 0
    for ordinal in range(rows):
        text = f"{ordinal}. {distinct[ordinal % len(distinct)]}"
        chunks.append(TextChunk(text, offset, offset + len(text)))
        offset += len(text) + 2
    return chunks


def stage(staging: StagingStore, task_id: str, chunks: list[TextChunk], step: int) -> None:
    """Write what `chunk` and `embed` would have left for this task."""
    rng = np.random.default_rng(52)
    for start in range(0, len(chunks), step):
        shard = chunks[start : start + step]
        staging.write_json(task_id, shard_name(start), [asdict(chunk) for chunk in shard])
        vectors = rng.standard_normal((len(shard), EMBEDDING_DIMENSION)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        staging.write_bytes(task_id, vectors_name(start), to_npy(vectors))
    manifest = {"chunks": len(chunks), "step": step, "pages": None}
    staging.write_json(task_id, MANIFEST, manifest)


def fake_task(settings: Settings, tenant: Tenant, chunks: list[TextChunk]) -> IngestTask:
    task_id = str(uuid.uuid4())
    return IngestTask(
        task_id=task_id,
        owner_id=str(tenant.owner_id),
        agent_id=tenant.agent_id,
        filename="store-benchmark.txt",
        format="text",
        size_bytes=chunks[-1].end,
        sha256=hashlib.sha256(task_id.encode()).hexdigest(),
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
        embed_task_queue=settings.embed_task_queue,
        embed_activity_chunks=settings.embed_activity_chunks,
    )


async def count_rows(stack: Stack, document_id: str) -> int:
    async with stack.sessionmaker() as session:
        found = await session.scalar(
            select(func.count())
            .select_from(Chunk)
            .where(Chunk.document_id == uuid.UUID(document_id))
        )
    return int(found or 0)


async def run(ctx: Context) -> FigureResult:
    result = FigureResult(KEY, TITLE)
    stack, rows = ctx.stack, ctx.sizes.store_rows
    tenant = await stack.new_tenant(KEY)
    chunks = fake_chunks(rows)
    task = fake_task(stack.settings, tenant, chunks)
    staging = StagingStore(str(stack.home / "store-staging"))
    await asyncio.to_thread(stage, staging, task.task_id, chunks, task.embed_activity_chunks)
    await stack.wait_idle()
    activities = StoreActivities(staging, stack.sessionmaker)
    started = time.perf_counter()
    stored = await ActivityEnvironment().run(activities.store, task)
    seconds = time.perf_counter() - started
    if stored.chunks != rows or await count_rows(stack, stored.document_id) != rows:
        raise BenchmarkError(f"store wrote {stored.chunks} rows, expected {rows}")
    result.add("store", rows / seconds, "rows/s")
    async with stack.sessionmaker() as session:
        table_rows = await session.scalar(select(func.count()).select_from(Chunk))
    result.details.update(rows=rows, seconds=round(seconds, 3), chunks_table_rows=table_rows)
    result.details.update(await search_timings(stack, tenant))
    return result


async def search_timings(stack: Stack, tenant: Tenant, queries: int = 20) -> dict[str, float]:
    """Search of the agent just stored (its only document), both ways `nearest_chunks` can
    take: exact (every chunk compared: what search does for this agent) and through the HNSW
    index with pgvector's default budget; median ms of each, and the share of the exact top-5
    the index found."""
    rng = np.random.default_rng(53)
    vectors = rng.standard_normal((queries, EMBEDDING_DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    agent_id = uuid.UUID(tenant.agent_id)
    found: dict[str, list[set[int]]] = {"exact": [], "index": []}
    times: dict[str, list[float]] = {"exact": [], "index": []}
    for name, plan in (("exact", SearchPlan(exact=True)), ("index", SearchPlan(exact=False))):
        for vector in vectors:
            started = time.perf_counter()
            async with stack.sessionmaker.begin() as session:
                rows = await nearest_chunks(
                    session, stack.settings, tenant.owner_id, agent_id, vector, 5, plan
                )
            times[name].append(time.perf_counter() - started)
            found[name].append({row.id for row in rows})
    return {
        "search_exact_p50_ms": round(percentile(times["exact"], 0.5) * 1000, 1),
        "search_index_p50_ms": round(percentile(times["index"], 0.5) * 1000, 1),
        "search_index_top5_recall": round(agreement(found["exact"], found["index"]), 3),
    }
