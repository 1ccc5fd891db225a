"""Stream multipart uploads straight to the staging store: bounded memory, sizes and hashes.

The parser's callbacks only record events; all I/O happens on the async side (in threads), so
the event loop never blocks on the staging store, local or remote.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import hashlib
import logging
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, BinaryIO, TypeVar

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from core.errors import (
    DocingestError,
    InvalidRequest,
    PayloadTooLarge,
    StagingUnwritable,
    UnsupportedMediaType,
)
from core.formats import SNIFF_BYTES
from core.staging import StagingStore, refused_writes

log = logging.getLogger(__name__)

FILE_FIELD = "file"
# Rewritten in each folder of a batch's received files while the request lasts (`kept_fresh`).
RECEIVING = "receiving"
T = TypeVar("T")
_FLUSH_BYTES = 1024 * 1024
_MAX_OTHER_FIELD_BYTES = 64 * 1024
_MULTIPART_OVERHEAD = 64 * 1024
# Names of other form fields kept to say what came instead of a file: a body of many fields
# (a batch may be 500 MiB) was otherwise kept whole in memory and echoed back in its 422.
_NAMED_FIELDS = 10
# Form fields besides `file` in one request (Starlette's own form parser allows 1000): parsing
# an empty part costs the event loop ~15 µs, and a 48 MiB body of them (~870,000) held it for
# 12 s, every other request meanwhile answered ~100 times slower.
MAX_OTHER_FIELDS = 1000
_MAX_FIELD_NAME = 100
_MAX_FILENAME = 255
_MAX_SUFFIX = 16
# Control characters, and line/paragraph separators that would break a one-line display.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
# Bidirectional marks, embeddings, overrides and isolates: "bill\u202efdp.exe" displays as
# "billexe.pdf".
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
# Characters that show nothing: "re\u200bport.pdf" displays as "report.pdf" but is another
# name. (Zero-width joiners stay: scripts such as Persian and emoji sequences need them.)
_INVISIBLE = frozenset("\u00ad\u180e\u200b\u2060\u2061\u2062\u2063\u2064\ufeff")


def _displayable(ch: str) -> bool:
    return (
        unicodedata.category(ch) not in _UNSAFE_CATEGORIES
        and ch not in _BIDI_CONTROLS
        and ch not in _INVISIBLE
    )


def clean_filename(raw: str) -> str:
    """A display name: no directories, no control, bidi or invisible characters, at most 255
    characters."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(filter(_displayable, name))
    name = name.strip().strip(".") or "upload"
    if len(name) <= _MAX_FILENAME:
        return name
    # Cut the stem, not the extension: sniffing reads it to tell Markdown and HTML from text.
    stem, dot, suffix = name.rpartition(".")
    if dot and stem and len(suffix) <= _MAX_SUFFIX:
        return f"{stem[: _MAX_FILENAME - len(suffix) - 1]}.{suffix}"
    return name[:_MAX_FILENAME]


def part_filename(disposition: bytes, plain: bytes | None) -> str:
    """A part's file name as its client wrote it: RFC 5987's `filename*` where one was sent,
    else `filename` (UTF-8). python-multipart drops `filename*` (RFC 7578 tells senders not to
    use it), but .NET's MultipartFormDataContent sends both, its `filename` MIME-encoded
    ("=?utf-8?B?…?="), and other clients only `filename*`: the name showed as that encoding,
    or as "upload", and lost the extension that sniffing reads."""
    message = email.message.Message()
    message["content-disposition"] = disposition.decode("latin-1")
    for key, value in message.get_params([], header="content-disposition"):
        if key == "filename" and isinstance(value, tuple) and value[2]:
            charset, _, text = value  # the text percent-decoded, as Latin-1
            return _decoded(text.encode("latin-1", "replace"), charset or "utf-8")
    return _decoded(plain or b"", "utf-8")


def _decoded(raw: bytes, charset: str) -> str:
    try:
        return raw.decode(charset, "replace")
    except (LookupError, ValueError):  # a charset no codec knows, or no text codec at all
        return raw.decode("utf-8", "replace")


@dataclass
class ReceivedFile:
    """One `file` part, staged at `<task_id>/<original>` unless `error` says why not."""

    filename: str
    task_id: str
    original: str
    size_bytes: int = 0
    sha256: str = ""
    head: bytes = b""  # the first SNIFF_BYTES, kept for sniffing without reading the file
    error: DocingestError | None = None
    _hasher: Any = field(default_factory=hashlib.sha256, repr=False)
    _sink: BinaryIO | None = field(default=None, repr=False)
    # The fsync of the staged file, started once it is received (`made_durable`).
    durable: asyncio.Future[None] | None = field(default=None, repr=False)


# A staging target for the next file: (task_id, name of the original inside its folder).
TargetFactory = Callable[[], tuple[str, str]]


class _PartEvents:
    """MultipartParser callbacks that only queue ("begin", name) / ("data", bytes) / ("end",)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.field_names: list[str] = []  # the first _NAMED_FIELDS
        self.fields = 0
        self._headers: dict[bytes, bytes] = {}
        self._field = b""
        self._value = b""
        self._in_file = False
        self._others = 0
        self._other_bytes = 0

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        self.fields += 1
        if len(self.field_names) < _NAMED_FIELDS:
            shown = name.decode("utf-8", "replace") if name is not None else ""
            self.field_names.append(shown[:_MAX_FIELD_NAME])
        self._in_file = name == FILE_FIELD.encode()
        if self._in_file:
            disposition = self._headers.get(b"content-disposition", b"")
            filename = part_filename(disposition, options.get(b"filename"))
            self.events.append(("begin", clean_filename(filename)))
            return
        self._others += 1
        if self._others > MAX_OTHER_FIELDS:
            raise InvalidRequest(
                f"the request has more than {MAX_OTHER_FIELDS} form fields besides `file`; "
                "send the documents in `file` fields (options go in the query string)"
            )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.events.append(("data", data[start:end]))
            return
        self._other_bytes += end - start
        if self._other_bytes > _MAX_OTHER_FIELD_BYTES:
            raise InvalidRequest("form fields other than `file` are too large")

    def _part_end(self) -> None:
        if self._in_file:
            self.events.append(("end", None))
        self._in_file = False


def _refuse_content_coding(request: Request) -> None:
    """415 for a body sent compressed (`Content-Encoding: gzip`): it was parsed as it came, and
    answered 422 "Expected boundary character 45, got 31", which says nothing of the cause."""
    coding = request.headers.get("content-encoding", "").strip().lower()
    if coding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {coding[:50]!r} is not supported; send the upload uncompressed"
        )


def _boundary(request: Request) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "send documents as multipart/form-data with each file in a `file` field"
        )
    return boundary


class _Receiver:
    def __init__(
        self,
        staging: StagingStore,
        received: list[ReceivedFile],
        next_target: TargetFactory,
        max_file_bytes: int,
        max_files: int,
        batch: bool,
    ) -> None:
        self.staging = staging
        self.received = received
        self.next_target = next_target
        self.max_file_bytes = max_file_bytes
        self.max_files = max_files
        self.batch = batch
        self.current: ReceivedFile | None = None
        self.pending: list[bytes] = []
        self.pending_bytes = 0

    async def handle(self, kind: str, value: Any) -> None:
        if kind == "begin":
            await self._begin(value)
        elif kind == "data":
            await self._data(value)
        else:
            await self._end()

    async def _begin(self, filename: str) -> None:
        if len(self.received) >= self.max_files:
            if self.batch:
                # Said by the route, not guessed from the limit: a batch limit of 1 file sent
                # its client to "the batch endpoint", the one it had used.
                raise InvalidRequest(
                    f"a batch holds at most {self.max_files} file(s); send the others in "
                    "another batch"
                )
            raise InvalidRequest(
                f"send at most {self.max_files} file(s) in the `file` field per request "
                "(use the batch endpoint for several)"
            )
        task_id, original = self.next_target()
        self.current = ReceivedFile(filename=filename, task_id=task_id, original=original)
        self.received.append(self.current)
        await _to_thread_to_the_end(self._open_sink, self.current)

    def _open_sink(self, current: ReceivedFile) -> None:
        """In a worker thread: the file is the receiver's (to close) as soon as it exists."""
        with refused_writes():
            current._sink = self.staging.open_write(current.task_id, current.original)

    async def _data(self, piece: bytes) -> None:
        current = self.current
        if current is None or current.error is not None:
            return
        current.size_bytes += len(piece)
        if current.size_bytes > self.max_file_bytes:
            current.error = PayloadTooLarge(
                f"{current.filename} is larger than the {self.max_file_bytes}-byte upload limit"
            )
            await self._close(current)
            await anyio.to_thread.run_sync(self.staging.remove, current.task_id, current.original)
            return
        if len(current.head) < SNIFF_BYTES:
            current.head += piece[: SNIFF_BYTES - len(current.head)]
        self.pending.append(piece)
        self.pending_bytes += len(piece)
        if self.pending_bytes >= _FLUSH_BYTES:
            await self._flush(current)

    async def _end(self) -> None:
        current = self.current
        if current is not None and current.error is None:
            await self._flush(current)
            await self._close(current)
            current.sha256 = current._hasher.hexdigest()
            # On the disk while the request goes on (sniffing, the duplicate check, the
            # workflow's start); the 202 waits for it (`made_durable`).
            current.durable = asyncio.ensure_future(
                anyio.to_thread.run_sync(_make_durable, self.staging, current)
            )
            current.durable.add_done_callback(_retrieved)
        self.current = None

    async def _flush(self, current: ReceivedFile) -> None:
        data = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        if current._sink is not None and data:
            await _to_thread_to_the_end(_hash_and_write, current._hasher, current._sink, data)

    async def _close(self, current: ReceivedFile) -> None:
        self.pending.clear()
        self.pending_bytes = 0
        if current._sink is not None:
            sink, current._sink = current._sink, None
            await _to_thread_to_the_end(_close_sink, sink)

    async def close_all(self) -> None:
        """Close what is still open: files of a request that failed, to be discarded."""
        for received in self.received:
            with contextlib.suppress(StagingUnwritable):  # its buffer, for a full store
                await self._close(received)


async def to_the_end(work: Awaitable[T], undo: Callable[[T], Awaitable[None]] | None = None) -> T:
    """`work`'s result, waited for to its end even when this task is cancelled meanwhile; then
    the cancel goes on, after `undo` of what the work did. asyncio's cancel does not wait for a
    thread, anyio's shield notwithstanding: a request discarded its staged file, then the
    thread created it, and an empty `original` stayed in staging (an unknown agent cancels the
    body's reception)."""
    running = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        with anyio.CancelScope(shield=True):
            await asyncio.wait({running})
            if undo is not None and not running.cancelled() and running.exception() is None:
                await undo(running.result())
        raise


async def _to_thread_to_the_end(function: Callable[..., None], *args: Any) -> None:
    """`function(*args)` in a worker thread, to its end (`to_the_end`)."""
    await to_the_end(anyio.to_thread.run_sync(function, *args))


def _hash_and_write(hasher: Any, sink: BinaryIO, data: bytes) -> None:
    """In a worker thread: sha256 releases the GIL on large buffers, so hashing a MiB (~6 ms
    without SHA extensions) runs beside the event loop instead of stalling every request."""
    hasher.update(data)
    with refused_writes():
        sink.write(data)


def _make_durable(staging: StagingStore, received: ReceivedFile) -> None:
    """In a worker thread: the staged file on the disk (`StagingStore.make_durable`)."""
    with refused_writes():
        staging.make_durable(received.task_id, received.original)


def _retrieved(future: asyncio.Future[None]) -> None:
    """A discarded upload's fsync is awaited by no one: its failure is not worth a warning."""
    if not future.cancelled():
        future.exception()


async def made_durable(received: ReceivedFile) -> None:
    """Wait until the received file is on the disk, before it is acknowledged. A disk that
    refuses the fsync (an I/O error) is logged: the workflow that owns the file has started,
    and the worker checks the file's size and SHA-256 before it reads it."""
    if received.durable is None:
        return
    try:
        await received.durable
    except StagingUnwritable as exc:
        log.error("an upload could not be synced to the disk: %s", exc.__cause__)


def _close_sink(sink: BinaryIO) -> None:
    """In a worker thread: the file's last buffered bytes are written as it closes."""
    with refused_writes():
        sink.close()


async def receive_files(
    request: Request,
    staging: StagingStore,
    received: list[ReceivedFile],
    *,
    next_target: TargetFactory,
    max_file_bytes: int,
    max_files: int,
    max_request_bytes: int,
    batch: bool = False,
) -> None:
    """Stage every `file` part into `received` (which the caller owns, to clean up on error).

    A file over `max_file_bytes` gets its own `error` and the rest of the request goes on; a
    request over `max_request_bytes` (by Content-Length or while streaming) raises 413. A
    `batch` request's limits are the batch's, and its refusals say so.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_request_bytes:
        raise _too_large(max_request_bytes, max_file_bytes, batch)
    _refuse_content_coding(request)
    events = _PartEvents()
    parser = MultipartParser(_boundary(request), events.callbacks())  # type: ignore[arg-type]
    receiver = _Receiver(staging, received, next_target, max_file_bytes, max_files, batch)
    total = 0
    try:
        async for data in request.stream():
            total += len(data)
            if total > max_request_bytes:
                raise _too_large(max_request_bytes, max_file_bytes, batch)
            parser.write(data)
            await _drain(events, receiver)
        parser.finalize()
        await _drain(events, receiver)
        if receiver.current is not None:
            # No closing boundary: what arrived is a cut-off file, never to be ingested as whole.
            raise InvalidRequest(
                f"the multipart body ends inside {receiver.current.filename}: "
                "the upload is incomplete (no closing boundary)"
            )
    except ClientDisconnect as exc:
        raise InvalidRequest("the client disconnected before the upload finished") from exc
    except FormParserError as exc:
        raise InvalidRequest(f"the multipart body is malformed: {exc}") from exc
    except StagingUnwritable as exc:
        # A 503, not a 500 "Internal error": the client learns why, and to send it later.
        name = receiver.current.filename if receiver.current is not None else "the file"
        # Its operator's to fix: the access log said only "503 Service Unavailable".
        log.error("an upload could not be staged: %s", exc.__cause__)
        raise StagingUnwritable(
            f"{name} could not be received: {exc.detail}; nothing was kept, send it again later"
        ) from exc
    finally:
        await receiver.close_all()
    if not received:
        seen = ", ".join(repr(name) for name in events.field_names) or "none"
        if events.fields > len(events.field_names):
            seen += f" and {events.fields - len(events.field_names)} more"
        raise InvalidRequest(f"no file in the `file` field (form fields received: {seen})")


async def _drain(events: _PartEvents, receiver: _Receiver) -> None:
    queued, events.events = events.events, []
    for kind, value in queued:
        await receiver.handle(kind, value)


@asynccontextmanager
async def kept_fresh(
    staging: StagingStore, received: list[ReceivedFile], every: timedelta
) -> AsyncIterator[None]:
    """Keep the folders of `received` files young while the block runs.

    A batch's files are staged as they arrive, and their tasks start once the whole request is
    in; a single upload's file is written once per MiB received. The staging sweep takes a
    folder with no workflow whose newest file is older than the orphan grace for an abandoned
    upload. So while a long request streams, a small `RECEIVING`
    marker is rewritten in each received file's folder `every` (a quarter of the grace), and
    removed at the end, with the folder if nothing else is left in it (a request shorter than
    `every` wrote none, and skips that thread hop).
    """
    marked = False

    def freshen(items: list[ReceivedFile]) -> None:
        for item in items:
            # A folder removed meanwhile (a rejected file's, or a finished task's) is no error.
            with contextlib.suppress(OSError), staging.open_write(item.task_id, RECEIVING) as f:
                f.write(b"")

    def unmark(items: list[ReceivedFile]) -> None:
        for item in items:
            with contextlib.suppress(OSError):
                staging.remove(item.task_id, RECEIVING)

    async def refresh() -> None:
        nonlocal marked
        while True:
            await asyncio.sleep(every.total_seconds())
            marked = True
            await anyio.to_thread.run_sync(freshen, [i for i in received if i.error is None])

    refresher = asyncio.create_task(refresh())
    try:
        yield
    finally:
        refresher.cancel()
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            if marked:
                await anyio.to_thread.run_sync(unmark, list(received))


def _too_large(max_request_bytes: int, max_file_bytes: int, batch: bool) -> PayloadTooLarge:
    """The 413 of a request past its limit. A single-file upload's limit is its file's
    (DOCINGEST_MAX_UPLOAD_BYTES), the one its client knows: the request's adds the framing.
    A batch's is the whole batch's (DOCINGEST_MAX_BATCH_BYTES); told apart by the route, not
    by the numbers (a batch limit equal to a file's plus the framing was named the file's)."""
    if batch:
        return PayloadTooLarge(
            f"the batch is larger than the {max_request_bytes}-byte limit for a whole batch; "
            "send its files in several batches"
        )
    return PayloadTooLarge(f"the upload is larger than the {max_file_bytes}-byte limit for a file")


def request_limit(max_file_bytes: int) -> int:
    """The whole-request limit for a single-file upload: the file plus multipart framing."""
    return max_file_bytes + _MULTIPART_OVERHEAD
