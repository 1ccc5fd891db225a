"""`docingest dev`: PostgreSQL, Temporal + UI, migrations, worker and API, stopped by Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import httpx
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

from cli.bootstrap import DevCredentials, dev_credentials
from cli.processes import (
    http_url,
    interrupt_on_sigterm,
    refuse_busy_port,
    refuse_busy_temporal_ports,
    temporal_dev_server,
)
from core.db import resolve_database_url
from core.embedded import dies_with_this_process, make_home, stop_process, wait_for_port
from core.migrate import upgrade_to_head
from core.settings import Settings
from core.temporal import connect, register_search_attributes


def run_dev(settings: Settings) -> int:
    interrupt_on_sigterm()
    home = settings.resolved_home
    make_home(home)
    refuse_busy_port(settings.api_port, "DOCINGEST_API_PORT", settings.api_host)
    print(f"docingest dev: state in {home}", file=sys.stderr)
    database_url = resolve_database_url(settings)
    env = {
        **os.environ,
        "DOCINGEST_DATABASE_URL": database_url,
        "DOCINGEST_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
    }
    with _temporal(settings) as (temporal_address, server):
        env["DOCINGEST_TEMPORAL_ADDRESS"] = temporal_address
        upgrade_to_head(database_url)
        credentials = asyncio.run(_prepare(settings, temporal_address, database_url))
        with _child("worker", env) as worker, _child("api", env) as api:
            try:
                _wait_healthy(settings, [worker, api])
                asyncio.run(_wait_polling(settings, temporal_address, [worker, api]))
                _print_banner(settings, credentials)
            except KeyboardInterrupt:  # Ctrl-C before (or while) the banner is printed
                return _stopping()
            watched = {"the worker": worker, "the API": api}
            if server is not None:
                log_file = home / "temporal.log"
                watched[f"the Temporal dev server (see {log_file})"] = server
            return _wait_for_exit(watched)


async def _prepare(settings: Settings, temporal_address: str, database_url: str) -> DevCredentials:
    client = await connect(temporal_address, settings.temporal_namespace)
    await register_search_attributes(client)
    return await dev_credentials(settings, database_url)


@contextmanager
def _temporal(settings: Settings) -> Iterator[tuple[str, subprocess.Popen[bytes] | None]]:
    """Temporal's address, and the dev server started for it (None: DOCINGEST_TEMPORAL_ADDRESS)."""
    if settings.temporal_address:
        yield settings.temporal_address, None
        return
    refuse_busy_temporal_ports(settings)
    with temporal_dev_server(settings) as server:
        yield f"127.0.0.1:{settings.temporal_port}", server


@contextmanager
def _child(command: str, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", command], env=env, preexec_fn=dies_with_this_process()
    )
    try:
        yield process
    finally:
        stop_process(process)


EXITED_DURING_START_UP = "a docingest process exited during start-up; see the log above"


def _wait_healthy(settings: Settings, children: list[subprocess.Popen[bytes]]) -> None:
    try:
        wait_for_port(settings.api_host, settings.api_port, timeout=120, process=children[1])
    except RuntimeError as exc:  # the API exited before it listened, having said why: it was
        raise SystemExit(EXITED_DURING_START_UP) from exc  # a traceback below its line
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            raise SystemExit(EXITED_DURING_START_UP)
        with suppress(httpx.HTTPError):
            if httpx.get(f"{http_url(settings.api_host, settings.api_port)}/health").is_success:
                return
        time.sleep(0.5)
    raise SystemExit("the API did not become healthy within 120 s")


async def _wait_polling(
    settings: Settings, temporal_address: str, children: list[subprocess.Popen[bytes]]
) -> None:
    """Until the worker polls both task queues (its model loaded): an upload pasted from the
    banner at once would otherwise sit `queued` for the ~20 s a first start takes."""
    client = await connect(temporal_address, settings.temporal_namespace)
    queues = [
        (settings.task_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
        (settings.embed_task_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
    ]
    deadline = time.monotonic() + 300
    for name, kind in queues:
        while True:
            described = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=settings.temporal_namespace,
                    task_queue=TaskQueue(name=name),
                    task_queue_type=kind,
                )
            )
            if described.pollers:
                break
            if any(child.poll() is not None for child in children):
                raise SystemExit("a docingest process exited during start-up; see the log above")
            if time.monotonic() > deadline:
                raise SystemExit(f"the worker did not poll task queue {name} within 300 s")
            await asyncio.sleep(0.5)


def _wait_for_exit(children: dict[str, subprocess.Popen[bytes]]) -> int:
    """Until Ctrl-C, or until one of `children` (named by its key) exits. The Temporal server
    is one: left unwatched, dev ran on when it died, its API 503 and its worker silent."""
    try:
        while all(child.poll() is None for child in children.values()):
            time.sleep(0.5)
    except KeyboardInterrupt:
        return _stopping()
    exited = next(name for name, child in children.items() if child.poll() is not None)
    print(f"docingest dev: {exited} exited; stopping the others", file=sys.stderr)
    return 1


def _stopping() -> int:
    print("\ndocingest dev: stopping…", file=sys.stderr)
    return 0


def _print_banner(settings: Settings, credentials: DevCredentials) -> None:
    api = http_url(settings.api_host, settings.api_port)
    ui = (
        f"http://127.0.0.1:{settings.temporal_ui_port}"
        if not settings.temporal_address
        else "(your Temporal's UI)"
    )
    auth = f'-H "Authorization: Bearer {credentials.api_key}"'
    print(
        f"""
docingest is running — Ctrl-C stops everything; state stays in {settings.resolved_home}

  API          {api}   (OpenAPI docs: {api}/docs)
  Temporal UI  {ui}
  API key      {credentials.api_key}
  Agent        {credentials.agent_id}  (demo)

Upload a document:
  curl {auth} -F "file=@README.md" "{api}/upload/agent?agent_id={credentials.agent_id}"

Watch it (use the task_id from the answer):
  curl {auth} {api}/upload/status/TASK_ID
  curl {auth} {api}/api/progress
""",
        flush=True,
    )
