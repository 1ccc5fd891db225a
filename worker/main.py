"""The worker process: builds its dependencies once, registers, and polls both task queues."""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.worker import Worker

from activities.chunk import ChunkActivities
from activities.cleanup import CleanupActivities
from activities.embed import EmbedActivities, TextEmbedder, model_folder
from activities.embed_and_store import EmbedAndStoreActivities
from activities.embed_process import EmbedderOptions, EmbedderProcess
from activities.extract import ExtractActivities
from activities.extract_and_chunk import ExtractAndChunkActivities
from activities.reader_process import ReaderLimits
from activities.reader_process import start_server as start_reader_server
from activities.staging_cleanup import StagingCleanupActivities
from activities.store import StoreActivities
from activities.token_budget import model_token_budget
from core.db import create_engine, create_sessionmaker, resolve_database_url
from core.errors import ConfigurationError
from core.runtime import freeze_startup_objects
from core.settings import Settings
from core.staging import StagingStore
from core.temporal import connect, register_search_attributes
from worker.schedules import ensure_staging_schedule
from workflows.ingest import IngestDocument
from workflows.staging_cleanup import CleanStaging

log = logging.getLogger(__name__)


# Activity slots of one worker process, all on one executor of EXECUTOR_THREADS threads: the
# main queue's activities, the short local steps and the embed batches always find a thread.
MAIN_ACTIVITIES = 4
LOCAL_STEPS = 2
# Two embed batches at once share the embedder: their micro-batches queue for the same lanes
# (one forward pass per core, whoever asked), so while one batch waits for its last part, or
# writes its vectors and reports back, the other's parts keep every core busy.
EMBED_BATCHES = 2
EXECUTOR_THREADS = MAIN_ACTIVITIES + LOCAL_STEPS + EMBED_BATCHES + 1  # + one spare
# How long a thread may keep the GIL while another waits for it (Python's default: 5 ms). A
# lane's forward pass hands the GIL back and needs it again between its torch operations,
# each well under a millisecond; while the event loop runs Python (workflow activations, the
# SDK, a store), each of those waits could last the whole 5 ms.
GIL_SWITCH_INTERVAL_S = 0.001
# How long a stopping worker (SIGTERM, a rolling restart) lets its running activities finish
# before it cancels them; a cancelled one is retried elsewhere from scratch, using one of its
# step's attempts. Under the 15 s `docingest dev` waits after its SIGTERM (cli/dev.py).
SHUTDOWN_GRACE = timedelta(seconds=10)


class Role(enum.StrEnum):
    ALL = "all"
    MAIN = "main"  # workflows, extract, chunk, store, cleanup
    EMBED = "embed"  # embedding (and storing a one-batch document): the role for GPU machines


def reader_limits(settings: Settings) -> ReaderLimits:
    return ReaderLimits(
        time_s=settings.extract_time_limit.total_seconds(),
        memory_mib=settings.extract_memory_limit_mib,
    )


def make_worker(client: Client, task_queue: str, **options: Any) -> Worker:
    """A worker whose shutdown lets running activities finish for up to `SHUTDOWN_GRACE`."""
    return Worker(
        client, task_queue=task_queue, graceful_shutdown_timeout=SHUTDOWN_GRACE, **options
    )


def build_workers(
    client: Client,
    settings: Settings,
    staging: StagingStore,
    sessionmaker: async_sessionmaker[AsyncSession],
    embedder: TextEmbedder | None,
    executor: ThreadPoolExecutor,
    role: Role = Role.ALL,
) -> list[Worker]:
    workers: list[Worker] = []
    if role in (Role.ALL, Role.MAIN):
        store = StoreActivities(staging, sessionmaker, client)
        extract = ExtractActivities(staging, reader_limits(settings))
        # Chunks fit the model's window: it embeds no text past its max_seq_length.
        chunk = ChunkActivities(staging, model_token_budget(model_folder(settings.embedding_model)))
        workers.append(
            make_worker(
                client,
                settings.task_queue,
                workflows=[IngestDocument, CleanStaging],
                activities=[
                    extract.extract,
                    chunk.chunk,
                    ExtractAndChunkActivities(extract, chunk).extract_and_chunk,
                    store.store,
                    store.record_outcome,
                    CleanupActivities(staging).cleanup,
                    StagingCleanupActivities(
                        staging,
                        client,
                        sessionmaker,
                        settings.staging_ttl,
                        settings.upload_orphan_grace,
                    ).clean_staging,
                ],
                activity_executor=executor,
                max_concurrent_activities=MAIN_ACTIVITIES,
                # The short local steps (workflows/ingest.py) share the executor: unbounded
                # (the SDK's default is 100), a burst of uploads queued their extractions ahead
                # of the embed activity's thread, and the model waited (the load test took
                # 119 s instead of 86).
                max_concurrent_local_activities=LOCAL_STEPS,
            )
        )
    if role in (Role.ALL, Role.EMBED):
        if embedder is None:
            raise ConfigurationError("an embed worker needs an embedding model")
        embed = EmbedActivities(staging, embedder, settings.embedding_batch_size)
        embed_and_store = EmbedAndStoreActivities(
            embed, StoreActivities(staging, sessionmaker, client), asyncio.get_running_loop()
        )
        workers.append(
            make_worker(
                client,
                settings.embed_task_queue,
                activities=[embed.embed, embed_and_store.embed_and_store],
                activity_executor=executor,
                max_concurrent_activities=EMBED_BATCHES,
            )
        )
    return workers


async def check_embedding_dimension(engine: AsyncEngine, dimension: int) -> None:
    """Refuse to start when the model's width differs from the `chunks.embedding` column."""
    async with engine.connect() as connection:
        column = (
            await connection.execute(
                text(
                    "SELECT atttypmod FROM pg_attribute "
                    "WHERE attrelid = to_regclass('chunks') AND attname = 'embedding'"
                )
            )
        ).scalar()
    if column is None:
        raise ConfigurationError("the database has no schema yet: run `docingest migrate`")
    if int(column) != dimension:
        raise ConfigurationError(
            f"the embedding model produces {dimension}-dimensional vectors but the database "
            f"stores {column}; use a {column}-dimensional model or migrate the schema"
        )


async def run_worker(settings: Settings, role: Role = Role.ALL) -> None:
    """Run until SIGINT/SIGTERM; running activities then get `SHUTDOWN_GRACE` to finish, after
    which they are cancelled and retried on another worker."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # First: a staging folder that cannot be made is said at once, not after the wait for
    # Temporal and the model's load.
    staging = StagingStore(settings.resolved_staging_url)
    client = await connect(settings.resolved_temporal_address, settings.temporal_namespace)
    await register_search_attributes(client)
    if role in (Role.ALL, Role.MAIN):
        await ensure_staging_schedule(client, settings)
    engine = create_engine(resolve_database_url(settings), pool_size=4)
    embedder: EmbedderProcess | None = None
    if role in (Role.ALL, Role.EMBED):
        # In a child process: the lanes never wait for this one's GIL (embed_process.py).
        options = EmbedderOptions(
            settings.embedding_model,
            settings.embedding_batch_size,
            settings.embedding_device,
            settings.embedding_precision,
            settings.models_dir,
            logging.getLogger().getEffectiveLevel(),
        )
        embedder = EmbedderProcess(options)
        log.info(
            "embedding on %s in %s with %s",
            embedder.device,
            embedder.precision,
            embedder.model_name,
        )
        await check_embedding_dimension(engine, embedder.dimension)
    if role in (Role.ALL, Role.MAIN):
        start_reader_server()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        with ThreadPoolExecutor(max_workers=EXECUTOR_THREADS) as executor:
            workers = build_workers(
                client, settings, staging, create_sessionmaker(engine), embedder, executor, role
            )
            log.info("worker polling %s", ", ".join(w.task_queue for w in workers))
            freeze_startup_objects()  # the SDK and the code: never walked by the GC again
            await _run_until(workers, stop)
    finally:
        if embedder is not None:
            embedder.close()
    await engine.dispose()


async def _run_until(workers: list[Worker], stop: asyncio.Event) -> None:
    runs = [asyncio.create_task(worker.run()) for worker in workers]
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([*runs, waiter], return_when=asyncio.FIRST_COMPLETED)
    # Together, so that stopping both queues' workers takes one grace, not one each.
    await asyncio.gather(*(worker.shutdown() for worker in workers))
    waiter.cancel()
    for run in runs:
        if run.done() and run.exception() is not None:
            raise run.exception()  # type: ignore[misc]
