"""The benchmark harness's own logic, without a stack: `make bench` runs the figures."""

from __future__ import annotations

import hashlib
import io
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from benchmarks.__main__ import parse_args
from benchmarks.bare_upload import create_bare_app
from benchmarks.baseline import libpq_url
from benchmarks.context import QUICK
from benchmarks.corpus import Document, corpus, first_sentence, local_chunks, make_pdf, variant
from benchmarks.encoding import encode_timed, worker_batches
from benchmarks.measure import FigureResult, Target, percentile
from benchmarks.report import render_table
from benchmarks.upload_ack import multipart
from core.formats import DocumentFormat, sniff_format
from worker.main import GIL_SWITCH_INTERVAL_S


def test_corpus_same_seed_same_bytes() -> None:
    first = corpus([3, 4], [2])
    second = corpus([3, 4], [2])
    assert [(d.name, d.data) for d in first] == [(d.name, d.data) for d in second]
    assert [d.name.rsplit(".", 1)[1] for d in first] == ["txt", "md", "pdf"]


def test_corpus_chunk_counts_close_to_requested() -> None:
    requested = [*QUICK.text_document_chunks, *QUICK.pdf_chunks]
    documents = corpus(list(QUICK.text_document_chunks), list(QUICK.pdf_chunks))
    made = [len(chunks) for chunks in local_chunks(documents, 1000, 100)]
    for want, got in zip(requested, made, strict=True):
        assert 0.7 * want <= got <= 1.3 * want


def test_variant_is_another_pdf_with_the_same_text() -> None:
    pdf = make_pdf(["One page of text. It has two sentences."])
    other = variant(pdf, 7)
    assert hashlib.sha256(other).digest() != hashlib.sha256(pdf).digest()
    assert sniff_format(io.BytesIO(other), "scan.pdf") is DocumentFormat.PDF
    texts = local_chunks([Document("a.pdf", pdf), Document("b.pdf", other)], 1000, 100)
    assert texts[0] == texts[1] == ["One page of text. It has two sentences."]


def test_first_sentence_skips_headings_and_partial_sentences() -> None:
    assert first_sentence("# Title\n\nend of a clause. The next one starts here. More.") == (
        "The next one starts here."
    )


def test_worker_batches_split_shards_then_sub_batches() -> None:
    documents = [[f"a{i}" for i in range(5)], [f"b{i}" for i in range(3)]]
    shards = worker_batches(documents, shard=4, batch=3)
    assert shards == [[["a0", "a1", "a2"], ["a3"]], [["a4"]], [["b0", "b1", "b2"]]]


class Lengths:
    """An embedder whose vector of a text is (its length, the call's size), slow enough that
    two callers overlap."""

    dimension = 2
    precision = "float32"
    model_name = "lengths"

    def encode(self, texts: list[str]) -> np.ndarray:
        time.sleep(0.005)
        return np.array([[len(text), len(texts)] for text in texts], dtype=np.float32)


def test_encode_timed_replays_shards_in_two_callers_keeping_the_chunk_order() -> None:
    documents = [["x" * (i + 1) for i in range(count)] for count in (7, 2, 11, 5)]
    shards = worker_batches(documents, shard=4, batch=3)
    encoding = encode_timed(Lengths(), shards, callers=2)
    texts = [text for chunks in documents for text in chunks]
    calls = [call for shard in shards for call in shard]
    assert encoding.chunks == len(texts)
    assert encoding.vectors[:, 0].tolist() == [len(text) for text in texts]
    assert encoding.vectors[:, 1].tolist() == [len(call) for call in calls for _ in call]


class SwitchInterval:
    """An embedder that records the GIL switch interval it ran under."""

    dimension = 1
    precision = "float32"
    model_name = "switch-interval"

    def __init__(self) -> None:
        self.seen: set[float] = set()

    def encode(self, texts: list[str]) -> np.ndarray:
        self.seen.add(sys.getswitchinterval())
        return np.zeros((len(texts), 1), dtype=np.float32)


def test_encode_timed_runs_under_the_workers_gil_switch_interval_then_restores_it() -> None:
    before = sys.getswitchinterval()
    assert before != GIL_SWITCH_INTERVAL_S
    embedder = SwitchInterval()
    encode_timed(embedder, worker_batches([["a", "b", "c"]], shard=2, batch=1))
    assert embedder.seen == {GIL_SWITCH_INTERVAL_S}
    assert sys.getswitchinterval() == before


def test_percentile_nearest_rank() -> None:
    samples = [float(n) for n in range(1, 161)]
    assert percentile(samples, 0.5) == 80
    assert percentile(samples, 0.99) == 159
    assert percentile([3.0], 0.99) == 3


def test_render_table_shows_verdicts_and_unavailable() -> None:
    figure = FigureResult("status", "4 status latency")
    figure.add("p99", 42.0, "ms", Target("<=", 50))
    figure.add("p50", 80.0, "ms", Target("<=", 50))
    missing = FigureResult("searchable", "7 time to searchable", unavailable="no search route")
    table = render_table([figure, missing])
    assert "pass" in table and "FAIL" in table
    assert "no search route" in table
    assert figure.passed is False


def test_parse_args_only_keeps_run_order_and_rejects_unknown() -> None:
    args = parse_args(["--quick", "--only", "upload_ack,pipeline"])
    assert [figure.key for figure in args.figures] == ["pipeline", "upload_ack"]
    with pytest.raises(SystemExit):
        parse_args(["--only", "nonsense"])


def test_bare_upload_streams_the_file_part_to_disk(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000
    body, content_type = multipart("scan.pdf", data)
    with TestClient(create_bare_app(tmp_path)) as client:
        response = client.post("/upload", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 202
    assert response.json() == {"size_bytes": len(data)}
    assert [path.read_bytes() for path in tmp_path.iterdir()] == [data]


def test_the_typical_pipeline_connects_with_libpq_to_the_stacks_database() -> None:
    """The stack's SQLAlchemy URL (psycopg driver, socket folder as `host`) as libpq reads it."""
    url = "postgresql+psycopg://postgres@/docingest?host=/tmp/pg-socket"
    assert libpq_url(url) == "postgresql://postgres@/docingest?host=%2Ftmp%2Fpg-socket"
