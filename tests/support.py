"""Helpers shared by the tests: fake embedder, tenants, workers, a served API, polling."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from activities.embed import TextEmbedder
from activities.store import StoreActivities
from activities.vectors import Vectors
from api.app import HTTP_PARSER, create_app
from core.embedded import free_port
from core.keys import create_key
from core.models import EMBEDDING_DIMENSION, Agent, Chunk, Document, TaskStart
from core.settings import Settings
from core.staging import StagingStore
from worker.main import EXECUTOR_THREADS, Role, build_workers
from workflows.types import StoreResult


class FakeEmbedder:
    """Deterministic unit vectors from a hash of the text: fast, for workflow tests."""

    dimension = EMBEDDING_DIMENSION
    precision = "float32"
    model_name = "fake"

    def encode(self, texts: list[str]) -> Vectors:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            vector = np.random.default_rng(seed).standard_normal(self.dimension)
            rows.append(vector / np.linalg.norm(vector))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dimension)


@dataclass
class Stack:
    settings: Settings
    client: Client
    sessionmaker: async_sessionmaker[AsyncSession]
    staging: StagingStore


@dataclass
class Tenant:
    key: str
    owner_id: uuid.UUID
    agent_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_settings(
    home: Path, database_url: str, temporal_address: str, **overrides: Any
) -> Settings:
    """Settings for a test stack: fresh task queues so no other test's worker interferes."""
    suffix = uuid.uuid4().hex[:8]
    values: dict[str, Any] = {
        "home": home,
        "database_url": database_url,
        "temporal_address": temporal_address,
        "staging_url": str(home / "staging"),
        "task_queue": f"test-{suffix}",
        "embed_task_queue": f"test-embed-{suffix}",
        "embed_activity_chunks": 16,
        **overrides,
    }
    return Settings(**values)


def unreachable_database_url() -> str:
    """A PostgreSQL URL nothing listens on: a database that is down, or out of reach."""
    return f"postgresql+psycopg://docingest@127.0.0.1:{free_port()}/docingest"


def stack_settings(stack: Stack, **overrides: Any) -> Settings:
    """Settings for another worker or API beside the session's: the same home, database and
    Temporal (unless `overrides` name others), fresh task queues, and `overrides`."""
    assert stack.settings.database_url is not None
    values: dict[str, Any] = {
        "database_url": stack.settings.database_url,
        "temporal_address": stack.settings.resolved_temporal_address,
        **overrides,
    }
    database_url, temporal_address = values.pop("database_url"), values.pop("temporal_address")
    return make_settings(stack.settings.resolved_home, database_url, temporal_address, **values)


async def embedding_recorded(stack: Stack, document_id: str) -> tuple[str | None, str | None]:
    """The precision and model the document's row says its vectors were embedded with."""
    async with stack.sessionmaker() as session:
        row = (
            await session.execute(
                select(Document.embedding_precision, Document.embedding_model).where(
                    Document.id == uuid.UUID(document_id)
                )
            )
        ).one()
    return row.embedding_precision, row.embedding_model


async def documents_stored(stack: Stack, task_id: str) -> int:
    """How many `documents` rows the database holds for this task."""
    async with stack.sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).select_from(Document).where(Document.task_id == task_id)
        )
    return int(count or 0)


async def chunks_stored(stack: Stack, task_id: str) -> int:
    """How many chunks the database holds for the document of this task."""
    async with stack.sessionmaker() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(Chunk)
            .join(Document)
            .where(Document.task_id == task_id)
        )
    return int(count or 0)


async def runs_of(stack: Stack, task_id: str) -> int:
    """How many runs of the workflow `task_id` Temporal lists (a retry is a run)."""
    return len([run async for run in stack.client.list_workflows(f"WorkflowId = '{task_id}'")])


async def started(stack: Stack, task_id: str) -> WorkflowHandle[Any, Any]:
    """The task's workflow, once started (an upload whose start Temporal did not answer is
    answered before it: api/task_starts.py)."""
    handle = stack.client.get_workflow_handle(task_id)
    async with asyncio.timeout(30):
        while True:
            try:
                await handle.describe()
                return handle
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.05)


async def outbox_emptied(stack: Stack, task_id: str) -> None:
    """Returns once the task's start has left the outbox (api/task_starts.py)."""
    async with asyncio.timeout(30):
        while True:
            async with stack.sessionmaker() as session:
                row = await session.get(TaskStart, task_id)
            if row is None:
                return
            await asyncio.sleep(0.1)


async def forget_workflow(stack: Stack, task_id: str) -> None:
    """Delete the task's workflow, as Temporal's retention does a while after it closed;
    returns once the server no longer describes it. The dev server took up to about 30 s to
    delete a workflow that had just closed (measured): a test that forgets one takes as long."""
    await stack.client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(
            namespace=stack.settings.temporal_namespace,
            workflow_execution=WorkflowExecution(workflow_id=task_id),
        )
    )
    async with asyncio.timeout(90):
        while True:
            try:
                await stack.client.get_workflow_handle(task_id).describe()
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                return
            await asyncio.sleep(0.2)


async def new_tenant(stack: Stack, name: str = "tenant") -> Tenant:
    """A fresh owner with one key and one agent."""
    async with stack.sessionmaker.begin() as session:
        new_key = await create_key(session, name)
        agent = Agent(owner_id=new_key.owner_id, name=f"{name}-agent")
        session.add(agent)
        await session.flush()
        return Tenant(new_key.key, new_key.owner_id, str(agent.id))


@asynccontextmanager
async def running_workers(
    stack: Stack,
    settings: Settings,
    embedder: TextEmbedder,
    embed_sessionmaker: async_sessionmaker[AsyncSession] | None = None,
) -> AsyncIterator[list[Worker]]:
    """The production workers (both task queues of `settings`) running in this loop; the
    embed queue's with a database of its own when `embed_sessionmaker` is given."""
    with ThreadPoolExecutor(max_workers=EXECUTOR_THREADS) as executor:
        workers = [
            *build_workers(
                stack.client, settings, stack.staging, stack.sessionmaker, None, executor,
                Role.MAIN,
            ),
            *build_workers(
                stack.client, settings, stack.staging, embed_sessionmaker or stack.sessionmaker,
                embedder, executor, Role.EMBED,
            ),
        ]  # fmt: skip
        async with workers_running(workers):
            yield workers


@asynccontextmanager
async def workers_running(workers: list[Worker]) -> AsyncIterator[None]:
    """Run these workers in this loop; shut them down after."""
    runs = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        yield
    finally:
        for worker in workers:
            await worker.shutdown()
        await asyncio.gather(*runs, return_exceptions=True)


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[str]:
    """The real API under uvicorn on a free port; yields its base URL."""
    async with serve_app(create_app(settings)) as url:
        yield url


@asynccontextmanager
async def serve_app(app: FastAPI) -> AsyncIterator[str]:
    """`app` under uvicorn on a free port (a test that reaches into `app.state`); its URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=free_port(), log_level="warning", http=HTTP_PARSER
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        await task


async def upload_file(
    http: httpx.AsyncClient, tenant: Tenant, name: str, data: bytes, **params: str | int
) -> str:
    """POST one file to /upload/agent for the tenant's agent (extra query `params`, e.g.
    chunking); asserts the 202 and returns the task id."""
    response = await http.post(
        "/upload/agent",
        params={"agent_id": tenant.agent_id, **params},
        headers=tenant.headers,
        files={"file": (name, data)},
    )
    assert response.status_code == 202, response.text
    task_id: str = response.json()["task_id"]
    return task_id


def local_activity_markers(history: WorkflowHistory) -> list[dict[str, Any]]:
    """What the history records of each local activity (`activity_type`, `attempt`, ...), in
    order: the SDK's marker data, since a local activity has no activity events."""
    markers = []
    for event in history.events:
        if event.event_type != EventType.EVENT_TYPE_MARKER_RECORDED:
            continue
        details = event.marker_recorded_event_attributes.details
        if "data" in details:  # a patch marker has none
            markers.append(json.loads(details["data"].payloads[0].data))
    return markers


async def wait_for_status(
    http: httpx.AsyncClient,
    tenant: Tenant,
    task_id: str,
    statuses: set[str] | frozenset[str],
    deadline_s: float = 120,
) -> dict[str, Any]:
    """Poll `/upload/status` until the task reaches one of `statuses`."""
    body: dict[str, Any] = {}
    try:
        async with asyncio.timeout(deadline_s):
            while True:
                response = await http.get(f"/upload/status/{task_id}", headers=tenant.headers)
                assert response.status_code == 200, response.text
                body = response.json()
                if body["status"] in statuses:
                    return body
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"task {task_id} stuck at {body}") from None


@dataclass
class DocingestProcess:
    """A `docingest <command>` as a separate process, to kill it like a crash would."""

    settings: Settings
    process: subprocess.Popen[bytes] | None = None
    command = ""

    def launch(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.settings.as_environment(), "DOCINGEST_LOG_LEVEL": "WARNING"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", self.command], env=env, stdout=subprocess.DEVNULL
        )
        return self.process

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class WorkerProcess(DocingestProcess):
    command = "worker"

    def start(self) -> None:
        self.launch()


class ApiProcess(DocingestProcess):
    command = "api"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    async def start(self) -> None:
        """Start and wait until `/health` answers 200."""
        await wait_until_healthy(self.url, self.launch())


async def wait_until_healthy(url: str, process: subprocess.Popen[Any] | None = None) -> None:
    """Wait (at most 60 s) until the API at `url` answers `/health` with 200, failing at once
    if its `process` exits meanwhile."""
    async with asyncio.timeout(60), httpx.AsyncClient() as http:
        while True:
            assert process is None or process.poll() is None, "the API exited during start-up"
            try:
                if (await http.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


# Figures tests measure (latencies under load, …), printed at the end of the run by conftest.
FIGURES: list[str] = []


def private_home(prefix: str) -> Path:
    """A folder for an embedded PostgreSQL, outside pytest's temp root: pytest makes that root
    0700 whenever a session starts, which locks out PostgreSQL's own user (`pgserver` when
    running as root) of any other pytest session running at the same time."""
    return Path(tempfile.mkdtemp(prefix=f"docingest-{prefix}-"))


class FullStaging(StagingStore):
    """A staging store on a disk with no room left for the files whose names start with
    `refused` ("" for every file): each is created, and writing it fails with ENOSPC (at
    `write`, or at `close` for bytes still buffered), as a full disk does, until `full` is
    cleared."""

    def __init__(self, url: str, refused: str = "") -> None:
        super().__init__(url)
        self.refused = refused
        self.full = True

    def open_write(self, task_id: str, name: str) -> BinaryIO:
        opened = super().open_write(task_id, name)
        if not self.full or not name.startswith(self.refused):
            return opened
        return cast(BinaryIO, io.BufferedWriter(_NoRoom(opened)))


class _NoRoom(io.RawIOBase):
    def __init__(self, opened: BinaryIO) -> None:
        self.opened = opened

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def close(self) -> None:
        self.opened.close()
        super().close()


class DelayedStore(StoreActivities):
    """A store that waits `delay_s` (for a lock, say) before storing, and says when it has
    begun."""

    def __init__(self, stack: Stack, delay_s: float) -> None:
        super().__init__(stack.staging, stack.sessionmaker)
        self.delay_s = delay_s
        self.begun = threading.Event()

    async def save(self, *args: Any, **kwargs: Any) -> StoreResult:
        self.begun.set()
        await asyncio.sleep(self.delay_s)
        return await super().save(*args, **kwargs)


@contextmanager
def statements_run(engine: AsyncEngine, fragment: str) -> Iterator[list[tuple[str, Any]]]:
    """The statements holding `fragment` that `engine` runs meanwhile, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:  # connection, cursor, statement, parameters, ...
        if fragment in args[2]:
            seen.append((args[2], args[3]))

    sqlalchemy_event.listen(engine.sync_engine, "after_cursor_execute", record)
    try:
        yield seen
    finally:
        sqlalchemy_event.remove(engine.sync_engine, "after_cursor_execute", record)


async def plan_from_indexes(
    engine: AsyncEngine, table: str, statement: str, parameters: Any
) -> str:
    """PostgreSQL's plan for a statement on `table`, vacuumed as autovacuum keeps it, when
    reading the table's rows is the last resort (no sequential or bitmap scan): "Index Only
    Scan" says an index alone answers it, at any size (on a small table the planner reads the
    rows, cheaper there)."""
    async with engine.connect() as connection:
        await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.exec_driver_sql(f"VACUUM (ANALYZE) {table}")
    async with engine.connect() as connection:
        for scan in ("seqscan", "bitmapscan"):
            await connection.exec_driver_sql(f"SET LOCAL enable_{scan} = off")
        plan = await connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
        return "\n".join(row[0] for row in plan)
