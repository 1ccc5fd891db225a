"""`/api/progress` snapshots (api/listing_cache.py): how fresh a polling client's list is.

The cache's rules are checked directly with a counting fetch; the HTTP tests check what a
client sees against the real stack: its own writes at once, other changes within max_age,
and past one page the newest tasks by start time.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from temporalio.client import WorkflowExecutionAsyncIterator

from api.listing_cache import ListingCache
from api.routes import progress
from api.schemas import TaskProgressCounts, TaskStatus
from tests.documents import make_pdf
from tests.support import Stack, Tenant, serve, stack_settings, upload_file

OWNER = uuid.uuid4()


class Source:
    """A list that changes when told, counting how often it is read."""

    def __init__(self, delay: float = 0.0) -> None:
        self.value = 0
        self.reads = 0
        self.delay = delay

    async def fetch(self) -> int:
        self.reads += 1
        value = self.value
        await asyncio.sleep(self.delay)
        return value


async def test_a_poller_gets_snapshots_younger_than_max_age_and_never_waits() -> None:
    cache: ListingCache[int] = ListingCache(max_age=1.0)
    source = Source(delay=0.3)
    assert await cache.get(OWNER, "q", source.fetch) == 0  # first: fetched while waiting
    source.value = 1
    started = time.monotonic()
    answers: list[tuple[float, int]] = []
    while time.monotonic() - started < 2.5:
        asked = time.monotonic()
        answer = await cache.get(OWNER, "q", source.fetch)
        assert time.monotonic() - asked < 0.2  # from the snapshot, never the 0.3 s fetch
        answers.append((asked - started, answer))
        await asyncio.sleep(0.02)
    first_new = min(at for at, answer in answers if answer == 1)
    assert first_new < 1.0 + 0.3  # within max_age (+ the fetch itself)
    assert all(answer == 1 for at, answer in answers if at > first_new)
    assert source.reads < len(answers) / 5  # a refresh per max_age / 4, not one per request


async def test_invalidation_drops_snapshots_and_late_fetches_from_before_it() -> None:
    cache: ListingCache[int] = ListingCache(max_age=60)
    source = Source(delay=0.1)
    assert await cache.get(OWNER, "q", source.fetch) == 0
    source.value = 1
    cache.invalidate(OWNER)
    assert await cache.get(OWNER, "q", source.fetch) == 1
    # A fetch that began before a write must not be kept as the snapshot after it.
    source.value = 2
    slow = asyncio.create_task(cache.get(OWNER, "other", source.fetch))
    await asyncio.sleep(0.02)
    source.value = 3
    cache.invalidate(OWNER)
    assert await slow == 2  # its caller gets what it fetched...
    assert await cache.get(OWNER, "other", source.fetch) == 3  # ...but nobody after the write


async def test_a_slow_fetch_does_not_replace_a_newer_snapshot() -> None:
    """Two requests without a snapshot fetch at once: the one that began first and answers
    last must not replace what the later one read (a poller would see its list go back)."""
    cache: ListingCache[str] = ListingCache(max_age=60)

    async def slow_old() -> str:
        await asyncio.sleep(0.3)
        return "read first: task processing"

    async def fast_new() -> str:
        return "read later: task complete"

    first = asyncio.create_task(cache.get(OWNER, "q", slow_old))
    await asyncio.sleep(0.05)
    assert await cache.get(OWNER, "q", fast_new) == "read later: task complete"
    await first
    assert await cache.get(OWNER, "q", fast_new) == "read later: task complete"


async def test_owners_and_queries_have_their_own_snapshots_and_zero_turns_it_off() -> None:
    cache: ListingCache[int] = ListingCache(max_age=60)
    source = Source()
    await cache.get(OWNER, "q", source.fetch)
    source.value = 1
    assert await cache.get(uuid.uuid4(), "q", source.fetch) == 1
    assert await cache.get(OWNER, "other", source.fetch) == 1
    assert await cache.get(OWNER, "q", source.fetch) == 0
    off: ListingCache[int] = ListingCache(max_age=0)
    assert [await off.get(OWNER, "q", source.fetch) for _ in range(3)] == [1, 1, 1]
    assert source.reads == 6


async def test_a_failed_refresh_is_reported_to_the_next_request() -> None:
    cache: ListingCache[int] = ListingCache(max_age=2.0)
    source = Source()
    await cache.get(OWNER, "q", source.fetch)

    async def broken() -> int:
        raise RuntimeError("visibility unavailable")

    await asyncio.sleep(0.6)  # past max_age / 4: the next request starts a refresh
    assert await cache.get(OWNER, "q", broken) == 0  # answered; the refresh then fails
    await asyncio.sleep(0.05)
    with pytest.raises(RuntimeError):
        await cache.get(OWNER, "q", broken)


@pytest.fixture(scope="module")
async def slow_snapshot_api(stack: Stack) -> AsyncIterator[str]:
    async with serve(stack_settings(stack, progress_max_age=30)) as url:
        yield url


async def test_progress_shows_the_clients_own_upload_at_once(
    slow_snapshot_api: str, tenant: Tenant
) -> None:
    """Even with 30 s snapshots: an upload through the API drops the owner's snapshots."""
    async with httpx.AsyncClient(base_url=slow_snapshot_api, timeout=60) as http:
        assert (await http.get("/api/progress", headers=tenant.headers)).json()["tasks"] == []
        task_id = await upload_file(http, tenant, "fresh.pdf", make_pdf(["listed at once"]))
        async with asyncio.timeout(10):  # visibility is eventually consistent (ms here)
            while True:
                listed = await http.get("/api/progress", headers=tenant.headers)
                if listed.json()["tasks"]:
                    break
                await asyncio.sleep(0.05)
    assert [task["task_id"] for task in listed.json()["tasks"]] == [task_id]


async def test_progress_shows_changes_made_elsewhere_within_max_age(
    stack: Stack, tenant: Tenant
) -> None:
    """A task terminated in Temporal directly (as an operator would, in the UI) shows in the
    list of a client polling it within DOCINGEST_PROGRESS_MAX_AGE (1 s) plus visibility's lag."""
    settings = stack_settings(stack)  # fresh task queues that no worker polls: it stays queued
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        task_id = await upload_file(http, tenant, "elsewhere.pdf", make_pdf(["stopped by hand"]))
        listed = (await http.get("/api/progress", headers=tenant.headers)).json()["tasks"]
        assert [task["status"] for task in listed] == ["queued"]  # a snapshot exists
        await stack.client.get_workflow_handle(task_id).terminate("operator test")
        stopped = time.monotonic()
        async with asyncio.timeout(10):
            while True:
                tasks = (await http.get("/api/progress", headers=tenant.headers)).json()["tasks"]
                if tasks[0]["status"] == "error":
                    break
                await asyncio.sleep(0.05)
    assert time.monotonic() - stopped < 5  # 1 s of snapshot age, the rest is visibility


async def test_progress_past_one_page_lists_the_newest_started_first_whatever_closed_first(
    stack: Stack, tenant: Tenant
) -> None:
    """Visibility lists closed tasks by close time: past one page, the newest by start time
    still come first, even one that closed before older ones (api/routes/progress.py)."""
    settings = stack_settings(stack)  # fresh task queues that no worker polls: they stay queued
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        started = [
            await upload_file(http, tenant, f"{n}.pdf", make_pdf([f"document {n}"]))
            for n in range(3)
        ]
        for task_id in reversed(started):  # the newest closes first, the oldest last
            await stack.client.get_workflow_handle(task_id).terminate("test over")
        everything = await listed_at_least(http, tenant, 3, {"status": "error"})
        page = await http.get("/api/progress", params={"limit": 2}, headers=tenant.headers)
    assert [task["task_id"] for task in page.json()["tasks"]] == [started[2], started[1]]
    assert [task["task_id"] for task in everything.json()["tasks"]] == started[::-1]


async def test_progress_lists_the_newest_tasks_when_more_started_since_than_one_read_holds(
    stack: Stack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two older tasks close after four newer ones (an old upload still ran while new small
    ones went through): past one page, more tasks started since the page's oldest than one
    read holds (1,000 beyond the limit; 2 here). The page still holds the newest: the read
    stopped at the older tasks, which close last, and the page listed them instead."""
    monkeypatch.setattr(progress, "NEWEST_SCAN_MAX", 2)
    settings = stack_settings(stack)  # fresh task queues that no worker polls: they stay queued
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        started = [
            await upload_file(http, tenant, f"{n}.txt", f"document number {n}".encode())
            for n in range(6)
        ]
        older, newer = started[:2], started[2:]
        for task_id in [*reversed(newer), *older]:  # the newest closes first, the oldest last
            await stack.client.get_workflow_handle(task_id).terminate("test over")
        await listed_at_least(http, tenant, 6, {"status": "error"})
        page = await http.get("/api/progress", params={"limit": 2}, headers=tenant.headers)
    assert [task["task_id"] for task in page.json()["tasks"]] == [started[5], started[4]]


def test_progress_orders_tasks_started_in_the_same_millisecond_by_task_id() -> None:
    """A batch's tasks can start in the same millisecond: sorted by start time alone, their
    order on a page followed the order visibility happened to list them in."""
    same, later = "2026-11-30T10:00:00.123Z", "2026-11-30T10:00:00.124Z"
    tasks = [
        TaskStatus(
            task_id=task_id,
            filename=f"{task_id}.txt",
            agent_id="agent",
            status="queued",
            message="Queued",
            document_id=None,
            started_at=started,
            completed_at=None,
            stage="queued",
            progress=TaskProgressCounts(chunks_total=0, chunks_embedded=0, percent=0),
            error=None,
        )
        for task_id, started in [("b", same), ("c", same), ("d", later), ("a", same)]
    ]
    for order in (tasks, list(reversed(tasks))):
        assert [task.task_id for task in progress._newest_first(order)] == ["d", "c", "b", "a"]


async def test_progress_pages_by_cursor_list_each_task_once_while_uploads_go_on(
    stack: Stack, tenant: Tenant
) -> None:
    """Past 1,000 tasks (the largest page) older ones could not be seen at all; pages read by
    `next_cursor` list every task once, newest first, and an upload made during the walk is
    on top, for the next one. A batch's tasks start within a few milliseconds, several in the
    same one: pages of one end inside each such tie."""
    settings = stack_settings(stack)  # fresh task queues that no worker polls: they stay queued
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        for number in range(5):
            await upload_file(http, tenant, f"{number}.txt", f"document number {number}".encode())
        batch = await http.post(
            "/upload/agent/batch",
            params={"agent_id": tenant.agent_id},
            headers=tenant.headers,
            files=[("file", (f"b{n}.txt", f"batch file {n}".encode())) for n in range(30)],
        )
        assert batch.status_code == 202, batch.text
        everything = await listed_at_least(http, tenant, 35)
        expected = [task["task_id"] for task in everything.json()["tasks"]]
        assert everything.json()["next_cursor"] is None

        async def walk(limit: int) -> list[str]:
            """The tasks a walk of pages of `limit` lists, less those listed before it began."""
            listed = await http.get("/api/progress", headers=tenant.headers)
            before = [task["task_id"] for task in listed.json()["tasks"]]
            walked: list[str] = []
            params: dict[str, str | int] = {"limit": limit}
            while True:
                page = await http.get("/api/progress", params=params, headers=tenant.headers)
                walked += [task["task_id"] for task in page.json()["tasks"]]
                if len(walked) == limit:  # an upload during the walk
                    await upload_file(http, tenant, f"late{limit}.txt", b"a late document")
                if page.json()["next_cursor"] is None:
                    assert walked == before
                    return walked
                params = {"limit": limit, "cursor": page.json()["next_cursor"]}

        # A page of one ends inside every tie.
        walks = {limit: await walk(limit) for limit in (1, 2, 3)}
        bad = await http.get("/api/progress", params={"cursor": "x"}, headers=tenant.headers)
    assert walks[1] == expected
    assert [len(walked) for walked in walks.values()] == [35, 36, 37]  # the late ones on top
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_request")


async def test_progress_page_that_ends_the_list_has_no_next_cursor(
    stack: Stack, tenant: Tenant
) -> None:
    """A page that holds the last task says so: it gave a `next_cursor` whenever it was full,
    and a client asked for an empty page after a list of exactly `limit` tasks."""
    settings = stack_settings(stack)  # fresh task queues that no worker polls: they stay queued
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        for number in range(2):
            await upload_file(http, tenant, f"{number}.txt", f"the end of a list {number}".encode())
        await listed_at_least(http, tenant, 2)
        whole = await http.get("/api/progress", params={"limit": 2}, headers=tenant.headers)
        first = await http.get("/api/progress", params={"limit": 1}, headers=tenant.headers)
        last = await http.get(
            "/api/progress",
            params={"limit": 1, "cursor": first.json()["next_cursor"]},
            headers=tenant.headers,
        )
    assert (len(whole.json()["tasks"]), whole.json()["next_cursor"]) == (2, None)
    assert first.json()["next_cursor"] is not None
    assert (len(last.json()["tasks"]), last.json()["next_cursor"]) == (1, None)


async def test_progress_page_of_many_running_tasks_reads_each_run_about_twice(
    stack: Stack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of 1,000 of 1,500 running tasks: the 1,002 runs wanted by a read came in pages
    of 1,000 (two pages, all fetched and decoded), and every task started since the page's
    oldest was read once more, though none had closed: 4,001 runs fetched for 1,000 listed
    (~4.4 s on the 2-core machine with 20,000 tasks; a 503 under upload load)."""
    fetched: list[int] = []
    fetch_next_page = WorkflowExecutionAsyncIterator.fetch_next_page

    async def counted(
        self: WorkflowExecutionAsyncIterator, *, page_size: int | None = None
    ) -> None:
        await fetch_next_page(self, page_size=page_size)
        fetched.append(len(self._current_page or []))

    settings = stack_settings(stack, progress_max_age=timedelta(0))  # no worker: all running
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        for first in range(0, 1500, 100):
            files = [
                ("file", (f"{n}.txt", f"task {n}".encode())) for n in range(first, first + 100)
            ]
            batch = await http.post(
                "/upload/agent/batch",
                params={"agent_id": tenant.agent_id},
                headers=tenant.headers,
                files=files,
            )
            assert batch.status_code == 202, batch.text
        async with asyncio.timeout(30):  # visibility is eventually consistent
            while (
                await stack.client.count_workflows(f"OwnerId = '{tenant.owner_id}'")
            ).count < 1500:
                await asyncio.sleep(0.2)
        monkeypatch.setattr(WorkflowExecutionAsyncIterator, "fetch_next_page", counted)
        page = await http.get("/api/progress", params={"limit": 1000}, headers=tenant.headers)
    assert page.status_code == 200, page.text
    tasks = page.json()["tasks"]
    assert len(tasks) == 1000 and page.json()["next_cursor"]
    assert tasks == sorted(
        tasks, key=lambda task: (task["started_at"], task["task_id"]), reverse=True
    )
    # The two groups' reads, and the running group's last millisecond read whole (a batch's
    # tasks start together: see api/routes/progress.py).
    assert sum(fetched) <= 2 * 1002 + 100, fetched


async def listed_at_least(
    http: httpx.AsyncClient, tenant: Tenant, count: int, params: dict[str, str] | None = None
) -> httpx.Response:
    """`/api/progress` once it lists `count` tasks: visibility is eventually consistent (ms)."""
    async with asyncio.timeout(10):
        while True:
            response = await http.get("/api/progress", params=params, headers=tenant.headers)
            if len(response.json()["tasks"]) >= count:
                return response
            await asyncio.sleep(0.05)
