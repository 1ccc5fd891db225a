"""Reading a PDF or a Word file in a child process that can be stopped.

A PDF page is a program for the reader, and a file of a few kilobytes can make pypdf run for
minutes (~4 s per MiB of text operators on the benchmark machine, in a stream that every page
may share). A thread cannot be stopped in the middle of a page; a process can. The activity's
thread waits for the child, heartbeating, and kills it when the time limit passes, when the step
is cancelled (the SDK raises in the waiting thread) or when the worker stops. The child reports
each page it finishes, so a refusal says how far it got.

Children are forked from a server process that has the extraction code (pypdf, python-docx)
and the command line's modules imported already (multiprocessing's `forkserver`), not from the
worker and its model; each read costs a fork, not an interpreter start.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.forkserver
import signal
import time
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from activities.errors import RejectedDocument
from core.formats import DocumentFormat
from workflows.types import FailureType

if TYPE_CHECKING:
    from activities.extract import ExtractedText

READ_IN_CHILD = frozenset({DocumentFormat.PDF, DocumentFormat.DOCX})
DEFAULT_TIME_LIMIT_S = 300.0
WAIT_S = 0.5
# A child whose worker vanished (kill -9) ends itself this long after its limit.
ORPHAN_GRACE_S = 60

# Imported once by the server: the extraction code, and the CLI that a child would otherwise
# import again as its `__main__` (multiprocessing re-runs the parent's main module in a child).
PRELOAD = ["activities.extract", "cli.main"]


# A child runs its main module again (as `__mp_main__`) over the preloaded one, and runpy warns
# about it on every read. Installed here, the filter is in the server too, and so in each child.
warnings.filterwarnings(
    "ignore", message=r"'cli\.main' found in sys\.modules", category=RuntimeWarning
)


@functools.cache
def _context() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_server() -> None:
    """Start the server that readers fork from now, so the first document does not wait the
    ~1 s it takes to start."""
    _context()
    multiprocessing.forkserver.ensure_running()


class ReaderDied(Exception):
    """The child ended without an answer (a crash, or killed by the system): retryable."""


def read_in_child(
    data: bytes, fmt: DocumentFormat, limit_s: float, pulse: Callable[[int], None]
) -> ExtractedText:
    """The document's text, read in a child process; `pulse(pages read)` runs every WAIT_S.
    Raises RejectedDocument for a bad file or one not read within `limit_s`."""
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_read, args=(sender, data, fmt, limit_s), daemon=True)
    answered = False
    try:
        child.start()
        sender.close()
        answer = _wait(receiver, child, limit_s, pulse, fmt)
        answered = True
        return answer
    finally:
        sender.close()
        _stop(child, grace_s=5 if answered else 0)
        receiver.close()


def _wait(
    receiver: Connection,
    child: multiprocessing.process.BaseProcess,
    limit_s: float,
    pulse: Callable[[int], None],
    fmt: DocumentFormat,
) -> ExtractedText:
    progress = _Progress()
    started = time.monotonic()
    next_pulse = started
    while True:
        if receiver.poll(WAIT_S):
            answer = _receive(receiver, child, progress)
            if answer is not None:
                return answer
        now = time.monotonic()
        if now >= next_pulse:
            pulse(progress.read)
            next_pulse = now + WAIT_S
        if now - started > limit_s and not receiver.poll(0):  # an answer in the pipe wins
            raise too_slow(limit_s, progress, fmt)


def _stop(child: multiprocessing.process.BaseProcess, grace_s: float) -> None:
    """Let a child that answered exit by itself (its pid is then never signalled after it was
    reaped and perhaps reused); kill one that did not."""
    if child.pid is None:  # never started
        return
    child.join(grace_s)
    if child.exitcode is None:
        child.kill()
        child.join(5)


class _Progress:
    def __init__(self) -> None:
        self.read = 0
        self.pages: int | None = None


def _receive(
    receiver: Connection, child: multiprocessing.process.BaseProcess, progress: _Progress
) -> ExtractedText | None:
    try:
        message = receiver.recv()
    except (EOFError, OSError):  # OSError: it died in the middle of a message
        child.join(timeout=5)
        raise ReaderDied(
            f"the reader process ended without an answer (exit code {child.exitcode}) "
            f"after {progress.read} pages"
        ) from None
    kind = message[0]
    if kind == "page":
        progress.read, progress.pages = message[1], message[2]
        return None
    if kind == "rejected":
        raise RejectedDocument(message[1], message[2])
    if kind == "failed":
        raise ReaderDied(f"the reader failed: {message[1]}")
    text: ExtractedText = message[1]
    return text


def too_slow(limit_s: float, progress: _Progress, fmt: DocumentFormat) -> RejectedDocument:
    what = "the PDF" if fmt is DocumentFormat.PDF else "the document"
    pages = progress.pages
    where = "" if pages is None else f" ({progress.read} of {pages} pages read)"
    return RejectedDocument(
        FailureType.DOCUMENT_TOO_SLOW,
        f"reading {what} took longer than {_duration(limit_s)}{where}; "
        "it may be damaged or built to be slow to read",
    )


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _read(sender: Connection, data: bytes, fmt: DocumentFormat, limit_s: float) -> None:
    """In the child: read, reporting pages; the answer is the last message."""
    from activities.extract import extract_text

    signal.alarm(int(limit_s) + ORPHAN_GRACE_S)  # its default action ends the process

    def on_page(read: int, pages: int) -> None:
        try:
            sender.send(("page", read, pages))
        except OSError:  # the worker is gone: stop quietly (SystemExit passes every handler)
            raise SystemExit(0) from None

    try:
        answer: tuple[object, ...] = ("text", extract_text(data, fmt, on_page))
    except RejectedDocument as rejected:
        answer = ("rejected", rejected.error_type, rejected.message)
    except Exception as exc:  # the parent turns it into a retryable failure with this text
        answer = ("failed", f"{type(exc).__name__}: {exc}")
    sender.send(answer)
    sender.close()
