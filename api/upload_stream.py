"""Stream a multipart upload straight to the staging store: bounded memory, size and hash."""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass, field
from typing import BinaryIO

import anyio
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from core.errors import InvalidRequest, PayloadTooLarge
from core.staging import ORIGINAL, StagingStore

FILE_FIELD = "file"
_FLUSH_BYTES = 1024 * 1024
_MAX_OTHER_FIELD_BYTES = 64 * 1024
_MULTIPART_OVERHEAD = 64 * 1024
_MAX_FILENAME = 255


@dataclass
class StagedUpload:
    filename: str
    size_bytes: int
    sha256: str


def clean_filename(raw: str) -> str:
    """A display name: no directories, no control characters, at most 255 characters."""
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch) != "Cc")
    name = name.strip().strip(".") or "upload"
    return name[:_MAX_FILENAME]


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    field_name: str | None = None
    filename: str | None = None


class _FileReceiver:
    """Parser callbacks; file bytes queue up in `pending` for the async side to write."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.part = _Part()
        self._header_field = b""
        self._header_value = b""
        self.filename: str | None = None
        self.files_seen = 0
        self.in_file = False
        self.size = 0
        self.other_bytes = 0
        self.hasher = hashlib.sha256()
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.field_names: list[str] = []

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self.part = _Part()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self.part.headers[self._header_field.lower()] = self._header_value
        self._header_field = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        filename = options.get(b"filename")
        self.part.field_name = name.decode("utf-8", "replace") if name is not None else None
        self.field_names.append(self.part.field_name or "")
        if self.part.field_name != FILE_FIELD:
            return
        self.files_seen += 1
        if self.files_seen > 1:
            raise InvalidRequest("send exactly one file per upload in the `file` field")
        self.in_file = True
        self.filename = clean_filename(filename.decode("utf-8", "replace") if filename else "")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        piece = data[start:end]
        if not self.in_file:
            self.other_bytes += len(piece)
            if self.other_bytes > _MAX_OTHER_FIELD_BYTES:
                raise InvalidRequest("form fields other than `file` are too large")
            return
        self.size += len(piece)
        if self.size > self.max_bytes:
            raise PayloadTooLarge(f"the file is larger than the {self.max_bytes}-byte upload limit")
        self.hasher.update(piece)
        self.pending.append(piece)
        self.pending_bytes += len(piece)

    def _part_end(self) -> None:
        self.in_file = False

    def take_pending(self) -> bytes:
        data = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        return data


def _boundary(request: Request) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidRequest(
            "send the document as multipart/form-data with the file in the `file` field"
        )
    return boundary


def _check_declared_length(request: Request, max_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + _MULTIPART_OVERHEAD:
        raise PayloadTooLarge(f"the file is larger than the {max_bytes}-byte upload limit")


async def receive_upload(
    request: Request, staging: StagingStore, task_id: str, max_bytes: int
) -> StagedUpload:
    """Write the `file` part to `<task_id>/original`; the caller removes it on any error."""
    _check_declared_length(request, max_bytes)
    receiver = _FileReceiver(max_bytes)
    parser = MultipartParser(_boundary(request), receiver.callbacks())  # type: ignore[arg-type]
    sink: BinaryIO = await anyio.to_thread.run_sync(staging.open_write, task_id, ORIGINAL)
    try:
        try:
            async for data in request.stream():
                parser.write(data)
                if receiver.pending_bytes >= _FLUSH_BYTES:
                    await anyio.to_thread.run_sync(sink.write, receiver.take_pending())
            parser.finalize()
        except ClientDisconnect as exc:
            raise InvalidRequest("the client disconnected before the upload finished") from exc
        except FormParserError as exc:
            raise InvalidRequest(f"the multipart body is malformed: {exc}") from exc
        await anyio.to_thread.run_sync(sink.write, receiver.take_pending())
    finally:
        await anyio.to_thread.run_sync(sink.close)
    if receiver.files_seen == 0 or receiver.filename is None:
        seen = ", ".join(repr(name) for name in receiver.field_names) or "none"
        raise InvalidRequest(f"no file in the `file` field (form fields received: {seen})")
    return StagedUpload(receiver.filename, receiver.size, receiver.hasher.hexdigest())
