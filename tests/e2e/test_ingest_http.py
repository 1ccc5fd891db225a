"""The whole stack over HTTP: upload → Temporal workflow → real model → pgvector → status."""

from __future__ import annotations

import asyncio
import base64
import random
import textwrap
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from activities.extract import extract_text
from core.formats import DocumentFormat
from tests.documents import (
    lorem,
    make_docx,
    make_filled_form_pdf,
    make_form_without_appearances_pdf,
    make_pdf,
)
from tests.support import Stack, Tenant, serve, upload_file, wait_for_status
from workflows.types import Status

pytestmark = pytest.mark.usefixtures("worker")


async def stored_chunks(stack: Stack, document_id: str) -> list[dict[str, Any]]:
    async with stack.sessionmaker() as session:
        rows = await session.execute(
            text(
                "SELECT ordinal, text, start_char, end_char, page, vector_norm(embedding) AS norm "
                "FROM chunks WHERE document_id = :id ORDER BY ordinal"
            ),
            {"id": uuid.UUID(document_id)},
        )
        return [dict(row._mapping) for row in rows]


async def test_e2e_pdf_and_docx_reach_complete_with_correct_rows(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    pdf = make_pdf([f"Chapter {n}\n" + lorem(40, seed=n).replace("\n\n", "\n") for n in (1, 2, 3)])
    docx = make_docx(
        [lorem(15, seed=7), lorem(15, seed=8)],
        table=[["Region", "Revenue"], ["North", "1200"], ["South", "800"]],
    )
    pdf_task = await upload_file(http, tenant, "chapters.pdf", pdf)
    docx_task = await upload_file(http, tenant, "memo.docx", docx)

    for task_id, name, data, fmt in (
        (pdf_task, "chapters.pdf", pdf, DocumentFormat.PDF),
        (docx_task, "memo.docx", docx, DocumentFormat.DOCX),
    ):
        status = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
        assert status["status"] == "complete", status
        assert status["message"] == f"Successfully processed {name}"
        assert status["stage"] == "done"
        assert status["error"] is None
        assert status["completed_at"] >= status["started_at"]
        progress = status["progress"]
        assert progress["percent"] == 100.0
        assert progress["chunks_embedded"] == progress["chunks_total"] > 0

        chunks = await stored_chunks(stack, status["document_id"])
        assert [chunk["ordinal"] for chunk in chunks] == list(range(progress["chunks_total"]))
        source = extract_text(data, fmt).text
        for chunk in chunks:
            assert source[chunk["start_char"] : chunk["end_char"]] == chunk["text"]
            assert len(chunk["text"]) <= 1000
            assert chunk["norm"] == pytest.approx(1.0, abs=1e-3)
        pages = {chunk["page"] for chunk in chunks}
        assert pages == ({1, 2, 3} if fmt is DocumentFormat.PDF else {None})

    docx_chunks = await stored_chunks(stack, (await wait_for_status(
        http, tenant, docx_task, Status.TERMINAL))["document_id"])  # fmt: skip
    assert any("North | 1200" in str(chunk["text"]) for chunk in docx_chunks)

    listed = await http.get("/api/progress", headers=tenant.headers)
    assert listed.status_code == 200
    tasks = listed.json()["tasks"]
    assert [task["task_id"] for task in tasks] == [docx_task, pdf_task]  # newest first
    assert {task["status"] for task in tasks} == {"complete"}
    only_complete = await http.get(
        "/api/progress", params={"status": "complete", "limit": 1}, headers=tenant.headers
    )
    assert len(only_complete.json()["tasks"]) == 1
    newest = await http.get("/api/progress", params={"limit": 1}, headers=tenant.headers)
    assert [task["task_id"] for task in newest.json()["tasks"]] == [docx_task]


async def test_e2e_corrupt_pdf_fails_with_a_clear_message(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    task_id = await upload_file(http, tenant, "cut.pdf", make_pdf(["soon to be cut"])[:400])
    status = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    assert status["status"] == "failed"
    assert status["message"].startswith("Failed to process cut.pdf: the PDF is damaged")
    assert status["error"]["type"] == "CorruptDocument"
    async with asyncio.timeout(10):  # visibility is eventually consistent
        while True:
            failed = await http.get(
                "/api/progress", params={"status": "failed"}, headers=tenant.headers
            )
            if failed.json()["tasks"]:
                break
            await asyncio.sleep(0.1)
    assert [task["task_id"] for task in failed.json()["tasks"]] == [task_id]


async def test_e2e_filled_pdf_form_is_searchable_by_its_answers(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    pdf = make_filled_form_pdf({"Applicant": "Jane Marigold Doe", "Policy": "PX-4471-ZETA"})
    task_id = await upload_file(http, tenant, "claim.pdf", pdf)
    status = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    assert status["status"] == "complete", status
    chunks = await stored_chunks(stack, status["document_id"])
    assert [chunk["text"] for chunk in chunks] == [
        "Applicant:\nPolicy:\nJane Marigold Doe PX-4471-ZETA"
    ]


async def test_e2e_pdf_form_whose_values_the_viewer_draws_is_searchable_by_them(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    pdf = make_form_without_appearances_pdf({"Applicant": "Jane Marigold Doe"})
    task_id = await upload_file(http, tenant, "claim.pdf", pdf)
    status = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    assert status["status"] == "complete", status
    found = await http.post(
        f"/agents/{tenant.agent_id}/search",
        json={"query": "Who is the applicant? Jane Marigold Doe"},
        headers=tenant.headers,
    )
    assert found.status_code == 200, found.text
    assert [hit["text"] for hit in found.json()["results"]] == ["Applicant:\nJane Marigold Doe"]


async def test_e2e_text_markdown_and_html_complete(http: httpx.AsyncClient, tenant: Tenant) -> None:
    files = {
        "notes.txt": lorem(10).encode("utf-16"),
        "readme.md": b"# Title\n\nSome *markdown* text about ingestion.",
        "page.html": b"<html><head><script>x()</script></head><body><p>Hello web</p></body></html>",
    }
    tasks = [await upload_file(http, tenant, name, data) for name, data in files.items()]
    for task_id in tasks:
        status = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
        assert status["status"] == "complete", status


async def test_e2e_legacy_encoded_text_is_stored_as_written(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    # Shift-JIS was refused as "binary data" (415), GBK and cp1251 stored as cp1252 mojibake.
    files = {
        "予算.txt": ("cp932", "これは年次予算に関する報告書です。来月までに審査を完了します。"),
        "预算.txt": ("gb18030", "这是一份关于年度预算的报告。我们需要在下个月之前完成审核。"),
        "бюджет.md": ("cp1251", "# Бюджет\n\nЭто отчёт о годовом бюджете всех отделов."),  # noqa: RUF001
    }
    for name, (codec, content) in files.items():
        task_id = await upload_file(http, tenant, name, content.encode(codec))
        status = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
        assert status["status"] == "complete", status
        chunks = await stored_chunks(stack, status["document_id"])
        assert [chunk["text"] for chunk in chunks] == [content]


async def test_e2e_text_is_stored_and_found_as_a_reader_sees_it(
    http: httpx.AsyncClient, stack: Stack, tenant: Tenant
) -> None:
    """BOM-less UTF-16 of Russian was refused (415, "binary data"); a log's colours were read
    glued to its words ("[31mERROR"); a screenshot pasted into Markdown made 269 chunks of
    base64, which searches returned; a wrapped Windows text was cut mid-sentence."""
    russian = "Это отчёт о годовом бюджете всех отделов компании.\n" * 3  # noqa: RUF001
    image = base64.b64encode(random.Random(3).randbytes(60_000)).decode()
    markdown = f"Refunds are accepted within 30 days.\n\n![form](data:image/png;base64,{image})"
    files = {
        "отчёт.txt": (russian.encode("utf-16-le"), [russian.strip()]),
        "app.log": (
            b"12:00:03 \x1b[1;31mERROR\x1b[0m \x1b[36mpayments\x1b[0m: card charge timed out\n",
            ["12:00:03 ERROR payments: card charge timed out"],
        ),
        "refunds.md": (
            markdown.encode(),
            ["Refunds are accepted within 30 days.\n\n![form](data:image/png;base64,)"],
        ),
    }
    for name, (data, texts) in files.items():
        task_id = await upload_file(http, tenant, name, data)
        status = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
        assert status["status"] == "complete", status
        chunks = await stored_chunks(stack, status["document_id"])
        assert [chunk["text"] for chunk in chunks] == texts, name
    # Each "\r\n" of a wrapped Windows text was a paragraph break: chunks ended mid-sentence.
    wrapped = "\n\n".join(textwrap.fill(part, 72) for part in lorem(120, seed=4).split("\n\n"))
    task_id = await upload_file(http, tenant, "wrapped.txt", wrapped.replace("\n", "\r\n").encode())
    status = await wait_for_status(http, tenant, task_id, Status.TERMINAL)
    assert status["status"] == "complete", status
    chunks = await stored_chunks(stack, status["document_id"])
    assert len(chunks) > 5
    assert all(chunk["text"].endswith(".") for chunk in chunks)
    found = await http.post(
        f"/agents/{tenant.agent_id}/search",
        json={"query": "payments error", "top_k": 1},
        headers=tenant.headers,
    )
    assert found.status_code == 200, found.text
    assert [hit["filename"] for hit in found.json()["results"]] == ["app.log"]


async def test_e2e_max_document_chunks_is_the_apis_not_the_workers(
    stack: Stack, tenant: Tenant
) -> None:
    """The task carries the limit the API read (README, "Configuration"): the session's worker
    allows 20,000 chunks, the API 2, and the document of about 10 fails."""
    assert stack.settings.max_document_chunks == 20_000
    text = "\n\n".join(f"Paragraph {n}: " + "words " * 30 for n in range(10)).encode()
    limited = stack.settings.model_copy(update={"max_document_chunks": 2})
    async with serve(limited) as url, httpx.AsyncClient(base_url=url, timeout=60) as http:
        task_id = await upload_file(http, tenant, "long.txt", text, chunk_size=200)
        body = await wait_for_status(http, tenant, task_id, {"complete", "failed"})
    assert body["status"] == "failed", body
    assert body["error"]["type"] == "DocumentTooLarge", body
