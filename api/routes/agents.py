from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import datetime, timedelta
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query
from sqlalchemy import ColumnElement, Select, delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from api.cursors import decode_cursor, encode_cursor
from api.deps import (
    ChangesTasks,
    OwnerDep,
    SessionDep,
    SessionmakerDep,
    StagingDep,
    TemporalDep,
)
from api.json_body import JsonBodyRoute
from api.ownership import owned_agent, parse_id
from api.routes.documents import document_public, remove_staged_uploads
from api.schemas import (
    UNKNOWN_EMBEDDING,
    AgentCreate,
    AgentPublic,
    AgentsPublic,
    DocumentsPublic,
    DocumentStatusValue,
    EmbeddingPrecisionFilter,
    ErrorBody,
)
from core.errors import InvalidRequest, NotFound
from core.models import Agent, Document
from core.staging import StagingStore
from core.temporal import AGENT_ID, OWNER_ID
from workflows.types import AGENT_DELETED, WORKFLOW_NAME, Status

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/agents",
    tags=["agents"],
    responses={401: {"model": ErrorBody}},
    route_class=JsonBodyRoute,
)

# PostgreSQL's OFFSET is a bigint: past it the query fails, so the API refuses (422) instead.
_MAX_OFFSET = 2**63 - 1
# How long an agent's delete waits for the cancels of its uploads before it answers (the rest
# go on after), and how long each call to Temporal for them may take.
_CANCEL_DEADLINE = timedelta(seconds=5)
_CANCEL_RPC_TIMEOUT = timedelta(seconds=5)
# The running uploads of a deleted agent listed at a time, and cancelled at once: a thousand
# cancels sent together to a busy server missed their deadline.
_CANCEL_PAGE = 1000
_CANCELS_AT_ONCE = 100
# Cancels that go on after their delete was answered (the loop keeps only weak references).
_cancelling: set[asyncio.Task[None]] = set()


@router.post("", status_code=201)
async def create_agent(body: AgentCreate, owner: OwnerDep, session: SessionDep) -> AgentPublic:
    """Create an agent owned by the caller."""
    agent = Agent(owner_id=owner, name=body.name)
    session.add(agent)
    await session.flush()
    await session.refresh(agent)
    return AgentPublic.model_validate(agent, from_attributes=True)


@router.get("")
async def list_agents(
    owner: OwnerDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=200, description="The `next_cursor` of the page before")
    ] = None,
) -> AgentsPublic:
    """The caller's agents, oldest first, one page at a time (`cursor`: the page after)."""
    # A cursor, not an offset: an offset reads every agent before its page, and an agent
    # deleted between two pages would move the next one past an agent never listed.
    after = [] if cursor is None else [tuple_(Agent.created_at, Agent.id) > _place(cursor)]
    page, next_cursor = await _page(
        session,
        select(Agent).where(Agent.owner_id == owner, *after).order_by(Agent.created_at, Agent.id),
        limit,
    )
    return AgentsPublic(
        agents=[AgentPublic.model_validate(agent, from_attributes=True) for agent in page],
        next_cursor=next_cursor,
    )


@router.get("/{agent_id}/documents", responses={404: {"model": ErrorBody}})
async def list_documents(
    agent_id: str,
    owner: OwnerDep,
    session: SessionDep,
    status: DocumentStatusValue | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=_MAX_OFFSET)] = 0,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    embedding_precision: Annotated[
        EmbeddingPrecisionFilter | None,
        Query(description="Only documents embedded in this precision; `unknown`: those of null"),
    ] = None,
    # PostgreSQL text cannot hold NUL: refused here (422), not by the database (500).
    embedding_model: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=r"^[^\x00]*$",
            description="Only documents embedded by this model",
        ),
    ] = None,
) -> DocumentsPublic:
    """The agent's documents, newest first, one page at a time (`cursor`: after a page)."""
    # The count and the page from one snapshot: at READ COMMITTED each statement sees what was
    # committed before it, so a document stored or deleted between the two made `total`
    # disagree with the page. (A read-only REPEATABLE READ transaction never fails to commit.)
    await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    agent = await owned_agent(session, owner, agent_id)
    # The agent is the caller's, and so are its documents: counted from the agent's documents
    # index alone (with the owner too, every row was read: ~290 ms for a million).
    counted = [Document.agent_id == agent.id]
    if status is not None:
        counted.append(Document.status == status)
    counted.extend(_embedded(embedding_precision, embedding_model))
    total = await session.scalar(select(func.count()).select_from(Document).where(*counted))
    scope = [*counted, Document.owner_id == owner]
    # An offset counts from the top, which moves as uploads finish and documents are deleted
    # (a page repeated or skipped a document); a cursor says where the last page ended.
    after = [] if cursor is None else [_before(cursor)]
    page, next_cursor = await _page(
        session,
        select(Document)
        .where(*scope, *after)
        .order_by(Document.created_at.desc(), Document.id.desc())
        .offset(offset),
        limit,
    )
    return DocumentsPublic(
        documents=[document_public(document) for document in page],
        total=total or 0,
        limit=limit,
        offset=offset,
        next_cursor=next_cursor,
    )


def _embedded(precision: str | None, model: str | None) -> list[ColumnElement[bool]]:
    """The documents list's embedding filters: what an operator finds to upload again after
    switching DOCINGEST_EMBEDDING_PRECISION or the model."""
    conditions: list[ColumnElement[bool]] = []
    if precision == UNKNOWN_EMBEDDING:
        conditions.append(Document.embedding_precision.is_(None))
    elif precision is not None:
        conditions.append(Document.embedding_precision == precision)
    if model is not None:
        conditions.append(Document.embedding_model == model)
    return conditions


_Row = TypeVar("_Row", Agent, Document)


async def _page(
    session: AsyncSession, rows: Select[_Row], limit: int
) -> tuple[list[_Row], str | None]:
    """The first `limit` of `rows` (ordered by created_at, then id), and the cursor after them
    when more follow. One row more than the page is read: a page that ends the list says so,
    with no cursor to an empty page."""
    read = list(await session.scalars(rows.limit(limit + 1)))
    page = read[:limit]
    return page, _cursor(page[-1]) if len(read) > limit else None


def _cursor(row: Agent | Document) -> str:
    """Where a page ended: its last row's place in the order (created_at, id)."""
    return encode_cursor(row.created_at.isoformat(), str(row.id))


def _before(cursor: str) -> ColumnElement[bool]:
    """The documents after `cursor`'s place in the newest-first order; 422 for a bad cursor."""
    return tuple_(Document.created_at, Document.id) < _place(cursor)


def _place(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (created_at, id) a cursor of these lists names; 422 for a bad cursor."""
    created, row_id = decode_cursor(cursor)
    try:
        return created, uuid.UUID(row_id)
    except ValueError as exc:
        raise InvalidRequest(f"cursor {cursor[:100]!r} is not a next_cursor of this list") from exc


@router.delete(
    "/{agent_id}",
    status_code=204,
    dependencies=[ChangesTasks],
    responses={404: {"model": ErrorBody}},
)
async def delete_agent(
    agent_id: str,
    owner: OwnerDep,
    sessionmaker: SessionmakerDep,
    temporal: TemporalDep,
    staging: StagingDep,
) -> None:
    """Delete an agent with all its documents and chunks; cancel its running uploads."""
    parsed = parse_id(agent_id)
    deleted = None
    task_ids: list[str] = []
    # Committed before the 204 is sent (SessionDep commits only after the response).
    # Documents, chunks and batches go in the same statement (ON DELETE CASCADE).
    async with sessionmaker.begin() as session:
        if parsed is not None:
            # Whose staged uploads to remove: those of tasks that ended failed or error keep
            # theirs for a retry (a complete or cancelled task removed its own, and one still
            # running is cancelled below and removes its own). Not every document's: on S3,
            # one request per document of an agent of thousands.
            task_ids = list(
                await session.scalars(
                    select(Document.task_id).where(
                        Document.agent_id == parsed,
                        Document.owner_id == owner,
                        Document.status.in_((Status.FAILED, Status.ERROR)),
                    )
                )
            )
            deleted = await session.scalar(
                delete(Agent).where(Agent.id == parsed, Agent.owner_id == owner).returning(Agent.id)
            )
    if deleted is None:
        raise NotFound(f"Agent {agent_id[:100]!r} not found")
    await cancel_running_ingests(temporal, owner, deleted)
    await remove_staged_uploads(staging, task_ids)
    await remove_unrecorded_uploads(temporal, staging, owner, deleted)


async def remove_unrecorded_uploads(
    temporal: Client, staging: StagingStore, owner: uuid.UUID, agent_id: uuid.UUID
) -> None:
    """Remove the staged uploads of the deleted agent's tasks that an operator terminated, or
    that timed out: they end `error` with no documents row, keep their upload for a retry,
    and can no longer be retried. Left there, the deleted agent's files stayed until the
    staging sweep (7 days by default). A failure is only logged: the sweep removes them."""
    query = _agent_workflows(owner, agent_id, "ExecutionStatus IN ('Terminated', 'TimedOut')")
    try:
        task_ids = {
            execution.id
            async for execution in temporal.list_workflows(
                query, page_size=_CANCEL_PAGE, rpc_timeout=_CANCEL_RPC_TIMEOUT
            )
        }
    except Exception:  # the deletion stands, answered 204
        log.warning("could not list the stopped uploads of agent %s", agent_id, exc_info=True)
        return
    await remove_staged_uploads(staging, sorted(task_ids))


async def cancel_running_ingests(temporal: Client, owner: uuid.UUID, agent_id: uuid.UUID) -> None:
    """Ask Temporal to cancel the agent's running ingest workflows, a page at a time; failures
    are only logged. Waits `_CANCEL_DEADLINE` at most: the pages left go on after the answer.

    One deadline for listing them all and then cancelling them all cancelled a few thousand
    uploads in part (3,000: 1,374 asked, measured), and 20,000 not at all (listing them took
    longer): each missed one ran its extract and embed steps, holding the workers every other
    owner waits on, before failing at its store step. Best effort on purpose: the agent is
    already gone, and a workflow this misses still ends there, AgentDeleted, with no retry.
    """
    cancelling = asyncio.create_task(_cancel_every_page(temporal, owner, agent_id))
    _cancelling.add(cancelling)
    cancelling.add_done_callback(_cancelling.discard)
    await asyncio.wait([cancelling], timeout=_CANCEL_DEADLINE.total_seconds())


def _agent_workflows(owner: uuid.UUID, agent_id: uuid.UUID, condition: str) -> str:
    """The visibility query of the agent's ingest workflows that meet `condition`."""
    return (
        f"WorkflowType = '{WORKFLOW_NAME}' AND {OWNER_ID.name} = '{owner}' "
        f"AND {AGENT_ID.name} = '{agent_id}' AND {condition}"
    )


async def _cancel_every_page(temporal: Client, owner: uuid.UUID, agent_id: uuid.UUID) -> None:
    query = _agent_workflows(owner, agent_id, "ExecutionStatus = 'Running'")
    try:
        page: list[tuple[str, str | None]] = []
        async for execution in temporal.list_workflows(
            query, page_size=_CANCEL_PAGE, rpc_timeout=_CANCEL_RPC_TIMEOUT
        ):
            page.append((execution.id, execution.run_id))
            if len(page) == _CANCEL_PAGE:
                await _cancel_page(temporal, page)
                page = []
        await _cancel_page(temporal, page)
    # Any failure (unreachable, RPC error): the deletion stands, answered 204.
    except Exception:
        log.warning("could not cancel the running uploads of agent %s", agent_id, exc_info=True)


async def _cancel_page(temporal: Client, runs: list[tuple[str, str | None]]) -> None:
    for first in range(0, len(runs), _CANCELS_AT_ONCE):
        await cancel_for_deleted_agent(temporal, runs[first : first + _CANCELS_AT_ONCE])


async def cancel_for_deleted_agent(temporal: Client, runs: list[tuple[str, str | None]]) -> None:
    """Cancel these uploads (task id, run id or None for the latest) of a deleted agent, with
    that reason; a failure is only logged (a task missed stops at its store step, which finds
    no agent)."""
    results = await asyncio.gather(
        *(
            temporal.get_workflow_handle(task_id, run_id=run_id).cancel(
                reason=AGENT_DELETED, rpc_timeout=_CANCEL_RPC_TIMEOUT
            )
            for task_id, run_id in runs
        ),
        return_exceptions=True,
    )
    for (task_id, _), result in zip(runs, results, strict=True):
        if isinstance(result, Exception):
            log.warning("could not cancel upload %s", task_id, exc_info=result)
