"""Settings read from the environment: durations in plain seconds, sizes, and their bounds."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

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


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_embedding_device_accepts_what_the_readme_lists(
    monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    monkeypatch.setenv("DOCINGEST_EMBEDDING_DEVICE", device)
    assert Settings().embedding_device == device


@pytest.mark.parametrize("device", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", "cpu\n", ""])
def test_embedding_device_refuses_others_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    """Else torch refuses it at the first model load: the API's first search."""
    monkeypatch.setenv("DOCINGEST_EMBEDDING_DEVICE", device)
    with pytest.raises(ValidationError, match=r"DOCINGEST_EMBEDDING_DEVICE .* must be auto, cpu"):
        Settings()


def test_embedding_model_must_be_an_existing_folder_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Else the model load fails with a FileNotFoundError naming no setting."""
    (tmp_path / "model.bin").write_bytes(b"")  # a file is not a sentence-transformers model
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("DOCINGEST_EMBEDDING_MODEL", str(tmp_path))
    assert Settings().embedding_model == str(tmp_path)
    for not_a_model in ("no-such-model", "model.bin"):
        monkeypatch.setenv("DOCINGEST_EMBEDDING_MODEL", str(tmp_path / not_a_model))
        with pytest.raises(ValidationError, match=r"DOCINGEST_EMBEDDING_MODEL .* is not a folder"):
            Settings()


def test_embedding_model_must_be_a_folder_that_holds_a_model(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Else the worker died at start with a traceback from transformers ("Unrecognized
    model"), and the API's first search failed the same way."""
    monkeypatch.setenv("DOCINGEST_EMBEDDING_MODEL", str(tmp_path))  # e.g. its parent folder
    with pytest.raises(ValidationError, match=r"DOCINGEST_EMBEDDING_MODEL .* holds no model"):
        Settings()
    (tmp_path / "modules.json").write_text("[]")
    assert Settings().embedding_model == str(tmp_path)


@pytest.mark.parametrize(
    "variable",
    [
        "DOCINGEST_DATABASE_URL",
        "DOCINGEST_TEMPORAL_ADDRESS",
        "DOCINGEST_STAGING_URL",
        "DOCINGEST_EMBEDDING_MODEL",
    ],
)
@pytest.mark.parametrize("empty", ["", "  "])
def test_a_setting_whose_default_is_unset_takes_an_empty_value_as_unset(
    monkeypatch: pytest.MonkeyPatch, variable: str, empty: str
) -> None:
    """`DOCINGEST_DATABASE_URL=` (a compose file's `${DATABASE_URL:-}`) was refused as "must be
    a PostgreSQL URL" and every command exited; it now means the embedded server, as unset."""
    monkeypatch.setenv(variable, empty)
    assert getattr(Settings(), variable.removeprefix("DOCINGEST_").lower()) is None


@pytest.mark.parametrize(
    ("variable", "shortest"),
    [
        ("DOCINGEST_ACTIVITY_HEARTBEAT_TIMEOUT", timedelta(seconds=1)),
        ("DOCINGEST_UPLOAD_ORPHAN_GRACE", timedelta(minutes=1)),
        ("DOCINGEST_STAGING_TTL", timedelta(minutes=1)),
    ],
)
def test_durations_refuse_less_than_their_shortest_useful_value(
    monkeypatch: pytest.MonkeyPatch, variable: str, shortest: timedelta
) -> None:
    """A zero orphan grace let the sweep remove uploads still streaming in; a heartbeat
    timeout under a second was quietly made one (steps take it in whole seconds)."""
    seconds = int(shortest.total_seconds())
    monkeypatch.setenv(variable, str(seconds))
    assert getattr(Settings(), variable.removeprefix("DOCINGEST_").lower()) == shortest
    for too_short in ("0", str(seconds - 1) if seconds > 1 else "0.5"):
        monkeypatch.setenv(variable, too_short)
        with pytest.raises(ValidationError, match=variable.removeprefix("DOCINGEST_").lower()):
            Settings()


def test_embed_task_queue_must_differ_from_the_main_one() -> None:
    with pytest.raises(ValidationError, match="DOCINGEST_EMBED_TASK_QUEUE must differ"):
        Settings(task_queue="q", embed_task_queue="q")


@pytest.mark.parametrize("variable", ["api_port", "temporal_port", "temporal_ui_port"])
def test_ports_are_refused_outside_1_to_65535(
    variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for port in ("0", "70000"):
        monkeypatch.setenv(f"DOCINGEST_{variable.upper()}", port)
        with pytest.raises(ValidationError, match=variable):
            Settings()


def test_embed_batches_too_small_for_the_largest_document_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"use at least 4\b"):
        Settings(embed_activity_chunks=3, max_document_chunks=20_000)
    assert Settings(embed_activity_chunks=4, max_document_chunks=20_000).embed_activity_chunks == 4
