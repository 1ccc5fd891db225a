"""Settings read from the environment: durations in plain seconds, sizes, and their bounds."""

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


def test_extract_memory_limit_defaults_to_2_gib_and_reads_mib(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DOCINGEST_EXTRACT_MEMORY_LIMIT_MIB", raising=False)
    assert Settings().extract_memory_limit_mib == 2048
    monkeypatch.setenv("DOCINGEST_EXTRACT_MEMORY_LIMIT_MIB", "64")
    assert Settings().extract_memory_limit_mib == 64


@pytest.mark.parametrize("mib", ["0", "63", "1.5"])
def test_extract_memory_limit_refuses_less_than_64_mib_or_fractions(
    monkeypatch: pytest.MonkeyPatch, mib: str
) -> None:
    monkeypatch.setenv("DOCINGEST_EXTRACT_MEMORY_LIMIT_MIB", mib)
    with pytest.raises(ValidationError, match="extract_memory_limit_mib"):
        Settings()


@pytest.mark.parametrize(
    ("size", "overlap", "accepted"),
    [("1000", "500", True), ("1000", "501", False), ("100", "51", False)],
)
def test_chunk_overlap_may_be_at_most_half_the_chunk_size(
    monkeypatch: pytest.MonkeyPatch, size: str, overlap: str, accepted: bool
) -> None:
    """A larger overlap makes about a chunk per word (see api.ingest_start.chunking): the
    service refuses to start with it rather than capping it unseen."""
    monkeypatch.setenv("DOCINGEST_CHUNK_SIZE", size)
    monkeypatch.setenv("DOCINGEST_CHUNK_OVERLAP", overlap)
    if accepted:
        assert Settings().chunk_overlap == int(overlap)
        return
    with pytest.raises(ValidationError, match=f"DOCINGEST_CHUNK_OVERLAP \\({overlap}\\) must be"):
        Settings()
