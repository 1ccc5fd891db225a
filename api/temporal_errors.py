"""Temporal being unreachable is a 503 for the caller, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from temporalio.service import RPCError, RPCStatusCode

from core.errors import ServiceUnavailable

# What a request that got no answer fails with, as against a refusal.
NO_ANSWER = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.UNKNOWN,
    }
)


@contextmanager
def temporal_unavailable_as_503(what: str) -> Iterator[None]:
    try:
        yield
    except RPCError as exc:
        # "did not answer" only when it did not: a refusal (an unknown search attribute, say)
        # is named as one.
        answered = exc.status not in NO_ANSWER
        verb = "refused the request" if answered else "did not answer"
        raise ServiceUnavailable(f"{what}: Temporal {verb} ({exc.message})") from exc
    except RuntimeError as exc:
        if not unreachable(exc):
            raise
        raise ServiceUnavailable(f"{what}: Temporal cannot be reached") from exc


def unreachable(exc: BaseException) -> bool:
    """Whether a lazy client could not reach the server ("Failed client connect: ...")."""
    return isinstance(exc, RuntimeError) and "client connect" in str(exc)
