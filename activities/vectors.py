"""Embedding vectors as every backend returns them: float32 rows of unit length."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]


def unit_rows(rows: npt.ArrayLike) -> Vectors:
    """`rows` as float32, each scaled to length 1 (an all-zero row stays zero)."""
    vectors: Vectors = np.array(rows, dtype=np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors
