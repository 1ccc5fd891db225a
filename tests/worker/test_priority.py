"""`docingest worker` runs every thread of its processes, torch's included, at
DOCINGEST_WORKER_NICE."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from core.settings import Settings
from tests.support import (
    Stack,
    Tenant,
    WorkerProcess,
    private_home,
    serve,
    stack_settings,
    wait_for_status,
)

pytestmark = pytest.mark.slow


def thread_nice_values(pid: int) -> set[int]:
    """The nice value of every thread of a process (Linux: field 19 of /proc/PID/task/T/stat)."""
    values = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        fields = stat.read_text().rsplit(")", 1)[1].split()
        values.add(int(fields[16]))
    return values


@pytest.mark.parametrize("nice", [10, 0])
async def test_worker_threads_run_at_the_configured_nice(
    stack: Stack, tenant: Tenant, nice: int
) -> None:
    settings = stack_settings(stack, worker_nice=nice)
    worker = WorkerProcess(settings)
    worker.start()
    try:
        async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            accepted = await http.post(
                "/upload/agent",
                params={"agent_id": tenant.agent_id},
                headers=tenant.headers,
                files={"file": ("nice.txt", b"Embedding yields the CPU to the API. " * 200)},
            )
            assert accepted.status_code == 202, accepted.text
            final = await wait_for_status(
                http, tenant, accepted.json()["task_id"], {"complete"}, deadline_s=180
            )
        assert final["status"] == "complete"
        assert worker.process is not None
        # Its children too: the model's process (and its torch threads), the readers' server.
        tree = [worker.process.pid]
        tree += [child.pid for child in psutil.Process(worker.process.pid).children(True)]
        assert len(tree) >= 2
        assert {value for pid in tree for value in thread_nice_values(pid)} == {nice}
    finally:
        worker.stop()


def test_worker_starts_its_embedded_postgres_at_normal_priority(stack: Stack) -> None:
    """The nice value is the worker's own: PostgreSQL serves the API too, at normal priority."""
    home = private_home("nice")
    suffix = uuid.uuid4().hex[:8]
    settings = Settings(
        home=home,
        database_url=None,
        temporal_address=stack.settings.resolved_temporal_address,
        staging_url=str(home / "staging"),
        task_queue=f"test-{suffix}",
        embed_task_queue=f"test-embed-{suffix}",
        worker_nice=10,
    )
    env = {**os.environ, **settings.as_environment(), "DOCINGEST_LOG_LEVEL": "WARNING"}
    env.pop("DOCINGEST_DATABASE_URL", None)
    worker = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "worker", "--role", "main"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    postgres: psutil.Process | None = None
    try:
        postgres = _embedded_postgres(home / "postgres", worker)
        assert {p.nice() for p in [postgres, *postgres.children()]} == {0}
        assert thread_nice_values(worker.pid) == {10}
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        if postgres is not None:
            # A worker stopped during start-up exits before it can stop its PostgreSQL.
            with contextlib.suppress(psutil.NoSuchProcess):
                postgres.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            psutil.wait_procs([postgres], timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def _embedded_postgres(pgdata: Path, worker: subprocess.Popen[bytes]) -> psutil.Process:
    """The postmaster under PGDATA, once the worker that started it has lowered its nice."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker exited during start-up"
        pid_file = pgdata / "postmaster.pid"
        first_line = pid_file.read_text().split()[:1] if pid_file.exists() else ["0"]
        pid = int(first_line[0]) if first_line else 0  # initdb's single-user run writes -PID
        if pid > 0 and psutil.Process(worker.pid).nice() == 10:
            return psutil.Process(pid)
        time.sleep(0.1)
    raise AssertionError("the worker started no PostgreSQL within 60 s")
