"""Tenant isolation: an owner never reaches another owner's agents, tasks, batches or documents.

Two owners with their own keys. The intruder is handed the victim's real ids (the best possible
guess) and tries every route with them: always 404, never 403, and nothing of the victim's
changes. The same request by the victim gets a real answer, so each 404 is the owner check,
not a missing id. Every authenticated route of the app has a case here, or the coverage test
fails.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute
from sqlalchemy import text
from starlette.routing import BaseRoute
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from api.app import create_app
from api.deps import needs_key
from core.embedded import free_port
from core.keys import hash_key
from core.settings import Settings
from tests.documents import make_image_only_pdf
from tests.support import (
    Stack,
    Tenant,
    new_tenant,
    stack_settings,
    upload_file,
    wait_for_status,
    wait_until_healthy,
)
from workflows.types import Status

pytestmark = pytest.mark.usefixtures("worker")

# Routes anyone may call: the health check and the API's own documentation.
PUBLIC = {
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}
SECRET_WORD = "quokkazanzibar"


@dataclass
class World:
    """The intruder and the victim, with everything the victim owns."""

    api_url: str
    intruder: Tenant
    victim: Tenant
    victim_task: str  # complete
    victim_document: str
    victim_failed_task: str
    victim_batch: str
    intruder_task: str
    intruder_document: str


async def _finished(http: httpx.AsyncClient, tenant: Tenant, task_id: str) -> dict[str, Any]:
    return await wait_for_status(http, tenant, task_id, Status.TERMINAL, deadline_s=90)


@pytest.fixture(scope="module")
async def world(api_url: str, stack: Stack) -> World:
    intruder = await new_tenant(stack, "intruder")
    victim = await new_tenant(stack, "victim")
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:
        tasks = await asyncio.gather(
            upload_file(
                http, victim, "victim.txt", f"The {SECRET_WORD} files are private.".encode()
            ),
            upload_file(http, victim, "scan.pdf", make_image_only_pdf()),
            upload_file(http, intruder, "intruder.txt", b"The intruder's own notes on quokkas."),
        )
        batch = await http.post(
            "/upload/agent/batch",
            params={"agent_id": victim.agent_id},
            headers=victim.headers,
            files={"file": ("batch.txt", b"A batch of the victim's own.")},
        )
        assert batch.status_code == 202, batch.text
        victim_done, victim_failed, intruder_done = await asyncio.gather(
            *(_finished(http, tenant, task) for tenant, task in zip(
                (victim, victim, intruder), tasks, strict=True))
        )  # fmt: skip
    assert victim_done["status"] == "complete", victim_done
    assert victim_failed["status"] == "failed", victim_failed
    assert intruder_done["status"] == "complete", intruder_done
    return World(
        api_url=api_url,
        intruder=intruder,
        victim=victim,
        victim_task=tasks[0],
        victim_document=victim_done["document_id"],
        victim_failed_task=tasks[1],
        victim_batch=batch.json()["batch_id"],
        intruder_task=tasks[2],
        intruder_document=intruder_done["document_id"],
    )


def assert_not_found(response: httpx.Response) -> None:
    """404 with the usual error body: the id neither leaks nor is refused (403)."""
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "not_found"


# --- one case per authenticated route ----------------------------------------------------------

Case = Callable[[httpx.AsyncClient, World], Awaitable[None]]
CASES: dict[tuple[str, str], Case] = {}


def case(method: str, path: str) -> Callable[[Case], Case]:
    def register(check: Case) -> Case:
        CASES[(method, path)] = check
        return check

    return register


@case("GET", "/agents")
async def _list_agents(http: httpx.AsyncClient, world: World) -> None:
    for own, other in ((world.intruder, world.victim), (world.victim, world.intruder)):
        listed = await http.get("/agents", headers=own.headers)
        ids = {agent["id"] for agent in listed.json()["agents"]}
        assert own.agent_id in ids and other.agent_id not in ids


@case("POST", "/agents")
async def _create_agent(http: httpx.AsyncClient, world: World) -> None:
    created = await http.post("/agents", json={"name": "second"}, headers=world.intruder.headers)
    assert created.status_code == 201
    victims = await http.get("/agents", headers=world.victim.headers)
    assert created.json()["id"] not in {agent["id"] for agent in victims.json()["agents"]}


@case("GET", "/agents/{agent_id}/documents")
async def _list_documents(http: httpx.AsyncClient, world: World) -> None:
    path = f"/agents/{world.victim.agent_id}/documents"
    assert_not_found(await http.get(path, headers=world.intruder.headers))
    assert (await http.get(path, headers=world.victim.headers)).json()["total"] >= 1
    own = await http.get(
        f"/agents/{world.intruder.agent_id}/documents", headers=world.intruder.headers
    )
    listed = {doc["id"] for doc in own.json()["documents"]}
    assert world.intruder_document in listed and world.victim_document not in listed


@case("DELETE", "/agents/{agent_id}")
async def _delete_agent(http: httpx.AsyncClient, world: World) -> None:
    path = f"/agents/{world.victim.agent_id}"
    assert_not_found(await http.delete(path, headers=world.intruder.headers))
    victims = await http.get("/agents", headers=world.victim.headers)
    assert world.victim.agent_id in {agent["id"] for agent in victims.json()["agents"]}


@case("POST", "/agents/{agent_id}/search")
async def _search(http: httpx.AsyncClient, world: World) -> None:
    body = {"query": f"{SECRET_WORD} private files", "top_k": 50}
    path = f"/agents/{world.victim.agent_id}/search"
    assert_not_found(await http.post(path, json=body, headers=world.intruder.headers))
    own = await http.post(
        f"/agents/{world.intruder.agent_id}/search", json=body, headers=world.intruder.headers
    )
    assert own.status_code == 200, own.text
    hits = own.json()["results"]
    assert world.intruder_document in {hit["document_id"] for hit in hits}
    assert world.victim_document not in {hit["document_id"] for hit in hits}
    assert all(SECRET_WORD not in hit["text"] for hit in hits)


@case("GET", "/documents/{document_id}")
async def _get_document(http: httpx.AsyncClient, world: World) -> None:
    path = f"/documents/{world.victim_document}"
    assert_not_found(await http.get(path, headers=world.intruder.headers))
    assert (await http.get(path, headers=world.victim.headers)).status_code == 200


@case("DELETE", "/documents/{document_id}")
async def _delete_document(http: httpx.AsyncClient, world: World) -> None:
    path = f"/documents/{world.victim_document}"
    assert_not_found(await http.delete(path, headers=world.intruder.headers))
    assert (await http.get(path, headers=world.victim.headers)).status_code == 200


@case("POST", "/upload/agent")
async def _upload_into_other_agent(http: httpx.AsyncClient, world: World) -> None:
    response = await http.post(
        "/upload/agent",
        params={"agent_id": world.victim.agent_id},
        headers={**world.intruder.headers, "Idempotency-Key": "shared-key"},
        files={"file": ("planted.txt", b"planted by the intruder")},
    )
    assert_not_found(response)
    # The same idempotency key from each owner names two different tasks: no replay leaks.
    replies = [
        await http.post(
            "/upload/agent",
            params={"agent_id": tenant.agent_id},
            headers={**tenant.headers, "Idempotency-Key": "shared-key"},
            files={"file": ("keyed.txt", f"keyed upload of {tenant.agent_id}".encode())},
        )
        for tenant in (world.victim, world.intruder)
    ]
    assert [reply.status_code for reply in replies] == [202, 202], [r.text for r in replies]
    assert replies[0].json()["task_id"] != replies[1].json()["task_id"]
    assert "Idempotent-Replayed" not in replies[1].headers
    for tenant, reply in zip((world.victim, world.intruder), replies, strict=True):
        assert (await _finished(http, tenant, reply.json()["task_id"]))["status"] == "complete"


@case("POST", "/upload/agent/batch")
async def _batch_into_other_agent(http: httpx.AsyncClient, world: World) -> None:
    response = await http.post(
        "/upload/agent/batch",
        params={"agent_id": world.victim.agent_id},
        headers=world.intruder.headers,
        files=[("file", ("one.txt", b"planted one")), ("file", ("two.txt", b"planted two"))],
    )
    assert_not_found(response)


@case("GET", "/upload/status/{task_id}")
async def _status(http: httpx.AsyncClient, world: World) -> None:
    for task_id in (world.victim_task, world.victim_failed_task):
        path = f"/upload/status/{task_id}"
        assert_not_found(await http.get(path, headers=world.intruder.headers))
        assert (await http.get(path, headers=world.victim.headers)).status_code == 200


@case("GET", "/upload/batch/{batch_id}")
async def _batch_status(http: httpx.AsyncClient, world: World) -> None:
    path = f"/upload/batch/{world.victim_batch}"
    assert_not_found(await http.get(path, headers=world.intruder.headers))
    assert (await http.get(path, headers=world.victim.headers)).status_code == 200


@case("POST", "/upload/{task_id}/retry")
async def _retry(http: httpx.AsyncClient, world: World) -> None:
    path = f"/upload/{world.victim_failed_task}/retry"
    assert_not_found(await http.post(path, headers=world.intruder.headers))
    # The victim may retry its own failed task; it runs again and fails again.
    assert (await http.post(path, headers=world.victim.headers)).status_code == 202
    again = await _finished(http, world.victim, world.victim_failed_task)
    assert again["status"] == "failed"


@case("POST", "/upload/{task_id}/cancel")
async def _cancel(http: httpx.AsyncClient, world: World) -> None:
    path = f"/upload/{world.victim_task}/cancel"
    assert_not_found(await http.post(path, headers=world.intruder.headers))
    assert (await http.post(path, headers=world.victim.headers)).status_code == 409  # ended
    status = await http.get(f"/upload/status/{world.victim_task}", headers=world.victim.headers)
    assert status.json()["status"] == "complete"


@case("GET", "/api/progress")
async def _progress(http: httpx.AsyncClient, world: World) -> None:
    victim_tasks = {world.victim_task, world.victim_failed_task}
    for params in ({}, {"agent_id": world.victim.agent_id}, {"status": "complete"}):
        listed = await http.get("/api/progress", params=params, headers=world.intruder.headers)
        assert listed.status_code == 200, listed.text
        seen = {task["task_id"] for task in listed.json()["tasks"]}
        assert not seen & victim_tasks
        assert all(task["agent_id"] == world.intruder.agent_id for task in listed.json()["tasks"])


@case("WEBSOCKET", "/ws/upload/{task_id}")
async def _watch(http: httpx.AsyncClient, world: World) -> None:
    assert await watch(world, world.victim_task, world.intruder) == ([], 4404)
    messages, code = await watch(world, world.victim_task, world.victim)
    assert code == 1000 and messages[-1]["status"] == "complete"


async def watch(world: World, task_id: str, tenant: Tenant) -> tuple[list[dict[str, Any]], int]:
    url = f"{world.api_url.replace('http://', 'ws://', 1)}/ws/upload/{task_id}?token={tenant.key}"
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(30), connect(url) as socket:
        try:
            while True:
                messages.append(json.loads(await socket.recv()))
        except ConnectionClosed:
            assert socket.close_code is not None
            return messages, socket.close_code


def served_routes() -> list[tuple[str, str, BaseRoute]]:
    """(method, or WEBSOCKET, path, route) for every route the app serves. FastAPI from 0.16x
    keeps included routers whole in `app.routes`; `iter_route_contexts` flattens them."""
    routes: list[BaseRoute] = create_app(Settings()).routes
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    if flatten is not None:
        routes = [context.original_route for context in flatten(routes)]
    served: list[tuple[str, str, BaseRoute]] = []
    for route in routes:
        path = getattr(route, "path", "")
        if isinstance(route, APIWebSocketRoute):
            served.append(("WEBSOCKET", path, route))
        for method in getattr(route, "methods", None) or ():
            if method != "HEAD":
                served.append((method, path, route))
    return served


def test_isolation_covers_every_authenticated_route() -> None:
    served = served_routes()
    authenticated = {(method, path) for method, path, _ in served} - PUBLIC
    assert authenticated == set(CASES), (
        f"routes without an isolation case: {sorted(authenticated - set(CASES))}; "
        f"cases for routes that are gone: {sorted(set(CASES) - authenticated)}"
    )
    for method, path, route in served:
        if isinstance(route, APIRoute) and (method, path) not in PUBLIC:
            assert needs_key(route.dependant), f"{method} {path} does not require an API key"


@pytest.mark.parametrize("key", sorted(CASES), ids=[f"{m} {p}" for m, p in sorted(CASES)])
async def test_isolation_other_owners_ids_are_404_and_lists_exclude_them(
    world: World, key: tuple[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=world.api_url, timeout=60) as http:
        await CASES[key](http, world)


# --- keys -------------------------------------------------------------------------------------


async def test_isolation_authorization_given_twice_is_401(world: World) -> None:
    """Of two `Authorization` headers (`curl -H` twice) the first was read and the other
    ignored: the order of the headers chose whose agents were listed. Both are refused, over
    HTTP and on the WebSocket."""
    both = [
        ("Authorization", world.victim.headers["Authorization"]),
        ("Authorization", world.intruder.headers["Authorization"]),
    ]
    said = "Authorization given 2 times: send one `Bearer <key>`"
    async with httpx.AsyncClient(base_url=world.api_url, timeout=30) as http:
        refused = await http.get("/agents", headers=both)
    assert refused.status_code == 401, refused.text
    assert refused.json() == {"detail": said, "code": "unauthorized"}
    url = f"{world.api_url.replace('http://', 'ws://', 1)}/ws/upload/no-such-task"
    async with asyncio.timeout(30), connect(url, additional_headers=both) as socket:
        with pytest.raises(ConnectionClosed):
            await socket.recv()
    assert (socket.close_code, socket.close_reason) == (4401, said)


async def test_isolation_api_keys_are_stored_only_as_hashes(stack: Stack, world: World) -> None:
    async with stack.sessionmaker() as session:
        for tenant in (world.intruder, world.victim):
            rows = (
                await session.execute(
                    text("SELECT * FROM api_keys WHERE owner_id = :owner"),
                    {"owner": tenant.owner_id},
                )
            ).all()
            assert len(rows) == 1
            row = rows[0]._mapping
            secret = tenant.key.partition("_")[2]
            assert all(secret not in str(value) for value in row.values())
            assert row["key_hash"] == hashlib.sha256(tenant.key.encode()).hexdigest()


async def test_isolation_key_differing_only_in_its_last_character_is_401(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: set[str] = set()
    original = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.update((str(a), str(b)))
        return original(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module core.keys calls
    key = world.victim.key
    near_miss = key[:-1] + ("A" if key[-1] != "A" else "B")
    async with httpx.AsyncClient(base_url=world.api_url, timeout=30) as http:
        refused = await http.get("/agents", headers={"Authorization": f"Bearer {near_miss}"})
        accepted = await http.get("/agents", headers=world.victim.headers)
    assert refused.status_code == 401, refused.text
    assert refused.json()["code"] == "unauthorized"
    assert accepted.status_code == 200
    # Both were found by their shared prefix and told apart by the constant-time comparison.
    assert {hash_key(near_miss), hash_key(key)} <= compared


# `%74o%6Ben` is `token` percent-encoded in part: the route reads it as `token` (and took
# the key), the log showed it as it came, with the key in full. A token given twice is refused
# (4401), and neither copy is logged.
@pytest.mark.parametrize(
    ("query", "close_code"),
    [("token={key}", 4404), ("%74o%6Ben={key}", 4404), ("token={key}&token={key}", 4401)],
)
async def test_isolation_websocket_token_is_not_written_to_the_api_log(
    stack: Stack, tenant: Tenant, tmp_path: Path, query: str, close_code: int
) -> None:
    """`docingest api` at its default level (INFO) logs every WebSocket it accepts with its
    query string: the key a browser sends as ?token=<key> was written there in full."""
    settings = stack_settings(stack, api_port=free_port())
    env = {**os.environ, **settings.as_environment()}
    env.pop("DOCINGEST_LOG_LEVEL", None)
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        try:
            await wait_until_healthy(f"http://127.0.0.1:{settings.api_port}", process)
            given = query.format(key=tenant.key)
            url = f"ws://127.0.0.1:{settings.api_port}/ws/upload/no-such-task?{given}"
            async with asyncio.timeout(30), connect(url) as socket:
                with pytest.raises(ConnectionClosed):
                    await socket.recv()
            assert socket.close_code == close_code  # 4404: the key was read, the task unknown
        finally:
            process.terminate()
            process.wait(timeout=30)
    logged = log_path.read_text(errors="replace")
    shown = query.format(key="[redacted]")
    assert f'"WebSocket /ws/upload/no-such-task?{shown}" [accepted]' in logged, logged
    assert tenant.key.partition("_")[2] not in logged
