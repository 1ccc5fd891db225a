"""Semantic search over an agent's stored chunks: HNSW in pgvector, cosine similarity."""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import Row, func, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from activities.vectors import Vectors
from api.deps import OwnerDep, SessionmakerDep, SettingsDep
from api.json_body import JsonBodyRoute
from api.ownership import owned_agent
from api.query_embedder import QueryEmbedder
from api.schemas import ErrorBody, SearchHit, SearchRequest, SearchResults
from core.models import Chunk, Document
from core.settings import Settings
from workflows.types import Status

router = APIRouter(
    prefix="/agents",
    tags=["search"],
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
    route_class=JsonBodyRoute,
)


async def get_query_embedder(request: Request, settings: SettingsDep) -> QueryEmbedder:
    """The process's query embedder, created by the first search.

    It lives on `app.state` rather than in the lifespan's `Resources`: an API process that
    never searches never loads the model (seconds, hundreds of MB), and a test can put a
    `QueryEmbedder` with a fake model there before the first request.
    """
    embedder: QueryEmbedder | None = getattr(request.app.state, "query_embedder", None)
    if embedder is None:
        embedder = QueryEmbedder.from_settings(settings)
        request.app.state.query_embedder = embedder
    return embedder


QueryEmbedderDep = Annotated[QueryEmbedder, Depends(get_query_embedder)]


# pgvector's own budget of an iterative scan (hnsw.max_scan_tuples) and its ceilings.
HNSW_SCAN_TUPLES = 20_000
_MAX_SCAN_TUPLES = 2**31 - 1
_MAX_SCAN_MEM_MULTIPLIER = 32  # of work_mem, per search


@dataclass(frozen=True)
class SearchPlan:
    """How to find an agent's nearest chunks: every chunk compared (`exact`), or the HNSW
    index walked until `max_scan_tuples` tuples of all agents were visited."""

    exact: bool
    max_scan_tuples: int = HNSW_SCAN_TUPLES
    scan_mem_multiplier: int = 1


def plan_search(
    agent_chunks: int, table_rows: int, wanted: int, exact_max_chunks: int
) -> SearchPlan:
    """Exact for a small agent, or whenever the index would visit at least as many tuples as
    the agent has chunks; else an HNSW scan whose budget grows as the agent's share of the
    table shrinks.

    The index holds every agent's chunks. An iterative scan visits them nearest first and
    keeps the agent's; pgvector stops it after 20,000 tuples, so an agent whose chunks lie
    behind 20,000 nearer ones of other agents got fewer results than asked, or none. A small
    agent is compared exactly instead (figure 5 of `make bench` times it: 116-131 ms for
    10,000 chunks on the 2-core benchmark machine, hence the 5,000 default). A large one gets
    a budget of 4x the tuples it should take to meet `wanted` of its own at its share of the
    table, and memory in the proportion of pgvector's defaults (20,000 tuples in 1x work_mem),
    at most 32x work_mem. A budget that large only goes to an agent of more chunks than the
    budget (else comparing its chunks is cheaper), so it is at most sqrt(4 x wanted x table
    rows): ~630,000 tuples for a billion-row table.
    """
    if agent_chunks <= exact_max_chunks:
        return SearchPlan(exact=True)
    share = agent_chunks / max(table_rows, agent_chunks)
    budget = min(_MAX_SCAN_TUPLES, max(HNSW_SCAN_TUPLES, math.ceil(4 * wanted / share)))
    if budget >= agent_chunks:
        return SearchPlan(exact=True)
    multiplier = min(_MAX_SCAN_MEM_MULTIPLIER, math.ceil(budget / HNSW_SCAN_TUPLES))
    return SearchPlan(exact=False, max_scan_tuples=budget, scan_mem_multiplier=multiplier)


async def choose_plan(
    session: AsyncSession, settings: Settings, owner: uuid.UUID, agent_id: uuid.UUID, top_k: int
) -> SearchPlan:
    """The plan for this agent (the caller's), from its stored chunk count and the table's
    estimated size. The sum reads the agent's documents index alone: with the owner in the
    filter it read every row of the agent's documents (~220 ms a search for a million)."""
    stored = await session.execute(
        text(
            "SELECT (SELECT coalesce(sum(chunk_count), 0) FROM documents"
            "        WHERE agent_id = :agent AND status = :complete),"
            "       (SELECT greatest(c.reltuples::bigint, coalesce(s.n_live_tup, 0))"
            "        FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
            "        WHERE c.oid = 'chunks'::regclass)"
        ),
        {"agent": agent_id, "complete": Status.COMPLETE},
    )
    agent_chunks, table_rows = stored.one()
    wanted = max(settings.search_ef_search, top_k)
    return plan_search(
        int(agent_chunks), int(table_rows or 0), wanted, settings.search_exact_max_chunks
    )


async def nearest_chunks(
    session: AsyncSession,
    settings: Settings,
    owner: uuid.UUID,
    agent_id: uuid.UUID,
    query: Vectors,
    top_k: int,
    plan: SearchPlan | None = None,
) -> Sequence[Row[Any]]:
    """The `top_k` chunks of the agent's complete documents nearest to `query`, nearest first;
    by `plan` when given (the benchmark times both ways), else by `choose_plan`."""
    if plan is None:
        plan = await choose_plan(session, settings, owner, agent_id, top_k)
    distance = Chunk.embedding.cosine_distance(query).label("distance")
    if plan.exact:
        # `+ 0`: an order the HNSW index cannot give, so every chunk of the agent is compared.
        # Ties (the same text in several documents) by chunk id: the same answer every time.
        order: tuple[Any, ...] = (distance + literal_column("0"), Chunk.id)
    else:
        # Iterative scan: the index keeps walking until `top_k` rows pass the agent filter or
        # the budget is spent. set_config's `true` (SET LOCAL) ends with the transaction,
        # never leaking into the pooled connection. One statement for the four settings.
        order = (distance,)
        await session.execute(
            select(
                *(
                    func.set_config(name, str(value), True)
                    for name, value in (
                        ("hnsw.iterative_scan", "relaxed_order"),
                        ("hnsw.ef_search", settings.search_ef_search),
                        ("hnsw.max_scan_tuples", plan.max_scan_tuples),
                        ("hnsw.scan_mem_multiplier", plan.scan_mem_multiplier),
                    )
                )
            )
        )
    # The index path asks for one row more: one tied with the last (the same paragraph in
    # several documents) means the index picked among equals in its own order, not by chunk id.
    wanted = top_k if plan.exact else top_k + 1
    nearest = (
        select(
            Chunk.id,
            Chunk.document_id,
            Chunk.text,
            Chunk.page,
            Chunk.start_char,
            Chunk.end_char,
            Document.filename,
            distance,
        )
        .join(Document, Document.id == Chunk.document_id)
        .where(
            Document.owner_id == owner,
            Document.agent_id == agent_id,
            Document.status == Status.COMPLETE,
        )
        .order_by(*order)
        .limit(wanted)
        .cte("nearest")
        .prefix_with("MATERIALIZED")
    )
    # relaxed_order may yield rows slightly out of order, so sort the few found again; the
    # `+ 0` stops PostgreSQL from taking the CTE's ORDER BY as already satisfying this one.
    statement = select(nearest).order_by(nearest.c.distance + literal_column("0"), nearest.c.id)
    rows = (await session.execute(statement)).all()
    if not plan.exact and (len(rows) < top_k or _tied_past_the_last(rows, top_k)):
        # The scan spent its budget on other agents' nearer chunks before it found `top_k` of
        # this agent's (which holds more than the budget), or the last place is tied: compare
        # the agent's chunks instead.
        return await nearest_chunks(
            session, settings, owner, agent_id, query, top_k, SearchPlan(exact=True)
        )
    return rows[:top_k]


def _tied_past_the_last(rows: Sequence[Row[Any]], top_k: int) -> bool:
    return len(rows) > top_k and rows[top_k].distance == rows[top_k - 1].distance


@router.post("/{agent_id}/search")
async def search_agent(
    agent_id: str,
    body: SearchRequest,
    owner: OwnerDep,
    settings: SettingsDep,
    sessionmaker: SessionmakerDep,
    embedder: QueryEmbedderDep,
) -> SearchResults:
    """The agent's stored chunks nearest in meaning to the query, best first."""
    async with sessionmaker() as session:
        agent = await owned_agent(session, owner, agent_id)
    # Encoded with no pooled connection held: a burst of searches waits on the model only.
    vector = await embedder.embed(body.query)
    async with sessionmaker.begin() as session:
        rows = await nearest_chunks(session, settings, owner, agent.id, vector, body.top_k)
    return SearchResults(
        results=[
            SearchHit(
                score=1.0 - row.distance,
                text=row.text,
                document_id=row.document_id,
                filename=row.filename,
                page=row.page,
                start_char=row.start_char,
                end_char=row.end_char,
                chunk_id=row.id,
            )
            for row in rows
        ]
    )
