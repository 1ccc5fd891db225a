"""Agents and health over HTTP."""

from __future__ import annotations

import httpx

from tests.support import Stack, Tenant, new_tenant


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
    anonymous = await http.get("/agents")
    assert empty.status_code == 422
    assert empty.json()["code"] == "invalid_request"
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"


async def test_health_is_ok_when_everything_answers(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "temporal": "ok"}
