"""The real stack the figures measure, started in a temporary DOCINGEST_HOME on free ports.

Embedded PostgreSQL and the Temporal dev server run as in `make dev`; the worker and the API
run as their own processes (`python -m cli.main worker|api`) with the default settings except
home, ports and task queues (and whatever `DOCINGEST_*` the caller exported, recorded in
results.json), so they compete for the CPU exactly as a deployment on this machine would.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError

from activities.embed import resolve_device, resolve_precision
from benchmarks.measure import BenchmarkError
from core.db import create_engine, create_sessionmaker
from core.embedded import embedded_postgres_url, free_port, start_temporal_dev_server
from core.keys import create_key
from core.migrate import upgrade_to_head
from core.models import Agent
from core.settings import Settings
from core.temporal import connect, register_search_attributes
from workflows.types import WORKFLOW_NAME, Status

BENCH_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
_RESOLVED = re.compile(r"embedding on (\S+) in (\S+)")
_AUTO_VERDICT = re.compile(r"auto precision on this CPU[^\n]*")  # activities/precision.py


@dataclass
class Tenant:
    key: str
    owner_id: uuid.UUID
    agent_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Child:
    """A docingest (or benchmark) process with its output in a log file under HOME."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise BenchmarkError(f"the {self.name} process exited with code {code}; see {self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn(name: str, args: list[str], env: dict[str, str], home: Path) -> Child:
    log = home / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return Child(name, process, log)


def docingest_env(settings: Settings) -> dict[str, str]:
    """This process's environment with the settings and the offline model switches."""
    return {**os.environ, **settings.as_environment(), **BENCH_ENV}


def bench_settings(home: Path, database_url: str, temporal_address: str) -> Settings:
    suffix = uuid.uuid4().hex[:8]
    return Settings(
        home=home,
        database_url=database_url,
        temporal_address=temporal_address,
        staging_url=str(home / "staging"),
        api_port=free_port(),
        task_queue=f"bench-{suffix}",
        embed_task_queue=f"bench-embed-{suffix}",
    )


@dataclass
class Stack:
    home: Path
    settings: Settings
    client: Client
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    worker: Child
    api: Child
    temporal_pid: int

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.api_port}"

    @property
    def environment(self) -> dict[str, str]:
        return docingest_env(self.settings)

    def http(self, connections: int = 32) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(base_url=self.api_url, timeout=300, limits=limits)

    def check_alive(self) -> None:
        self.worker.check_alive()
        self.api.check_alive()

    async def new_tenant(self, name: str) -> Tenant:
        """A fresh owner with one key and one agent: figures never see each other's data."""
        async with self.sessionmaker.begin() as session:
            new_key = await create_key(session, f"bench-{name}")
            agent = Agent(owner_id=new_key.owner_id, name=f"bench-{name}")
            session.add(agent)
            await session.flush()
            return Tenant(new_key.key, new_key.owner_id, str(agent.id))

    async def wait_closed(self, task_id: str, limit_s: float = 900) -> dict[str, Any]:
        """The final progress object of a task (its workflow's result), watching the worker."""
        result = asyncio.ensure_future(self.client.get_workflow_handle(task_id).result())
        try:
            async with asyncio.timeout(limit_s):
                while True:
                    done, _ = await asyncio.wait({result}, timeout=1.0)
                    if done:
                        progress: dict[str, Any] = result.result()
                        return progress
                    self.check_alive()
        except WorkflowFailureError as exc:
            raise BenchmarkError(f"task {task_id} failed: {exc.cause}") from exc
        finally:
            result.cancel()

    async def terminate(self, task_ids: list[str]) -> None:
        """Stop tasks a figure no longer needs; already closed ones are left as they are."""
        gate = asyncio.Semaphore(16)

        async def stop(task_id: str) -> None:
            async with gate:
                with suppress(RPCError):
                    await self.client.get_workflow_handle(task_id).terminate(
                        reason="benchmark figure finished"
                    )

        await asyncio.gather(*(stop(task_id) for task_id in task_ids))

    async def terminate_all(self) -> None:
        """Stop every running ingestion, whoever started it (after a figure failed)."""
        query = f"WorkflowType = '{WORKFLOW_NAME}' AND ExecutionStatus = 'Running'"
        running = [execution.id async for execution in self.client.list_workflows(query)]
        await self.terminate(running)

    async def running(self, task_ids: list[str]) -> int:
        """How many of these tasks are still running."""
        count = 0
        for task_id in task_ids:
            description = await self.client.get_workflow_handle(task_id).describe()
            count += description.status == WorkflowExecutionStatus.RUNNING
        return count

    def worker_cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.worker.process.pid)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far of every process of the stack, and of this benchmark process."""
        return {
            "worker": self.worker_cpu_seconds(),
            "api": tree_cpu_seconds(self.api.process.pid),
            "temporal": tree_cpu_seconds(self.temporal_pid),
            "postgres": tree_cpu_seconds(postmaster_pid(self.home)),
            "benchmark": sum(psutil.Process().cpu_times()[:2]),  # itself, not its children
        }

    async def wait_idle(self, limit_s: float = 180, window: float = 1.0) -> bool:
        """Wait until the worker uses under 15 % of a core for two windows in a row.

        After a terminate, the embed activity in flight still finishes its shard (its
        cancellation arrives with a heartbeat, and heartbeats are throttled), so a figure that
        needs an idle machine waits here rather than guessing a sleep.
        """
        quiet = 0
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            before = self.worker_cpu_seconds()
            await asyncio.sleep(window)
            quiet = quiet + 1 if self.worker_cpu_seconds() - before < 0.15 * window else 0
            if quiet >= 2:
                return True
            self.check_alive()
        return False

    async def activity_spans(self, task_id: str) -> list[tuple[str, float, float]]:
        """(activity type, started, closed) of each activity a task ran, in epoch seconds,
        from its workflow history."""
        scheduled: dict[int, str] = {}
        started: dict[int, float] = {}
        spans: list[tuple[str, float, float]] = []
        history = await self.client.get_workflow_handle(task_id).fetch_history()
        for event in history.events:
            moment = event.event_time.ToDatetime(tzinfo=UTC).timestamp()
            if event.HasField("activity_task_scheduled_event_attributes"):
                attributes = event.activity_task_scheduled_event_attributes
                scheduled[event.event_id] = attributes.activity_type.name
            elif event.HasField("activity_task_started_event_attributes"):
                started[event.activity_task_started_event_attributes.scheduled_event_id] = moment
            elif event.HasField("activity_task_completed_event_attributes"):
                scheduled_id = event.activity_task_completed_event_attributes.scheduled_event_id
                spans.append((scheduled[scheduled_id], started[scheduled_id], moment))
        return spans

    def resolved_embedding(self) -> tuple[str, str, str]:
        """(device, precision, source) the worker embeds with: from its start-up log lines
        (with what `auto` measured, if it did), else computed with the same functions here."""
        log = self.worker.log.read_text(errors="replace")
        found = _RESOLVED.search(log)
        if found:
            verdict = _AUTO_VERDICT.search(log)
            source = f"worker log: {verdict.group(0)}" if verdict else "worker log"
            return found.group(1), found.group(2), source
        device = resolve_device(self.settings.embedding_device)
        return device, resolve_precision(self.settings.embedding_precision, device), "computed"


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and its children (none when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its children."""
    total = 0.0
    for process in process_tree(pid):
        with suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def postmaster_pid(home: Path) -> int:
    """The embedded PostgreSQL's main process (first line of its postmaster.pid)."""
    return int((home / "postgres" / "postmaster.pid").read_text().split()[0])


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children."""
    total = 0
    for process in process_tree(pid):
        with suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


async def wait_healthy(child: Child, url: str, limit_s: float = 120) -> None:
    async with asyncio.timeout(limit_s), httpx.AsyncClient() as http:
        while True:
            child.check_alive()
            with suppress(httpx.TransportError):
                if (await http.get(f"{url}/health")).status_code == 200:
                    return
            await asyncio.sleep(0.2)


def _prepare_database(home: Path) -> str:
    url = embedded_postgres_url(home, cleanup_mode="delete")
    upgrade_to_head(url)
    return url


def _start_temporal(home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = start_temporal_dev_server(home / "temporal", port=port, ui_port=free_port())
    return server, f"127.0.0.1:{port}"


def spawn_docingest(settings: Settings, home: Path) -> list[Child]:
    """The worker (logging at INFO: its start-up line says which precision it resolved) and
    the API, as `docingest worker` and `docingest api` would run them."""
    env = docingest_env(settings)
    return [
        spawn("worker", ["-m", "cli.main", "worker"], env, home),
        spawn("api", ["-m", "cli.main", "api"], {**env, "DOCINGEST_LOG_LEVEL": "WARNING"}, home),
    ]


def _tear_down(home: Path, temporal: subprocess.Popen[bytes] | None, children: list[Child]) -> None:
    for child in reversed(children):
        child.stop()
    if temporal is not None:
        temporal.terminate()
        temporal.wait(timeout=30)
    with suppress(Exception):
        from pgserver.postgres_server import get_server

        get_server(home / "postgres").cleanup()
    shutil.rmtree(home, ignore_errors=True)


@asynccontextmanager
async def running_stack() -> AsyncIterator[Stack]:
    """Start everything, warm it with one upload, and tear it all down (home included)."""
    home = Path(tempfile.mkdtemp(prefix="docingest-bench-"))
    temporal: subprocess.Popen[bytes] | None = None
    children: list[Child] = []
    try:
        database_url = await asyncio.to_thread(_prepare_database, home)
        temporal, address = _start_temporal(home)
        settings = bench_settings(home, database_url, address)
        client = await connect(address, settings.temporal_namespace)
        await register_search_attributes(client)
        children = spawn_docingest(settings, home)
        worker, api = children
        engine = create_engine(database_url)
        try:
            stack = Stack(
                home,
                settings,
                client,
                engine,
                create_sessionmaker(engine),
                worker,
                api,
                temporal.pid,
            )
            await wait_healthy(stack.api, stack.api_url)
            await warm_up(stack)
            yield stack
        finally:
            await engine.dispose()
    finally:
        _tear_down(home, temporal, children)


async def warm_up(stack: Stack) -> None:
    """One small upload to completion: the worker has loaded its model and every code path
    (extract, chunk, embed, store, cleanup) has run once before anything is timed."""
    tenant = await stack.new_tenant("warm-up")
    async with stack.http() as http:
        task_id = await upload(http, tenant, "warm-up.txt", b"Warm-up text. " * 200)
    await stack.wait_closed(task_id, limit_s=300)


async def upload(http: httpx.AsyncClient, tenant: Tenant, name: str, data: bytes) -> str:
    """POST /upload/agent; the task id, or an error saying what the API answered."""
    response = await http.post(
        "/upload/agent",
        params={"agent_id": tenant.agent_id},
        headers=tenant.headers,
        files={"file": (name, data)},
    )
    if response.status_code != 202:
        raise BenchmarkError(f"upload of {name} answered {response.status_code}: {response.text}")
    task_id: str = response.json()["task_id"]
    return task_id


async def api_status(http: httpx.AsyncClient, tenant: Tenant, task_id: str) -> dict[str, Any]:
    response = await http.get(f"/upload/status/{task_id}", headers=tenant.headers)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


async def require_complete(http: httpx.AsyncClient, tenant: Tenant, task_ids: list[str]) -> None:
    """Check through the API, as a client would, that every task ended `complete`."""
    for task_id in task_ids:
        body = await api_status(http, tenant, task_id)
        if body["status"] != Status.COMPLETE:
            raise BenchmarkError(f"task {task_id} ended {body['status']}: {body['message']}")


def completed_at(progress: dict[str, Any]) -> float:
    """The wall-clock moment a task turned `complete` (set by the workflow, in UTC)."""
    stamp = progress.get("completed_at")
    if progress.get("status") != Status.COMPLETE or not stamp:
        raise BenchmarkError(f"task {progress.get('task_id')} ended {progress.get('status')}")
    return datetime.fromisoformat(stamp).timestamp()
