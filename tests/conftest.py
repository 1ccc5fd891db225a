"""Session fixtures: a real PostgreSQL (pgserver), a real Temporal dev server, a worker with
the bundled model and the API on free ports. Each test gets a fresh owner (key + agent)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from activities.embed import SentenceTransformerEmbedder, TextEmbedder
from core.db import create_engine, create_sessionmaker
from core.embedded import embedded_postgres_url, free_port, start_temporal_dev_server
from core.migrate import upgrade_to_head
from core.settings import Settings
from core.staging import StagingStore
from core.temporal import connect, register_search_attributes
from tests.support import (
    Stack,
    Tenant,
    make_settings,
    new_tenant,
    private_home,
    running_workers,
    serve,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def home() -> Iterator[Path]:
    path = private_home("test")
    yield path
    # PostgreSQL removes its own folder when it stops (cleanup_mode="delete"), at exit.
    for child in path.iterdir():
        if child.name != "postgres":
            shutil.rmtree(child, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(home: Path) -> str:
    url = embedded_postgres_url(home, cleanup_mode="delete")
    upgrade_to_head(url)
    return url


@pytest.fixture(scope="session")
def temporal_ui_port() -> int:
    """The port of the session's Temporal Web UI (tests read what it renders)."""
    return free_port()


@pytest.fixture(scope="session")
def temporal_address(home: Path, temporal_ui_port: int) -> Iterator[str]:
    port = free_port()
    server = start_temporal_dev_server(home / "temporal", port=port, ui_port=temporal_ui_port)
    yield f"127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="session")
def settings(home: Path, database_url: str, temporal_address: str) -> Settings:
    return make_settings(home, database_url, temporal_address)


@pytest.fixture(scope="session")
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    client = await connect(settings.resolved_temporal_address, settings.temporal_namespace)
    await register_search_attributes(client)
    assert settings.database_url is not None
    engine = create_engine(settings.database_url)
    staging = StagingStore(settings.resolved_staging_url)
    yield Stack(settings, client, create_sessionmaker(engine), staging)
    await engine.dispose()


@pytest.fixture(scope="session")
def embedder(settings: Settings) -> TextEmbedder:
    # The session's models folder: what `auto` measures on a CPU with native bf16, the worker
    # processes that tests start read back instead of measuring again.
    return SentenceTransformerEmbedder(cache_dir=settings.models_dir)


@pytest.fixture(scope="session")
async def worker(stack: Stack, embedder: TextEmbedder) -> AsyncIterator[None]:
    """The real worker with the real bundled model, on the session's task queues."""
    async with running_workers(stack, stack.settings, embedder):
        yield


@pytest.fixture(scope="session")
async def api_url(stack: Stack) -> AsyncIterator[str]:
    async with serve(stack.settings) as url:
        yield url


@pytest.fixture
async def http(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as client:
        yield client


@pytest.fixture
async def tenant(stack: Stack) -> Tenant:
    return await new_tenant(stack)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.support import FIGURES

    if FIGURES:
        terminalreporter.section("figures measured by the tests")
        for line in FIGURES:
            terminalreporter.write_line(line)
