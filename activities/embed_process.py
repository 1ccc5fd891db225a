"""The worker's embedding model in a child process of its own.

The model's lanes (activities/lanes.py) run one forward pass per core, and a pass hands
Python's GIL back and takes it again between its torch operations. In the worker's own process
every other thread wanted the same GIL: the event loop (the Temporal SDK, workflow activations,
the store's SQLAlchemy), the local steps (chunking is Python) and the embed activities' own
reading and writing of staging. While one of them ran Python, both lanes waited at their next
operation, so each millisecond of it cost up to two cores a millisecond. Measured on the 2-core
benchmark machine, a thread running Python 10 % of the time slowed the lanes by ~10 %, 20 % by
~20 %; the same work in another process slowed them by what it took of the CPU (~5 % and
~10 %). In the child the lanes share the GIL only with this module's small loop.

`EmbedderProcess` is a `TextEmbedder`: `encode` sends the texts down a pipe and waits for their
vectors, from any number of threads at once (the child runs the calls in threads, so two embed
activities still share the lanes). A child that dies (killed by the OOM killer, an operator)
fails the calls in flight, which their activities retry, and the next call starts a new one.
The child ends when the worker does, SIGKILL included: it stops at the end of its pipe.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import signal
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from activities.vectors import Vectors
from core.errors import ConfigurationError
from core.runtime import LOG_FORMAT

log = logging.getLogger(__name__)

# Calls the child runs at once: more than the worker's embed activities ever make.
CALLS_AT_ONCE = 4
STOP_WAIT_S = 5.0


@dataclass(frozen=True)
class EmbedderOptions:
    """What `activities.embed.make_embedder` takes, sent to the child."""

    model_path: str | None
    batch_size: int
    device: str
    precision: str
    models_dir: Path
    log_level: int = logging.INFO


@dataclass(frozen=True)
class _Loaded:
    """What the child says of its model once loaded."""

    dimension: int
    precision: str
    model_name: str
    device: str


class EmbedderDied(RuntimeError):
    """The child ended with calls in flight: they are retried (the activity's attempt fails)."""


class EmbedderProcess:
    """A `TextEmbedder` whose model lives in a child process (see the module's docstring)."""

    def __init__(self, options: EmbedderOptions) -> None:
        """Start the child and wait until its model is loaded; a model that cannot be loaded
        raises the child's ConfigurationError here, as loading it in this process did."""
        self.options = options
        self._lock = threading.Lock()  # the child's start and the pipe's sending end
        self._calls: dict[int, Future[Vectors]] = {}
        self._ids = itertools.count()
        self._closed = False
        self._child, self._pipe, loaded = self._start()
        self.dimension = loaded.dimension
        self.precision = loaded.precision
        self.model_name = loaded.model_name
        self.device = loaded.device

    def encode(self, texts: list[str]) -> Vectors:
        call: Future[Vectors] = Future()
        with self._lock:
            if self._closed:
                raise EmbedderDied("the worker is stopping: its embedding process is closed")
            if not self._child.is_alive() and not self._calls:
                self._restart()
            number = next(self._ids)
            self._calls[number] = call
            try:
                self._pipe.send((number, texts))
            except (OSError, ValueError) as exc:  # the child is gone, its reader not told yet
                self._calls.pop(number, None)
                raise self._ended() from exc
        return call.result()

    def close(self) -> None:
        """Stop the child: it finishes the calls it has, then ends."""
        with self._lock:
            self._closed = True
            with contextlib.suppress(OSError, ValueError):
                self._pipe.send(None)
        self._child.join(STOP_WAIT_S)
        if self._child.is_alive():
            self._child.kill()
            self._child.join(STOP_WAIT_S)
        self._pipe.close()

    def _start(self) -> tuple[multiprocessing.process.BaseProcess, Connection, _Loaded]:
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        ours, theirs = context.Pipe()
        child = context.Process(
            target=_serve, args=(theirs, self.options), name="docingest-embedder", daemon=True
        )
        child.start()
        theirs.close()
        try:
            answer = ours.recv()
        except (EOFError, OSError) as exc:
            child.join(STOP_WAIT_S)
            ours.close()
            code = child.exitcode
            raise RuntimeError(
                f"the embedding process ended while loading its model (exit code {code})"
            ) from exc
        if answer[0] == "failed":
            child.join(STOP_WAIT_S)
            ours.close()
            _, configuration, message = answer
            raise ConfigurationError(message) if configuration else RuntimeError(message)
        reader = threading.Thread(
            target=self._read, args=(ours,), name="embedder-answers", daemon=True
        )
        reader.start()
        loaded: _Loaded = answer[1]
        return child, ours, loaded

    def _restart(self) -> None:
        """Under the lock, with no call in flight: a new child for a dead one."""
        log.warning(
            "the embedding process ended (exit code %s); starting it again",
            self._child.exitcode,
        )
        self._pipe.close()
        self._child, self._pipe, _ = self._start()

    def _read(self, pipe: Connection) -> None:
        """In a thread: hand each answer to its call; when the child is gone, fail the rest."""
        while True:
            try:
                number, vectors, error = pipe.recv()
            except (EOFError, OSError, ValueError):
                break
            call = self._calls.pop(number, None)
            if call is None:
                continue
            if error is None:
                call.set_result(vectors)
            else:
                call.set_exception(RuntimeError(error))
        with self._lock:
            if pipe is not self._pipe:
                return
            calls, self._calls = self._calls, {}
        for call in calls.values():
            call.set_exception(self._ended())

    def _ended(self) -> EmbedderDied:
        """The failure of a call the child did not answer."""
        self._child.join(STOP_WAIT_S)
        return EmbedderDied(
            f"the embedding process ended (exit code {self._child.exitcode}) before it "
            "answered; the step is tried again"
        )


def _serve(pipe: Connection, options: EmbedderOptions) -> None:
    """The child: load the model, then run each call in a thread until the pipe ends."""
    # The worker decides when to stop: Ctrl-C in a terminal, or a SIGTERM to the whole group,
    # must not end the model while the worker lets its running activities finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=options.log_level, format=LOG_FORMAT)
    from activities.embed import make_embedder

    try:
        embedder = make_embedder(
            options.model_path,
            options.batch_size,
            options.device,
            options.precision,
            options.models_dir,
        )
    except Exception as exc:
        pipe.send(("failed", isinstance(exc, ConfigurationError), str(exc)))
        return
    loaded = _Loaded(embedder.dimension, embedder.precision, embedder.model_name, embedder.device)
    pipe.send(("ready", loaded))
    sending = threading.Lock()

    def run(number: int, texts: list[str]) -> None:
        answer: tuple[int, Any, str | None]
        try:
            answer = (number, embedder.encode(texts), None)
        except Exception as exc:
            answer = (number, None, f"{type(exc).__name__}: {exc}")
        with sending, contextlib.suppress(OSError, ValueError):
            pipe.send(answer)

    with ThreadPoolExecutor(CALLS_AT_ONCE, thread_name_prefix="embed-call") as calls:
        while True:
            try:
                message = pipe.recv()
            except (EOFError, OSError):
                break  # the worker is gone
            if message is None:
                break
            calls.submit(run, *message)
