"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api.deps import Resources
from api.errors import install_error_handlers
from api.head_requests import HeadAsGet
from api.listing_cache import ListingCache
from api.log_redaction import redact_tokens_in_server_logs
from api.query_params import one_value_per_query_parameter
from api.routes import (
    agents,
    batches,
    documents,
    health,
    live,
    progress,
    search,
    task_actions,
    uploads,
)
from api.schemas import TaskStatus
from api.status_feeds import StatusFeeds
from api.task_starts import TaskStarts
from core.db import autocommit, create_engine, create_sessionmaker, resolve_database_url
from core.keys import OwnerCache
from core.runtime import freeze_startup_objects
from core.settings import Settings
from core.staging import StagingStore
from core.temporal import register_search_attributes

log = logging.getLogger(__name__)

# The HTTP parser uvicorn must serve the app with: h11, not httptools. httptools answers a header
# it finds invalid (a DEL byte, say) with a plain-text 400 and drops the connection before the
# app's JSON error can be sent.
HTTP_PARSER = "h11"


# A server that refuses the operator API (Temporal Cloud: attributes are added in its console).
_NOT_ALLOWED = (RPCStatusCode.PERMISSION_DENIED, RPCStatusCode.UNIMPLEMENTED)


async def _register_search_attributes(temporal: Client) -> None:
    """Register the search attributes that every upload sets, as the worker does, once Temporal
    answers: an API started against a fresh Temporal before any worker refused every upload
    (503) until a worker had started."""
    delay = 0.5
    while True:
        try:
            await register_search_attributes(temporal)
            return
        except RPCError as exc:
            if exc.status in _NOT_ALLOWED:
                log.warning("cannot register Temporal search attributes: %s", exc.message)
                return
            log.info("registering Temporal search attributes: %s; trying again", exc.message)
        except RuntimeError as exc:  # a lazy client that cannot connect yet
            log.info("registering Temporal search attributes: %s; trying again", exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redact_tokens_in_server_logs()  # uvicorn has configured its logging by now
        database_url = resolve_database_url(settings)
        engine = create_engine(database_url)
        probe = create_engine(database_url, pool_size=1, max_overflow=0)
        # Lazy: the API starts (and /health says why) while Temporal is still coming up.
        temporal = await Client.connect(
            settings.resolved_temporal_address,
            namespace=settings.temporal_namespace,
            lazy=True,
        )
        reads = autocommit(engine)
        listings: ListingCache[list[TaskStatus]] = ListingCache(
            settings.progress_max_age.total_seconds()
        )
        starts = TaskStarts(temporal, engine, reads, on_started=listings.invalidate)
        app.state.resources = Resources(
            settings=settings,
            engine=engine,
            reads=reads,
            probe=probe,
            sessionmaker=create_sessionmaker(engine),
            temporal=temporal,
            staging=StagingStore(settings.resolved_staging_url),
            owners=OwnerCache(settings.key_cache_ttl.total_seconds()),
            listings=listings,
            feeds=StatusFeeds(),
        )
        registering = asyncio.create_task(_register_search_attributes(temporal))
        dispatching = asyncio.create_task(starts.run())
        freeze_startup_objects()
        try:
            yield
        finally:
            registering.cancel()
            dispatching.cancel()
            await asyncio.gather(dispatching, return_exceptions=True)
            await engine.dispose()
            await probe.dispose()

    app = FastAPI(
        title="docingest",
        summary="Asynchronous document ingestion for RAG agents.",
        version="0.1.0",
        lifespan=lifespan,
        # A path no route takes is the usual JSON 404. Starlette's default answered one that
        # ends in a slash (`/agents/{id}/`, or an id that decodes to one: `/agents/%2F`) with
        # a 307 to the path without it, a different resource (`DELETE /agents/%2F` to
        # `/agents`).
        redirect_slashes=False,
        dependencies=[Depends(one_value_per_query_parameter)],
    )
    install_error_handlers(app)
    app.add_middleware(HeadAsGet)
    for module in (
        health,
        agents,
        documents,
        search,
        uploads,
        batches,
        task_actions,
        progress,
        live,
    ):
        app.include_router(module.router)
    return app
