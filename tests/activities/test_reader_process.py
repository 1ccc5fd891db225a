"""Reading PDFs and Word files in a child process that is stopped at the time limit."""

from __future__ import annotations

import multiprocessing
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from activities import reader_process
from activities.errors import RejectedDocument
from activities.extract import extract_docx, extract_pdf
from activities.reader_process import ReaderDied, ReaderLimits, read_in_child
from core.formats import DocumentFormat
from tests.documents import (
    docx_with_body,
    make_docx,
    make_linked_pdf,
    make_memory_hungry_pdf,
    make_pdf,
    make_slow_pdf,
)
from workflows.types import FailureType

PAGES = ["Page one opens the report.", "Page two holds the figures.", "Page three ends it."]
ROOMY = ReaderLimits(time_s=60)


def test_a_pdf_read_in_a_child_reads_as_in_the_worker() -> None:
    data = make_pdf(PAGES)
    assert read_in_child(data, DocumentFormat.PDF, ROOMY, lambda _: None) == extract_pdf(data)


def test_a_word_file_read_in_a_child_reads_as_in_the_worker() -> None:
    data = make_docx(["First paragraph.", "Second paragraph."], [["a", "b"], ["c", "d"]])
    extracted = read_in_child(data, DocumentFormat.DOCX, ROOMY, lambda _: None)
    assert extracted.text == extract_docx(data)
    assert extracted.page_starts is None


def test_a_bad_file_read_in_a_child_is_refused_with_its_reason() -> None:
    with pytest.raises(RejectedDocument) as info:
        read_in_child(b"%PDF-1.4 nothing else", DocumentFormat.PDF, ROOMY, lambda _: None)
    assert info.value.error_type == FailureType.CORRUPT_DOCUMENT
    assert info.value.message == "the PDF is damaged or incomplete and cannot be read"


def test_a_pdf_slow_to_read_is_stopped_at_the_limit_saying_how_far_it_got() -> None:
    # 20 pages of 16 MiB of operators each: ~1 s a page on the benchmark machine.
    with pytest.raises(RejectedDocument) as info:
        read_in_child(
            make_slow_pdf(16, pages=20), DocumentFormat.PDF, ReaderLimits(time_s=3), lambda _: None
        )
    assert info.value.error_type == FailureType.DOCUMENT_TOO_SLOW
    found = re.fullmatch(
        r"reading the PDF took longer than 3 s \((\d+) of 20 pages read\); "
        r"it may be damaged or built to be slow to read",
        info.value.message,
    )
    assert found is not None, info.value.message
    assert int(found.group(1)) < 20


def test_a_single_slow_page_is_stopped_in_its_middle_while_the_wait_pulses() -> None:
    # One page of 192 MiB of operators (192 KiB compressed): 6-11 s to read here, stopped
    # after 2 s.
    pulses: list[int] = []
    with pytest.raises(RejectedDocument) as info:
        read_in_child(
            make_slow_pdf(192, pages=1), DocumentFormat.PDF, ReaderLimits(time_s=2), pulses.append
        )
    assert "took longer than 2 s (0 of 1 pages read)" in info.value.message
    assert pulses and set(pulses) == {0}  # heartbeats while the page ran, none of it done


def test_a_reader_killed_by_the_system_is_a_retryable_failure_naming_its_exit() -> None:
    reading = BackgroundRead()
    reading.reader.kill()  # as the kernel's OOM killer would
    died = reading.outcome()
    assert isinstance(died, ReaderDied), died
    assert "ended without an answer (exit code -9) after 0 pages" in str(died)


def test_a_reader_that_dies_before_it_has_the_file_is_a_retryable_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed while the worker hands it the file, the worker's write breaks: no exit code to
    report, but a retry, never the broken pipe alone."""

    class DiesAtStart(multiprocessing.Process):
        def start(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    class Context:
        Pipe = staticmethod(multiprocessing.Pipe)
        Process = DiesAtStart

    monkeypatch.setattr(reader_process, "_context", Context)
    with pytest.raises(ReaderDied) as died:
        read_in_child(make_pdf(PAGES), DocumentFormat.PDF, ROOMY, lambda _: None)
    assert str(died.value) == (
        "the reader process ended before it had the file ([Errno 32] Broken pipe)"
    )


def test_a_reader_that_crashes_again_refuses_the_file_naming_the_signal() -> None:
    """A parser crash on a file recurs: on a second attempt the file is refused, not retried."""
    reading = BackgroundRead(attempt=2)
    reading.reader.send_signal(signal.SIGSEGV)  # as a parser bug would
    refused = reading.outcome()
    assert isinstance(refused, RejectedDocument), refused
    assert refused.error_type == FailureType.CORRUPT_DOCUMENT
    assert re.fullmatch(
        r"the reader crashed on the PDF \(SIGSEGV\) (while opening it|after 0 of 3 pages), "
        r"twice: it may be damaged, or need more than the 2048 MiB of memory that reading one "
        r"file may use",
        refused.message,
    ), refused.message


def test_a_pdf_that_needs_more_memory_than_the_limit_is_retried_once_then_refused() -> None:
    # 16 MiB of text operators: PDFium holds ~320 MiB for them, over a 128 MiB limit, and
    # aborts when an allocation fails (SIGABRT here).
    hungry = make_memory_hungry_pdf(16)
    capped = ReaderLimits(60, 128)
    with pytest.raises(ReaderDied) as first:
        read_in_child(hungry, DocumentFormat.PDF, capped, lambda _: None, attempt=1)
    assert re.fullmatch(
        r"the reader crashed on the PDF \(SIG[A-Z]+\) after 0 of 1 pages; trying once more",
        str(first.value),
    ), first.value
    with pytest.raises(RejectedDocument) as second:
        read_in_child(hungry, DocumentFormat.PDF, capped, lambda _: None, attempt=2)
    assert second.value.error_type == FailureType.CORRUPT_DOCUMENT
    assert re.fullmatch(
        r"the reader crashed on the PDF \(SIG[A-Z]+\) after 0 of 1 pages, twice: it may be "
        r"damaged, or need more than the 128 MiB of memory that reading one file may use",
        second.value.message,
    ), second.value.message
    # The limit, not the file: under the default limit it reads.
    assert read_in_child(hungry, DocumentFormat.PDF, ROOMY, lambda _: None).text == "ab"


def test_a_pdf_linked_on_every_page_reads_in_the_memory_its_pages_take() -> None:
    # 20 pages of 8 MiB of content, a link on each: a link shows no text, and flattening it
    # (to read a form's values) kept each page's content, uncompressed, until the document
    # closed: 160 MiB and more, and the reader crashed at a 128 MiB limit after 13 pages.
    linked = make_linked_pdf(pages=20, content_mib=8)
    capped = ReaderLimits(60, 128)
    extracted = read_in_child(linked, DocumentFormat.PDF, capped, lambda _: None, attempt=2)
    assert extracted.text == "\n\n".join(["ab"] * 20)


def test_a_word_file_that_needs_more_memory_than_the_limit_is_too_large() -> None:
    # 150,000 paragraphs: 7 MiB of XML in a 57 KiB file, more than lxml can parse in 64 MiB.
    body = (
        b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        + b"<w:body>"
        + b"<w:p><w:r><w:t>word word word word</w:t></w:r></w:p>" * 150_000
        + b"</w:body></w:document>"
    )
    with pytest.raises(RejectedDocument) as info:
        read_in_child(
            docx_with_body(body), DocumentFormat.DOCX, ReaderLimits(60, 64), lambda _: None
        )
    # lxml reports the refused allocation as a syntax error; the reader knows better.
    assert info.value.error_type == FailureType.DOCUMENT_TOO_LARGE
    assert info.value.message == (
        "reading the Word document needed more than the 64 MiB of memory it may use"
    )


def test_a_reader_is_capped_writes_no_core_file_and_goes_first_to_the_oom_killer() -> None:
    reading = BackgroundRead()
    reader = reading.reader
    try:
        for _ in range(100):  # the child sets its limits as it starts
            if Path(f"/proc/{reader.pid}/oom_score_adj").read_text().strip() == "1000":
                break
            time.sleep(0.02)
        assert Path(f"/proc/{reader.pid}/oom_score_adj").read_text().strip() == "1000"
        assert reader.rlimit(psutil.RLIMIT_CORE) == (0, 0)
        soft, _ = reader.rlimit(psutil.RLIMIT_AS)
        start = soft - ROOMY.memory_mib * 1024 * 1024  # its size when the cap was set
        assert 0 < start <= reader.memory_info().vms
    finally:
        reader.kill()
        died = reading.outcome()
    assert isinstance(died, ReaderDied), died


def test_a_worker_under_a_hard_address_space_limit_still_reads() -> None:
    """`ulimit -v` or systemd's LimitAS= on the worker: the reader keeps under it, not above."""
    script = (
        "from activities.reader_process import ReaderLimits, read_in_child\n"
        "from core.formats import DocumentFormat\n"
        "from tests.documents import make_pdf\n"
        "pdf = make_pdf(['Read under a hard limit.'])\n"
        "limits = ReaderLimits(60, 2048)\n"
        "print(read_in_child(pdf, DocumentFormat.PDF, limits, lambda _: None).text)\n"
    )
    hard = 1_500_000 * 1024  # `ulimit -v 1500000`: less than a reader's size plus 2048 MiB

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))

    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parents[2],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "Read under a hard limit."


class BackgroundRead:
    """A PDF slow to read (3 pages of 64 MiB of operators, seconds each) read in a thread, and
    the reader process reading it, for a test to inspect or end."""

    def __init__(self, attempt: int = 1) -> None:
        before = _readers()
        self._outcome: list[BaseException] = []
        self._thread = threading.Thread(target=self._read, args=(attempt,), daemon=True)
        self._thread.start()
        self.reader = _wait_for_new_reader(before)

    def _read(self, attempt: int) -> None:
        pdf = make_slow_pdf(64, pages=3)
        try:
            read_in_child(pdf, DocumentFormat.PDF, ROOMY, lambda _: None, attempt=attempt)
        except BaseException as exc:  # the test asserts on it
            self._outcome.append(exc)

    def outcome(self) -> BaseException:
        """What the read raised, once it has ended."""
        self._thread.join(timeout=30)
        assert len(self._outcome) == 1, self._outcome
        return self._outcome[0]


def _readers() -> set[int]:
    """The forkserver's children: the reader processes running now."""
    readers: set[int] = set()
    for process in psutil.Process().children():
        try:
            if "forkserver" in " ".join(process.cmdline()):
                readers.update(child.pid for child in process.children())
        except psutil.NoSuchProcess:
            continue
    return readers


def _wait_for_new_reader(before: set[int]) -> psutil.Process:
    """The new reader, once it is reading: killed before it has the file, the worker sees a
    broken pipe while handing the file over (a retry with another message, tested apart)."""
    for _ in range(200):
        new = _readers() - before
        if new:
            reader = psutil.Process(new.pop())
            _wait_until_reading(reader)
            return reader
        time.sleep(0.05)
    raise AssertionError("no reader process started")


def _wait_until_reading(reader: psutil.Process) -> None:
    """Until the reader has spent CPU on the page (it has the file): ~seconds of work each."""
    for _ in range(200):
        times = reader.cpu_times()
        if times.user + times.system >= 0.2:
            return
        time.sleep(0.05)
    raise AssertionError("the reader never started reading")
