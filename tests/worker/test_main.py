"""The worker refuses a model whose width differs from the schema."""

from __future__ import annotations

import pytest

from core.db import create_engine
from core.errors import ConfigurationError
from core.models import EMBEDDING_DIMENSION
from worker.main import check_embedding_dimension


async def test_worker_checks_the_model_dimension_against_the_schema(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        await check_embedding_dimension(engine, EMBEDDING_DIMENSION)
        with pytest.raises(ConfigurationError, match="768-dimensional vectors"):
            await check_embedding_dimension(engine, 768)
    finally:
        await engine.dispose()
