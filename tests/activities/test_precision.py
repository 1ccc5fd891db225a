"""`DOCINGEST_EMBEDDING_PRECISION=auto` on the CPU: float32, unless the CPU has native bf16
and bfloat16 measured clearly faster on it; the verdict is saved so a machine decides once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from activities import embed
from activities.embed import (
    SentenceTransformerEmbedder,
    auto_precision_key,
    bundled_model_path,
)
from activities.precision import (
    BF16_MIN_SPEEDUP,
    VERDICTS_FILE,
    Verdict,
    auto_cpu_precision,
    choose,
    sample_texts,
)

TIMINGS = (0.5, 0.8)  # float32, bfloat16 seconds: bfloat16 slower, as on the 2026-11-29 CPU


def counting(timings: tuple[float, float]) -> tuple[list[int], Callable[[], tuple[float, float]]]:
    calls: list[int] = []

    def measure() -> tuple[float, float]:
        calls.append(1)
        return timings

    return calls, measure


def test_choose_takes_bfloat16_only_when_clearly_faster() -> None:
    assert choose(1.0, 1.0 / BF16_MIN_SPEEDUP) == "bfloat16"
    assert choose(1.0, 0.9) == "float32"  # 1.11x: not worth moving the vectors
    assert choose(0.5, 0.8) == "float32"


def test_auto_cpu_precision_measures_once_and_saves_the_verdict(tmp_path: Path) -> None:
    calls, measure = counting(TIMINGS)
    first, measured = auto_cpu_precision(tmp_path, "cpu A", measure)
    assert (first.precision, measured) == ("float32", True)
    again, measured = auto_cpu_precision(tmp_path, "cpu A", measure)
    assert (again, measured, len(calls)) == (first, False, 1)
    other, measured = auto_cpu_precision(tmp_path, "cpu B", counting((0.8, 0.4))[1])
    assert (other.precision, measured) == ("bfloat16", True)
    saved = json.loads((tmp_path / VERDICTS_FILE).read_text())
    assert {key: value["precision"] for key, value in saved.items()} == {
        "cpu A": "float32",
        "cpu B": "bfloat16",
    }


def test_auto_cpu_precision_measures_again_over_a_damaged_file(tmp_path: Path) -> None:
    (tmp_path / VERDICTS_FILE).write_text('{"cpu A": {"precision": "fast"}')  # cut short
    calls, measure = counting(TIMINGS)
    verdict, measured = auto_cpu_precision(tmp_path, "cpu A", measure)
    assert (verdict.precision, measured, len(calls)) == ("float32", True, 1)
    (tmp_path / VERDICTS_FILE).write_text('{"cpu A": {"precision": "fast", "float32_s": 1}}')
    verdict, measured = auto_cpu_precision(tmp_path, "cpu A", measure)
    assert (verdict.precision, measured, len(calls)) == ("float32", True, 2)


def test_auto_cpu_precision_in_a_folder_it_cannot_write_still_chooses(tmp_path: Path) -> None:
    blocked = tmp_path / "models"
    blocked.write_text("a file where the folder should be")
    calls, measure = counting(TIMINGS)
    verdict, measured = auto_cpu_precision(blocked, "cpu A", measure)
    assert (verdict.precision, measured, len(calls)) == ("float32", True, 1)


def test_auto_cpu_precision_measures_again_over_impossible_timings(tmp_path: Path) -> None:
    bad = {"precision": "bfloat16", "float32_s": 0.5, "bfloat16_s": 0, "measured_at": "x"}
    (tmp_path / VERDICTS_FILE).write_text(json.dumps({"cpu A": bad}))
    calls, measure = counting(TIMINGS)
    verdict, measured = auto_cpu_precision(tmp_path, "cpu A", measure)
    assert (verdict.precision, measured, len(calls)) == ("float32", True, 1)


def test_auto_cpu_precision_reads_a_saved_verdict_it_cannot_lock(tmp_path: Path) -> None:
    """An API running as another user than the worker: it cannot take the lock, and still
    follows the worker's verdict instead of measuring its own."""
    auto_cpu_precision(tmp_path, "cpu A", counting((0.8, 0.4))[1])
    (tmp_path / f".{VERDICTS_FILE}.lock").unlink()
    (tmp_path / f".{VERDICTS_FILE}.lock").mkdir()  # opening it for the lock fails
    calls, measure = counting(TIMINGS)
    verdict, measured = auto_cpu_precision(tmp_path, "cpu A", measure)
    assert (verdict.precision, measured, len(calls)) == ("bfloat16", False, 0)


def test_auto_cpu_precision_saves_a_verdict_other_users_can_read(tmp_path: Path) -> None:
    """The verdict is for every process sharing the folder, whatever user it runs as."""
    auto_cpu_precision(tmp_path, "cpu A", counting(TIMINGS)[1])
    assert (tmp_path / VERDICTS_FILE).stat().st_mode & 0o044 == 0o044


def test_auto_cpu_precision_without_a_folder_measures_every_time() -> None:
    calls, measure = counting(TIMINGS)
    auto_cpu_precision(None, "cpu A", measure)
    auto_cpu_precision(None, "cpu A", measure)
    assert len(calls) == 2


def test_sample_texts_are_chunk_sized_and_distinct() -> None:
    texts = sample_texts(16)
    assert len(set(texts)) == 16
    assert all(900 <= len(text) <= 1100 for text in texts)


def parameter_dtype(embedder: SentenceTransformerEmbedder) -> torch.dtype:
    return next(embedder.model.parameters()).dtype


@pytest.mark.slow
def test_auto_on_a_cpu_without_native_bf16_is_float32_unmeasured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embed, "cpu_has_native_bf16", lambda: False)
    embedder = SentenceTransformerEmbedder(device="cpu", cache_dir=tmp_path)
    assert (embedder.precision, embedder.auto_verdict) == ("float32", None)
    assert parameter_dtype(embedder) == torch.float32
    assert not (tmp_path / VERDICTS_FILE).exists()


@pytest.mark.slow
def test_auto_on_a_cpu_with_native_bf16_keeps_what_measured_faster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real model timed in both precisions on this machine (where bf16 is emulated, the
    CPU is only told it has it: the measurement is what decides)."""
    monkeypatch.setattr(embed, "cpu_has_native_bf16", lambda: True)
    embedder = SentenceTransformerEmbedder(device="cpu", cache_dir=tmp_path)
    verdict = embedder.auto_verdict
    assert verdict is not None
    assert embedder.precision == choose(verdict.float32_s, verdict.bfloat16_s)
    expected = torch.bfloat16 if embedder.precision == "bfloat16" else torch.float32
    assert parameter_dtype(embedder) == expected
    # A restart reads the verdict back instead of measuring again.
    restarted = SentenceTransformerEmbedder(device="cpu", cache_dir=tmp_path)
    assert (restarted.precision, restarted.auto_verdict) == (embedder.precision, verdict)


@pytest.mark.slow
def test_auto_with_a_saved_bfloat16_verdict_embeds_as_bfloat16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a CPU where bfloat16 won (AMX) gets: the same vectors as asking for bfloat16."""
    monkeypatch.setattr(embed, "cpu_has_native_bf16", lambda: True)
    key = auto_precision_key(bundled_model_path())
    won = Verdict("bfloat16", 0.8, 0.4, "2026-11-29T00:00:00+00:00")
    auto_cpu_precision(tmp_path, key, lambda: (won.float32_s, won.bfloat16_s))

    auto = SentenceTransformerEmbedder(device="cpu", cache_dir=tmp_path)
    assert (auto.precision, parameter_dtype(auto)) == ("bfloat16", torch.bfloat16)
    assert auto.auto_verdict is not None and auto.auto_verdict.speedup == 2.0
    asked = SentenceTransformerEmbedder(device="cpu", precision="bfloat16")
    texts = sample_texts(12)
    assert np.allclose(auto.encode(texts), asked.encode(texts), atol=1e-6)
