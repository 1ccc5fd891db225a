"""Why a document cannot be ingested, and how the activity shells tell Temporal."""

from __future__ import annotations

from temporalio.exceptions import ApplicationError

from workflows.types import FailureType


class RejectedDocument(Exception):
    """A permanent problem with the file itself: retrying can never help."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def rejected_to_failure(rejected: RejectedDocument) -> ApplicationError:
    return ApplicationError(rejected.message, type=rejected.error_type, non_retryable=True)


def staging_missing(what: str) -> ApplicationError:
    """The staged input of a step vanished: the task ends `error`, retries cannot bring it back."""
    return ApplicationError(
        f"{what} is no longer in the staging store",
        type=FailureType.STAGING_MISSING,
        non_retryable=True,
    )
