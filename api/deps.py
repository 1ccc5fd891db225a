"""Dependencies built once in the app's lifespan and handed to handlers as aliases."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.requests import HTTPConnection, Request
from temporalio.client import Client

from api.listing_cache import ListingCache
from api.schemas import TaskStatus
from api.status_feeds import StatusFeeds
from core.errors import Unauthorized
from core.keys import OwnerCache, owner_for_key
from core.settings import Settings
from core.staging import StagingStore


@dataclass
class Resources:
    """What the lifespan builds; `request.app.state.resources` holds it."""

    settings: Settings
    engine: AsyncEngine
    reads: AsyncEngine  # core.db.autocommit(engine)
    # One connection of its own for /health: requests that hold every pooled connection make
    # the API busy, not the database down (a load balancer would pull a healthy replica).
    probe: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    temporal: Client
    staging: StagingStore
    owners: OwnerCache
    listings: ListingCache[list[TaskStatus]]
    feeds: StatusFeeds  # what `/ws/upload/{task_id}` sockets follow


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_settings(resources: ResourcesDep) -> Settings:
    return resources.settings


async def get_temporal(resources: ResourcesDep) -> Client:
    return resources.temporal


async def get_staging(resources: ResourcesDep) -> StagingStore:
    return resources.staging


async def get_sessionmaker(resources: ResourcesDep) -> async_sessionmaker[AsyncSession]:
    return resources.sessionmaker


async def get_reads(resources: ResourcesDep) -> AsyncEngine:
    return resources.reads


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    """One request, one transaction: committed when the handler returns, else rolled back."""
    async with resources.sessionmaker.begin() as session:
        yield session


def one_authorization(connection: HTTPConnection) -> str | None:
    """The request's `Authorization` header; Unauthorized when it is given more than once
    (`curl -H` twice, say), of which the first was read and the others ignored."""
    headers = connection.headers.getlist("authorization")
    if len(headers) > 1:
        raise Unauthorized(f"Authorization given {len(headers)} times: send one `Bearer <key>`")
    return headers[0] if headers else None


async def get_owner(request: HTTPConnection, resources: ResourcesDep) -> uuid.UUID:
    """The owner of the `Authorization: Bearer <key>` presented; 401 otherwise.

    Uses its own short transaction so a long upload does not hold a pooled connection.
    """
    header = one_authorization(request)
    if not header:
        raise Unauthorized("Missing API key: send `Authorization: Bearer <key>`")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("Malformed Authorization header: expected `Bearer <key>`")
    key = key.strip()
    owner = resources.owners.get(key)
    if owner is not None:
        return owner
    async with resources.sessionmaker() as session:
        owner = await owner_for_key(session, key)
    if owner is None:
        raise Unauthorized("Invalid API key")
    resources.owners.put(key, owner)
    return owner


def needs_key(dependant: Dependant) -> bool:
    """Whether a route (or a dependency) asks for the caller's key, at any depth."""
    return any(
        dependency.call is get_owner or needs_key(dependency)
        for dependency in dependant.dependencies
    )


async def authenticate_first(connection: HTTPConnection) -> None:
    """401, as the route would answer, where it needs a key and the one presented is missing
    or not valid. For the refusals that come before FastAPI solves a route's dependencies (a
    query parameter given twice, a body that is not JSON): a caller with no key, or a wrong
    one, was told what was wrong with its request instead of that it needs a key."""
    route = connection.scope.get("route")
    if isinstance(route, APIRoute) and needs_key(route.dependant):
        await get_owner(connection, connection.app.state.resources)


SettingsDep = Annotated[Settings, Depends(get_settings)]
TemporalDep = Annotated[Client, Depends(get_temporal)]
StagingDep = Annotated[StagingStore, Depends(get_staging)]
ReadsDep = Annotated[AsyncEngine, Depends(get_reads)]
SessionmakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)]
# scope="function": commit before the response is sent, so a 201/204 means it is stored.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
OwnerDep = Annotated[uuid.UUID, Depends(get_owner)]


async def _tasks_changed(owner: OwnerDep, resources: ResourcesDep) -> AsyncIterator[None]:
    """For routes that change what `/api/progress` lists: the owner's snapshots are dropped
    once the route has done its work, before the response goes out."""
    try:
        yield
    finally:
        resources.listings.invalidate(owner)


ChangesTasks = Depends(_tasks_changed, scope="function")
