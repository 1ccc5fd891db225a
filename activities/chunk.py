"""Chunking: bounded pieces cut at paragraph, then sentence, then word boundaries."""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import refusal, staging_missing
from activities.token_budget import TokenBudget
from core.staging import TEXT, StagingStore
from workflows.types import CHUNK, ChunkResult, FailureType, IngestTask

MANIFEST = "chunks/manifest.json"
# What may close a sentence after its full stop, and stays in its chunk: quotes and brackets,
# CJK ones too (「…。」: the 」 began the next chunk).
_CLOSERS = "\"'\u201d\u2019)]\u3009\u300b\u300d\u300f\u3011\u3015\u3017\u3019\uff09\uff3d"
_LATIN_STOPS = ".!?"
_CJK_STOPS = "\u3002\uff01\uff1f"
_STOPS = _LATIN_STOPS + _CJK_STOPS
# CJK full stops need no following space: CJK text has none between sentences.
_SENTENCE_END = re.compile(
    rf"[{re.escape(_LATIN_STOPS)}][{re.escape(_CLOSERS)}]*\s+"
    rf"|[{_CJK_STOPS}][{re.escape(_CLOSERS)}]*\s*"
)
# Line ends as a text file may have them: "\n", Windows' "\r\n", or a lone "\r" (classic Mac).
# One "\r\n" is one line end, not "\r" then "\n": each line end of a Windows file was a paragraph.
_PARAGRAPH = re.compile(r"(?:\r\n|\r(?!\n)|\n)[ \t]*(?:\r\n?|\n)\s*")
# Full stops that end no sentence, since a line end is the better cut:
# - after the number that begins a line, a list item's ("6. Start the worker"): chunks of a
#   numbered list ended with "\n6." and the next began with its item;
# - in a table's row (a Markdown table's lines begin with "|"): a row was cut after a sentence
#   in one of its cells, the rest of its cells in the next chunk.
_NO_SENTENCE_END = re.compile(r"[ \t]*(?:\d{1,9}\Z|\|)")  # matched from the line's start
_NO_SENTENCE_END_REACH = 1000  # characters before the stop where its line may start
_LINE = re.compile(r"[\r\n]\s*")
_SPACE = re.compile(r"\s+")
# Where a word starts: after whitespace, or at a CJK character (ideographs, kana, CJK and
# full-width punctuation), which is written without spaces between words.
_CJK = "\u3001-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_WORD_START = re.compile(rf"(?<=[\s{_CJK}])\S|[{_CJK}]")
# Cut no earlier than this fraction of chunk_size when a boundary of the level exists.
_MIN_FILL = 0.5
# How far past the limit a boundary is looked for: the separator's whitespace ("\r\n\r\n"
# between paragraphs) is dropped, so the text before it may end right at the limit.
_LOOKAHEAD = 8
# A document past the chunk limit has its chunks counted up to this many times the limit (an
# exact count for one a little too large); past that it "makes more than" that many.
_COUNT_UP_TO = 2


@dataclass
class TextChunk:
    text: str
    start: int
    end: int
    page: int | None = None


def split_text(text: str, chunk_size: int, overlap: int) -> list[TextChunk]:
    """Split into chunks of at most `chunk_size` characters sharing about `overlap`.

    Offsets index into `text`: `text[chunk.start:chunk.end] == chunk.text`. Chunks never start
    or end with whitespace.
    """
    spans = chunk_spans(text, chunk_size, overlap)
    return [TextChunk(text[start:end], start, end) for start, end in spans]


def chunk_spans(
    text: str, chunk_size: int, overlap: int, budget: TokenBudget | None = None
) -> Iterator[tuple[int, int]]:
    """`(start, end)` of each chunk of `split_text`, one at a time: a caller that stops early
    pays for the chunks it took, not for all the text makes (with a large overlap, about one
    a word). With a `budget`, a chunk the model would read only in part is cut shorter (and
    shares at most half its length with the next)."""
    if chunk_size <= 0 or not 0 <= overlap < chunk_size:
        raise ValueError("need chunk_size > 0 and 0 <= overlap < chunk_size")
    return _spans(text, chunk_size, overlap, budget)


def _spans(
    text: str, chunk_size: int, overlap: int, budget: TokenBudget | None
) -> Iterator[tuple[int, int]]:
    start = _skip_space(text, 0)
    while start < len(text):
        end = _cut(text, start, chunk_size)
        shared = overlap
        if budget is not None:
            fitted = _fit(text, start, end, budget)
            if fitted < end:
                end, shared = fitted, min(overlap, (fitted - start) // 2)
        yield start, _strip_end(text, start, end)
        if end >= len(text):
            return
        start = _skip_space(text, _next_start(text, start, end, shared))


def _fit(text: str, start: int, end: int, budget: TokenBudget) -> int:
    """`end`, or the end of a shorter chunk whose tokens all fit in the model's window."""
    while end - start > 1:
        tokens = budget.count(text[start:end])
        if tokens <= budget.limit:
            break
        end = _cut(text, start, min(end - start - 1, (end - start) * budget.limit // tokens))
    return end


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def _strip_end(text: str, start: int, end: int) -> int:
    while end > start and text[end - 1].isspace():
        end -= 1
    return end


def _cut(text: str, start: int, chunk_size: int) -> int:
    """End of the chunk starting at `start`: the best boundary within the size limit."""
    limit = start + chunk_size
    if limit >= len(text):
        return len(text)
    earliest = start + int(chunk_size * _MIN_FILL)
    # A boundary whose dropped whitespace begins at `limit` keeps the chunk within the limit.
    window_end = min(limit + _LOOKAHEAD, len(text))
    for pattern in (_PARAGRAPH, _SENTENCE_END, _LINE, _SPACE):
        boundaries: list[tuple[int, int]] = []  # (where the separator starts, the chunk's end)
        for match in pattern.finditer(text, earliest, window_end):
            end = match.start() + _boundary_keep(match.group())
            if end > limit:
                break
            boundaries.append((match.start(), end))
        for stop, end in reversed(boundaries):  # the last one that is a boundary of the level
            if pattern is not _SENTENCE_END or not _ends_no_sentence(text, stop):
                return end
    return limit


def _ends_no_sentence(text: str, stop: int) -> bool:
    """Whether the full stop at `stop` numbers a list's item or stands in a table's row
    (`_NO_SENTENCE_END`)."""
    reach = max(0, stop - _NO_SENTENCE_END_REACH)
    line = max(text.rfind("\n", reach, stop), text.rfind("\r", reach, stop)) + 1
    if line == 0 and reach > 0:
        return False  # a line this long is prose
    return _NO_SENTENCE_END.match(text, line, stop) is not None


def _boundary_keep(separator: str) -> int:
    """Keep sentence punctuation in the chunk that ends with it, drop the whitespace."""
    return len(separator) - len(separator.lstrip(_STOPS + _CLOSERS))


def _next_start(text: str, start: int, end: int, overlap: int) -> int:
    """Start of the next chunk: about `overlap` characters back, on a word boundary."""
    if overlap == 0:
        return end
    candidate = max(end - overlap, start + 1)
    if candidate > 0 and not text[candidate - 1].isspace():
        word = _WORD_START.search(text, candidate, end)
        if word:
            candidate = word.start()
        elif _SPACE.search(text, start, candidate):
            # The overlap would begin inside the chunk's last word: share nothing instead.
            # (Text without any space, in a script other than CJK, still overlaps mid-run.)
            return end
    return candidate if start < candidate < end else end


def assign_pages(chunks: list[TextChunk], page_starts: list[int] | None) -> None:
    """Set each chunk's page (1-based) to the page where it starts."""
    if not page_starts:
        return
    for chunk in chunks:
        chunk.page = bisect.bisect_right(page_starts, chunk.start)


def shard_name(start: int) -> str:
    return f"chunks/{start:09d}.json"


def shard_starts(manifest: dict[str, Any]) -> range:
    """The first chunk of each shard the manifest describes."""
    return range(0, manifest["chunks"], manifest["step"])


class ChunkActivities:
    def __init__(self, staging: StagingStore, budget: TokenBudget | None = None) -> None:
        """`budget`: the embedding model's window, which no chunk exceeds (None: characters
        alone bound a chunk)."""
        self.staging = staging
        self.budget = budget

    @activity.defn(name=CHUNK)
    def chunk(self, task: IngestTask) -> ChunkResult:
        """Split `text.json` into shards of `embed_activity_chunks`, one per embed batch."""
        try:
            extracted = self.staging.read_json(task.task_id, TEXT)
        except FileNotFoundError as exc:
            raise staging_missing("the extracted text") from exc
        return self.write_shards(task, extracted["text"], extracted["page_starts"])

    def write_shards(
        self, task: IngestTask, text: str, page_starts: list[int] | None
    ) -> ChunkResult:
        """Cut `text` and write its shards and their manifest to staging.

        Offsets come first and text only under the limit: a document past it is refused after
        `max_chunks + 1` cuts, however many chunks its text and overlap would make."""
        spans = chunk_spans(text, task.chunk_size, task.chunk_overlap, self.budget)
        kept = list(itertools.islice(spans, task.max_chunks + 1))
        if len(kept) > task.max_chunks:
            raise _too_large(task, text, spans, self.budget)
        chunks = [TextChunk(text[start:end], start, end) for start, end in kept]
        assign_pages(chunks, page_starts)
        step = task.embed_activity_chunks
        for start in range(0, len(chunks), step):
            shard = [asdict(chunk) for chunk in chunks[start : start + step]]
            self.staging.write_json(task.task_id, shard_name(start), shard)
        pages = len(page_starts) if page_starts else None
        manifest = {"chunks": len(chunks), "step": step, "pages": pages}
        self.staging.write_json(task.task_id, MANIFEST, manifest)
        return ChunkResult(chunks=len(chunks))


def _too_large(
    task: IngestTask, text: str, rest: Iterator[tuple[int, int]], budget: TokenBudget | None
) -> ApplicationError:
    """DocumentTooLarge for a text whose chunk `max_chunks + 1` was just cut (`rest` goes on).

    Counting stops at `_COUNT_UP_TO` times the limit and keeps no text: refusing any document
    costs at most that many cuts (and as many again without overlap, to tell whether the overlap
    is what makes it large)."""
    limit, size, overlap = task.max_chunks, task.chunk_size, task.chunk_overlap
    count_up_to = _COUNT_UP_TO * limit
    made = limit + 1 + sum(1 for _ in itertools.islice(rest, max(count_up_to - limit, 0)))
    chunks = f"more than {count_up_to}" if made > count_up_to else str(made)
    without_overlap = _count_chunks(text, size, 0, limit + 1, budget) if overlap else limit + 1
    if without_overlap <= limit:
        message = (
            f"the document makes {chunks} chunks of {size} characters overlapping by "
            f"{overlap}, over the limit of {limit}; use a smaller chunk_overlap (without "
            f"overlap it makes {without_overlap}), a larger chunk_size, or split it"
        )
    elif budget is not None and _count_chunks(text, size, 0, limit + 1, None) <= limit:
        # The model's window, not chunk_size, makes the chunks: a larger one changes nothing.
        message = (
            f"the document makes {chunks} chunks, over the limit of {limit}: the embedding "
            f"model reads {budget.limit} tokens of a chunk, which cuts its chunks shorter than "
            f"{size} characters; split it"
        )
    else:
        message = (
            f"the document makes {chunks} chunks of {size} characters, over the limit of "
            f"{limit}; split it or use a larger chunk_size"
        )
    return refusal(message, FailureType.DOCUMENT_TOO_LARGE)


def _count_chunks(
    text: str, chunk_size: int, overlap: int, up_to: int, budget: TokenBudget | None
) -> int:
    spans = chunk_spans(text, chunk_size, overlap, budget)
    return sum(1 for _ in itertools.islice(spans, up_to))
