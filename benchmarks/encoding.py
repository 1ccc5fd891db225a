"""Encoding chunk texts in the benchmark process exactly as the worker batches them.

The worker embeds one shard (`embed_activity_chunks` chunks of one document) per activity, in
`encode` calls of `embedding_batch_size` chunks one after the other, and runs
`worker.main.EMBED_BATCHES` embed activities at once, which share the embedder's lanes. The raw
rate replays the same calls in as many threads, each taking the next shard, with the same
model, device, precision and batch size (and the worker's GIL switch interval), so the only
difference left to the end-to-end rate is what the pipeline adds around the model. (Two
callers fill the lanes while one waits for its last part: 3-13 % more chunks/s than one on an
idle machine, measured with a one-off script.)
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from activities.embed import Embedder, TextEmbedder, make_embedder
from activities.vectors import Vectors
from core.settings import Settings
from worker.main import EMBED_BATCHES, GIL_SWITCH_INTERVAL_S


@dataclass
class Encoding:
    vectors: Vectors
    seconds: float
    chunks: int
    cpu_seconds: float  # this process's CPU time meanwhile (all its threads)

    @property
    def rate(self) -> float:
        return self.chunks / self.seconds


Shard = list[list[str]]  # one embed activity's `encode` calls, in order


def worker_batches(documents: list[list[str]], shard: int, batch: int) -> list[Shard]:
    """The embed activities for these documents' chunks, in order, each as its `encode` calls."""
    shards: list[Shard] = []
    for chunks in documents:
        for start in range(0, len(chunks), shard):
            texts = chunks[start : start + shard]
            shards.append(
                [texts[offset : offset + batch] for offset in range(0, len(texts), batch)]
            )
    return shards


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


def encode_timed(
    embedder: TextEmbedder, shards: list[Shard], callers: int = EMBED_BATCHES
) -> Encoding:
    """Run each shard's calls one after the other, `callers` shards at a time, as the worker's
    embed activities do; time only the model (blocking: use a thread)."""

    def run(shard: Shard) -> list[Vectors]:
        return [embedder.encode(texts) for texts in shard]

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # the worker's
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(callers) as pool:  # each free caller takes the next shard
            done = list(pool.map(run, shards))
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
    finally:
        sys.setswitchinterval(switch_interval)
    parts = [vectors for shard in done for vectors in shard]
    vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.dimension), np.float32)
    return Encoding(vectors, seconds, len(vectors), cpu_seconds)
