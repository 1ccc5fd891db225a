"""The search query's vector, from the same model the worker embeds chunks with."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import anyio

from activities.embed import TextEmbedder, make_embedder, model_folder
from activities.token_budget import TokenBudget, model_token_budget
from activities.vectors import Vectors
from core.errors import ConfigurationError, InvalidRequest
from core.models import EMBEDDING_DIMENSION
from core.settings import Settings


class QueryEmbedder:
    """Loads the model once per process on the first query; encodes off the event loop.

    `window` loads the model's window (activities/token_budget.py): a query longer than it
    is refused, as the model would embed its first tokens only and drop the rest unseen; so
    is one of no token but the model's own (a zero-width space, control characters), which
    it would embed as an empty text."""

    def __init__(
        self,
        load: Callable[[], TextEmbedder],
        window: Callable[[], TokenBudget | None] | None = None,
    ) -> None:
        self._load = load
        self._load_window = window
        self._window: TokenBudget | None = None
        self._no_words = 0  # the tokens of an empty text: the model's own ([CLS], [SEP])
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
            ),
            lambda: model_token_budget(model_folder(settings.embedding_model)),
        )

    async def embed(self, query: str) -> Vectors:
        """The normalized vector of `query`; InvalidRequest (422) for one past the model's
        window."""
        embedder = await self._loaded()
        vectors = await anyio.to_thread.run_sync(
            self._encode, embedder, query, limiter=self._encoding
        )
        vector: Vectors = vectors[0]
        return vector

    def _encode(self, embedder: TextEmbedder, query: str) -> Vectors:
        if self._window is not None:
            tokens = self._window.count(query)
            if tokens > self._window.limit:
                raise InvalidRequest(
                    f"the query is {tokens} tokens long; the embedding model reads "
                    f"{self._window.limit} and would not see the rest: shorten it"
                )
            if tokens <= self._no_words:
                raise InvalidRequest(
                    "the query has no word the embedding model reads (only invisible or "
                    "control characters): every chunk would be scored against an empty text"
                )
        return embedder.encode([query])

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
                if self._load_window is not None:
                    window = await anyio.to_thread.run_sync(self._load_window)
                    if window is not None:
                        self._no_words = window.count("")
                    self._window = window
                self._embedder = embedder
        return self._embedder
