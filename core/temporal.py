"""Temporal client construction and the search attributes docingest filters on."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionStatus,
    WorkflowHistoryEventFilterType,
)
from temporalio.common import SearchAttributeKey

from workflows.types import FailureType

OWNER_ID = SearchAttributeKey.for_keyword("OwnerId")
AGENT_ID = SearchAttributeKey.for_keyword("AgentId")
INGEST_STATUS = SearchAttributeKey.for_keyword("IngestStatus")
BATCH_ID = SearchAttributeKey.for_keyword("BatchId")
SEARCH_ATTRIBUTES = (OWNER_ID, AGENT_ID, INGEST_STATUS, BATCH_ID)

# How long a process waits for Temporal at start-up: a worker started beside the server (compose,
# `make dev`) finds nothing listening yet, or a dev server that listens before its frontend is
# healthy ("Frontend is not healthy yet" — seen when a machine is busy).
CONNECT_PATIENCE_S = 60.0

log = logging.getLogger(__name__)


class TemporalUnreachable(RuntimeError):
    """Temporal did not answer at the configured address within the patience."""


async def connect(
    address: str, namespace: str, *, patience_s: float = CONNECT_PATIENCE_S
) -> Client:
    """A client of `namespace` at `address`, retrying a server that is not up (yet) until
    `patience_s` have passed; then TemporalUnreachable names the address and the last error."""
    deadline = time.monotonic() + patience_s
    delay = 0.1
    while True:
        try:
            return await Client.connect(address, namespace=namespace)
        except RuntimeError as exc:  # the SDK's connect failure: "Failed client connect: …"
            if time.monotonic() + delay > deadline:
                raise TemporalUnreachable(
                    f"Temporal at {address} did not answer within {patience_s:g} s: {exc}"
                ) from exc
            log.info("waiting for Temporal at %s: %s", address, exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def register_search_attributes(client: Client) -> None:
    """Add our search attributes where missing; safe to run on every start-up."""
    service = client.operator_service
    listed = await service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    missing = {
        key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
        for key in SEARCH_ATTRIBUTES
        if key.name not in listed.custom_attributes
    }
    if missing:
        await service.add_search_attributes(
            AddSearchAttributesRequest(search_attributes=missing, namespace=client.namespace)
        )


# What a backslash makes literal in the Markdown the Web UI renders a workflow's summary and
# details as: the characters that start emphasis, code, links, HTML, lists, headings and
# dashes. The UI's renderer keeps the backslash before other punctuation, so only these.
_MARKDOWN_MARKUP = re.compile(r"([\\`*_{}\[\]()#+\-.!|&<>~])")


def markdown_text(text: str) -> str:
    """`text` (a file name, a message quoting one) as Markdown the Web UI shows as written:
    `__init__.py` stays no bold `init`, `1. Intro.pdf` no list, `[x](https:…)` no link."""
    return _MARKDOWN_MARKUP.sub(r"\\\1", text)


def iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC with a `Z`, the form every timestamp of the API takes."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# A run stopped from outside, as the task's error type says it (its memo cannot know of it).
STOPPED_FROM_OUTSIDE = {
    WorkflowExecutionStatus.TERMINATED: FailureType.TERMINATED,
    WorkflowExecutionStatus.TIMED_OUT: FailureType.TIMEOUT,
}
REASON_MAX = 500  # characters of an operator's terminate reason quoted to the user
_NO_REASON = "terminated by user via frontend"  # what the server records when none was given


async def termination_reason(
    client: Client, execution: WorkflowExecution, rpc_timeout: timedelta
) -> str:
    """The reason given with the terminate request of a terminated run, read from its
    history's close event (neither the memo nor visibility has it); "" when none was given.
    Raises RPCError when the history cannot be read."""
    handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
    async for event in handle.fetch_history_events(
        event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT, rpc_timeout=rpc_timeout
    ):
        if event.HasField("workflow_execution_terminated_event_attributes"):
            reason = event.workflow_execution_terminated_event_attributes.reason
            return "" if reason == _NO_REASON else " ".join(reason.split())[:REASON_MAX]
    return ""
