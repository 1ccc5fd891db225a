"""Batch upload, retry, cancel, dedup and idempotency keys over HTTP against the real stack."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import threading
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest
from sqlalchemy import func, select, text
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.bridge.services_generated import WorkflowService
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment

from activities.embed import TextEmbedder
from activities.staging_cleanup import StagingCleanupActivities
from activities.stopped_tasks import record_stopped, stopped_task
from activities.vectors import Vectors
from api.app import create_app
from api.ingest_start import start_ingest
from api.routes import uploads
from core.db import create_engine, create_sessionmaker
from core.formats import DocumentFormat
from core.models import Agent, Chunk, Document
from core.settings import Settings
from core.staging import ORIGINAL, StagingStore
from core.temporal import OWNER_ID
from tests.documents import lorem, make_docx_with_unreadable_rels, make_pdf
from tests.support import (
    FakeEmbedder,
    Stack,
    Tenant,
    chunks_stored,
    documents_stored,
    forget_workflow,
    new_tenant,
    running_workers,
    runs_of,
    serve,
    serve_app,
    stack_settings,
    unreachable_database_url,
    upload_file,
    wait_for_status,
    workers_running,
)
from worker.main import EXECUTOR_THREADS, Role, build_workers
from workflows.staging_cleanup import StagingCleanupResult
from workflows.types import RECORD_OUTCOME, IngestTask, Status

pytestmark = pytest.mark.usefixtures("worker")


def params(tenant: Tenant, **extra: Any) -> dict[str, Any]:
    return {"agent_id": tenant.agent_id, **extra}


async def upload(
    http: httpx.AsyncClient, tenant: Tenant, name: str, data: bytes, **headers: str
) -> httpx.Response:
    return await http.post(
        "/upload/agent",
        params=params(tenant),
        headers={**tenant.headers, **headers},
        files={"file": (name, data)},
    )


async def documents_with(stack: Stack, sha_of: bytes) -> list[Document]:
    sha = hashlib.sha256(sha_of).hexdigest()
    async with stack.sessionmaker() as session:
        return list(await session.scalars(select(Document).where(Document.sha256 == sha)))


async def chunk_count(stack: Stack, document_id: str) -> int:
    async with stack.sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).select_from(Chunk).where(Chunk.document_id == document_id)
        )
    return int(count or 0)


# --- batch ---------------------------------------------------------------------------------


async def test_batch_accepts_good_files_and_reports_bad_ones(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    files = [
        ("file", ("one.pdf", make_pdf(["first document " + lorem(5, seed=1)]))),
        ("file", ("noise.pdf", os.urandom(4096))),
        ("file", ("two.txt", lorem(8, seed=2).encode())),
    ]
    response = await http.post(
        "/upload/agent/batch", params=params(tenant), headers=tenant.headers, files=files
    )
    assert response.status_code == 202, response.text
    body = response.json()
    entries = body["tasks"]
    assert [entry["filename"] for entry in entries] == ["one.pdf", "noise.pdf", "two.txt"]
    assert [entry["status"] for entry in entries] == ["queued", "rejected", "queued"]
    assert entries[1]["status_code"] == 415
    assert entries[1]["code"] == "unsupported_media_type"

    for entry in (entries[0], entries[2]):
        done = await wait_for_status(http, tenant, entry["task_id"], Status.TERMINAL)
        assert done["status"] == "complete"
    async with asyncio.timeout(10):  # visibility is eventually consistent
        while True:
            batch = await http.get(f"/upload/batch/{body['batch_id']}", headers=tenant.headers)
            assert batch.status_code == 200
            if batch.json()["summary"].get("complete") == 2:
                break
            await asyncio.sleep(0.1)
    status = batch.json()
    assert status["summary"] == {"complete": 2, "rejected": 1}
    assert status["files"] == 3
    assert {task["task_id"] for task in status["tasks"]} == {
        entries[0]["task_id"],
        entries[2]["task_id"],
    }
    assert [item["filename"] for item in status["rejected"]] == ["noise.pdf"]


async def test_batch_lists_every_file_when_read_right_after_its_answer(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    """Visibility is eventually consistent: the batch's own task ids, described, fill in what
    it does not list yet, so no file of the batch is missing from every list."""
    for attempt in range(15):
        files = [
            ("file", (f"b{attempt}-{i}.txt", lorem(3, seed=900 + 10 * attempt + i).encode()))
            for i in range(5)
        ]
        response = await http.post(
            "/upload/agent/batch", params=params(tenant), headers=tenant.headers, files=files
        )
        assert response.status_code == 202, response.text
        body = response.json()
        batch = await http.get(f"/upload/batch/{body['batch_id']}", headers=tenant.headers)
        assert batch.status_code == 200, batch.text
        assert {task["task_id"] for task in batch.json()["tasks"]} == {
            entry["task_id"] for entry in body["tasks"]
        }, attempt


async def a_failed_and_a_complete_task(
    http: httpx.AsyncClient, tenant: Tenant, seed: int
) -> tuple[str, str, str]:
    """A batch of a cut PDF and a text file, once both ended: its id, the PDF's task (`failed`)
    and the text's (`complete`)."""
    files = [
        ("file", ("cut.pdf", make_pdf(["x"])[:300])),
        ("file", ("good.txt", lorem(6, seed=seed).encode())),
    ]
    response = await http.post(
        "/upload/agent/batch", params=params(tenant), headers=tenant.headers, files=files
    )
    assert response.status_code == 202, response.text
    cut, good = (entry["task_id"] for entry in response.json()["tasks"])
    assert (await wait_for_status(http, tenant, cut, Status.TERMINAL))["status"] == "failed"
    assert (await wait_for_status(http, tenant, good, Status.TERMINAL))["status"] == "complete"
    return response.json()["batch_id"], cut, good


async def test_a_batch_and_its_tasks_answer_from_their_records_once_temporal_forgot_them(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """Temporal's retention drops a closed workflow; the batch's tasks are then told by their
    documents rows, so every file of the batch is still in one of its lists, and a retry or
    cancel of such a task is refused with its reason."""
    batch_id, cut, good = await a_failed_and_a_complete_task(http, tenant, seed=78)
    await forget_workflow(stack, cut)
    await forget_workflow(stack, good)
    async with asyncio.timeout(10):  # visibility forgets them a moment later
        while await run_count(stack, cut) + await run_count(stack, good) > 0:
            await asyncio.sleep(0.2)
    batch = await http.get(f"/upload/batch/{batch_id}", headers=tenant.headers)
    assert batch.status_code == 200, batch.text
    body = batch.json()
    assert {(task["task_id"], task["status"]) for task in body["tasks"]} == {
        (cut, "failed"),
        (good, "complete"),
    }
    assert body["summary"] == {"failed": 1, "complete": 1}
    # Each task's status is its row's, in the workflow's words.
    failed = await http.get(f"/upload/status/{cut}", headers=tenant.headers)
    assert failed.status_code == 200, failed.text
    assert failed.json()["message"].startswith("Failed to process cut.pdf: the PDF is damaged")
    assert (failed.json()["stage"], failed.json()["started_at"]) == ("done", None)
    assert failed.json()["error"]["type"] == "CorruptDocument"
    complete = (await http.get(f"/upload/status/{good}", headers=tenant.headers)).json()
    assert (complete["status"], complete["message"]) == (
        "complete",
        "Successfully processed good.txt",
    )
    assert complete["document_id"] is not None
    assert complete["progress"]["percent"] == 100.0
    # Neither can be retried or cancelled any more, and each answer says why (not 404).
    retry = await http.post(f"/upload/{cut}/retry", headers=tenant.headers)
    assert retry.status_code == 409, retry.text
    assert (
        "retention passed), so it cannot be retried; upload the file again"
        in (retry.json()["detail"])
    )
    cancel = await http.post(f"/upload/{good}/cancel", headers=tenant.headers)
    assert cancel.status_code == 409, cancel.text
    assert cancel.json()["detail"] == f"Task {good} already ended complete"


async def test_batch_lists_a_file_the_agent_already_had_as_a_duplicate(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    known, new = lorem(6, seed=31).encode(), lorem(6, seed=32).encode()
    first = await upload(http, tenant, "known.txt", known)
    assert first.status_code == 202, first.text
    stored = await wait_for_status(http, tenant, first.json()["task_id"], Status.TERMINAL)
    assert stored["status"] == "complete"

    response = await http.post(
        "/upload/agent/batch", params=params(tenant), headers=tenant.headers,
        files=[("file", ("again.txt", known)), ("file", ("new.txt", new))],
    )  # fmt: skip
    assert response.status_code == 202, response.text
    body = response.json()
    again, fresh = body["tasks"]
    assert (again["duplicate"], again["task_id"]) == (True, first.json()["task_id"])
    assert again["document_id"] == stored["document_id"]
    done = await wait_for_status(http, tenant, fresh["task_id"], Status.TERMINAL)
    assert done["status"] == "complete"
    async with asyncio.timeout(10):  # visibility is eventually consistent
        while True:
            batch = (
                await http.get(f"/upload/batch/{body['batch_id']}", headers=tenant.headers)
            ).json()
            if batch["summary"].get("complete") == 1:
                break
            await asyncio.sleep(0.1)
    assert batch["summary"] == {"complete": 1, "duplicate": 1}
    assert batch["files"] == 2 == len(batch["tasks"]) + len(batch["duplicates"])
    assert [task["task_id"] for task in batch["tasks"]] == [fresh["task_id"]]
    assert batch["duplicates"] == [again]


class UnreadableStaging(StagingStore):
    """A staging store that takes files but fails to read them back (a remote store timing
    out): the API reads back only a ZIP archive, to sniff a DOCX."""

    def open_read(self, task_id: str, name: str) -> BinaryIO:
        raise OSError("the staging store did not answer")


async def test_batch_file_failing_unexpectedly_is_rejected_500_and_the_others_answered(
    stack: Stack, tenant: Tenant
) -> None:
    """A file's unexpected error was the whole batch's 500, while the other files' tasks
    started: the client got no task id for them, and no batch to read them from."""
    settings = stack.settings
    app = create_app(settings)
    root = Path(settings.resolved_staging_url)
    before = set(os.listdir(root))
    files = [
        ("file", ("a.txt", lorem(2, seed=71).encode())),
        ("file", ("report.docx", b"PK\x03\x04" + bytes(100))),  # a ZIP: read back to sniff
        ("file", ("b.txt", lorem(2, seed=72).encode())),
    ]
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        app.state.resources.staging = UnreadableStaging(settings.resolved_staging_url)
        response = await http.post(
            "/upload/agent/batch", params=params(tenant), headers=tenant.headers, files=files
        )
        assert response.status_code == 202, response.text
        entries = response.json()["tasks"]
        assert [entry["status"] for entry in entries] == ["queued", "rejected", "queued"]
        assert entries[1]["status_code"] == 500 and entries[1]["code"] == "internal_error"
        batch = await http.get(
            f"/upload/batch/{response.json()['batch_id']}", headers=tenant.headers
        )
    body = batch.json()
    assert {task["task_id"] for task in body["tasks"]} == {
        entries[0]["task_id"],
        entries[2]["task_id"],
    }, body
    assert [entry["filename"] for entry in body["rejected"]] == ["report.docx"]
    # The refused file's staged copy is removed (the tasks may have removed theirs already).
    assert set(os.listdir(root)) - before <= {entries[0]["task_id"], entries[2]["task_id"]}


async def test_batch_of_another_owner_or_unknown_is_404(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    response = await http.post(
        "/upload/agent/batch", params=params(tenant), headers=tenant.headers,
        files=[("file", ("a.txt", b"hello batch"))],
    )  # fmt: skip
    other = await new_tenant(stack, "other")
    batch_id = response.json()["batch_id"]
    assert (await http.get(f"/upload/batch/{batch_id}", headers=other.headers)).status_code == 404
    missing = await http.get("/upload/batch/not-a-batch", headers=tenant.headers)
    assert missing.status_code == 404


async def test_batch_with_a_file_over_the_limit_rejects_only_that_file(
    stack: Stack, tenant: Tenant
) -> None:
    settings = stack_settings(stack, max_upload_bytes=2000)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/upload/agent/batch", params=params(tenant), headers=tenant.headers,
            files=[("file", ("big.txt", b"x " * 2000)), ("file", ("small.txt", b"small file"))],
        )  # fmt: skip
    entries = response.json()["tasks"]
    assert [entry["status"] for entry in entries] == ["rejected", "queued"]
    assert entries[0]["status_code"] == 413


async def test_a_batch_over_its_limits_is_refused_naming_the_batch_and_stages_nothing(
    stack: Stack, tenant: Tenant, tmp_path: Path
) -> None:
    """The refusals were guessed from the limits' values: a batch limit of one file answered
    "use the batch endpoint for several" on the batch endpoint, and a batch limit equal to a
    file's (plus the multipart framing) was named "the limit for a file" for a batch of two
    files each under it."""
    boundary = "a-batch-over-its-limits"

    def part(name: str, data: bytes) -> bytes:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"'
        return f"{head}\r\nContent-Type: text/plain\r\n\r\n".encode() + data + b"\r\n"

    async def body(*files: tuple[str, bytes]) -> AsyncIterator[bytes]:
        for name, data in files:  # streamed: no Content-Length, so the files are staged
            yield part(name, data)
        yield f"--{boundary}--\r\n".encode()

    async def batch(limits: dict[str, int], *files: tuple[str, bytes]) -> httpx.Response:
        settings = stack_settings(stack, staging_url=str(tmp_path / "staging"), **limits)
        async with serve(settings) as url, httpx.AsyncClient(base_url=url) as http:
            return await http.post(
                "/upload/agent/batch",
                params=params(tenant),
                headers={
                    **tenant.headers,
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                },
                content=body(*files),
            )

    one_file = await batch(
        {"max_batch_files": 1}, ("a.txt", lorem(2, seed=81).encode()), ("b.txt", b"second")
    )
    assert one_file.status_code == 422, one_file.text
    assert one_file.json()["detail"] == (
        "a batch holds at most 1 file(s); send the others in another batch"
    )

    per_file = 50_000
    too_large = await batch(
        {"max_upload_bytes": per_file, "max_batch_bytes": per_file + 64 * 1024},
        ("a.txt", b"a " * 20_000),  # 40,000 bytes each: under the limit for a file
        ("b.txt", b"b " * 20_000),
        ("c.txt", b"c " * 20_000),
    )
    assert too_large.status_code == 413, too_large.text
    assert too_large.json()["detail"] == (
        f"the batch is larger than the {per_file + 64 * 1024}-byte limit for a whole batch; "
        "send its files in several batches"
    )
    assert os.listdir(tmp_path / "staging") == []


async def test_batch_with_a_docx_whose_parts_cannot_be_read_rejects_only_that_file(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """An encrypted part made the batch a 500 while its other files' tasks started: the client
    got no task id for them, and a batch sent again ran them twice."""
    files = [
        ("file", ("a.txt", lorem(2, seed=61).encode())),
        ("file", ("locked.docx", make_docx_with_unreadable_rels("encrypted"))),
        ("file", ("b.txt", lorem(2, seed=62).encode())),
    ]
    response = await http.post(
        "/upload/agent/batch", params=params(tenant), headers=tenant.headers, files=files
    )
    assert response.status_code == 202, response.text
    entries = response.json()["tasks"]
    assert [entry["status"] for entry in entries] == ["queued", "rejected", "queued"]
    assert entries[1]["status_code"] == 415 and "password-protected" in entries[1]["detail"]


async def test_a_batch_streaming_longer_than_the_orphan_grace_keeps_its_first_files(
    stack: Stack, tenant: Tenant, tmp_path: Path
) -> None:
    """The staging sweep takes a folder with no workflow, untouched past the orphan grace, for
    an abandoned upload; a batch's tasks start only once its last file is in."""
    grace = timedelta(seconds=2)  # 1 hour by default; the settings refuse under a minute
    settings = stack_settings(stack, staging_url=str(tmp_path / "staging")).model_copy(
        update={"upload_orphan_grace": grace}
    )
    staging = StagingStore(settings.resolved_staging_url)
    sweeper = StagingCleanupActivities(
        staging, stack.client, stack.sessionmaker, timedelta(hours=1), grace
    )
    boundary = "a-slow-batch"
    sweeps: list[StagingCleanupResult] = []

    def part(name: str, data: str) -> bytes:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"'
        return f"{head}\r\nContent-Type: text/plain\r\n\r\n{data}\r\n".encode()

    async def body() -> AsyncIterator[bytes]:
        yield part("first.txt", lorem(2, seed=1)) + part("second.txt", lorem(2, seed=2))
        await asyncio.sleep(grace.total_seconds() * 1.5)  # the client is slow to send the rest
        sweeps.append(await ActivityEnvironment().run(sweeper.clean_staging))
        yield part("third.txt", lorem(2, seed=3)) + f"--{boundary}--\r\n".encode()

    async with serve(settings) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/upload/agent/batch",
            params=params(tenant),
            headers={**tenant.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=body(),
        )
    assert response.status_code == 202, response.text
    assert sweeps == [StagingCleanupResult(kept=2, removed=0)]  # first.txt and second.txt
    entries = response.json()["tasks"]
    assert [entry["status"] for entry in entries] == ["queued"] * 3
    for entry in entries:  # every task will find its file; no marker is left behind
        assert os.listdir(tmp_path / "staging" / entry["task_id"]) == [ORIGINAL]


async def test_a_batch_whose_agent_is_deleted_while_it_streams_is_404_and_its_tasks_cancelled(
    stack: Stack, tenant: Tenant
) -> None:
    """The agent is looked up as the batch begins, and its tasks start once the last file is
    in: an agent deleted in between could not cancel them. The batch's row then failed its
    foreign key, a 500, while the tasks ran on to fail at their store."""
    settings = stack_settings(stack)  # no worker yet: the tasks wait for the cancel
    boundary = "a-batch-outliving-its-agent"

    def part(name: str, data: str) -> bytes:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"'
        return f"{head}\r\nContent-Type: text/plain\r\n\r\n{data}\r\n".encode()

    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def body() -> AsyncIterator[bytes]:
            yield part("first.txt", lorem(2, seed=1))
            await asyncio.sleep(0.5)  # the agent's lookup has answered
            deleted = await http.delete(f"/agents/{tenant.agent_id}", headers=tenant.headers)
            assert deleted.status_code == 204
            yield part("second.txt", lorem(2, seed=2)) + f"--{boundary}--\r\n".encode()

        response = await http.post(
            "/upload/agent/batch",
            params=params(tenant),
            headers={**tenant.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=body(),
        )
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == (
            f"Agent {tenant.agent_id} not found: it was deleted while the batch was received"
        )
        task_ids: list[str] = []
        async with asyncio.timeout(10):  # visibility is eventually consistent
            while len(task_ids) < 2:
                query = f"OwnerId = '{tenant.owner_id}'"
                task_ids = [run.id async for run in stack.client.list_workflows(query)]
                await asyncio.sleep(0.1)
        assert len(task_ids) == 2
        async with running_workers(stack, settings, FakeEmbedder()):
            for task_id in task_ids:
                status = await wait_for_status(http, tenant, task_id, Status.TERMINAL, 30)
                assert status["status"] == "cancelled", status
                assert status["message"].endswith("was cancelled: its agent was deleted")
                with pytest.raises(WorkflowFailureError):
                    await stack.client.get_workflow_handle(task_id).result()
                assert not stack.staging.exists(task_id, ORIGINAL)


async def test_a_single_upload_streaming_longer_than_the_orphan_grace_keeps_its_file(
    stack: Stack, tenant: Tenant, tmp_path: Path
) -> None:
    """A single upload's file is written once per MiB: a slow client's stayed untouched past
    the orphan grace, the sweep took it while it streamed, and its task (202) found no file."""
    grace = timedelta(seconds=2)  # 1 hour by default; the settings refuse under a minute
    settings = stack_settings(stack, staging_url=str(tmp_path / "staging")).model_copy(
        update={"upload_orphan_grace": grace}
    )
    staging = StagingStore(settings.resolved_staging_url)
    sweeper = StagingCleanupActivities(
        staging, stack.client, stack.sessionmaker, timedelta(hours=1), grace
    )
    boundary = "a-slow-upload"
    sweeps: list[StagingCleanupResult] = []
    text = lorem(4, seed=5)

    async def body() -> AsyncIterator[bytes]:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.txt"'
        yield f"{head}\r\nContent-Type: text/plain\r\n\r\n{text[:200]}".encode()
        await asyncio.sleep(grace.total_seconds() * 1.5)  # the client is slow to send the rest
        sweeps.append(await ActivityEnvironment().run(sweeper.clean_staging))
        yield f"{text[200:]}\r\n--{boundary}--\r\n".encode()

    async with serve(settings) as url, httpx.AsyncClient(base_url=url) as http:
        response = await http.post(
            "/upload/agent",
            params=params(tenant),
            headers={**tenant.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=body(),
        )
    assert response.status_code == 202, response.text
    assert sweeps == [StagingCleanupResult(kept=1, removed=0)]
    task_id = response.json()["task_id"]
    assert os.listdir(tmp_path / "staging" / task_id) == [ORIGINAL]  # no marker left behind
    assert staging.read_bytes(task_id, ORIGINAL) == text.encode()


# --- dedup ---------------------------------------------------------------------------------


async def test_dedup_second_upload_of_the_same_bytes_stores_nothing(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    data = lorem(20, seed=11).encode()
    first = await upload(http, tenant, "a.txt", data)
    done = await wait_for_status(http, tenant, first.json()["task_id"], Status.TERMINAL)
    second = await upload(http, tenant, "a-copy.txt", data)
    assert second.status_code == 200
    body = second.json()
    assert body["duplicate"] is True
    assert body["document_id"] == done["document_id"]
    assert body["task_id"] == first.json()["task_id"]
    assert body["status"] == "complete"
    status = await http.get(f"/upload/status/{body['task_id']}", headers=tenant.headers)
    assert status.json()["status"] == "complete"
    assert [doc.status for doc in await documents_with(stack, data)] == ["complete"]

    other_agent = await http.post("/agents", json={"name": "second"}, headers=tenant.headers)
    elsewhere = await http.post(
        "/upload/agent", params={"agent_id": other_agent.json()["id"]}, headers=tenant.headers,
        files={"file": ("a.txt", data)},
    )  # fmt: skip
    assert elsewhere.status_code == 202  # dedup is per agent


async def test_dedup_two_identical_uploads_racing_end_with_one_document(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    data = lorem(30, seed=12).encode()
    responses = await asyncio.gather(*(upload(http, tenant, f"r{i}.txt", data) for i in range(2)))
    finals = [
        await wait_for_status(http, tenant, response.json()["task_id"], Status.TERMINAL)
        for response in responses
    ]
    assert {final["status"] for final in finals} == {"complete"}
    assert len({final["document_id"] for final in finals}) == 1
    documents = await documents_with(stack, data)
    assert [doc.status for doc in documents] == ["complete"]
    assert await chunk_count(stack, str(documents[0].id)) == documents[0].chunk_count
    # The one that lost names the file stored (it said its own name was stored, which the
    # documents list does not show), whether it lost at its store or at its upload.
    stored = documents[0].filename
    (lost,) = {f"r{i}.txt" for i in range(2)} - {stored}
    told = [
        *(final["message"] for final in finals if final["task_id"] != documents[0].task_id),
        *(response.json()["message"] for response in responses if response.status_code == 200),
    ]
    assert told == [f"{lost} is already stored for this agent as {stored}; nothing new was stored"]


async def test_dedup_an_upload_chunked_otherwise_is_told_the_stored_document_keeps_its_own(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """The same bytes sent again with a finer chunking store nothing new, as any duplicate;
    the answer said only "already ingested", and the user, who asked for other chunks, got
    the old ones with no word why. It says the stored document keeps its chunking, and how
    to get the one asked for."""
    data = lorem(40, seed=14).encode()
    first = await upload(http, tenant, "guide.txt", data)
    done = await wait_for_status(http, tenant, first.json()["task_id"], Status.TERMINAL)
    document_id = done["document_id"]
    size, overlap = stack.settings.chunk_size, stack.settings.chunk_overlap
    kept = (
        f"guide.txt is already stored for this agent; nothing new was stored. It keeps the "
        f"chunking it was stored with (chunk_size {size}, chunk_overlap {overlap}); to store "
        f"it with chunk_size 500, chunk_overlap 50, delete document {document_id} and upload "
        "it again"
    )
    finer = params(tenant, chunk_size=500, chunk_overlap=50)
    single = await http.post(
        "/upload/agent", params=finer, headers=tenant.headers, files={"file": ("guide.txt", data)}
    )
    assert single.status_code == 200, single.text
    assert single.json() == {
        "message": kept, "filename": "guide.txt", "agent_id": tenant.agent_id,
        "task_id": first.json()["task_id"], "status": "complete", "size_bytes": len(data),
        "duplicate": True, "document_id": document_id,
    }  # fmt: skip
    batch = await http.post(
        "/upload/agent/batch", params=finer, headers=tenant.headers,
        files=[("file", ("guide.txt", data))],
    )  # fmt: skip
    assert [entry["message"] for entry in batch.json()["tasks"]] == [kept]
    same = await http.post(
        "/upload/agent", params=params(tenant, chunk_size=size), headers=tenant.headers,
        files={"file": ("guide (1).txt", data)},
    )  # fmt: skip
    assert same.status_code == 200, same.text
    assert same.json()["message"] == (
        "guide (1).txt is already stored for this agent as guide.txt; nothing new was stored"
    )
    document = (await http.get(f"/documents/{document_id}", headers=tenant.headers)).json()
    assert (document["chunk_size"], document["chunk_overlap"]) == (size, overlap)
    assert [doc.chunk_count for doc in await documents_with(stack, data)] == [
        done["progress"]["chunks_total"]
    ]


async def test_dedup_the_same_bytes_twice_in_one_batch_make_one_task(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """Both copies became tasks, and both were extracted and embedded before the second's
    store found the first's document: twice the work for one document. The second is a
    duplicate of the first's task from the start, and the batch lists it as that task is."""
    twin, other = lorem(30, seed=15).encode(), lorem(30, seed=16).encode()
    response = await http.post(
        "/upload/agent/batch", params=params(tenant), headers=tenant.headers,
        files=[("file", ("b.txt", twin)), ("file", ("c.txt", other)),
               ("file", ("b copy.txt", twin))],
    )  # fmt: skip
    assert response.status_code == 202, response.text
    body = response.json()
    first, fresh, copy = body["tasks"]
    assert "duplicate" not in first and "duplicate" not in fresh
    assert copy == {
        "message": f"b copy.txt has the same content as b.txt, sent in this batch: its task "
        f"{first['task_id']} stores it once; nothing more will be stored",
        "filename": "b copy.txt", "agent_id": tenant.agent_id, "task_id": first["task_id"],
        "status": "queued", "size_bytes": len(twin), "duplicate": True,
    }  # fmt: skip
    done = await wait_for_status(http, tenant, first["task_id"], Status.TERMINAL)
    assert (done["status"], done["message"]) == ("complete", "Successfully processed b.txt")
    await wait_for_status(http, tenant, fresh["task_id"], Status.TERMINAL)
    async with asyncio.timeout(10):  # visibility is eventually consistent
        while True:
            batch = (
                await http.get(f"/upload/batch/{body['batch_id']}", headers=tenant.headers)
            ).json()
            if batch["summary"].get("complete") == 2:
                break
            await asyncio.sleep(0.1)
    assert batch["summary"] == {"complete": 2, "duplicate": 1}
    assert sorted(task["task_id"] for task in batch["tasks"]) == sorted(
        [first["task_id"], fresh["task_id"]]
    )
    assert batch["duplicates"] == [
        {**copy, "status": "complete", "document_id": done["document_id"]}
    ]
    assert [doc.filename for doc in await documents_with(stack, twin)] == ["b.txt"]


class HeldEmbedder(FakeEmbedder):
    """A model that holds each task's encode until the test lets it go (a slow model)."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[threading.Event, threading.Event]] = {}
        self.lock = threading.Lock()

    def events(self, task_id: str) -> tuple[threading.Event, threading.Event]:
        """(its encode began, let it go) for the task."""
        with self.lock:
            return self.held.setdefault(task_id, (threading.Event(), threading.Event()))

    def encode(self, texts: list[str]) -> Vectors:
        task_id = activity.info().workflow_id
        assert task_id is not None
        began, release = self.events(task_id)
        began.set()
        release.wait(120)
        return super().encode(texts)


async def history_has(stack: Stack, task_id: str, event_type: EventType.ValueType) -> None:
    handle = stack.client.get_workflow_handle(task_id)
    async with asyncio.timeout(60):
        while event_type not in {event.event_type async for event in handle.fetch_history_events()}:
            await asyncio.sleep(0.05)


async def first_heartbeat_sent(stack: Stack, task_id: str) -> None:
    handle = stack.client.get_workflow_handle(task_id)
    async with asyncio.timeout(60):
        while not any(
            pending.HasField("last_heartbeat_time")
            for pending in (await handle.describe()).raw_description.pending_activities
        ):
            await asyncio.sleep(0.1)


async def test_dedup_onto_a_copy_whose_task_is_then_cancelled_keeps_the_upload(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """The same file uploaded twice at once, and the first cancelled while it embeds: its worker
    hears of the cancel only at a heartbeat, so its store commits, and the task then ends
    `cancelled` with that copy's chunks deleted. Neither the second task (whose store found the
    copy meanwhile) nor an upload answered meanwhile may end `complete` on that deleted copy
    (they did: `complete`, "already stored", and a document `cancelled` with no chunks). The
    main worker is away for that while (restarted, or busy), which the natural race shortens
    to a fraction of a second."""
    # After its first heartbeat the SDK sends one at most every 0.8 x this: a cancel that came
    # later is heard after the store.
    settings = stack_settings(stack, activity_heartbeat_timeout=timedelta(minutes=5))
    embedder = HeldEmbedder()
    data = lorem(6, seed=13).encode()
    with ThreadPoolExecutor(max_workers=EXECUTOR_THREADS) as executor:

        def workers(role: Role) -> list[Any]:
            return build_workers(
                stack.client, settings, stack.staging, stack.sessionmaker,
                embedder if role is Role.EMBED else None, executor, role,
            )  # fmt: skip

        async with (
            serve(settings) as url,
            httpx.AsyncClient(base_url=url, timeout=30) as api,
            workers_running(workers(Role.EMBED)),
        ):
            async with workers_running(workers(Role.MAIN)):
                first, second = [
                    response.json()["task_id"]
                    for response in await asyncio.gather(
                        upload(api, tenant, "a.txt", data),
                        upload(api, tenant, "a (1).txt", data),
                    )
                ]
                for task_id in (first, second):
                    await asyncio.to_thread(embedder.events(task_id)[0].wait, 60)
                await first_heartbeat_sent(stack, first)
                cancel = await api.post(f"/upload/{first}/cancel", headers=tenant.headers)
                assert cancel.status_code == 202, cancel.text
                await history_has(stack, first, EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED)
            embedder.events(first)[1].set()  # its store commits: a `complete` copy
            await history_has(stack, first, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
            embedder.events(second)[1].set()
            await history_has(stack, second, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
            third = await upload(api, tenant, "a (2).txt", data)
            assert third.status_code in (200, 202), third.text
            embedder.events(third.json()["task_id"])[1].set()  # not held: only the race is
            async with workers_running(workers(Role.MAIN)):
                finals = [
                    await wait_for_status(api, tenant, task_id, Status.TERMINAL)
                    for task_id in (first, second, third.json()["task_id"])
                ]
    assert [final["status"] for final in finals] == ["cancelled", "complete", "complete"]
    documents = {str(document.id): document for document in await documents_with(stack, data)}
    for final in finals[1:]:
        document = documents[final["document_id"]]
        assert document.status == Status.COMPLETE
        assert await chunk_count(stack, str(document.id)) == document.chunk_count > 0
    assert sorted(document.status for document in documents.values()) == [
        Status.CANCELLED,
        Status.COMPLETE,
    ]


# --- idempotency keys ----------------------------------------------------------------------


async def test_idempotency_key_repeated_returns_the_same_task(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    first = await upload(http, tenant, "k.txt", b"idempotent one", **{"Idempotency-Key": "k-1"})
    second = await upload(http, tenant, "k.txt", b"idempotent one", **{"Idempotency-Key": "k-1"})
    assert first.status_code == second.status_code == 202
    assert first.json()["task_id"] == second.json()["task_id"]
    assert second.headers["idempotent-replayed"] == "true"
    other = await new_tenant(stack, "other")
    foreign = await http.post(
        "/upload/agent", params=params(other), headers={**other.headers, "Idempotency-Key": "k-1"},
        files={"file": ("k.txt", b"idempotent one")},
    )  # fmt: skip
    assert foreign.json()["task_id"] != first.json()["task_id"]
    bad = await upload(http, tenant, "k.txt", b"x", **{"Idempotency-Key": "k" * 300})
    assert bad.status_code == 422


async def test_idempotency_key_repeated_after_the_task_ended_answers_how_it_ended(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    """A repeat of a key whose task has ended says how it ended, not "processing in
    background": the task's own message, and the document of a complete one."""
    cut = make_pdf(["x"])[:300]
    failed = await upload(http, tenant, "cut.pdf", cut, **{"Idempotency-Key": "cut-1"})
    assert failed.status_code == 202, failed.text
    ended = await wait_for_status(http, tenant, failed.json()["task_id"], Status.TERMINAL)
    assert ended["status"] == "failed", ended
    again = await upload(http, tenant, "cut.pdf", cut, **{"Idempotency-Key": "cut-1"})
    assert again.status_code == 202, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["status"] == "failed"
    assert again.json()["message"] == ended["message"]
    assert again.json()["message"].startswith("Failed to process cut.pdf: ")
    assert "document_id" not in again.json()

    good = lorem(3, seed=31).encode()
    first = await upload(http, tenant, "good.txt", good, **{"Idempotency-Key": "good-1"})
    done = await wait_for_status(http, tenant, first.json()["task_id"], Status.TERMINAL)
    assert done["status"] == "complete", done
    repeat = await upload(http, tenant, "good.txt", good, **{"Idempotency-Key": "good-1"})
    assert repeat.json() == {
        **first.json(),
        "status": "complete",
        "message": "Successfully processed good.txt",
        "document_id": done["document_id"],
    }


async def test_idempotency_key_sent_with_another_upload_is_422_naming_the_first(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """A key names one upload: another file, agent or chunking under it is refused, never
    answered with the first upload's task, and stages nothing."""
    key = {"Idempotency-Key": "invoice-7"}
    first = await upload(http, tenant, "invoice.txt", b"invoice seven", **key)
    assert first.status_code == 202, first.text
    task_id = first.json()["task_id"]
    second_agent = await http.post("/agents", headers=tenant.headers, json={"name": "second"})
    assert second_agent.status_code == 201, second_agent.text
    cases = {
        "file content": ("/upload/agent", params(tenant), "invoice.txt", b"invoice eight"),
        "file name": ("/upload/agent", params(tenant), "invoice-copy.txt", b"invoice seven"),
        "agent": (
            "/upload/agent",
            {"agent_id": second_agent.json()["id"]},
            "invoice.txt",
            b"invoice seven",
        ),
        "chunking": (
            "/upload/agent",
            {**params(tenant), "chunk_size": 300},
            "invoice.txt",
            b"invoice seven",
        ),
    }
    staged_before = set(os.listdir(stack.settings.resolved_staging_url))
    for difference, (url, query, name, data) in cases.items():
        refused = await http.post(
            url, params=query, headers={**tenant.headers, **key}, files={"file": (name, data)}
        )
        assert refused.status_code == 422, (difference, refused.text)
        body = refused.json()
        assert body["code"] == "idempotency_key_reused"
        assert f"differs in {difference}." in body["detail"]
        assert task_id in body["detail"] and "'invoice.txt'" in body["detail"]
        assert "idempotent-replayed" not in refused.headers
    staging = Path(stack.settings.resolved_staging_url)
    assert set(os.listdir(staging)) <= staged_before | {task_id}
    if (staging / task_id).exists():  # unless cleaned up: the first upload's original alone
        assert len([name for name in os.listdir(staging / task_id) if "original" in name]) <= 1
    again = await upload(http, tenant, "invoice.txt", b"invoice seven", **key)
    assert again.status_code == 202, again.text
    assert again.json()["task_id"] == task_id
    assert again.headers["idempotent-replayed"] == "true"
    # Chunking given explicitly and equal to what the first upload got is the same upload.
    size = stack.settings.chunk_size
    explicit = await http.post(
        "/upload/agent", params={**params(tenant), "chunk_size": size},
        headers={**tenant.headers, **key}, files={"file": ("invoice.txt", b"invoice seven")},
    )  # fmt: skip
    assert explicit.status_code == 202, explicit.text
    assert explicit.json()["task_id"] == task_id


async def test_idempotency_key_sent_twice_at_once_starts_one_workflow(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    data = lorem(12, seed=13).encode()
    responses = await asyncio.gather(
        *(upload(http, tenant, "same.txt", data, **{"Idempotency-Key": "race"}) for _ in range(4))
    )
    assert {response.status_code for response in responses} == {202}
    task_ids = {response.json()["task_id"] for response in responses}
    assert len(task_ids) == 1
    task_id = task_ids.pop()
    await stack.client.get_workflow_handle(task_id).result()  # includes the staging cleanup
    runs = [
        execution async for execution in stack.client.list_workflows(f"WorkflowId = '{task_id}'")
    ]
    assert len(runs) == 1
    assert not Path(stack.settings.resolved_staging_url, task_id).exists()


async def test_idempotency_key_sent_with_a_batch_is_422_and_starts_nothing(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """A batch takes no key: sent twice with one, it ran every file twice."""
    files = [("file", ("x.txt", lorem(4, seed=95).encode())), ("file", ("y.txt", b"why"))]
    staged_before = set(os.listdir(stack.settings.resolved_staging_url))
    for _ in range(2):
        response = await http.post(
            "/upload/agent/batch", params=params(tenant), files=files,
            headers={**tenant.headers, "Idempotency-Key": "batch-1"},
        )  # fmt: skip
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "invalid_request"
        assert "Idempotency-Key is not supported on a batch upload" in response.json()["detail"]
    assert await listed_ids(http, tenant) == []
    assert set(os.listdir(stack.settings.resolved_staging_url)) <= staged_before


async def task_ends(stack: Stack, task_id: str, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    await stack.client.get_workflow_handle(task_id).terminate("test")


async def test_idempotency_key_sent_at_once_while_a_stored_copy_settles_names_one_task(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """The duplicate check answers otherwise once the task that stored the same bytes ended
    (its copy counts from then on). Requests of one key sent at once while it ends all name
    one task, the key's or the stored copy's; before, some were answered 200 with the copy's
    task and the others 202 with the key's own, which then ran too."""
    idle = stack_settings(stack)  # no worker polls its queues: the copy's task runs until ended
    for attempt in range(40):
        data = lorem(4, seed=1100 + attempt).encode()
        sha256 = hashlib.sha256(data).hexdigest()
        copy = IngestTask(
            task_id=str(uuid.uuid4()), owner_id=str(tenant.owner_id), agent_id=tenant.agent_id,
            filename="copy.txt", format=DocumentFormat.TEXT.value, size_bytes=len(data),
            sha256=sha256, chunk_size=1000, chunk_overlap=100,
            embed_task_queue=idle.embed_task_queue,
        )  # fmt: skip
        await start_ingest(stack.client, idle, copy, tenant.owner_id)
        async with stack.sessionmaker.begin() as session:  # what its store left
            session.add(
                Document(
                    owner_id=tenant.owner_id, agent_id=uuid.UUID(tenant.agent_id),
                    task_id=copy.task_id, filename="copy.txt", content_type="text/plain",
                    size_bytes=len(data), sha256=sha256, chunk_count=1, status=Status.COMPLETE,
                )
            )  # fmt: skip

        key = f"settling-{attempt}"
        uploads = [
            upload(http, tenant, "k.txt", data, **{"Idempotency-Key": key}) for _ in range(8)
        ]
        # The moment it ends sweeps across the requests' duplicate checks.
        ends = asyncio.create_task(task_ends(stack, copy.task_id, 0.0075 * attempt))
        responses = await asyncio.gather(*uploads)
        await ends
        answers = {(response.status_code, response.json()["task_id"]) for response in responses}
        assert len(answers) == 1, (attempt, answers)


# --- retry ---------------------------------------------------------------------------------


@pytest.fixture
async def idle_api(stack: Stack) -> AsyncIterator[tuple[str, Settings]]:
    """An API on task queues that no worker polls (until a test starts one)."""
    settings = stack_settings(stack, embed_activity_chunks=4)
    async with serve(settings) as url:
        yield url, settings


async def test_retry_reruns_a_task_that_ended_error_under_the_same_id(
    idle_api: tuple[str, Settings], stack: Stack, tenant: Tenant, embedder: TextEmbedder
) -> None:
    url, settings = idle_api
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        task_id = (await upload(http, tenant, "retry.txt", lorem(10, seed=14).encode())).json()[
            "task_id"
        ]
        early = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
        assert early.status_code == 409  # still queued
        await stack.client.get_workflow_handle(task_id).terminate("operator test")
        errored = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
        assert errored["status"] == "error"

        async with running_workers(stack, settings, embedder):
            retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
            assert retried.status_code == 202, retried.text
            assert retried.json()["task_id"] == task_id
            assert set(retried.json()) == {  # an upload's acknowledgment, and nothing else
                "message", "filename", "agent_id", "task_id", "status", "size_bytes"
            }  # fmt: skip
            done = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
        assert done["status"] == "complete"
        again = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
        assert again.status_code == 409
        assert again.json()["code"] == "conflict"
        # Listed once, as its latest run; not under `error`, where its first run ended.
        async with asyncio.timeout(10):  # visibility is eventually consistent
            while await listed_ids(http, tenant, "complete") != [task_id]:
                await asyncio.sleep(0.2)
        assert await listed_ids(http, tenant) == [task_id]
        assert await listed_ids(http, tenant, "error") == []


async def test_retry_after_the_staged_original_was_removed_is_409_saying_how_long_it_is_kept(
    idle_api: tuple[str, Settings], stack: Stack, tenant: Tenant
) -> None:
    url, _ = idle_api
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        task_id = (await upload(http, tenant, "gone.txt", b"short lived")).json()["task_id"]
        await stack.client.get_workflow_handle(task_id).terminate("operator test")
        await wait_for_status(http, tenant, task_id, {Status.ERROR})
        stack.staging.remove_task(task_id)
        refused = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        "The staged original of gone.txt was removed (its document was deleted, or staging is "
        "kept 7 days after a task ends); upload it again"
    )


@pytest.fixture
async def swept_api(
    stack: Stack, tmp_path: Path
) -> AsyncIterator[tuple[str, Settings, StagingCleanupActivities]]:
    """An API on task queues no worker polls, with a staging store of its own, and the
    staging sweep of that store (the worker's, with its default TTL and grace)."""
    settings = stack_settings(stack, staging_url=str(tmp_path / "staging"))
    staging = StagingStore(settings.resolved_staging_url)
    sweeper = StagingCleanupActivities(
        staging,
        stack.client,
        stack.sessionmaker,
        settings.staging_ttl,
        settings.upload_orphan_grace,
    )
    async with serve(settings) as url:
        yield url, settings, sweeper


async def recorded(stack: Stack, task_id: str) -> list[tuple[str, str | None, Any]]:
    """The task's documents rows: status, error type, when written."""
    async with stack.sessionmaker() as session:
        rows = await session.execute(
            select(Document.status, Document.error_type, Document.updated_at).where(
                Document.task_id == task_id
            )
        )
    return [(row.status, row.error_type, row.updated_at) for row in rows]


async def test_a_terminated_task_still_says_error_once_temporal_forgot_it(
    swept_api: tuple[str, Settings, StagingCleanupActivities], stack: Stack, tenant: Tenant
) -> None:
    """A task an operator terminated writes no documents row (its workflow no longer runs):
    once Temporal's retention dropped the workflow, its status was 404 and the documents list
    never had it. The staging sweep records it as the API told it, once."""
    url, _, sweeper = swept_api
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        task_id = (await upload(http, tenant, "cut.txt", b"terminated bytes")).json()["task_id"]
        handle = stack.client.get_workflow_handle(task_id)
        await handle.terminate(reason="disk full on host 3")
        told = await wait_for_status(http, tenant, task_id, {Status.ERROR})
        said = "Processing cut.txt was stopped by an operator (terminated): disk full on host 3"
        assert told["message"] == f"{said}; the upload can be retried"

        assert await ActivityEnvironment().run(sweeper.clean_staging) == StagingCleanupResult(
            kept=1, removed=0
        )
        first = await recorded(stack, task_id)
        await ActivityEnvironment().run(sweeper.clean_staging)
        assert await recorded(stack, task_id) == first  # once: a second sweep changes nothing
        assert [(status, kind) for status, kind, _ in first] == [("error", "Terminated")]
        assert (await http.get(f"/upload/status/{task_id}", headers=tenant.headers)).json() == told

        await forget_workflow(stack, task_id)
        after = await http.get(f"/upload/status/{task_id}", headers=tenant.headers)
        assert after.status_code == 200, after.text
        body = after.json()
        assert (body["status"], body["message"], body["error"]) == (
            "error",
            said,  # no retry can run once the workflow is gone
            {
                "type": "Terminated",
                "message": "Stopped by an operator (terminated): disk full on host 3",
            },
        )
        assert body["completed_at"] == told["completed_at"]
        listed = await http.get(
            f"/agents/{tenant.agent_id}/documents",
            params={"status": "error"},
            headers=tenant.headers,
        )
        assert [document["task_id"] for document in listed.json()["documents"]] == [task_id]
        retry = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
        assert retry.status_code == 409, retry.text


async def test_a_terminated_task_recorded_by_the_sweep_can_be_retried_to_complete(
    swept_api: tuple[str, Settings, StagingCleanupActivities],
    stack: Stack,
    tenant: Tenant,
    embedder: TextEmbedder,
) -> None:
    """The row the sweep wrote for a terminated task gives way to its retry's document, and
    a late write of the terminated run's record (a sweep that described it before the retry)
    leaves the stored document as it is."""
    url, settings, sweeper = swept_api
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        task_id = await upload_file(http, tenant, "again.txt", lorem(3, seed=91).encode())
        handle = stack.client.get_workflow_handle(task_id)
        await handle.terminate(reason="host drained")
        await wait_for_status(http, tenant, task_id, {Status.ERROR})
        late = await stopped_task(stack.client, await handle.describe())
        assert late is not None
        await ActivityEnvironment().run(sweeper.clean_staging)
        assert [row[:2] for row in await recorded(stack, task_id)] == [("error", "Terminated")]

        own_stack = dataclasses.replace(stack, staging=sweeper.staging)
        async with running_workers(own_stack, settings, embedder):
            retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
            assert retried.status_code == 202, retried.text
            done = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
        assert done["status"] == "complete"
        await record_stopped(stack.sessionmaker, late)
        assert [row[:2] for row in await recorded(stack, task_id)] == [("complete", None)]
        await forget_workflow(stack, task_id)
        after = await http.get(f"/upload/status/{task_id}", headers=tenant.headers)
        assert (after.json()["status"], after.json()["document_id"]) == (
            "complete",
            done["document_id"],
        )


async def test_a_timed_out_task_started_by_hand_is_recorded_from_its_input(
    swept_api: tuple[str, Settings, StagingCleanupActivities], stack: Stack, tenant: Tenant
) -> None:
    """A workflow an operator started by hand with an execution timeout (no memo: its input
    is in its first event) that timed out: recorded `error`, `Timeout`, with its file name."""
    url, settings, sweeper = swept_api
    data = b"never processed"
    task = IngestTask(
        task_id=str(uuid.uuid4()), owner_id=str(tenant.owner_id), agent_id=tenant.agent_id,
        filename="late.txt", format=DocumentFormat.TEXT.value, size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(), chunk_size=1000, chunk_overlap=100,
        embed_task_queue=settings.embed_task_queue,
    )  # fmt: skip
    sweeper.staging.write_bytes(task.task_id, ORIGINAL, data)
    handle = await stack.client.start_workflow(
        "IngestDocument",
        task,
        id=task.task_id,
        task_queue=settings.task_queue,
        execution_timeout=timedelta(seconds=1),
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(OWNER_ID, str(tenant.owner_id))]
        ),
    )
    async with asyncio.timeout(60):
        while (await handle.describe()).status is not WorkflowExecutionStatus.TIMED_OUT:
            await asyncio.sleep(0.2)
    await ActivityEnvironment().run(sweeper.clean_staging)
    await forget_workflow(stack, task.task_id)
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        after = await http.get(f"/upload/status/{task.task_id}", headers=tenant.headers)
    assert after.status_code == 200, after.text
    assert (after.json()["status"], after.json()["message"], after.json()["error"]) == (
        "error",
        "Processing late.txt timed out",
        {"type": "Timeout", "message": "Timed out"},
    )


async def listed_ids(
    http: httpx.AsyncClient, tenant: Tenant, status: str | None = None
) -> list[str]:
    """The task ids `/api/progress` lists for the tenant's agent, of `status` if given."""
    query = params(tenant) if status is None else params(tenant, status=status)
    response = await http.get("/api/progress", params=query, headers=tenant.headers)
    assert response.status_code == 200, response.text
    return [task["task_id"] for task in response.json()["tasks"]]


async def test_a_page_of_tasks_with_a_retry_running_keeps_the_tasks_that_belong_on_it(
    idle_api: tuple[str, Settings], stack: Stack
) -> None:
    """More tasks than the page: running and closed runs are listed apart, and a retry that
    is running has its earlier run among the closed ones. The page holds the newest tasks,
    each once: the retried one and the task that started before it, not the retried one
    alone."""
    url, _ = idle_api  # no worker: an upload stays queued, a running workflow
    tenant = await new_tenant(stack, "page")
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def upload_one(name: str, seed: int) -> str:
            response = await upload(http, tenant, name, lorem(2, seed=seed).encode())
            assert response.status_code == 202, response.text
            return str(response.json()["task_id"])

        await upload_one("a.txt", 31)  # running, the oldest
        closed = await upload_one("b.txt", 32)
        await stack.client.get_workflow_handle(closed).terminate("test")  # `error`
        retried = await upload_one("x.txt", 33)
        await stack.client.get_workflow_handle(retried).terminate("test")
        await wait_for_status(http, tenant, retried, {Status.ERROR})
        response = await http.post(f"/upload/{retried}/retry", headers=tenant.headers)
        assert response.status_code == 202, response.text
        page: list[str] = []
        async with asyncio.timeout(10):  # visibility is eventually consistent
            while page != [retried, closed]:
                response = await http.get(
                    "/api/progress", params={"limit": 2}, headers=tenant.headers
                )
                assert response.status_code == 200, response.text
                page = [task["task_id"] for task in response.json()["tasks"]]
                await asyncio.sleep(0.2)


async def test_a_task_that_found_another_file_under_its_id_cannot_be_retried(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """An idempotency key's task id, run again with another file once Temporal forgot the
    first workflow (which the API refuses; here started by hand): the task ends `failed`
    (AnotherFileStored) and the first document stays. A retry would fail the same way, so it
    is refused with the reason."""
    january = lorem(4, seed=61).encode()
    first = await upload(http, tenant, "jan.txt", january, **{"Idempotency-Key": "k-61"})
    assert first.status_code == 202, first.text
    task_id = first.json()["task_id"]
    assert (await wait_for_status(http, tenant, task_id, Status.TERMINAL))["status"] == "complete"
    await forget_workflow(stack, task_id)
    february = lorem(4, seed=62).encode()
    stack.staging.write_bytes(task_id, ORIGINAL, february)
    task = IngestTask(
        task_id=task_id, owner_id=str(tenant.owner_id), agent_id=tenant.agent_id,
        filename="feb.txt", format=DocumentFormat.TEXT.value, size_bytes=len(february),
        sha256=hashlib.sha256(february).hexdigest(), chunk_size=1000, chunk_overlap=100,
        embed_task_queue=stack.settings.embed_task_queue,
    )  # fmt: skip
    await start_ingest(stack.client, stack.settings, task, tenant.owner_id, rerun=True)

    ended = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    assert (ended["status"], ended["error"]["type"]) == ("failed", "AnotherFileStored")
    reason = (
        f"task {task_id} already stored another file (jan.txt), which is kept; "
        "upload feb.txt with a new Idempotency-Key"
    )
    assert ended["message"] == f"Failed to process feb.txt: {reason}"
    retry = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
    assert retry.status_code == 409, retry.text
    assert retry.json()["detail"] == f"Task {task_id} cannot be retried: {reason}"
    documents = await documents_with(stack, january)
    assert [document.filename for document in documents] == ["jan.txt"]


async def test_a_retried_task_is_listed_once_and_its_batch_keeps_every_file(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """Each retry is a new run under the task's id, and visibility lists every run: the task
    list and the batch show the task once, as its latest run, beside the batch's other file."""
    batch_id, cut, good = await a_failed_and_a_complete_task(http, tenant, seed=77)
    for _ in range(2):
        retried = await http.post(f"/upload/{cut}/retry", headers=tenant.headers)
        assert retried.status_code == 202, retried.text
        assert (await wait_for_status(http, tenant, cut, Status.TERMINAL))["status"] == "failed"
    async with asyncio.timeout(10):  # visibility is eventually consistent
        while await run_count(stack, cut) < 3:
            await asyncio.sleep(0.2)
    assert sorted(await listed_ids(http, tenant)) == sorted([cut, good])
    assert await listed_ids(http, tenant, "failed") == [cut]
    batch = await http.get(f"/upload/batch/{batch_id}", headers=tenant.headers)
    assert batch.status_code == 200
    body = batch.json()
    assert {(task["task_id"], task["status"]) for task in body["tasks"]} == {
        (cut, "failed"),
        (good, "complete"),
    }
    assert len(body["tasks"]) == 2
    assert body["summary"] == {"failed": 1, "complete": 1}


async def run_count(stack: Stack, task_id: str) -> int:
    """How many runs of the task Temporal's visibility lists (the first, and one per retry)."""
    query = f"WorkflowId = '{task_id}'"
    return len([execution async for execution in stack.client.list_workflows(query)])


async def test_retry_of_a_task_whose_agent_was_deleted_is_refused(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    """It could only run its steps again and fail at the store (AgentDeleted)."""
    tenant = await new_tenant(stack, "orphan")
    task_id = (await upload(http, tenant, "cut.pdf", make_pdf(["x"])[:300])).json()["task_id"]
    assert (await wait_for_status(http, tenant, task_id, Status.TERMINAL))["status"] == "failed"
    deleted = await http.delete(f"/agents/{tenant.agent_id}", headers=tenant.headers)
    assert deleted.status_code == 204
    retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
    assert retried.status_code == 409, retried.text
    assert retried.json()["detail"] == (
        f"The agent {tenant.agent_id} of task {task_id} was deleted; it cannot be retried"
    )


async def test_a_retry_after_the_embed_queue_was_renamed_embeds_on_the_new_queue(
    stack: Stack, tenant: Tenant
) -> None:
    """DOCINGEST_EMBED_TASK_QUEUE renamed between a task's run and its retry: no worker polls
    the old queue, so the retry's embed steps go to the queue of today's settings."""
    before = stack_settings(stack)
    after = stack_settings(stack, task_queue=before.task_queue)  # only the embed queue renamed
    async with serve(before) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        response = await upload(http, tenant, "renamed.txt", lorem(5, seed=91).encode())
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        await stack.client.get_workflow_handle(task_id).terminate("test")  # `error`
        await wait_for_status(http, tenant, task_id, {Status.ERROR})
    async with (
        running_workers(stack, after, FakeEmbedder()),
        serve(after) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as http,
    ):
        retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
        assert retried.status_code == 202, retried.text
        final = await wait_for_status(http, tenant, task_id, Status.TERMINAL, deadline_s=60)
    assert final["status"] == "complete", final


@pytest.mark.usefixtures("worker")
async def test_a_retry_answered_too_late_whose_run_failed_meanwhile_runs_once(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The retry's first start reached Temporal, its run failed again (a corrupt file fails
    in a second) before the late answer: the second start must take that run, not start a
    third."""
    upload = await http.post(
        "/upload/agent", params={"agent_id": tenant.agent_id}, headers=tenant.headers,
        files={"file": ("cut.pdf", make_pdf(["x"])[:300])},
    )  # fmt: skip
    task_id = upload.json()["task_id"]
    assert (await wait_for_status(http, tenant, task_id, Status.TERMINAL))["status"] == "failed"
    real = WorkflowService.start_workflow_execution
    calls: list[str] = []

    async def start(self: WorkflowService, req: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(req.workflow_id)
        answer = await real(self, req, *args, **kwargs)
        if len(calls) == 1:  # delivered; the answer comes after the new run failed
            handle = stack.client.get_workflow_handle(task_id, run_id=answer.run_id)
            while (await handle.describe()).status is WorkflowExecutionStatus.RUNNING:
                await asyncio.sleep(0.1)
            raise RPCError("Deadline Exceeded", RPCStatusCode.DEADLINE_EXCEEDED, b"")
        return answer

    with monkeypatch.context() as patch:
        patch.setattr(WorkflowService, "start_workflow_execution", start)
        retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
    assert retried.status_code == 202, retried.text
    await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    await asyncio.sleep(3)  # a third run would have started by now
    assert await runs_of(stack, task_id) == 2  # the upload's run and the retry's


async def test_retry_of_a_failed_file_runs_again_and_fails_again(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    task_id = (await upload(http, tenant, "cut.pdf", make_pdf(["x"])[:300])).json()["task_id"]
    assert (await wait_for_status(http, tenant, task_id, Status.TERMINAL))["status"] == "failed"
    retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
    assert retried.status_code == 202
    final = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    assert final["status"] == "failed"
    assert final["error"]["type"] == "CorruptDocument"


async def test_two_retries_of_a_task_at_once_run_it_once(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """Retry pressed twice (two clients, a double click): the first starts the task again; the
    second is 409, naming the retry. Before, the second waited 5 s for the first's run as if
    it were writing its record, then started the task once more when that run had failed
    meanwhile (a corrupt file fails in a second): two 202s, and the task ran twice."""
    task_id = (await upload(http, tenant, "cut.pdf", make_pdf(["x"])[:300])).json()["task_id"]
    assert (await wait_for_status(http, tenant, task_id, Status.TERMINAL))["status"] == "failed"
    answers = await asyncio.gather(
        *(http.post(f"/upload/{task_id}/retry", headers=tenant.headers) for _ in range(2))
    )
    assert sorted(answer.status_code for answer in answers) == [202, 409], answers
    (refused,) = [answer for answer in answers if answer.status_code == 409]
    assert refused.json()["detail"] == (
        f"Task {task_id} is already running again (retried by another request)"
    )
    await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    await asyncio.sleep(3)  # a third run would have started by now
    assert await runs_of(stack, task_id) == 2  # the upload's run and one retry's


# --- cancel --------------------------------------------------------------------------------


async def test_cancel_during_embedding_leaves_nothing_behind(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    text = lorem(900, seed=15)  # a few hundred chunks: seconds of embedding
    response = await http.post(
        "/upload/agent", params=params(tenant, chunk_size=200, chunk_overlap=0),
        headers=tenant.headers, files={"file": ("long.txt", text.encode())},
    )  # fmt: skip
    task_id = response.json()["task_id"]
    async with asyncio.timeout(60):
        while True:
            status = (await http.get(f"/upload/status/{task_id}", headers=tenant.headers)).json()
            if status["stage"] == "embedding" and status["progress"]["chunks_embedded"] > 0:
                break
            assert status["status"] not in Status.TERMINAL, status
            await asyncio.sleep(0.05)
    cancelled = await http.post(f"/upload/{task_id}/cancel", headers=tenant.headers)
    assert cancelled.status_code == 202
    final = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    assert final["status"] == "cancelled"
    assert final["message"] == "Processing of long.txt was cancelled"
    documents = await documents_with(stack, text.encode())
    assert [doc.status for doc in documents] == ["cancelled"]
    assert await chunk_count(stack, str(documents[0].id)) == 0
    assert not Path(stack.settings.resolved_staging_url, task_id).exists()
    again = await http.post(f"/upload/{task_id}/cancel", headers=tenant.headers)
    assert again.status_code == 409


async def test_cancel_and_retry_of_another_owners_task_is_404(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    task_id = (await upload(http, tenant, "mine.txt", b"private text")).json()["task_id"]
    other = await new_tenant(stack, "other")
    for action in ("cancel", "retry"):
        response = await http.post(f"/upload/{task_id}/{action}", headers=other.headers)
        assert response.status_code == 404


async def test_a_task_failed_by_a_database_outage_says_so_then_keeps_its_record(
    stack: Stack, tenant: Tenant
) -> None:
    """The record of a task's end (its documents row, what outlives Temporal's retention) was
    written with the budget of the step that had just failed for want of the database, failed
    with it, and was never written: the upload was missing from the documents list, and 404
    once Temporal forgot it. The task now says `error` at once and writes its record once the
    database answers; a retry meanwhile is told to wait."""
    settings = stack_settings(stack, database_attempts=2)
    documents = f"/agents/{tenant.agent_id}/documents"
    async with (
        database_down(stack) as down,
        serve(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        task_id = await upload_file(http, tenant, "notes.txt", lorem(20, seed=3).encode())
        async with running_workers(down, settings, FakeEmbedder()):
            final = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
            assert final["status"] == "error", final
            early = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
            async with asyncio.timeout(10):  # visibility is eventually consistent
                while task_id not in await listed(http, tenant, {"status": "error"}):
                    await asyncio.sleep(0.1)
        assert (early.status_code, early.json()["code"]) == (409, "conflict")
        assert "still writing its record" in early.json()["detail"]
        assert (await http.get(documents, headers=tenant.headers)).json()["total"] == 0

        async with running_workers(stack, settings, FakeEmbedder()):  # the database is back
            with pytest.raises(WorkflowFailureError):
                await asyncio.wait_for(
                    stack.client.get_workflow_handle(task_id).result(), timeout=120
                )
        rows = (await http.get(documents, headers=tenant.headers)).json()["documents"]
        assert [(row["task_id"], row["status"]) for row in rows] == [(task_id, "error")]
        assert rows[0]["error"]["message"] == final["error"]["message"]
        retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
        assert retried.status_code == 202, retried.text
        await stack.client.get_workflow_handle(task_id).terminate("test over")


async def test_a_task_failed_by_a_long_database_outage_keeps_its_record_soon_after_it(
    stack: Stack, tenant: Tenant
) -> None:
    """The database stays down half a minute after the task said `error`: its record's tries
    were a minute apart by then, and the row (and a retry, 409 until it is written) came up to
    a minute after the database was back; they are now at most 10 s apart."""
    settings = stack_settings(stack, database_attempts=2)
    documents = f"/agents/{tenant.agent_id}/documents"
    async with (
        database_down(stack) as down,
        serve(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        task_id = await upload_file(http, tenant, "notes.txt", lorem(20, seed=31).encode())
        async with running_workers(down, settings, FakeEmbedder()):
            final = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
            assert final["status"] == "error", final
            # What the Temporal UI shows for the waiting record once five tries have
            # failed: its next try is at most 10 s after the last (it was 16 s, and a
            # minute later on).
            async with asyncio.timeout(90):
                pending = await pending_record(stack, task_id, failed_tries=5)
        gap = (
            pending.next_attempt_schedule_time.ToDatetime()
            - pending.last_attempt_complete_time.ToDatetime()
        )
        assert round(gap.total_seconds()) <= 10, f"the next try is {gap} after the last"
        async with running_workers(stack, settings, FakeEmbedder()):  # the database is back
            async with asyncio.timeout(90):
                while not (await http.get(documents, headers=tenant.headers)).json()["total"]:
                    await asyncio.sleep(0.2)
            retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
        assert retried.status_code == 202, retried.text
        await stack.client.get_workflow_handle(task_id).terminate("test over")


@contextlib.asynccontextmanager
async def database_down(stack: Stack) -> AsyncIterator[Stack]:
    """The stack as a worker sees it while the database cannot be reached."""
    nowhere = create_engine(unreachable_database_url())
    try:
        yield dataclasses.replace(stack, sessionmaker=create_sessionmaker(nowhere))
    finally:
        await nowhere.dispose()


async def pending_record(stack: Stack, task_id: str, failed_tries: int) -> PendingActivityInfo:
    """The task's record of its end, as Temporal shows it while it waits for its next try,
    once `failed_tries` tries have failed."""
    while True:
        description = await stack.client.get_workflow_handle(task_id).describe()
        (pending,) = description.raw_description.pending_activities
        assert pending.activity_type.name == RECORD_OUTCOME, pending
        if pending.attempt > failed_tries and pending.HasField("next_attempt_schedule_time"):
            return pending
        await asyncio.sleep(0.5)


async def test_a_task_cancelled_while_its_record_waits_for_the_database_still_keeps_it(
    stack: Stack, tenant: Tenant
) -> None:
    """The task said `error` (the database down) and waits to write its record; an operator
    cancels it from the Temporal UI (the API's cancel is 409: the task ended). The cancel
    stopped the record, and the task ended with no documents row; the record now runs on, and
    the row says what the status says once the database is back."""
    settings = stack_settings(stack, database_attempts=2)
    documents = f"/agents/{tenant.agent_id}/documents"
    async with (
        database_down(stack) as down,
        serve(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        task_id = await upload_file(http, tenant, "notes.txt", lorem(20, seed=32).encode())
        handle = stack.client.get_workflow_handle(task_id)
        async with running_workers(down, settings, FakeEmbedder()):
            final = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
            assert final["status"] == "error", final
            refused = await http.post(f"/upload/{task_id}/cancel", headers=tenant.headers)
            assert refused.status_code == 409
            await handle.cancel()
            await history_has(stack, task_id, EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED)
        async with running_workers(stack, settings, FakeEmbedder()):  # the database is back
            with pytest.raises(WorkflowFailureError):
                await asyncio.wait_for(handle.result(), timeout=120)
        status = (await http.get(f"/upload/status/{task_id}", headers=tenant.headers)).json()
        rows = (await http.get(documents, headers=tenant.headers)).json()["documents"]
        assert status["status"] == "error"
        assert [(row["task_id"], row["status"]) for row in rows] == [(task_id, "error")]
        assert rows[0]["error"] == status["error"]


async def listed(http: httpx.AsyncClient, tenant: Tenant, params: dict[str, str]) -> list[str]:
    response = await http.get("/api/progress", params=params, headers=tenant.headers)
    return [task["task_id"] for task in response.json()["tasks"]]


async def test_a_key_whose_turn_does_not_come_is_503_not_a_wait_without_end(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request of a key waits while another holds the key's turn (its advisory lock), but
    not for ever: a turn left held (a connection that kept its lock) answered nothing."""
    monkeypatch.setattr(uploads, "KEY_TURN_PATIENCE_S", 0.5)
    task_id = uploads.idempotent_task_id(tenant.owner_id, "held-key")
    lock = int.from_bytes(uuid.UUID(task_id).bytes[:8], "big", signed=True)
    async with stack.sessionmaker() as holder:
        await holder.execute(select(func.pg_advisory_lock(lock)))
        response = await upload(http, tenant, "k.txt", b"held", **{"Idempotency-Key": "held-key"})
        await holder.execute(select(func.pg_advisory_unlock(lock)))
    assert (response.status_code, response.json()["code"]) == (503, "service_unavailable")
    assert "Idempotency-Key has been in progress" in response.json()["detail"]
    again = await upload(http, tenant, "k.txt", b"held", **{"Idempotency-Key": "held-key"})
    assert again.status_code == 202, again.text


# --- terminated in Temporal ----------------------------------------------------------------


async def _locks_on_documents(stack: Stack, *, waiting: bool) -> int:
    """How many locks other connections hold on `documents` (`waiting`: wait for, on any
    table): a store's transaction holds one until it commits or rolls back."""
    query = (
        "SELECT count(*) FROM pg_locks WHERE pid <> pg_backend_pid() AND NOT granted"
        if waiting
        else "SELECT count(*) FROM pg_locks WHERE pid <> pg_backend_pid() "
        "AND relation = 'documents'::regclass"
    )
    async with stack.sessionmaker() as session:
        return int((await session.execute(text(query))).scalar_one())


@pytest.mark.parametrize(
    ("sentences", "chunk_size"), [(3, 1000), (80, 200)], ids=["embed_and_store", "store"]
)
async def test_a_task_terminated_while_it_stores_stores_nothing_and_can_be_retried(
    stack: Stack, http: httpx.AsyncClient, tenant: Tenant, sentences: int, chunk_size: int
) -> None:
    """An operator terminates a task whose store waits (for a lock, here its agent's row,
    which this test holds): the store rolls back. Before, it committed once the lock was
    released: the task said `error`, "the upload can be retried", while its document was
    `complete` and searchable, and an upload of the same bytes was answered as a duplicate
    "complete" under that task."""
    data = lorem(sentences, seed=61).encode()
    async with stack.sessionmaker() as holder:
        await holder.execute(
            select(Agent.id).where(Agent.id == uuid.UUID(tenant.agent_id)).with_for_update()
        )
        task_id = await upload_file(http, tenant, "held.txt", data, chunk_size=chunk_size)
        async with asyncio.timeout(120):
            while not await _locks_on_documents(stack, waiting=True):  # its store waits
                await asyncio.sleep(0.05)
        await stack.client.get_workflow_handle(task_id).terminate(reason="stuck storing")
        await holder.rollback()
    async with asyncio.timeout(60):
        while await _locks_on_documents(stack, waiting=False):  # until the store has ended
            await asyncio.sleep(0.05)

    status = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    assert (status["status"], status["error"]["type"]) == ("error", "Terminated")
    assert (await documents_stored(stack, task_id), await chunks_stored(stack, task_id)) == (0, 0)
    again = await upload(http, tenant, "held-again.txt", data)
    assert again.status_code == 202, again.text  # no duplicate of a task that says `error`
    await wait_for_status(http, tenant, again.json()["task_id"], Status.TERMINAL)

    retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
    assert retried.status_code == 202, retried.text
    done = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    assert done["status"] == "complete"
    stored = await documents_with(stack, data)  # the second upload's, joined by the retry
    assert [document.task_id for document in stored] == [again.json()["task_id"]]
    assert done["document_id"] == str(stored[0].id)
    assert await chunk_count(stack, done["document_id"]) == stored[0].chunk_count


async def test_task_terminated_by_an_operator_says_so_with_the_reason_given(
    stack: Stack, tenant: Tenant
) -> None:
    """A task an operator terminated (Web UI or CLI) is `error`, and its status quotes the
    reason the operator typed, in the task's own status, the list and a key's replay."""
    settings = stack_settings(stack)  # fresh task queues that no worker polls: it stays queued
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        key = {"Idempotency-Key": "stopped-1"}
        task_id = (await upload(http, tenant, "stopped.txt", b"stop me", **key)).json()["task_id"]
        handle = stack.client.get_workflow_handle(task_id)
        await handle.terminate(reason="disk full on\nhost 3")
        status = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
        assert status["status"] == "error"
        assert status["message"] == (
            "Processing stopped.txt was stopped by an operator (terminated): disk full on "
            "host 3; the upload can be retried"
        )
        assert status["error"] == {
            "type": "Terminated",
            "message": "Stopped by an operator (terminated): disk full on host 3",
        }
        async with asyncio.timeout(10):
            while True:  # visibility lags the terminate a little
                listed = await http.get("/api/progress?status=error", headers=tenant.headers)
                if listed.json()["tasks"]:
                    break
                await asyncio.sleep(0.05)
        assert listed.json()["tasks"] == [status]
        replay = await upload(http, tenant, "stopped.txt", b"stop me", **key)
        assert (replay.json()["status"], replay.json()["message"]) == ("error", status["message"])

        quiet = await upload_file(http, tenant, "quiet.txt", b"no reason given")
        await stack.client.get_workflow_handle(quiet).terminate()
        stopped = await wait_for_status(http, tenant, quiet, Status.TERMINAL)
        assert stopped["error"]["message"] == "Stopped by an operator (terminated)"
