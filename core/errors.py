"""Domain errors: one base with a machine code and an HTTP status, rendered by the API."""

from __future__ import annotations


class DocingestError(Exception):
    """Base of every error a user can be told about."""

    code = "error"
    status_code = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Unauthorized(DocingestError):
    code = "unauthorized"
    status_code = 401


class NotFound(DocingestError):
    code = "not_found"
    status_code = 404


class Conflict(DocingestError):
    code = "conflict"
    status_code = 409


class PayloadTooLarge(DocingestError):
    code = "payload_too_large"
    status_code = 413


class UnsupportedMediaType(DocingestError):
    code = "unsupported_media_type"
    status_code = 415


class InvalidRequest(DocingestError):
    code = "invalid_request"
    status_code = 422


class IdempotencyKeyReused(InvalidRequest):
    """An Idempotency-Key sent again with a different upload (another agent, file or chunking)."""

    code = "idempotency_key_reused"


class ServiceUnavailable(DocingestError):
    code = "service_unavailable"
    status_code = 503


class StagingUnwritable(ServiceUnavailable):
    """The staging store refused a write: it is full, read-only, or not ours to write. A
    worker's step that raises it fails with its class name as type, which the task's message
    words (`FailureType.STAGING_UNWRITABLE`); the step is retried, as the store may have room
    again by then."""


class ConfigurationError(DocingestError):
    """The deployment is inconsistent (e.g. model dimension differs from the schema)."""

    code = "configuration_error"
    status_code = 500
