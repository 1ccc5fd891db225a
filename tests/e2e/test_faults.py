"""Fault injection against the real stack: nothing acknowledged is lost, nothing is stored
twice. Each fault runs several times; workers run as separate processes so they can be killed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pgserver.postgres_server import get_server
from sqlalchemy import func, select
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle
from temporalio.testing import ActivityEnvironment

from activities.staging_cleanup import StagingCleanupActivities
from core.db import create_engine, create_sessionmaker
from core.embedded import embedded_postgres_url, free_port, start_temporal_dev_server
from core.migrate import upgrade_to_head
from core.models import Chunk, Document
from core.settings import Settings
from core.staging import StagingStore
from tests.documents import lorem
from tests.support import (
    FIGURES,
    ApiProcess,
    FakeEmbedder,
    FullStaging,
    Stack,
    Tenant,
    WorkerProcess,
    new_tenant,
    private_home,
    running_workers,
    serve,
    stack_settings,
    upload_file,
    wait_for_status,
)
from workflows.types import MEMO_PROGRESS, RECORD_OUTCOME, STORE, Status

pytestmark = pytest.mark.slow


def fault_settings(stack: Stack, **overrides: Any) -> Settings:
    """Short heartbeats and small shards, so a fault lands mid-task and recovery is quick."""
    return stack_settings(
        stack, activity_heartbeat_timeout=timedelta(seconds=3), embed_activity_chunks=8, **overrides
    )


@contextlib.asynccontextmanager
async def worker_and_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A worker process and the API on `settings`, and a client of the API; the worker is
    stopped after the block, whatever happened in it."""
    worker = WorkerProcess(settings)
    worker.start()
    try:
        async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            yield http
    finally:
        worker.stop()


async def upload_text(
    http: httpx.AsyncClient, tenant: Tenant, text: str, name: str = "long.txt"
) -> str:
    return await upload_file(http, tenant, name, text.encode(), chunk_size=200, chunk_overlap=20)


async def wait_until(
    http: httpx.AsyncClient, tenant: Tenant, task_id: str, condition: Any, deadline_s: float = 120
) -> dict[str, Any]:
    """Poll the status until `condition(body)`; 503s (a dependency down) are tolerated."""
    async with asyncio.timeout(deadline_s):
        while True:
            response = await http.get(f"/upload/status/{task_id}", headers=tenant.headers)
            if response.status_code == 200:
                body: dict[str, Any] = response.json()
                if condition(body):
                    return body
                assert body["status"] not in Status.TERMINAL, body
            await asyncio.sleep(0.1)


async def assert_stored_once(stack: Stack, final: dict[str, Any]) -> None:
    assert final["status"] == "complete", final
    async with stack.sessionmaker() as session:
        rows = await session.execute(
            select(func.count(), func.count(func.distinct(Chunk.ordinal))).where(
                Chunk.document_id == uuid.UUID(final["document_id"])
            )
        )
        total, distinct = rows.one()
    assert total == distinct == final["progress"]["chunks_total"]


def embedding(body: dict[str, Any]) -> bool:
    return bool(body["stage"] == "embedding" and body["progress"]["chunks_embedded"] > 0)


async def until_pending(
    handle: WorkflowHandle[Any, Any], name: str, attempt_above: int = 0
) -> None:
    """Until the activity `name` is pending past `attempt_above` (1: its first attempt failed
    and it waits for a retry)."""
    async with asyncio.timeout(60):
        while True:
            pending = (await handle.describe()).raw_description.pending_activities
            if any(p.activity_type.name == name and p.attempt > attempt_above for p in pending):
                return
            await asyncio.sleep(0.2)


async def store_waiting_for_database(
    http: httpx.AsyncClient, tenant: Tenant, database: Database, stack: Stack, text: str
) -> tuple[str, WorkflowHandle[Any, Any]]:
    """Upload `text`, stop the database while it is embedded, and return once its `store`
    failed and waits for a retry."""
    task_id = await upload_text(http, tenant, text)
    await wait_until(http, tenant, task_id, embedding, deadline_s=180)
    database.stop()
    handle = stack.client.get_workflow_handle(task_id)
    await until_pending(handle, STORE, attempt_above=1)
    return task_id, handle


@pytest.mark.parametrize("run", range(3))
async def test_fault_worker_killed_while_embedding_is_finished_by_a_new_worker(
    stack: Stack, tenant: Tenant, run: int
) -> None:
    settings = fault_settings(stack)
    first, second = WorkerProcess(settings), WorkerProcess(settings)
    first.start()
    try:
        async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            task_id = await upload_text(http, tenant, lorem(500, seed=100 + run))
            await wait_until(http, tenant, task_id, embedding, deadline_s=180)
            first.kill()
            killed_at = time.monotonic()
            second.start()
            final = await wait_for_status(http, tenant, task_id, Status.TERMINAL, deadline_s=180)
            recovered = time.monotonic() - killed_at
        await assert_stored_once(stack, final)
        FIGURES.append(
            f"fault worker kill -9 (run {run}): {final['progress']['chunks_total']} chunks stored "
            f"once, complete {recovered:.1f}s after the kill (new worker start included; "
            f"heartbeat timeout {settings.activity_heartbeat_timeout.total_seconds():.0f}s)"
        )
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("run", range(2))
async def test_fault_temporal_restarted_while_tasks_run(
    stack: Stack, tenant: Tenant, tmp_path: Path, run: int
) -> None:
    port, ui_port = free_port(), free_port()
    server = start_temporal_dev_server(tmp_path, port=port, ui_port=ui_port)
    settings = fault_settings(stack, temporal_address=f"127.0.0.1:{port}")
    try:
        async with worker_and_api(settings) as http:
            tasks = [
                await upload_text(http, tenant, lorem(200, seed=200 + 10 * run + i), f"t{i}.txt")
                for i in range(3)
            ]
            await wait_until(http, tenant, tasks[0], embedding, deadline_s=180)
            server.terminate()
            server.wait(timeout=30)
            await asyncio.sleep(1)
            server = start_temporal_dev_server(tmp_path, port=port, ui_port=ui_port)
            finals = [
                await wait_for_status(http, tenant, task, Status.TERMINAL, deadline_s=180)
                for task in tasks
            ]
        for final in finals:
            await assert_stored_once(stack, final)
    finally:
        server.terminate()
        server.wait(timeout=30)


class Database:
    """A PostgreSQL of its own, to stop and start under a running task."""

    def __init__(self, home: Path) -> None:
        self.url = embedded_postgres_url(home, cleanup_mode="delete")
        upgrade_to_head(self.url)
        self.server = get_server(home / "postgres")

    def stop(self) -> None:
        from pgserver import _commands

        stop = ["-w", "stop", "-m", "fast"]
        # pgserver makes one function per binary at import time: invisible to mypy.
        pg_ctl = _commands.pg_ctl  # type: ignore[attr-defined]
        pg_ctl(stop, pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()


@pytest.fixture
async def own_database(stack: Stack) -> AsyncIterator[tuple[Database, Stack]]:
    database = Database(private_home("fault-db"))
    engine = create_engine(database.url, pool_size=2)
    yield database, Stack(
        stack.settings, stack.client, create_sessionmaker(engine),
        StagingStore(stack.settings.resolved_staging_url),
    )  # fmt: skip
    await engine.dispose()
    database.start()


@pytest.mark.parametrize("run", range(2))
async def test_fault_database_down_during_store_then_back(
    own_database: tuple[Database, Stack], stack: Stack, run: int
) -> None:
    database, db_stack = own_database
    tenant = await new_tenant(db_stack)
    settings = fault_settings(stack, database_url=database.url)
    async with worker_and_api(settings) as http:
        task_id, _ = await store_waiting_for_database(
            http, tenant, database, stack, lorem(120, seed=300 + run)
        )
        database.start()
        final = await wait_for_status(http, tenant, task_id, Status.TERMINAL, deadline_s=120)
    await assert_stored_once(db_stack, final)


async def test_fault_cancel_while_the_store_waits_for_the_database_ends_cancelled(
    own_database: tuple[Database, Stack], stack: Stack
) -> None:
    """The cancel reaches the store while it waits for a retry (its first attempts failed
    against a stopped database): the task ends `cancelled`, not `error` as a failed step
    would, with nothing stored and its staging removed once the database is back."""
    database, db_stack = own_database
    tenant = await new_tenant(db_stack)
    settings = fault_settings(stack, database_url=database.url)
    async with worker_and_api(settings) as http:
        task_id, handle = await store_waiting_for_database(
            http, tenant, database, stack, lorem(120, seed=350)
        )
        await handle.cancel()  # the API needs the database for the key: ask Temporal
        await until_pending(handle, RECORD_OUTCOME)  # the cancel reached the store
        database.start()
        final = await wait_for_status(http, tenant, task_id, Status.TERMINAL, deadline_s=120)
    assert final["status"] == Status.CANCELLED, final
    assert final["message"] == "Processing of long.txt was cancelled"
    async with db_stack.sessionmaker() as session:
        document = await session.scalar(select(Document).where(Document.task_id == task_id))
        assert document is not None
        chunks = await session.scalar(
            select(func.count()).select_from(Chunk).where(Chunk.document_id == document.id)
        )
    assert (document.status, chunks) == (Status.CANCELLED, 0)
    assert not Path(settings.resolved_staging_url, task_id).exists()


@pytest.mark.parametrize("run", range(2))
async def test_fault_database_down_past_the_retry_budget_ends_error_then_retry_completes(
    own_database: tuple[Database, Stack], stack: Stack, run: int
) -> None:
    database, db_stack = own_database
    tenant = await new_tenant(db_stack)
    settings = fault_settings(stack, database_url=database.url, database_attempts=2)
    async with worker_and_api(settings) as http:
        task_id = await upload_text(http, tenant, lorem(60, seed=400 + run))
        await wait_until(http, tenant, task_id, embedding, deadline_s=180)
        database.stop()
        handle = stack.client.get_workflow_handle(task_id)
        async with asyncio.timeout(120):  # the API itself needs the database: ask Temporal
            while (await said(handle))["status"] != Status.ERROR:
                await asyncio.sleep(0.2)
        # It says `error` at once, and writes its record once the database is back.
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        unavailable = await http.get("/agents", headers=tenant.headers)
        assert unavailable.status_code == 503
        database.start()
        async with asyncio.timeout(120):
            while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await asyncio.sleep(0.2)
        async with db_stack.sessionmaker() as session:
            recorded = await session.scalar(select(Document).where(Document.task_id == task_id))
        assert recorded is not None and recorded.status == Status.ERROR
        final = await wait_for_status(http, tenant, task_id, Status.TERMINAL, deadline_s=60)
        assert final["status"] == "error"
        assert final["message"].startswith("Processing long.txt stopped after repeated errors")
        assert final["message"].endswith("The upload is kept and can be retried.")
        retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
        assert retried.status_code == 202, retried.text
        final = await wait_for_status(http, tenant, task_id, Status.TERMINAL, deadline_s=120)
    await assert_stored_once(db_stack, final)


async def said(handle: WorkflowHandle[Any, Any]) -> dict[str, Any]:
    """The progress a task's workflow last mirrored into its memo."""
    progress: dict[str, Any] = (await (await handle.describe()).memo())[MEMO_PROGRESS]
    return progress


@pytest.mark.parametrize("run", range(2))
async def test_fault_staging_removed_under_a_task_ends_error_with_a_reason(
    stack: Stack, tenant: Tenant, run: int
) -> None:
    settings = fault_settings(stack)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        task_id = await upload_text(http, tenant, lorem(20, seed=500 + run))
        stack.staging.remove_task(task_id)  # before any worker picked it up
        async with running_workers(stack, settings, FakeEmbedder()):
            final = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    assert final["status"] == "error"
    assert final["error"]["type"] == "StagingMissing"
    assert "the uploaded file is no longer in the staging store" in final["message"]


@pytest.mark.parametrize("refused", ["chunks/", "vectors/"])
async def test_fault_staging_full_under_a_task_says_so_and_its_retry_completes(
    stack: Stack, tenant: Tenant, refused: str
) -> None:
    """A staging disk with no room for the chunks a step writes, or for their vectors: the
    task said "reading the file failed with an internal error", or "the embedding model
    failed", and each try left a part-written file, filling the disk further. Once there is
    room again, its retry completes from the upload kept."""
    settings = fault_settings(stack)
    full = FullStaging(settings.resolved_staging_url, refused)
    workers = running_workers(dataclasses.replace(stack, staging=full), settings, FakeEmbedder())
    async with (
        serve(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
        workers,
    ):
        task_id = await upload_text(http, tenant, lorem(60, seed=700 + len(refused)))
        final = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
        assert final["status"] == "error", final
        reason = "the staging store could not be written (No space left on device)"
        assert final["error"] == {"type": "StagingUnwritable", "message": reason}
        assert final["message"] == (
            f"Processing long.txt stopped after repeated errors: {reason}. "
            "The upload is kept and can be retried."
        )
        folder = Path(settings.resolved_staging_url, task_id)
        written = [name for _, _, names in os.walk(folder) for name in names]
        assert not [name for name in written if name.endswith(".partial")], written
        full.full = False  # room again
        retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
        assert retried.status_code == 202, retried.text
        final = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    await assert_stored_once(stack, final)


async def slow_body(boundary: str, name: str, pieces: int) -> AsyncIterator[bytes]:
    """A multipart body that takes a while to arrive, like a large upload on a slow link."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    for index in range(pieces):
        yield (lorem(40, seed=index) + "\n").encode()
        await asyncio.sleep(0.05)
    yield f"\r\n--{boundary}--\r\n".encode()


@pytest.mark.parametrize("run", range(2))
async def test_fault_api_killed_with_uploads_in_flight(
    stack: Stack, tenant: Tenant, tmp_path: Path, run: int
) -> None:
    settings = fault_settings(stack, api_port=free_port(), staging_url=str(tmp_path / "staging"))
    staging = StagingStore(settings.resolved_staging_url)
    api = ApiProcess(settings)
    await api.start()
    accepted: list[str] = []
    try:
        own_staging = Stack(stack.settings, stack.client, stack.sessionmaker, staging)
        async with running_workers(own_staging, settings, FakeEmbedder()):
            async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:

                async def upload_slowly(index: int) -> None:
                    boundary = f"b{index}"
                    response = await http.post(
                        "/upload/agent", params={"agent_id": tenant.agent_id},
                        headers={**tenant.headers,
                                 "Content-Type": f"multipart/form-data; boundary={boundary}"},
                        content=slow_body(boundary, f"slow{index}.txt", pieces=40),
                    )  # fmt: skip
                    if response.status_code == 202:
                        accepted.append(response.json()["task_id"])

                for index in range(4):  # these complete before the crash
                    accepted.append(
                        await upload_text(http, tenant, lorem(30, seed=600 + 10 * run + index))
                    )
                in_flight = [asyncio.create_task(upload_slowly(i)) for i in range(8)]
                await asyncio.sleep(0.8)
                api.kill()
                results = await asyncio.gather(*in_flight, return_exceptions=True)
            assert any(isinstance(result, httpx.TransportError) for result in results)
            assert staging.fs.ls(staging.root)  # the killed uploads left partial files

            await api.start()
            async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
                for task_id in accepted:
                    final = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
                    await assert_stored_once(stack, final)
                    await stack.client.get_workflow_handle(task_id).result()
        sweep = StagingCleanupActivities(
            staging,
            stack.client,
            stack.sessionmaker,
            ttl=timedelta(days=7),
            orphan_grace=timedelta(0),
        )
        await ActivityEnvironment().run(sweep.clean_staging)
        assert staging.fs.ls(staging.root) == []  # nothing left of the uploads without a 202
    finally:
        api.stop()
