"""bfloat16 embeddings agree with float32 on the bundled model: what `auto` may choose on a CPU
with native bf16 (or a GPU) must not change which chunks a search returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from activities.chunk import split_text
from activities.embed import SentenceTransformerEmbedder, resolve_device
from core.errors import ConfigurationError
from tests.support import FIGURES

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TOP_K = 5


def corpus() -> list[str]:
    """Real prose of many topics: the project's own documentation, chunked as ingested."""
    documents = ("README.md", "docs/reliability.md", "docs/performance.md")
    texts = [(ROOT / name).read_text() for name in documents]
    return [chunk.text for text in texts for chunk in split_text(text, 600, 60)]


def top_k(queries: np.ndarray, chunks: np.ndarray) -> list[set[int]]:
    scores = queries @ chunks.T
    return [set(np.argsort(-row)[:TOP_K].tolist()) for row in scores]


def test_embed_bfloat16_agrees_with_float32_on_top5_neighbours() -> None:
    chunks = corpus()
    queries = [chunk.split(". ")[0][:200] for chunk in chunks[::2]]
    full = SentenceTransformerEmbedder(precision="float32")
    half = SentenceTransformerEmbedder(precision="bfloat16")
    assert half.precision == "bfloat16"

    full_chunks, half_chunks = full.encode(chunks), half.encode(chunks)
    cosine = (full_chunks * half_chunks).sum(axis=1)
    assert np.allclose(np.linalg.norm(half_chunks, axis=1), 1.0, atol=1e-5)
    assert cosine.min() >= 0.99

    expected = top_k(full.encode(queries), full_chunks)
    found = top_k(half.encode(queries), half_chunks)
    agreement = np.mean([len(a & b) / TOP_K for a, b in zip(expected, found, strict=True)])
    assert len(chunks) >= 50
    assert agreement >= 0.97, f"top-{TOP_K} agreement {agreement:.3f}"
    FIGURES.append(
        f"bfloat16 vs float32 on the bundled model: {len(chunks)} chunks, cosine min "
        f"{cosine.min():.5f}, top-{TOP_K} agreement {agreement:.1%} over {len(queries)} queries"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_device_torch_does_not_see_is_refused_naming_the_setting(device: str) -> None:
    """Not torch's own "Torch not compiled with CUDA enabled" at the first batch (or, for the
    API, at the first search)."""
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ConfigurationError, match=f"DOCINGEST_EMBEDDING_DEVICE={device}, but"):
        resolve_device(device)
