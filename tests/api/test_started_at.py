"""A task's `started_at` is its run's start, whenever a worker first takes it, in every view."""

from __future__ import annotations

import asyncio

import httpx

from tests.documents import lorem
from tests.support import (
    FakeEmbedder,
    Stack,
    Tenant,
    running_workers,
    serve,
    stack_settings,
    upload_file,
    wait_for_status,
)

FINAL = {"complete", "failed", "error", "cancelled"}


async def test_started_at_does_not_move_when_a_worker_takes_the_task_late(
    stack: Stack, tenant: Tenant
) -> None:
    settings = stack_settings(stack)  # fresh task queues: queued until a worker polls them
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        task_id = await upload_file(http, tenant, "late.txt", lorem(10, seed=7).encode())
        queued = (await http.get(f"/upload/status/{task_id}", headers=tenant.headers)).json()
        await asyncio.sleep(2)  # a backlog: no worker free for 2 s
        async with running_workers(stack, settings, FakeEmbedder()):
            done = await wait_for_status(http, tenant, task_id, FINAL)
    assert queued["status"] == "queued" and done["status"] == "complete"
    assert done["started_at"] == queued["started_at"]


async def test_progress_page_keeps_a_task_that_waited_for_a_worker(
    stack: Stack, tenant: Tenant
) -> None:
    """X is uploaded first but taken by a worker late; Y, Z, W close after X. With limit=2 the
    page must be the first two of the full list (newest started first)."""
    late, idle = stack_settings(stack), stack_settings(stack)  # nobody polls either yet
    async with (
        serve(late) as late_url,
        serve(idle) as idle_url,
        httpx.AsyncClient(base_url=late_url, timeout=60) as late_http,
        httpx.AsyncClient(base_url=idle_url, timeout=60) as http,
    ):
        x = await upload_file(late_http, tenant, "x.txt", lorem(10, seed=1).encode())
        others = [
            await upload_file(http, tenant, f"{n}.txt", lorem(10, seed=2 + n).encode())
            for n in range(3)
        ]
        await asyncio.sleep(1)
        async with running_workers(stack, late, FakeEmbedder()):
            await wait_for_status(late_http, tenant, x, {"complete"})
        for task_id in others:  # they close after x, in order of upload
            await stack.client.get_workflow_handle(task_id).terminate("test over")
        async with asyncio.timeout(10):  # visibility is eventually consistent (ms here)
            while True:
                full = (await http.get("/api/progress", headers=tenant.headers)).json()["tasks"]
                if sorted(task["status"] for task in full) == [
                    "complete",
                    "error",
                    "error",
                    "error",
                ]:
                    break
                await asyncio.sleep(0.05)
        page = (
            await http.get("/api/progress", params={"limit": 2}, headers=tenant.headers)
        ).json()["tasks"]
    assert [task["task_id"] for task in page] == [task["task_id"] for task in full][:2]
