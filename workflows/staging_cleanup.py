"""CleanStaging: orchestration only. One activity removes the staging of long-finished tasks.

A Temporal Schedule (`worker/schedules.py`) starts it every hour; the activity decides per
folder from Temporal's word on the task and the folder's own age (`DOCINGEST_STAGING_TTL`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

CLEAN_STAGING_WORKFLOW = "CleanStaging"
CLEAN_STAGING = "clean_staging"


@dataclass
class StagingCleanupResult:
    """How many task folders one pass kept and removed."""

    kept: int
    removed: int


# Every pass is a full sweep, and the next hour's run retries anyway: a few attempts suffice.
_SWEEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=3,
)


@workflow.defn(name=CLEAN_STAGING_WORKFLOW)
class CleanStaging:
    """Sweep the staging store once; the result and the UI details say what it did."""

    @workflow.run
    async def run(self) -> StagingCleanupResult:
        workflow.set_current_details("sweeping the staging store")
        result: StagingCleanupResult = await workflow.execute_activity(
            CLEAN_STAGING,
            result_type=StagingCleanupResult,
            start_to_close_timeout=timedelta(minutes=20),
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=_SWEEP_RETRY,
        )
        workflow.set_current_details(
            f"removed {result.removed} expired staging folders, kept {result.kept}"
        )
        return result
