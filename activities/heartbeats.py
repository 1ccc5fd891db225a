"""How an activity heartbeats while one long call runs (an encode, a store)."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator

from temporalio import activity

# While one long call runs, its activity heartbeats this often (or more often, three times
# per heartbeat timeout, when that timeout is under 15 s).
HEARTBEAT_EVERY_S = 5.0


def heartbeat_interval_s() -> float:
    """How often the running activity heartbeats while it waits for a long call."""
    every = HEARTBEAT_EVERY_S
    timeout = activity.info().heartbeat_timeout
    if timeout is not None and timeout.total_seconds() > 0:
        every = min(every, timeout.total_seconds() / 3)
    return every


@contextlib.contextmanager
def heartbeating_thread() -> Iterator[None]:
    """Heartbeat from another thread every `heartbeat_interval_s()` while the block runs in
    the activity's thread: one call (an encode of a large batch, two batches sharing the
    lanes, a slow CPU) may outlast the heartbeat timeout, and an attempt that stops
    heartbeating is timed out and retried, only to time out again."""
    every = heartbeat_interval_s()
    done = threading.Event()
    context = contextvars.copy_context()  # the activity's, for activity.heartbeat

    def beat() -> None:
        while not done.wait(every):
            context.run(activity.heartbeat)

    beater = threading.Thread(target=beat, name="activity-heartbeat", daemon=True)
    beater.start()
    try:
        yield
    finally:
        done.set()
        beater.join()
