"""What the commands that run servers in the foreground (`dev`, `temporal`) share: a busy port
refused before anything starts, the Temporal dev server they own, and SIGTERM stopping them
the way Ctrl-C does."""

from __future__ import annotations

import errno
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from core.errors import ConfigurationError
from core.settings import Settings


def refuse_busy_port(port: int, variable: str, host: str = "127.0.0.1") -> None:
    """Exit naming `variable` when something listens on `host`:`port` (0.0.0.0 or ::: any
    local address answers; an IPv6 address such as ::1 is probed over IPv6)."""
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError:
        return
    raise SystemExit(_busy(port, variable))


def _busy(port: int, variable: str) -> str:
    return f"port {port} is in use: stop what runs there or set {variable}"


def listening_socket(host: str, port: int, variable: str) -> socket.socket:
    """A socket bound to `host`:`port` for a server to listen on; ConfigurationError, naming
    `variable`, for a port in use (or an address that is not this machine's)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            reason = _busy(port, variable)
        else:
            reason = f"cannot listen on {http_url(host, port)}: {exc.strerror}"
        raise ConfigurationError(reason) from exc
    return sock


def http_url(host: str, port: int) -> str:
    """`http://host:port`, with an IPv6 address in brackets as URLs need it."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@contextmanager
def temporal_dev_server(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    """A Temporal dev server on the settings' ports and namespace, its state under
    DOCINGEST_HOME, stopped on leaving (and when this process dies)."""
    from core.embedded import start_temporal_dev_server, stop_process

    server = start_temporal_dev_server(
        settings.resolved_home,
        port=settings.temporal_port,
        ui_port=settings.temporal_ui_port,
        namespace=settings.temporal_namespace,
    )
    try:
        yield server
    finally:
        stop_process(server)


def refuse_busy_temporal_ports(settings: Settings) -> None:
    """Before a Temporal dev server starts: one on a busy port fails to bind, in its log."""
    refuse_busy_port(settings.temporal_port, "DOCINGEST_TEMPORAL_PORT")
    refuse_busy_port(settings.temporal_ui_port, "DOCINGEST_TEMPORAL_UI_PORT")


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (a supervisor, `kill`) raise KeyboardInterrupt, as Ctrl-C does, so the
    `finally` blocks stop the child processes instead of leaving them to PID 1.

    SIGINT is set too: a shell starts background jobs with SIGINT ignored."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
