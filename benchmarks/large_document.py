"""Figure 6 — large document: time to `complete` for one ~2,000-chunk Markdown document on the
idle stack, and the worker's peak resident memory meanwhile.

The clock runs from the upload request to the workflow's own `completed_at`. Memory is the RSS
of the worker process and its children, sampled every 0.2 s from before the upload until the
task closed; the figure also reports the RSS before the upload, so the growth a large document
causes stands apart from the model's fixed cost. Chunks/s is given next to the time so it can
be set against figure 1's raw rate: one document cannot spread its shards over several
workers here, so this is the single-worker case.
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.context import Context
from benchmarks.corpus import markdown_document
from benchmarks.measure import FigureResult
from benchmarks.stack import completed_at, require_complete, tree_rss_bytes, upload

KEY = "large_document"
TITLE = "6 large document"
MIB = 1024 * 1024
SAMPLE_S = 0.2


async def sample_peak_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    """Keep the largest RSS of the process tree in `peak[0]` until `stop` is set."""
    while not stop.is_set():
        peak[0] = max(peak[0], tree_rss_bytes(pid))
        await asyncio.sleep(SAMPLE_S)


async def run(ctx: Context) -> FigureResult:
    result = FigureResult(KEY, TITLE)
    ctx.release_models()
    stack = ctx.stack
    document = markdown_document("large-manual", ctx.sizes.large_chunks, seed=61)
    tenant = await stack.new_tenant(KEY)
    await stack.wait_idle()
    pid = stack.worker.process.pid
    baseline = tree_rss_bytes(pid)
    peak, stop = [baseline], asyncio.Event()
    sampler = asyncio.create_task(sample_peak_rss(pid, peak, stop))
    async with stack.http() as http:
        started = time.time()
        task_id = await upload(http, tenant, document.name, document.data)
        final = await stack.wait_closed(task_id)
        stop.set()
        await sampler
        await require_complete(http, tenant, [task_id])
    seconds = completed_at(final) - started
    chunks = int(final["chunks_total"])
    result.add("time to complete", seconds, "s")
    result.add("throughput", chunks / seconds, "chunks/s")
    result.add("peak worker RSS", peak[0] / MIB, "MiB")
    result.details.update(
        chunks=chunks,
        document_bytes=len(document.data),
        worker_rss_before_mib=round(baseline / MIB, 1),
        rss_growth_mib=round((peak[0] - baseline) / MIB, 1),
    )
    return result
