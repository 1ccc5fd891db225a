"""Encoding chunk texts in the benchmark process exactly as the worker batches them.

The worker embeds one shard (`embed_activity_chunks` chunks of one document) per activity, in
`encode` calls of `embedding_batch_size` chunks, one call at a time. The raw rate replays the
same calls with the same model, device, precision and batch size, so the only difference left
to the end-to-end rate is what the pipeline adds around the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from activities.embed import Embedder, make_embedder
from activities.vectors import Vectors
from core.settings import Settings


@dataclass
class Encoding:
    vectors: Vectors
    seconds: float
    chunks: int
    cpu_seconds: float  # this process's CPU time meanwhile (all its threads)

    @property
    def rate(self) -> float:
        return self.chunks / self.seconds


def worker_batches(documents: list[list[str]], shard: int, batch: int) -> list[list[str]]:
    """The `encode` calls the worker makes for these documents' chunks, in order."""
    calls: list[list[str]] = []
    for chunks in documents:
        for start in range(0, len(chunks), shard):
            texts = chunks[start : start + shard]
            calls.extend(texts[offset : offset + batch] for offset in range(0, len(texts), batch))
    return calls


def worker_embedder(settings: Settings, precision: str) -> Embedder:
    """The worker's model, device and batch size, in the given precision; warmed by one call.
    int8 uses (or builds) the export under the stack's DOCINGEST_HOME, as the worker does."""
    embedder = make_embedder(
        settings.embedding_model,
        settings.embedding_batch_size,
        settings.embedding_device,
        precision,
        settings.models_dir,
    )
    embedder.encode(["A first call allocates what later calls reuse."] * 4)
    return embedder


def encode_timed(embedder: Embedder, calls: list[list[str]]) -> Encoding:
    """Run the calls one after the other; time only the model (blocking: use a thread)."""
    parts: list[Vectors] = []
    started, cpu_started = time.perf_counter(), time.process_time()
    for texts in calls:
        parts.append(embedder.encode(texts))
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.dimension), np.float32)
    return Encoding(vectors, seconds, len(vectors), cpu_seconds)
