"""`docingest worker` runs every thread, torch's included, at DOCINGEST_WORKER_NICE."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import Stack, Tenant, WorkerProcess, serve, stack_settings, wait_for_status

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
        assert thread_nice_values(worker.process.pid) == {nice}  # the model's threads too
    finally:
        worker.stop()
