"""The search query's vector, from the same model the worker embeds chunks with."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio

from activities.embed import TextEmbedder, make_embedder
from activities.vectors import Vectors
from core.errors import ConfigurationError
from core.models import EMBEDDING_DIMENSION
from core.settings import Settings


class QueryEmbedder:
    """Loads the model once per process on the first query; encodes off the event loop."""

    def __init__(self, load: Callable[[], TextEmbedder]) -> None:
        self._load = load
        self._embedder: TextEmbedder | None = None
        self._loading = asyncio.Lock()
        # One encode at a time: the embedder already spreads one encode over every core.
        self._encoding = anyio.CapacityLimiter(1)

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryEmbedder:
        return cls(
            lambda: make_embedder(
                settings.embedding_model,
                settings.embedding_batch_size,
                settings.embedding_device,
                settings.embedding_precision,
                settings.models_dir,
            )
        )

    async def embed(self, query: str) -> Vectors:
        """The normalized vector of `query`."""
        embedder = await self._loaded()
        vectors = await anyio.to_thread.run_sync(embedder.encode, [query], limiter=self._encoding)
        vector: Vectors = vectors[0]
        return vector

    async def _loaded(self) -> TextEmbedder:
        if self._embedder is not None:
            return self._embedder
        async with self._loading:
            if self._embedder is None:
                embedder = await anyio.to_thread.run_sync(self._load)
                if embedder.dimension != EMBEDDING_DIMENSION:
                    raise ConfigurationError(
                        f"the embedding model makes {embedder.dimension}-wide vectors; "
                        f"the schema stores {EMBEDDING_DIMENSION}"
                    )
                self._embedder = embedder
        return self._embedder
