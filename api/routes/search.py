"""Semantic search over an agent's stored chunks: HNSW in pgvector, cosine similarity."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import Row, func, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from activities.vectors import Vectors
from api.deps import OwnerDep, SessionmakerDep, SettingsDep
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


async def nearest_chunks(
    session: AsyncSession,
    settings: Settings,
    owner: uuid.UUID,
    agent_id: uuid.UUID,
    query: Vectors,
    top_k: int,
) -> Sequence[Row[Any]]:
    """The `top_k` chunks of the agent's complete documents nearest to `query`, nearest first."""
    # Iterative scan: the index keeps walking until `top_k` rows pass the agent filter, so an
    # agent holding a small share of all chunks still gets full results. SET LOCAL (and
    # set_config's `true`) end with the transaction, never leaking into the pooled connection.
    await session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
    await session.execute(
        select(func.set_config("hnsw.ef_search", str(settings.search_ef_search), True))
    )
    distance = Chunk.embedding.cosine_distance(query).label("distance")
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
        .order_by(distance)
        .limit(top_k)
        .cte("nearest")
        .prefix_with("MATERIALIZED")
    )
    # relaxed_order may yield rows slightly out of order, so sort the few found again; the
    # `+ 0` stops PostgreSQL from taking the CTE's ORDER BY as already satisfying this one.
    statement = select(nearest).order_by(nearest.c.distance + literal_column("0"))
    return (await session.execute(statement)).all()


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
