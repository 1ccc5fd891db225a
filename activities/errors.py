"""Why a document cannot be ingested, and how the activity shells tell Temporal."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from workflows.types import FailureType


class RejectedDocument(Exception):
    """A permanent problem with the file itself: retrying can never help."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def rejected_to_failure(rejected: RejectedDocument) -> ApplicationError:
    return refusal(rejected.message, rejected.error_type)


def refusal(message: str, error_type: str) -> ApplicationError:
    """The task's file cannot be ingested (the task ends `failed`): never retried, and benign
    to the SDK, which then logs it at DEBUG instead of a WARNING with a 30-line traceback,
    read by an operator as a crash; one INFO line says what was refused and why."""
    if activity.in_activity():
        activity.logger.info("refused (%s): %s", error_type, message)
    return ApplicationError(
        message, type=error_type, non_retryable=True, category=ApplicationErrorCategory.BENIGN
    )


def staging_missing(what: str) -> ApplicationError:
    """The staged input of a step vanished: the task ends `error`, retries cannot bring it back."""
    return ApplicationError(
        f"{what} is no longer in the staging store",
        type=FailureType.STAGING_MISSING,
        non_retryable=True,
    )
