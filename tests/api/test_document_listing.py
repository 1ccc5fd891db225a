"""`GET /agents/{id}/documents` while other clients store and delete documents."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import create_engine, event, text

from api.app import create_app
from core.models import Document
from tests.support import (
    Stack,
    Tenant,
    new_tenant,
    plan_from_indexes,
    serve_app,
    stack_settings,
    statements_run,
)


async def test_documents_total_agrees_with_the_page_when_a_delete_lands_in_between(
    stack: Stack,
) -> None:
    """The count and the page were two statements, each with its own snapshot: a document
    deleted between them was counted in `total` (3) but missing from the only page (2)."""
    tenant = await new_tenant(stack)
    async with stack.sessionmaker.begin() as session:
        rows = [
            _document(
                tenant,
                number,
                chunk_count=0,
                status="failed",
                error_type="EmptyDocument",
                error_message="the document holds no text",
            )
            for number in range(3)
        ]
        session.add_all(rows)
        await session.flush()
        victim = rows[0].id
    assert stack.settings.database_url is not None
    other_client = create_engine(stack.settings.database_url)
    app = create_app(stack_settings(stack))
    deleted: list[str] = []

    def delete_after_the_count(*args: Any) -> None:
        statement: str = args[2]
        if "count(*)" in statement and "FROM documents" in statement and not deleted:
            deleted.append(statement)
            with other_client.begin() as connection:
                connection.execute(text("DELETE FROM documents WHERE id = :id"), {"id": victim})

    try:
        async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as http:
            engine = app.state.resources.engine.sync_engine  # made by the app's start-up
            event.listen(engine, "after_cursor_execute", delete_after_the_count)
            page = await http.get(f"/agents/{tenant.agent_id}/documents", headers=tenant.headers)
    finally:
        other_client.dispose()
    assert deleted, "the listing no longer counts with count(*): update this test"
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["total"] == len(body["documents"]), body


async def test_documents_cursor_pages_neither_repeat_nor_skip_while_documents_come_and_go(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """An upload that finishes between two pages goes on top and shifted every offset by one
    (the next page repeated the last document of the page before), and a delete shifted them
    back (a document was skipped). Pages read by `next_cursor` list each document once."""
    tenant = await new_tenant(stack)
    async with stack.sessionmaker.begin() as session:
        rows = [_document(tenant, number) for number in range(7)]
        session.add_all(rows)
        await session.flush()
        listed_first = sorted(rows, key=lambda row: (row.created_at, row.id), reverse=True)[0]
    url = f"/agents/{tenant.agent_id}/documents"
    first = (await http.get(url, params={"limit": 3}, headers=tenant.headers)).json()
    async with stack.sessionmaker.begin() as session:  # an upload finishes meanwhile
        session.add(_document(tenant, 7))
    by_offset = await http.get(url, params={"limit": 3, "offset": 3}, headers=tenant.headers)
    assert {row["id"] for row in by_offset.json()["documents"]} & {
        row["id"] for row in first["documents"]
    }, "the offset page no longer repeats one: update this docstring"
    second = await http.get(
        url, params={"limit": 3, "cursor": first["next_cursor"]}, headers=tenant.headers
    )
    async with stack.sessionmaker.begin() as session:  # and one already listed is deleted
        await session.execute(text("DELETE FROM documents WHERE id = :id"), {"id": listed_first.id})
    third = await http.get(
        url, params={"limit": 3, "cursor": second.json()["next_cursor"]}, headers=tenant.headers
    )
    assert (second.status_code, third.status_code) == (200, 200), (second.text, third.text)
    pages = [first, second.json(), third.json()]
    listed = [row["filename"] for page in pages for row in page["documents"]]
    assert sorted(listed) == [f"f{number}.txt" for number in range(7)]
    assert third.json()["next_cursor"] is None
    assert [page["total"] for page in pages] == [7, 8, 7]
    bad = await http.get(url, params={"cursor": "not-a-cursor"}, headers=tenant.headers)
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_request")


async def test_documents_page_that_ends_the_list_has_no_next_cursor(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """A page that holds the last document says so: a full page gave a `next_cursor` (to an
    empty page) even when `total` said there was nothing more."""
    tenant = await new_tenant(stack)
    async with stack.sessionmaker.begin() as session:
        session.add_all([_document(tenant, number) for number in range(3)])
    url = f"/agents/{tenant.agent_id}/documents"
    whole = (await http.get(url, params={"limit": 3}, headers=tenant.headers)).json()
    first = (await http.get(url, params={"limit": 2}, headers=tenant.headers)).json()
    last = await http.get(
        url, params={"limit": 1, "cursor": first["next_cursor"]}, headers=tenant.headers
    )
    assert (whole["total"], len(whole["documents"]), whole["next_cursor"]) == (3, 3, None)
    assert first["next_cursor"] is not None
    assert (len(last.json()["documents"]), last.json()["next_cursor"]) == (1, None)


async def test_a_cancelled_task_says_no_error_once_only_its_record_is_left(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """A cancelled task's status has no `error` while its workflow exists; once Temporal's
    retention dropped it, its record answered `{"type": "Cancelled", "message": "cancelled on
    request"}`: the same task, another answer. The row keeps the reason for the message."""
    tenant = await new_tenant(stack)
    cancelled = _document(
        tenant, 1, status="cancelled", chunk_count=0,
        error_type="Cancelled", error_message="cancelled on request",
    )  # fmt: skip
    for_agent = _document(
        tenant, 2, status="cancelled", chunk_count=0,
        error_type="Cancelled", error_message="its agent was deleted",
    )  # fmt: skip
    async with stack.sessionmaker.begin() as session:
        session.add_all([cancelled, for_agent])
    said = []
    for row in (cancelled, for_agent):
        status = await http.get(f"/upload/status/{row.task_id}", headers=tenant.headers)
        assert status.status_code == 200, status.text
        said.append((status.json()["status"], status.json()["message"], status.json()["error"]))
    assert said == [
        ("cancelled", "Processing of f1.txt was cancelled", None),
        ("cancelled", "Processing of f2.txt was cancelled: its agent was deleted", None),
    ]


async def test_documents_total_is_counted_from_the_agents_index_alone(stack: Stack) -> None:
    """Every page counts the agent's documents: with the owner in the count's filter (a column
    of no index on the agent) every row was read, ~290 ms a page for a million documents."""
    tenant = await new_tenant(stack)
    async with stack.sessionmaker.begin() as session:
        session.add_all(_document(tenant, number) for number in range(3))
    app = create_app(stack_settings(stack))
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as http:
        engine = app.state.resources.engine  # made by the app's start-up
        for status in (None, "failed"):
            params = {} if status is None else {"status": status}
            with statements_run(engine, "count(*)") as counts:
                page = await http.get(
                    f"/agents/{tenant.agent_id}/documents", params=params, headers=tenant.headers
                )
            assert page.status_code == 200, page.text
            [(statement, parameters)] = counts
            plan = await plan_from_indexes(engine, "documents", statement, parameters)
            assert "Index Only Scan" in plan, plan


def _document(tenant: Tenant, number: int, **fields: Any) -> Document:
    """A documents row of the tenant's agent, `f{number}.txt`, complete unless `fields` say."""
    return Document(
        owner_id=tenant.owner_id,
        agent_id=uuid.UUID(tenant.agent_id),
        task_id=str(uuid.uuid4()),
        filename=f"f{number}.txt",
        content_type="text/plain",
        size_bytes=1,
        sha256=f"{number:064x}",
        **{"chunk_count": 1, "status": "complete", **fields},
    )


async def test_an_unexpected_failure_is_shown_as_internal_error(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """A step that raised an exception of no type of ours (a parser's AssertionError) was
    recorded, and shown, with the exception's Python class as `error.type`."""
    tenant = await new_tenant(stack)
    reason = "reading the file failed with an internal error"
    row = _document(
        tenant, 1, status="error", chunk_count=0, error_type="AssertionError", error_message=reason
    )
    async with stack.sessionmaker.begin() as session:
        session.add(row)
    document = await http.get(f"/documents/{row.id}", headers=tenant.headers)
    status = await http.get(f"/upload/status/{row.task_id}", headers=tenant.headers)
    expected = {"type": "InternalError", "message": reason}
    assert (document.json()["error"], status.json()["error"]) == (expected, expected)
