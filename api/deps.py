"""Dependencies built once in the app's lifespan and handed to handlers as aliases."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
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


async def get_owner(request: Request, resources: ResourcesDep) -> uuid.UUID:
    """The owner of the `Authorization: Bearer <key>` presented; 401 otherwise.

    Uses its own short transaction so a long upload does not hold a pooled connection.
    """
    header = request.headers.get("authorization")
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
