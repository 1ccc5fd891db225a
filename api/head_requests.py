"""HEAD answered as GET, without the body (RFC 9110: a server must support GET and HEAD).

Starlette's own routes take HEAD wherever they take GET; FastAPI's take only the methods they
declare, so `HEAD /health`, the probe of many load balancers and uptime monitors, was a 405.
uvicorn sends no body for a HEAD request (it reads the method of its own scope), and its access
log still says HEAD.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


class HeadAsGet:
    """ASGI middleware: an HTTP HEAD request goes to the app as the GET of the same URL."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)
