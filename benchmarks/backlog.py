"""A saturated worker: a backlog of documents ingesting while a figure measures the API.

The backlog holds more embedding work than the measurement lasts (checked afterwards: a figure
reports whether any backlog task was still running when it finished). On exit every task the
figure started is terminated and the figure waits until the worker is idle again, so the next
figure starts from the same state as the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from benchmarks.corpus import markdown_document
from benchmarks.measure import BenchmarkError
from benchmarks.stack import Stack, Tenant, api_status, upload


@dataclass
class Backlog:
    task_ids: list[str]
    # Tasks the figure itself started, terminated with the backlog.
    extra: list[str] = field(default_factory=list)
    still_running: int = 0

    async def check(self, stack: Stack) -> bool:
        """Whether the worker still had work queued (backlog or the figure's own tasks) when
        measuring ended: call it then."""
        self.still_running = await stack.running(self.task_ids + self.extra)
        return self.still_running > 0


async def wait_embedding(http: httpx.AsyncClient, tenant: Tenant, task_id: str) -> None:
    """Wait until the first backlog task is embedding: the worker is busy from then on."""
    async with asyncio.timeout(300):
        while True:
            body = await api_status(http, tenant, task_id)
            if body["stage"] in ("embedding", "storing", "done"):
                return
            if body["status"] in ("failed", "error", "cancelled"):
                raise BenchmarkError(f"backlog task {task_id} ended {body['status']}")
            await asyncio.sleep(0.2)


@asynccontextmanager
async def saturated(
    stack: Stack, http: httpx.AsyncClient, tenant: Tenant, documents: int, chunks: int, seed: int
) -> AsyncIterator[Backlog]:
    """Upload `documents` documents of about `chunks` chunks each and yield once the worker
    is embedding; terminate everything on exit and wait for the worker to go idle."""
    backlog = Backlog([])
    try:
        for index in range(documents):
            document = markdown_document(f"backlog-{seed}-{index}", chunks, seed * 100 + index)
            backlog.task_ids.append(await upload(http, tenant, document.name, document.data))
        await wait_embedding(http, tenant, backlog.task_ids[0])
        yield backlog
    finally:
        await stack.terminate(backlog.task_ids + backlog.extra)
        await stack.wait_idle()
