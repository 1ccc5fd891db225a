"""The worker refuses a model whose width differs from the schema, and a stopping worker lets
its running activities finish."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from core.db import create_engine
from core.errors import ConfigurationError
from core.models import EMBEDDING_DIMENSION
from worker.main import _run_until, check_embedding_dimension, make_worker

# Set by `one_second_step` once it runs, so the test stops the worker mid-step.
STEP_STARTED = threading.Event()


@activity.defn
def one_second_step() -> int:
    """A step of about a second that heartbeats, as the long steps do; says its attempt."""
    STEP_STARTED.set()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        activity.heartbeat()
        time.sleep(0.1)
    return activity.info().attempt


@workflow.defn
class OneStep:
    @workflow.run
    async def run(self) -> int:
        return await workflow.execute_activity(
            one_second_step,
            start_to_close_timeout=timedelta(minutes=1),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5),
        )


async def test_worker_checks_the_model_dimension_against_the_schema(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1)
    try:
        await check_embedding_dimension(engine, EMBEDDING_DIMENSION)
        with pytest.raises(ConfigurationError, match="768-dimensional vectors"):
            await check_embedding_dimension(engine, 768)
    finally:
        await engine.dispose()


async def test_worker_shutdown_lets_a_running_step_finish_on_its_first_attempt(
    temporal_address: str,
) -> None:
    """SIGTERM (a rolling restart) mid-step: the step completes instead of being cancelled
    and run again from scratch by the next worker."""
    client = await Client.connect(temporal_address)
    task_queue = f"shutdown-{uuid.uuid4()}"
    STEP_STARTED.clear()

    def worker(executor: ThreadPoolExecutor) -> Worker:
        return make_worker(
            client,
            task_queue,
            workflows=[OneStep],
            activities=[one_second_step],
            activity_executor=executor,
            workflow_runner=UnsandboxedWorkflowRunner(),
        )

    with ThreadPoolExecutor(max_workers=2) as executor:
        stop = asyncio.Event()
        running = asyncio.create_task(_run_until([worker(executor)], stop))
        handle = await client.start_workflow(
            OneStep.run, id=f"shutdown-{uuid.uuid4()}", task_queue=task_queue
        )
        assert await asyncio.to_thread(STEP_STARTED.wait, 30)
        stop.set()  # what SIGINT/SIGTERM does in run_worker
        await asyncio.wait_for(running, 30)
        async with worker(executor):  # the restarted worker finishes the workflow
            attempt = await asyncio.wait_for(handle.result(), 60)
    assert attempt == 1
