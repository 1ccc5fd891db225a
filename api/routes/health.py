from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from psycopg.errors import UndefinedTable
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from api.deps import ResourcesDep
from api.errors import SCHEMA_BEHIND
from api.schemas import HealthPublic
from core.migrate import revisions_behind_head

router = APIRouter(tags=["health"])
_DEADLINE = 2.0

Health = Literal["ok", "unavailable"]


async def _database(resources: ResourcesDep) -> str | None:
    """None when the database answers with this release's schema; else what is wrong."""
    # Its own connection (`probe`), not the requests' pool: a pool that busy requests hold
    # whole is an API under load, not a database that is down.
    try:
        async with asyncio.timeout(_DEADLINE), resources.probe.connect() as connection:
            revision = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).scalar()
    except ProgrammingError as exc:
        # An API started before `docingest migrate`: every request but this one failed.
        if isinstance(exc.orig, UndefinedTable):
            return SCHEMA_BEHIND
        return "unavailable"
    except Exception:
        return "unavailable"
    return SCHEMA_BEHIND if revision is None or revision in revisions_behind_head() else None


async def _temporal(resources: ResourcesDep) -> Health:
    try:
        async with asyncio.timeout(_DEADLINE):
            await resources.temporal.workflow_service.get_system_info(
                GetSystemInfoRequest(), timeout=timedelta(seconds=_DEADLINE)
            )
    except Exception:
        return "unavailable"
    return "ok"


@router.get(
    "/health",
    response_model=HealthPublic,
    responses={503: {"model": HealthPublic, "description": "A dependency is down"}},
)
async def health(resources: ResourcesDep) -> HealthPublic | JSONResponse:
    """200 when PostgreSQL and Temporal answer; 503 naming what is down."""
    problem, temporal = await asyncio.gather(_database(resources), _temporal(resources))
    database: Health = "ok" if problem is None else "unavailable"
    ok = database == "ok" and temporal == "ok"
    body = HealthPublic(status="ok" if ok else "unavailable", database=database, temporal=temporal)
    if ok:
        return body
    down = [
        name for name, state in (("database", database), ("temporal", temporal)) if state != "ok"
    ]
    detail = f"unavailable: {', '.join(down)}"
    if problem == SCHEMA_BEHIND:
        detail += f" ({SCHEMA_BEHIND})"
    content = {**body.model_dump(), "detail": detail, "code": "service_unavailable"}
    return JSONResponse(content, status_code=503)
