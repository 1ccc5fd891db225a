"""Response and request bodies of the HTTP API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, PlainSerializer, StringConstraints

from core.temporal import iso_utc
from workflows.types import FailureType

# Every timestamp of the API in one form, the tasks' (`iso_utc`): ISO-8601 UTC, milliseconds, `Z`.
Timestamp = Annotated[datetime, PlainSerializer(iso_utc, return_type=str, when_used="json")]

TaskStatusValue = Literal["queued", "processing", "complete", "failed", "error", "cancelled"]


class ErrorBody(BaseModel):
    detail: str
    code: str


class AgentCreate(BaseModel):
    # Trimmed, and not blank. PostgreSQL text cannot hold NUL: refused here (422), not by the
    # database (500).
    name: Annotated[
        str,
        StringConstraints(
            strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00]*$"
        ),
    ]


class AgentPublic(BaseModel):
    id: uuid.UUID
    name: str
    created_at: Timestamp


class AgentsPublic(BaseModel):
    agents: list[AgentPublic]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page (null after the last page): every "
        "agent there was when the first page was read is listed once, unless deleted before "
        "its page",
    )


UPLOAD_MESSAGE = "Document uploaded successfully, processing in background"


class UploadAccepted(BaseModel):
    """The seed contract of `POST /upload/agent`, field for field. `duplicate` and
    `document_id` appear when the agent already had these bytes (200); `document_id` also
    when a repeated Idempotency-Key names a task that completed."""

    message: str = UPLOAD_MESSAGE
    filename: str
    agent_id: str
    task_id: str
    status: TaskStatusValue = "queued"
    size_bytes: int
    duplicate: bool | None = None
    document_id: str | None = None


class UploadRejected(BaseModel):
    """A file of a batch that did not become a task, and why."""

    filename: str
    status: Literal["rejected"] = "rejected"
    status_code: int
    code: str
    detail: str


class BatchAccepted(BaseModel):
    batch_id: str
    tasks: list[UploadAccepted | UploadRejected]


class TaskProgressCounts(BaseModel):
    chunks_total: int
    chunks_embedded: int
    percent: float


class TaskError(BaseModel):
    type: str
    message: str

    @classmethod
    def recorded(cls, error_type: str | None, error_message: str | None) -> TaskError | None:
        """The error of a task or document, from its stored type and message; None if none."""
        if error_type is None:
            return None
        if error_type not in FailureType.SHOWN:
            error_type = FailureType.INTERNAL_ERROR
        return cls(type=error_type, message=error_message or "")


class TaskStatus(BaseModel):
    task_id: str
    filename: str
    agent_id: str
    status: TaskStatusValue
    message: str
    document_id: str | None
    started_at: str | None = Field(description="ISO-8601 UTC")
    completed_at: str | None = Field(description="ISO-8601 UTC")
    stage: str
    progress: TaskProgressCounts
    error: TaskError | None


class TasksPublic(BaseModel):
    tasks: list[TaskStatus]
    next_cursor: str | None = Field(
        default=None,
        description="Pass as `cursor` for the next page (null after the last page): tasks "
        "started meanwhile (or retried) come on top, for the next walk, not in it",
    )


class HealthPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unavailable"]
    temporal: Literal["ok", "unavailable"]


class BatchStatus(BaseModel):
    batch_id: str
    agent_id: str
    created_at: Timestamp
    files: int
    tasks: list[TaskStatus]
    rejected: list[UploadRejected]
    # Files the agent already had: answered with the stored copy's task and document.
    duplicates: list[UploadAccepted] = []
    summary: dict[str, int]


DocumentStatusValue = Literal["complete", "failed", "error", "cancelled"]
# What made a document's vectors (activities/embedding_record.py); null in a document: unknown.
EmbeddingPrecisionValue = Literal["float32", "bfloat16", "int8", "mixed"]
# The documents list's filter: a precision, or `unknown` for those whose precision is null.
UNKNOWN_EMBEDDING = "unknown"
EmbeddingPrecisionFilter = Literal[EmbeddingPrecisionValue, "unknown"]


class DocumentPublic(BaseModel):
    id: uuid.UUID
    agent_id: uuid.UUID
    filename: str
    content_type: str
    size_bytes: int
    sha256: str
    page_count: int | None
    chunk_count: int
    status: DocumentStatusValue
    error: TaskError | None
    task_id: str = Field(description="The upload task that made this document")
    embedding_precision: EmbeddingPrecisionValue | None = Field(
        description="The precision its vectors were embedded in; `mixed`: its parts were "
        "embedded by workers in different precisions; null: unknown (stored before it was "
        "recorded) or no vectors (not `complete`)"
    )
    embedding_model: str | None = Field(
        description="The model that embedded its vectors (the bundled `all-MiniLM-L6-v2`, or "
        "the folder name of DOCINGEST_EMBEDDING_MODEL); `mixed` and null as for the precision"
    )
    chunk_size: int | None = Field(
        description="The chunking it was stored with, in characters; null: unknown (stored "
        "before it was recorded)"
    )
    chunk_overlap: int | None = Field(description="As `chunk_size`")
    created_at: Timestamp
    updated_at: Timestamp


class DocumentsPublic(BaseModel):
    documents: list[DocumentPublic]
    total: int = Field(description="Matching documents across all pages")
    limit: int
    offset: int
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page (null after the last page): no "
        "document is skipped or listed twice while others are stored or deleted"
    )


class SearchRequest(BaseModel):
    # Trimmed, and not blank: a blank query reads as no words to the model, and every chunk
    # would come back scored against nothing.
    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
    top_k: int = Field(default=5, ge=1, le=50)


class SearchHit(BaseModel):
    score: float = Field(description="Cosine similarity, 1 - cosine distance")
    text: str
    document_id: uuid.UUID
    filename: str
    page: int | None
    start_char: int
    end_char: int
    chunk_id: int


class SearchResults(BaseModel):
    results: list[SearchHit] = Field(description="Best first")
