"""One JSON shape for every error: `{"detail": ..., "code": ...}`."""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import Any

from fastapi import FastAPI, Request, WebSocket, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg.errors import UndefinedColumn, UndefinedTable
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.routing import Match

from api.schemas import ErrorBody
from core.errors import DocingestError

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "service_unavailable",
}


def _body(detail: str, code: str) -> dict[str, str]:
    return {"detail": detail, "code": code}


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DocingestError)
    if exc.status_code == 500:
        # The deployment's fault (a configuration_error: a CUDA device or a model the API
        # cannot load), not the client's: said to its operator too, whose access log read only
        # "500 Internal Server Error".
        log.error("%s on %s %s: %s", exc.code, _method(request), request.url.path, exc.detail)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return JSONResponse(_body(exc.detail, exc.code), status_code=exc.status_code, headers=headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400:
        # FastAPI's only 400 here: a JSON body it cannot decode (not UTF-8). A body that is not
        # JSON at all is a 422 (RequestValidationError): to a client both are the same mistake.
        detail = f"body: {exc.detail}; send a UTF-8 JSON object"
        return JSONResponse(_body(detail, "invalid_request"), status_code=422)
    if exc.status_code == 404:
        # The router's, for a path no route takes (the routes' own 404s are NotFound).
        return JSONResponse(_body(_no_route(request), "not_found"), status_code=404)
    if exc.status_code == 405:
        return _method_not_allowed(request)
    code = _HTTP_CODES.get(exc.status_code, "error")
    return JSONResponse(
        _body(str(exc.detail), code), status_code=exc.status_code, headers=exc.headers
    )


def _no_route(request: Request) -> str:
    """What to do of a path no route takes: it was "Not Found", as for an unknown id."""
    path = request.url.path
    shown = path if len(path) <= 200 else f"{path[:200]}…"
    if path.endswith("/") and _takes(request, path=path.rstrip("/")):
        return f"No route at {shown}: drop the trailing slash"
    if _takes(request, type="websocket"):
        return f"{shown} takes a WebSocket: connect with ws:// (or wss://), not HTTP"
    return f"No route at {shown}: the routes are listed at /docs"


def _takes(request: Request, **changes: str) -> bool:
    """Whether a route takes the request with these changes of its scope (method, path)."""
    scope = {**request.scope, **changes}
    return any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes)


# The methods a 405 looks the path up with (HEAD goes with GET: api/head_requests.py).
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _method_not_allowed(request: Request) -> JSONResponse:
    """The 405 naming every method the path takes, in `Allow` and in words. Starlette's named
    those of the first route on the path only: `PUT /agents` said `Allow: POST`, though
    `GET /agents` lists the agents, and its detail was "Method Not Allowed"."""
    allowed = [method for method in _METHODS if _takes(request, method=method)]
    if "GET" in allowed:
        allowed.insert(1, "HEAD")
    detail = f"{request.method} is not allowed here; this path takes {', '.join(allowed)}"
    return JSONResponse(
        _body(detail, "method_not_allowed"),
        status_code=405,
        headers={"Allow": ", ".join(allowed)},
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    not_json = _not_json(request)
    problems = [_problem(error, not_json) for error in exc.errors()]
    return JSONResponse(_body("; ".join(problems), "invalid_request"), status_code=422)


def _problem(error: Any, not_json: str | None) -> str:
    """One validation error in words: where, then what. A body that is not JSON says where
    its JSON breaks and why (it was `body.18: JSON decode error`, the 18 unexplained)."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "JSON decode error")
        return f"body: not valid JSON at character {loc[-1] if len(loc) > 1 else 0}: {reason}"
    if loc == ("body",) and not_json:
        return f"body: {not_json}"
    return f"{'.'.join(str(part) for part in loc)}: {error.get('msg', 'invalid')}"


def _not_json(request: Request) -> str | None:
    """What to say of a body sent with a media type other than JSON, which FastAPI never
    parses: `curl -d '{"query": …}'` (a form's type) was told "Input should be a valid
    dictionary" of the object it sent."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    maintype, _, subtype = media_type.partition("/")
    if not media_type or (
        maintype == "application" and (subtype == "json" or subtype.endswith("+json"))
    ):
        return None
    return (
        f"the body was sent as {media_type[:100]}, which is not read: send a JSON object "
        "with `Content-Type: application/json`"
    )


# The 503 of a database out of reach; a WebSocket route closes 1011 with it (api/routes/live.py).
DATABASE_UNAVAILABLE = "The database is unavailable; try again shortly"


async def _database_error(request: Request, exc: Exception) -> Any:  # a Response, or None
    log.warning("database unavailable on %s %s: %s", _method(request), request.url.path, exc)
    return await _unavailable(request, DATABASE_UNAVAILABLE)


# The 503 of a database whose schema is older than the code (an API started before
# `docingest migrate`, or a release deployed before its migration); /health says it too.
SCHEMA_BEHIND = "its schema is not this release's: run `docingest migrate`"


async def _schema_error(request: Request, exc: Exception) -> Any:  # a Response, or None
    assert isinstance(exc, ProgrammingError)
    if not isinstance(exc.orig, UndefinedTable | UndefinedColumn):
        if isinstance(request, WebSocket):
            raise exc  # left to the server, as the other unexpected errors of a WebSocket
        return await _unexpected_error(request, exc)
    log.error("database schema behind on %s %s: %s", _method(request), request.url.path, exc)
    return await _unavailable(request, f"The database is unavailable: {SCHEMA_BEHIND}")


async def _unavailable(request: Request, detail: str) -> JSONResponse | None:
    """The 503 saying `detail`; for a WebSocket, its close with 1011 and `detail` (None)."""
    if await _closed_websocket(request, detail):
        return None
    return JSONResponse(_body(detail, "service_unavailable"), status_code=503)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # HTTP only: Starlette leaves a WebSocket route's other errors to the server (logged, 1006).
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        _body("Internal error; it has been logged", "internal_error"), status_code=500
    )


def _method(connection: HTTPConnection) -> str:
    return str(connection.scope.get("method", "WEBSOCKET"))


async def _closed_websocket(connection: HTTPConnection, reason: str) -> bool:
    """Starlette hands a WebSocket route's errors of the handled types to these handlers too,
    with the WebSocket (no method, no response to send): it is closed with 1011 and `reason`.
    Before, the handler failed on `request.method` and the client saw a bare 1006."""
    if not isinstance(connection, WebSocket):
        return False
    with suppress(RuntimeError):  # already closed, or never accepted (uvicorn answers 403)
        await connection.close(code=status.WS_1011_INTERNAL_ERROR, reason=reason)
    return True


def _document_error_bodies(schema: dict[str, Any]) -> None:
    """Make the schema say what the handlers send: every 422 is an ErrorBody (FastAPI documents
    its own list of problems, which `_validation_error` never sends), and any operation may
    answer 503 when the database or Temporal is down."""
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    unavailable = {"description": "The database or Temporal is unavailable", "content": error_body}
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"]["content"] = error_body
            responses.setdefault("503", unavailable)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault("ErrorBody", ErrorBody.model_json_schema())
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def _install_openapi_errors(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            _document_error_bodies(generate())  # generate() caches it in app.openapi_schema
        assert app.openapi_schema is not None
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    _install_openapi_errors(app)
    app.add_exception_handler(Exception, _unexpected_error)
    # Connection-level failures (server down, restarting): a 503, not a 500.
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(InterfaceError, _database_error)
    app.add_exception_handler(ProgrammingError, _schema_error)
    app.add_exception_handler(DocingestError, _domain_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
