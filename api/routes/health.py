from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from api.deps import ResourcesDep
from api.schemas import HealthPublic

router = APIRouter(tags=["health"])
_DEADLINE = 2.0

Health = Literal["ok", "unavailable"]


async def _database(resources: ResourcesDep) -> Health:
    # Its own connection (`probe`), not the requests' pool: a pool that busy requests hold
    # whole is an API under load, not a database that is down.
    try:
        async with asyncio.timeout(_DEADLINE), resources.probe.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        return "unavailable"
    return "ok"


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
    database, temporal = await asyncio.gather(_database(resources), _temporal(resources))
    ok = database == "ok" and temporal == "ok"
    body = HealthPublic(status="ok" if ok else "unavailable", database=database, temporal=temporal)
    if ok:
        return body
    down = [
        name for name, state in (("database", database), ("temporal", temporal)) if state != "ok"
    ]
    content = {
        **body.model_dump(),
        "detail": f"unavailable: {', '.join(down)}",
        "code": "service_unavailable",
    }
    return JSONResponse(content, status_code=503)
