"""A batch spread over the cores in lanes of micro-batches (activities/lanes.py) gives every
text its own vector, in order, the same as the model's plain `encode`."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from activities.embed import SentenceTransformerEmbedder
from activities.lanes import Lanes, usable_cores


@pytest.mark.parametrize(
    ("batch", "cores", "lanes", "threads"),
    [(32, 2, 2, 1), (32, 16, 4, 4), (32, 1, 1, 1), (4, 2, 1, 2), (64, 8, 8, 1)],
)
def test_lanes_share_out_the_cores(batch: int, cores: int, lanes: int, threads: int) -> None:
    chosen = Lanes(batch, 8, cores=cores)
    assert (chosen.count, chosen.threads_per_lane) == (lanes, threads)


@pytest.mark.parametrize(
    ("texts", "size"),
    [(1, 1), (2, 1), (3, 2), (12, 6), (16, 8), (17, 5), (24, 6), (32, 8), (33, 6), (128, 8)],
)
def test_lanes_cut_a_call_into_even_parts_a_multiple_of_the_lanes(texts: int, size: int) -> None:
    """At most 8 texts per part, in 2, 4, 6… parts on 2 lanes: no lane idles at the end."""
    assert Lanes(32, 8, cores=2).part_size(texts) == size


def test_lanes_return_each_texts_row_in_the_callers_order() -> None:
    texts = ["a" * (index * 7 % 23) + str(index) for index in range(37)] + ["same", "same"]

    def forward(batch: list[str]) -> np.ndarray:
        assert len(batch) <= 4
        lengths = [len(text) for text in batch]
        assert lengths == sorted(lengths, reverse=True)  # longest first: little padding
        return np.array([[len(text), hash(text) % 1000] for text in batch], dtype=np.float32)

    rows = Lanes(32, 4, cores=3).encode(texts, forward)
    expected = [[len(text), hash(text) % 1000] for text in texts]
    assert rows.tolist() == expected


@pytest.mark.skipif(usable_cores() < 2, reason="lanes need two cores")
def test_embedder_in_lanes_gives_the_vectors_of_a_plain_encode() -> None:
    embedder = SentenceTransformerEmbedder(precision="float32", device="cpu")
    assert embedder.lanes is not None and embedder.lanes.count >= 2
    texts = [
        "",
        "short",
        "A much longer passage about harbour cranes and tides. " * 12,
        "Ein deutscher Satz über Apfelbäume im Frühling.",
        "短い日本語の文です。",
    ] * 5
    vectors = embedder.encode(texts)
    plain = embedder.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert vectors.shape == (len(texts), embedder.dimension)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float((vectors * plain).sum(axis=1).min()) > 0.99999
    one = embedder.encode(texts[2:3])  # one text: one lane-sized pass in the caller's thread
    assert float((one * plain[2:3]).sum()) > 0.99999
    assert np.allclose(embedder.encode([texts[2]])[0], vectors[2], atol=1e-5)


def test_lanes_shared_by_calls_from_two_threads_give_each_its_own_rows() -> None:
    """Two embed activities at once share the lanes: each call gets its texts' rows, in its
    order, while the other call's parts run in the same lane threads."""
    lanes = Lanes(32, 4, cores=2)
    seen: list[str] = []
    started = threading.Barrier(2)

    def forward(batch: list[str]) -> np.ndarray:
        seen.extend(text[0] for text in batch)
        time.sleep(0.01)  # long enough for both calls' parts to be queued together
        return np.array([[len(text), ord(text[0])] for text in batch], dtype=np.float32)

    def call(prefix: str, count: int) -> np.ndarray:
        texts = [prefix + "x" * (index % 9) for index in range(count)]
        started.wait()
        return lanes.encode(texts, forward)

    with ThreadPoolExecutor(2) as callers:
        first, second = callers.map(call, ["a", "b"], [37, 29])
    assert first.tolist() == [[1 + index % 9, ord("a")] for index in range(37)]
    assert second.tolist() == [[1 + index % 9, ord("b")] for index in range(29)]
    assert sorted(set(seen)) == ["a", "b"] and len(seen) == 37 + 29


@pytest.mark.skipif(usable_cores() < 2, reason="lanes need two cores")
def test_embedder_called_from_two_threads_at_once_gives_each_its_vectors() -> None:
    embedder = SentenceTransformerEmbedder(precision="float32", device="cpu")
    batches = [
        [f"Harbour report {index}: cranes, tides and {'cargo ' * index}." for index in range(20)],
        [
            f"Orchard note {index}: apple trees in spring, {'blossom ' * index}."
            for index in range(20)
        ],
    ]
    alone = [embedder.encode(texts) for texts in batches]
    with ThreadPoolExecutor(2) as callers:
        together = list(callers.map(embedder.encode, batches))
    for own, shared in zip(alone, together, strict=True):
        assert float((own * shared).sum(axis=1).min()) > 0.99999
