"""`docingest`: run each process alone, or all of them with `docingest dev`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from temporalio.service import RPCError

from core.errors import ConfigurationError, DocingestError
from core.runtime import LOG_FORMAT
from core.settings import MAX_PORT, Settings
from core.temporal import TemporalUnreachable

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

KEY_NAME_MAX = 200  # the `api_keys.name` and `owners.name` columns
INTERRUPTED = 128 + 2  # the shell's exit status for a command stopped by SIGINT


def port_number(value: str) -> int:
    """An `--port` argument: refused as the DOCINGEST_*_PORT settings are."""
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (1-{MAX_PORT})")
    return port


def cmd_api(settings: Settings, args: argparse.Namespace) -> None:
    import uvicorn

    from api.app import HTTP_PARSER, create_app
    from cli.processes import http_url, interrupt_on_sigterm, listening_socket

    # uvicorn stops on SIGTERM, then raises it again under the handler it found: the default
    # one killed the process there (status 143) before its atexit handlers, so an embedded
    # PostgreSQL it had joined kept it registered and ran on after the last docingest process.
    # As KeyboardInterrupt, SIGTERM ends it as Ctrl-C does.
    interrupt_on_sigterm()
    host, port = args.host or settings.api_host, args.port or settings.api_port
    # uvicorn says why it could not start (a busy port, the app's start-up failed) in its own
    # log lines and exits with status 3: bound here, and the start-up's exception kept, each
    # is said in one line, as the other commands' are.
    sock = listening_socket(host, port, "--port" if args.port else "DOCINGEST_API_PORT")
    app = create_app(settings)
    failures = _keep_startup_failure(app, http_url(host, port))
    config = uvicorn.Config(
        _without_explained_tracebacks(app, failures),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        http=HTTP_PARSER,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        return  # Ctrl-C, once the server has shut down (`uvicorn.run` returned too)
    except SystemExit:
        if failures and isinstance(failures[0], DocingestError):
            raise failures[0] from None  # its words say what to do, as the other commands'
        if failures:
            raise ConfigurationError(f"the API did not start: {failures[0]}") from failures[0]
        raise


def _keep_startup_failure(app: FastAPI, url: str) -> list[Exception]:
    """Where the exception that the app's start-up raises is kept (uvicorn only logs it). Once
    started, the app's address is logged, as uvicorn does when it binds the socket itself."""
    failures: list[Exception] = []
    lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def keeping(app: FastAPI) -> AsyncIterator[Any]:
        started = False
        try:
            async with lifespan(app) as state:
                started = True
                logging.getLogger("uvicorn.error").info(
                    "Uvicorn running on %s (Press CTRL+C to quit)", url
                )
                yield state
        except Exception as exc:
            if not started:
                failures.append(exc)
            raise

    app.router.lifespan_context = keeping
    return failures


def _without_explained_tracebacks(app: ASGIApp, failures: list[Exception]) -> ASGIApp:
    """`app`, whose start-up failure uvicorn logs without its traceback when it is one we
    explain in one line (a DOCINGEST_HOME or staging folder that cannot be made): Starlette
    sends the traceback with the failure, which uvicorn logged above that line. An unexpected
    failure keeps its traceback."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            explained = failures and isinstance(failures[0], DocingestError)
            if message["type"] == "lifespan.startup.failed" and explained:
                message = {"type": message["type"], "message": ""}
            await send(message)

        await app(scope, receive, sending if scope["type"] == "lifespan" else send)

    return serve


def cmd_worker(settings: Settings, args: argparse.Namespace) -> None:
    from cli.processes import interrupt_on_sigterm
    from core.db import resolve_database_url

    # Until run_worker's own handlers take over (it is polling): Ctrl-C while it waited for
    # Temporal or loaded the model was a two-part traceback, and SIGTERM killed it outright.
    interrupt_on_sigterm()

    # Before the nice: an embedded PostgreSQL started here would inherit it for its whole
    # life, and it serves the API as well as this worker.
    settings = settings.model_copy(update={"database_url": resolve_database_url(settings)})
    if settings.worker_nice:
        # Then, before any thread exists: on Linux the nice value is per thread, and the
        # threads started later (torch's, gRPC's, the activity pool) inherit it.
        os.nice(settings.worker_nice)
    from worker.main import Role, run_worker

    try:
        asyncio.run(run_worker(settings, Role(args.role)))
    except KeyboardInterrupt:
        print("docingest worker: stopped during start-up", file=sys.stderr)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> None:
    from core.db import resolve_database_url
    from core.migrate import upgrade_to_head

    upgrade_to_head(resolve_database_url(settings))
    print("database schema is up to date", file=sys.stderr)


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> None:
    from cli.bootstrap import create_api_key

    name = args.name.strip()
    if not 1 <= len(name) <= KEY_NAME_MAX or not name.isprintable():
        sys.exit(
            f"docingest keys: --name must be 1-{KEY_NAME_MAX} printable characters "
            "(no tab or line break: `docingest keys list` prints one key a line)"
        )
    owner = None
    if args.owner:
        try:
            owner = uuid.UUID(args.owner)
        except ValueError:
            sys.exit(f"docingest keys: --owner {args.owner!r} is not an owner id (a UUID)")
    print(asyncio.run(create_api_key(settings, name, owner)).key)


def cmd_keys_list(settings: Settings, args: argparse.Namespace) -> None:
    from cli.bootstrap import list_api_keys
    from core.keys import KEY_SCHEME

    keys = asyncio.run(list_api_keys(settings))
    print("OWNER_ID\tOWNER\tKEY_NAME\tKEY_PREFIX\tCREATED")
    for key in keys:
        created = key.created_at.strftime("%Y-%m-%d %H:%M")
        print(
            f"{key.owner_id}\t{key.owner_name}\t{key.name}\t{KEY_SCHEME}_{key.prefix}…\t{created}"
        )


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> None:
    from cli.bootstrap import revoke_api_key
    from core.durations import describe_duration
    from core.keys import KEY_SCHEME

    key = asyncio.run(revoke_api_key(settings, args.key))
    print(
        f"revoked key {key.name!r} ({KEY_SCHEME}_{key.prefix}…) of owner {key.owner_id}; API "
        f"processes refuse it within DOCINGEST_KEY_CACHE_TTL "
        f"({describe_duration(settings.key_cache_ttl)})",
        file=sys.stderr,
    )


def cmd_models_build(settings: Settings, args: argparse.Namespace) -> None:
    from activities.embed import model_folder
    from activities.onnx_int8 import int8_model_file

    print(int8_model_file(model_folder(settings.embedding_model), settings.models_dir))


def cmd_temporal(settings: Settings, args: argparse.Namespace) -> None:
    from cli.processes import interrupt_on_sigterm, refuse_busy_temporal_ports

    interrupt_on_sigterm()
    refuse_busy_temporal_ports(settings)
    log_file = settings.resolved_home / "temporal.log"
    try:
        code = _run_temporal(settings)
    except KeyboardInterrupt:
        return  # Ctrl-C or SIGTERM: the server is stopped
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"the Temporal dev server did not start ({exc}): see {log_file}") from exc
    if code != 0:
        sys.exit(f"the Temporal dev server exited with code {code}: see {log_file}")


def _run_temporal(settings: Settings) -> int:
    """Run the dev server until it exits (its exit code) or until interrupted."""
    from cli.processes import temporal_dev_server

    with temporal_dev_server(settings) as server:
        print(
            f"Temporal on 127.0.0.1:{settings.temporal_port}, UI http://127.0.0.1:"
            f"{settings.temporal_ui_port}",
            file=sys.stderr,
        )
        return server.wait()


def cmd_dev(settings: Settings, args: argparse.Namespace) -> None:
    from cli.dev import run_dev

    sys.exit(run_dev(settings))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="docingest", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    api = commands.add_parser("api", help="run the HTTP API")
    api.add_argument("--host")
    api.add_argument("--port", type=port_number)
    api.set_defaults(run=cmd_api)
    worker = commands.add_parser("worker", help="run a Temporal worker")
    worker.add_argument(
        "--role",
        choices=["all", "main", "embed"],
        default="all",
        help="main: workflows and extract/chunk/store; embed: embedding only (GPU machines)",
    )
    worker.set_defaults(run=cmd_worker)
    commands.add_parser("migrate", help="apply database migrations").set_defaults(run=cmd_migrate)
    keys = commands.add_parser("keys", help="manage API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key; prints only the key")
    create.add_argument("--name", required=True)
    create.add_argument("--owner", help="add the key to this owner id instead of a new owner")
    create.set_defaults(run=cmd_keys_create)
    key_commands.add_parser(
        "list", help="list the keys (name and prefix, never the key) with their owner ids"
    ).set_defaults(run=cmd_keys_list)
    revoke = key_commands.add_parser(
        "revoke",
        help="delete a key, named by its prefix as `keys list` prints it (or the key itself); "
        "its owner's agents and documents stay",
    )
    revoke.add_argument("key", help="the key's prefix (dik_AbCdEfGhIjKl…) or the key")
    revoke.set_defaults(run=cmd_keys_revoke)
    models = commands.add_parser("models", help="prepare model files")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    model_commands.add_parser(
        "build",
        help="build the int8 ONNX export of the embedding model (else built at first use); "
        "prints its path",
    ).set_defaults(run=cmd_models_build)
    commands.add_parser("temporal", help="run the Temporal dev server").set_defaults(
        run=cmd_temporal
    )
    commands.add_parser("dev", help="run everything locally (what `make dev` runs)").set_defaults(
        run=cmd_dev
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.exit(f"docingest {args.command}: invalid settings\n{settings_errors(exc)}")
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=LOG_FORMAT,
        stream=sys.stderr,
    )
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    if settings.log_level.upper() != "DEBUG":
        # A dozen INFO lines per migrate (or dev start): plugins set up, the DDL mode, each
        # revision; `migrate` says in one line that the schema is up to date.
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        problem = run_command(settings, args)
    except KeyboardInterrupt:
        # A second Ctrl-C while `dev` or `temporal` stops its processes (they get SIGTERM as
        # this one exits: dies_with_this_process), or one during any other command.
        print(f"\ndocingest {args.command}: interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED)
    if problem is not None:
        # The failure's frames (asyncio's reference cycles among them) hold a Temporal client:
        # left to the interpreter's finalization, the SDK's threads crashed it there (SIGABRT
        # or SIGSEGV instead of exit status 1, about 1 run in 7). Collected now, while it runs.
        gc.collect()
        sys.exit(f"docingest {args.command}: {problem}")


def run_command(settings: Settings, args: argparse.Namespace) -> str | None:
    """Run the command; why it could not run, in one line, or None when it ran."""
    try:
        args.run(settings, args)
    except (DocingestError, TemporalUnreachable) as exc:
        return str(exc)
    except RPCError as exc:  # e.g. a DOCINGEST_TEMPORAL_NAMESPACE the server does not have
        return f"Temporal refused the request: {exc.message}"
    except DBAPIError as exc:
        if isinstance(exc.orig, psycopg.errors.UndefinedTable):
            return "the database has no schema yet: run `docingest migrate`"
        if not isinstance(exc.orig, psycopg.OperationalError):
            raise
        reason = str(exc.orig).strip().splitlines()[0]
        return f"the database cannot be reached: {reason}"
    return None


DURATION_FORMS = "give whole seconds (3600), HH:MM:SS (1:00:00) or ISO 8601 (PT1H, P7D)"


def settings_errors(error: ValidationError) -> str:
    """One line per refused setting, named as its environment variable."""
    lines = []
    for problem in error.errors():
        message = str(problem["msg"]).removeprefix("Value error, ")
        if problem["type"] == "time_delta_parsing":  # pydantic's words: '"day" identifier…'
            message = f"{problem['input']!r} is not a duration: {DURATION_FORMS}"
        names = [str(part) for part in problem["loc"]]
        variable = f"DOCINGEST_{names[0].upper()}" if names else ""
        lines.append(f"  {message}" if variable in message else f"  {variable}: {message}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
