"""Temporal being unreachable is a 503 for the caller, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from temporalio.service import RPCError

from core.errors import ServiceUnavailable


@contextmanager
def temporal_unavailable_as_503(what: str) -> Iterator[None]:
    try:
        yield
    except RPCError as exc:
        raise ServiceUnavailable(f"{what}: Temporal did not answer ({exc.message})") from exc
    except RuntimeError as exc:
        # A lazy client that cannot reach the server raises "Failed client connect: ...".
        if "client connect" not in str(exc):
            raise
        raise ServiceUnavailable(f"{what}: Temporal cannot be reached") from exc
