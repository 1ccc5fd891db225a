"""`POST /upload/agent` and `GET /upload/status/{id}` over HTTP against the real stack."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import html
import logging
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.bridge.services_generated import WorkflowService
from temporalio.service import RPCError, RPCStatusCode

from api.app import create_app
from api.upload_stream import MAX_OTHER_FIELDS
from core.embedded import free_port
from tests.documents import lorem, make_docx_with_unreadable_rels, make_pdf
from tests.support import (
    FullStaging,
    Stack,
    Tenant,
    chunks_stored,
    documents_stored,
    forget_workflow,
    new_tenant,
    outbox_emptied,
    runs_of,
    serve,
    serve_app,
    stack_settings,
    started,
    upload_file,
    wait_for_status,
)
from workflows.types import MEMO_TASK, Status

UPLOAD_KEYS = {"message", "filename", "agent_id", "task_id", "status", "size_bytes"}
STATUS_KEYS = {
    "task_id", "filename", "agent_id", "status", "message", "document_id",
    "started_at", "completed_at", "stage", "progress", "error",
}  # fmt: skip


def staged_tasks(stack: Stack) -> set[str]:
    root = Path(stack.settings.resolved_staging_url)
    return set(os.listdir(root)) if root.exists() else set()


def upload_url(tenant: Tenant, **params: object) -> str:
    query = "&".join(
        f"{key}={value}" for key, value in {"agent_id": tenant.agent_id, **params}.items()
    )
    return f"/upload/agent?{query}"


async def test_upload_answers_202_with_the_seed_body(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    pdf = make_pdf(["Seed contract page"])
    response = await http.post(
        upload_url(tenant), headers=tenant.headers, files={"file": ("report.pdf", pdf)}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == UPLOAD_KEYS
    assert body["message"] == "Document uploaded successfully, processing in background"
    assert body["filename"] == "report.pdf"
    assert body["agent_id"] == tenant.agent_id
    assert body["status"] == "queued"
    assert body["size_bytes"] == len(pdf)

    status = await http.get(f"/upload/status/{body['task_id']}", headers=tenant.headers)
    assert status.status_code == 200
    assert set(status.json()) == STATUS_KEYS
    assert status.json()["filename"] == "report.pdf"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer dik_wrongwrongwrongwrongwrongwrongwrongwrongwro"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer not-a-key"},
    ],
)
async def test_upload_without_a_valid_key_is_401(
    http: httpx.AsyncClient, tenant: Tenant, headers: dict[str, str]
) -> None:
    response = await http.post(
        upload_url(tenant), headers=headers, files={"file": ("a.txt", b"hi")}
    )
    assert response.status_code == 401
    assert response.json()["code"] == "unauthorized"
    assert response.json()["detail"]


@pytest.mark.parametrize(
    "agent_id", ["00000000-0000-0000-0000-000000000000", "x' OR '1'='1", "../../etc"]
)
async def test_upload_for_an_unknown_agent_is_404(
    http: httpx.AsyncClient, tenant: Tenant, agent_id: str
) -> None:
    response = await http.post(
        "/upload/agent", params={"agent_id": agent_id}, headers=tenant.headers,
        files={"file": ("a.txt", b"hello")},
    )  # fmt: skip
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_upload_for_an_unknown_agent_is_refused_before_the_body_is_sent(
    api_url: str, stack: Stack, tenant: Tenant
) -> None:
    """The agent is looked up while the body streams: a client that sent only the start of
    a large file still gets its 404 at once, and nothing stays staged."""
    before = staged_tasks(stack)
    url = httpx.URL(api_url)
    boundary = "earlyrefusal"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode() + b"x" * 65536
    request = (
        "POST /upload/agent?agent_id=00000000-0000-0000-0000-000000000000 HTTP/1.1\r\n"
        f"Host: {url.host}\r\nAuthorization: {tenant.headers['Authorization']}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(request + head)
        await writer.drain()
        answer = b""
        async with asyncio.timeout(10):  # the other 50 MB are never sent
            while b"not_found" not in answer:
                piece = await reader.read(4096)
                if not piece:
                    break
                answer += piece
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 404"), answer[:300]
    assert staged_tasks(stack) <= before


async def test_upload_for_an_unknown_agent_leaves_nothing_staged_under_concurrency(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """The 404 cancels the body's reception, maybe while a thread opens the staged file: the
    request waits for that thread before it discards the file. It used to discard first, and
    the thread then created an empty `original` (about 1 upload in 60), left for the sweep."""
    before = staged_tasks(stack)
    unknown = {"agent_id": "00000000-0000-0000-0000-000000000000"}
    concurrent = asyncio.Semaphore(4)

    async def upload(number: int) -> int:
        async with concurrent:
            response = await http.post(
                "/upload/agent", params=unknown, headers=tenant.headers,
                files={"file": (f"a{number}.txt", lorem(6, seed=number).encode())},
            )  # fmt: skip
            return response.status_code

    assert set(await asyncio.gather(*(upload(number) for number in range(300)))) == {404}
    assert staged_tasks(stack) <= before


async def test_upload_for_an_unknown_agent_is_404_even_with_a_malformed_body(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await http.post(
        "/upload/agent",
        params={"agent_id": "00000000-0000-0000-0000-000000000000"},
        headers={**tenant.headers, "Content-Type": "multipart/form-data; boundary=b"},
        content=b'--b\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\ncut',
    )
    assert response.status_code == 404, response.text


async def test_upload_for_another_owners_agent_is_404(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    other = await new_tenant(stack, "other")
    response = await http.post(
        upload_url(other), headers=tenant.headers, files={"file": ("a.txt", b"hello")}
    )
    assert response.status_code == 404


@pytest.fixture(scope="module")
async def small_limit_api(stack: Stack) -> AsyncIterator[str]:
    settings = stack_settings(stack, max_upload_bytes=1000)
    async with serve(settings) as url:
        yield url


async def test_upload_over_the_limit_is_413_and_leaves_nothing(
    small_limit_api: str, stack: Stack, tenant: Tenant
) -> None:
    before = staged_tasks(stack)
    async with httpx.AsyncClient(base_url=small_limit_api) as http:
        response = await http.post(
            upload_url(tenant), headers=tenant.headers, files={"file": ("big.txt", b"a" * 1001)}
        )
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "payload_too_large"
    assert staged_tasks(stack) <= before  # nothing new (the worker may remove finished ones)


async def test_upload_streamed_without_length_is_cut_at_the_limit(
    small_limit_api: str, stack: Stack, tenant: Tenant
) -> None:
    """No Content-Length to trust: the limit is enforced while the body streams in."""
    boundary = "testboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        for _ in range(100):
            yield b"b" * 100
        yield f"\r\n--{boundary}--\r\n".encode()

    before = staged_tasks(stack)
    async with httpx.AsyncClient(base_url=small_limit_api) as http:
        response = await http.post(
            upload_url(tenant),
            headers={**tenant.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            content=body(),
        )
    assert response.status_code == 413
    assert staged_tasks(stack) <= before  # nothing new (the worker may remove finished ones)


async def test_upload_exactly_at_the_limit_is_accepted(
    small_limit_api: str, tenant: Tenant
) -> None:
    async with httpx.AsyncClient(base_url=small_limit_api) as http:
        response = await http.post(
            upload_url(tenant), headers=tenant.headers, files={"file": ("fits.txt", b"a " * 500)}
        )
    assert response.status_code == 202, response.text
    assert response.json()["size_bytes"] == 1000


async def test_upload_sniffs_a_head_that_arrives_in_small_pieces(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """The format comes from the head kept while streaming, however the body is cut."""
    boundary = "piecesboundary"

    def pieces(name: str, data: bytes) -> AsyncIterator[bytes]:
        async def body() -> AsyncIterator[bytes]:
            yield (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            for start in range(0, len(data), 3):  # "%PDF-" never arrives whole
                yield data[start : start + 3]
            yield f"\r\n--{boundary}--\r\n".encode()

        return body()

    headers = {**tenant.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    pdf = b"\n" + make_pdf(["Sniffed from pieces."])  # junk first: the magic is not at 0
    accepted = await http.post(upload_url(tenant), headers=headers, content=pieces("a.bin", pdf))
    assert accepted.status_code == 202, accepted.text
    description = await stack.client.get_workflow_handle(accepted.json()["task_id"]).describe()
    memo = await description.memo()
    assert memo[MEMO_TASK]["format"] == "pdf"
    binary = bytes(range(256)) * 40
    refused = await http.post(upload_url(tenant), headers=headers, content=pieces("b.txt", binary))
    assert refused.status_code == 415, refused.text


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("random.pdf", bytes(range(256)) * 40),
        ("archive.docx", b"PK\x03\x04" + b"\x00" * 100),
        ("locked.docx", make_docx_with_unreadable_rels("encrypted")),
        ("aes.docx", make_docx_with_unreadable_rels("method")),
        ("damaged.docx", make_docx_with_unreadable_rels("deflate")),
        ("image.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
    ],
)
async def test_upload_of_unreadable_content_is_415_and_leaves_nothing(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, name: str, data: bytes
) -> None:
    before = staged_tasks(stack)
    response = await http.post(
        upload_url(tenant), headers=tenant.headers, files={"file": (name, data)}
    )
    assert response.status_code == 415, response.text
    assert response.json()["code"] == "unsupported_media_type"
    assert name in response.json()["detail"]
    assert staged_tasks(stack) <= before  # nothing new (the worker may remove finished ones)


async def test_upload_of_an_empty_file_is_422_saying_so_and_leaves_nothing(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """An empty file was 415 "cannot be ingested: the file is empty. Supported: PDF, DOCX,
    …": a format error for a file that has none, which sent the user looking for a format."""
    before = staged_tasks(stack)
    response = await http.post(
        upload_url(tenant), headers=tenant.headers, files={"file": ("notes.txt", b"")}
    )
    assert response.status_code == 422, response.text
    assert response.json() == {
        "detail": "notes.txt is empty (0 bytes): there is nothing to ingest; "
        "check that the right file was attached",
        "code": "invalid_request",
    }
    assert staged_tasks(stack) <= before  # nothing new (the worker may remove finished ones)


async def test_batch_lists_an_empty_file_as_rejected_422_and_starts_the_others(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    response = await http.post(
        "/upload/agent/batch",
        params={"agent_id": tenant.agent_id},
        headers=tenant.headers,
        files=[("file", ("empty.md", b"")), ("file", ("full.txt", b"Some words."))],
    )
    assert response.status_code == 202, response.text
    empty, full = response.json()["tasks"]
    assert empty == {
        "filename": "empty.md",
        "status": "rejected",
        "status_code": 422,
        "code": "invalid_request",
        "detail": "empty.md is empty (0 bytes): there is nothing to ingest; "
        "check that the right file was attached",
    }
    assert full["status"] == "queued"
    batch = await http.get(f"/upload/batch/{response.json()['batch_id']}", headers=tenant.headers)
    assert batch.json()["rejected"] == [empty]


@pytest.mark.parametrize(
    "params",
    [
        {"chunk_size": 500, "chunk_overlap": 500},
        {"chunk_size": 500, "chunk_overlap": 800},
        {"chunk_size": 0},
        {"chunk_size": -5},
        {"chunk_size": 10**9},
        {"chunk_overlap": -1},
        {"chunk_size": "abc"},
    ],
)
async def test_upload_with_bad_chunking_is_422(
    http: httpx.AsyncClient, tenant: Tenant, params: dict[str, object]
) -> None:
    response = await http.post(
        upload_url(tenant, **params), headers=tenant.headers, files={"file": ("a.txt", b"hello")}
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"


async def test_upload_with_custom_chunking_is_accepted(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    response = await http.post(
        upload_url(tenant, chunk_size=300, chunk_overlap=30),
        headers=tenant.headers,
        files={"file": ("a.txt", b"hello world")},
    )
    assert response.status_code == 202


@pytest.mark.parametrize(
    "files",
    [
        {"document": ("a.txt", b"hello")},
        [("file", ("a.txt", b"hello")), ("file", ("b.txt", b"world"))],
    ],
)
async def test_upload_without_exactly_one_file_is_422(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, files: object
) -> None:
    before = staged_tasks(stack)
    response = await http.post(upload_url(tenant), headers=tenant.headers, files=files)  # type: ignore[arg-type]
    assert response.status_code == 422, response.text
    assert staged_tasks(stack) <= before  # nothing new (the worker may remove finished ones)


async def test_upload_that_is_not_multipart_is_422(http: httpx.AsyncClient, tenant: Tenant) -> None:
    response = await http.post(upload_url(tenant), headers=tenant.headers, content=b"raw bytes")
    assert response.status_code == 422
    assert "multipart/form-data" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/upload/agent", "/upload/agent/batch"])
async def test_upload_sent_compressed_is_415_and_leaves_nothing(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, path: str
) -> None:
    """A gzip body was parsed as multipart: 422 "Expected boundary character 45, got 31"."""
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'
    body += b"hello world\r\n--b--\r\n"
    before = staged_tasks(stack)
    response = await http.post(
        path,
        params={"agent_id": tenant.agent_id},
        headers={
            **tenant.headers,
            "Content-Type": "multipart/form-data; boundary=b",
            "Content-Encoding": "gzip",
        },
        content=gzip.compress(body),
    )
    assert response.status_code == 415, response.text
    assert response.json()["code"] == "unsupported_media_type"
    assert "Content-Encoding 'gzip'" in response.json()["detail"]
    assert staged_tasks(stack) <= before


async def test_batch_of_many_fields_and_no_file_is_a_short_422(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    """The 422 named every field received: 8 MB of field names came back as an 8 MB answer
    (a batch may send 500 MiB, all of it kept in memory to say so)."""
    part = b'--b\r\nContent-Disposition: form-data; name="' + b"n" * 4000 + b'"\r\n\r\n\r\n'
    response = await http.post(
        "/upload/agent/batch",
        params={"agent_id": tenant.agent_id},
        headers={**tenant.headers, "Content-Type": "multipart/form-data; boundary=b"},
        content=part * MAX_OTHER_FIELDS + b"--b--\r\n",
    )
    assert response.status_code == 422, response.text[:500]
    detail = response.json()["detail"]
    assert "no file" in detail and f"and {MAX_OTHER_FIELDS - 10} more" in detail
    assert len(response.content) < 4096


@pytest.mark.parametrize(
    ("path", "fields", "status"),
    [
        ("/upload/agent", MAX_OTHER_FIELDS, 202),
        ("/upload/agent", MAX_OTHER_FIELDS + 1, 422),
        ("/upload/agent/batch", MAX_OTHER_FIELDS + 1, 422),
    ],
)
async def test_upload_of_more_than_max_other_fields_is_422_naming_the_limit(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, path: str, fields: int, status: int
) -> None:
    """Any number of empty fields beside the file was read to the end of the request: a
    48 MiB body of them held the API's event loop for 12 s, and every other request meanwhile
    waited ~100 times longer for its answer."""
    file = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhi\r\n'
    field = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n'
    before = staged_tasks(stack)
    response = await http.post(
        path,
        params={"agent_id": tenant.agent_id},
        headers={**tenant.headers, "Content-Type": "multipart/form-data; boundary=b"},
        content=file + field * fields + b"--b--\r\n",
    )
    assert response.status_code == status, response.text
    if status == 422:
        assert response.json() == {
            "detail": f"the request has more than {MAX_OTHER_FIELDS} form fields besides "
            "`file`; send the documents in `file` fields (options go in the query string)",
            "code": "invalid_request",
        }
        assert staged_tasks(stack) <= before  # the file received first was removed


async def test_batch_schema_takes_repeated_files_and_offers_no_idempotency_key(
    http: httpx.AsyncClient,
) -> None:
    """The batch published the single upload's body (one `file`: a generated client and /docs
    sent one file) and an Idempotency-Key header that every value of is refused with 422."""
    paths = (await http.get("/openapi.json")).json()["paths"]
    batch = paths["/upload/agent/batch"]["post"]
    body = batch["requestBody"]["content"]["multipart/form-data"]["schema"]
    binary = {"type": "string", "format": "binary"}
    assert body["properties"]["file"] == {"type": "array", "items": binary}
    assert "idempotency-key" not in {parameter["name"] for parameter in batch["parameters"]}
    single = paths["/upload/agent"]["post"]
    assert "idempotency-key" in {parameter["name"] for parameter in single["parameters"]}
    assert single["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"] == {
        "file": binary
    }


async def test_upload_filename_is_cleaned_for_display(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    boundary = "b0undary"
    raw_name = "../../etc/pass\x07wd\x00.txt"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{raw_name}"\r\n'
        f"\r\nhello\r\n--{boundary}--\r\n"
    ).encode()
    response = await http.post(
        upload_url(tenant),
        headers={**tenant.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body,
    )
    assert response.status_code == 202, response.text
    assert response.json()["filename"] == "passwd.txt"


@pytest.mark.parametrize(
    "disposition",
    [
        # .NET's MultipartFormDataContent: `filename` MIME-encoded, `filename*` as RFC 5987.
        b'name="file"; filename="=?utf-8?B?csOpc3Vtw6kubWQ=?="; '
        b"filename*=utf-8''r%C3%A9sum%C3%A9.md",
        b"name=\"file\"; filename*=UTF-8''r%C3%A9sum%C3%A9.md",
        b"name=\"file\"; filename*=iso-8859-1'fr'r%E9sum%E9.md",
        b'name="file"; filename="r\xc3\xa9sum\xc3\xa9.md"',
    ],
    ids=["dotnet", "extended-only", "extended-latin-1", "plain-utf-8"],
)
async def test_upload_filename_given_as_rfc_5987_is_read(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, disposition: bytes
) -> None:
    """Some clients send the name as `filename*=UTF-8''…` (RFC 5987), alone or beside a
    MIME-encoded `filename`: it showed as "upload" or "=?utf-8?B?…?=", and a Markdown file
    lost the extension that tells it from text."""
    boundary = "rfc5987"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; ".encode()
        + disposition
        + f"\r\n\r\n# Title\n\nSome *text*.\r\n--{boundary}--\r\n".encode()
    )
    response = await http.post(
        upload_url(tenant),
        headers={**tenant.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body,
    )
    assert response.status_code == 202, response.text
    assert response.json()["filename"] == "résumé.md"
    description = await stack.client.get_workflow_handle(response.json()["task_id"]).describe()
    assert (await description.memo())[MEMO_TASK]["format"] == "markdown"


@pytest.mark.usefixtures("worker")
async def test_upload_while_temporal_is_down_is_kept_and_starts_once_it_is_reachable(
    stack: Stack, tenant: Tenant
) -> None:
    """An upload is acknowledged once its file is on the disk and its start is recorded in
    PostgreSQL, not once Temporal answered: with Temporal unreachable it is 202, its status
    says why it waits, and an API that reaches Temporal starts it (here the read of its
    status does; otherwise any API's dispatcher)."""
    down = stack_settings(
        stack,
        temporal_address=f"127.0.0.1:{free_port()}",
        task_queue=stack.settings.task_queue,  # the worker's
        embed_task_queue=stack.settings.embed_task_queue,
    )
    async with serve(down) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        response = await http.post(
            upload_url(tenant), headers=tenant.headers, files={"file": ("a.txt", lorem(3))}
        )
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        waiting = (await http.get(f"/upload/status/{task_id}", headers=tenant.headers)).json()
        health = await http.get("/health")
    assert waiting["status"] == Status.QUEUED, waiting
    assert waiting["message"] == (
        "Queued a.txt for processing; its start waits for the task queue (Temporal cannot be "
        "reached) and is tried again"
    )
    assert task_id in staged_tasks(stack)
    assert health.status_code == 503
    assert health.json()["temporal"] == "unavailable"
    async with serve(stack.settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        done = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    assert done["status"] == Status.COMPLETE, done
    assert await runs_of(stack, task_id) == 1


@pytest.mark.usefixtures("worker")
async def test_an_upload_temporal_did_not_answer_is_started_by_another_api_later(
    stack: Stack, tenant: Tenant
) -> None:
    """The API that acknowledged an upload could not reach Temporal, and went away: the
    dispatcher of another API starts it from the outbox, with no one asking for it."""
    down = stack_settings(
        stack,
        temporal_address=f"127.0.0.1:{free_port()}",
        task_queue=stack.settings.task_queue,
        embed_task_queue=stack.settings.embed_task_queue,
    )
    async with serve(down) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        task_id = await upload_file(http, tenant, "orphaned.txt", lorem(3, seed=73).encode())
    async with serve(stack.settings):
        handle = await started(stack, task_id)
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result["status"] == Status.COMPLETE
    assert await runs_of(stack, task_id) == 1
    await outbox_emptied(stack, task_id)


@pytest.mark.parametrize("route", ["/upload/agent", "/upload/agent/batch"])
async def test_upload_into_a_full_staging_store_is_503_saying_so_and_leaves_nothing(
    stack: Stack, tenant: Tenant, route: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A full staging disk was a 500 "Internal error; it has been logged": the client could
    not tell that nothing was kept, nor that the same upload may be sent again later. Its
    operator is told too."""
    app = create_app(stack.settings)
    before = staged_tasks(stack)
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        app.state.resources.staging = FullStaging(stack.settings.resolved_staging_url)
        response = await http.post(
            f"{route}?agent_id={tenant.agent_id}",
            headers=tenant.headers,
            files={"file": ("notes.txt", lorem(40, seed=81).encode())},
        )
    assert response.status_code == 503, response.text
    assert response.json() == {
        "detail": "notes.txt could not be received: the staging store could not be written "
        "(No space left on device); nothing was kept, send it again later",
        "code": "service_unavailable",
    }
    assert staged_tasks(stack) <= before
    assert "an upload could not be staged: [Errno 28] No space left on device" in caplog.text


@contextlib.contextmanager
def unanswered_starts(
    monkeypatch: pytest.MonkeyPatch, times: int, *, delivered: bool = True
) -> Iterator[list[str]]:
    """The next `times` workflow starts get no answer in time (DEADLINE_EXCEEDED): the
    network lost the answer of a start the server `delivered`, or lost the start itself.
    Yields the workflow ids of the starts sent, answered or not."""
    real = WorkflowService.start_workflow_execution
    sent: list[str] = []

    async def start(self: WorkflowService, req: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(req.workflow_id)
        if len(sent) > times:
            return await real(self, req, *args, **kwargs)
        if delivered:
            await real(self, req, *args, **kwargs)
        raise RPCError("Deadline Exceeded", RPCStatusCode.DEADLINE_EXCEEDED, b"")

    with monkeypatch.context() as patch:
        patch.setattr(WorkflowService, "start_workflow_execution", start)
        yield sent


@pytest.mark.usefixtures("worker")
async def test_upload_with_a_key_whose_start_was_answered_too_late_is_202_and_runs_once(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Idempotency-Key's upload starts its workflow before it is answered; the run found
    when the start is sent again reads this request's own staged file, so it is taken as
    this upload's, not answered as a repeat whose file is discarded."""
    headers = {**tenant.headers, "Idempotency-Key": "late-start"}
    with unanswered_starts(monkeypatch, times=1) as sent:
        response = await http.post(
            upload_url(tenant), headers=headers, files={"file": ("late.txt", lorem(3))}
        )
    assert response.status_code == 202, response.text
    assert "idempotent-replayed" not in response.headers  # the first upload, not a repeat
    task_id = response.json()["task_id"]
    assert sent == [task_id, task_id]  # asked again, and the first start's run was taken
    done = await wait_for_status(http, tenant, task_id, {Status.COMPLETE, Status.ERROR})
    assert done["status"] == Status.COMPLETE, done
    assert await runs_of(stack, task_id) == 1
    assert await documents_stored(stack, task_id) == 1


@pytest.mark.usefixtures("worker")
async def test_upload_with_a_key_whose_start_is_never_confirmed_is_503_naming_the_task(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    headers = {**tenant.headers, "Idempotency-Key": "never-confirmed"}
    with unanswered_starts(monkeypatch, times=2) as sent:
        response = await http.post(
            upload_url(tenant), headers=headers, files={"file": ("lost.txt", lorem(3))}
        )
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "service_unavailable"
    task_id = sent[0]
    assert f"GET /upload/status/{task_id} tells" in response.json()["detail"]
    # The server did start it: the task finds its staged file and completes.
    done = await wait_for_status(http, tenant, task_id, {Status.COMPLETE, Status.ERROR})
    assert done["status"] == Status.COMPLETE, done
    assert await runs_of(stack, task_id) == 1


async def test_an_upload_whose_start_temporal_refuses_is_503_and_leaves_nothing(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temporal answered the start with a refusal (a search attribute not registered, say):
    the client hears it, and nothing is kept; only a start that got no answer is kept in the
    outbox to be tried again."""

    async def refuse(self: WorkflowService, req: Any, *args: Any, **kwargs: Any) -> Any:
        refusal = "no mapping defined for search attribute"
        raise RPCError(refusal, RPCStatusCode.INVALID_ARGUMENT, b"")

    before = staged_tasks(stack)
    with monkeypatch.context() as patch:
        patch.setattr(WorkflowService, "start_workflow_execution", refuse)
        response = await http.post(
            upload_url(tenant), headers=tenant.headers, files={"file": ("r1.txt", lorem(3))}
        )
    assert response.status_code == 503, response.text
    assert response.json()["detail"] == (
        "The task queue is unavailable, nothing was stored: Temporal refused the request "
        "(no mapping defined for search attribute)"
    )
    assert staged_tasks(stack) <= before


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize("delivered", [True, False], ids=["answer-lost", "start-lost"])
@pytest.mark.parametrize("route", ["/upload/agent", "/upload/agent/batch"])
async def test_upload_whose_starts_go_unanswered_is_202_and_runs_once(
    http: httpx.AsyncClient,
    stack: Stack,
    tenant: Tenant,
    monkeypatch: pytest.MonkeyPatch,
    delivered: bool,
    route: str,
) -> None:
    """Temporal answers none of the first three starts in time, whether it started the
    workflow (the answer was lost) or never saw the start: the upload, acknowledged before
    its start, is started by the outbox's next tries, and runs once."""
    with unanswered_starts(monkeypatch, times=3, delivered=delivered) as sent:
        response = await http.post(
            f"{route}?agent_id={tenant.agent_id}",
            headers=tenant.headers,
            files={"file": ("slow.txt", lorem(3, seed=72))},
        )
        assert response.status_code == 202, response.text
        answer = response.json()
        task = answer["tasks"][0] if route.endswith("batch") else answer
        assert task["status"] == Status.QUEUED, task
        task_id = task["task_id"]
        done = await wait_for_status(http, tenant, task_id, {Status.COMPLETE, Status.ERROR})
    assert done["status"] == Status.COMPLETE, done
    assert set(sent) == {task_id}
    assert len(sent) > 3 or delivered  # a start that never arrived was sent until one did
    assert await runs_of(stack, task_id) == 1
    assert await documents_stored(stack, task_id) == 1
    await outbox_emptied(stack, task_id)  # the dispatcher found it started


@pytest.mark.usefixtures("worker")
async def test_a_batch_file_not_started_yet_is_listed_once_as_a_task(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every file of a batch is in exactly one list, before its workflow started too: the
    batch's status lists the task queued (its read starts it, or says why it waits)."""
    with unanswered_starts(monkeypatch, times=3, delivered=False) as sent:
        response = await http.post(
            "/upload/agent/batch",
            params={"agent_id": tenant.agent_id},
            headers=tenant.headers,
            files=[("file", ("once.txt", lorem(2, seed=71)))],
        )
        assert response.status_code == 202, response.text
        batch_id = response.json()["batch_id"]
        (task_id,) = [entry["task_id"] for entry in response.json()["tasks"]]
        early = (await http.get(f"/upload/batch/{batch_id}", headers=tenant.headers)).json()
        assert [task["task_id"] for task in early["tasks"]] == [task_id], early
        assert early["rejected"] == [], early
        done = await wait_for_status(http, tenant, task_id, {Status.COMPLETE, Status.ERROR})
    assert done["status"] == Status.COMPLETE, done
    assert set(sent) == {task_id}
    batch = (await http.get(f"/upload/batch/{batch_id}", headers=tenant.headers)).json()
    assert [task["task_id"] for task in batch["tasks"]] == [task_id], batch
    assert batch["rejected"] == [] and batch["summary"] == {"complete": 1}, batch


@pytest.mark.usefixtures("worker")
async def test_a_refused_file_is_logged_in_one_line_not_as_a_crash(
    http: httpx.AsyncClient, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """A file that cannot be ingested is the system doing its job: one INFO line naming why,
    no WARNING with a traceback (which an operator reads as a crash)."""
    caplog.set_level(logging.DEBUG, logger="temporalio")
    task_id = await upload_file(http, tenant, "cut.pdf", make_pdf(["cut short"])[:300])
    done = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    assert done["status"] == Status.FAILED
    ours = [record for record in caplog.records if task_id in record.getMessage()]
    assert [r.getMessage() for r in ours if r.levelno >= logging.WARNING] == []
    assert any(
        r.levelno == logging.INFO and r.getMessage().startswith("refused (CorruptDocument): ")
        for r in ours
    ), [r.getMessage() for r in ours]


async def test_status_answers_within_3s_when_no_worker_runs(stack: Stack, tenant: Tenant) -> None:
    settings = stack_settings(stack)  # fresh task queues that no worker polls
    async with serve(settings) as url, httpx.AsyncClient(base_url=url) as http:
        upload = await http.post(
            upload_url(tenant), headers=tenant.headers, files={"file": ("a.txt", b"hello")}
        )
        task_id = upload.json()["task_id"]
        for _ in range(3):
            status = await http.get(
                f"/upload/status/{task_id}", headers=tenant.headers, timeout=3.0
            )
            assert status.status_code == 200
            assert status.json()["status"] == "queued"
            assert status.json()["message"] == "Queued a.txt for processing"
        listed = await http.get("/api/progress", headers=tenant.headers, timeout=3.0)
    assert [task["task_id"] for task in listed.json()["tasks"]] == [task_id]


async def test_status_of_unknown_or_foreign_task_is_404(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    upload = await http.post(
        upload_url(tenant), headers=tenant.headers, files={"file": ("a.txt", b"hello")}
    )
    other = await new_tenant(stack, "other")
    foreign = await http.get(f"/upload/status/{upload.json()['task_id']}", headers=other.headers)
    unknown = await http.get("/upload/status/no-such-task", headers=tenant.headers)
    assert foreign.status_code == 404
    assert unknown.status_code == 404
    assert foreign.json() == {
        "detail": f"Task {upload.json()['task_id']!r} not found",
        "code": "not_found",
    }


@pytest.mark.usefixtures("worker")
async def test_upload_with_a_key_reused_after_retention_keeps_the_first_document(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """Temporal's retention dropped the key's workflow; the document row it left still binds
    the key: another file is refused (and never stored in the first one's place), the same
    file is answered as a replay, and neither starts a workflow."""
    headers = {**tenant.headers, "Idempotency-Key": "invoice-2026-001"}
    january = lorem(6, seed=101).encode()
    first = await http.post(
        upload_url(tenant), headers=headers, files={"file": ("jan.txt", january)}
    )
    assert first.status_code == 202, first.text
    task_id = first.json()["task_id"]
    done = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    assert done["status"] == "complete", done
    chunks = await chunks_stored(stack, task_id)
    assert chunks > 0
    await forget_workflow(stack, task_id)
    staged_before = staged_tasks(stack)

    february = lorem(6, seed=202).encode()
    refused = await http.post(
        upload_url(tenant), headers=headers, files={"file": ("feb.txt", february)}
    )
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["code"] == "idempotency_key_reused"
    assert task_id in body["detail"] and "'jan.txt'" in body["detail"]
    assert "differs in file content, file name." in body["detail"]
    assert "idempotent-replayed" not in refused.headers
    # The row keeps the chunking too: the same file chunked otherwise is another upload.
    rechunked = await http.post(
        upload_url(tenant, chunk_size=300), headers=headers, files={"file": ("jan.txt", january)}
    )
    assert rechunked.status_code == 422, rechunked.text
    assert "differs in chunking." in rechunked.json()["detail"]

    replayed = await http.post(
        upload_url(tenant), headers=headers, files={"file": ("jan.txt", january)}
    )
    assert replayed.status_code == 202, replayed.text
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json() == {
        **first.json(),
        "status": "complete",
        "message": "Successfully processed jan.txt",
        "document_id": done["document_id"],
    }

    with pytest.raises(RPCError) as missing:
        await stack.client.get_workflow_handle(task_id).describe()
    assert missing.value.status == RPCStatusCode.NOT_FOUND
    status = (await http.get(f"/upload/status/{task_id}", headers=tenant.headers)).json()
    assert (status["filename"], status["status"]) == ("jan.txt", "complete")
    assert status["document_id"] == done["document_id"]
    assert await documents_stored(stack, task_id) == 1
    assert await chunks_stored(stack, task_id) == chunks
    assert staged_tasks(stack) <= staged_before  # neither repeat left a staged file


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        (
            {"chunk_size": 10_000, "chunk_overlap": 9_999},
            "chunk_overlap (9999) must be at most half of chunk_size (10000), so at most 5000",
        ),
        (
            {"chunk_size": 101, "chunk_overlap": 51},
            "chunk_overlap (51) must be at most half of chunk_size (101), so at most 50",
        ),
        (
            {"chunk_overlap": 501},
            "chunk_overlap (501) must be at most half of chunk_size (1000), so at most 500",
        ),
    ],
)
async def test_upload_with_overlap_over_half_the_chunk_size_is_422_and_leaves_nothing(
    http: httpx.AsyncClient,
    stack: Stack,
    tenant: Tenant,
    params: dict[str, object],
    detail: str,
) -> None:
    """Each chunk would start barely a word after the one before: refused up front."""
    before = staged_tasks(stack)
    response = await http.post(
        upload_url(tenant, **params), headers=tenant.headers, files={"file": ("a.txt", b"hi")}
    )
    assert response.status_code == 422, response.text
    assert response.json() == {"detail": detail, "code": "invalid_request"}
    assert staged_tasks(stack) <= before  # nothing new (the worker may remove finished ones)


async def ui_renders(ui: httpx.AsyncClient, markdown: str) -> tuple[str, str]:
    """The HTML the Web UI renders `markdown` as (its `/render` page, which the workflow page
    embeds for summaries and details), and the text a person reads there."""
    for _ in range(50):  # the UI may still be starting beside the server
        try:
            response = await ui.get("/render", params={"content": markdown})
            break
        except httpx.TransportError:
            await asyncio.sleep(0.2)
    body = re.search(r"<main>(.*)</main>", response.text, re.S)
    assert body is not None, response.text
    markup = body.group(1).strip()
    return markup, html.unescape(re.sub(r"<[^>]+>", "", markup))


@pytest.mark.usefixtures("worker")
async def test_upload_file_name_shows_as_written_in_the_temporal_ui(
    stack: Stack, http: httpx.AsyncClient, tenant: Tenant, temporal_ui_port: int
) -> None:
    # The UI renders summaries and details as Markdown: these names became a numbered list
    # ("Introduction.txt"), bold "init", an en dash, and links to another site.
    names = [
        "1. Introduction.txt",
        "__init__.txt",
        "report -- final.txt",
        "[Re-authenticate here](https:evil.example).txt",
        "<a href=https:evil.example>Open the retry console.txt",
    ]
    shown_otherwise = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{temporal_ui_port}") as ui:
        for name in names:
            task_id = await upload_file(http, tenant, name, os.urandom(8).hex().encode())
            await wait_for_status(http, tenant, task_id, {Status.COMPLETE})
            handle = stack.client.get_workflow_handle(task_id)
            description = await handle.describe()
            metadata = await handle.query(
                "__temporal_workflow_metadata", result_type=WorkflowMetadata
            )
            shown = {
                "summary": await description.static_summary(),
                "details": await description.static_details(),
                "current details": metadata.current_details,
            }
            for what, markdown in shown.items():
                markup, text = await ui_renders(ui, markdown or "")
                if name not in text or "<a " in markup or "&frasl;" in markup:
                    shown_otherwise.append(f"{what} of {name!r}: {markup}")
    assert shown_otherwise == []
