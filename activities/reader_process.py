"""Reading a PDF, a Word file or an HTML file in a child process that can be stopped, and
that may crash.

A PDF page is a program for the reader, and a file of a few kilobytes can make it run for
minutes (a compressed stream that every page shares, holding hundreds of MiB of operators) or
hold gigabytes (PDFium keeps a page's decoded content and builds an object per text operator).
Parsing an HTML file takes a minute or more, in one call that reports nothing, for tens of
MiB of markup, or for well under one MiB built for it: Python 3.11's HTMLParser takes
quadratic time on runs of unfinished tags ("<a<a<a…", "<!--<!--…": 160 KiB, ~40 s; 1 MiB,
~25 min), which a thread of the worker parsed, past the time limit, holding a local-step slot
and the GIL while every owner's small uploads waited. A thread cannot be stopped in the middle
of a page or a parse, and a parser that crashes in C++ takes its process with it; a child
process contains both. The activity's thread waits for the child, heartbeating, and kills it
when the time limit passes, when the step is cancelled (the SDK raises in the waiting thread)
or when the worker stops. The child reports each page it finishes, so a refusal says how far
it got. Its address space is capped (RLIMIT_AS) at what it had when it started plus the memory
limit, and it offers itself first to the kernel's OOM killer: a file built to exhaust memory
ends the child, never the worker.

Children are forked from a server process that has the extraction code (PDFium, python-docx)
and the command line's modules imported already (multiprocessing's `forkserver`), not from the
worker and its model; each read costs a fork, not an interpreter start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import multiprocessing
import multiprocessing.forkserver
import resource
import signal
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from activities.errors import RejectedDocument
from core.durations import describe_duration
from core.formats import DocumentFormat
from workflows.types import FailureType

if TYPE_CHECKING:
    from activities.extract import ExtractedText

READ_IN_CHILD = frozenset({DocumentFormat.PDF, DocumentFormat.DOCX, DocumentFormat.HTML})
MIB = 1024 * 1024
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


@dataclasses.dataclass(frozen=True)
class ReaderLimits:
    """What one reader may take: DOCINGEST_EXTRACT_TIME_LIMIT (wall clock) and
    DOCINGEST_EXTRACT_MEMORY_LIMIT_MIB (address space beyond what the child starts with)."""

    time_s: float = 300.0
    memory_mib: int = 2048


class ReaderDied(Exception):
    """The child ended without an answer, killed from outside (the OOM killer, an operator):
    retryable."""


# A child ended by one of these crashed on its own: a parser's fault, or an allocation past the
# memory limit, which PDFium does not survive. A crash may also come from the machine (memory
# short for everyone under vm.overcommit_memory=2), so the first one is retried; a second on
# the same bytes refuses the document instead of spending the remaining attempts.
_CRASHES = frozenset(
    {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP}
)


def read_in_child(
    data: bytes,
    fmt: DocumentFormat,
    limits: ReaderLimits,
    pulse: Callable[[int], None],
    attempt: int = 1,
) -> ExtractedText:
    """The document's text, read in a child process; `pulse(pages read)` runs every WAIT_S.
    Raises RejectedDocument for a bad file, one not read within the time limit, one that needs
    more memory than the limit, or one that crashed the reader on this attempt and an earlier
    one (`attempt` is the activity's); ReaderDied for a reader that may do better next time."""
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_read, args=(sender, data, fmt, limits), daemon=True)
    answered = False
    try:
        try:
            child.start()
        except OSError as exc:  # the child died (killed) while the file was handed to it
            raise ReaderDied(f"the reader process ended before it had the file ({exc})") from exc
        sender.close()
        answer = _Reading(receiver, child, fmt, limits, attempt).wait(pulse)
        answered = True
        return answer
    finally:
        sender.close()
        _stop(child, grace_s=5 if answered else 0)
        receiver.close()


def _stop(child: multiprocessing.process.BaseProcess, grace_s: float) -> None:
    """Let a child that answered exit by itself (its pid is then never signalled after it was
    reaped and perhaps reused); kill one that did not."""
    if child.pid is None:  # never started
        return
    child.join(grace_s)
    if child.exitcode is None:
        child.kill()
        child.join(5)


class _Reading:
    """The parent's side of one read: the child's messages, and how far it got."""

    def __init__(
        self,
        receiver: Connection,
        child: multiprocessing.process.BaseProcess,
        fmt: DocumentFormat,
        limits: ReaderLimits,
        attempt: int,
    ) -> None:
        self.receiver, self.child, self.fmt, self.limits = receiver, child, fmt, limits
        self.attempt = attempt
        self.read = 0
        self.pages: int | None = None

    def wait(self, pulse: Callable[[int], None]) -> ExtractedText:
        started = time.monotonic()
        next_pulse = started
        while True:
            if self.receiver.poll(WAIT_S):
                answer = self._receive()
                if answer is not None:
                    return answer
            now = time.monotonic()
            if now >= next_pulse:
                pulse(self.read)
                next_pulse = now + WAIT_S
            # An answer already in the pipe wins over the limit.
            if now - started > self.limits.time_s and not self.receiver.poll(0):
                raise self._too_slow()

    def _receive(self) -> ExtractedText | None:
        try:
            message = self.receiver.recv()
        except (EOFError, OSError):  # OSError: it died in the middle of a message
            self.child.join(timeout=5)
            raise self._died() from None
        kind = message[0]
        if kind == "page":
            self.read, self.pages = message[1], message[2]
            return None
        if kind == "rejected":
            raise RejectedDocument(message[1], message[2])
        if kind == "failed":
            raise ReaderDied(f"the reader failed: {message[1]}")
        text: ExtractedText = message[1]
        return text

    def _died(self) -> Exception:
        code = self.child.exitcode
        crash = _crash_signal(code)
        if crash is None:
            return ReaderDied(
                f"the reader process ended without an answer (exit code {code}) "
                f"after {self.read} pages"
            )
        where = (
            " while opening it"
            if self.pages is None
            else f" after {self.read} of {self.pages} pages"
        )
        crashed = f"the reader crashed on {_what(self.fmt)} ({crash}){where}"
        if self.attempt < 2:
            return ReaderDied(f"{crashed}; trying once more")
        return RejectedDocument(
            FailureType.CORRUPT_DOCUMENT,
            f"{crashed}, twice: it may be damaged, or need more than the "
            f"{self.limits.memory_mib} MiB of memory that reading one file may use",
        )

    def _too_slow(self) -> RejectedDocument:
        return RejectedDocument(
            FailureType.DOCUMENT_TOO_SLOW,
            f"reading {_what(self.fmt)} took longer than {_duration(self.limits.time_s)}"
            f"{_where(self.read, self.pages)}; it may be damaged or built to be slow to read",
        )


def _crash_signal(exitcode: int | None) -> str | None:
    """The name of the signal that ended a child that crashed by itself; None otherwise."""
    if exitcode is None or exitcode >= 0:
        return None
    with contextlib.suppress(ValueError):
        number = signal.Signals(-exitcode)
        if number in _CRASHES:
            return number.name
    return None


def _what(fmt: DocumentFormat) -> str:
    names = {
        DocumentFormat.PDF: "the PDF",
        DocumentFormat.DOCX: "the Word document",
        DocumentFormat.HTML: "the HTML file",
    }
    return names.get(fmt, "the document")


def _where(read: int, pages: int | None) -> str:
    return "" if pages is None else f" ({read} of {pages} pages read)"


def _duration(seconds: float) -> str:
    return describe_duration(timedelta(seconds=seconds))


def _read(sender: Connection, data: bytes, fmt: DocumentFormat, limits: ReaderLimits) -> None:
    """In the child: read, reporting pages; the answer is the last message."""
    from activities.extract import extract_text

    signal.alarm(int(limits.time_s) + ORPHAN_GRACE_S)  # its default action ends the process
    cap = _MemoryCap.apply(limits.memory_mib)
    progress: list[int | None] = [0, None]

    def on_page(read: int, pages: int) -> None:
        progress[:] = [read, pages]
        try:
            sender.send(("page", read, pages))
        except OSError:  # the worker is gone: stop quietly (SystemExit passes every handler)
            raise SystemExit(0) from None

    out_of_memory = False
    try:
        answer: tuple[object, ...] = ("text", extract_text(data, fmt, on_page))
    except MemoryError:  # past RLIMIT_AS, in Python code (PDFium aborts instead: see _CRASHES)
        out_of_memory = True
    except RejectedDocument as rejected:
        answer = ("rejected", rejected.error_type, rejected.message)
        # lxml reports an allocation it was refused as a syntax error: a Word file "damaged"
        # after taking most of the limit more likely ran out of memory
        out_of_memory = (
            fmt is DocumentFormat.DOCX
            and rejected.error_type == FailureType.CORRUPT_DOCUMENT
            and cap.mostly_used()
        )
    except Exception as exc:  # the parent turns it into a retryable failure with this text
        answer = ("failed", f"{type(exc).__name__}: {exc}")
        out_of_memory = fmt is DocumentFormat.DOCX and cap.mostly_used()
    if out_of_memory:  # built here, once the traceback (and what its frames held) is gone
        answer = _too_large(fmt, limits, progress)
    try:
        sender.send(answer)
    except MemoryError:  # pickling the text takes memory too
        answer = ()  # let the text go first
        sender.send(_too_large(fmt, limits, progress))
    sender.close()


def _too_large(
    fmt: DocumentFormat, limits: ReaderLimits, progress: list[int | None]
) -> tuple[object, ...]:
    read, pages = progress
    return (
        "rejected",
        FailureType.DOCUMENT_TOO_LARGE,
        f"reading {_what(fmt)} needed more than the {limits.memory_mib} MiB of memory "
        f"it may use{_where(read or 0, pages)}",
    )


class _MemoryCap:
    """The child's address space, capped at its size when it started plus the limit (Linux:
    elsewhere the child runs uncapped)."""

    def __init__(self, start: int, limit: int) -> None:
        self.start, self.limit = start, limit

    @classmethod
    def apply(cls, limit_mib: int) -> _MemoryCap:
        # A reader that crashes (PDFium aborts past the cap) must not write a core file.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        start = _vm_kib("VmSize") * 1024
        if not start:
            return cls(0, limit_mib * MIB)
        cap = start + limit_mib * MIB
        try:
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard != resource.RLIM_INFINITY:  # `ulimit -v`, LimitAS=: never above it
                cap = min(cap, hard)
            resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        except (ValueError, OSError):  # the reader runs without a cap of its own
            return cls(0, limit_mib * MIB)
        # and the kernel's OOM killer takes a reader before anything else
        with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as adjust:
            adjust.write("1000")
        return cls(start, cap - start)

    def mostly_used(self) -> bool:
        """Whether the address space grew past half the limit at some point: a failure then
        is likelier an allocation refused than a damaged file."""
        return bool(self.start) and _vm_kib("VmPeak") * 1024 - self.start > self.limit // 2


def _vm_kib(field: str) -> int:
    """A `Vm…` line of /proc/self/status, in KiB; 0 where there is none."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0
