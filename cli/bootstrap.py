"""First-run set-up shared by `docingest keys create` and `docingest dev`."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import create_engine, create_sessionmaker, resolve_database_url
from core.errors import NotFound
from core.keys import KEY_SCHEME, NewKey, create_key, lookup_prefix, owner_for_key
from core.models import Agent, ApiKey, Owner
from core.settings import Settings


@asynccontextmanager
async def _transaction(settings: Settings) -> AsyncIterator[AsyncSession]:
    """One transaction of a `keys` command, on an engine of its own, disposed of after."""
    engine = create_engine(resolve_database_url(settings), pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            yield session
    finally:
        await engine.dispose()


async def create_api_key(settings: Settings, name: str, owner: uuid.UUID | None) -> NewKey:
    async with _transaction(settings) as session:
        if owner is not None and await session.get(Owner, owner) is None:
            raise NotFound(f"no owner {owner}: `docingest keys list` shows the owners")
        return await create_key(session, name, owner)


async def revoke_api_key(settings: Settings, given: str) -> KeyListing:
    """Delete the key `given` names (the key, or its prefix as `keys list` prints it); the
    owner and its agents and documents stay, for another key of the owner."""
    prefix = lookup_prefix(given)
    if prefix is None:
        raise NotFound(
            f"{given[:40]!r} names no key: give the key, or its prefix as `docingest keys list` "
            f"prints it ({KEY_SCHEME}_ and 12 characters)"
        )
    async with _transaction(settings) as session:
        revoked = (
            await session.execute(
                delete(ApiKey)
                .where(ApiKey.prefix == prefix)
                .returning(ApiKey.owner_id, ApiKey.name, ApiKey.prefix, ApiKey.created_at)
            )
        ).first()
        if revoked is None:
            raise NotFound(f"no key {KEY_SCHEME}_{prefix}…: `docingest keys list` shows the keys")
        owner_name = await session.scalar(select(Owner.name).where(Owner.id == revoked[0]))
        return KeyListing(revoked[0], owner_name or "", revoked[1], revoked[2], revoked[3])


@dataclass(frozen=True)
class KeyListing:
    owner_id: uuid.UUID
    owner_name: str
    name: str
    prefix: str
    created_at: datetime


async def list_api_keys(settings: Settings) -> list[KeyListing]:
    """Every key (never the key itself: its name and lookup prefix), with its owner."""
    async with _transaction(settings) as session:
        rows = await session.execute(
            select(Owner.id, Owner.name, ApiKey.name, ApiKey.prefix, ApiKey.created_at)
            .join(ApiKey, ApiKey.owner_id == Owner.id)
            .order_by(Owner.created_at, Owner.id, ApiKey.created_at)
        )
        return [KeyListing(*row) for row in rows]


@dataclass
class DevCredentials:
    api_key: str
    agent_id: str


async def dev_credentials(settings: Settings, database_url: str) -> DevCredentials:
    """The dev key and demo agent, created once and kept in HOME/dev-credentials.json."""
    path = settings.resolved_home / "dev-credentials.json"
    engine = create_engine(database_url, pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            saved = _read(path)
            if saved is not None:
                owner = await owner_for_key(session, saved.api_key)
                agent = await session.scalar(
                    select(Agent).where(Agent.id == uuid.UUID(saved.agent_id))
                )
                if owner is not None and agent is not None and agent.owner_id == owner:
                    return saved
            new_key = await create_key(session, "dev")
            agent = Agent(owner_id=new_key.owner_id, name="demo")
            session.add(agent)
            await session.flush()
            credentials = DevCredentials(api_key=new_key.key, agent_id=str(agent.id))
    finally:
        await engine.dispose()
    path.write_text(json.dumps(credentials.__dict__))
    path.chmod(0o600)
    return credentials


def _read(path: Path) -> DevCredentials | None:
    try:
        return DevCredentials(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
