"""The `next_cursor` of a list in time order: a place in that order (a time, then an id), as
an opaque URL-safe string; a cursor the API did not write is 422."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from core.errors import InvalidRequest


def encode_cursor(started: str, row_id: str) -> str:
    return base64.urlsafe_b64encode(f"{started}|{row_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The time and id a cursor names; InvalidRequest for anything else."""
    try:
        started, _, row_id = base64.urlsafe_b64decode(cursor).decode().partition("|")
        return datetime.fromisoformat(started), _non_empty(row_id)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"cursor {cursor[:100]!r} is not a next_cursor of this list") from exc


def _non_empty(row_id: str) -> str:
    if not row_id:
        raise ValueError("a cursor names an id")
    return row_id
