"""Contract fuzzing: schemathesis drives every operation of the app's OpenAPI schema against the
real API under uvicorn (real Temporal, PostgreSQL and worker) with a valid key. Every answer must
be no server error, a status code the schema declares, and a body that matches the schema."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from core.settings import Settings
from tests.support import Stack, Tenant, new_tenant, wait_for_status
from workflows.types import Status

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]

# The schema the app itself publishes; building the app connects to nothing.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]


@dataclass
class Known:
    """Ids of things the fuzzing tenant owns, so generated requests also reach real rows."""

    tenant: Tenant
    ids: dict[str, str]


@pytest.fixture(scope="module")
async def known(api_url: str, stack: Stack) -> AsyncIterator[Known]:
    tenant = await new_tenant(stack, "contract")
    params = {"agent_id": tenant.agent_id}
    async with httpx.AsyncClient(base_url=api_url, headers=tenant.headers, timeout=60) as http:
        upload = await http.post(
            "/upload/agent", params=params, files={"file": ("fuzz.txt", b"Contract fuzzing.")}
        )
        assert upload.status_code == 202, upload.text
        batch = await http.post(
            "/upload/agent/batch", params=params, files={"file": ("b.txt", b"Batch fuzzing.")}
        )
        assert batch.status_code == 202, batch.text
        task_id = upload.json()["task_id"]
        done = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
        assert done["status"] == "complete", done
    yield Known(
        tenant,
        {
            "agent_id": tenant.agent_id,
            "task_id": task_id,
            "batch_id": batch.json()["batch_id"],
            "document_id": done["document_id"],
        },
    )
    async with httpx.AsyncClient(base_url=api_url, headers=tenant.headers, timeout=60) as http:
        await uploads_settled(http)


async def uploads_settled(http: httpx.AsyncClient) -> None:
    """Wait for the uploads the fuzzing started, so none is cut off when the worker stops."""
    async with asyncio.timeout(120):
        while True:
            running = await http.get("/api/progress", params={"status": "processing"})
            queued = await http.get("/api/progress", params={"status": "queued"})
            if not running.json()["tasks"] and not queued.json()["tasks"]:
                return
            await asyncio.sleep(0.5)


def use_known_ids(case: Case[Any], known: Known) -> None:
    """Swap generated ids for the tenant's real ones (never to delete its agent: the later
    operations would have nothing left to reach)."""
    if case.method.upper() == "DELETE" and case.path == "/agents/{agent_id}":
        return
    for values in (case.path_parameters, case.query):
        if values is None:
            continue
        for name in values.keys() & known.ids.keys():
            values[name] = known.ids[name]


@schema.given(real_ids=st.booleans())
@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
async def test_contract_every_operation(
    case: Case[Any], real_ids: bool, api_url: str, known: Known
) -> None:
    if real_ids:
        use_known_ids(case, known)
    await asyncio.to_thread(
        case.call_and_validate,
        base_url=api_url,
        headers=known.tenant.headers,
        checks=CHECKS,
        timeout=60,
    )


async def test_contract_served_schema_is_the_apps(http: httpx.AsyncClient) -> None:
    served = await http.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == create_app(Settings()).openapi()
    components = served.json()["components"]["schemas"]
    assert "HTTPValidationError" not in components  # every 422 is an ErrorBody
