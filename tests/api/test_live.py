"""`WebSocket /ws/upload/{task_id}` against the real API under uvicorn, Temporal and PostgreSQL,
with a real WebSocket client."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI, WebSocket
from sqlalchemy.exc import OperationalError
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from activities.vectors import Vectors
from api.app import create_app
from api.deps import Resources
from api.status_feeds import POLL_INTERVAL_S
from core.embedded import free_port
from core.temporal import AGENT_ID, INGEST_STATUS, OWNER_ID
from tests.documents import lorem
from tests.support import (
    FakeEmbedder,
    Stack,
    Tenant,
    new_tenant,
    serve,
    serve_app,
    stack_settings,
    unreachable_database_url,
    upload_file,
)
from tests.support import running_workers as workers_for
from workflows.types import WORKFLOW_NAME, IngestTask, Status

STATUS_ORDER = ["queued", "processing", "complete"]
STAGE_ORDER = ["queued", "extracting", "chunking", "embedding", "storing", "done"]
BATCH = 16  # embed_activity_chunks of every test stack (tests.support.make_settings)
TEXT = lorem(200).encode()  # 64 chunks of at most 300 characters: 4 embed batches


@dataclass
class Watched:
    """Everything one WebSocket client saw, up to the close."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    code: int | None = None
    reason: str = ""


def ws_url(api_url: str, task_id: str, **params: str) -> str:
    query = f"?{urlencode(params)}" if params else ""
    return f"{api_url.replace('http://', 'ws://', 1)}/ws/upload/{task_id}{query}"


async def receive_all(socket: ClientConnection, seen: Watched) -> Watched:
    try:
        while True:
            seen.messages.append(json.loads(await socket.recv()))
    except ConnectionClosed:
        seen.code, seen.reason = socket.close_code, socket.close_reason or ""
    return seen


async def watch(url: str, headers: dict[str, str] | None = None) -> Watched:
    """Connect and collect messages until the server closes."""
    async with asyncio.timeout(90), connect(url, additional_headers=headers or {}) as socket:
        return await receive_all(socket, Watched())


async def upload(http: httpx.AsyncClient, tenant: Tenant, name: str, data: bytes) -> str:
    return await upload_file(http, tenant, name, data, chunk_size=300, chunk_overlap=0)


def assert_moves_forward(messages: list[dict[str, Any]]) -> None:
    """Status, stage and embedded count never go back, and each message is a change."""
    for before, after in itertools.pairwise(messages):
        assert after != before
        assert STATUS_ORDER.index(after["status"]) >= STATUS_ORDER.index(before["status"])
        assert STAGE_ORDER.index(after["stage"]) >= STAGE_ORDER.index(before["stage"])
        progress, previous = after["progress"], before["progress"]
        assert progress["chunks_embedded"] >= previous["chunks_embedded"]


@pytest.mark.usefixtures("worker")
async def test_live_streams_an_upload_until_complete_then_closes_1000(
    api_url: str, http: httpx.AsyncClient, tenant: Tenant
) -> None:
    task_id = await upload(http, tenant, "notes.txt", TEXT)
    seen = await watch(ws_url(api_url, task_id), tenant.headers)

    assert (seen.code, seen.reason) == (1000, "Task complete")
    first, last = seen.messages[0], seen.messages[-1]
    assert (first["task_id"], first["filename"]) == (task_id, "notes.txt")
    final = await http.get(f"/upload/status/{task_id}", headers=tenant.headers)
    assert last == final.json()  # the very body of GET /upload/status
    assert last["status"] == "complete"
    assert [m for m in seen.messages if m["status"] in Status.TERMINAL] == [last]
    assert_moves_forward(seen.messages)
    total = last["progress"]["chunks_total"]
    assert total > 3 * BATCH
    embedded = [m["progress"]["chunks_embedded"] for m in seen.messages]
    assert all(value % BATCH == 0 or value == total for value in embedded)  # per batch
    if first["status"] not in Status.TERMINAL:
        assert len(set(embedded)) >= 2

    again = await watch(ws_url(api_url, task_id, token=tenant.key))
    assert (again.messages, again.code) == ([last], 1000)


class GatedEmbedder(FakeEmbedder):
    """Embeds one batch per permit the test hands out, so every batch can be observed."""

    def __init__(self) -> None:
        self.permits = threading.Semaphore(0)

    def encode(self, texts: list[str]) -> Vectors:
        if not self.permits.acquire(timeout=60):
            raise TimeoutError("the test handed out no permit")
        return super().encode(texts)


@dataclass
class GatedApi:
    url: str
    embedder: GatedEmbedder
    app: FastAPI


@pytest.fixture(scope="module")
async def gated_api(stack: Stack) -> AsyncIterator[GatedApi]:
    """An API and workers on task queues of their own, embedding only when the test says."""
    settings = stack_settings(stack)
    embedder = GatedEmbedder()
    app = create_app(settings)
    async with workers_for(stack, settings, embedder), serve_app(app) as url:
        try:
            yield GatedApi(url, embedder, app)
        finally:
            embedder.permits.release(1000)  # let anything still waiting finish


async def test_live_sends_chunks_embedded_after_every_embed_batch(
    gated_api: GatedApi, tenant: Tenant
) -> None:
    async with httpx.AsyncClient(base_url=gated_api.url, timeout=30) as http:
        task_id = await upload(http, tenant, "batches.txt", TEXT)
    seen, released = Watched(), 0
    url = ws_url(gated_api.url, task_id, token=tenant.key)
    async with asyncio.timeout(60), connect(url) as socket:
        while seen.code is None:
            if seen.messages and _waiting_for_permit(seen.messages[-1], released):
                gated_api.embedder.permits.release()
                released += 1
            try:
                seen.messages.append(json.loads(await socket.recv()))
            except ConnectionClosed:
                seen.code = socket.close_code

    assert seen.code == 1000
    assert seen.messages[-1]["status"] == "complete"
    assert_moves_forward(seen.messages)
    total = seen.messages[-1]["progress"]["chunks_total"]
    batches = math.ceil(total / BATCH)
    assert batches >= 4
    assert released == batches
    embedded = sorted({m["progress"]["chunks_embedded"] for m in seen.messages})
    assert embedded == [*range(0, total, BATCH), total]


def describes_asked(app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When the served `app` asks Temporal to describe a workflow, from now on: its client's
    describe RPC, counted on its way to the server."""
    resources: Resources = app.state.resources
    service = resources.temporal.workflow_service
    asked: list[float] = []
    describe = service.describe_workflow_execution

    async def counted(*args: Any, **kwargs: Any) -> Any:
        asked.append(time.monotonic())
        return await describe(*args, **kwargs)

    monkeypatch.setattr(service, "describe_workflow_execution", counted)
    return asked


async def test_live_watchers_of_one_task_share_one_poll_and_each_see_every_batch(
    gated_api: GatedApi, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dashboard open in many tabs: each socket polled Temporal by itself, 20 sockets 20
    describe() calls per interval. They share one now, and each still gets every step."""
    async with httpx.AsyncClient(base_url=gated_api.url, timeout=30) as http:
        task_id = await upload(http, tenant, "shared.txt", TEXT)
    asked = describes_asked(gated_api.app, monkeypatch)
    by_token: tuple[str, dict[str, str]] = (ws_url(gated_api.url, task_id, token=tenant.key), {})
    by_header = (ws_url(gated_api.url, task_id), tenant.headers)
    seen = [Watched() for _ in range(20)]
    async with asyncio.timeout(60), AsyncExitStack() as sockets:
        opened = [
            await sockets.enter_async_context(connect(url, additional_headers=headers))
            for url, headers in [by_token, by_header] * 10
        ]
        receiving = [
            asyncio.create_task(receive_all(socket, watched))
            for socket, watched in zip(opened, seen, strict=True)
        ]
        released = 0
        while not all(task.done() for task in receiving):
            if all(w.messages and _waiting_for_permit(w.messages[-1], released) for w in seen):
                gated_api.embedder.permits.release()
                released += 1
            await asyncio.sleep(0.02)

    final = seen[0].messages[-1]
    assert final["status"] == "complete"
    total = final["progress"]["chunks_total"]
    assert released == math.ceil(total / BATCH) >= 4
    for watched in seen:
        assert (watched.code, watched.reason) == (1000, "Task complete")
        assert watched.messages[-1] == final
        assert_moves_forward(watched.messages)
        embedded = sorted({m["progress"]["chunks_embedded"] for m in watched.messages})
        assert embedded == [*range(0, total, BATCH), total]
    gaps = [after - before for before, after in itertools.pairwise(asked)]
    assert len(asked) > released
    assert min(gaps) >= 0.9 * POLL_INTERVAL_S  # one describe per interval, for all 20


async def test_live_shared_poll_stops_with_its_last_watcher(
    stack: Stack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    task_id = await start_queued_forever(stack, tenant)
    stranger = await new_tenant(stack, "stranger")
    app = create_app(stack_settings(stack))
    async with asyncio.timeout(30), serve_app(app) as url:
        feeds = app.state.resources.feeds
        asked = describes_asked(app, monkeypatch)
        async with AsyncExitStack() as first:
            async with AsyncExitStack() as others:
                task_url = ws_url(url, task_id)
                sockets = [
                    await others.enter_async_context(
                        connect(task_url, additional_headers=tenant.headers)
                    )
                    for _ in range(5)
                ]
                last = await first.enter_async_context(
                    connect(task_url, additional_headers=tenant.headers)
                )
                for socket in [*sockets, last]:
                    assert json.loads(await socket.recv())["status"] == "queued"
                assert len(feeds) == 1
                # The owner is checked per socket: a stranger's is no follower of the owner's.
                foreign = await watch(ws_url(url, task_id), stranger.headers)
                assert (foreign.messages, foreign.code) == ([], 4404)
                during = len(asked)
                await asyncio.sleep(1.0)
                assert len(asked) - during <= 1.0 / POLL_INTERVAL_S + 1  # not 6 times that
                assert len(feeds) == 1
            assert len(feeds) == 1  # the last watcher still has its poll
        while connection_tasks():
            await asyncio.sleep(0.05)
        assert len(feeds) == 0
        stopped = len(asked)
        await asyncio.sleep(4 * POLL_INTERVAL_S)
        assert len(asked) == stopped
    await stack.client.get_workflow_handle(task_id).terminate("test over")


async def test_live_unchanged_task_asks_temporal_nothing_until_it_changes(
    stack: Stack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queued tasks of a batch, one socket each: every socket's task was described once
    per interval, changed or not (100 sockets, 400 describe() calls a second). The feed now
    long-polls the workflow's history between looks: an unchanged task is not described
    again, and its next change still comes at once."""
    task_id = await start_queued_forever(stack, tenant)
    app = create_app(stack_settings(stack))
    async with asyncio.timeout(60), serve_app(app) as url:
        asked = describes_asked(app, monkeypatch)
        async with connect(ws_url(url, task_id), additional_headers=tenant.headers) as socket:
            assert json.loads(await socket.recv())["status"] == "queued"
            await asyncio.sleep(12 * POLL_INTERVAL_S)
            assert len(asked) <= 2  # the first look, and one once the history was read
            await stack.client.get_workflow_handle(task_id).terminate(reason="drained host 3")
            seen = await receive_all(socket, Watched())
    assert [(m["status"], m["error"]["type"]) for m in seen.messages] == [("error", "Terminated")]
    assert "drained host 3" in seen.messages[0]["message"]
    assert (seen.code, seen.reason) == (1000, "Task error")


def _waiting_for_permit(latest: dict[str, Any], released: int) -> bool:
    """The workflow shows every released batch embedded and has more to embed."""
    embedded, total = latest["progress"]["chunks_embedded"], latest["progress"]["chunks_total"]
    return bool(latest["stage"] == "embedding" and embedded == released * BATCH < total)


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({}, {}),
        ({"Authorization": "Bearer dik_wrongwrongwrongwrongwrongwrongwrongwrongwro"}, {}),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, {}),
        ({}, {"token": "dik_wrongwrongwrongwrongwrongwrongwrongwrongwro"}),
        ({}, {"token": "not-a-key"}),
    ],
)
async def test_live_without_a_valid_key_closes_4401(
    api_url: str, headers: dict[str, str], params: dict[str, str]
) -> None:
    seen = await watch(ws_url(api_url, str(uuid.uuid4()), **params), headers)
    assert seen.messages == []
    assert seen.code == 4401
    assert "API key" in seen.reason


async def test_live_token_works_beside_a_proxys_basic_credentials(
    api_url: str, tenant: Tenant
) -> None:
    """Behind a password-protected proxy a browser sends `Authorization: Basic` by itself,
    and cannot set a Bearer header: the `?token=` must still be read (it was 4401)."""
    basic = {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}
    seen = await watch(ws_url(api_url, str(uuid.uuid4()), token=tenant.key), basic)
    assert seen.code == 4404  # the key was taken: the task is unknown
    bearer_wins = {"Authorization": "Bearer dik_wrongwrongwrongwrongwrongwrongwrongwrongwro"}
    seen = await watch(ws_url(api_url, str(uuid.uuid4()), token=tenant.key), bearer_wins)
    assert seen.code == 4401


async def test_live_token_given_twice_closes_4401(
    api_url: str, stack: Stack, tenant: Tenant
) -> None:
    """The socket read the last of two `?token=`s (an HTTP route refuses any parameter given
    twice): `?token=<mine>&token=<another's key>` was a 4404 of my own task, as the other
    owner. Now it is refused, in either order and with the same key twice."""
    task_id = await start_queued_forever(stack, tenant)
    other = await new_tenant(stack, "other")
    base = ws_url(api_url, task_id)
    for tokens in ((tenant.key, other.key), (other.key, tenant.key), (tenant.key, tenant.key)):
        query = "&".join(f"token={key}" for key in tokens)
        seen = await watch(f"{base}?{query}", {})
        assert (seen.messages, seen.code) == ([], 4401), tokens
        assert seen.reason == "?token= given 2 times: send one key"
    # The header is read first, as before: a token beside it is not read at all.
    async with (
        asyncio.timeout(90),
        connect(f"{base}?token=x&token=y", additional_headers=tenant.headers) as socket,
    ):
        assert json.loads(await socket.recv())["task_id"] == task_id
    await stack.client.get_workflow_handle(task_id).terminate("test over")


async def test_live_of_an_unknown_or_foreign_task_closes_4404(
    api_url: str, stack: Stack, tenant: Tenant
) -> None:
    task_id = await start_queued_forever(stack, tenant)
    stranger = await new_tenant(stack, "stranger")
    for url, headers in (
        (ws_url(api_url, str(uuid.uuid4())), tenant.headers),
        (ws_url(api_url, "not-a-task"), tenant.headers),
        (ws_url(api_url, task_id), stranger.headers),
        (ws_url(api_url, task_id, token=stranger.key), {}),
    ):
        seen = await watch(url, headers)
        assert (seen.messages, seen.code) == ([], 4404), url
        assert "not found" in seen.reason
    await stack.client.get_workflow_handle(task_id).terminate("test over")


async def start_queued_forever(stack: Stack, tenant: Tenant) -> str:
    """A task of `tenant` whose workflow no worker will ever pick up."""
    task_id = str(uuid.uuid4())
    task = IngestTask(
        task_id=task_id,
        owner_id=str(tenant.owner_id),
        agent_id=tenant.agent_id,
        filename="never.txt",
        format="text",
        size_bytes=1,
        sha256="0" * 64,
        chunk_size=300,
        chunk_overlap=0,
        embed_task_queue=f"nobody-{task_id}",
    )
    await stack.client.start_workflow(
        WORKFLOW_NAME,
        task,
        id=task_id,
        task_queue=f"nobody-{task_id}",
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(OWNER_ID, str(tenant.owner_id)),
                SearchAttributePair(AGENT_ID, tenant.agent_id),
                SearchAttributePair(INGEST_STATUS, "queued"),
            ]
        ),
    )
    return task_id


def connection_tasks() -> list[asyncio.Task[Any]]:
    """Tasks of this process serving a WebSocket: uvicorn's, its websockets' or the route's."""
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = Path(code.co_filename).as_posix() if code is not None else ""
        if (
            "/uvicorn/protocols/websockets/" in filename
            or "/websockets/legacy/" in filename
            or filename.endswith(("/api/routes/live.py", "/api/status_feeds.py"))
        ):
            found.append(task)
    return found


async def test_live_client_leaving_stops_the_connection_tasks(
    api_url: str, stack: Stack, tenant: Tenant
) -> None:
    task_id = await start_queued_forever(stack, tenant)
    async with asyncio.timeout(30):
        async with connect(ws_url(api_url, task_id), additional_headers=tenant.headers) as socket:
            first = json.loads(await socket.recv())
            assert first["status"] == "queued"
            assert connection_tasks()  # the server side of this very socket
        while True:  # a queued task never changes: only the client leaving can end these
            if not connection_tasks():
                break
            await asyncio.sleep(0.05)
    await stack.client.get_workflow_handle(task_id).terminate("test over")


async def test_live_when_temporal_is_unreachable_closes_1011(stack: Stack, tenant: Tenant) -> None:
    settings = stack_settings(stack, temporal_address=f"127.0.0.1:{free_port()}")
    task_id = str(uuid.uuid4())
    async with serve(settings) as url:
        watchers = (watch(ws_url(url, task_id), tenant.headers) for _ in range(3))
        everyone = await asyncio.gather(*watchers)
    for seen in everyone:  # each watcher of the task is told
        assert (seen.messages, seen.code) == ([], 1011)
        assert "Temporal" in seen.reason


async def test_live_when_the_database_is_unreachable_closes_1011(
    stack: Stack, tenant: Tenant
) -> None:
    settings = stack_settings(stack, database_url=unreachable_database_url())
    async with serve(settings) as url:
        seen = await watch(ws_url(url, str(uuid.uuid4())), tenant.headers)
    assert (seen.messages, seen.code) == ([], 1011)  # was 1006, with no reason
    assert "database is unavailable" in seen.reason


async def test_live_api_shutting_down_closes_1012(stack: Stack, tenant: Tenant) -> None:
    task_id = await start_queued_forever(stack, tenant)
    seen = Watched()
    async with asyncio.timeout(30):
        async with serve(stack_settings(stack)) as url:
            socket = await connect(ws_url(url, task_id), additional_headers=tenant.headers)
            seen.messages.append(json.loads(await socket.recv()))
        await receive_all(socket, seen)  # the API stopped while the task stays queued
    assert [m["status"] for m in seen.messages] == ["queued"]
    assert seen.code == 1012  # Service Restart: README tells clients to reconnect
    await stack.client.get_workflow_handle(task_id).terminate("test over")


async def test_live_database_error_in_any_websocket_route_closes_1011(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """The app's database-error handler also gets a WebSocket route's errors, with the
    WebSocket: it read `request.method` and raised in turn (an AttributeError in the log, a
    bare 1006 for the client)."""
    app = create_app(stack_settings(stack))

    @app.websocket("/ws/broken")
    async def broken(websocket: WebSocket) -> None:
        await websocket.accept()
        raise OperationalError("SELECT 1", {}, ConnectionRefusedError("the database is down"))

    async with serve_app(app) as url:
        seen = await watch(url.replace("http://", "ws://", 1) + "/ws/broken")
    assert (seen.code, seen.reason) == (1011, "The database is unavailable; try again shortly")
    assert [record.getMessage() for record in caplog.records if record.exc_info] == []
    assert any(
        record.getMessage().startswith("database unavailable on WEBSOCKET /ws/broken")
        for record in caplog.records
    )
