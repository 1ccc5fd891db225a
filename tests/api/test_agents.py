"""Agents and health over HTTP."""

from __future__ import annotations

from contextlib import AsyncExitStack

import httpx
from sqlalchemy import text

from api.app import create_app
from tests.support import Stack, Tenant, new_tenant, serve_app, stack_settings


async def test_agents_create_and_list_only_own(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    created = await http.post("/agents", json={"name": "support bot"}, headers=tenant.headers)
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"id", "name", "created_at"}
    assert body["name"] == "support bot"

    other = await new_tenant(stack, "other")
    await http.post("/agents", json={"name": "foreign"}, headers=other.headers)
    listed = await http.get("/agents", headers=tenant.headers)
    assert listed.status_code == 200
    names = [agent["name"] for agent in listed.json()["agents"]]
    assert names == ["tenant-agent", "support bot"]


async def test_agents_reject_bad_bodies_and_missing_keys(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    empty = await http.post("/agents", json={"name": ""}, headers=tenant.headers)
    blank = await http.post("/agents", json={"name": " \t "}, headers=tenant.headers)
    padded = await http.post("/agents", json={"name": "  sales  "}, headers=tenant.headers)
    anonymous = await http.get("/agents")
    assert empty.status_code == 422
    assert empty.json()["code"] == "invalid_request"
    assert blank.status_code == 422, blank.text
    assert padded.json()["name"] == "sales"
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"


async def test_health_is_ok_when_everything_answers(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "temporal": "ok"}


async def test_health_is_ok_while_busy_requests_hold_every_pooled_connection(
    stack: Stack,
) -> None:
    """A pool held whole by slow requests is an API under load, not a database that is down:
    /health said `database: unavailable` (503) after its 2 s deadline, and a load balancer
    would have pulled a healthy replica."""
    app = create_app(stack_settings(stack))
    async with (
        serve_app(app) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
        AsyncExitStack() as held,
    ):
        for _ in range(20):  # create_engine's pool: 10 connections + 10 overflow
            engine = app.state.resources.engine  # made by the app's start-up
            connection = await held.enter_async_context(engine.connect())
            await connection.execute(text("SELECT 1"))
        response = await http.get("/health")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "database": "ok", "temporal": "ok"}
