"""What every figure gets: the running stack, the sizes of this mode, and shared encodings."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from activities.embed import Embedder
from benchmarks.baseline import plain_model
from benchmarks.corpus import Document, corpus
from benchmarks.encoding import Encoding, encode_timed, worker_batches, worker_embedder
from benchmarks.stack import Stack


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does; `--quick` shrinks everything for a smoke run."""

    text_document_chunks: tuple[int, ...]
    pdf_chunks: tuple[int, ...]
    pipeline_rounds: int
    queries: int
    upload_requests: int
    upload_clients: int
    upload_rounds: int
    upload_bytes: int
    backlog_documents: int
    backlog_chunks: int
    status_seconds: float
    store_rows: int
    large_chunks: int
    searchable_runs: int


FULL = Sizes(
    text_document_chunks=(12, 18, 24, 30, 36, 42, 20, 28, 34, 46),
    pdf_chunks=(55, 55),
    pipeline_rounds=4,
    queries=50,
    upload_requests=320,
    upload_clients=16,
    upload_rounds=8,
    upload_bytes=1_000_000,
    backlog_documents=8,
    backlog_chunks=100,
    status_seconds=20,
    store_rows=10_000,
    large_chunks=2000,
    searchable_runs=10,
)
QUICK = Sizes(
    text_document_chunks=(8, 12, 6),
    pdf_chunks=(10,),
    pipeline_rounds=1,
    queries=10,
    upload_requests=32,
    upload_clients=16,
    upload_rounds=2,
    upload_bytes=1_000_000,
    backlog_documents=3,
    backlog_chunks=40,
    status_seconds=5,
    store_rows=1000,
    large_chunks=150,
    searchable_runs=3,
)


@dataclass
class Context:
    stack: Stack
    sizes: Sizes
    quick: bool
    # The chunk texts the pipeline stored for the corpus, per document (set by `pipeline`).
    stored_corpus: list[list[str]] | None = None
    _embedders: dict[str, Embedder] = field(default_factory=dict)
    _encodings: dict[tuple[str, int], Encoding] = field(default_factory=dict)
    _plain_models: dict[str, Any] = field(default_factory=dict)

    def corpus(self) -> list[Document]:
        return corpus(list(self.sizes.text_document_chunks), list(self.sizes.pdf_chunks))

    @property
    def worker_precision(self) -> str:
        return self.stack.resolved_embedding()[1]

    async def embedder(self, precision: str) -> Embedder:
        if precision not in self._embedders:
            settings = self.stack.settings
            self._embedders[precision] = await asyncio.to_thread(
                worker_embedder, settings, precision
            )
        return self._embedders[precision]

    async def encoding(
        self, precision: str, documents: list[list[str]], *, fresh: bool = False
    ) -> Encoding:
        """These chunks encoded as the worker would, in `precision`; measured once per run
        unless `fresh` asks for a new measurement (which later calls then get)."""
        key = (precision, hash(tuple(tuple(chunks) for chunks in documents)))
        if fresh or key not in self._encodings:
            embedder = await self.embedder(precision)
            settings = self.stack.settings
            shards = worker_batches(
                documents, settings.embed_activity_chunks, settings.embedding_batch_size
            )
            self._encodings[key] = await asyncio.to_thread(encode_timed, embedder, shards)
        return self._encodings[key]

    async def plain_model(self, precision: str) -> Any:
        """The model as a plain sentence-transformers script loads it (benchmarks/baseline.py)."""
        if precision not in self._plain_models:
            model = self.stack.settings.embedding_model
            self._plain_models[precision] = await asyncio.to_thread(plain_model, model, precision)
        return self._plain_models[precision]

    def release_models(self) -> None:
        """Free the benchmark's own models before figures that measure memory or latency."""
        self._embedders.clear()
        self._plain_models.clear()
