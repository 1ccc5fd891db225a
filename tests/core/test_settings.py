"""Settings read from the environment: durations in plain seconds, and their bounds."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from core.settings import Settings


def test_extract_time_limit_reads_plain_seconds_and_defaults_to_five_minutes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DOCINGEST_EXTRACT_TIME_LIMIT", raising=False)
    assert Settings().extract_time_limit == timedelta(minutes=5)
    monkeypatch.setenv("DOCINGEST_EXTRACT_TIME_LIMIT", "540")
    assert Settings().extract_time_limit == timedelta(minutes=9)


@pytest.mark.parametrize("seconds", ["0", "541"])
def test_extract_time_limit_must_end_before_the_steps_ten_minute_timeout(
    monkeypatch: pytest.MonkeyPatch, seconds: str
) -> None:
    monkeypatch.setenv("DOCINGEST_EXTRACT_TIME_LIMIT", seconds)
    with pytest.raises(ValidationError, match="extract_time_limit"):
        Settings()
