"""One start of an IngestDocument workflow: its memo, search attributes and Web UI texts."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta

from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import WorkflowAlreadyStartedError

from core.temporal import AGENT_ID, BATCH_ID, INGEST_STATUS, OWNER_ID, markdown_text
from workflows.ingest import IngestDocument
from workflows.types import MEMO_PROGRESS, MEMO_TASK, IngestTask, Status, TaskProgress

# How long a workflow start may wait for Temporal's answer.
START_TIMEOUT = timedelta(seconds=5)


async def start_workflow(
    temporal: Client,
    task_queue: str,
    task: IngestTask,
    owner: uuid.UUID,
    queued_at: str,
    reuse: WorkflowIDReusePolicy,
    conflict: WorkflowIDConflictPolicy,
) -> None:
    """Start IngestDocument with id = task id, queued since `queued_at` (ISO, UTC)."""
    queued = TaskProgress.queued(task, queued_at)
    attributes = [
        SearchAttributePair(OWNER_ID, str(owner)),
        SearchAttributePair(AGENT_ID, task.agent_id),
        SearchAttributePair(INGEST_STATUS, Status.QUEUED),
    ]
    if task.batch_id:
        attributes.append(SearchAttributePair(BATCH_ID, task.batch_id))
    await temporal.start_workflow(
        IngestDocument.run,
        task,
        id=task.task_id,
        task_queue=task_queue,
        id_reuse_policy=reuse,
        id_conflict_policy=conflict,
        memo={MEMO_PROGRESS: dataclasses.asdict(queued), MEMO_TASK: dataclasses.asdict(task)},
        search_attributes=TypedSearchAttributes(attributes),
        static_summary=f"{markdown_text(task.filename)} → agent {task.agent_id}",
        static_details=_details(task, owner),
        rpc_timeout=START_TIMEOUT,
    )


async def start_queued_workflow(
    temporal: Client, task_queue: str, task: IngestTask, owner: uuid.UUID, queued_at: str
) -> None:
    """Start the workflow of an acknowledged upload, or find it started: its task id is new
    to this upload, so a run of that id, running (USE_EXISTING) or closed (REJECT_DUPLICATE
    refuses a second), is the one an earlier start of it made."""
    try:
        await start_workflow(
            temporal, task_queue, task, owner, queued_at,
            WorkflowIDReusePolicy.REJECT_DUPLICATE, WorkflowIDConflictPolicy.USE_EXISTING,
        )  # fmt: skip
    except WorkflowAlreadyStartedError:
        return  # it ran, and closed already


def _details(task: IngestTask, owner: uuid.UUID) -> str:
    """The workflow's static details in the Web UI (Markdown)."""
    lines = [
        f"**{markdown_text(task.filename)}** ({task.format}, {task.size_bytes} bytes)",
        f"agent `{task.agent_id}` · owner `{owner}` · sha256 `{task.sha256[:16]}…`",
        f"chunks of {task.chunk_size} characters, overlap {task.chunk_overlap}",
    ]
    if task.batch_id:
        lines.append(f"batch `{task.batch_id}`")
    return "\n\n".join(lines)
