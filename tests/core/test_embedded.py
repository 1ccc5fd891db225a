"""The embedded PostgreSQL's shared state, as several docingest processes see it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from core.embedded import _forget_dead_handles

HOLD_PGSERVER_LOCK = """
import sys, fasteners
with fasteners.InterProcessLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_forget_dead_handles_waits_for_pgserver_lock(tmp_path: Path) -> None:
    """Another process registering with pgserver (under its lock) is never overwritten."""
    from pgserver.postgres_server import PostgresServer

    handles = tmp_path / ".handle_pids.json"
    dead = 2**22 + 1  # above Linux's pid_max: never a live process
    handles.write_text(json.dumps([dead]))
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_PGSERVER_LOCK, str(PostgresServer.lock_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == "locked\n"
        forget = threading.Thread(target=_forget_dead_handles, args=(tmp_path,))
        forget.start()
        forget.join(timeout=1)
        waited = forget.is_alive()
        unchanged = json.loads(handles.read_text()) == [dead]
        holder.stdin.write("\n")
        holder.stdin.flush()
        forget.join(timeout=10)
    assert waited and unchanged, "the handle list was rewritten while pgserver held its lock"
    assert json.loads(handles.read_text()) == []
