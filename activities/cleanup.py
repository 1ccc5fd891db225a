"""Cleanup: remove a finished task's staging folder."""

from __future__ import annotations

from temporalio import activity

from core.staging import StagingStore
from workflows.types import CLEANUP


class CleanupActivities:
    def __init__(self, staging: StagingStore) -> None:
        self.staging = staging

    @activity.defn(name=CLEANUP)
    def cleanup(self, task_id: str) -> None:
        """Remove everything staged for `task_id`; a second run finds nothing and succeeds."""
        self.staging.remove_task(task_id)
