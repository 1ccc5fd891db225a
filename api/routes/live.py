"""Live progress of one upload over a WebSocket, read from Temporal like `/upload/status`.

The workflow mirrors its progress into its memo on every change (once per embed batch
too), so a `describe()` after each change sees every step without a worker. Each change is
an event of the workflow's history: a long poll of the history wakes the look (and costs
the server nothing while the task waits). The sockets of one owner on one task share that
polling (api/status_feeds.py): at most one describe() per interval however many watch it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import anyio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.websockets import WebSocketState
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest
from temporalio.client import Client

from api.deps import Resources, one_authorization
from api.errors import DATABASE_UNAVAILABLE
from api.schemas import TaskStatus
from api.status_feeds import Look
from api.task_status import find_task
from api.temporal_errors import temporal_unavailable_as_503
from core.errors import ServiceUnavailable, Unauthorized
from core.keys import owner_for_key
from workflows.types import Status

router = APIRouter(prefix="/ws", tags=["live"])

# RFC 6455 allows 123 bytes of close reason.
_MAX_REASON_BYTES = 123


class CloseCode:
    NORMAL = 1000
    SERVER_ERROR = 1011
    UNAUTHORIZED = 4401
    NOT_FOUND = 4404


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


def presented_key(websocket: WebSocket) -> str | None:
    """The key of `Authorization: Bearer <key>`, else of `?token=<key>` (browsers cannot set
    headers on a WebSocket); None when neither is usable. Another scheme's header (the Basic
    credentials a browser sends by itself behind a password-protected proxy) is not ours: it
    hid the token, and the query form could not work there.

    Unauthorized when `token` is given more than once: the last one was read, where an HTTP
    route refuses any parameter given twice (api/query_params.py); or `Authorization`."""
    header = one_authorization(websocket)
    if header is not None:
        scheme, _, key = header.partition(" ")
        if scheme.lower() == "bearer":
            return key.strip() or None
    tokens = websocket.query_params.getlist("token")
    if len(tokens) > 1:
        raise Unauthorized(f"?token= given {len(tokens)} times: send one key")
    token = "".join(tokens).strip()
    return token or None


async def websocket_owner(websocket: WebSocket, resources: Resources) -> uuid.UUID | None:
    """The owner of the presented key, or None when it is missing or not valid; Unauthorized
    when it is malformed (`presented_key`)."""
    key = presented_key(websocket)
    if key is None:
        return None
    with _database_unavailable():
        async with resources.sessionmaker() as session:
            return await owner_for_key(session, key)


@contextmanager
def _database_unavailable() -> Iterator[None]:
    """A database out of reach as ServiceUnavailable, which the route closes 1011 with: the
    app's handler of those errors answers HTTP."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise ServiceUnavailable(DATABASE_UNAVAILABLE) from exc


@router.websocket("/upload/{task_id}")
async def upload_progress(websocket: WebSocket, task_id: str) -> None:
    """Send the task's status now and on every change; close 1000 once it is final."""
    resources: Resources = websocket.app.state.resources
    # Accept first: a close before the handshake reaches the client as a bare HTTP 403,
    # without the 4401/4404 code that tells it why.
    await websocket.accept()
    try:
        owner = await websocket_owner(websocket, resources)
    except ServiceUnavailable as exc:
        # The app's exception handlers answer HTTP only: raised, it was a bare 1006.
        await _close(websocket, Close(CloseCode.SERVER_ERROR, exc.detail))
        return
    except Unauthorized as exc:
        await _close(websocket, Close(CloseCode.UNAUTHORIZED, exc.detail))
        return
    if owner is None:
        await _close(
            websocket,
            Close(
                CloseCode.UNAUTHORIZED,
                "Missing or invalid API key: send `Authorization: Bearer <key>` or ?token=<key>",
            ),
        )
        return
    outcome: Close | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(_cancel_on_disconnect, websocket, group.cancel_scope)
        outcome = await _follow(websocket, resources, owner, task_id)
        group.cancel_scope.cancel()
    if outcome is not None:
        await _close(websocket, outcome)


async def _follow(
    websocket: WebSocket, resources: Resources, owner: uuid.UUID, task_id: str
) -> Close | None:
    """Send each new status until a final one; None when the client went away."""
    seen = 0
    poll = partial(current_status, resources, owner, task_id)
    changed = WorkflowChanges(resources.temporal, task_id).changed
    async with resources.feeds.follow(owner, task_id, poll, changed) as feed:
        while True:
            seen, look = await feed.after(seen)
            if isinstance(look, TaskStatus):
                try:
                    await websocket.send_json(look.model_dump(mode="json"))
                except WebSocketDisconnect:
                    return None
            close = _close_after(look, task_id)
            if close is not None:
                return close


def _close_after(look: Look, task_id: str) -> Close | None:
    """How the socket closes after this look; None while the task goes on."""
    if isinstance(look, ServiceUnavailable):
        return Close(CloseCode.SERVER_ERROR, look.detail)
    if look is None:
        return Close(CloseCode.NOT_FOUND, f"Task {task_id[:60]!r} not found")
    if look.status in Status.TERMINAL:
        return Close(CloseCode.NORMAL, f"Task {look.status}")
    return None


async def current_status(resources: Resources, owner: uuid.UUID, task_id: str) -> TaskStatus | None:
    """What `GET /upload/status/{task_id}` answers, or None where it answers 404."""
    with _database_unavailable():
        async with resources.sessionmaker() as session:  # it connects only to read a record
            found = await find_task(resources.temporal, session, owner, task_id)
    return None if found is None else found[0]


class WorkflowChanges:
    """Waits for the task's workflow to record something new: every change of its status is
    an event of its history (the memo's upsert, the run's end), which a long poll of the
    history returns as it is written."""

    def __init__(self, temporal: Client, task_id: str) -> None:
        self._temporal = temporal
        self._task_id = task_id
        self._page_token = b""  # where the history read so far ends; b"": at its start

    async def changed(self) -> None:
        """Returns once events were written since the last call returned; the first call
        reads the history so far, and returns at once."""
        while True:
            request = GetWorkflowExecutionHistoryRequest(
                namespace=self._temporal.namespace,
                execution=WorkflowExecution(workflow_id=self._task_id),
                next_page_token=self._page_token,
                wait_new_event=True,
            )
            try:
                with temporal_unavailable_as_503("Cannot follow the task"):
                    # Not retried: a server that went away ends the wait, and the look that
                    # follows says whether it can be reached (1011 if not).
                    page = await self._temporal.workflow_service.get_workflow_execution_history(
                        request, retry=False
                    )
            except ServiceUnavailable:
                self._page_token = b""
                return
            self._page_token = page.next_page_token  # b"" once its run ended
            if page.history.events or not self._page_token:
                return
            # A long poll that expired with nothing new: wait again.


async def _cancel_on_disconnect(websocket: WebSocket, scope: anyio.CancelScope) -> None:
    """Stop polling as soon as the client leaves, however long the task stays unchanged."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        continue  # clients have nothing to say here; what they send is ignored
    scope.cancel()


async def _close(websocket: WebSocket, close: Close) -> None:
    if websocket.client_state is WebSocketState.DISCONNECTED:
        return  # the client left first: there is nobody to tell
    reason = close.reason.encode()[:_MAX_REASON_BYTES].decode(errors="ignore")
    try:
        await websocket.close(close.code, reason)
    except WebSocketDisconnect:
        return  # it left while we were closing
