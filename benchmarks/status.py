"""Figure 4 — status: p99 latency of `GET /upload/status/{id}` and `GET /api/progress` while
documents are ingesting.

A fresh owner uploads a backlog (benchmarks/backlog.py); two clients then poll as a dashboard
would, each one request at a time with 50 ms between requests: one reads the status of the
backlog tasks in turn, the other lists the owner's tasks. Latency is measured at the client,
so it includes HTTP, the key check, and Temporal's describe() or visibility list.

Why it is fair: the target (50 ms) is absolute, and the worker is busy for the whole window
(checked: the figure reports whether backlog was still running when polling stopped), which
is when clients poll and when the API competes with the worker for the CPU.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx

from benchmarks.backlog import saturated
from benchmarks.context import Context
from benchmarks.measure import BenchmarkError, FigureResult, Target, latency_summary, percentile
from benchmarks.stack import Tenant

KEY = "status"
TITLE = "4 status latency"
PAUSE_S = 0.05
TARGET_MS = Target("<=", 50)


async def poll(
    http: httpx.AsyncClient, paths: list[str], tenant: Tenant, seconds: float
) -> list[float]:
    """GET the paths in turn, one at a time, for `seconds`; the latencies in seconds."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    for path in itertools.cycle(paths):
        if time.monotonic() >= deadline:
            break
        started = time.perf_counter()
        response = await http.get(path, headers=tenant.headers)
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise BenchmarkError(f"GET {path} answered {response.status_code}: {response.text}")
        await asyncio.sleep(PAUSE_S)
    return latencies


async def run(ctx: Context) -> FigureResult:
    result = FigureResult(KEY, TITLE)
    ctx.release_models()
    stack, sizes = ctx.stack, ctx.sizes
    tenant = await stack.new_tenant(KEY)
    async with (
        stack.http() as http,
        saturated(
            stack, http, tenant, sizes.backlog_documents, sizes.backlog_chunks, seed=41
        ) as backlog,
    ):
        status_paths = [f"/upload/status/{task_id}" for task_id in backlog.task_ids]
        status, progress = await asyncio.gather(
            poll(http, status_paths, tenant, sizes.status_seconds),
            poll(http, ["/api/progress"], tenant, sizes.status_seconds),
        )
        busy = await backlog.check(stack)
    for name, samples in (("GET /upload/status", status), ("GET /api/progress", progress)):
        result.add(f"{name} p50", percentile(samples, 0.5) * 1000, "ms")
        result.add(f"{name} p99", percentile(samples, 0.99) * 1000, "ms", TARGET_MS)
    result.details.update(
        status=latency_summary(status),
        progress=latency_summary(progress),
        tasks_listed=len(backlog.task_ids),
        ingesting_throughout=busy,
    )
    return result
