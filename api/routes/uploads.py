from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from api.deps import (
    ChangesTasks,
    OwnerDep,
    ReadsDep,
    SessionDep,
    SettingsDep,
    StagingDep,
    TemporalDep,
)
from api.ingest_start import (
    AgentLookup,
    AlreadyStarted,
    IngestRequest,
    StartUnconfirmed,
    accept_file,
    chunking,
)
from api.schemas import UPLOAD_MESSAGE, ErrorBody, TaskStatus, UploadAccepted
from api.task_status import (
    describe_owned,
    find_task,
    owned_record,
    record_status,
    render_with_reason,
)
from api.task_turns import task_turn
from api.upload_stream import (
    ReceivedFile,
    kept_fresh,
    receive_files,
    request_limit,
)
from core.errors import IdempotencyKeyReused, InvalidRequest, NotFound
from core.models import Document
from core.staging import ORIGINAL, StagingStore
from workflows.types import IngestTask, Status, chunking_of, task_from_memo

router = APIRouter(prefix="/upload", tags=["uploads"], responses={401: {"model": ErrorBody}})

# Task ids of idempotent uploads are uuid5(owner:key) in this namespace.
IDEMPOTENCY_NAMESPACE = uuid.UUID("8f1d2c47-3f0e-4a53-9c55-2b7f4f0e9a11")
_MAX_IDEMPOTENCY_KEY = 255
# How long a request waits for its turn: a turn is a replay check and a workflow start, which
# take under a second, and at most the start's deadline when Temporal is slow.
KEY_TURN_PATIENCE_S = 60.0


def _multipart_body(file: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI request body of a multipart form whose `file` field is `file`."""
    schema = {"type": "object", "required": ["file"], "properties": {"file": file}}
    return {
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": schema}},
        }
    }


_BINARY = {"type": "string", "format": "binary"}
MULTIPART_BODY = _multipart_body(_BINARY)
# The batch's: `file` repeated (with MULTIPART_BODY, generated clients and /docs sent one file).
BATCH_BODY = _multipart_body({"type": "array", "items": _BINARY})
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody},
    413: {"model": ErrorBody},
    415: {"model": ErrorBody},
    422: {"model": ErrorBody},
    503: {"model": ErrorBody},
}

ChunkSize = Annotated[int | None, Query(ge=100, le=20_000)]
ChunkOverlap = Annotated[int | None, Query(ge=0, le=10_000)]
AgentIdQuery = Annotated[str, Query(max_length=200)]


def idempotent_task_id(owner: uuid.UUID, key: str) -> str:
    if not 0 < len(key) <= _MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {_MAX_IDEMPOTENCY_KEY} printable characters"
        )
    return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{owner}:{key}"))


@contextlib.asynccontextmanager
async def key_turn(reads: AsyncEngine, task_id: str) -> AsyncIterator[AsyncConnection]:
    """The turn of one Idempotency-Key, from its replay check to its start: requests with the
    key take turns. Between them the duplicate check could change its answer (another upload
    of the same bytes ended), and requests sent at once were answered, some as a duplicate of
    that upload's task, the others with the key's own. One that waited `KEY_TURN_PATIENCE_S`
    is answered 503."""
    busy = (
        "Another request with this Idempotency-Key has been in progress for "
        f"{KEY_TURN_PATIENCE_S:.0f} s; try again shortly"
    )
    async with task_turn(reads, task_id, KEY_TURN_PATIENCE_S, busy) as connection:
        yield connection


async def discard(staging: StagingStore, received: list[ReceivedFile]) -> None:
    """Remove what a failed request staged: only its own files, never another's."""
    with anyio.CancelScope(shield=True):
        for item in received:
            await anyio.to_thread.run_sync(staging.remove, item.task_id, item.original)


@router.post(
    "/agent",
    dependencies=[ChangesTasks],
    status_code=202,
    openapi_extra=MULTIPART_BODY,
    response_model_exclude_none=True,
    responses={200: {"model": UploadAccepted, "description": "Duplicate"}, **UPLOAD_ERRORS},
)
async def upload_document(
    request: Request,
    response: Response,
    owner: OwnerDep,
    settings: SettingsDep,
    reads: ReadsDep,
    staging: StagingDep,
    temporal: TemporalDep,
    agent_id: AgentIdQuery,
    chunk_size: ChunkSize = None,
    chunk_overlap: ChunkOverlap = None,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> UploadAccepted:
    """Upload one document for an agent; returns at once with the task id."""
    size, overlap = chunking(settings, chunk_size, chunk_overlap)
    async with AgentLookup(reads, owner, agent_id) as lookup:
        task_id, original = str(uuid.uuid4()), ORIGINAL
        if idempotency_key is not None:
            task_id = idempotent_task_id(owner, idempotency_key)
            original = f"{ORIGINAL}-{uuid.uuid4().hex[:12]}"
        received: list[ReceivedFile] = []
        repeat: Repeat | None = None
        try:
            # A slow client: its file (written once per MiB) must outlive the orphan grace.
            async with kept_fresh(staging, received, settings.upload_orphan_grace / 4):
                await lookup.stream(
                    receive_files(
                        request, staging, received,
                        next_target=lambda: (task_id, original),
                        max_file_bytes=settings.max_upload_bytes,
                        max_files=1,
                        max_request_bytes=request_limit(settings.max_upload_bytes),
                    )
                )  # fmt: skip
            if received[0].error is not None:
                raise received[0].error
            ingest = IngestRequest(
                temporal, settings, reads, staging, owner, await lookup.agent_id(),
                size, overlap, idempotent=idempotency_key is not None,
            )  # fmt: skip
            if idempotency_key is None:
                accepted = await accept_file(ingest, received[0])
            else:
                repeat = Repeat(idempotency_key, ingest, received[0], (chunk_size, chunk_overlap))
                async with key_turn(reads, task_id) as turn:
                    replay = await replayed_upload(temporal, turn, repeat, response)
                    if replay is None:
                        accepted = await accept_file(
                            dataclasses.replace(ingest, reads=turn), received[0]
                        )
                if replay is not None:
                    await discard(staging, received)
                    return replay
        except AlreadyStarted:
            # The same key at the same moment: the other request started the workflow.
            await discard(staging, received)
            replay = (
                None if repeat is None else await replayed_upload(temporal, reads, repeat, response)
            )
            if replay is None:
                raise
            return replay
        except StartUnconfirmed:
            raise  # its workflow may have started and need the file: the staging sweep judges
        except BaseException:
            await discard(staging, received)
            raise
    if accepted.duplicate:
        response.status_code = 200
    return accepted


@dataclasses.dataclass(frozen=True)
class FirstUpload:
    """What is known of the upload a key was first sent with: the task its workflow keeps or,
    after Temporal's retention dropped the workflow, its `documents` row (whose chunking is
    None when it was stored before the row kept it)."""

    task_id: str
    agent_id: str
    sha256: str
    filename: str
    size_bytes: int
    chunking: tuple[int, int] | None

    @classmethod
    def of_task(cls, task: IngestTask) -> FirstUpload:
        chunking = (task.chunk_size, task.chunk_overlap)
        return cls(
            task.task_id, task.agent_id, task.sha256, task.filename, task.size_bytes, chunking
        )

    @classmethod
    def of_record(cls, document: Document) -> FirstUpload:
        chunking = chunking_of(document.chunk_size, document.chunk_overlap)
        return cls(
            document.task_id, str(document.agent_id), document.sha256, document.filename,
            document.size_bytes, chunking,
        )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Repeat:
    """An upload sent with an Idempotency-Key, to be told apart from the key's first upload."""

    key: str
    ingest: IngestRequest
    received: ReceivedFile  # staged under the task id the key names
    chunking_sent: tuple[int | None, int | None]  # chunk_size, chunk_overlap as given

    def check_same_as(self, first: FirstUpload) -> None:
        """IdempotencyKeyReused unless this request repeats `first`: same agent, same bytes,
        same file name, and any chunking it gives equal to the first's where that is known
        (the defaults may have changed since, which makes no retry another upload). Another
        upload must not be answered with another task."""
        ingest, received = self.ingest, self.received
        differences = [
            what
            for what, differs in (
                ("agent", first.agent_id != str(ingest.agent_id)),
                ("file content", first.sha256 != received.sha256),
                ("file name", first.filename != received.filename),
                ("chunking", self._chunking_differs(first.chunking)),
            )
            if differs
        ]
        if differences:
            raise IdempotencyKeyReused(
                f"Idempotency-Key {self.key!r} was used for another upload (task "
                f"{first.task_id}, {first.filename!r}); this one differs in "
                f"{', '.join(differences)}. Send a new key for a new upload."
            )

    def _chunking_differs(self, first: tuple[int, int] | None) -> bool:
        if first is None:
            return False
        return any(
            sent is not None and sent != used
            for sent, used in zip(self.chunking_sent, first, strict=True)
        )

    def replayed(self, response: Response, first: FirstUpload, task: TaskStatus) -> UploadAccepted:
        """The first upload's acknowledgment as its task is now, as a repeat of it is
        answered: once the task ended, its status message (not "processing in background")
        and, when it is complete, its document."""
        self.check_same_as(first)
        response.headers["Idempotent-Replayed"] = "true"
        ended = task.status in Status.TERMINAL
        return UploadAccepted(
            message=task.message if ended and task.message else UPLOAD_MESSAGE,
            filename=first.filename,
            agent_id=first.agent_id,
            task_id=first.task_id,
            status=task.status,
            size_bytes=first.size_bytes,
            document_id=task.document_id if task.status == Status.COMPLETE else None,
        )


async def replayed_upload(
    temporal: TemporalDep,
    reads: AsyncEngine | AsyncConnection,
    repeat: Repeat,
    response: Response,
) -> UploadAccepted | None:
    """The answer to a repeated Idempotency-Key: the first request's task, as it is now (from
    its workflow, or from its record once Temporal forgot that); None when the key names no
    task yet."""
    found = await describe_owned(temporal, repeat.ingest.owner, repeat.received.task_id)
    if found is None:
        return await _replayed_from_record(reads, repeat, response)
    description, memo = found
    task = task_from_memo(memo)
    if task is None:
        return None
    task_status = await render_with_reason(temporal, description, memo)
    return repeat.replayed(response, FirstUpload.of_task(task), task_status)


async def _replayed_from_record(
    reads: AsyncEngine | AsyncConnection, repeat: Repeat, response: Response
) -> UploadAccepted | None:
    """Once Temporal's retention dropped the key's workflow, its `documents` row remembers
    the upload: a new workflow under the same task id would store another file in its place."""
    async with AsyncSession(reads) as session:
        document = await owned_record(session, repeat.ingest.owner, repeat.received.task_id)
        if document is None:
            return None
        return repeat.replayed(response, FirstUpload.of_record(document), record_status(document))


@router.get("/status/{task_id}", responses={404: {"model": ErrorBody}})
async def upload_status(
    task_id: str, owner: OwnerDep, temporal: TemporalDep, session: SessionDep
) -> TaskStatus:
    """The status of one upload task, answered from its workflow (or its documents row once
    Temporal's retention dropped the workflow)."""
    found = await find_task(temporal, session, owner, task_id)
    if found is None:
        raise NotFound(f"Task {task_id[:100]!r} not found")
    return found[0]
