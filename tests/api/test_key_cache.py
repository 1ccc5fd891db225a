"""The API remembers checked keys for DOCINGEST_KEY_CACHE_TTL, and no longer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from sqlalchemy import delete

from core.keys import hash_key
from core.models import ApiKey
from tests.support import Stack, new_tenant, serve, stack_settings


@asynccontextmanager
async def api_with_key_cache(stack: Stack, seconds: int) -> AsyncIterator[httpx.AsyncClient]:
    settings = stack_settings(stack, key_cache_ttl=seconds)
    async with serve(settings) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield http


async def delete_key(stack: Stack, key: str) -> None:
    async with stack.sessionmaker.begin() as session:
        await session.execute(delete(ApiKey).where(ApiKey.key_hash == hash_key(key)))


async def test_a_deleted_key_works_until_the_cache_ttl_then_is_401(stack: Stack) -> None:
    tenant = await new_tenant(stack, "cached")
    async with api_with_key_cache(stack, 2) as http:
        assert (await http.get("/api/progress", headers=tenant.headers)).status_code == 200
        await delete_key(stack, tenant.key)
        assert (await http.get("/api/progress", headers=tenant.headers)).status_code == 200
        await asyncio.sleep(2.2)
        refused = await http.get("/api/progress", headers=tenant.headers)
        assert refused.status_code == 401
        assert refused.json() == {"detail": "Invalid API key", "code": "unauthorized"}


async def test_with_the_key_cache_off_a_deleted_key_is_401_at_once(stack: Stack) -> None:
    tenant = await new_tenant(stack, "uncached")
    async with api_with_key_cache(stack, 0) as http:
        assert (await http.get("/api/progress", headers=tenant.headers)).status_code == 200
        await delete_key(stack, tenant.key)
        assert (await http.get("/api/progress", headers=tenant.headers)).status_code == 401


async def test_an_invalid_key_is_never_remembered(stack: Stack) -> None:
    tenant = await new_tenant(stack, "never")
    wrong = {"Authorization": f"Bearer {tenant.key[:-4]}AAAA"}
    async with api_with_key_cache(stack, 60) as http:
        for _ in range(2):
            assert (await http.get("/api/progress", headers=wrong)).status_code == 401
        assert (await http.get("/api/progress", headers=tenant.headers)).status_code == 200
