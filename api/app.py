"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from temporalio.client import Client

from api.deps import Resources
from api.errors import install_error_handlers
from api.listing_cache import ListingCache
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
from core.db import autocommit, create_engine, create_sessionmaker, resolve_database_url
from core.keys import OwnerCache
from core.runtime import freeze_startup_objects
from core.settings import Settings
from core.staging import StagingStore

# The HTTP parser uvicorn must serve the app with: h11, not httptools. httptools answers a header
# it finds invalid (a DEL byte, say) with a plain-text 400 and drops the connection before the
# app's JSON error can be sent.
HTTP_PARSER = "h11"


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(resolve_database_url(settings))
        # Lazy: the API starts (and /health says why) while Temporal is still coming up.
        temporal = await Client.connect(
            settings.resolved_temporal_address,
            namespace=settings.temporal_namespace,
            lazy=True,
        )
        app.state.resources = Resources(
            settings=settings,
            engine=engine,
            reads=autocommit(engine),
            sessionmaker=create_sessionmaker(engine),
            temporal=temporal,
            staging=StagingStore(settings.resolved_staging_url),
            owners=OwnerCache(settings.key_cache_ttl.total_seconds()),
            listings=ListingCache(settings.progress_max_age.total_seconds()),
        )
        freeze_startup_objects()
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="docingest",
        summary="Asynchronous document ingestion for RAG agents.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
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
