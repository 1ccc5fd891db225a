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


def staging_damaged(what: str, size_bytes: int, expected_bytes: int) -> ApplicationError:
    """A staged input is not what was received (cut short or changed by a crash of its disk):
    ingested, its chunks would be a part of the file, or other text, and no one would know."""
    differs = (
        f"{size_bytes} of its {expected_bytes} bytes are there"
        if size_bytes != expected_bytes
        else "its bytes differ from those received (SHA-256)"
    )
    return ApplicationError(
        f"{what} in the staging store is damaged: {differs}",
        type=FailureType.STAGING_MISSING,
        non_retryable=True,
    )


def staging_missing(what: str) -> ApplicationError:
    """The staged input of a step vanished: the task ends `error`, retries cannot bring it back."""
    return ApplicationError(
        f"{what} is no longer in the staging store",
        type=FailureType.STAGING_MISSING,
        non_retryable=True,
    )
