"""A task whose workflow has said `complete` but not yet closed (its staging cleanup runs
after the `complete` update, up to 3 attempts of 2 min) is listed under `status=complete`."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import httpx
from temporalio.common import SearchAttributePair, TypedSearchAttributes

from core.temporal import AGENT_ID, INGEST_STATUS, OWNER_ID
from tests.support import Stack, Tenant
from workflows.types import MEMO_PROGRESS, WORKFLOW_NAME, IngestTask, Stage, Status, TaskProgress


async def test_a_task_cleaning_up_after_complete_is_listed_as_complete(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    task_id = str(uuid.uuid4())
    task = IngestTask(
        task_id=task_id, owner_id=str(tenant.owner_id), agent_id=tenant.agent_id,
        filename="done.txt", format="text", size_bytes=1, sha256="0" * 64, chunk_size=300,
        chunk_overlap=0, embed_task_queue=f"nobody-{task_id}",
    )  # fmt: skip
    # What IngestDocument shows between its `complete` update and its return (`_cleanup`).
    progress = dataclasses.replace(
        TaskProgress.queued(task, "2026-01-01T00:00:00.000Z"),
        status=Status.COMPLETE, stage=Stage.DONE, message="Successfully processed done.txt",
        document_id=str(uuid.uuid4()), completed_at="2026-01-01T00:00:01.000Z",
    )  # fmt: skip
    await stack.client.start_workflow(
        WORKFLOW_NAME, task, id=task_id, task_queue=f"nobody-{task_id}",
        memo={MEMO_PROGRESS: dataclasses.asdict(progress)},
        search_attributes=TypedSearchAttributes([
            SearchAttributePair(OWNER_ID, str(tenant.owner_id)),
            SearchAttributePair(AGENT_ID, tenant.agent_id),
            SearchAttributePair(INGEST_STATUS, Status.COMPLETE),
        ]),
    )  # fmt: skip

    async def listed() -> dict[str, list[str]]:
        return {
            status: [
                task["task_id"]
                for task in (
                    await http.get(
                        "/api/progress", params={"status": status}, headers=tenant.headers
                    )
                ).json()["tasks"]
            ]
            for status in ("processing", "complete", "error")
        }

    try:
        single = (await http.get(f"/upload/status/{task_id}", headers=tenant.headers)).json()
        assert single["status"] == "complete"
        async with asyncio.timeout(10):  # visibility is eventually consistent (ms here)
            while not (await http.get("/api/progress", headers=tenant.headers)).json()["tasks"]:
                await asyncio.sleep(0.05)
        running = await listed()
    finally:
        # An operator stops it mid-cleanup: it stays `complete` (api/task_status.py _reconcile).
        await stack.client.get_workflow_handle(task_id).terminate("test over")
    async with asyncio.timeout(10):
        while (await stack.client.get_workflow_handle(task_id).describe()).close_time is None:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.2)  # past DOCINGEST_PROGRESS_MAX_AGE, and visibility's lag
    single = (await http.get(f"/upload/status/{task_id}", headers=tenant.headers)).json()
    assert single["status"] == "complete"
    assert running == {"processing": [], "complete": [task_id], "error": []}
    assert await listed() == {"processing": [], "complete": [task_id], "error": []}
