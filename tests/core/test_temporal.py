"""Connecting to Temporal at start-up: a server that is not up yet is waited for, not fatal."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from temporalio.api.workflowservice.v1 import ListNamespacesRequest

from core.embedded import free_port, start_temporal_dev_server
from core.temporal import TemporalUnreachable, connect


async def test_connect_gives_up_naming_the_address_when_nothing_answers() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(TemporalUnreachable) as raised:
        await connect(address, "default", patience_s=0.5)
    assert str(raised.value).startswith(f"Temporal at {address} did not answer within 0.5 s:")
    assert "Connection refused" in str(raised.value)


async def test_connect_waits_for_a_server_that_starts_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker started beside the server (compose, `make dev`) connects once it is up."""
    caplog.set_level(logging.INFO, logger="core.temporal")
    port = free_port()
    connecting = asyncio.ensure_future(connect(f"127.0.0.1:{port}", "default"))
    server = None
    try:
        while not any("waiting for Temporal" in r.getMessage() for r in caplog.records):
            assert not connecting.done()
            await asyncio.sleep(0.05)
        server = await asyncio.to_thread(
            start_temporal_dev_server,
            tmp_path,
            port=port,
            ui_port=free_port(),
            dies_with_caller=False,  # started on a thread of the loop's executor
        )
        client = await asyncio.wait_for(connecting, timeout=60)
        namespaces = await client.workflow_service.list_namespaces(ListNamespacesRequest())
        assert "default" in {ns.namespace_info.name for ns in namespaces.namespaces}
    finally:
        connecting.cancel()
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
