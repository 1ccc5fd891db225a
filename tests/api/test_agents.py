"""Agents and health over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import make_url, text

import migrations
from api.app import create_app
from api.cursors import encode_cursor
from api.json_body import MAX_JSON_BODY_BYTES, JsonBodyRoute
from api.routes import agents, search
from core.db import create_engine
from core.models import Agent
from core.settings import Settings
from tests.support import Stack, Tenant, new_tenant, serve, serve_app, stack_settings
from workflows.types import AGENT_DELETED


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
    assert listed.json()["next_cursor"] is None


async def _add_agents(stack: Stack, tenant: Tenant, count: int) -> list[str]:
    """Agents created in one transaction: one `created_at`, so only their ids order them."""
    async with stack.sessionmaker.begin() as session:
        rows = [Agent(owner_id=tenant.owner_id, name=f"user-{number}") for number in range(count)]
        session.add_all(rows)
        await session.flush()
        return sorted(str(row.id) for row in rows)


async def _pages(
    http: httpx.AsyncClient, tenant: Tenant, limit: int, cursor: str | None = None
) -> list[dict[str, Any]]:
    """The pages of `GET /agents` from `cursor` on, following `next_cursor` until it is null."""
    pages: list[dict[str, Any]] = []
    while True:
        after = {} if cursor is None else {"cursor": cursor}
        response = await http.get(
            "/agents", params={"limit": limit, **after}, headers=tenant.headers
        )
        assert response.status_code == 200, response.text
        pages.append(response.json())
        cursor = pages[-1]["next_cursor"]
        if cursor is None:
            return pages


async def test_agents_list_pages_by_cursor_while_agents_come_and_go(
    stack: Stack, http: httpx.AsyncClient, tenant: Tenant
) -> None:
    """One response held every agent of the caller: tens of thousands for an application with
    an agent per end user. Pages read by `next_cursor` list each agent once, oldest first,
    while others are created and deleted."""
    added = await _add_agents(stack, tenant, 6)
    first = await http.get("/agents", params={"limit": 3}, headers=tenant.headers)
    created = await http.post("/agents", json={"name": "late"}, headers=tenant.headers)
    listed_first = first.json()["agents"][0]["id"]
    deleted = await http.delete(f"/agents/{listed_first}", headers=tenant.headers)
    assert (first.status_code, created.status_code, deleted.status_code) == (200, 201, 204)
    pages = [first.json(), *await _pages(http, tenant, 3, first.json()["next_cursor"])]
    assert [len(page["agents"]) for page in pages] == [3, 3, 2]
    listed = [agent["id"] for page in pages for agent in page["agents"]]
    assert listed == [tenant.agent_id, *added, created.json()["id"]]


async def test_agents_page_that_ends_the_list_has_no_next_cursor(
    stack: Stack, http: httpx.AsyncClient, tenant: Tenant
) -> None:
    """A full page that holds the last agent says so, rather than a cursor to an empty page."""
    await _add_agents(stack, tenant, 3)
    assert [len(page["agents"]) for page in await _pages(http, tenant, 2)] == [2, 2]
    for limit in (4, 5):
        (whole,) = await _pages(http, tenant, limit)
        assert len(whole["agents"]) == 4


async def test_agents_list_without_paging_parameters_is_its_first_100(
    stack: Stack, http: httpx.AsyncClient, tenant: Tenant
) -> None:
    """A client that sends no `limit` gets the first page of the default size (100), and a
    `next_cursor` for the rest."""
    added = await _add_agents(stack, tenant, 100)
    first = await http.get("/agents", headers=tenant.headers)
    assert first.status_code == 200, first.text
    assert [agent["id"] for agent in first.json()["agents"]] == [tenant.agent_id, *added[:99]]
    rest = await http.get(
        "/agents", params={"cursor": first.json()["next_cursor"]}, headers=tenant.headers
    )
    assert [agent["id"] for agent in rest.json()["agents"]] == added[99:]
    assert rest.json()["next_cursor"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 1001},
        {"limit": "ten"},
        {"cursor": "not-a-cursor"},
        {"cursor": encode_cursor("2026-01-01T00:00:00+00:00", "not-an-id")},
        {"cursor": encode_cursor("yesterday", str(uuid.uuid4()))},
        {"cursor": "A" * 201},
    ],
)
async def test_agents_list_refuses_a_bad_limit_or_cursor(
    http: httpx.AsyncClient, tenant: Tenant, params: dict[str, str | int]
) -> None:
    response = await http.get("/agents", params=params, headers=tenant.headers)
    assert (response.status_code, response.json()["code"]) == (422, "invalid_request")


def test_schema_declares_the_paging_of_the_agents_list() -> None:
    schema = create_app(Settings()).openapi()
    operation = schema["paths"]["/agents"]["get"]
    params = {param["name"]: param["schema"] for param in operation["parameters"]}
    assert params["limit"] == {
        "type": "integer",
        "maximum": 1000,
        "minimum": 1,
        "default": 100,
        "title": "Limit",
    }
    assert params["cursor"]["anyOf"] == [{"type": "string", "maxLength": 200}, {"type": "null"}]
    assert operation["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    listed = schema["components"]["schemas"]["AgentsPublic"]
    assert listed["required"] == ["agents", "next_cursor"]


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


async def test_agents_and_search_say_why_a_body_is_not_read_as_json(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    """`curl -d '{"name": "sales"}'` sends a form's Content-Type, and FastAPI reads no JSON
    from it: the answer was "body: Input should be a valid dictionary or object", of the
    object that was sent. It says which Content-Type to send instead. A body that is not
    valid JSON was "body.17: JSON decode error": it says where and why."""
    for path, body, media_type in (
        ("/agents", b'{"name": "sales"}', "application/x-www-form-urlencoded"),
        (f"/agents/{tenant.agent_id}/search", b'{"query": "bread"}', "text/plain"),
    ):
        response = await http.post(
            path, content=body, headers={**tenant.headers, "Content-Type": media_type}
        )
        assert response.status_code == 422, response.text
        assert response.json() == {
            "detail": f"body: the body was sent as {media_type}, which is not read: send a "
            "JSON object with `Content-Type: application/json`",
            "code": "invalid_request",
        }
    suffixed = await http.post(
        "/agents",
        content=b'{"name": "sales"}',
        headers={**tenant.headers, "Content-Type": "application/vnd.api+json; charset=utf-8"},
    )
    assert suffixed.status_code == 201, suffixed.text
    trailing_comma = await http.post(
        "/agents",
        content=b'{"name": "sales",}',
        headers={**tenant.headers, "Content-Type": "application/json"},
    )
    assert trailing_comma.status_code == 422
    assert trailing_comma.json()["detail"] == (
        "body: not valid JSON at character 17: Expecting property name enclosed in double quotes"
    )
    not_an_object = await http.post("/agents", json=["sales"], headers=tenant.headers)
    assert not_an_object.json()["detail"] == (
        "body: Input should be a valid dictionary or object to extract fields from"
    )


@pytest.mark.parametrize("route", ["/agents", "/agents/{agent}/search"])
async def test_agents_json_body_that_does_not_parse_is_401_without_a_valid_key(
    http: httpx.AsyncClient, tenant: Tenant, route: str
) -> None:
    """FastAPI parses a JSON body before the route's key check: a caller with no key, or a
    wrong one, was told where its JSON broke (422) instead of that it needs a key."""
    path = route.format(agent=tenant.agent_id)
    json_type = {"Content-Type": "application/json"}
    for body in (b'{"name": ', b"\xff\xfe"):
        for key in ({}, {"Authorization": "Bearer dik_not-a-key"}):
            refused = await http.post(path, content=body, headers={**json_type, **key})
            assert refused.status_code == 401, (body, key, refused.text)
            assert refused.json()["code"] == "unauthorized"
            assert refused.headers["WWW-Authenticate"] == "Bearer"
        with_key = await http.post(path, content=body, headers={**json_type, **tenant.headers})
        assert with_key.status_code == 422, with_key.text
        assert with_key.json()["detail"].startswith("body: not valid JSON at character")


@pytest.mark.parametrize(
    ("method", "path", "hint"),
    [
        ("DELETE", "/agents/%2F", "the routes are listed at /docs"),
        ("DELETE", "/agents/{agent_id}/", "drop the trailing slash"),
        ("GET", "/agents/", "drop the trailing slash"),
        ("POST", "/agents/", "drop the trailing slash"),
        ("GET", "/documents/{agent_id}/", "drop the trailing slash"),
        ("GET", "/upload/status/{agent_id}/", "drop the trailing slash"),
        ("GET", "/health/", "drop the trailing slash"),
        ("GET", "/healthz/", "the routes are listed at /docs"),
        ("GET", "/ws/upload/{agent_id}", "connect with ws:// (or wss://), not HTTP"),
    ],
)
async def test_app_answers_a_path_no_route_takes_with_a_json_404(
    http: httpx.AsyncClient, tenant: Tenant, method: str, path: str, hint: str
) -> None:
    """Never a redirect to another URL: `DELETE /agents/%2F` was a 307 to `/agents`. The 404
    says what to do (it said "Not Found", as of an unknown id; of the WebSocket's path too)."""
    response = await http.request(
        method, path.format(agent_id=tenant.agent_id), headers=tenant.headers, json={"name": "a"}
    )
    assert response.status_code == 404, response.headers
    assert response.json()["code"] == "not_found"
    assert response.json()["detail"].endswith(hint), response.json()
    agents = await http.get("/agents", headers=tenant.headers)
    assert [agent["id"] for agent in agents.json()["agents"]] == [tenant.agent_id]


async def test_app_method_not_allowed_names_every_method_of_the_path(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    """Starlette's 405 named the methods of the first route on the path alone: `PUT /agents`
    said `Allow: POST`, though `GET /agents` lists the agents, and its detail said "Method Not
    Allowed" and nothing of what to use."""
    for method, path, allowed in (
        ("PUT", "/agents", "GET, HEAD, POST"),
        ("DELETE", "/agents", "GET, HEAD, POST"),
        ("POST", "/health", "GET, HEAD"),
        ("PATCH", f"/agents/{tenant.agent_id}", "DELETE"),
        ("PUT", f"/documents/{uuid.uuid4()}", "GET, HEAD, DELETE"),
        ("GET", "/upload/agent", "POST"),
    ):
        refused = await http.request(method, path, headers=tenant.headers)
        assert refused.status_code == 405, (method, path)
        assert refused.headers["Allow"] == allowed, (method, path)
        assert refused.json() == {
            "detail": f"{method} is not allowed here; this path takes {allowed}",
            "code": "method_not_allowed",
        }


async def test_app_answers_head_as_get_without_its_body(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    """FastAPI's routes take only the methods they declare: `HEAD /health`, the probe of many
    load balancers and uptime monitors, was a 405."""
    health = await http.head("/health")
    assert (health.status_code, health.content) == (200, b"")
    assert (await http.head("/agents")).status_code == 401
    listed = await http.head("/agents", headers=tenant.headers)
    assert (listed.status_code, listed.content) == (200, b"")
    body = (await http.get("/agents", headers=tenant.headers)).content
    assert int(listed.headers["Content-Length"]) == len(body)


async def _post_json_head(
    api_url: str, path: str, framing: str, key: str | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection that has sent the head of a JSON POST, with `key` if given."""
    url = urlsplit(api_url)
    assert url.hostname is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    authorization = "" if key is None else f"Authorization: Bearer {key}\r\n"
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"{authorization}{framing}\r\n\r\n".encode()
    )
    return reader, writer


@pytest.mark.parametrize("keyed", [True, False], ids=["key", "no key"])
@pytest.mark.parametrize("route", ["/agents", "/agents/{agent}/search"])
async def test_agents_json_body_past_its_limit_is_413_before_it_is_read(
    api_url: str, tenant: Tenant, route: str, keyed: bool
) -> None:
    """FastAPI reads a JSON body whole before the key is checked: a client with no key made
    the API wait for a declared 8 GiB body, and hold a 32 MiB one until it ended, then 401.
    Past the bound it is a 413 at once; for a caller with no key a 401 at once (it was 413)."""
    path = route.format(agent=tenant.agent_id)
    key, status = (tenant.key, b"413") if keyed else (None, b"401")
    reader, writer = await _post_json_head(api_url, path, "Content-Length: 8589934592", key)
    try:
        answered = await asyncio.wait_for(reader.readline(), timeout=10)
    finally:
        writer.close()
    assert answered.split()[1] == status, answered

    reader, writer = await _post_json_head(api_url, path, "Transfer-Encoding: chunked", key)
    chunk, sent, total = b"a" * (256 * 1024), 0, 32 * 1024 * 1024
    try:
        answer = asyncio.ensure_future(reader.readline())
        while sent < total and not answer.done():
            writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            try:
                await writer.drain()
            except ConnectionError:
                break
        answered = await asyncio.wait_for(answer, timeout=10)
    finally:
        writer.close()
    assert answered.split()[1] == status, answered
    assert sent < total  # answered while the body was still coming


def test_schema_declares_the_413_of_every_route_with_a_bounded_json_body() -> None:
    """Each of these routes answers 413 past the bound (above), and the schema declared it for
    none: a client generated from the schema, or schemathesis, met an undeclared status."""
    schema = create_app(Settings()).openapi()
    bounded = [
        (route.path, method.lower())
        for route in [*agents.router.routes, *search.router.routes]
        if isinstance(route, JsonBodyRoute)
        for method in route.methods or ()
    ]
    assert ("/agents", "post") in bounded and ("/agents/{agent_id}/search", "post") in bounded
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    assert {
        (path, method): schema["paths"][path][method]["responses"]["413"]["content"][
            "application/json"
        ]["schema"]
        for path, method in bounded
    } == {operation: error_body for operation in bounded}


async def test_agents_json_body_at_its_limit_is_read(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    padded = b'{"name": "padded"' + b" " * (MAX_JSON_BODY_BYTES - 18) + b"}"
    assert len(padded) == MAX_JSON_BODY_BYTES
    created = await http.post(
        "/agents", content=padded, headers={**tenant.headers, "Content-Type": "application/json"}
    )
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "padded"


async def test_health_is_ok_when_everything_answers(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "temporal": "ok"}


@asynccontextmanager
async def database_at(stack: Stack, revision: str | None) -> AsyncIterator[str]:
    """A new database on the session's server, migrated up to `revision` (None: no schema)."""
    assert stack.settings.database_url is not None
    name = f"behind_{uuid.uuid4().hex[:8]}"
    engine = create_engine(stack.settings.database_url, pool_size=1)
    server = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with server.connect() as connection:
        await connection.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(stack.settings.database_url).set(database=name).render_as_string(False)
    if revision is not None:
        config = Config()
        config.set_main_option("script_location", str(Path(migrations.__file__).parent))
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        await asyncio.to_thread(command.upgrade, config, revision)
    try:
        yield url
    finally:
        async with server.connect() as connection:
            await connection.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        await engine.dispose()


async def test_health_and_requests_say_run_migrate_when_the_schema_is_behind(
    stack: Stack, tenant: Tenant
) -> None:
    """An API started before `docingest migrate` (a fresh database, or a release whose
    migration has not run yet): /health said 200 `ok` while every request was a 500
    "Internal error", so a load balancer sent it traffic and the operator had no hint."""
    for revision in (None, "0003"):
        async with (
            database_at(stack, revision) as url,
            serve_app(create_app(stack_settings(stack, database_url=url))) as api,
            httpx.AsyncClient(base_url=api, timeout=30) as http,
        ):
            health = await http.get("/health")
            agents = await http.get("/agents", headers=tenant.headers)
        assert health.status_code == 503, health.text
        assert health.json() == {
            "status": "unavailable",
            "database": "unavailable",
            "temporal": "ok",
            "detail": "unavailable: database (its schema is not this release's: "
            "run `docingest migrate`)",
            "code": "service_unavailable",
        }
        if revision is None:
            assert agents.status_code == 503, agents.text
            assert agents.json() == {
                "detail": "The database is unavailable: its schema is not this release's: "
                "run `docingest migrate`",
                "code": "service_unavailable",
            }


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


async def test_agents_delete_cancels_every_running_upload_of_a_large_agent(
    stack: Stack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete listed the agent's running uploads, then cancelled them all, within one 5 s
    deadline, and the cancels not sent by then were dropped (1,374 of 3,000 were asked on the
    2-core machine; none of 20,000, whose listing took longer). Each missed upload ran its
    extract and embed steps before failing at its store step. Here 400 uploads, and a delete
    that waits 0.2 s: the cancels go on after its answer."""
    monkeypatch.setattr(agents, "_CANCEL_DEADLINE", timedelta(seconds=0.2))
    settings = stack_settings(stack)  # no worker: the uploads stay running
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        task_ids: list[str] = []
        for first in range(0, 400, 100):
            files = [
                ("file", (f"{number}.txt", f"upload {number}".encode(), "text/plain"))
                for number in range(first, first + 100)
            ]
            batch = await http.post(
                "/upload/agent/batch",
                params={"agent_id": tenant.agent_id},
                files=files,
                headers=tenant.headers,
            )
            assert batch.status_code == 202, batch.text
            task_ids += [task["task_id"] for task in batch.json()["tasks"]]
        listed = f"OwnerId = '{tenant.owner_id}' AND ExecutionStatus = 'Running'"
        async with asyncio.timeout(30):  # visibility is eventually consistent
            while (await stack.client.count_workflows(listed)).count < len(task_ids):
                await asyncio.sleep(0.2)
        deleted = await http.delete(f"/agents/{tenant.agent_id}", headers=tenant.headers)
        assert deleted.status_code == 204
        waiting = set(task_ids)
        async with asyncio.timeout(120):  # the cancels left go on after the 204
            while waiting:
                reasons = await _cancel_reasons(stack, sorted(waiting))
                assert set(reasons.values()) <= {AGENT_DELETED}, reasons
                waiting -= set(reasons)
                await asyncio.sleep(1)


async def _cancel_reasons(stack: Stack, task_ids: list[str]) -> dict[str, str]:
    """The reason of each task's cancel request, for those that have one (from history)."""
    limit = asyncio.Semaphore(20)

    async def reason(task_id: str) -> str | None:
        async with limit:
            handle = stack.client.get_workflow_handle(task_id)
            async for event in handle.fetch_history_events():
                if event.HasField("workflow_execution_cancel_requested_event_attributes"):
                    return event.workflow_execution_cancel_requested_event_attributes.cause
        return None

    found = await asyncio.gather(*(reason(task_id) for task_id in task_ids))
    return {task_id: cause for task_id, cause in zip(task_ids, found, strict=True) if cause}
