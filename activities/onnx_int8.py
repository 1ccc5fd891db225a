"""The int8 embedding backend: the local sentence-transformers model exported to ONNX and
quantized (dynamic, per channel, MatMul weights to int8), run by ONNX Runtime on the CPU.

Nothing is downloaded: the export is built from the model on disk, once, at first use or by
`docingest models build`, and kept under `DOCINGEST_HOME/models/`. It changes vectors slightly
(cosine to float32 ~0.99; dynamic quantization scales activations per batch, so a vector
also varies a little with its batch mates), so `auto` never chooses it; see README.
Needs the `int8` extra: `pip install 'docingest[int8]'` (onnxruntime, onnx).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from activities.lanes import Lanes, encode_by_length, usable_cores
from activities.model_files import LOAD_ERRORS, unloadable
from activities.vectors import Vectors, unit_rows
from core.errors import ConfigurationError
from core.filelock import exclusive

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Texts per forward pass in a lane (activities/lanes.py): 4 measured best for the int8 graph.
MICRO_BATCH = 4
FORMAT_VERSION = 1  # bump when the export or the quantization changes
_SCRATCH_PREFIX = ".build-"  # a build's scratch folder beside its export

log = logging.getLogger(__name__)


def _require_onnxruntime() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            "DOCINGEST_EMBEDDING_PRECISION=int8 needs ONNX Runtime: "
            "pip install 'docingest[int8]' (onnxruntime, onnx)"
        ) from exc


def model_key(model_path: str) -> str:
    """Names the export after what it is built from: the model's config and weight files."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION}".encode())
    root = Path(model_path)
    for name in ("config.json", "modules.json", "sentence_bert_config.json"):
        if (root / name).exists():
            digest.update((root / name).read_bytes())
    for weights in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return f"{root.name}-{digest.hexdigest()[:12]}"


def int8_model_file(
    model_path: str, cache_dir: Path, damaged: os.stat_result | None = None
) -> Path:
    """The quantized model of `model_path`, built under `cache_dir` when missing, or again
    when it is still the `damaged` file (one ONNX Runtime could not load).

    Several processes may ask at once (the worker and the API at first start): one builds
    under a file lock, into a temporary file renamed into place, and the others wait for it.
    """
    _require_onnxruntime()
    target = cache_dir / model_key(model_path) / "model-int8.onnx"
    if damaged is None and target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(target.parent / ".build.lock"):
            if not target.exists() or _same_file(target, damaged):
                _build(model_path, target)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot build the int8 export of {model_path} in {cache_dir} ({exc}): make that "
            "folder writable (DOCINGEST_HOME/models), or run `docingest models build` where it is"
        ) from exc
    return target


def _same_file(path: Path, seen: os.stat_result | None) -> bool:
    if seen is None:
        return False
    now = path.stat()
    return (now.st_ino, now.st_size, now.st_mtime_ns) == (
        seen.st_ino,
        seen.st_size,
        seen.st_mtime_ns,
    )


def _build(model_path: str, target: Path) -> None:
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            output = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return output.last_hidden_state

    # Eager attention exports to plain MatMul/Softmax, which the quantizer turns into int8
    # matrix products (measured: 1.9x float32 torch on an AVX-512 VNNI CPU; SDPA's export
    # and ONNX Runtime's BERT fusion both quantize to slower graphs).
    try:
        model = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
    except LOAD_ERRORS as exc:  # the model's fault, not the export folder's (OSError below)
        raise unloadable(model_path, exc) from exc
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    sample = tokenizer(
        ["an example", "a second, longer example"], padding=True, return_tensors="pt"
    )
    # A build killed midway (a worker's OOM kill, say) left its scratch folder, ~90 MB: the
    # build lock is held here, so any such folder is no other process's work in progress.
    for stale in target.parent.glob(f"{_SCRATCH_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=_SCRATCH_PREFIX) as scratch:
        float_file = Path(scratch) / "model-float32.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHiddenState(model),
                tuple(sample[name] for name in INPUTS),
                str(float_file),
                input_names=list(INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={
                    name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "last_hidden_state")
                },
                opset_version=17,
                dynamo=False,
            )
        partial = Path(scratch) / target.name
        with _quiet_root_logger():  # the quantizer logs a line per tensor on root
            quantize_dynamic(
                str(float_file),
                str(partial),
                per_channel=True,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
            )
        onnx.checker.check_model(str(partial))
        # On disk before it is renamed into place: else a crash soon after can leave an empty
        # file under the final name, which every later start would take as built.
        with partial.open("rb") as built:
            os.fsync(built.fileno())
        os.replace(partial, target)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _pooling(model_path: str) -> str:
    """`mean` or `cls`, from the model's sentence-transformers pooling config."""
    configs = sorted(Path(model_path).glob("*_Pooling/config.json"))
    if not configs:
        return "mean"
    config = json.loads(configs[0].read_text())
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    if config.get("pooling_mode_cls_token"):
        return "cls"
    raise ConfigurationError(f"int8 supports mean or CLS pooling only; {model_path} uses another")


def _max_tokens(model_path: str) -> int:
    config = Path(model_path) / "sentence_bert_config.json"
    if config.exists():
        return int(json.loads(config.read_text()).get("max_seq_length", 512))
    return 512


class OnnxInt8Embedder:
    """Normalized float32 vectors from the quantized model, on the CPU (lanes shared by callers)."""

    device = "cpu"
    precision = "int8"

    def __init__(self, model_path: str, batch_size: int, cache_dir: Path, model_name: str) -> None:
        """`model_name`: what documents call the model (activities/embed.py: `model_name`)."""
        import onnxruntime
        from transformers import AutoTokenizer

        self.model_path = model_path
        self.model_name = model_name
        self.batch_size = batch_size
        self.file = int8_model_file(model_path, cache_dir)
        # Lanes of micro-batches over the cores (activities/lanes.py), each run single-threaded.
        lanes = Lanes(batch_size, MICRO_BATCH)
        self.lanes = lanes if lanes.count > 1 else None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = lanes.threads_per_lane if self.lanes else usable_cores()
        options.inter_op_num_threads = 1

        def load(file: Path) -> Any:
            return onnxruntime.InferenceSession(
                str(file), options, providers=["CPUExecutionProvider"]
            )

        try:
            self.session = load(self.file)
        except Exception as exc:  # ONNX Runtime's own errors: a cut or empty file
            log.warning("int8 export %s cannot be loaded (%s); building it again", self.file, exc)
            self.file = int8_model_file(model_path, cache_dir, damaged=self.file.stat())
            self.session = load(self.file)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self._tokenizing = threading.Lock()
        self._whole_model = threading.Lock()  # without lanes, a batch uses every core
        self.pooling = _pooling(model_path)
        self.max_tokens = _max_tokens(model_path)
        self._dimension = int(self.encode(["width probe"]).shape[1])

    @property
    def dimension(self) -> int:
        return self._dimension

    def encode(self, texts: list[str]) -> Vectors:
        """Safe to call from several threads at once, as SentenceTransformerEmbedder.encode."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.lanes is not None:
            return self.lanes.encode(texts, self._encode_batch)
        with self._whole_model:
            return encode_by_length(texts, self.batch_size, self._encode_batch)

    def _encode_batch(self, texts: list[str]) -> Vectors:
        with self._tokenizing:  # a fast tokenizer shared by lanes fails with "Already borrowed"
            tokens = self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="np",
            )
        feed = {name: tokens[name].astype(np.int64) for name in INPUTS if name in tokens}
        if "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        hidden = self.session.run(None, feed)[0]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = tokens["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return unit_rows(pooled)
