"""Temporal Schedules the worker keeps in place at start-up."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from core.settings import Settings
from workflows.staging_cleanup import CleanStaging

STAGING_SCHEDULE_ID = "docingest-staging-cleanup"
DEFAULT_TASK_QUEUE = Settings.model_fields["task_queue"].default
STAGING_SWEEP_EVERY = timedelta(hours=1)
_RPC_TIMEOUT = timedelta(seconds=10)
_PURPOSE = (
    "Removes the staging folders of upload tasks that finished (or vanished from Temporal) "
    "longer ago than DOCINGEST_STAGING_TTL; running and recent tasks are never touched."
)


def staging_schedule_id(settings: Settings) -> str:
    """One schedule per deployment, told apart by its main task queue: deployments sharing a
    namespace (each its own staging store) must not take over each other's sweep. The default
    queue keeps the id the README names."""
    if settings.task_queue == DEFAULT_TASK_QUEUE:
        return STAGING_SCHEDULE_ID
    return f"{STAGING_SCHEDULE_ID}-{settings.task_queue}"


def staging_schedule(settings: Settings) -> Schedule:
    """CleanStaging every hour on the main task queue; a sweep still running skips the next."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            CleanStaging.run,
            # Each run's id is this one plus the time it was scheduled for.
            id=staging_schedule_id(settings),
            task_queue=settings.task_queue,
            static_summary="Staging sweep: remove the staging of long-finished uploads",
            static_details=_PURPOSE,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=STAGING_SWEEP_EVERY)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(note=_PURPOSE),
    )


async def ensure_staging_schedule(client: Client, settings: Settings) -> ScheduleHandle:
    """Create the staging sweep's schedule, or bring an existing one in line; every worker
    runs this at start-up, so it changes nothing when the schedule is already as wanted."""
    wanted = staging_schedule(settings)
    schedule_id = staging_schedule_id(settings)
    if schedule_id != STAGING_SCHEDULE_ID:
        await _retire_shared_schedule(client, settings)
    try:
        return await client.create_schedule(
            schedule_id,
            wanted,
            memo={"purpose": _PURPOSE, "every": str(STAGING_SWEEP_EVERY)},
            rpc_timeout=_RPC_TIMEOUT,
        )
    except ScheduleAlreadyRunningError:
        handle = client.get_schedule_handle(schedule_id)
    await handle.update(lambda current: _update_towards(current, wanted), rpc_timeout=_RPC_TIMEOUT)
    return handle


async def _retire_shared_schedule(client: Client, settings: Settings) -> None:
    """Delete the schedule that releases before per-queue ids kept under the shared id for
    this deployment (its sweep starts on this task queue): left in place, it swept beside the
    new one. A schedule under that id for another task queue is another deployment's."""
    handle = client.get_schedule_handle(STAGING_SCHEDULE_ID)
    try:
        action = (await handle.describe(rpc_timeout=_RPC_TIMEOUT)).schedule.action
        if (
            isinstance(action, ScheduleActionStartWorkflow)
            and action.task_queue == settings.task_queue
        ):
            await handle.delete(rpc_timeout=_RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:  # none, or another worker deleted it first
            raise


def _update_towards(current: ScheduleUpdateInput, wanted: Schedule) -> ScheduleUpdate | None:
    """None (no update) when what the schedule does already matches; an operator's pause and
    note are kept either way."""
    existing = current.description.schedule
    if _same_work(existing, wanted):
        return None
    return ScheduleUpdate(schedule=dataclasses.replace(wanted, state=existing.state))


def _same_work(existing: Schedule, wanted: Schedule) -> bool:
    action, target = existing.action, wanted.action
    assert isinstance(target, ScheduleActionStartWorkflow)
    return (
        isinstance(action, ScheduleActionStartWorkflow)
        and (action.workflow, action.id, action.task_queue, len(action.args))
        == (target.workflow, target.id, target.task_queue, len(target.args))
        and list(existing.spec.intervals) == list(wanted.spec.intervals)
        and existing.policy.overlap == wanted.policy.overlap
    )
