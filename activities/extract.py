"""Text extraction: PDF (PDFium, with page boundaries), DOCX (with tables), HTML, text."""

from __future__ import annotations

import contextlib
import email
import email.policy
import hashlib
import io
import math
import re
import threading
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from typing import TypeVar

import docx
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from docx.document import Document
from docx.opc.constants import CONTENT_TYPE, RELATIONSHIP_TYPE
from docx.opc.part import Part, PartFactory
from docx.oxml.ns import qn
from docx.oxml.parser import OxmlElement, parse_xml
from docx.oxml.table import CT_Row, CT_Tc
from docx.oxml.xmlchemy import BaseOxmlElement
from temporalio import activity

from activities.errors import (
    RejectedDocument,
    rejected_to_failure,
    staging_damaged,
    staging_missing,
)
from activities.reader_process import READ_IN_CHILD, ReaderLimits, read_in_child
from activities.word_numbering import WordNumbering
from core.formats import DocumentFormat, decode_html, decode_text
from core.staging import TEXT, StagingStore
from workflows.types import (
    EXTRACT,
    ExtractResult,
    FailureType,
    IngestTask,
)

# A DOCX is a ZIP: refuse archives that inflate past this before python-docx reads them.
MAX_DOCX_UNCOMPRESSED = 256 * 1024 * 1024
PAGE_SEPARATOR = "\n\n"
# The Latin ligatures (U+FB00-U+FB06: "ﬁ", "ﬂ", "ﬀ", ...), which text copied out of a PDF
# carries into Word, HTML and text files, as their letters: the model reads "ﬁle" as "ﬁ" and
# "##le", and a search for "file" scored 0.35 against such a sentence instead of 0.63.
LIGATURES = {code: unicodedata.normalize("NFKC", chr(code)) for code in range(0xFB00, 0xFB07)}
# A character that shows something: neither whitespace nor one that shows nothing (soft hyphen,
# zero-width space, joiner and non-joiner, direction marks, word joiner, a BOM past the first).
# A text of only those was stored `complete` as one invisible chunk, which searches returned.
_VISIBLE = re.compile(r"[^\s\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


@dataclass
class ExtractedText:
    text: str
    # Character offset where each page starts (PDF only); page n starts at page_starts[n - 1].
    page_starts: list[int] | None = None


OnPage = Callable[[int, int], None]  # (pages read, pages in the document)


def extract_text(data: bytes, fmt: DocumentFormat, on_page: OnPage | None = None) -> ExtractedText:
    """The document's text; raises RejectedDocument when the file cannot be read."""
    extractors: dict[DocumentFormat, Callable[[], ExtractedText]] = {
        DocumentFormat.PDF: lambda: extract_pdf(data, on_page),
        DocumentFormat.DOCX: lambda: ExtractedText(extract_docx(data)),
        DocumentFormat.HTML: lambda: ExtractedText(html_to_text(decode_html(data))),
        DocumentFormat.MARKDOWN: lambda: ExtractedText(plain_text(decode_text(data))),
        DocumentFormat.TEXT: lambda: ExtractedText(plain_text(decode_text(data))),
    }
    extracted = extractors[fmt]()
    # PostgreSQL text cannot hold NUL; dropping it keeps offsets consistent from here on (a
    # PDF's pages hold neither NUL nor ligatures: `_page_text` has replaced them already).
    extracted.text = extracted.text.replace("\x00", "").translate(LIGATURES)
    if _VISIBLE.search(extracted.text) is None:
        raise RejectedDocument(FailureType.EMPTY_DOCUMENT, _empty_reason(fmt))
    return extracted


# What a text file holds that no reader sees as words, which the model read glued to the words
# beside it or as hundreds of chunks of nothing:
# - a terminal's escape sequences, as a log captured with colours has them (ECMA-48: CSI
#   "\x1b[1;31m", an OSC's window title or link up to its terminator, and the short ones,
#   "\x1b(B"): "\x1b[31mERROR" was read as "[31mERROR", pieces "##mer" "##ror", not "error";
_TERMINAL_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)|\x1b[ -/]*[0-~]"
)
# - a character struck over by the next after a backspace, as `man` prints bold ("N\bN") and
#   underline ("_\bN"): the model read "NNAAMMEE";
_OVERSTRUCK = re.compile(r"[^\n\x08]\x08")
# - the bytes of an image inlined as a data: URI, as a Markdown editor pastes a screenshot: a
#   60 KB screenshot made 269 chunks of base64 beside a document's 2 (its type is kept).
_DATA_URI = re.compile(r"(data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,)[A-Za-z0-9+/_-]+=*")
# - the same bytes elsewhere: a certificate or key pasted between its PEM lines, an e-mail's
#   attachment saved with the text, an ssh key: 30 KB of an attachment made 177 chunks, two
#   certificates 14, and such chunks came in the top 5 of 7 % of searches for other things. A
#   run of base64 (its lines may wrap) is left out when it is long and holds upper and lower
#   case letters and digits, as encoded bytes do and words, hex hashes and paths do not (the
#   "-----BEGIN CERTIFICATE-----" around it stays).
# A run's next lines are whole lines of it: 16 characters at least, or its padded last line
# (a line of a word or two after it is not taken for one).
_BASE64_RUN = re.compile(
    r"(?<![\w+/=.-])[A-Za-z0-9+/]{60,}"
    r"(?:[ \t]*(?:\r\n?|\n)[ \t]*(?:[A-Za-z0-9+/]{16,}|[A-Za-z0-9+/]+(?==))"
    r"(?=={0,2}[ \t]*(?:[\r\n]|\Z)))*={0,2}(?![\w+/=.-])"
)
_BASE64_MIN = 256  # characters of a run, line ends left out
_BASE64_SHAPE = (re.compile("[A-Z]"), re.compile("[a-z]"), re.compile("[0-9]"))
_BASE64_SLASHES = 0.06  # "/" is 1 in 64 characters of base64, one in a few of a path


def plain_text(text: str) -> str:
    """A text or Markdown file's text without its terminal escapes, overstrikes, inlined data
    and other encoded bytes (above); the rest is kept as written."""
    if "\x1b" in text:
        text = _TERMINAL_ESCAPE.sub("", text)
    if "\x08" in text:
        text = _OVERSTRUCK.sub("", text)
    if ";base64," in text:
        text = _DATA_URI.sub(r"\1", text)
    return _BASE64_RUN.sub(_unless_encoded_bytes, text)


def _unless_encoded_bytes(run: re.Match[str]) -> str:
    """The run, or "" when it is encoded bytes (`_BASE64_RUN`)."""
    letters = "".join(run.group().split()).rstrip("=")
    if len(letters) < _BASE64_MIN or letters.count("/") > len(letters) * _BASE64_SLASHES:
        return run.group()  # short, or a path
    return "" if all(shape.search(letters) for shape in _BASE64_SHAPE) else run.group()


def _empty_reason(fmt: DocumentFormat) -> str:
    if fmt is DocumentFormat.PDF:
        return "the PDF contains no extractable text (it may hold only scanned images)"
    return "the document contains no text"


def extract_pdf(data: bytes, on_page: OnPage | None = None) -> ExtractedText:
    """The text of each page, read with PDFium (pypdfium2).

    PDFium is C++ and not thread-safe: one document at a time in a process (the lock). The
    worker reads PDFs only in a child process (activities/reader_process.py), so a crash or a
    file built to exhaust memory ends the child, never the worker."""
    with _PDFIUM:
        document = _open_pdf(data)
        try:
            return _read_pages(document, on_page)
        finally:
            document.close()


_PDFIUM = threading.Lock()
# FPDF_GetLastError() when a document does not open: a password is needed, or an unsupported
# security handler.
_PDFIUM_PASSWORD, _PDFIUM_SECURITY = 4, 5
# pdfium marks a hyphen it found at the end of a line, where it joined the word, with U+0002.
_PDFIUM_LINE_END_HYPHEN = "\x02"
# Bounds for the text of a whole page, drawn outside its box too (a line past the right edge is
# still the document's text); unlike get_text_range, get_text_bounded keeps all of Unicode.
_EVERYWHERE = (-1e9, -1e9, 1e9, 1e9)  # left, bottom, right, top
# The control characters left after line breaks are made "\n" (C0 and C1): none carries text.
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f"
_CONTROL = re.compile(f"[{_CONTROLS}]")
# What PDFium reads from a font that does not say which letters it draws (no ToUnicode map,
# glyphs named /g1, /g2, ...: it gives the character codes themselves, control characters
# for most such fonts) or maps them into the Private Use Area: no text holds mostly these. A
# page that does is left out; its chunks were stored, and no search found them.
_NOT_TEXT = re.compile(f"[{_CONTROLS}\ue000-\uf8ff\ufffd\U000f0000-\U0010ffff]")
_SPACE = re.compile(r"\s")


def _open_pdf(data: bytes) -> pdfium.PdfDocument:
    try:
        document = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if exc.err_code == _PDFIUM_PASSWORD:
            raise RejectedDocument(
                FailureType.ENCRYPTED_DOCUMENT, "the PDF is password-protected"
            ) from exc
        if exc.err_code == _PDFIUM_SECURITY:
            raise RejectedDocument(
                FailureType.ENCRYPTED_DOCUMENT, "the PDF is encrypted and cannot be opened"
            ) from exc
        raise RejectedDocument(
            FailureType.CORRUPT_DOCUMENT, "the PDF is damaged or incomplete and cannot be read"
        ) from exc
    if document.get_formtype() == pdfium_c.FORMTYPE_ACRO_FORM:
        # A filled field often has no appearance of its own (the form asks the viewer to draw
        # its value, /NeedAppearances), and flattening it drew nothing: the answer was left
        # out. PDFium's form module draws them as a viewer does, on the pages loaded after it.
        document.init_forms()
    return document


def _read_pages(document: pdfium.PdfDocument, on_page: OnPage | None) -> ExtractedText:
    parts: list[str] = []
    page_starts: list[int] = []
    offset = 0
    pages = len(document)
    if on_page is not None:
        on_page(0, pages)
    unreadable = readable = 0
    for index in range(pages):
        page_text = _page_text(document, index)
        if page_text is None:
            page_text, unreadable = "", unreadable + 1
        elif page_text:
            readable += 1
        page_starts.append(offset)
        parts.append(page_text)
        offset += len(page_text) + len(PAGE_SEPARATOR)
        if on_page is not None:
            on_page(index + 1, pages)
    text = PAGE_SEPARATOR.join(parts)
    if unreadable and not text.strip():
        raise RejectedDocument(
            FailureType.EMPTY_DOCUMENT,
            "the PDF contains no extractable text (its fonts do not say which letters they draw)",
        )
    if unreadable > readable:
        # Stored, it was a fraction of the document, searched as though it were all of it.
        raise RejectedDocument(
            FailureType.EMPTY_DOCUMENT,
            f"the text of {unreadable} of the PDF's {pages} pages cannot be extracted (their "
            "fonts do not say which letters they draw)",
        )
    return ExtractedText(text, page_starts)


def _page_text(document: pdfium.PdfDocument, index: int) -> str | None:
    """The page's text; None when most of it is characters that no text holds (_NOT_TEXT), or
    that PDFium knows no letter for (_sample_characters)."""
    try:
        page = _page_with_annotations_drawn(document, index)
        try:
            raw = _text_along_its_lines(page)
        finally:
            page.close()
    except pdfium.PdfiumError as exc:
        raise RejectedDocument(
            FailureType.CORRUPT_DOCUMENT,
            f"the PDF is damaged and its page {index + 1} cannot be read",
        ) from exc
    if raw is None:
        return None
    lines = raw.replace("\r\n", "\n").replace("\r", "\n").replace(_PDFIUM_LINE_END_HYPHEN, "")
    if len(_NOT_TEXT.findall(lines)) * 2 > len(_SPACE.sub("", lines)):
        return None
    return _CONTROL.sub("", lines).translate(LIGATURES).strip()


# PDFium ends a line only where text runs left to right in the page's own space, and orders
# lines as the page is shown (its /Rotate): a page whose lines run up or down (a scan that
# /Rotate shows upright) read the last word of a line and the first of the next as one
# ("grewby"), and one whose lines /Rotate shows turned read its last line first. Such a page is
# read turned so that most of its characters run left to right, and unrotated. The direction
# is judged from this many characters, spread over the page.
_DIRECTION_SAMPLES = 64
# How far (degrees) a character may lean and still run in one of the four directions.
_DIRECTION_SLACK = 10
# The share of them that must run one way for the page to be turned: a page's own lines
# beside a longer turned label (an arXiv stamp up the margin of a title page, a chart's axis
# title) were turned with it, and read glued, last line first ("things.Abstract").
_DIRECTION_MAJORITY = 0.9


def _text_along_its_lines(page: pdfium.PdfPage) -> str | None:
    """The page's text; None when most of its characters have no letter that PDFium knows."""
    text_page = page.get_textpage()
    try:
        direction, unmapped = _sample_characters(text_page)
        if unmapped:
            return None
        if direction is None or (direction == 0 and page.get_rotation() == 0):
            return _all_text(text_page)
    finally:
        text_page.close()
    if direction:
        turn = pdfium.PdfMatrix().rotate(direction)  # clockwise: back from counterclockwise
        for page_object in page.get_objects(max_depth=0):
            page_object.transform(turn)
    pdfium_c.FPDFPage_SetRotation(page, 0)
    text_page = page.get_textpage()
    try:
        return _all_text(text_page)
    finally:
        text_page.close()


def _all_text(text_page: pdfium.PdfTextPage) -> str:
    text: str = text_page.get_text_bounded(*_EVERYWHERE)
    return text


def _sample_characters(text_page: pdfium.PdfTextPage) -> tuple[int | None, bool]:
    """The direction (0, 90, 180 or 270 degrees, counterclockwise) that nearly all of the
    page's characters run in (_DIRECTION_MAJORITY), None when none does (slanted, mixed); and
    whether most of them have no letter that PDFium knows (a Unicode map error): a font that
    draws by glyph number (a Type0 font, "Identity-H") without a ToUnicode map reads as
    printable junk, each glyph's number taken for a letter ("7KHLQYRLFH" for "The invoice"),
    which _NOT_TEXT lets pass, and its chunks were stored."""
    count = text_page.count_chars()
    directions: Counter[int | None] = Counter()
    sampled = unmapped = 0
    matrix = pdfium_c.FS_MATRIX()
    for index in range(0, count, max(1, count // _DIRECTION_SAMPLES)):
        if pdfium_c.FPDFText_IsGenerated(text_page, index) == 1:
            continue  # a space or line end that PDFium put in runs nowhere
        sampled += 1
        unmapped += pdfium_c.FPDFText_HasUnicodeMapError(text_page, index) == 1
        if pdfium_c.FPDFText_GetMatrix(text_page, index, matrix):
            angle = math.degrees(math.atan2(matrix.b, matrix.a))
            quarter = round(angle / 90)
            leans = abs(angle - quarter * 90) > _DIRECTION_SLACK
            directions[None if leans else quarter % 4 * 90] += 1
    mostly_unmapped = unmapped * 2 > sampled
    if not directions:
        return None, mostly_unmapped
    direction, most = directions.most_common(1)[0]
    majority = most >= _DIRECTION_MAJORITY * directions.total()
    return (direction if majority else None), mostly_unmapped


def _page_with_annotations_drawn(document: pdfium.PdfDocument, index: int) -> pdfium.PdfPage:
    """Page `index` with what its annotations show drawn into its content: the values of a
    filled form's fields (and free-text notes) are annotations, which PDFium's text page does
    not read, so a form's answers were left out. PDFium reads a flattened page's content only
    when it loads the page again."""
    page = document[index]
    if not _shows_annotations(page):
        return page
    flattened = pdfium_c.FPDFPage_Flatten(page, pdfium_c.FLAT_NORMALDISPLAY)
    if flattened != pdfium_c.FLATTEN_SUCCESS:  # nothing shown, or it failed: as it was
        return page
    page.close()
    return document[index]


# Annotations that may draw text: a form field's value, a free-text note, a stamp. The others
# (links, highlights, pop-ups, ink) draw none, and flattening costs: PDFium flattens a link too
# (FLATTEN_SUCCESS), which copies the page's content uncompressed into the document until it
# closes: a PDF linked on every page took 1.5-2.7 times the CPU, and memory growing with its
# pages (until the reader crashed at DOCINGEST_EXTRACT_MEMORY_LIMIT_MIB).
_SHOW_TEXT = frozenset(
    {pdfium_c.FPDF_ANNOT_WIDGET, pdfium_c.FPDF_ANNOT_FREETEXT, pdfium_c.FPDF_ANNOT_STAMP}
)


def _shows_annotations(page: pdfium.PdfPage) -> bool:
    """Whether the page has an annotation that may draw text: a form field, a note, a stamp."""
    for number in range(pdfium_c.FPDFPage_GetAnnotCount(page)):
        annotation = pdfium_c.FPDFPage_GetAnnot(page, number)
        try:
            if pdfium_c.FPDFAnnot_GetSubtype(annotation) in _SHOW_TEXT:
                return True
        finally:
            pdfium_c.FPDFPage_CloseAnnot(annotation)
    return False


def extract_docx(data: bytes, depth: int = 0) -> str:
    """The text of a Word document; `depth`: how many documents it is imported into."""
    _check_docx_archive(data)
    try:
        document = docx.Document(io.BytesIO(data))
        _read_imported_chunks(document, depth)
        numbering = WordNumbering.of(document)
        blocks = [
            *_docx_blocks(document.element.body, numbering),
            *_docx_notes(document, numbering),
        ]
    # Past the memory limit (the reader says so), or an imported document refused.
    except (MemoryError, RejectedDocument):
        raise
    except Exception as exc:  # python-docx and lxml raise many types on damaged files
        raise RejectedDocument(
            FailureType.CORRUPT_DOCUMENT, "the Word document is damaged and cannot be read"
        ) from exc
    return "\n\n".join(block for block in blocks if block.strip())


# A chunk imported from another file (w:altChunk), as document generators (html-docx-js, an
# HTML page's whole body) and merges (the Open XML SDK's, a .docx in a .docx) write them: Word
# shows its content where it stands, but python-docx reads none of it (a document made of one
# was refused as empty), and took an imported .docx for the main document's XML (refused as
# damaged). Its part is kept as bytes, and read as its content type says.
_W_ALT_CHUNK, _R_ID = qn("w:altChunk"), qn("r:id")
_CHUNK_DEPTH = 8  # imported documents inside imported documents
# What XML cannot hold, which lxml refused (and the whole document with it, as damaged): an
# imported text file's page and line breaks read as line ends, its other controls go.
_XML_BREAKS = str.maketrans({"\x0b": "\n", "\x0c": "\n"})
_NOT_XML = re.compile("[\x00-\x08\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


_DOCX_PART_CLASS = PartFactory.part_class_selector  # python-docx's own (images)


# The numbering part is kept as bytes too: `WordNumbering` reads it, and numbers nothing when
# it is damaged, where python-docx refused the whole document for it.
_PARTS_KEPT_AS_BYTES = frozenset({RELATIONSHIP_TYPE.A_F_CHUNK, RELATIONSHIP_TYPE.NUMBERING})


def _part_class(content_type: str, reltype: str) -> type[Part] | None:
    if reltype in _PARTS_KEPT_AS_BYTES:
        return Part
    return None if _DOCX_PART_CLASS is None else _DOCX_PART_CLASS(content_type, reltype)


PartFactory.part_class_selector = _part_class


def _read_imported_chunks(document: Document, depth: int) -> None:
    """Each imported chunk of the body replaced by paragraphs of its text (`_chunk_text`). A
    part imported more than once is read once: a document importing 4 times one that imports
    4 times another, and so on, was read 4 ** depth times (9 s for 200 KB 5 deep, past the
    reader's time limit 8 deep)."""
    texts: dict[str, str] = {}
    for chunk in list(document.element.body.iter(_W_ALT_CHUNK)):
        relationship = document.part.rels.get(chunk.get(_R_ID) or "")
        text = ""
        if relationship is not None and not relationship.is_external:
            part = relationship.target_part
            if part.partname not in texts:
                text = _chunk_text(part, depth).translate(_XML_BREAKS)
                texts[part.partname] = _NOT_XML.sub("", text)
            text = texts[part.partname]
        for block in text.split("\n\n"):
            paragraph, run, words = OxmlElement("w:p"), OxmlElement("w:r"), OxmlElement("w:t")
            words.text = block
            run.append(words)
            paragraph.append(run)
            chunk.addprevious(paragraph)
        chunk.getparent().remove(chunk)


def _chunk_text(part: Part, depth: int) -> str:
    """An imported chunk's text: HTML, a web archive (MHT), text or a Word document; "" for
    another format (RTF)."""
    kind = part.content_type.split(";")[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml"):
        return html_to_text(decode_html(part.blob))
    if kind == "message/rfc822":
        return _web_archive_text(part.blob)
    if kind == "text/plain":
        return plain_text(decode_text(part.blob))
    if kind == CONTENT_TYPE.WML_DOCUMENT_MAIN:
        if depth >= _CHUNK_DEPTH:
            raise RejectedDocument(
                FailureType.CORRUPT_DOCUMENT,
                f"the Word document imports documents nested more than {_CHUNK_DEPTH} deep",
            )
        return extract_docx(part.blob, depth + 1)
    return ""


def _web_archive_text(data: bytes) -> str:
    """The text of a web archive's page (its first HTML part)."""
    archive = email.message_from_bytes(data, policy=email.policy.compat32)
    for section in archive.walk():
        if section.get_content_type() != "text/html":
            continue
        payload = section.get_payload(decode=True)
        if not isinstance(payload, bytes):
            return ""
        return html_to_text(_web_page_html(payload, section.get_content_charset()))
    return ""


def _web_page_html(payload: bytes, charset: str | None) -> str:
    """A web archive's page decoded by its charset; as decode_html reads a page when it names
    none, or one that is unknown or decodes no text ("base64", "idna": they raised at decode,
    and the whole document was refused as damaged)."""
    if charset:
        with contextlib.suppress(LookupError, ValueError):
            return payload.decode(charset, errors="replace")
    return decode_html(payload)


def _check_docx_archive(data: bytes) -> None:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise RejectedDocument(
            FailureType.CORRUPT_DOCUMENT, "the Word document is not a valid ZIP archive"
        ) from exc
    if inflated > MAX_DOCX_UNCOMPRESSED:
        raise RejectedDocument(
            FailureType.DOCUMENT_TOO_LARGE,
            f"the Word document unpacks to {inflated // (1024 * 1024)} MiB, "
            f"over the {MAX_DOCX_UNCOMPRESSED // (1024 * 1024)} MiB limit",
        )


# Word body elements by tag. python-docx's `iter_inner_content` and `Paragraph.text` read only
# the paragraphs, tables and runs that are direct children: they skip content controls (w:sdt,
# cover pages and form templates), custom XML, and the runs inside tracked insertions (w:ins),
# simple fields (cross-references), smart tags and text boxes. All of it is the document's text.
_W_P, _W_TBL, _W_SDT, _W_SDT_CONTENT, _W_CUSTOM_XML = (
    qn(f"w:{tag}") for tag in ("p", "tbl", "sdt", "sdtContent", "customXml")
)
# A run's pieces: w:t holds its own text (None here), the others stand for a character. An
# equation's runs hold theirs in m:t ("r = 0.05" was left out of the sentence around it).
_W_RUN_TEXT = {
    qn("w:t"): None,
    qn("m:t"): None,
    qn("w:tab"): "\t",
    qn("w:ptab"): "\t",
    qn("w:br"): "\n",
    qn("w:cr"): "\n",
    qn("w:noBreakHyphen"): "-",
}
# Not text: deleted or moved-away runs (their text is w:delText, but a move may hold w:t),
# properties, a text box's fallback copy for older readers (mc:Fallback beside mc:Choice),
# and a ruby's reading (w:rt, "かんじ" set over "漢字"): the text reads as written, "漢字",
# not "かんじ漢字", as in an HTML page.
_W_NOT_TEXT = {
    qn("w:del"),
    qn("w:moveFrom"),
    qn("w:pPr"),
    qn("w:rPr"),
    qn("w:rt"),
    "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback",
}


def _docx_blocks(container: BaseOxmlElement, numbering: WordNumbering) -> Iterator[str]:
    """The text of each paragraph and table of `container` (the body, a cell), in order; a
    numbered paragraph's begins with its number ("4.2 Payment"), as Word shows it."""
    for child in _unwrapped(container):
        if child.tag == _W_P:
            label = numbering.label(child)  # counted even when the paragraph is empty
            text = "".join(_paragraph_text(child)).strip("\n")
            yield label + text if label and text.strip() else text
        elif child.tag == _W_TBL:
            yield _table_text(child, numbering)


def _unwrapped(parent: BaseOxmlElement) -> Iterator[BaseOxmlElement]:
    """The children of `parent` (paragraphs and tables of the body, rows of a table, cells of
    a row), with those that a content control (w:sdt) or custom XML holds in their place: Word
    wraps a repeating section's rows, or a control put on cells or paragraphs, in one."""
    for child in parent:
        if child.tag == _W_SDT:
            content = child.find(_W_SDT_CONTENT)
            if content is not None:
                yield from _unwrapped(content)
        elif child.tag == _W_CUSTOM_XML:
            yield from _unwrapped(child)
        else:
            yield child


# Footnotes, then endnotes: their parts hold one w:footnote / w:endnote each, besides the
# separator lines Word keeps there (w:type="separator" and the like), which hold no text.
_NOTE_PARTS = (RELATIONSHIP_TYPE.FOOTNOTES, RELATIONSHIP_TYPE.ENDNOTES)
_W_TYPE = qn("w:type")
_NOT_NOTES = {"separator", "continuationSeparator", "continuationNotice"}


def _docx_notes(document: Document, numbering: WordNumbering) -> Iterator[str]:
    """The text of each footnote and endnote, after the body: a note (a source, a caveat) is
    the document's text too, though not where its mark stands."""
    relationships = list(document.part.rels.values())
    for kind in _NOTE_PARTS:
        for relationship in relationships:
            if relationship.reltype != kind or relationship.is_external:
                continue
            for note in parse_xml(relationship.target_part.blob):
                if note.get(_W_TYPE) not in _NOT_NOTES:
                    # Without its mark, a note's text starts with the space Word puts after it.
                    yield from (block.strip() for block in _docx_blocks(note, numbering))


_W_TEXT_BOX, _W_RUN, _W_SYM = qn("w:txbxContent"), qn("w:r"), qn("w:sym")
# Hidden text (w:vanish in a run's properties): Word neither shows nor prints it.
_W_HIDDEN = f"{qn('w:rPr')}/{qn('w:vanish')}"
_W_VAL, _W_FONT, _W_CHAR = qn("w:val"), qn("w:font"), qn("w:char")
_W_OFF = frozenset({"0", "false", "off"})
# Word's Insert Symbol writes a character of a symbol font as w:sym, with its code in the font
# (F000 plus the byte). The Symbol font draws the Greek alphabet on the Latin letters' codes
# (F061 is alpha): text a search user types. Other symbol fonts (Wingdings, ...) draw pictures.
_SYMBOL_FONT_GREEK = {
    **dict(zip(range(0x41, 0x5B), "ΑΒΧΔΕΦΓΗΙϑΚΛΜΝΟΠΘΡΣΤΥςΩΞΨΖ", strict=True)),
    **dict(zip(range(0x61, 0x7B), "αβχδεφγηιϕκλμνοπθρστυϖωξψζ", strict=True)),
}


def _paragraph_text(element: BaseOxmlElement) -> Iterator[str]:
    for child in element:
        if child.tag in _W_RUN_TEXT:
            yield _W_RUN_TEXT[child.tag] or child.text or ""
        elif child.tag == _W_SYM:
            yield _symbol(child)
        elif child.tag == _W_RUN and _run_is_hidden(child):
            continue
        elif child.tag == _W_P:  # a paragraph of a text box, inside a run
            yield "\n"
            yield from _paragraph_text(child)
        elif child.tag not in _W_NOT_TEXT:
            yield from _paragraph_text(child)
            if child.tag == _W_TEXT_BOX:  # the text after a box anchored mid-paragraph
                yield "\n"  # was glued to its last word ("layoutdraws")


def _run_is_hidden(run: BaseOxmlElement) -> bool:
    vanish = run.find(_W_HIDDEN)
    return vanish is not None and vanish.get(_W_VAL, "true").lower() not in _W_OFF


def _symbol(sym: BaseOxmlElement) -> str:
    """The letter a Symbol-font w:sym draws; "" for any other (a picture, or not known)."""
    char = sym.get(_W_CHAR, "")
    if sym.get(_W_FONT) != "Symbol" or re.fullmatch("[0-9A-Fa-f]{1,4}", char) is None:
        return ""
    code = int(char, 16)
    return _SYMBOL_FONT_GREEK.get(code - 0xF000 if code >= 0xF000 else code, "")


def _table_text(table: BaseOxmlElement, numbering: WordNumbering) -> str:
    """A line per row, its cells apart; a cell merged down from the row above repeats its
    text (as python-docx's `Row.cells` did, which saw only the rows and cells that are the
    table's own children: those of a content control, such as a repeating section, were lost)."""
    rows = []
    merged_down: dict[int, str] = {}  # grid column -> the text of the cell that starts there
    for row in _wrapped(table, CT_Row):
        cells: list[str] = []
        column = row.grid_before
        for cell in _wrapped(row, CT_Tc):
            if cell.vMerge == "continue":
                text = merged_down.get(column, "")
            else:
                blocks = _docx_blocks(cell, numbering)
                text = " ".join(block for block in blocks if block.strip()).strip()
                merged_down[column] = text
            cells.append(text)
            column += cell.grid_span
        rows.append(" | ".join(cells))
    return "\n".join(rows)


_Element = TypeVar("_Element", bound=BaseOxmlElement)


def _wrapped(parent: BaseOxmlElement, kind: type[_Element]) -> Iterator[_Element]:
    """The children of `parent` of `kind` (rows of a table, cells of a row), those in content
    controls too (`_unwrapped`)."""
    return (child for child in _unwrapped(parent) if isinstance(child, kind))


class _HTMLText(HTMLParser):
    _SKIP = frozenset({"script", "style", "head", "noscript", "template"})
    _BLOCK = frozenset(
        {
            "p",
            "div",
            "br",
            "li",
            "tr",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "section",
            "article",
            "header",
            "footer",
            "blockquote",
            "pre",
            "table",
            "ul",
            "ol",
            "hr",
            # Blocks too: without a break, "<dt>Term</dt><dd>Meaning</dd>" read "TermMeaning".
            "main",
            "nav",
            "aside",
            "dl",
            "dt",
            "dd",
            "figure",
            "figcaption",
            "caption",
            "address",
            "details",
            "summary",
            "fieldset",
            "legend",
            "form",
            "dialog",
        }
    )

    # Cells, and what a browser draws as a box of its own amid the text (a form's controls, a
    # drop-down's options, an image): their words stay apart from their neighbours' ("RedBlue" was
    # read from two options). A cell's end tag may be left out: "<td>Name<td>Age".
    # An inline SVG's drawing, and each of its texts, too ("Revenue2024" was read from a chart),
    # and an embedded frame, media, canvas or gauge ("Watchthis" was read around a video).
    _APART = frozenset(
        {"td", "th", "button", "select", "option", "optgroup", "textarea", "input", "img"}
        | {"svg", "text", "iframe", "video", "audio", "canvas", "meter", "progress"}
    )
    # Elements a browser does not show, left out as hidden ones are: a <title> in the body (an
    # SVG icon's tooltip) and an SVG's description, metadata and what it defines to draw
    # elsewhere (<defs>, a sprite's <symbol>s); what an embedded frame, media, canvas or gauge
    # holds for a browser that cannot show it ("Your browser does not support the video tag.");
    # an input's suggestions (<datalist>); a formula's annotations (the TeX source beside
    # MathML); and a <dialog> that is not `open` (a cookie banner before a script opens it).
    # An <object>'s fallback stays: a browser shows it when it cannot show the object's data.
    _NOT_SHOWN = frozenset(
        {"title", "desc", "metadata", "defs", "symbol", "iframe", "video", "audio", "canvas"}
        | {"meter", "progress", "noframes", "noembed", "datalist", "annotation", "annotation-xml"}
    )
    # What a page's head may hold: any other element starts the body, as a browser reads it.
    _HEAD = frozenset({"base", "link", "meta", "title", "script", "style", "noscript", "template"})
    # A ruby's annotations (the reading over its text, "かん" over "漢") and the brackets
    # shown around them without ruby are left out: the text reads as written, "漢字", not
    # "漢かん字じ". An annotation's end tag may be left out: it ends at the next base, block or
    # cell, or at the end tag of an element around it.
    _RUBY_ANNOTATION = frozenset({"rt", "rp", "rtc"})
    _RUBY_BASE = frozenset({"ruby", "rb"})
    _ENDS_ANNOTATION = _RUBY_ANNOTATION | _RUBY_BASE | _BLOCK | {"td", "th"}
    # Elements without content or end tag: `<br/>` is `<br>`.
    _VOID = frozenset(
        {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}
        | {"track", "wbr"}
    )
    # An element a browser does not show (the `hidden` attribute; "until-found" is shown when
    # the browser's find-in-page finds it) is left out, to its end tag. One whose end tag may
    # be left out ends, at the latest, at the next block or cell; any other, at the end tag of
    # an element around it (a browser's </p> or </td> ends a <span> left open in it too): a
    # missing end tag never hides the rest of the page.
    _END_OPTIONAL = frozenset(
        {"p", "li", "dt", "dd", "option", "optgroup", "tr", "td", "th", "rt", "rp", "rb"}
        | {"rtc", "caption", "colgroup", "thead", "tbody", "tfoot", "html", "head", "body"}
    )

    # Not shown, and holding only text: one left open ends at the next block or cell too.
    _TEXT_ONLY = frozenset({"title", "desc", "meter", "progress"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        self._in_head = False
        # Inside a ruby's annotation: the elements opened in it and not yet ended, by tag.
        self._annotation: Counter[str] | None = None
        self._hidden: str | None = None  # the hidden element being left out
        self._hidden_open: Counter[str] = Counter()  # it and the elements opened in it, by tag
        self._drop_down: _DropDown | None = None  # the drop-down being read
        self._switches: list[_Switch] = []  # the SVG <switch>es being read, innermost last

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body" or self._starts_body(tag):  # the body is never skipped
            self._skipping = 0
            self._in_head = False
        if self._inside_hidden(tag, start=True):
            return
        not_drawn = self._follow_switch(tag, start=True)
        if not_drawn or (not self._skipping and self._not_shown(tag, attrs)):
            self._hidden, self._hidden_open = tag, Counter({tag: 1})
            if tag in self._APART:  # a frame, a video: a box amid the text
                self.parts.append(" ")
            return
        self._follow_ruby(tag, start=True)
        self._follow_drop_down(tag, attrs)
        if tag in self._SKIP:
            self._skipping += 1
            self._in_head = self._in_head or tag == "head"
        elif tag in self._BLOCK:
            self.parts.append("\n")
        elif tag in self._APART:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """`<br/>` is `<br>`: html.parser ended it too, and it read as a paragraph break."""
        self.handle_starttag(tag, attrs)
        if tag not in self._VOID:
            self.handle_endtag(tag)

    def _starts_body(self, tag: str) -> bool:
        """Whether `tag`, in the head and not inside a script or the like, starts the body:
        HTML lets both </head> and <body> be left out, and a page that left them out was read
        as all head, its text lost."""
        return self._in_head and self._skipping == 1 and tag not in self._HEAD

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._in_head = False
        if self._inside_hidden(tag, start=False):
            return
        self._follow_switch(tag, start=False)
        self._follow_ruby(tag, start=False)
        self._follow_drop_down(tag, None)
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")
        elif tag in self._APART:
            self.parts.append(" ")

    def _follow_switch(self, tag: str, start: bool) -> bool:
        """Whether `tag` starts a child of an SVG <switch> that it does not draw: a switch
        draws one of its children, the first one a browser can (here: its first), and the
        others are its fallbacks. A diagram exported from draw.io holds each label twice (as
        HTML, and as SVG text for viewers without HTML) and, once for the whole diagram, "Text
        is not SVG - cannot display": all of them were read."""
        not_drawn = False
        if self._switches and start and not +self._switches[-1].opened:
            switch = self._switches[-1]
            not_drawn, switch.drawn = switch.drawn and tag not in self._VOID, True
        # The end of a switch, or of an element around it (and around the switches outside).
        while self._switches and _ends_around(self._switches[-1].opened, tag, start, self._VOID):
            self._switches.pop()
        if start and tag == "switch":
            self._switches.append(_Switch())
        return not_drawn

    def _not_shown(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        if tag in self._VOID:
            return False
        if tag in self._NOT_SHOWN or _hidden_by_attribute(attrs):
            return True
        return tag == "dialog" and all(name != "open" for name, _ in attrs)

    def _follow_drop_down(self, tag: str, attrs: list[tuple[str, str | None]] | None) -> None:
        """Keep a drop-down's shown option: its selected one, else its first (`_DropDown`).
        `attrs` is None at an end tag."""
        drop_down = self._drop_down
        if drop_down is not None:
            drop_down.end_option(len(self.parts))
            if tag == "select" and attrs is None:
                drop_down.keep_shown(self.parts)
                self._drop_down = None
            elif tag in ("option", "optgroup"):  # their end tags may be left out
                if tag == "option" and attrs is not None:
                    drop_down.start_option(len(self.parts) + 1, _has(attrs, "selected"))
            elif _ends_around(drop_down.opened, tag, attrs is not None, self._VOID):
                self._drop_down = None  # left open: all of its options are kept
        if tag == "select" and attrs is not None:
            size = next((value for name, value in attrs if name == "size"), None)
            list_box = _has(attrs, "multiple") or (size or "").strip() not in ("", "0", "1")
            self._drop_down = None if list_box else _DropDown()

    def _inside_hidden(self, tag: str, start: bool) -> bool:
        """Whether `tag` is inside the hidden element being left out; False at its end."""
        if self._hidden is None:
            return False
        if self._hidden in self._END_OPTIONAL or self._hidden in self._TEXT_ONLY:
            ends = tag == self._hidden or tag in self._BLOCK or tag in self._APART
        else:
            ends = _ends_around(self._hidden_open, tag, start, self._VOID)
            ends = ends or (tag == self._hidden and not self._hidden_open[tag])
        if ends:
            self._hidden = None
        return not ends

    def _follow_ruby(self, tag: str, start: bool) -> None:
        """Whether the text from `tag` on is a ruby's annotation (_RUBY_ANNOTATION)."""
        if start and tag in self._RUBY_ANNOTATION:
            self._annotation = Counter()
        elif self._annotation is not None and (
            tag in self._ENDS_ANNOTATION or _ends_around(self._annotation, tag, start, self._VOID)
        ):
            self._annotation = None

    def handle_data(self, data: str) -> None:
        if not self._skipping and self._hidden is None and self._annotation is None:
            self.parts.append(data)

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        """A marked section html.parser does not know (`<![foo[ … ]]>`, which browsers treat
        as a comment) is skipped to its `>`: the parser raised AssertionError, and the page
        failed."""
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            end = self.rawdata.find(">", i)
            return -1 if end < 0 else end + 1


def _ends_around(opened: Counter[str], tag: str, start: bool, void: frozenset[str]) -> bool:
    """Follow `tag` inside an element being left out (`opened`: the elements opened in it
    and not yet ended); True at the end tag of one it did not open, an element around it,
    whose end ends it too, as in a browser."""
    if start:
        if tag not in void:
            opened[tag] += 1
        return False
    if opened[tag]:
        opened[tag] -= 1
        return False
    return True


class _Switch:
    """An SVG <switch> being read (`_HTMLText._follow_switch`)."""

    def __init__(self) -> None:
        self.opened: Counter[str] = Counter()  # elements opened in it and not yet ended
        self.drawn = False  # whether the child it draws has started


class _DropDown:
    """A drop-down (a <select>, not `multiple`, of `size` 1) being read: a browser shows one
    of its options, the selected one, else the first, and the others only when it is opened.
    Its other options' text is left out at its end tag: a shop's page of two sentences with a
    country and a birth-year picker made 3 chunks, 2 of them lists of names and years. Left
    open (an element around it ends first), all of its options are kept."""

    def __init__(self) -> None:
        self.opened: Counter[str] = Counter()  # elements opened in it and not yet ended
        # Where each option's text lies in the parts read, and whether it is selected.
        self.options: list[tuple[int, int, bool]] = []
        self._option: tuple[int, bool] | None = None  # the option being read: start, selected

    def start_option(self, start: int, selected: bool) -> None:
        self._option = (start, selected)

    def end_option(self, end: int) -> None:
        """An option's text ends at the next tag: an option holds nothing else."""
        if self._option is not None:
            start, selected = self._option
            self.options.append((start, max(start, end), selected))
            self._option = None

    def keep_shown(self, parts: list[str]) -> None:
        selected = [option for option in self.options if option[2]]
        shown = selected[-1] if selected else self.options[0] if self.options else None
        for option in self.options:
            if option is not shown:
                start, end, _ = option
                parts[start:end] = [""] * (end - start)


def _has(attrs: list[tuple[str, str | None]], attribute: str) -> bool:
    return any(name == attribute for name, _ in attrs)


def _hidden_by_attribute(attrs: list[tuple[str, str | None]]) -> bool:
    return any(name == "hidden" and (value or "").lower() != "until-found" for name, value in attrs)


def html_to_text(html: str) -> str:
    parser = _HTMLText()
    try:
        parser.feed(html)
        parser.close()
    except AssertionError as exc:  # how html.parser refuses markup it cannot read
        raise RejectedDocument(
            FailureType.CORRUPT_DOCUMENT, f"the HTML is malformed and cannot be read ({exc})"
        ) from exc
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    paragraphs: list[str] = []
    for line in lines:
        if line:
            paragraphs.append(line)
        elif paragraphs and paragraphs[-1] != "":
            paragraphs.append("")
    return "\n".join(paragraphs).strip().replace("\n\n\n", "\n\n")


class ExtractActivities:
    def __init__(self, staging: StagingStore, limits: ReaderLimits | None = None) -> None:
        self.staging = staging
        self.limits = limits or ReaderLimits()

    @activity.defn(name=EXTRACT)
    def extract(self, task: IngestTask) -> ExtractResult:
        """Read the original, write `text.json` (text and page starts) to staging."""
        extracted = self.read(task)
        self.staging.write_json(
            task.task_id, TEXT, {"text": extracted.text, "page_starts": extracted.page_starts}
        )
        pages = len(extracted.page_starts) if extracted.page_starts is not None else None
        return ExtractResult(characters=len(extracted.text), pages=pages)

    def read(self, task: IngestTask) -> ExtractedText:
        """The text of the task's original: a PDF, a Word or an HTML file in a reader child,
        the rest here. A file that cannot be read raises its non-retryable
        ApplicationError."""
        try:
            data = self.staging.read_bytes(task.task_id, task.original)
        except FileNotFoundError as exc:
            raise staging_missing("the uploaded file") from exc
        if len(data) != task.size_bytes or hashlib.sha256(data).hexdigest() != task.sha256:
            raise staging_damaged("the uploaded file", len(data), task.size_bytes)
        fmt = DocumentFormat(task.format)
        try:
            if fmt in READ_IN_CHILD:
                # A local step (a small HTML file) cannot heartbeat: each try logged a warning
                # from the SDK, twice a second while the child read.
                pulse = _ignore if activity.info().is_local else activity.heartbeat
                return read_in_child(
                    data, fmt, _within_step(self.limits), pulse, activity.info().attempt
                )
            return extract_text(data, fmt)
        except RejectedDocument as rejected:
            raise rejected_to_failure(rejected) from rejected


def _ignore(pages: int) -> None:
    pass


# What the step keeps after its reader is stopped, to answer DocumentTooSlow itself.
STEP_MARGIN_S = 10.0


def _within_step(limits: ReaderLimits) -> ReaderLimits:
    """`limits`, with the time cut to end before the step's own timeout: a small HTML file is
    read in a local step of 5 minutes, as long as the default limit, and its timeout came
    first: the step was cancelled and read the file again, five times, and the task ended
    `error` (Timeout) after 25 minutes instead of `failed` (DocumentTooSlow)."""
    timeout = activity.info().start_to_close_timeout
    if timeout is None or timeout.total_seconds() <= 2 * STEP_MARGIN_S:
        return limits  # no timeout, or one too short to keep a margin of (a test's)
    return replace(limits, time_s=min(limits.time_s, timeout.total_seconds() - STEP_MARGIN_S))
