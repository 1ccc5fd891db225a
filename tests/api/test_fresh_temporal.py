"""The API against a Temporal no worker has set up yet (a fresh cluster, or namespace)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from core.embedded import free_port, start_temporal_dev_server, stop_process
from tests.support import Stack, new_tenant, serve, stack_settings


async def test_uploads_are_accepted_before_any_worker_registered_the_search_attributes(
    stack: Stack, tmp_path: Path
) -> None:
    """Every upload sets the OwnerId, AgentId and IngestStatus search attributes, which only
    the worker registered: until one had started, each upload was a 503 "Temporal did not
    answer (Namespace default has no mapping defined for search attribute ...)"."""
    port = free_port()
    # A Temporal nothing of docingest has touched: no search attributes of ours.
    server = start_temporal_dev_server(
        tmp_path, port=port, ui_port=free_port(), search_attributes=False
    )
    try:
        tenant = await new_tenant(stack)
        settings = stack_settings(stack, temporal_address=f"127.0.0.1:{port}")
        async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
            # The API registers them in the background once Temporal answers: a few tries.
            for _ in range(40):
                upload = await http.post(
                    "/upload/agent",
                    params={"agent_id": tenant.agent_id},
                    headers=tenant.headers,
                    files={"file": ("a.txt", b"hello world " * 20)},
                )
                if upload.status_code != 503:
                    break
                await asyncio.sleep(0.5)
            listed = await http.get("/api/progress", headers=tenant.headers)
    finally:
        stop_process(server)
    assert upload.status_code == 202, upload.text
    assert listed.status_code == 200, listed.text
