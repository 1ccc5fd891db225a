"""Figure 2 — embedding backends: speed and fidelity of each precision the settings offer.

For every precision of `activities.embed.PRECISIONS` (but `auto`), the corpus chunks are
encoded in this process as the worker would (benchmarks/encoding.py) while the stack is idle:
chunks/s, the cosine of each chunk's vector to its float32 vector (min and mean), and top-5
neighbour agreement: for queries made of the first sentence of randomly chosen chunks (seeded),
the share of the float32 top-5 chunk ids (by cosine over the corpus) that the precision's own
top-5 keeps, averaged over the queries.

Why the comparison is fair: same texts, same batching, same machine, same process, measured
back to back; float32 is the reference because it is what the model was trained and shipped in.
The chunks are those `pipeline` stored when it ran, else the same documents chunked here with
the pipeline's own extract and split functions.
"""

from __future__ import annotations

import random

import numpy as np

from activities.precision import PRECISIONS
from activities.vectors import Vectors
from benchmarks.context import Context
from benchmarks.corpus import first_sentence, local_chunks
from benchmarks.measure import FigureResult

KEY = "backends"
TITLE = "2 embedding backends"
REFERENCE = "float32"
TOP_K = 5


def pick_queries(texts: list[str], count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    chosen = rng.sample(range(len(texts)), min(count, len(texts)))
    return [first_sentence(texts[index]) for index in chosen]


def top_ids(queries: Vectors, corpus: Vectors, k: int = TOP_K) -> list[set[int]]:
    """The indices of the k corpus vectors nearest (by cosine) to each normalized query."""
    scores = queries @ corpus.T
    best = np.argsort(-scores, axis=1)[:, :k]
    return [set(row.tolist()) for row in best]


def agreement(reference: list[set[int]], other: list[set[int]]) -> float:
    return float(np.mean([len(a & b) / TOP_K for a, b in zip(reference, other, strict=True)]))


async def run(ctx: Context) -> FigureResult:
    result = FigureResult(KEY, TITLE)
    settings = ctx.stack.settings
    documents = ctx.stored_corpus or local_chunks(
        ctx.corpus(), settings.chunk_size, settings.chunk_overlap
    )
    texts = [text for chunks in documents for text in chunks]
    queries = pick_queries(texts, ctx.sizes.queries)
    result.details.update(chunks=len(texts), queries=len(queries), top_k=TOP_K)
    await ctx.stack.wait_idle()
    reference = await ctx.encoding(REFERENCE, documents)
    reference_top = top_ids((await ctx.embedder(REFERENCE)).encode(queries), reference.vectors)
    for precision in (p for p in PRECISIONS if p != "auto"):
        encoded = await ctx.encoding(precision, documents)
        cosines = np.sum(encoded.vectors * reference.vectors, axis=1)
        top = top_ids((await ctx.embedder(precision)).encode(queries), encoded.vectors)
        result.add(f"{precision} speed", encoded.rate, "chunks/s")
        if precision != REFERENCE:
            result.add(f"{precision} speed / {REFERENCE}", encoded.rate / reference.rate, "ratio")
        result.add(f"{precision} cosine min", float(cosines.min()), "cosine")
        result.add(f"{precision} cosine mean", float(cosines.mean()), "cosine")
        result.add(f"{precision} top-{TOP_K} agreement", agreement(reference_top, top), "share")
        result.details[f"{precision}_seconds"] = round(encoded.seconds, 3)
    result.details["worker_precision"] = ctx.worker_precision
    return result
