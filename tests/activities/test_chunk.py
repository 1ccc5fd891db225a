"""Chunking: bounded chunks with exact offsets, cut at the most natural boundary."""

from __future__ import annotations

import hashlib
import itertools
import random
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from activities.chunk import (
    MANIFEST,
    ChunkActivities,
    TextChunk,
    assign_pages,
    chunk_spans,
    shard_name,
    shard_starts,
    split_text,
)
from activities.embed import bundled_model_path
from activities.token_budget import TokenBudget, model_token_budget
from core.staging import StagingStore
from tests.documents import lorem
from workflows.types import FailureType, IngestTask


def assert_valid(text: str, chunks: list[TextChunk], chunk_size: int) -> None:
    """What every caller relies on, whatever the text."""
    for chunk in chunks:
        assert 0 < len(chunk.text) <= chunk_size
        assert text[chunk.start : chunk.end] == chunk.text
        assert not chunk.text[0].isspace()
        assert not chunk.text[-1].isspace()
        assert chunk.page is None
    starts = [chunk.start for chunk in chunks]
    assert starts == sorted(set(starts)), "chunks must advance"
    covered = [False] * len(text)
    for chunk in chunks:
        covered[chunk.start : chunk.end] = [True] * (chunk.end - chunk.start)
    missing = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert not missing, f"characters not in any chunk at {missing[:10]}"


def overlaps(chunks: list[TextChunk]) -> list[int]:
    return [prev.end - nxt.start for prev, nxt in itertools.pairwise(chunks)]


# --- invariants on ordinary prose ---------------------------------------------------------


@pytest.mark.parametrize(
    ("chunk_size", "overlap"),
    [(1, 0), (2, 1), (10, 3), (50, 0), (80, 20), (200, 50), (500, 100), (1000, 999)],
)
def test_split_text_prose_keeps_every_invariant(chunk_size: int, overlap: int) -> None:
    text = lorem(120, seed=chunk_size)
    chunks = split_text(text, chunk_size, overlap)
    assert_valid(text, chunks, chunk_size)


def test_split_text_short_text_is_one_stripped_chunk() -> None:
    text = "  \n Hello, world. \t\n"
    assert split_text(text, 100, 10) == [TextChunk("Hello, world.", 4, 17)]


def test_split_text_text_of_exactly_chunk_size_is_one_chunk() -> None:
    text = "a" * 50
    assert split_text(text, 50, 10) == [TextChunk(text, 0, 50)]


@pytest.mark.parametrize("text", ["", " ", "\n\n\n", " \t\r\n\f\v", "\u3000\u00a0\u2028"])
def test_split_text_empty_or_whitespace_gives_no_chunks(text: str) -> None:
    assert split_text(text, 100, 10) == []


@pytest.mark.parametrize(
    ("chunk_size", "overlap"),
    [(0, 0), (-1, 0), (100, 100), (100, 150), (100, -1), (1, 1)],
)
def test_split_text_invalid_arguments_raise(chunk_size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        split_text("some text", chunk_size, overlap)


# --- overlap ------------------------------------------------------------------------------


@pytest.mark.parametrize(("chunk_size", "overlap"), [(200, 40), (300, 100), (120, 20)])
def test_split_text_consecutive_chunks_overlap_about_overlap(chunk_size: int, overlap: int) -> None:
    text = lorem(200, seed=7)
    chunks = split_text(text, chunk_size, overlap)
    assert len(chunks) > 5
    for shared in overlaps(chunks):
        assert 0 < shared <= overlap
    for prev, nxt in itertools.pairwise(chunks):
        assert prev.text.endswith(text[nxt.start : prev.end])


def test_split_text_without_overlap_chunks_do_not_share_text() -> None:
    text = lorem(200, seed=3)
    chunks = split_text(text, 150, 0)
    assert_valid(text, chunks, 150)
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.start >= prev.end
        assert text[prev.end : nxt.start].strip() == ""


def test_split_text_overlap_starts_on_a_word() -> None:
    rng = random.Random(11)
    vocabulary = ["a", "to", "the", "word", "internationalization", "x" * 30, "end."]
    text = " ".join(rng.choice(vocabulary) for _ in range(600))
    chunks = split_text(text, 80, 10)
    assert_valid(text, chunks, 80)
    for chunk in chunks[1:]:
        assert text[chunk.start - 1].isspace(), f"chunk starts mid-word: {chunk.text[:20]!r}"
    for prev, nxt in itertools.pairwise(chunks):
        assert prev.end - nxt.start <= 10
        assert text[prev.end : nxt.start].strip() == ""


# --- boundary preference ------------------------------------------------------------------


def test_split_text_prefers_a_paragraph_break() -> None:
    first = "The first paragraph talks. It has sentences. Several of them here."
    second = "The second one continues. Another sentence ends. Words go on and on and on."
    text = f"{first}\n\n{second}"
    chunks = split_text(text, 100, 0)
    assert chunks[0] == TextChunk(first, 0, len(first))
    assert chunks[1].start == len(first) + 2


@pytest.mark.parametrize("line_end", ["\r\n", "\r"], ids=["windows", "classic-mac"])
def test_split_text_finds_paragraphs_whatever_the_line_ends(line_end: str) -> None:
    text = lorem(60, seed=3)
    assert "\n\n" in text
    unix = [chunk.text for chunk in split_text(text, 400, 0)]
    other = split_text(text.replace("\n", line_end), 400, 0)
    assert [chunk.text.replace(line_end, "\n") for chunk in other] == unix


@pytest.mark.parametrize("line_end", ["\r\n", "\r"], ids=["windows", "classic-mac"])
def test_split_text_a_line_end_is_no_paragraph_whatever_the_line_ends(line_end: str) -> None:
    """A Windows line end ("\r\n") was a paragraph break ("\r", then "\n"): the chunks of a
    text wrapped at 60 characters ended at a line end mid-sentence, not at its paragraphs."""
    text = "\n\n".join(textwrap.fill(part, 60) for part in lorem(80, seed=4).split("\n\n"))
    unix = [chunk.text for chunk in split_text(text, 500, 0)]
    assert sum(chunk.endswith(".") for chunk in unix) * 2 > len(unix)
    other = split_text(text.replace("\n", line_end), 500, 0)
    assert [chunk.text.replace(line_end, "\n") for chunk in other] == unix


def test_split_text_prefers_a_sentence_end_over_spaces() -> None:
    first = "This sentence ends in the middle of the window and then."
    text = first + " More words follow without any full stop for quite a while longer"
    chunks = split_text(text, 100, 0)
    assert chunks[0] == TextChunk(first, 0, len(first))


@pytest.mark.parametrize("end", ["!", "?", '."', ".)", ".\u201d"])
def test_split_text_keeps_sentence_punctuation_in_the_chunk(end: str) -> None:
    first = "She said it clearly and loudly to everyone in the room" + end
    text = first + " and the rest of the story carries on with more words to read"
    chunks = split_text(text, 100, 0)
    assert chunks[0].text == first


@pytest.mark.parametrize("line_end", ["\n", "\r\n"], ids=["unix", "windows"])
def test_split_text_keeps_a_list_items_number_with_it(line_end: str) -> None:
    """A full stop after the number that begins a line is no sentence end: every chunk of a
    numbered list ended with the next item's number ("...ports\n6.") and the next chunk began
    with that item's words, without it."""
    items = [f"{n}. Step number {n} of the setup, done by hand" for n in range(1, 40)]
    text = (
        "Setup steps:"
        + line_end
        + line_end.join(f"  {item}" if n % 2 else item for n, item in enumerate(items))
    )
    for size in range(200, 400, 25):
        chunks = split_text(text, size, 0)
        assert len(chunks) > 3
        for chunk in chunks:
            assert chunk.text.startswith(("Setup", *(item[:3] for item in items)))
            assert chunk.text.endswith("by hand")
    assert (
        split_text("It costs 3. Then it costs 4 for a long while yet, and more", 20, 0)[0].text
        == "It costs 3."
    )


def test_split_text_keeps_a_tables_row_whole() -> None:
    """A full stop in a table's cell is no sentence end: a Markdown table was cut after a
    sentence in a row's cell, the rest of its cells in the next chunk."""
    rows = [f"| SETTING_{n} | {n * 10} | Sets part {n}. Raise it under load. |" for n in range(60)]
    text = "| Name | Default | Meaning |\n|---|---|---|\n" + "\n".join(rows)
    chunks = split_text(text, 1000, 0)
    assert len(chunks) > 3
    assert all(chunk.text.endswith("under load. |") for chunk in chunks)
    prose = "A table follows. | It has bars. The rest of this long line is prose, not a table"
    assert split_text(prose, 60, 0)[0].text == "A table follows. | It has bars."


def test_split_text_prefers_a_line_break_over_spaces() -> None:
    first = "a line of words without any full stop that runs on"
    text = first + "\nand the next line also has no full stop and keeps going on and on"
    chunks = split_text(text, 100, 0)
    assert chunks[0].text == first


def test_split_text_falls_back_to_the_last_space() -> None:
    text = " ".join(["word"] * 40)
    chunks = split_text(text, 42, 0)
    assert_valid(text, chunks, 42)
    assert chunks[0].text == " ".join(["word"] * 8)
    assert all(chunk.text.split() == ["word"] * len(chunk.text.split()) for chunk in chunks)


@pytest.mark.parametrize(
    ("text", "chunk_size", "first"),
    [
        ("alpha beta gamma delta", 10, "alpha beta"),
        ("The cat sat down. It was warm.", 17, "The cat sat down."),
        ("First para is here. More\n\nSecond para.", 24, "First para is here. More"),
        ("First para is here. More\r\n\r\nSecond para.", 24, "First para is here. More"),
    ],
    ids=["word", "sentence", "paragraph", "crlf-paragraph"],
)
def test_split_text_keeps_a_boundary_right_at_the_limit(
    text: str, chunk_size: int, first: str
) -> None:
    """A word, sentence or paragraph that ends exactly at `chunk_size` stays whole: the
    boundary's whitespace, just past the limit, is dropped anyway. (It was cut at the boundary
    before: "The cat sat" / "down. It was" / "warm.")"""
    chunks = split_text(text, chunk_size, 0)
    assert_valid(text, chunks, chunk_size)
    assert chunks[0].text == first


def test_split_text_ignores_breaks_that_would_make_a_tiny_chunk() -> None:
    text = "Hi.\n\n" + " ".join(["word"] * 60)
    chunks = split_text(text, 100, 0)
    assert chunks[0].text.startswith("Hi.\n\nword")
    assert len(chunks[0].text) >= 50


def test_split_text_no_spaces_is_cut_hard_and_covered() -> None:
    text = "".join(random.Random(5).choice("abcdefghij") for _ in range(20_000))
    chunks = split_text(text, 512, 64)
    assert_valid(text, chunks, 512)
    assert chunks[0].start == 0
    assert chunks[-1].end == len(text)
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.start <= prev.end
    assert len(chunks) <= 20_000 // (512 - 64) + 2


def test_split_text_no_spaces_without_overlap_is_contiguous() -> None:
    text = "x" * 20_000
    chunks = split_text(text, 1000, 0)
    assert [(c.start, c.end) for c in chunks] == [(i, i + 1000) for i in range(0, 20_000, 1000)]


# --- unicode ------------------------------------------------------------------------------


def test_split_text_emoji_offsets() -> None:
    text = " ".join(["party 🎉🎊 time 👩‍👩‍👧"] * 60)
    chunks = split_text(text, 64, 16)
    assert_valid(text, chunks, 64)


def test_split_text_cjk_cuts_after_full_stops() -> None:
    sentence = "这是一个测试句子。"
    text = sentence * 40
    chunks = split_text(text, 50, 0)
    assert_valid(text, chunks, 50)
    for chunk in chunks:
        assert chunk.text.endswith("。")
        assert chunk.start % len(sentence) == 0


def test_split_text_cjk_keeps_a_closing_quote_with_its_sentence() -> None:
    """「…。」: the closing bracket after the full stop began the next chunk."""
    sentence = "彼は「明日また来ます。」と言った。"
    text = sentence * 40
    chunks = split_text(text, 50, 0)
    assert_valid(text, chunks, 50)
    assert not any(chunk.text.startswith("」") for chunk in chunks)
    quoted = "「本当ですか\uff1f」" * 40
    for chunk in split_text(quoted, 30, 0):
        assert chunk.text.startswith("「") and chunk.text.endswith("」"), chunk.text


def test_split_text_cjk_with_overlap() -> None:
    text = "東京は日本の首都です。大阪は関西にあります\uff01本当ですか\uff1f" * 30
    chunks = split_text(text, 40, 10)
    assert_valid(text, chunks, 40)
    assert all(0 < shared <= 10 for shared in overlaps(chunks))


def test_split_text_cjk_with_latin_words_still_overlaps() -> None:
    """A space in CJK prose (around a Latin term) does not make its chunks share nothing: a
    CJK character starts a word. (Every chunk with a space in it had no overlap before.)"""
    run = "東京は日本の首都です" * 3
    text = "".join(f"{run}、Windows 10 と{run}。" for _ in range(10))
    chunks = split_text(text, 40, 10)
    assert_valid(text, chunks, 40)
    assert all(0 < shared <= 10 for shared in overlaps(chunks)), overlaps(chunks)


def test_split_text_combining_marks() -> None:
    text = " ".join(["cafe\u0301 nai\u0308ve Z\u0335\u0321a\u0336l\u0337g\u0338o"] * 50)
    chunks = split_text(text, 60, 10)
    assert_valid(text, chunks, 60)


def test_split_text_rtl_text() -> None:
    text = " ".join(["مرحبا بالعالم.", "שלום עולם!", "hello world"] * 40)
    chunks = split_text(text, 70, 15)
    assert_valid(text, chunks, 70)
    assert chunks[0].text.endswith((".", "!", "d"))


# --- adversarial input --------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "\n" * 5_000 + "word " * 200 + "\n" * 5_000,
        "\n\nword" * 2_000,
        "a\n" * 5_000,
        ". " * 5_000,
        "." * 10_000,
        "!?" * 3_000 + " end",
        ("\u3002" * 3_000) + "x",
        " \t \n" * 3_000 + "x",
        "\r\n\r\n".join(["line"] * 2_000),
    ],
    ids=[
        "newlines-around-words",
        "paragraph-per-word",
        "line-per-letter",
        "sentence-stops",
        "only-dots",
        "bangs",
        "cjk-stops",
        "whitespace-then-x",
        "crlf-paragraphs",
    ],
)
@pytest.mark.parametrize(("chunk_size", "overlap"), [(50, 0), (50, 45), (7, 3)])
def test_split_text_adversarial_input_terminates(text: str, chunk_size: int, overlap: int) -> None:
    began = time.monotonic()
    chunks = split_text(text, chunk_size, overlap)
    assert time.monotonic() - began < 2
    assert_valid(text, chunks, chunk_size)
    assert len(chunks) <= len(text)


def test_split_text_random_texts_keep_every_invariant() -> None:
    rng = random.Random(20240601)
    alphabet = [*"abcdefgh", *"ABC", " ", " ", " ", "\n", "\n\n", ".", ". ", "! ", "?\n"]
    alphabet += ["\t", "\u3002", "日本", "🎉", "e\u0301", "مرحبا", "\u00a0", '." ', "xxxxxxxxxx"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 600)))
        chunk_size = rng.randint(1, 120)
        overlap = rng.randint(0, chunk_size - 1)
        chunks = split_text(text, chunk_size, overlap)
        assert_valid(text, chunks, chunk_size)
        for shared in overlaps(chunks):
            assert shared <= overlap
            if overlap == 0:
                assert shared <= 0


def test_split_text_fits_chunks_in_the_models_window() -> None:
    """No chunk holds more tokens than the model reads: the model drops the rest unseen, and
    a search never found it (a 1000-character chunk of Chinese is ~1000 tokens of the bundled
    model's 256). A shortened chunk shares at most half its length with the next."""
    budget = model_token_budget(bundled_model_path())
    assert budget is not None
    assert budget.limit == 256
    text = "委员会于星期二开会审查市立图书馆的年度预算。成员们讨论了新书架的费用。" * 200
    chunks = [TextChunk(text[s:e], s, e) for s, e in chunk_spans(text, 1000, 100, budget)]
    assert_valid(text, chunks, 1000)
    assert all(budget.count(chunk.text) <= budget.limit for chunk in chunks)
    assert all(chunk.text.endswith("。") for chunk in chunks[:-1])
    for chunk, shared in zip(chunks, overlaps(chunks), strict=False):
        assert 0 < shared <= len(chunk.text) // 2
    # Text the model reads whole is cut as before.
    english = lorem(400)
    plain = [(c.start, c.end) for c in split_text(english, 800, 100)]
    assert all(budget.count(english[s:e]) <= budget.limit for s, e in plain)
    assert list(chunk_spans(english, 800, 100, budget)) == plain


# --- assign_pages -------------------------------------------------------------------------


def test_assign_pages_sets_the_page_where_each_chunk_starts() -> None:
    chunks = [TextChunk("a", 0, 1), TextChunk("b", 9, 10), TextChunk("c", 10, 11)]
    chunks += [TextChunk("d", 25, 26), TextChunk("e", 40, 41)]
    assign_pages(chunks, [0, 10, 20, 40])
    assert [chunk.page for chunk in chunks] == [1, 1, 2, 3, 4]


def test_assign_pages_chunk_spanning_pages_gets_its_first_page() -> None:
    chunks = [TextChunk("x" * 30, 5, 35)]
    assign_pages(chunks, [0, 10, 20])
    assert chunks[0].page == 1


@pytest.mark.parametrize("page_starts", [None, []])
def test_assign_pages_without_pages_leaves_none(page_starts: list[int] | None) -> None:
    chunks = split_text(lorem(30), 100, 10)
    assign_pages(chunks, page_starts)
    assert chunks
    assert all(chunk.page is None for chunk in chunks)


def test_assign_pages_with_split_text_matches_page_text() -> None:
    pages = [lorem(12, seed=n) for n in range(4)]
    text = "\n\n".join(pages)
    page_starts = []
    offset = 0
    for page in pages:
        page_starts.append(offset)
        offset += len(page) + 2
    chunks = split_text(text, 120, 30)
    assign_pages(chunks, page_starts)
    for chunk in chunks:
        assert chunk.page is not None
        assert page_starts[chunk.page - 1] <= chunk.start
        if chunk.page < len(pages):
            assert chunk.start < page_starts[chunk.page]
    assert {chunk.page for chunk in chunks} == {1, 2, 3, 4}


# --- the chunk limit ----------------------------------------------------------------------


def limited_task(text: str, chunk_size: int, overlap: int, max_chunks: int) -> IngestTask:
    data = text.encode()
    return IngestTask(
        task_id=str(uuid.uuid4()), owner_id=str(uuid.uuid4()), agent_id=str(uuid.uuid4()),
        filename="long.txt", format="text", size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(), chunk_size=chunk_size, chunk_overlap=overlap,
        embed_task_queue="unused", embed_activity_chunks=7, max_chunks=max_chunks,
    )  # fmt: skip


def refusal(tmp_path: Path, task: IngestTask, text: str) -> str:
    """The DocumentTooLarge message of `write_shards`, which must have written nothing."""
    staging = StagingStore(str(tmp_path))
    with pytest.raises(ApplicationError) as refused:
        ChunkActivities(staging).write_shards(task, text, None)
    assert refused.value.type == FailureType.DOCUMENT_TOO_LARGE
    assert refused.value.non_retryable
    assert not staging.exists(task.task_id, MANIFEST)
    assert not staging.exists(task.task_id, shard_name(0))
    return refused.value.message


def test_chunk_spans_are_the_offsets_of_split_text() -> None:
    text = lorem(300, seed=5)
    for chunk_size, overlap in [(100, 0), (100, 50), (300, 299), (1000, 100)]:
        chunks = split_text(text, chunk_size, overlap)
        assert list(chunk_spans(text, chunk_size, overlap)) == [(c.start, c.end) for c in chunks]


def test_write_shards_refuses_a_crawling_overlap_without_making_its_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overlap of all but one character of the chunk starts each chunk one word after the
    one before: 400 KB of words would make about 80,000 chunks of 10,000 characters (800 MB).
    The refusal cuts at most twice the limit, and the limit once more without overlap, and
    names the overlap as the cause, since the text fits without it."""
    text = "word " * 80_000
    without_overlap = len(split_text(text, 10_001, 0))
    assert without_overlap == 40
    cut = 0

    def counted(
        text: str, chunk_size: int, overlap: int, budget: TokenBudget | None = None
    ) -> Iterator[tuple[int, int]]:
        nonlocal cut
        for span in chunk_spans(text, chunk_size, overlap, budget):
            cut += 1
            yield span

    monkeypatch.setattr("activities.chunk.chunk_spans", counted)
    message = refusal(tmp_path, limited_task(text, 10_001, 10_000, max_chunks=50), text)
    assert message == (
        "the document makes more than 100 chunks of 10001 characters overlapping by 10000, "
        "over the limit of 50; use a smaller chunk_overlap (without overlap it makes 40), "
        "a larger chunk_size, or split it"
    )
    assert cut <= 2 * 50 + 1 + without_overlap


def test_write_shards_counts_a_document_a_little_past_the_limit(tmp_path: Path) -> None:
    text = "abcdefghij" * 550  # no boundary: 55 chunks of 100 characters
    message = refusal(tmp_path, limited_task(text, 100, 0, max_chunks=50), text)
    assert message == (
        "the document makes 55 chunks of 100 characters, over the limit of 50; "
        "split it or use a larger chunk_size"
    )


def test_write_shards_gives_the_usual_advice_when_too_large_without_overlap_too(
    tmp_path: Path,
) -> None:
    text = "word " * 2_000_000  # 10 MB: 1,000 chunks without overlap, millions with this one
    message = refusal(tmp_path, limited_task(text, 10_001, 10_000, max_chunks=50), text)
    assert message == (
        "the document makes more than 100 chunks of 10001 characters, over the limit of 50; "
        "split it or use a larger chunk_size"
    )


def test_write_shards_too_large_for_the_models_window_says_so(tmp_path: Path) -> None:
    """Chunks of 4000 characters of English are cut at the model's 256 tokens (~1000
    characters): 8 chunks of text make 27, past a limit of 20. The refusal said "27 chunks of
    4000 characters" and "use a larger chunk_size", which changes nothing."""
    budget = model_token_budget(bundled_model_path())
    text = lorem(400, seed=3)
    assert len(split_text(text, 4000, 0)) <= 20
    task = limited_task(text, 4000, 0, max_chunks=20)
    staging = StagingStore(str(tmp_path))
    with pytest.raises(ApplicationError) as refused:
        ChunkActivities(staging, budget).write_shards(task, text, None)
    assert refused.value.type == FailureType.DOCUMENT_TOO_LARGE
    assert refused.value.message == (
        "the document makes 27 chunks, over the limit of 20: the embedding model reads 256 "
        "tokens of a chunk, which cuts its chunks shorter than 4000 characters; split it"
    )


def test_write_shards_at_the_limit_writes_the_chunks_of_split_text(tmp_path: Path) -> None:
    text = lorem(200, seed=13)
    chunks = split_text(text, 200, 100)
    staging = StagingStore(str(tmp_path))
    task = limited_task(text, 200, 100, max_chunks=len(chunks))
    assert ChunkActivities(staging).write_shards(task, text, None).chunks == len(chunks)
    manifest = staging.read_json(task.task_id, MANIFEST)
    assert manifest == {"chunks": len(chunks), "step": 7, "pages": None}
    written = [
        row for start in shard_starts(manifest)
        for row in staging.read_json(task.task_id, shard_name(start))
    ]  # fmt: skip
    assert written == [asdict(c) for c in chunks]
