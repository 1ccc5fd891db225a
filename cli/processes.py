"""What the commands that run servers in the foreground (`dev`, `temporal`) share: a busy port
refused before anything starts, and SIGTERM stopping them the way Ctrl-C does."""

from __future__ import annotations

import signal
import socket

from core.settings import Settings


def refuse_busy_port(port: int, variable: str, host: str = "127.0.0.1") -> None:
    """Exit naming `variable` when something listens on `host`:`port` (0.0.0.0: any local
    address answers)."""
    with socket.socket() as probe:
        if probe.connect_ex((host, port)) == 0:
            raise SystemExit(f"port {port} is in use: stop what runs there or set {variable}")


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
