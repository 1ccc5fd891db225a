"""The `docingest` console script, run as a user runs it."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
from sqlalchemy import make_url

from cli.processes import http_url
from core.embedded import free_port
from core.keys import owner_for_key
from tests.core.test_migrations import scratch_database
from tests.support import Stack, private_home, unreachable_database_url

DOCINGEST = str(Path(sys.executable).parent / "docingest")


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DOCINGEST, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


async def test_cli_keys_create_prints_only_a_working_key(stack: Stack, database_url: str) -> None:
    result = run_cli("keys", "create", "--name", "ci", env={"DOCINGEST_DATABASE_URL": database_url})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("dik_")
    async with stack.sessionmaker() as session:
        assert await owner_for_key(session, lines[0]) is not None


async def test_cli_keys_list_names_the_owner_a_second_key_can_join(
    stack: Stack, database_url: str
) -> None:
    env = {"DOCINGEST_DATABASE_URL": database_url}
    first = run_cli("keys", "create", "--name", "team-a", env=env).stdout.strip()
    listed = run_cli("keys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert first not in listed.stdout  # never the key itself
    row = next(line.split("\t") for line in listed.stdout.splitlines() if "\tteam-a\t" in line)
    owner = row[0]
    assert row[3] == first[: len(row[3]) - 1] + "…"  # its lookup prefix
    second = run_cli("keys", "create", "--name", "team-a-2", "--owner", owner, env=env)
    assert second.returncode == 0, second.stderr
    async with stack.sessionmaker() as session:
        assert str(await owner_for_key(session, second.stdout.strip())) == owner

    malformed = run_cli("keys", "create", "--name", "x", "--owner", "garbage", env=env)
    unknown = run_cli("keys", "create", "--name", "x", "--owner", str(uuid.UUID(int=7)), env=env)
    assert malformed.returncode == unknown.returncode == 1
    assert malformed.stderr.strip() == (
        "docingest keys: --owner 'garbage' is not an owner id (a UUID)"
    )
    assert unknown.stderr.strip().endswith(
        f"docingest keys: no owner {uuid.UUID(int=7)}: `docingest keys list` shows the owners"
    )


async def test_cli_keys_revoke_deletes_the_key_named_by_its_listed_prefix(
    stack: Stack, database_url: str
) -> None:
    """A leaked key is revoked by the prefix `keys list` prints; the owner keeps its data and
    its other keys."""
    env = {"DOCINGEST_DATABASE_URL": database_url}
    leaked = run_cli("keys", "create", "--name", "leaked", env=env).stdout.strip()
    async with stack.sessionmaker() as session:
        owner = await owner_for_key(session, leaked)
    assert owner is not None
    kept = run_cli("keys", "create", "--name", "kept", "--owner", str(owner), env=env)
    listed = run_cli("keys", "list", env=env).stdout
    prefix = next(line.split("\t")[3] for line in listed.splitlines() if "\tleaked\t" in line)

    revoked = run_cli("keys", "revoke", prefix, env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stderr.strip().endswith(
        f"revoked key 'leaked' ({prefix}) of owner {owner}; API processes refuse it within "
        "DOCINGEST_KEY_CACHE_TTL (10 s)"
    )
    async with stack.sessionmaker() as session:
        assert await owner_for_key(session, leaked) is None
        assert await owner_for_key(session, kept.stdout.strip()) == owner
    assert prefix not in run_cli("keys", "list", env=env).stdout

    again = run_cli("keys", "revoke", leaked, env=env)  # the key itself names it too
    nonsense = run_cli("keys", "revoke", "dik_short", env=env)
    assert again.returncode == nonsense.returncode == 1
    assert again.stderr.strip().endswith(
        f"docingest keys: no key {prefix}: `docingest keys list` shows the keys"
    )
    assert nonsense.stderr.strip().endswith(
        "docingest keys: 'dik_short' names no key: give the key, or its prefix as `docingest "
        "keys list` prints it (dik_ and 12 characters)"
    )


def test_cli_migrate_twice_is_harmless(database_url: str) -> None:
    for _ in range(2):
        result = run_cli("migrate", env={"DOCINGEST_DATABASE_URL": database_url})
        assert result.returncode == 0, result.stderr


def run_at_once(*args: str, env: dict[str, str]) -> list[tuple[int, str]]:
    """Start two `docingest ARGS` at the same moment: their exit statuses and stderr."""
    processes = [
        subprocess.Popen([DOCINGEST, *args], env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    return [(process.wait(timeout=120), process.communicate()[1]) for process in processes]


def test_cli_two_commands_at_once_on_a_fresh_home() -> None:
    """Two processes that start together on a fresh DOCINGEST_HOME (the API beside a worker,
    two `migrate`) both found no `docingest` database and both created it: one died of a
    UniqueViolation traceback."""
    for _ in range(2):  # each try loses the race most of the time
        env = {**os.environ, "DOCINGEST_HOME": str(private_home("at-once"))}
        env.pop("DOCINGEST_DATABASE_URL", None)
        for code, stderr in run_at_once("keys", "list", env=env):
            assert (code, stderr.splitlines()[-1:]) == (
                1,
                ["docingest keys: the database has no schema yet: run `docingest migrate`"],
            ), stderr


def test_cli_migrate_gives_up_on_a_database_that_never_answers() -> None:
    """A host that takes the connection and says nothing (a stuck server, a proxy whose
    database is gone): the migration's connection gives up as every other one does."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"postgresql://docingest@127.0.0.1:{silent.getsockname()[1]}/docingest"
        started = time.monotonic()
        result = run_cli("migrate", env={"DOCINGEST_DATABASE_URL": url})
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "docingest migrate: the database cannot be reached: connection timeout expired"
    )
    assert time.monotonic() - started < 60


MIGRATION_LOCK = 4_242_001  # migrations/env.py


def test_cli_migrate_twice_at_once_on_a_new_database(stack: Stack) -> None:
    """README: migrate is safe to run concurrently. The one waiting for the migration lock
    waited in a transaction, whose snapshot the CREATE INDEX CONCURRENTLY (0006) of the one
    migrating waited for: PostgreSQL failed one of them ("the database cannot be reached:
    deadlock detected")."""
    with scratch_database(stack) as url:
        database = make_url(url)
        with psycopg.connect(
            host=str(database.query["host"]), user=database.username, dbname=database.database
        ) as holder:
            holder.autocommit = True
            # Both wait for the lock, then the first to get it migrates beside the other.
            holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
            env = {**os.environ, "DOCINGEST_DATABASE_URL": url}
            processes = [
                subprocess.Popen([DOCINGEST, "migrate"], env=env, stderr=subprocess.PIPE, text=True)
                for _ in range(2)
            ]
            deadline = time.monotonic() + 60
            while holder.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone() != (2,):
                assert time.monotonic() < deadline, "the migrations did not connect"
                time.sleep(0.1)
            time.sleep(1)
            holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        for process in processes:
            stderr = process.communicate(timeout=120)[1]
            assert (process.returncode, stderr.splitlines()[-1:]) == (
                0,
                ["database schema is up to date"],
            ), stderr


def test_cli_errors_are_one_line_each_not_a_traceback() -> None:
    """What an operator reads when a setting is wrong or a service is out of reach."""
    refused = run_cli("migrate", env={"DOCINGEST_CHUNK_SIZE": "big"})
    down = run_cli("migrate", env={"DOCINGEST_DATABASE_URL": unreachable_database_url()})
    assert (refused.returncode, down.returncode) == (1, 1)
    assert refused.stderr.splitlines() == [
        "docingest migrate: invalid settings",
        "  DOCINGEST_CHUNK_SIZE: Input should be a valid integer, unable to parse string as an "
        "integer",
    ]
    assert down.stderr.splitlines()[-1].startswith(
        "docingest migrate: the database cannot be reached: connection failed"
    )
    assert "Traceback" not in down.stderr


@pytest.mark.parametrize(
    "args", [["migrate"], ["keys", "list"], ["worker"], ["temporal"], ["dev"], ["api"]]
)
def test_cli_home_that_cannot_be_made_is_one_line(tmp_path: Path, args: list[str]) -> None:
    """A DOCINGEST_HOME that is a file (or under a folder the user may not write) was an
    OSError traceback from each command that makes it."""
    home = tmp_path / "home"
    home.write_text("a file, not a folder")
    ports = {"DOCINGEST_TEMPORAL_PORT": str(free_port()), "DOCINGEST_API_PORT": str(free_port())}
    result = run_cli(*args, env={"DOCINGEST_HOME": str(home), **ports})
    assert (result.returncode, result.stderr.splitlines()[-1]) == (
        1,
        f"docingest {args[0]}: DOCINGEST_HOME: cannot make the folder {home}: File exists",
    ), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "error"),
    [
        (
            {"DOCINGEST_LOG_LEVEL": "verbose"},
            "  DOCINGEST_LOG_LEVEL ('verbose') must be one of DEBUG, INFO, WARNING, ERROR, "
            "CRITICAL",
        ),
        (
            {"DOCINGEST_DATABASE_URL": "db.example.com:5432"},
            "  DOCINGEST_DATABASE_URL must be a PostgreSQL URL, "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
        ),
        (
            {"DOCINGEST_DATABASE_URL": "mysql://docingest:secret@db/docingest"},
            "  DOCINGEST_DATABASE_URL must be a PostgreSQL URL, "
            "postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
        ),
        (
            {"DOCINGEST_DATABASE_URL": "postgresql+asyncpg://docingest:secret@db/docingest"},
            "  DOCINGEST_DATABASE_URL names the asyncpg driver: docingest connects with "
            "psycopg 3, postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
        ),
        (
            {"DOCINGEST_TASK_QUEUE": ""},
            "  DOCINGEST_TASK_QUEUE: String should have at least 1 character",
        ),
        (
            {"DOCINGEST_TEMPORAL_NAMESPACE": ""},
            "  DOCINGEST_TEMPORAL_NAMESPACE: String should have at least 1 character",
        ),
        (
            {"DOCINGEST_API_HOST": ""},  # it listened on every interface
            "  DOCINGEST_API_HOST: String should have at least 1 character",
        ),
        (
            {"DOCINGEST_HOME": ""},  # the state went to the current folder
            "  DOCINGEST_HOME is empty: give the folder for docingest's state, or unset it for "
            ".docingest",
        ),
        (
            {"DOCINGEST_TEMPORAL_ADDRESS": "http://temporal 7233"},
            "  DOCINGEST_TEMPORAL_ADDRESS ('http://temporal 7233') must be HOST:PORT, "
            "e.g. temporal:7233",
        ),
        (
            {"DOCINGEST_KEY_CACHE_TTL": "10s"},
            "  DOCINGEST_KEY_CACHE_TTL: '10s' is not a duration: give whole seconds (3600), "
            "HH:MM:SS (1:00:00) or ISO 8601 (PT1H, P7D)",
        ),
        (
            {"DOCINGEST_STAGING_URL": "s3://bucket/prefix"},  # s3fs is not installed
            "  DOCINGEST_STAGING_URL: Install s3fs to access S3",
        ),
        (
            {"DOCINGEST_STAGING_URL": "s4://bucket/prefix"},
            "  DOCINGEST_STAGING_URL: Protocol not known: s4",
        ),
    ],
)
def test_cli_invalid_settings_are_named_not_a_traceback(env: dict[str, str], error: str) -> None:
    result = run_cli("migrate", env=env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["docingest migrate: invalid settings", error]


def test_cli_worker_of_a_namespace_temporal_lacks_says_so_in_one_line(
    temporal_address: str,
) -> None:
    result = run_cli(
        "worker",
        env={
            "DOCINGEST_DATABASE_URL": unreachable_database_url(),
            "DOCINGEST_TEMPORAL_ADDRESS": temporal_address,
            "DOCINGEST_TEMPORAL_NAMESPACE": "no-such-namespace",
        },
    )
    assert result.returncode == 1, result.stderr  # not a crash of the SDK at exit
    assert result.stderr.splitlines()[-1] == (
        "docingest worker: Temporal refused the request: Namespace no-such-namespace is not found."
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_worker_stopped_while_it_waits_for_temporal_exits_in_one_line(
    signum: signal.Signals,
) -> None:
    """Ctrl-C or SIGTERM while the worker waits for Temporal (up to 60 s; loading the model
    is the same): Ctrl-C was a two-part traceback (CancelledError, then KeyboardInterrupt) and
    SIGTERM killed it outright (-15). README: SIGINT or SIGTERM stops `docingest worker`."""
    process = subprocess.Popen(
        [DOCINGEST, "worker"],
        env={
            **os.environ,
            "DOCINGEST_DATABASE_URL": unreachable_database_url(),
            "DOCINGEST_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
            "DOCINGEST_LOG_LEVEL": "INFO",
        },
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    try:
        seen = []
        for line in process.stderr:
            seen.append(line)
            if "waiting for Temporal at" in line:
                break
        process.send_signal(signum)
        seen.append(process.communicate(timeout=30)[1])
    finally:
        process.kill()
    stderr = "".join(seen)
    assert "Traceback" not in stderr, stderr
    assert (process.returncode, stderr.splitlines()[-1]) == (
        0,
        "docingest worker: stopped during start-up",
    ), stderr


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "team\tb"])
def test_cli_keys_create_refuses_a_name_it_cannot_store_or_list(
    stack: Stack, database_url: str, name: str
) -> None:
    result = run_cli("keys", "create", "--name", name, env={"DOCINGEST_DATABASE_URL": database_url})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "docingest keys: --name must be 1-200 printable characters (no tab or line break: "
        "`docingest keys list` prints one key a line)"
    ]


def test_cli_api_refuses_a_port_out_of_range() -> None:
    # Refused before anything starts; were it not, no embedded database is started here.
    result = run_cli(
        "api", "--port", "99999", env={"DOCINGEST_DATABASE_URL": unreachable_database_url()}
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "docingest api: error: argument --port: '99999' is not a port (1-65535)"
    )


def test_cli_api_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    """As the worker and the other commands do: exit status 1 and one line, not uvicorn's
    exit status 3 after its own log lines (or a traceback, for the app's start-up)."""
    env = {"DOCINGEST_HOME": str(tmp_path), "DOCINGEST_DATABASE_URL": unreachable_database_url()}
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        busy = run_cli("api", env={**env, "DOCINGEST_API_PORT": str(port)})
    (tmp_path / "file").write_text("not a folder")
    staging = tmp_path / "file" / "staging"
    no_staging = run_cli(
        "api", "--port", str(free_port()), env={**env, "DOCINGEST_STAGING_URL": str(staging)}
    )
    assert (busy.returncode, no_staging.returncode) == (1, 1), no_staging.stderr
    assert busy.stderr.splitlines()[-1] == (
        f"docingest api: port {port} is in use: stop what runs there or set DOCINGEST_API_PORT"
    )
    assert no_staging.stderr.splitlines()[-1] == (
        f"docingest api: DOCINGEST_STAGING_URL: cannot make the folder {staging}: Not a directory"
    )
    assert "Traceback" not in no_staging.stderr  # uvicorn logged the start-up's above the line


def test_cli_worker_whose_staging_folder_cannot_be_made_says_so_in_one_line(
    tmp_path: Path,
) -> None:
    """As the API does: it was a NotADirectoryError traceback, once the model had loaded."""
    (tmp_path / "file").write_text("not a folder")
    staging = tmp_path / "file" / "staging"
    result = run_cli(
        "worker",
        env={
            "DOCINGEST_HOME": str(tmp_path),
            "DOCINGEST_DATABASE_URL": unreachable_database_url(),
            "DOCINGEST_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
            "DOCINGEST_STAGING_URL": str(staging),
        },
    )
    assert (result.returncode, result.stderr.splitlines()) == (
        1,
        [
            f"docingest worker: DOCINGEST_STAGING_URL: cannot make the folder {staging}: "
            "Not a directory"
        ],
    ), result.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_api_stopped_stops_the_embedded_postgres_it_started(signum: signal.Signals) -> None:
    """README: the embedded PostgreSQL is stopped when the last docingest process exits.
    uvicorn raised SIGTERM again once it had shut down, and its default action killed the API
    (-15) before the atexit handler that unregisters it: PostgreSQL ran on, with nobody left."""
    home = private_home("api-stop")
    port = free_port()
    env = {
        **os.environ,
        "DOCINGEST_HOME": str(home),
        "DOCINGEST_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",  # the API does not wait
    }
    env.pop("DOCINGEST_DATABASE_URL", None)
    process = subprocess.Popen(
        [DOCINGEST, "api", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not _answers(port):
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
        process.send_signal(signum)
        assert process.wait(timeout=60) == 0, process.communicate()[1]
    finally:
        process.kill()
    postmaster = home / "postgres" / "postmaster.pid"
    deadline = time.monotonic() + 30
    while postmaster.exists():
        assert time.monotonic() < deadline, "PostgreSQL still runs after the API stopped"
        time.sleep(0.2)


def _answers(port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code in (200, 503)
    return False


def dev_ports() -> dict[str, str]:
    """Free ports for a `docingest dev` of a test's own."""
    return {
        "DOCINGEST_API_PORT": str(free_port()),
        "DOCINGEST_TEMPORAL_PORT": str(free_port()),
        "DOCINGEST_TEMPORAL_UI_PORT": str(free_port()),
    }


def start_dev(home: Path, ports: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start `docingest dev`; return it and its banner once it printed one."""
    env = {**os.environ, "DOCINGEST_HOME": str(home), **ports}
    env.pop("DOCINGEST_DATABASE_URL", None)
    env.pop("DOCINGEST_TEMPORAL_ADDRESS", None)
    log = home / "dev.log"
    with log.open("a") as stderr:
        process = subprocess.Popen(
            [DOCINGEST, "dev"], env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    assert process.stdout is not None
    banner: list[str] = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise AssertionError(f"docingest dev exited: {''.join(banner)}\n{_tail(log)}")
        banner.append(line)
        if line.startswith("  curl") and "/api/progress" in line:
            return process, "".join(banner)
    raise AssertionError(f"no banner from docingest dev\n{_tail(log)}")


def _tail(log: Path, lines: int = 60) -> str:
    """The end of dev's log (its own and its children's stderr), for a failure message."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def stop_dev(process: subprocess.Popen[str], home: Path) -> None:
    """SIGTERM (as Ctrl-C) stops every process dev started, PostgreSQL included."""
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"
    postmaster = home / "postgres" / "postmaster.pid"
    deadline = time.monotonic() + 30
    while postmaster.exists():
        assert time.monotonic() < deadline, "PostgreSQL still runs after dev stopped"
        time.sleep(0.2)


@pytest.mark.slow
def test_cli_dev_prints_a_curl_that_works_and_keeps_state() -> None:
    tmp_path = private_home("dev")
    ports = dev_ports()
    process, banner = start_dev(tmp_path, ports)
    try:
        upload = next(line for line in banner.splitlines() if "-F" in line)
        document = tmp_path / "README.md"
        document.write_text("# Hello\n\nThe dev stack ingests this file end to end.\n")
        args = shlex.split(upload.strip().replace("file=@README.md", f"file=@{document}"))
        assert args[0] == "curl"
        headers = dict([args[2].split(": ", 1)])
        url = args[-1]
        with httpx.Client(timeout=30) as http:
            accepted = http.post(url, headers=headers, files={"file": document.open("rb")})
            assert accepted.status_code == 202, accepted.text
            status_url = (
                url.split("/upload/agent")[0] + "/upload/status/" + accepted.json()["task_id"]
            )
            deadline = time.monotonic() + 120
            while http.get(status_url, headers=headers).json()["status"] != "complete":
                assert time.monotonic() < deadline, "upload did not complete"
                time.sleep(0.5)
        assert f"Temporal UI  http://127.0.0.1:{ports['DOCINGEST_TEMPORAL_UI_PORT']}" in banner
        ui = httpx.get(f"http://127.0.0.1:{ports['DOCINGEST_TEMPORAL_UI_PORT']}/", timeout=10)
        assert ui.status_code == 200
    finally:
        stop_dev(process, tmp_path)

    key = re.search(r"API key +(\S+)", banner)
    process, second_banner = start_dev(tmp_path, ports)
    try:
        assert key is not None and key.group(1) in second_banner  # the same key survives
        with httpx.Client(timeout=30) as http:
            listed = http.get(
                f"http://127.0.0.1:{ports['DOCINGEST_API_PORT']}/api/progress",
                headers={"Authorization": f"Bearer {key.group(1)}"},
            )
        assert [task["status"] for task in listed.json()["tasks"]] == ["complete"]
    finally:
        stop_dev(process, tmp_path)


@pytest.mark.slow
def test_cli_dev_killed_leaves_no_process_and_starts_again() -> None:
    """SIGKILL (the OOM killer, `kill -9`) runs no `finally`: the children must go anyway,
    else they keep the ports and the next `docingest dev` refuses to start."""
    home = private_home("dev-kill")
    ports = dev_ports()
    process, _ = start_dev(home, ports)
    children = psutil.Process(process.pid).children(recursive=True)
    try:
        process.kill()
        process.wait()
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running: {[p.cmdline() for p in alive]}"
    finally:
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    process, _ = start_dev(home, ports)  # PostgreSQL, still running, is joined
    stop_dev(process, home)


@pytest.mark.slow
def test_cli_dev_ctrl_c_twice_stops_everything_without_a_traceback() -> None:
    """A second Ctrl-C while dev stops its processes (the terminal sends it to the whole
    group) printed a KeyboardInterrupt traceback over their logs, and dev died of SIGINT."""
    home = private_home("dev-twice")
    ports = dev_ports()
    process, _ = start_dev(home, ports)
    children = psutil.Process(process.pid).children(recursive=True)
    log = home / "dev.log"
    process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 30
    while "docingest dev: stopping" not in log.read_text():
        assert time.monotonic() < deadline, _tail(log)
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130, _tail(log)
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"
    assert "Traceback" not in log.read_text(), _tail(log)
    assert "docingest dev: interrupted" in log.read_text().splitlines(), _tail(log)


@pytest.mark.slow
def test_cli_dev_whose_temporal_server_dies_says_so_and_stops() -> None:
    """dev stopped everything when its worker or API exited, but ran on without a word when
    the Temporal server it started died: the banner said running, uploads were 503."""
    home = private_home("dev-temporal-dies")
    process, _ = start_dev(home, dev_ports())
    children = psutil.Process(process.pid).children(recursive=True)
    try:
        next(child for child in children if "start-dev" in child.cmdline()).kill()
        assert process.wait(timeout=60) == 1, _tail(home / "dev.log")
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running: {[p.cmdline() for p in alive]}"
    finally:
        process.kill()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
    assert (
        f"docingest dev: the Temporal dev server (see {home / 'temporal.log'}) exited; "
        "stopping the others"
    ) in (home / "dev.log").read_text().splitlines(), _tail(home / "dev.log")


def test_cli_temporal_killed_takes_its_server_along(tmp_path: Path) -> None:
    _stop_temporal(tmp_path, signal.SIGKILL)


def temporal_env(home: Path, port: int, ui_port: int) -> dict[str, str]:
    return {
        "DOCINGEST_HOME": str(home),
        "DOCINGEST_TEMPORAL_PORT": str(port),
        "DOCINGEST_TEMPORAL_UI_PORT": str(ui_port),
    }


def test_cli_temporal_refuses_a_busy_port(tmp_path: Path) -> None:
    port = free_port()
    with socket.create_server(("127.0.0.1", port)):
        result = run_cli("temporal", env=temporal_env(tmp_path, port, free_port()))
    assert result.returncode != 0
    assert f"port {port} is in use" in result.stderr
    assert "DOCINGEST_TEMPORAL_PORT" in result.stderr


def test_cli_dev_refuses_a_busy_ipv6_api_port(tmp_path: Path) -> None:
    """DOCINGEST_API_HOST may be an IPv6 address: its port is probed over IPv6 (the probe
    raised a traceback before) and URLs put it in brackets."""
    port = free_port()
    try:
        listener = socket.create_server(("::1", port), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with listener:
        result = run_cli(
            "dev",
            env={
                "DOCINGEST_HOME": str(tmp_path),
                "DOCINGEST_API_HOST": "::1",
                "DOCINGEST_API_PORT": str(port),
            },
        )
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"port {port} is in use: stop what runs there or set DOCINGEST_API_PORT"
    )
    assert http_url("::1", 8000) == "http://[::1]:8000"
    assert http_url("0.0.0.0", 8000) == "http://0.0.0.0:8000"


def test_cli_dev_whose_api_cannot_start_says_so_without_a_traceback(
    database_url: str, temporal_address: str, tmp_path: Path
) -> None:
    """The API's own line says why; `dev` then said a RuntimeError traceback below it."""
    (tmp_path / "file").write_text("not a folder")
    staging = tmp_path / "file" / "staging"
    result = run_cli(
        "dev",
        env={
            "DOCINGEST_HOME": str(tmp_path),
            "DOCINGEST_DATABASE_URL": database_url,
            "DOCINGEST_TEMPORAL_ADDRESS": temporal_address,
            "DOCINGEST_STAGING_URL": str(staging),
            "DOCINGEST_API_PORT": str(free_port()),
        },
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert (
        f"docingest api: DOCINGEST_STAGING_URL: cannot make the folder {staging}: Not a directory"
        in result.stderr.splitlines()
    )
    assert result.stderr.splitlines()[-1] == (
        "a docingest process exited during start-up; see the log above"
    )


def test_cli_temporal_stops_its_server_on_sigterm(tmp_path: Path) -> None:
    _stop_temporal(tmp_path, signal.SIGTERM)


def _stop_temporal(home: Path, signum: signal.Signals) -> None:
    """Start `docingest temporal`, send it `signum` once its server answers, and check that
    the server went too (SIGTERM: it stops it and exits 0; SIGKILL: its death signal)."""
    port = free_port()
    process = subprocess.Popen(
        [DOCINGEST, "temporal"],
        env={**os.environ, **temporal_env(home, port, free_port())},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    children: list[psutil.Process] = []
    try:
        for line in process.stderr:
            if line.startswith(f"Temporal on 127.0.0.1:{port}"):
                break
        children = psutil.Process(process.pid).children(recursive=True)
        assert children, "docingest temporal started no server"
        process.send_signal(signum)
        code = process.wait(timeout=60)
        assert code == (0 if signum == signal.SIGTERM else -signal.SIGKILL)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive, f"left running: {[p.cmdline() for p in alive]}"
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
    finally:
        process.kill()
        process.stderr.close()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


# What a clone without Git LFS holds in place of a large file.
LFS_POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db\n"
    "size 90868376\n"
)


@pytest.mark.parametrize(
    ("pointer", "reason"),
    [
        (
            None,
            "Error no file named model.safetensors, or pytorch_model.bin, found in directory "
            "{model}.",
        ),
        (
            "model.safetensors",
            "model.safetensors holds a Git LFS pointer, not the file: run `git lfs pull` in "
            "that folder (the clone was made without Git LFS)",
        ),
        (
            "pytorch_model.bin",
            "pytorch_model.bin holds a Git LFS pointer, not the file: run `git lfs pull` in "
            "that folder (the clone was made without Git LFS)",
        ),
    ],
    ids=["no-weights", "lfs-safetensors", "lfs-bin"],
)
def test_cli_worker_whose_model_folder_has_no_weights_says_so_in_one_line(
    temporal_address: str, tmp_path: Path, pointer: str | None, reason: str
) -> None:
    """A model folder copied without its weights, or a model repository cloned without Git
    LFS (a pointer file where its weights go), passes the settings' check, which looks for its
    config: loading it was a traceback ("header too large" from safetensors; for a .bin,
    torch's advice to load it with `weights_only=False`)."""
    from activities.embed import bundled_model_path

    model = tmp_path / "model"
    shutil.copytree(bundled_model_path(), model, ignore=shutil.ignore_patterns("*.safetensors"))
    if pointer is not None:
        (model / pointer).write_text(LFS_POINTER)
    result = run_cli(
        "worker",
        "--role",
        "embed",
        env={
            "DOCINGEST_HOME": str(tmp_path),
            "DOCINGEST_DATABASE_URL": unreachable_database_url(),
            "DOCINGEST_TEMPORAL_ADDRESS": temporal_address,
            "DOCINGEST_EMBEDDING_MODEL": str(model),
            "DOCINGEST_EMBEDDING_PRECISION": "float32",
        },
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"docingest worker: DOCINGEST_EMBEDDING_MODEL: the model in {model} cannot be loaded: "
        + reason.format(model=model)
    ), result.stderr
    assert "Traceback" not in result.stderr
