"""The database schema: owners and their API keys, agents, documents, chunks with vectors."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The schema's vector width; the worker refuses to start with a model of another width.
EMBEDDING_DIMENSION = 384


class Base(DeclarativeBase):
    pass


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, server_default=text("gen_random_uuid()"))


def _created_at() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class Owner(Base):
    __tablename__ = "owners"

    id: Mapped[uuid.UUID] = _uuid_pk()
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created_at()


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = _uuid_pk()
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(32), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = _created_at()


class Agent(Base):
    __tablename__ = "agents"
    # GET /agents pages through an owner's agents in this order: each page a range of the
    # index, not a sort of all of them (an owner may have one per end user). It is also the
    # owner foreign key's index.
    __table_args__ = (Index("ix_agents_owner_created", "owner_id", "created_at", "id"),)

    id: Mapped[uuid.UUID] = _uuid_pk()
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = _created_at()


class UploadBatch(Base):
    __tablename__ = "upload_batches"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), index=True
    )
    agent_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("agents.id", ondelete="CASCADE"), index=True
    )
    files: Mapped[int] = mapped_column(Integer)
    # The files refused at upload (too large, unreadable…): they never became tasks.
    rejected: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    # The files answered as already stored for the agent: no task of this batch, an answer.
    duplicates: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    # The ids of the files that became tasks of this batch: its status lists them from their
    # documents rows once Temporal's retention has dropped their workflows. Empty in batches
    # made before this column.
    task_ids: Mapped[list[str]] = mapped_column(JSONB, default=list)
    created_at: Mapped[datetime] = _created_at()


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        # With chunk_count: an agent's documents are counted (its list's `total`) and their
        # chunks summed (every search's plan) from this index alone, not every row.
        Index(
            "ix_documents_agent_status_chunks",
            "agent_id",
            "status",
            postgresql_include=["chunk_count"],
        ),
        Index("ix_documents_agent_created", "agent_id", "created_at"),
        # At most one stored copy of the same bytes per agent: the database settles races.
        Index(
            "uq_documents_agent_sha256_complete",
            "agent_id",
            "sha256",
            unique=True,
            postgresql_where=text("status = 'complete'"),
        ),
    )

    id: Mapped[uuid.UUID] = _uuid_pk()
    owner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("owners.id", ondelete="CASCADE"), index=True
    )
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    task_id: Mapped[str] = mapped_column(String(64), unique=True)
    filename: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    page_count: Mapped[int | None] = mapped_column(Integer)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(20))
    error_type: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    # What made its vectors (activities/embedding_record.py): float32, bfloat16, int8, or
    # mixed (shards embedded by different workers), and the model; NULL when unknown (stored
    # before this was recorded) or when it has no vectors.
    embedding_precision: Mapped[str | None] = mapped_column(String(20))
    embedding_model: Mapped[str | None] = mapped_column(Text)
    # The chunking it was stored with (characters); NULL when unknown (stored before this
    # was recorded).
    chunk_size: Mapped[int | None] = mapped_column(Integer)
    chunk_overlap: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _created_at()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("document_id", "ordinal", name="uq_chunks_document_ordinal"),
        Index(
            "ix_chunks_embedding_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    document_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    start_char: Mapped[int] = mapped_column(Integer)
    end_char: Mapped[int] = mapped_column(Integer)
    page: Mapped[int | None] = mapped_column(Integer)
    embedding: Mapped[list[float]] = mapped_column(Vector(EMBEDDING_DIMENSION))


class TaskStart(Base):
    """An acknowledged upload whose workflow is yet to be started: the API's outbox.

    An upload is answered 202 once its file is on the disk and this row is committed; its
    workflow is started right after, off the request's path, and the row deleted. A start
    that fails (Temporal unreachable, the API killed) is taken again by the API's dispatcher
    (`api/task_starts.py`) until it succeeds, so no acknowledged upload is left unstarted.
    """

    __tablename__ = "task_starts"

    task_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    agent_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    task_queue: Mapped[str] = mapped_column(Text)
    # The workflow's input (workflows.types.IngestTask as a dict).
    task: Mapped[dict[str, Any]] = mapped_column(JSONB)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    # When the dispatcher takes the row: a while after it was queued (the API that queued it
    # starts it at once), then after each failed start, later and later.
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
