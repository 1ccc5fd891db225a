"""Documents and agent deletion over HTTP: listing, metadata, deleting, tenant isolation."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from temporalio.client import WorkflowFailureError

from activities.embed import BUNDLED_MODEL, TextEmbedder
from core.embedded import free_port
from core.settings import Settings
from tests.documents import lorem, make_pdf
from tests.support import (
    FakeEmbedder,
    Stack,
    Tenant,
    new_tenant,
    running_workers,
    serve,
    stack_settings,
    upload_file,
    wait_for_status,
)
from tests.workflows.test_ingest import reset_to_first_workflow_task
from workflows.types import Status

pytestmark = pytest.mark.usefixtures("worker")

DOCUMENT_KEYS = {
    "id", "agent_id", "filename", "content_type", "size_bytes", "sha256", "page_count",
    "chunk_count", "status", "error", "task_id", "embedding_precision", "embedding_model",
    "chunk_size", "chunk_overlap", "created_at", "updated_at",
}  # fmt: skip
BAD_IDS = [str(uuid.uuid4()), "not-a-uuid", "1 OR 1=1", "x" * 300]


async def ingest(
    http: httpx.AsyncClient,
    tenant: Tenant,
    name: str,
    data: bytes,
    agent_id: str | None = None,
) -> dict[str, Any]:
    """Upload a file and wait for its task to end; returns the final task status."""
    response = await http.post(
        "/upload/agent",
        params={"agent_id": agent_id or tenant.agent_id},
        headers=tenant.headers,
        files={"file": (name, data)},
    )
    assert response.status_code == 202, response.text
    return await wait_for_status(http, tenant, response.json()["task_id"], Status.TERMINAL)


async def chunk_count(stack: Stack, document_id: str) -> int:
    async with stack.sessionmaker() as session:
        count = await session.scalar(
            text("SELECT count(*) FROM chunks WHERE document_id = :id"),
            {"id": uuid.UUID(document_id)},
        )
    return int(count or 0)


async def document_rows(stack: Stack, agent_id: str) -> int:
    async with stack.sessionmaker() as session:
        count = await session.scalar(
            text("SELECT count(*) FROM documents WHERE agent_id = :id"),
            {"id": uuid.UUID(agent_id)},
        )
    return int(count or 0)


def staged(stack: Stack, task_id: str) -> bool:
    """Whether anything of the task is left in the staging store."""
    return bool(stack.staging.fs.exists(f"{stack.staging.root}/{task_id}"))


async def ended(stack: Stack, task_id: str) -> None:
    """Wait for the task's workflow to close (it writes its row after it said how it ended)."""
    with contextlib.suppress(WorkflowFailureError):
        await stack.client.get_workflow_handle(task_id).result()


async def test_documents_list_pages_newest_first_and_filters_by_status(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    files = {
        "a.txt": lorem(6, seed=1).encode(),
        "b.md": b"# Notes\n\n" + lorem(6, seed=2).encode(),
        "report.pdf": make_pdf(["First page text", "Second page text"]),
        "cut.pdf": make_pdf(["soon to be cut"])[:400],
    }
    statuses = await asyncio.gather(
        *(ingest(http, tenant, name, data) for name, data in files.items())
    )
    assert sorted(status["status"] for status in statuses) == [
        "complete", "complete", "complete", "failed",
    ]  # fmt: skip
    url = f"/agents/{tenant.agent_id}/documents"

    listed = await http.get(url, headers=tenant.headers)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert (body["total"], body["limit"], body["offset"]) == (4, 50, 0)
    documents = body["documents"]
    assert {document["filename"] for document in documents} == set(files)
    created = [datetime.fromisoformat(document["created_at"]) for document in documents]
    assert created == sorted(created, reverse=True)
    by_name = {document["filename"]: document for document in documents}
    assert by_name["report.pdf"]["page_count"] == 2
    assert by_name["cut.pdf"]["status"] == "failed"
    assert by_name["cut.pdf"]["error"]["type"] == "CorruptDocument"
    assert by_name["cut.pdf"]["chunk_count"] == 0

    first = (await http.get(url, params={"limit": 3}, headers=tenant.headers)).json()
    rest = (await http.get(url, params={"limit": 3, "offset": 3}, headers=tenant.headers)).json()
    assert (first["total"], rest["total"]) == (4, 4)
    assert [d["id"] for d in first["documents"] + rest["documents"]] == [d["id"] for d in documents]
    past_the_end = await http.get(url, params={"offset": 10}, headers=tenant.headers)
    assert past_the_end.json()["documents"] == []

    failed = (await http.get(url, params={"status": "failed"}, headers=tenant.headers)).json()
    assert failed["total"] == 1
    assert [document["filename"] for document in failed["documents"]] == ["cut.pdf"]
    complete = (await http.get(url, params={"status": "complete"}, headers=tenant.headers)).json()
    assert complete["total"] == 3
    assert {document["status"] for document in complete["documents"]} == {"complete"}

    for bad in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"status": "queued"}):
        refused = await http.get(url, params=bad, headers=tenant.headers)
        assert refused.status_code == 422, bad
        assert refused.json()["code"] == "invalid_request"


async def test_documents_get_shows_the_uploaded_files_metadata(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    data = lorem(30, seed=3).encode()
    status = await ingest(http, tenant, "notes.txt", data)
    assert status["status"] == "complete", status

    response = await http.get(f"/documents/{status['document_id']}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    document = response.json()
    assert set(document) == DOCUMENT_KEYS
    assert document["id"] == status["document_id"]
    assert document["agent_id"] == tenant.agent_id
    assert document["task_id"] == status["task_id"]
    assert document["filename"] == "notes.txt"
    assert document["content_type"] == "text/plain"
    assert document["size_bytes"] == len(data)
    assert document["sha256"] == hashlib.sha256(data).hexdigest()
    assert document["page_count"] is None
    assert document["chunk_count"] == status["progress"]["chunks_total"] > 0
    assert document["chunk_count"] == await chunk_count(stack, document["id"])
    assert (document["status"], document["error"]) == ("complete", None)
    assert document["created_at"] <= document["updated_at"]


async def test_documents_say_the_precision_and_model_the_worker_embedded_them_with(
    http: httpx.AsyncClient, tenant: Tenant, embedder: TextEmbedder
) -> None:
    """The session's worker runs the bundled model in what `auto` came to on this machine. A
    one-batch document (embedded and stored by one step) and a larger one (embedded in
    shards, which the store step reads back) both say so; a failed one has no vectors."""
    large_id = await upload_file(
        http, tenant, "large.txt", lorem(40, seed=32).encode(), chunk_size=200, chunk_overlap=0
    )
    small, large, cut = await asyncio.gather(
        ingest(http, tenant, "small.txt", lorem(3, seed=31).encode()),
        wait_for_status(http, tenant, large_id, Status.TERMINAL),
        ingest(http, tenant, "cut.pdf", make_pdf(["soon to be cut"])[:400]),
    )
    assert (small["status"], large["status"], cut["status"]) == ("complete", "complete", "failed")
    assert large["progress"]["chunks_total"] > 16  # the test stack's chunks per embed step
    assert embedder.precision in ("float32", "bfloat16")

    for status in (small, large):
        response = await http.get(f"/documents/{status['document_id']}", headers=tenant.headers)
        document = response.json()
        assert (document["embedding_precision"], document["embedding_model"]) == (
            embedder.precision, BUNDLED_MODEL,
        ), document  # fmt: skip
    listed = await http.get(f"/agents/{tenant.agent_id}/documents", headers=tenant.headers)
    by_name = {document["filename"]: document for document in listed.json()["documents"]}
    assert by_name["small.txt"]["embedding_precision"] == embedder.precision
    assert (by_name["cut.pdf"]["embedding_precision"], by_name["cut.pdf"]["embedding_model"]) == (
        None, None,
    )  # fmt: skip


class Int8Worker(FakeEmbedder):
    """A worker an operator switched to int8 (with another model, to tell them apart)."""

    precision = "int8"
    model_name = "fake-int8"


async def test_documents_list_filters_by_embedding_precision_and_model(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, embedder: TextEmbedder
) -> None:
    """After a switch to int8 the operator lists the documents stored under the other
    precisions, and those stored before docingest recorded it (`unknown`), to upload them
    again: each filter finds exactly its own, counted in `total`, page by page."""
    cut, old, before = await asyncio.gather(
        ingest(http, tenant, "cut.pdf", make_pdf(["soon to be cut"])[:400]),
        ingest(http, tenant, "old.txt", lorem(4, seed=40).encode()),
        ingest(http, tenant, "before.txt", lorem(4, seed=41).encode()),
    )
    async with stack.sessionmaker.begin() as session:  # as a row stored before migration 0007
        await session.execute(
            text(
                "UPDATE documents SET embedding_precision = NULL, embedding_model = NULL "
                "WHERE id = :id"
            ),
            {"id": uuid.UUID(old["document_id"])},
        )
    settings = stack_settings(stack)
    async with (
        serve(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as switched,
        running_workers(stack, settings, Int8Worker()),
    ):
        after = await ingest(switched, tenant, "after.txt", lorem(4, seed=42).encode())
    assert [s["status"] for s in (cut, old, before, after)] == ["failed"] + ["complete"] * 3
    url = f"/agents/{tenant.agent_id}/documents"

    async def listed(**params: str | int) -> tuple[int, list[str]]:
        response = await http.get(url, params=params, headers=tenant.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        return body["total"], sorted(document["filename"] for document in body["documents"])

    assert await listed(embedding_precision="int8") == (1, ["after.txt"])
    assert await listed(embedding_precision=embedder.precision) == (1, ["before.txt"])
    assert await listed(embedding_precision="mixed") == (0, [])
    assert await listed(embedding_precision="unknown") == (2, ["cut.pdf", "old.txt"])
    assert await listed(embedding_precision="unknown", status="complete") == (1, ["old.txt"])
    assert await listed(embedding_model="fake-int8") == (1, ["after.txt"])
    assert await listed(embedding_model=BUNDLED_MODEL) == (1, ["before.txt"])
    assert await listed(embedding_model=BUNDLED_MODEL, embedding_precision="int8") == (0, [])

    first = (
        await http.get(
            url, params={"embedding_precision": "unknown", "limit": 1}, headers=tenant.headers
        )
    ).json()
    rest = (
        await http.get(
            url,
            params={"embedding_precision": "unknown", "limit": 1, "cursor": first["next_cursor"]},
            headers=tenant.headers,
        )
    ).json()
    assert (first["total"], rest["total"], rest["next_cursor"]) == (2, 2, None)
    paged = [document["filename"] for document in first["documents"] + rest["documents"]]
    assert sorted(paged) == ["cut.pdf", "old.txt"]

    for bad in (
        {"embedding_precision": "auto"},
        {"embedding_precision": "fp16"},
        {"embedding_model": "a\x00b"},
    ):
        refused = await http.get(url, params=bad, headers=tenant.headers)
        assert refused.status_code == 422, bad
        assert refused.json()["code"] == "invalid_request"


async def test_documents_list_and_uploads_refuse_a_query_parameter_given_twice(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    """FastAPI reads the last of a repeated parameter: `?status=complete&status=failed` listed
    the failed documents alone (none here, beside a complete one), and an upload with two
    `agent_id`s went to the second agent. Both are 422, naming the parameter; nothing is
    uploaded."""
    stored = await ingest(http, tenant, "kept.txt", lorem(2, seed=60).encode())
    assert stored["status"] == "complete"
    url = f"/agents/{tenant.agent_id}/documents"
    both = await http.get(
        url, params=[("status", "complete"), ("status", "failed")], headers=tenant.headers
    )
    assert both.status_code == 422, both.text
    assert both.json() == {
        "detail": "query.status: given 2 times; it takes one value",
        "code": "invalid_request",
    }
    other = (await http.post("/agents", json={"name": "other"}, headers=tenant.headers)).json()
    upload = await http.post(
        "/upload/agent",
        params=[("agent_id", tenant.agent_id), ("agent_id", other["id"])],
        headers=tenant.headers,
        files={"file": ("twice.txt", b"which agent?")},
    )
    assert upload.status_code == 422, upload.text
    assert upload.json()["detail"] == "query.agent_id: given 2 times; it takes one value"
    listed = await http.get(f"/agents/{other['id']}/documents", headers=tenant.headers)
    assert listed.json()["total"] == 0
    # A parameter the route does not read may repeat, as before; one given once is read.
    once = await http.get(
        url, params=[("status", "complete"), ("x", "1"), ("x", "2")], headers=tenant.headers
    )
    assert [d["filename"] for d in once.json()["documents"]] == ["kept.txt"]


async def test_documents_a_query_parameter_given_twice_without_a_valid_key_is_401(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    """The refusal of a repeated parameter came before the key check: a caller with no key, or
    a wrong one, was told "query.limit: given 2 times" (422) where any other request of its
    is a 401."""
    agent = tenant.agent_id
    for key in ({}, {"Authorization": "Bearer dik_not-a-key"}):
        for method, url in (
            ("GET", "/agents?limit=1&limit=2"),
            ("GET", f"/agents/{agent}/documents?status=failed&status=error"),
            ("POST", f"/upload/agent?agent_id={agent}&agent_id={agent}"),
            ("GET", "/api/progress?status=queued&status=queued"),
        ):
            refused = await http.request(method, url, headers=key)
            assert refused.status_code == 401, (method, url, key, refused.text)
            assert refused.json()["code"] == "unauthorized"
            assert refused.headers["WWW-Authenticate"] == "Bearer"


async def test_documents_delete_removes_the_document_and_its_chunks(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    doomed, kept = await asyncio.gather(
        ingest(http, tenant, "doomed.txt", lorem(20, seed=4).encode()),
        ingest(http, tenant, "kept.txt", lorem(20, seed=5).encode()),
    )
    doomed_id, kept_id = doomed["document_id"], kept["document_id"]
    kept_chunks = await chunk_count(stack, kept_id)
    assert await chunk_count(stack, doomed_id) > 0

    deleted = await http.delete(f"/documents/{doomed_id}", headers=tenant.headers)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert await chunk_count(stack, doomed_id) == 0
    gone = await http.get(f"/documents/{doomed_id}", headers=tenant.headers)
    assert gone.status_code == 404
    assert gone.json()["code"] == "not_found"
    again = await http.delete(f"/documents/{doomed_id}", headers=tenant.headers)
    assert again.status_code == 404

    listed = await http.get(f"/agents/{tenant.agent_id}/documents", headers=tenant.headers)
    assert [document["id"] for document in listed.json()["documents"]] == [kept_id]
    assert await chunk_count(stack, kept_id) == kept_chunks


async def test_documents_delete_is_refused_while_the_documents_task_runs_again(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, idle_api: str
) -> None:
    """A retry's store (or its outcome) would write the row back and undo the delete: 409,
    naming the task to cancel, until the task ended. A delete still works with Temporal out of
    reach."""
    failed = await ingest(http, tenant, "cut.pdf", make_pdf(["x"])[:300])
    assert failed["status"] == "failed"
    listed = await http.get(f"/agents/{tenant.agent_id}/documents", headers=tenant.headers)
    (document,) = listed.json()["documents"]
    task_id = failed["task_id"]
    async with httpx.AsyncClient(base_url=idle_api) as idle:  # no worker: the retry waits
        retried = await idle.post(f"/upload/{task_id}/retry", headers=tenant.headers)
    assert retried.status_code == 202, retried.text

    refused = await http.delete(f"/documents/{document['id']}", headers=tenant.headers)
    assert refused.status_code == 409, refused.text
    assert refused.json()["detail"] == (
        f"Document {document['id']} (cut.pdf) is still being processed by task {task_id}; "
        f"cancel the task (POST /upload/{task_id}/cancel) or wait for it to end, then delete "
        "the document"
    )
    await stack.client.get_workflow_handle(task_id).terminate("test")
    deleted = await http.delete(f"/documents/{document['id']}", headers=tenant.headers)
    assert deleted.status_code == 204


async def test_documents_delete_removes_the_staged_upload_so_a_retry_cannot_bring_it_back(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """A failed task keeps its upload for a retry; once its document is deleted, the file is
    removed too, and the task's retry is 409 (before: 202, and the row came back)."""
    failed = await ingest(http, tenant, "salaries.pdf", make_pdf(["x"])[:300])
    task_id = failed["task_id"]
    await ended(stack, task_id)  # the row is written once the task said `failed`
    listed = await http.get(f"/agents/{tenant.agent_id}/documents", headers=tenant.headers)
    (document,) = listed.json()["documents"]
    assert staged(stack, task_id)

    deleted = await http.delete(f"/documents/{document['id']}", headers=tenant.headers)
    assert deleted.status_code == 204
    assert not staged(stack, task_id)
    retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
    assert retried.status_code == 409, retried.text
    assert await document_rows(stack, tenant.agent_id) == 0


async def test_documents_delete_and_a_retry_sent_at_once_never_bring_the_document_back(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """A delete of a failed document and a retry of its task sent at once (two clients, a
    "retry all failed" beside a cleanup) take turns: the retry runs and the delete is 409, or
    the delete goes through and the retry is 409. Before, the retry checked that the upload
    was staged, the delete removed row and upload, the retry started: both were answered
    (202, 204), and the retried run wrote the row back (`error`, "the uploaded file is no
    longer in the staging store", or `failed` again): the deleted document was listed again,
    7 times in 8 here."""
    for attempt in range(3):
        failed = await ingest(http, tenant, f"cut{attempt}.pdf", make_pdf([str(attempt)])[:300])
        task_id = failed["task_id"]
        await ended(stack, task_id)  # the row is written once the task said `failed`
        listed = await http.get(f"/agents/{tenant.agent_id}/documents", headers=tenant.headers)
        (document,) = [d for d in listed.json()["documents"] if d["task_id"] == task_id]

        retried, deleted = await asyncio.gather(
            http.post(f"/upload/{task_id}/retry", headers=tenant.headers),
            http.delete(f"/documents/{document['id']}", headers=tenant.headers),
        )
        assert {retried.status_code, deleted.status_code} <= {202, 204, 409}, (retried, deleted)
        await wait_for_status(http, tenant, task_id, Status.TERMINAL)
        await ended(stack, task_id)
        shown = await http.get(f"/documents/{document['id']}", headers=tenant.headers)
        if deleted.status_code == 204:
            assert shown.status_code == 404, (attempt, retried.json(), shown.json())
            assert await document_rows(stack, tenant.agent_id) == 0
            assert not staged(stack, task_id)
        else:
            assert (retried.status_code, shown.status_code) == (202, 200), deleted.json()
            await http.delete(f"/documents/{document['id']}", headers=tenant.headers)


async def test_documents_delete_stands_when_an_operator_resets_the_documents_task(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """An operator resets a complete task (Web UI, `temporal workflow reset --type
    FirstWorkflowTask`) after its document was deleted: the run finds neither the upload nor
    the document and ends `error`, and the deleted document stays deleted (before: it came
    back in the list as an `error` row)."""
    done = await ingest(http, tenant, "gone.txt", lorem(3, seed=35).encode())
    deleted = await http.delete(f"/documents/{done['document_id']}", headers=tenant.headers)
    assert deleted.status_code == 204
    handle = stack.client.get_workflow_handle(done["task_id"])
    again = await reset_to_first_workflow_task(stack, handle)
    async with asyncio.timeout(60):
        with pytest.raises(WorkflowFailureError):
            await again.result()
    status = await http.get(f"/upload/status/{done['task_id']}", headers=tenant.headers)
    assert (status.json()["status"], status.json()["error"]["type"]) == ("error", "StagingMissing")
    listed = await http.get(f"/agents/{tenant.agent_id}/documents", headers=tenant.headers)
    assert listed.json()["documents"] == []
    assert await document_rows(stack, tenant.agent_id) == 0


async def test_documents_delete_succeeds_when_temporal_is_down(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    done = await ingest(http, tenant, "kept.txt", lorem(3, seed=9).encode())
    settings = stack_settings(stack, temporal_address=f"127.0.0.1:{free_port()}")
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as down:
        deleted = await down.delete(f"/documents/{done['document_id']}", headers=tenant.headers)
    assert deleted.status_code == 204, deleted.text


async def test_agents_delete_removes_its_documents_and_chunks(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    created = await http.post("/agents", json={"name": "short-lived"}, headers=tenant.headers)
    doomed_agent = created.json()["id"]
    doomed, kept = await asyncio.gather(
        ingest(http, tenant, "doomed.txt", lorem(20, seed=6).encode(), agent_id=doomed_agent),
        ingest(http, tenant, "kept.txt", lorem(20, seed=7).encode()),
    )
    assert await chunk_count(stack, doomed["document_id"]) > 0

    deleted = await http.delete(f"/agents/{doomed_agent}", headers=tenant.headers)
    assert deleted.status_code == 204
    assert await document_rows(stack, doomed_agent) == 0
    assert await chunk_count(stack, doomed["document_id"]) == 0
    agents = (await http.get("/agents", headers=tenant.headers)).json()["agents"]
    assert [agent["id"] for agent in agents] == [tenant.agent_id]
    for method, url in (
        ("GET", f"/agents/{doomed_agent}/documents"),
        ("GET", f"/documents/{doomed['document_id']}"),
        ("DELETE", f"/agents/{doomed_agent}"),
    ):
        response = await http.request(method, url, headers=tenant.headers)
        assert response.status_code == 404, (method, url)

    still = await http.get(f"/documents/{kept['document_id']}", headers=tenant.headers)
    assert still.status_code == 200
    assert await chunk_count(stack, kept["document_id"]) == still.json()["chunk_count"] > 0


async def test_agents_delete_removes_the_staged_uploads_of_its_documents(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    failed = await ingest(http, tenant, "salaries.pdf", make_pdf(["x"])[:300])
    await ended(stack, failed["task_id"])
    assert staged(stack, failed["task_id"])

    deleted = await http.delete(f"/agents/{tenant.agent_id}", headers=tenant.headers)
    assert deleted.status_code == 204
    assert not staged(stack, failed["task_id"])


async def test_agents_delete_removes_the_staged_upload_of_a_task_an_operator_terminated(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, idle_api: str
) -> None:
    """A terminated task is `error` ("the upload can be retried") with no documents row: its
    upload stays staged for a retry. Once its agent is deleted no retry can run, and the file
    goes with the agent (before: kept until the staging sweep, 7 days by default)."""
    async with httpx.AsyncClient(base_url=idle_api) as idle:  # no worker: it waits, queued
        waiting = await idle.post(
            "/upload/agent",
            params={"agent_id": tenant.agent_id},
            headers=tenant.headers,
            files={"file": ("private.txt", lorem(5, seed=36).encode())},
        )
    assert waiting.status_code == 202, waiting.text
    task_id = waiting.json()["task_id"]
    await stack.client.get_workflow_handle(task_id).terminate("disk full on host 3")
    query = f"WorkflowId = '{task_id}' AND ExecutionStatus = 'Terminated'"
    async with asyncio.timeout(10):  # visibility is eventually consistent
        while not [run async for run in stack.client.list_workflows(query)]:
            await asyncio.sleep(0.1)
    status = await http.get(f"/upload/status/{task_id}", headers=tenant.headers)
    assert (status.json()["status"], status.json()["error"]["type"]) == ("error", "Terminated")
    assert staged(stack, task_id)

    deleted = await http.delete(f"/agents/{tenant.agent_id}", headers=tenant.headers)
    assert deleted.status_code == 204
    assert not staged(stack, task_id)
    retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
    assert retried.status_code == 409, retried.text


async def test_agents_delete_leaves_no_staged_file_of_an_upload_it_missed(
    stack: Stack, tenant: Tenant
) -> None:
    """An upload whose agent is deleted after its lookup and before its workflow starts is
    missed by the delete's cancel, and ends `error` at its store; it can never be retried,
    and its file, chunks and vectors are removed (before: kept until the staging sweep)."""
    settings = stack_settings(stack)  # no worker until the agent is gone
    boundary = "an-upload-outliving-its-agent"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    )
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:

        async def body() -> AsyncIterator[bytes]:
            yield head.encode() + lorem(3, seed=1).encode()
            await asyncio.sleep(0.5)  # the agent's lookup has answered
            deleted = await http.delete(f"/agents/{tenant.agent_id}", headers=tenant.headers)
            assert deleted.status_code == 204
            yield f"\r\n--{boundary}--\r\n".encode()

        response = await http.post(
            "/upload/agent",
            params={"agent_id": tenant.agent_id},
            headers={**tenant.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=body(),
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        async with running_workers(stack, settings, FakeEmbedder()):
            status = await wait_for_status(http, tenant, task_id, Status.TERMINAL, deadline_s=60)
            await ended(stack, task_id)
        assert status["error"]["type"] == "AgentDeleted", status
        retried = await http.post(f"/upload/{task_id}/retry", headers=tenant.headers)
    assert retried.status_code == 409
    assert not staged(stack, task_id)


@pytest.fixture(scope="module")
async def idle_settings(stack: Stack) -> Settings:
    """Settings whose task queues no worker polls: uploads made with them stay running."""
    return stack_settings(stack)


@pytest.fixture(scope="module")
async def idle_api(idle_settings: Settings) -> AsyncIterator[str]:
    async with serve(idle_settings) as url:
        yield url


async def test_agents_delete_cancels_its_running_uploads(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, idle_settings: Settings, idle_api: str
) -> None:
    async with httpx.AsyncClient(base_url=idle_api) as idle:
        waiting = await idle.post(
            "/upload/agent",
            params={"agent_id": tenant.agent_id},
            headers=tenant.headers,
            files={"file": ("waiting.txt", lorem(5).encode())},
        )
    assert waiting.status_code == 202, waiting.text
    task_id = waiting.json()["task_id"]
    async with asyncio.timeout(10):  # visibility is eventually consistent
        while True:
            listed = await http.get("/api/progress", headers=tenant.headers)
            if [task["task_id"] for task in listed.json()["tasks"]] == [task_id]:
                break
            await asyncio.sleep(0.1)

    deleted = await http.delete(f"/agents/{tenant.agent_id}", headers=tenant.headers)
    assert deleted.status_code == 204

    # Without the cancel, a worker would run the task until its store step found no agent
    # and it ended `error`; cancelled, it ends `cancelled` without storing anything.
    async with running_workers(stack, idle_settings, FakeEmbedder()):
        status = await wait_for_status(http, tenant, task_id, Status.TERMINAL, deadline_s=30)
    assert status["status"] == "cancelled", status
    assert status["message"] == "Processing of waiting.txt was cancelled: its agent was deleted"
    assert await document_rows(stack, tenant.agent_id) == 0


async def test_agents_delete_succeeds_when_temporal_is_down(
    stack: Stack, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    settings = stack_settings(stack, temporal_address=f"127.0.0.1:{free_port()}")
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        deleted = await http.delete(f"/agents/{tenant.agent_id}", headers=tenant.headers)
        agents = await http.get("/agents", headers=tenant.headers)
    assert deleted.status_code == 204
    assert agents.json()["agents"] == []
    assert f"could not cancel the running uploads of agent {tenant.agent_id}" in caplog.text


async def test_documents_routes_answer_404_for_other_owners_and_bad_ids(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    status = await ingest(http, tenant, "private.txt", lorem(10, seed=8).encode())
    agent_id, document_id = tenant.agent_id, status["document_id"]
    other = await new_tenant(stack, "other")

    def routes(agent: str, document: str) -> list[tuple[str, str, dict[str, Any] | None]]:
        return [
            ("GET", f"/agents/{agent}/documents", None),
            ("GET", f"/documents/{document}", None),
            ("POST", f"/agents/{agent}/search", {"query": "private"}),
            ("DELETE", f"/documents/{document}", None),
            ("DELETE", f"/agents/{agent}", None),
        ]

    attempts = [(other.headers, route) for route in routes(agent_id, document_id)]
    # Guessing: the other owner's own agent id as a document id and the reverse.
    attempts += [(other.headers, route) for route in routes(document_id, other.agent_id)]
    attempts += [(tenant.headers, route) for bad in BAD_IDS for route in routes(bad, bad)]
    for headers, (method, url, body) in attempts:
        response = await http.request(method, url, headers=headers, json=body)
        assert response.status_code == 404, (method, url, response.text)
        assert response.json()["code"] == "not_found"

    kept = await http.get(f"/documents/{document_id}", headers=tenant.headers)
    assert kept.status_code == 200
    assert kept.json()["chunk_count"] == await chunk_count(stack, document_id) > 0
    listed = await http.get(f"/agents/{agent_id}/documents", headers=tenant.headers)
    assert listed.json()["total"] == 1


async def test_documents_routes_require_a_key(http: httpx.AsyncClient, tenant: Tenant) -> None:
    some_id = str(uuid.uuid4())
    for method, url in (
        ("GET", f"/agents/{tenant.agent_id}/documents"),
        ("GET", f"/documents/{some_id}"),
        ("DELETE", f"/documents/{some_id}"),
        ("DELETE", f"/agents/{tenant.agent_id}"),
    ):
        response = await http.request(method, url)
        assert response.status_code == 401, (method, url)
        assert response.json()["code"] == "unauthorized"
