"""Load: 200 uploads from 20 concurrent clients against one API process and one worker
process. Every task completes, exactly 200 documents, no duplicate chunks, and /health and
/upload/status keep answering (their latency percentiles are printed in the test output)."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from core.embedded import free_port
from core.models import Chunk, Document
from tests.documents import lorem
from tests.support import FIGURES, ApiProcess, Stack, WorkerProcess, new_tenant, stack_settings
from workflows.types import Status

pytestmark = pytest.mark.slow
CLIENTS = 20
UPLOADS_PER_CLIENT = 10


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def probe(http: httpx.AsyncClient, path: str, headers: dict[str, str],
                latencies: list[float], stop: asyncio.Event) -> None:  # fmt: skip
    while not stop.is_set():
        started = time.perf_counter()
        response = await http.get(path, headers=headers)
        latencies.append(time.perf_counter() - started)
        assert response.status_code == 200, response.text
        await asyncio.sleep(0.05)


async def test_load_200_uploads_from_20_clients_all_complete(stack: Stack) -> None:
    settings = stack_settings(stack, api_port=free_port())
    tenant = await new_tenant(stack, "load")
    api, worker = ApiProcess(settings), WorkerProcess(settings)
    worker.start()
    await api.start()
    limits = httpx.Limits(max_connections=CLIENTS + 4)
    try:
        async with httpx.AsyncClient(base_url=api.url, timeout=60, limits=limits) as http:
            first = await http.post(
                "/upload/agent", params={"agent_id": tenant.agent_id}, headers=tenant.headers,
                files={"file": ("probe.txt", b"the task that status probes read")},
            )  # fmt: skip
            stop = asyncio.Event()
            health: list[float] = []
            status: list[float] = []
            probes = [
                asyncio.create_task(probe(http, "/health", {}, health, stop)),
                asyncio.create_task(probe(
                    http, f"/upload/status/{first.json()['task_id']}", tenant.headers, status, stop
                )),
            ]  # fmt: skip

            async def client(number: int) -> list[str]:
                task_ids = []
                for index in range(UPLOADS_PER_CLIENT):
                    text = f"Client {number} document {index}. " + lorem(
                        8, seed=number * 50 + index
                    )
                    response = await http.post(
                        "/upload/agent",
                        params={"agent_id": tenant.agent_id},
                        headers=tenant.headers,
                        files={"file": (f"c{number}-{index}.txt", text.encode())},
                    )
                    assert response.status_code == 202, response.text
                    task_ids.append(response.json()["task_id"])
                return task_ids

            started = time.perf_counter()
            task_ids = [
                task
                for batch in await asyncio.gather(*(client(n) for n in range(CLIENTS)))
                for task in batch
            ]
            upload_seconds = time.perf_counter() - started
            finals: dict[str, Any] = {}
            async with asyncio.timeout(600):
                while len(finals) < len(task_ids):
                    for task_id in task_ids:
                        if task_id in finals:
                            continue
                        body = (
                            await http.get(f"/upload/status/{task_id}", headers=tenant.headers)
                        ).json()
                        if body["status"] in Status.TERMINAL:
                            finals[task_id] = body
                    await asyncio.sleep(0.5)
            total_seconds = time.perf_counter() - started
            stop.set()
            await asyncio.gather(*probes)
    finally:
        api.stop()
        worker.stop()

    assert {body["status"] for body in finals.values()} == {"complete"}
    assert len(task_ids) == CLIENTS * UPLOADS_PER_CLIENT
    async with stack.sessionmaker() as session:
        documents = await session.scalar(
            select(func.count())
            .select_from(Document)
            .where(
                Document.owner_id == tenant.owner_id,
                Document.task_id.in_(task_ids),
                Document.status == "complete",
            )
        )
        duplicates = await session.scalar(
            select(func.count()).select_from(
                select(Chunk.document_id, Chunk.ordinal)
                .join(Document, Document.id == Chunk.document_id)
                .where(Document.owner_id == tenant.owner_id)
                .group_by(Chunk.document_id, Chunk.ordinal)
                .having(func.count() > 1)
                .subquery()
            )
        )
    assert documents == CLIENTS * UPLOADS_PER_CLIENT
    assert duplicates == 0
    report = (
        f"load: {len(task_ids)} uploads from {CLIENTS} clients acknowledged in "
        f"{upload_seconds:.1f}s, all complete in {total_seconds:.1f}s; "
        f"/health p50 {statistics.median(health) * 1000:.0f} ms p99 "
        f"{percentile(health, 0.99) * 1000:.0f} ms ({len(health)} probes); "
        f"/upload/status p50 {statistics.median(status) * 1000:.0f} ms p99 "
        f"{percentile(status, 0.99) * 1000:.0f} ms ({len(status)} probes)"
    )
    FIGURES.append(report)
