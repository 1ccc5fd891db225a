"""Deterministic documents for the figures: prose from a fixed vocabulary and a seeded RNG.

Each document keeps to one topic (its own nouns) so chunks differ in meaning, which the
neighbour-agreement figure needs; the grammar gives sentence and paragraph boundaries like real
prose, so the chunker cuts where it would in practice. The same seed gives the same bytes.
"""

from __future__ import annotations

import io
import random
import re
import textwrap
from dataclasses import dataclass
from typing import Any

import numpy as np

from activities.chunk import split_text
from activities.extract import extract_text
from core.formats import sniff_format

# About how many characters of new text each chunk takes at the default size (1000, overlap
# 100, cut at a paragraph or sentence boundary past half the size). PDF text comes back as
# lines without blank ones between paragraphs, so its chunks run fuller. Sizes only need to be
# close: the figures count the chunks the pipeline really made.
TEXT_CHARS_PER_CHUNK = 690
PDF_CHARS_PER_CHUNK = 860


def words(text: str) -> list[str]:
    return text.split()


TOPICS: dict[str, list[str]] = {
    "harbour": ["harbour", "ship", "cargo", "tide", "crane", "dock", "pilot", "container"],
    "orchard": ["orchard", "apple", "soil", "harvest", "blossom", "ladder", "frost", "cider"],
    "network": ["router", "packet", "latency", "switch", "cable", "protocol", "server", "link"],
    "kitchen": ["oven", "dough", "recipe", "spice", "kettle", "broth", "knife", "pantry"],
    "library": ["archive", "manuscript", "catalogue", "reader", "shelf", "index", "binding"],
    "railway": ["locomotive", "platform", "signal", "timetable", "carriage", "junction"],
    "hospital": ["patient", "nurse", "ward", "dosage", "surgeon", "clinic", "diagnosis"],
    "mountain": ["glacier", "ridge", "summit", "avalanche", "climber", "valley", "rope"],
    "finance": ["invoice", "ledger", "auditor", "budget", "dividend", "loan", "payroll"],
    "theatre": ["actor", "stage", "rehearsal", "costume", "audience", "script", "curtain"],
    "weather": ["storm", "pressure", "forecast", "rainfall", "humidity", "front", "gust"],
    "garden": ["tomato", "compost", "hedge", "seedling", "trellis", "mulch", "greenhouse"],
}
ADJECTIVES = words(
    "old quiet careful narrow heavy bright early late northern small large steady uneven "
    "familiar local cold warm recent detailed simple costly rare common"
)
VERBS = words(
    "moved checked carried repaired measured replaced followed opened closed described "
    "delayed improved reached covered recorded shaped protected"
)
ADVERBS = words("slowly quickly carefully rarely often quietly again together early")
PREPOSITIONS = words("near behind across under beside through after before along")
TIMES = ["in the spring", "after the first week", "by the end of the season", "at dawn",
         "during the long winter", "every other morning", "before the inspection"]  # fmt: skip


class Prose:
    """Sentences, paragraphs and whole documents about one topic, from a seeded RNG."""

    def __init__(self, seed: int, topic: str | None = None) -> None:
        self.rng = random.Random(seed)
        self.nouns = TOPICS[topic or self.rng.choice(sorted(TOPICS))]

    def _pick(self, words: list[str]) -> str:
        return self.rng.choice(words)

    def sentence(self) -> str:
        noun, other, third = (self._pick(self.nouns) for _ in range(3))
        adjective, verb, adverb = (
            self._pick(ADJECTIVES),
            self._pick(VERBS),
            self._pick(ADVERBS),
        )
        preposition, time = self._pick(PREPOSITIONS), self._pick(TIMES)
        templates = [
            f"The {adjective} {noun} {verb} the {other} {preposition} the {third}.",
            f"{time.capitalize()}, the {noun} was {verb} {adverb} by the {other}.",
            f"Nobody {verb} the {noun} {preposition} the {other}, so the {third} waited.",
            f"About {self.rng.randint(2, 95)} percent of the {noun} {verb} the {adjective} "
            f"{other} {time}.",
            f"Because the {other} was {adjective}, the {noun} {verb} the {third} {adverb}.",
            f"Was the {noun} really {verb} {preposition} the {adjective} {other}?",
        ]
        return self.rng.choice(templates)

    def paragraph(self) -> str:
        return " ".join(self.sentence() for _ in range(self.rng.randint(3, 8)))

    def paragraphs(self, characters: int) -> list[str]:
        out: list[str] = []
        while sum(len(p) + 2 for p in out) < characters:
            out.append(self.paragraph())
        return out

    def plain_text(self, characters: int) -> str:
        return "\n\n".join(self.paragraphs(characters)) + "\n"

    def markdown(self, title: str, characters: int) -> str:
        blocks = [f"# {title}"]
        size = len(title)
        while size < characters:
            section = len(blocks)
            if section % 5 == 1:
                blocks.append(f"## {self._pick(self.nouns).capitalize()} notes {section // 5 + 1}")
            elif section % 7 == 6:
                blocks.append("\n".join(f"- {self.sentence()}" for _ in range(3)))
            else:
                blocks.append(self.paragraph())
            size += len(blocks[-1]) + 2
        return "\n\n".join(blocks) + "\n"


@dataclass(frozen=True)
class Document:
    name: str
    data: bytes


def make_pdf(paragraphs: list[str], image_side: int = 0, seed: int = 0) -> bytes:
    """A text PDF (10 pt Helvetica, wrapped lines); with `image_side`, a page of noise too."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4, invariant=True)  # no dates: same bytes each run
    y = _draw_paragraphs(pdf, paragraphs)
    if image_side:
        pdf.showPage()
        _draw_noise(pdf, image_side, seed)
        y = 0.0
    if y:
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def _draw_paragraphs(pdf: Any, paragraphs: list[str]) -> float:
    """Draw line by line, a new page when one is full; return the last line's height."""
    top, bottom, leading = 800.0, 40.0, 12.0
    y = top
    pdf.setFont("Helvetica", 10)
    for paragraph in paragraphs:
        for line in [*textwrap.wrap(paragraph, 95), ""]:
            if y < bottom:
                pdf.showPage()
                pdf.setFont("Helvetica", 10)
                y = top
            pdf.drawString(40, y, line)
            y -= leading
    return y


def _draw_noise(pdf: Any, side: int, seed: int) -> None:
    """An incompressible image: it makes the file large without adding text."""
    from PIL import Image
    from reportlab.lib.utils import ImageReader

    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    image = ImageReader(Image.fromarray(pixels, "RGB"))
    pdf.drawImage(image, 40, 200, width=500, height=500)


def corpus(text_chunks: list[int], pdf_chunks: list[int], seed: int = 1) -> list[Document]:
    """Text and Markdown documents, then PDFs, each of about the given number of chunks."""
    topics = sorted(TOPICS)
    documents: list[Document] = []
    for index, chunks in enumerate(text_chunks):
        prose = Prose(seed * 1000 + index, topics[index % len(topics)])
        characters = chunks * TEXT_CHARS_PER_CHUNK
        if index % 2:
            data = prose.markdown(f"Field guide {index}", characters)
            documents.append(Document(f"guide-{seed}-{index}.md", data.encode()))
        else:
            data = prose.plain_text(characters)
            documents.append(Document(f"notes-{seed}-{index}.txt", data.encode()))
    for index, chunks in enumerate(pdf_chunks):
        prose = Prose(seed * 1000 + 500 + index, topics[-1 - index % len(topics)])
        pdf = make_pdf(prose.paragraphs(chunks * PDF_CHARS_PER_CHUNK))
        documents.append(Document(f"report-{seed}-{index}.pdf", pdf))
    return documents


def markdown_document(name: str, chunks: int, seed: int) -> Document:
    """One Markdown document of about `chunks` chunks."""
    text = Prose(seed).markdown(name, chunks * TEXT_CHARS_PER_CHUNK)
    return Document(f"{name}.md", text.encode())


def padded_pdf(target_bytes: int, seed: int = 3) -> bytes:
    """A PDF of about `target_bytes`: two pages of prose and one page holding an image."""
    prose = Prose(seed)
    text_pages = prose.paragraphs(2 * 4000)
    # reportlab writes raw RGB through ASCII85 (5 bytes per 4): side² · 3 · 1.25 bytes.
    side = int((max(target_bytes - 20_000, 10_000) / 3.75) ** 0.5)
    return make_pdf(text_pages, image_side=side, seed=seed)


def variant(pdf: bytes, number: int) -> bytes:
    """The same PDF with a distinct trailing comment: other bytes (no dedup), same content."""
    return pdf + f"\n%benchmark variant {number}\n".encode()


def local_chunks(documents: list[Document], chunk_size: int, chunk_overlap: int) -> list[list[str]]:
    """The chunk texts the pipeline makes of each document (same extract and split functions)."""
    out: list[list[str]] = []
    for document in documents:
        fmt = sniff_format(io.BytesIO(document.data), document.name)
        extracted = extract_text(document.data, fmt)
        out.append([c.text for c in split_text(extracted.text, chunk_size, chunk_overlap)])
    return out


_SENTENCE = re.compile(r"(?<=[.?!])\s+")


def first_sentence(text: str) -> str:
    """The first whole sentence of a chunk (chunks may start mid-sentence, in the overlap),
    without Markdown headings or list markers."""
    lines = [line.lstrip("- ").strip() for line in text.splitlines()]
    body = " ".join(line for line in lines if line and not line.startswith("#"))
    sentences = _SENTENCE.split(body)
    whole = [s for s in sentences if s[:1].isupper() and s.endswith((".", "?", "!"))]
    return (whole or sentences)[0]
