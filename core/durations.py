"""Durations in the words of a message."""

from __future__ import annotations

from datetime import timedelta


def describe_duration(delta: timedelta) -> str:
    """A duration as a message says it: "7 days", "1 hour", "90 min", "2.5 s"."""
    seconds = delta.total_seconds()
    for unit, size, plural in (
        ("day", 86_400, "days"),
        ("hour", 3_600, "hours"),
        ("min", 60, "min"),
    ):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit if count == 1 else plural}"
    # Exact, never in scientific notation ("1e+06 s"): `repr` of a float is its shortest form.
    return f"{int(seconds) if seconds.is_integer() else seconds} s"
