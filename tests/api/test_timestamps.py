"""Every timestamp of the API takes one form: ISO-8601 UTC with milliseconds and `Z`."""

from __future__ import annotations

import re

import httpx

from tests.documents import lorem
from tests.support import Stack, Tenant, serve, stack_settings

ISO_MS_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def test_a_batch_and_its_tasks_share_one_timestamp_form(stack: Stack, tenant: Tenant) -> None:
    settings = stack_settings(stack)  # fresh task queues: its tasks stay queued
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        sent = await http.post(
            "/upload/agent/batch",
            params={"agent_id": tenant.agent_id},
            headers=tenant.headers,
            files=[("file", ("a.txt", lorem(5, seed=11).encode()))],
        )
        batch = (
            await http.get(f"/upload/batch/{sent.json()['batch_id']}", headers=tenant.headers)
        ).json()
        agents = (await http.get("/agents", headers=tenant.headers)).json()["agents"]
        for task in batch["tasks"]:
            await stack.client.get_workflow_handle(task["task_id"]).terminate("test over")
    assert ISO_MS_Z.fullmatch(batch["tasks"][0]["started_at"])
    assert ISO_MS_Z.fullmatch(batch["created_at"]), batch["created_at"]
    assert ISO_MS_Z.fullmatch(agents[0]["created_at"]), agents[0]["created_at"]
