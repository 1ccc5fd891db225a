"""Figure 3 — upload acknowledgment: p50/p99 latency of `POST /upload/agent` of a ~1 MB PDF
from 16 concurrent clients while the worker is saturated, over the same for a bare endpoint.

The bare endpoint (benchmarks/bare_upload.py) is a FastAPI app in its own uvicorn process that
parses the multipart stream the same way and writes the file to disk, nothing more. Both get
the same prepared bodies (each real upload a distinct PDF: a trailing comment differs, so dedup
never answers early) from the same client code, in alternating rounds (bare, real, real, bare,
…) under the same backlog, so drift in the machine's load falls on both sides alike.

Why the ratio is fair: transport, multipart parsing and disk writes cost the same on both
sides; the ratio is what docingest adds to an acknowledgment — key check, agent lookup,
hashing, sniffing, the dedup query, the fsync of the staged file and starting the workflow in
Temporal — when the machine is busy ingesting.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx

from benchmarks.backlog import saturated
from benchmarks.context import Context
from benchmarks.corpus import padded_pdf, variant
from benchmarks.measure import BenchmarkError, FigureResult, Target, latency_summary, percentile
from benchmarks.stack import Stack, Tenant, spawn, wait_healthy
from core.embedded import free_port

KEY = "upload_ack"
TITLE = "3 upload acknowledgment"


def multipart(filename: str, data: bytes) -> tuple[bytes, str]:
    """A prepared multipart body with one `file` part, and its content type."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{filename}"\r\nContent-Type: application/pdf\r\n\r\n'
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


@asynccontextmanager
async def bare_endpoint(stack: Stack) -> AsyncIterator[str]:
    """The bare endpoint in its own uvicorn process; yields its base URL."""
    port = free_port()
    args = ["-m", "benchmarks.bare_upload", "--port", str(port)]
    args += ["--directory", str(stack.home / "bare")]
    child = spawn("bare-upload", args, stack.environment, stack.home)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(child, url)
        yield url
    finally:
        child.stop()


async def hammer(
    http: httpx.AsyncClient,
    url: str,
    bodies: Iterator[tuple[bytes, str]],
    clients: int,
    headers: dict[str, str],
) -> tuple[list[float], list[str]]:
    """POST every body, `clients` at a time; latencies in seconds and any task ids returned."""
    latencies: list[float] = []
    task_ids: list[str] = []

    async def client() -> None:
        for body, content_type in bodies:  # one iterator shared by every client
            started = time.perf_counter()
            response = await http.post(
                url, content=body, headers={**headers, "Content-Type": content_type}
            )
            latencies.append(time.perf_counter() - started)
            if response.status_code != 202:
                raise BenchmarkError(f"{url} answered {response.status_code}: {response.text}")
            answer = response.json()
            if "task_id" in answer:
                task_ids.append(answer["task_id"])

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, task_ids


def bodies(pdf: bytes, first: int, count: int) -> Iterator[tuple[bytes, str]]:
    for number in range(first, first + count):
        yield multipart(f"scan-{number}.pdf", variant(pdf, number))


async def measure_rounds(
    ctx: Context, tenant: Tenant, bare_url: str, pdf: bytes, extra: list[str]
) -> tuple[list[float], list[float]]:
    """Alternate bare and real rounds (ABBA); return (real, bare) latencies."""
    sizes = ctx.sizes
    per_round = sizes.upload_requests // sizes.upload_rounds
    real: list[float] = []
    bare: list[float] = []
    upload_url = f"{ctx.stack.api_url}/upload/agent?agent_id={tenant.agent_id}"
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=64)) as http:
        for number in range(sizes.upload_rounds):
            order = [("bare", bare_url + "/upload"), ("real", upload_url)]
            for kind, url in order if number % 2 == 0 else reversed(order):
                headers = tenant.headers if kind == "real" else {}
                batch = bodies(pdf, (2 * number + (kind == "real")) * per_round, per_round)
                latencies, task_ids = await hammer(http, url, batch, sizes.upload_clients, headers)
                (real if kind == "real" else bare).extend(latencies)
                extra.extend(task_ids)
    return real, bare


async def run(ctx: Context) -> FigureResult:
    result = FigureResult(KEY, TITLE)
    ctx.release_models()
    stack, sizes = ctx.stack, ctx.sizes
    pdf = await asyncio.to_thread(padded_pdf, sizes.upload_bytes)
    tenant = await stack.new_tenant(KEY)
    async with (
        bare_endpoint(stack) as bare_url,
        stack.http() as http,
        saturated(
            stack, http, tenant, sizes.backlog_documents, sizes.backlog_chunks, seed=31
        ) as backlog,
    ):
        real, bare = await measure_rounds(ctx, tenant, bare_url, pdf, backlog.extra)
        busy = await backlog.check(stack)
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        real_ms, bare_ms = percentile(real, fraction) * 1000, percentile(bare, fraction) * 1000
        result.add(f"upload {name}", real_ms, "ms")
        result.add(f"bare {name}", bare_ms, "ms")
        target = Target("<=", 1.5) if name == "p99" else None
        result.add(f"{name} upload / bare", real_ms / bare_ms, "ratio", target)
    result.details.update(
        pdf_bytes=len(pdf),
        clients=sizes.upload_clients,
        upload=latency_summary(real),
        bare=latency_summary(bare),
        worker_saturated_throughout=busy,
        tasks_still_running=backlog.still_running,
    )
    return result
