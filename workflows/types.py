"""The small dataclasses the workflow exchanges with its activities and clients.

Only references and counts travel through Temporal (payloads over 2 MiB are rejected), never
file bytes, chunk lists or vectors: those live in the staging store under the task id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

WORKFLOW_NAME = "IngestDocument"
PROGRESS_QUERY = "progress"
MEMO_PROGRESS = "progress"
MEMO_TASK = "task"

EXTRACT = "extract"
CHUNK = "chunk"
# A small text, Markdown or HTML file: extract and chunk in one local step.
EXTRACT_AND_CHUNK = "extract_and_chunk"
# How small: a local step cannot heartbeat, so what it reads must parse in about a second
# (activities/extract.py reads larger HTML in a child process, heartbeating).
QUICK_EXTRACT_MAX_BYTES = 1024 * 1024
EMBED = "embed"
STORE = "store"
# A document of one embed batch: embedded and stored by one activity on the embed queue.
EMBED_AND_STORE = "embed_and_store"
RECORD_OUTCOME = "record_outcome"
CLEANUP = "cleanup"


class Status:
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETE = "complete"
    FAILED = "failed"
    ERROR = "error"
    CANCELLED = "cancelled"

    TERMINAL = frozenset({COMPLETE, FAILED, ERROR, CANCELLED})


# Why a task was cancelled, as the cancel request says it: the API's cancel route sends no
# reason, deleting its agent sends AGENT_DELETED, an operator may type one in the Web UI.
CANCELLED_ON_REQUEST = "cancelled on request"
AGENT_DELETED = "its agent was deleted"


def cancelled_message(filename: str, reason: str) -> str:
    """What a cancelled task says, in the workflow and from its record after retention."""
    if not reason or reason == CANCELLED_ON_REQUEST:
        return f"Processing of {filename} was cancelled"
    return f"Processing of {filename} was cancelled: {reason}"


class Stage:
    QUEUED = "queued"
    EXTRACTING = "extracting"
    CHUNKING = "chunking"
    EMBEDDING = "embedding"
    STORING = "storing"
    DONE = "done"


class FailureType:
    """ApplicationError types for files that can never be ingested as they are."""

    UNSUPPORTED_FORMAT = "UnsupportedFormat"
    CORRUPT_DOCUMENT = "CorruptDocument"
    ENCRYPTED_DOCUMENT = "EncryptedDocument"
    EMPTY_DOCUMENT = "EmptyDocument"
    DOCUMENT_TOO_LARGE = "DocumentTooLarge"
    DOCUMENT_TOO_SLOW = "DocumentTooSlow"
    STAGING_MISSING = "StagingMissing"
    AGENT_DELETED = "AgentDeleted"
    # The task id's row holds another file (an idempotency key reused after retention).
    ANOTHER_FILE_STORED = "AnotherFileStored"

    PERMANENT = frozenset(
        {
            UNSUPPORTED_FORMAT,
            CORRUPT_DOCUMENT,
            ENCRYPTED_DOCUMENT,
            EMPTY_DOCUMENT,
            DOCUMENT_TOO_LARGE,
            DOCUMENT_TOO_SLOW,
            ANOTHER_FILE_STORED,
        }
    )
    # Retrying these can never help; STAGING_MISSING ends as `error` (the system lost input).
    NON_RETRYABLE = (*sorted(PERMANENT), STAGING_MISSING, AGENT_DELETED, "ConfigurationError")
    # Retryable failures of our own: the store waits for another task's copy of the file
    # (activities/store.py), a reader process died (activities/reader_process.py).
    COPY_NOT_SETTLED = "CopyNotSettled"
    READER_DIED = "ReaderDied"
    # A step's write to the staging store was refused (core.errors.StagingUnwritable: the
    # store full, read-only): the operator's to fix, not the file's nor the model's.
    STAGING_UNWRITABLE = "StagingUnwritable"
    # Failures whose messages are written for the person who uploaded the file. Any other
    # (an exception of the database driver or the model) can name the database's host, SQL or
    # the server's files: the task's message says what failed in words of its own.
    WORDED = frozenset({*NON_RETRYABLE, COPY_NOT_SETTLED, READER_DIED, STAGING_UNWRITABLE})
    # A step that raised an exception no code of ours named is recorded with that exception's
    # class (KeyError, OperationalError): words for operators, which change with the libraries.
    # The API shows the documented types only, and this one for any other.
    INTERNAL_ERROR = "InternalError"
    # How a task that did not fail by itself ended: a step ran past its time (or its worker
    # was lost), an operator terminated it, it was cancelled.
    TIMEOUT = "Timeout"
    TERMINATED = "Terminated"
    CANCELLED = "Cancelled"
    SHOWN = frozenset({*WORDED, TIMEOUT, TERMINATED, CANCELLED, INTERNAL_ERROR})


# How a run stopped from outside is told (its workflow, no longer running, cannot say it): an
# operator terminated it, or it ran past its execution timeout. What happened, and the error.
_STOPPED_WORDS = {
    FailureType.TERMINATED: (
        "was stopped by an operator (terminated)",
        "Stopped by an operator (terminated)",
    ),
    FailureType.TIMEOUT: ("timed out", "Timed out"),
}


def stopped(filename: str, error_type: str, reason: str) -> tuple[str, str]:
    """The message and the error message of a task whose run was stopped from outside
    (`error_type` `Terminated` or `Timeout`), quoting the reason an operator typed, if any.
    The API says them from the execution's status; the staging sweep writes them into the
    task's documents row, which says them once Temporal's retention dropped the workflow."""
    happened, said = _STOPPED_WORDS[error_type]
    reason = f": {reason}" if reason else ""
    return f"Processing {filename} {happened}{reason}", said + reason


def recorded_stop(filename: str, error_type: str | None, error: str | None) -> str | None:
    """The message of a task whose row records a stop from outside (`stopped`'s error);
    None for any other error (a step of it that timed out is `Timeout` too)."""
    happened, said = _STOPPED_WORDS.get(error_type or "", ("", ""))
    if not said or error is None or not (error == said or error.startswith(f"{said}: ")):
        return None
    return f"Processing {filename} {happened}{error[len(said) :]}"


@dataclass
class IngestTask:
    """Everything the workflow needs to know about one upload."""

    task_id: str
    owner_id: str
    agent_id: str
    filename: str
    format: str
    size_bytes: int
    sha256: str
    chunk_size: int
    chunk_overlap: int
    embed_task_queue: str
    embed_activity_chunks: int = 128
    embed_window: int = 4
    # Name of the uploaded file inside the task's staging folder.
    original: str = "original"
    batch_id: str | None = None
    # A document past this many chunks fails (DocumentTooLarge) instead of embedding for hours.
    max_chunks: int = 20_000
    # How soon a lost worker is noticed: heartbeating activities are retried after this.
    heartbeat_timeout_s: int = 60
    # Attempts of the database steps (store, record_outcome) before the task ends `error`.
    database_attempts: int = 10


@dataclass
class ExtractResult:
    characters: int
    pages: int | None


@dataclass
class ChunkResult:
    chunks: int


@dataclass
class EmbedBatch:
    task_id: str
    start: int
    end: int


@dataclass
class EmbedResult:
    embedded: int


@dataclass
class StoreResult:
    document_id: str
    chunks: int
    # The agent already had these bytes stored: nothing new was written.
    duplicate: bool = False
    # A duplicate's stored copy: its file name, and the chunking it was stored with (None
    # when unknown, or from a store of the release before, which named neither).
    stored_as: str | None = None
    stored_chunk_size: int | None = None
    stored_chunk_overlap: int | None = None


@dataclass
class EmbeddedAndStored:
    embedded: int
    # None when the store did not succeed within the activity: the workflow runs `store`.
    stored: StoreResult | None = None


@dataclass
class Outcome:
    """The permanent record of a task that ended without storing chunks."""

    task: IngestTask
    status: str
    error_type: str
    error_message: str
    # Write it only over the row the task has, never a new one: a reset run whose upload and
    # document are both gone (the document was deleted since) ends with no row, as it was left.
    only_over_its_row: bool = False


@dataclass
class TaskProgress:
    """What `/upload/status` shows; kept by the workflow and mirrored into its memo."""

    task_id: str
    filename: str
    agent_id: str
    status: str
    message: str
    stage: str
    started_at: str
    completed_at: str | None = None
    document_id: str | None = None
    chunks_total: int = 0
    chunks_embedded: int = 0
    size_bytes: int = 0
    error_type: str | None = None
    error_message: str | None = None
    duplicate: bool = False

    @classmethod
    def queued(cls, task: IngestTask, started_at: str) -> TaskProgress:
        """The state of a task before any step ran (the API's first memo, the workflow's start)."""
        return cls(
            task_id=task.task_id,
            filename=task.filename,
            agent_id=task.agent_id,
            status=Status.QUEUED,
            message=f"Queued {task.filename} for processing",
            stage=Stage.QUEUED,
            started_at=started_at,
            size_bytes=task.size_bytes,
        )


def chunking_of(size: int | None, overlap: int | None) -> tuple[int, int] | None:
    """A document's recorded (chunk_size, chunk_overlap); None when either is unknown (a row
    stored before documents kept it, or a store result of the release before)."""
    return None if size is None or overlap is None else (size, overlap)


def already_stored(
    filename: str,
    stored_as: str,
    document_id: str,
    stored_chunking: tuple[int, int] | None,
    chunking: tuple[int, int],
) -> str:
    """What an upload of bytes the agent has stored already is told: the document that holds
    them (its name may differ), and, unless that document was chunked as this upload asked,
    that it keeps its chunking and how to get the one asked for."""
    named = "" if stored_as == filename else f" as {stored_as}"
    message = f"{filename} is already stored for this agent{named}; nothing new was stored"
    if stored_chunking == chunking:
        return message
    kept = ""
    if stored_chunking is not None:
        kept = f" (chunk_size {stored_chunking[0]}, chunk_overlap {stored_chunking[1]})"
    return (
        f"{message}. It keeps the chunking it was stored with{kept}; to store it with "
        f"chunk_size {chunking[0]}, chunk_overlap {chunking[1]}, delete document "
        f"{document_id} and upload it again"
    )


def task_from_memo(memo: Mapping[str, Any]) -> IngestTask | None:
    """The IngestTask a workflow was started with, as its memo keeps it."""
    raw = memo.get(MEMO_TASK)
    if not isinstance(raw, dict):
        return None
    known = {field.name for field in fields(IngestTask)}
    return IngestTask(**{key: value for key, value in raw.items() if key in known})
