"""The bare endpoint figure 3 compares the real upload with: FastAPI under uvicorn, one
process, that only streams a multipart body to a file.

It parses the body the way api/upload_stream.py does (python_multipart's MultipartParser fed
from `request.stream()`, callbacks that only queue events, file writes in a worker thread,
flushed every MiB) and nothing else: no auth, no database, no hashing, no sniffing, no
Temporal. Run it with `python -m benchmarks.bare_upload --port P --directory D`.
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import anyio
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from python_multipart.multipart import MultipartParser, parse_options_header

from api.app import HTTP_PARSER

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

FLUSH_BYTES = 1024 * 1024


class FileSink:
    """Parser callbacks that queue the `file` part's bytes for the async side to write."""

    def __init__(self) -> None:
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.size = 0

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_data": self._data}

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.pending.append(data[start:end])
        self.pending_bytes += end - start
        self.size += end - start

    async def flush(self, out: BinaryIO) -> None:
        data = b"".join(self.pending)
        self.pending.clear()
        self.pending_bytes = 0
        if data:
            await anyio.to_thread.run_sync(out.write, data)


def create_bare_app(directory: Path) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/upload", status_code=202)
    async def receive(request: Request) -> JSONResponse:
        _, params = parse_options_header(request.headers.get("content-type", ""))
        sink = FileSink()
        parser = MultipartParser(params[b"boundary"], sink.callbacks())
        path = directory / uuid.uuid4().hex
        out: BinaryIO = await anyio.to_thread.run_sync(path.open, "wb")
        try:
            async for data in request.stream():
                parser.write(data)
                if sink.pending_bytes >= FLUSH_BYTES:
                    await sink.flush(out)
            parser.finalize()
            await sink.flush(out)
        finally:
            await anyio.to_thread.run_sync(out.close)
        return JSONResponse({"size_bytes": sink.size}, status_code=202)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--directory", type=Path, required=True)
    args = parser.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    uvicorn.run(
        create_bare_app(args.directory),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        http=HTTP_PARSER,  # the API's parser: the comparison is about what the API adds
    )


if __name__ == "__main__":
    main()
