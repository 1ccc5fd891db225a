"""API keys: random secrets shown once; the database keeps a prefix and a SHA-256 hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import ApiKey, Owner

KEY_SCHEME = "dik"
_PREFIX_LENGTH = 12
# secrets.token_urlsafe's alphabet.
_SECRET_ALPHABET = frozenset(string.ascii_letters + string.digits + "-_")


@dataclass(frozen=True)
class NewKey:
    key: str
    owner_id: uuid.UUID


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough: nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def lookup_prefix(given: str) -> str | None:
    """The lookup prefix a person gives to name a key: the key itself, or its prefix as
    `docingest keys list` prints it (`dik_AbC…`, with or without the scheme and the ellipsis);
    None when it cannot name one."""
    text = given.strip().removesuffix("…").removesuffix("...")
    secret = text.partition("_")[2] if text.startswith(f"{KEY_SCHEME}_") else text
    if len(secret) < _PREFIX_LENGTH or not set(secret) <= _SECRET_ALPHABET:
        return None
    return secret[:_PREFIX_LENGTH]


def _prefix(key: str) -> str | None:
    """The lookup prefix of a well-formed key; None for anything `create_key` cannot have made
    (answered 401 without a query: a NUL, say, would make PostgreSQL fail the lookup)."""
    scheme, _, secret = key.partition("_")
    if scheme != KEY_SCHEME or len(secret) < _PREFIX_LENGTH * 2:
        return None
    if not set(secret) <= _SECRET_ALPHABET:
        return None
    return secret[:_PREFIX_LENGTH]


async def create_key(session: AsyncSession, name: str, owner_id: uuid.UUID | None = None) -> NewKey:
    """Create a key for `owner_id`, or for a new owner called `name` when none is given."""
    if owner_id is None:
        owner = Owner(name=name)
        session.add(owner)
        await session.flush()
        owner_id = owner.id
    key = f"{KEY_SCHEME}_{secrets.token_urlsafe(32)}"
    prefix = _prefix(key)
    assert prefix is not None
    session.add(ApiKey(owner_id=owner_id, name=name, prefix=prefix, key_hash=hash_key(key)))
    await session.flush()
    return NewKey(key=key, owner_id=owner_id)


async def owner_for_key(session: AsyncSession, key: str) -> uuid.UUID | None:
    """The owner of a presented key, compared in constant time; None when it is not valid."""
    prefix = _prefix(key)
    if prefix is None:
        return None
    found = (
        await session.execute(
            select(ApiKey.key_hash, ApiKey.owner_id).where(ApiKey.prefix == prefix)
        )
    ).first()
    if found is None or not hmac.compare_digest(found.key_hash, hash_key(key)):
        return None
    owner_id: uuid.UUID = found.owner_id
    return owner_id


class OwnerCache:
    """Owners of keys seen lately, so a client polling status costs no database round trip.

    Only valid keys are remembered (keyed by their hash, never the key), each for `ttl`
    seconds: a key deleted from the database stops working within that time. A ttl of 0
    turns the cache off.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._owners: dict[str, tuple[uuid.UUID, float]] = {}

    def get(self, key: str) -> uuid.UUID | None:
        digest = hash_key(key)
        found = self._owners.get(digest)
        if found is None:
            return None
        owner_id, expires = found
        if time.monotonic() >= expires:
            self._owners.pop(digest, None)
            return None
        return owner_id

    def put(self, key: str, owner_id: uuid.UUID) -> None:
        if self.ttl <= 0:
            return
        if len(self._owners) >= self.max_entries:
            self._owners.clear()  # a bound, not an LRU: refilling costs one query per key
        self._owners[hash_key(key)] = (owner_id, time.monotonic() + self.ttl)
