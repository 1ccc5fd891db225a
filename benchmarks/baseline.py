"""The issue's own yardsticks for figure 1: the plain `encode`, and a typical Python pipeline.

The issue measured the model with sentence-transformers' own `encode` (batch 32, torch's
intra-op threads over every core) and set docingest against "a typical Python pipeline (read
-> split -> embed -> store)" in float32. Figure 1's headline ratio is stricter than either: its
raw side is the worker's own embedding path (lanes, benchmarks/encoding.py), ~1.5x the plain
`encode` on a CPU. Both yardsticks are measured in each round of figure 1, on an idle stack, in
this process:

- *plain encode*: `SentenceTransformer.encode(texts, batch_size, normalize_embeddings=True)` of
  the chunk texts the pipeline stored, all in one call, in the worker's precision;
- *typical pipeline*: the corpus files read from disk one after another; each file's text
  extracted and split by the functions docingest uses (so the chunks are the same, which the
  details check), embedded in float32 by the plain `encode` and inserted with psycopg's
  `executemany` into a table with the same HNSW index as `chunks`, one commit per file. It
  does no more than that (no upload, no queue, no retries, no dedup), and reads PDFs with
  docingest's PDFium reader, faster than the pypdf such pipelines usually use, so it is a fast
  version of what the issue calls a typical pipeline.

Both run with torch's default threads (one per core), as such code does; the lanes' embedder in
this process runs one thread per lane, so the setting is restored after.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.engine import make_url

from activities.chunk import split_text
from activities.embed import model_folder
from activities.extract import extract_text
from activities.lanes import usable_cores
from benchmarks.corpus import Document
from core.formats import sniff_format
from core.models import EMBEDDING_DIMENSION

TABLE = "bench_typical_pipeline"


def plain_model(model: str | None, precision: str) -> Any:
    """The model as such code loads it: sentence-transformers on the CPU, bfloat16 weights
    when asked (the issue's `model_kwargs={"torch_dtype": torch.bfloat16}`)."""
    import torch
    from sentence_transformers import SentenceTransformer

    model_kwargs = {"torch_dtype": torch.bfloat16} if precision == "bfloat16" else None
    loaded = SentenceTransformer(
        model_folder(model), device="cpu", local_files_only=True, model_kwargs=model_kwargs
    )
    loaded.eval()
    return loaded


@contextmanager
def default_threads() -> Iterator[None]:
    """torch's default intra-op threads (one per core) for the block."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(usable_cores())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def encode(model: Any, texts: list[str], batch_size: int) -> np.ndarray:
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


def plain_encode_seconds(model: Any, texts: list[str], batch_size: int) -> float:
    """Seconds of one plain `encode` of every text (after a short warm-up call)."""
    with default_threads():
        encode(model, texts[:batch_size], batch_size)
        started = time.perf_counter()
        encode(model, texts, batch_size)
        return time.perf_counter() - started


def write_corpus(folder: Path, documents: list[Document]) -> list[Path]:
    """The corpus as files, which a typical pipeline reads from disk."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for document in documents:
        path = folder / document.name
        path.write_bytes(document.data)
        paths.append(path)
    return paths


def libpq_url(database_url: str) -> str:
    """The settings' SQLAlchemy URL as libpq reads it (psycopg's own driver name dropped)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


def prepare_table(database_url: str) -> None:
    """An empty table for the typical pipeline's rows, with `chunks`' HNSW index."""
    import psycopg

    with psycopg.connect(libpq_url(database_url), autocommit=True) as connection:
        connection.execute(f"DROP TABLE IF EXISTS {TABLE}")
        connection.execute(
            f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, source text NOT NULL, "
            f"ordinal integer NOT NULL, text text NOT NULL, "
            f"embedding vector({EMBEDDING_DIMENSION}) NOT NULL)"
        )
        connection.execute(
            f"CREATE INDEX {TABLE}_embedding ON {TABLE} USING hnsw (embedding vector_cosine_ops)"
        )


@dataclass
class TypicalRun:
    seconds: float
    chunks: list[list[str]]  # per file, in the order read

    @property
    def count(self) -> int:
        return sum(len(texts) for texts in self.chunks)


def typical_pipeline(
    paths: list[Path],
    model: Any,
    database_url: str,
    chunk_size: int,
    chunk_overlap: int,
    batch_size: int,
) -> TypicalRun:
    """Read, split, embed and store each file in turn; the table is emptied first (untimed)."""
    import psycopg
    from pgvector.psycopg import register_vector

    prepare_table(database_url)
    chunks: list[list[str]] = []
    with default_threads(), psycopg.connect(libpq_url(database_url)) as connection:
        register_vector(connection)
        started = time.perf_counter()
        for path in paths:
            data = path.read_bytes()
            text = extract_text(data, sniff_format(io.BytesIO(data), path.name)).text
            texts = [chunk.text for chunk in split_text(text, chunk_size, chunk_overlap)]
            vectors = encode(model, texts, batch_size)
            rows = [
                (path.name, ordinal, text, vector)
                for ordinal, (text, vector) in enumerate(zip(texts, vectors, strict=True))
            ]
            with connection.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO {TABLE} (source, ordinal, text, embedding) "
                    "VALUES (%s, %s, %s, %s)",
                    rows,
                )
            connection.commit()
            chunks.append(texts)
        seconds = time.perf_counter() - started
    return TypicalRun(seconds, chunks)
