"""A bound on JSON request bodies, checked before anything else of the request.

FastAPI reads a route's JSON body whole, into memory, before it solves the route's
dependencies, the API key check among them: without a bound, a client with no key could make
the API hold a body of any size (a 200 MiB one took 200 MiB) until it ended, and only then
hear 401. A body refused here is still a 401 for a caller without a valid key (checked from
the headers alone). The upload routes stream their bodies under their own limits instead.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from api.deps import authenticate_first
from api.schemas import ErrorBody
from core.errors import PayloadTooLarge

# A search body (a 2000-character query, every character escaped) is under 30 KiB.
MAX_JSON_BODY_BYTES = 64 * 1024


async def read_small_body(request: Request, max_bytes: int = MAX_JSON_BODY_BYTES) -> None:
    """Read the body into the request (as FastAPI's own read would), or 413 once it is larger
    than `max_bytes`, by Content-Length or while it arrives."""
    too_large = PayloadTooLarge(f"the request body is larger than the {max_bytes}-byte limit")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    # Where Request.body() keeps what it read (FastAPI's docs override it the same way).
    request._body = bytes(body)


class JsonBodyRoute(APIRoute):
    """A route whose body is bounded by `MAX_JSON_BODY_BYTES`."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        # Any request to the route may be answered 413: the schema says so, as it does for the
        # upload routes' own limits.
        responses = {413: {"model": ErrorBody}, **(kwargs.pop("responses", None) or {})}
        super().__init__(path, endpoint, responses=responses, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            try:
                await read_small_body(request)
                return await handle(request)
            except (PayloadTooLarge, RequestValidationError, HTTPException):
                # Both come before FastAPI checks the key (a body too large, one it cannot
                # parse): a caller with no key heard of its body, not that it needs a key.
                await authenticate_first(request)
                raise

        return bounded
