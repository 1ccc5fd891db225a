"""Which embedding made a document's vectors: the precision its model ran in and the model.

Each embed activity writes, beside a shard's vectors in staging, a record of the precision
(after `auto` resolved) and the model of the worker that embedded them, with the digest of
the vectors it wrote. The store reads the records back with the vectors and keeps one value
per document (GET /documents/{id}: `embedding_precision`, `embedding_model`). Shards of one
document may be embedded by different workers: where they differ the document says `mixed`.
A shard whose record is missing (written by a release before the records) or belongs to
other vectors (two attempts of the same shard wrote one file each) is unknown: the document
says nothing rather than guess (None, unless the known shards already differ).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

MIXED = "mixed"


@dataclass(frozen=True)
class Embedding:
    """The precision and model of some vectors; None where they are unknown."""

    precision: str | None
    model: str | None


def record_name(start: int) -> str:
    """The record of the shard whose vectors are `vectors_name(start)`."""
    return f"vectors/{start:09d}.embedding.json"


def shard_record(embedding: Embedding, vectors_npy: bytes) -> dict[str, Any]:
    """What the embed activity writes beside a shard's vectors (`vectors_npy`, as written)."""
    return {
        "precision": embedding.precision,
        "model": embedding.model,
        "sha256": hashlib.sha256(vectors_npy).hexdigest(),
    }


def shard_embedding(record: object, vectors_npy: bytes) -> Embedding | None:
    """The embedding a shard's record names, when it is the record of these vectors."""
    if not isinstance(record, dict):
        return None
    if record.get("sha256") != hashlib.sha256(vectors_npy).hexdigest():
        return None
    precision, model = record.get("precision"), record.get("model")
    if not isinstance(precision, str) or not isinstance(model, str):
        return None
    return Embedding(precision, model)


def document_embedding(shards: list[Embedding | None]) -> Embedding:
    """One document's, from its shards' (None: a shard's is unknown)."""
    return Embedding(
        _agreed([shard.precision if shard else None for shard in shards]),
        _agreed([shard.model if shard else None for shard in shards]),
    )


def _agreed(values: list[str | None]) -> str | None:
    """The value every shard has; MIXED when known ones differ; else None (unknown)."""
    known = {value for value in values if value is not None}
    if len(known) > 1:
        return MIXED
    if None in values or not known:
        return None
    return known.pop()
