"""Text extraction from real PDF, DOCX, HTML and text files, and why files are rejected."""

from __future__ import annotations

import base64
import codecs
import dataclasses
import hashlib
import io
import random
import re
import textwrap
import zipfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pypdf
import pytest
from pypdf.annotations import Link
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import ActivityEnvironment

from activities import extract as extract_module
from activities.chunk import chunk_spans
from activities.embed import bundled_model_path
from activities.errors import RejectedDocument
from activities.extract import (
    ExtractActivities,
    extract_docx,
    extract_pdf,
    extract_text,
    html_to_text,
)
from activities.reader_process import ReaderLimits
from activities.token_budget import model_token_budget
from core.formats import DocumentFormat
from core.staging import ORIGINAL, StagingStore
from core.staging import TEXT as TEXT_JSON
from tests.documents import (
    docx_with_body,
    docx_with_imported_chunk,
    docx_with_notes,
    make_docx,
    make_docx_blocks,
    make_encrypted_pdf,
    make_filled_form_pdf,
    make_form_without_appearances_pdf,
    make_glyph_numbered_font_pdf,
    make_image_only_pdf,
    make_pdf,
    make_unmapped_font_pdf,
    make_zip,
    pdf_of_content,
)
from workflows.types import FailureType, IngestTask

PAGES = [
    "Page one opens the report.\nIt has two lines.",
    "Page two holds the figures.",
    "Page three is the conclusion.",
]


def rejected(data: bytes, fmt: DocumentFormat) -> RejectedDocument:
    with pytest.raises(RejectedDocument) as info:
        extract_text(data, fmt)
    return info.value


# --- PDF ----------------------------------------------------------------------------------


def test_extract_text_pdf_keeps_page_starts() -> None:
    result = extract_text(make_pdf(PAGES), DocumentFormat.PDF)
    assert result.page_starts is not None
    assert len(result.page_starts) == len(PAGES)
    assert result.page_starts[0] == 0
    for index, page in enumerate(PAGES):
        start = result.page_starts[index]
        assert result.text[start:].startswith(page)
    assert result.text == "\n\n".join(PAGES)


def test_extract_text_pdf_page_starts_with_a_blank_page() -> None:
    result = extract_text(make_pdf(["Alpha page", "", "Gamma page"]), DocumentFormat.PDF)
    assert result.page_starts is not None
    assert len(result.page_starts) == 3
    third = result.page_starts[2]
    assert result.text[third:] == "Gamma page"
    assert result.text[: len("Alpha page")] == "Alpha page"
    assert result.page_starts[0] < result.page_starts[1] <= third


# A page of 300 by 200 pt: a line of 12 pt text runs past its right edge after ~50 characters.
SMALL_PAGE = b"[0 0 300 200]"


def test_extract_pdf_joins_a_word_hyphenated_at_a_line_end() -> None:
    pdf = pdf_of_content(
        b"BT /F1 12 Tf 20 150 Td (The library provides man-) Tj 0 -14 Td "
        b"(agement of structures.) Tj 0 -14 Td (A second line.) Tj ET"
    )
    assert extract_pdf(pdf).text == "The library provides management of structures.\nA second line."


def test_extract_pdf_keeps_text_drawn_past_the_page_edge() -> None:
    line = "A line that runs well past the right edge of this small page, to its end"
    pdf = pdf_of_content(b"BT /F1 12 Tf 20 150 Td (%b) Tj ET" % line.encode(), media_box=SMALL_PAGE)
    assert extract_pdf(pdf).text == line


LINES = ["the quarterly report", "says revenue grew", "by nine percent", "in the northern region"]


def words_drawn(matrix: str, line_step: tuple[int, int], word_step: tuple[int, int]) -> bytes:
    """LINES drawn a word per text object: each word at `matrix` (a, b, c, d of Tm, in
    words) from (100, 700), moved by `word_step` per letter along its line and by `line_step`
    per line."""
    objects = []
    for number, line in enumerate(LINES):
        x, y = 100 + line_step[0] * number, 700 + line_step[1] * number
        for word in line.split():
            objects.append(f"BT /F1 12 Tf {matrix} {x} {y} Tm ({word}) Tj ET")
            x, y = x + word_step[0] * (len(word) + 1), y + word_step[1] * (len(word) + 1)
    return "\n".join(objects).encode()


# LINES drawn a line per text object.
LINES_DRAWN = b"\n".join(
    b"BT /F1 12 Tf 100 %d Td (%b) Tj ET" % (700 - 14 * number, line.encode())
    for number, line in enumerate(LINES)
)


@pytest.mark.parametrize(
    ("rotate", "content"),
    [
        # Lines running up the page, which /Rotate 90 shows upright (a scan turned in a viewer):
        # PDFium ran "grew" and "by" together.
        (90, words_drawn("0 1 -1 0", (14, 0), (0, 7))),
        (270, words_drawn("0 -1 1 0", (-14, 0), (0, -7))),
        (0, words_drawn("0 1 -1 0", (14, 0), (0, 7))),
        # Lines shown turned or upside down: PDFium read the last line first, or each line's
        # words backwards.
        (90, LINES_DRAWN),
        (180, words_drawn("1 0 0 1", (0, -14), (7, 0))),
    ],
    ids=["up-shown-upright", "down-shown-upright", "up-unrotated", "shown-turned", "upside-down"],
)
def test_extract_pdf_reads_lines_in_the_direction_they_run(rotate: int, content: bytes) -> None:
    assert extract_pdf(pdf_of_content(content, rotate=rotate)).text == "\n".join(LINES)


def test_extract_pdf_reads_a_page_beside_a_longer_turned_stamp_as_it_runs() -> None:
    """An arXiv identifier up the margin of a title page of a few short lines: the page was
    turned with it, and its own lines read glued, last first ("We study things.Abstract")."""
    content = b"\n".join(
        [
            b"BT /F1 10 Tf 0 1 -1 0 30 200 Tm (arXiv:2101.00001v1 [cs.CL] 1 Jan 2021) Tj ET",
            b"BT /F1 12 Tf 100 700 Td (Abstract) Tj ET",
            b"BT /F1 12 Tf 100 680 Td (We study things.) Tj ET",
        ]
    )
    lines = extract_pdf(pdf_of_content(content)).text.splitlines()
    assert lines[-2:] == ["Abstract", "We study things."]


def test_extract_pdf_keeps_the_values_of_a_filled_form() -> None:
    # The values are annotations (widgets), which PDFium's text page does not read: the form
    # was stored as its labels alone, its answers left out of search.
    pdf = make_filled_form_pdf({"Applicant": "Jane Marigold Doe", "Policy": "PX-4471-ZETA"})
    text = extract_pdf(pdf).text
    assert text.splitlines() == ["Applicant:", "Policy:", "Jane Marigold Doe PX-4471-ZETA"]


def test_extract_pdf_keeps_the_values_of_a_form_that_asks_the_viewer_to_draw_them() -> None:
    # The fields have no appearance to flatten (/NeedAppearances): their values were left out.
    pdf = make_form_without_appearances_pdf({"Applicant": "Jane Marigold Doe", "Policy": "PX-4471"})
    text = extract_pdf(pdf).text
    assert text.splitlines() == ["Applicant:", "Policy:", "Jane Marigold Doe PX-4471"]


def test_extract_pdf_of_a_page_with_links_only_reads_as_before() -> None:
    # Flattening a link draws no text: the page reads as it did.
    pdf = make_pdf(["A page with a link."])
    linked = pypdf.PdfWriter(clone_from=io.BytesIO(pdf))
    linked.add_annotation(0, Link(rect=(40, 780, 200, 800), target_page_index=0))
    out = io.BytesIO()
    linked.write(out)
    assert extract_pdf(out.getvalue()).text == "A page with a link."


def test_extract_pdf_reports_each_page() -> None:
    seen: list[tuple[int, int]] = []
    extract_pdf(make_pdf(PAGES), on_page=lambda read, pages: seen.append((read, pages)))
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_extract_text_pdf_with_empty_user_password_opens() -> None:
    result = extract_text(make_encrypted_pdf("Readable text", password=""), DocumentFormat.PDF)
    assert result.text == "Readable text"
    assert result.page_starts == [0]


def test_extract_text_encrypted_pdf_is_rejected() -> None:
    error = rejected(make_encrypted_pdf(), DocumentFormat.PDF)
    assert error.error_type == FailureType.ENCRYPTED_DOCUMENT
    assert "password" in error.message


@pytest.mark.parametrize(
    "data",
    [make_pdf(PAGES)[:200], b"%PDF-1.4 garbage", b"%PDF-1.7\n" + bytes(range(256)) * 4],
    ids=["truncated", "garbage", "binary-after-header"],
)
def test_extract_text_damaged_pdf_is_corrupt(data: bytes) -> None:
    error = rejected(data, DocumentFormat.PDF)
    assert error.error_type == FailureType.CORRUPT_DOCUMENT
    assert "PDF" in error.message


def test_extract_text_image_only_pdf_is_empty() -> None:
    error = rejected(make_image_only_pdf(), DocumentFormat.PDF)
    assert error.error_type == FailureType.EMPTY_DOCUMENT
    assert "no extractable text" in error.message


def test_extract_text_pdf_of_blank_pages_is_empty() -> None:
    error = rejected(make_pdf(["", "   "]), DocumentFormat.PDF)
    assert error.error_type == FailureType.EMPTY_DOCUMENT


UNMAPPED = ["the invoice total is due", "within thirty days"]


@pytest.mark.parametrize(
    ("first_code", "to_unicode"),
    [(1, None), (128, None), (1, lambda letter, code: 0xE000 + code)],
    ids=["control-characters", "c1-control-characters", "private-use-area"],
)
def test_extract_text_pdf_whose_fonts_map_no_letters_is_empty_saying_why(
    first_code: int, to_unicode: Callable[[str, int], int] | None
) -> None:
    # Its text was stored as control or private-use characters: `complete`, and no search
    # found a chunk; or refused as though it were a scan.
    error = rejected(make_unmapped_font_pdf(UNMAPPED, first_code, to_unicode), DocumentFormat.PDF)
    assert error.error_type == FailureType.EMPTY_DOCUMENT
    assert error.message == (
        "the PDF contains no extractable text (its fonts do not say which letters they draw)"
    )


def test_extract_pdf_leaves_out_a_page_whose_fonts_map_no_letters() -> None:
    readable = pypdf.PdfWriter(clone_from=io.BytesIO(make_pdf(["Page one is readable."])))
    readable.append(io.BytesIO(make_unmapped_font_pdf(UNMAPPED[:1], 128)))
    readable.append(io.BytesIO(make_pdf(["Page three is readable."])))
    out = io.BytesIO()
    readable.write(out)
    result = extract_pdf(out.getvalue())
    assert result.text == "Page one is readable.\n\n\n\nPage three is readable."
    assert result.page_starts == [0, 23, 25]


def test_extract_text_pdf_in_a_glyph_numbered_font_without_map_is_empty_saying_why() -> None:
    # Its glyph numbers were stored as letters, "7KHLQYRLFH" for "The invoice": `complete`,
    # chunks of junk that no search found.
    error = rejected(make_glyph_numbered_font_pdf(UNMAPPED), DocumentFormat.PDF)
    assert error.error_type == FailureType.EMPTY_DOCUMENT
    assert error.message == (
        "the PDF contains no extractable text (its fonts do not say which letters they draw)"
    )


def test_extract_pdf_leaves_out_a_page_in_a_glyph_numbered_font_without_map() -> None:
    readable = pypdf.PdfWriter(clone_from=io.BytesIO(make_pdf(["Page one is readable."])))
    readable.append(io.BytesIO(make_glyph_numbered_font_pdf(UNMAPPED[:1])))
    readable.append(io.BytesIO(make_pdf(["Page three is readable."])))
    out = io.BytesIO()
    readable.write(out)
    result = extract_pdf(out.getvalue())
    assert result.text == "Page one is readable.\n\n\n\nPage three is readable."
    assert result.page_starts == [0, 23, 25]


@pytest.mark.parametrize(
    "unreadable",
    [
        make_glyph_numbered_font_pdf(UNMAPPED),
        make_unmapped_font_pdf(UNMAPPED, 128),
    ],
    ids=["glyph-numbers", "control-characters"],
)
def test_extract_text_pdf_mostly_in_fonts_that_map_no_letters_fails_saying_how_much(
    unreadable: bytes,
) -> None:
    """Two of three pages unreadable: the PDF was stored `complete` from its one readable
    page, and searched as though that were the whole document, without a word to the user."""
    document = pypdf.PdfWriter(clone_from=io.BytesIO(make_pdf(["Only this page is readable."])))
    document.append(io.BytesIO(unreadable))
    document.append(io.BytesIO(make_image_only_pdf()))  # a scanned page counts for neither
    out = io.BytesIO()
    document.write(out)
    error = rejected(out.getvalue(), DocumentFormat.PDF)
    assert error.error_type == FailureType.EMPTY_DOCUMENT
    assert error.message == (
        "the text of 2 of the PDF's 4 pages cannot be extracted (their fonts do not say which "
        "letters they draw)"
    )


def test_extract_pdf_keeps_text_in_other_scripts() -> None:
    # Characters of scripts past Latin, which a font maps to letters, are not "no text".
    words = "\u6587\u5b57 \u0442\u0435\u043a\u0441\u0442 \u03ba\u03b5\u03af\u03bc\u03b5\u03bd\u03bf"
    pdf = make_unmapped_font_pdf([words], 1, lambda letter, code: ord(letter))
    assert extract_pdf(pdf).text == words


# --- DOCX ---------------------------------------------------------------------------------


def test_extract_text_docx_paragraphs_then_table() -> None:
    data = make_docx(["First paragraph.", "Second paragraph."], [["Name", "Age"], ["Ann", "42"]])
    result = extract_text(data, DocumentFormat.DOCX)
    assert result.text == "First paragraph.\n\nSecond paragraph.\n\nName | Age\nAnn | 42"
    assert result.page_starts is None


def test_extract_docx_keeps_tables_between_paragraphs_in_order() -> None:
    data = make_docx_blocks(
        ["Before the table.", [["a1", "b1"], ["a2", "b2"]], "After the table.", [["only"]]]
    )
    assert extract_docx(data) == "Before the table.\n\na1 | b1\na2 | b2\n\nAfter the table.\n\nonly"


def test_extract_docx_skips_blank_paragraphs() -> None:
    assert extract_docx(make_docx(["One", "", "   ", "Two"])) == "One\n\nTwo"


def test_extract_docx_keeps_unicode() -> None:
    text = "Grüße — 日本語 🎉 مرحبا"
    assert extract_docx(make_docx([text])) == text


WORD_BODY = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
    ' xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006"'
    ' xmlns:m="http://schemas.openxmlformats.org/officeDocument/2006/math">'
    "<w:body>{}<w:sectPr/></w:body></w:document>"
)


def word_paragraph(text: str) -> str:
    return f'<w:p><w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>'


def word_cell(text: str) -> str:
    return f"<w:tc>{word_paragraph(text)}</w:tc>"


def test_extract_docx_reads_tracked_insertions_fields_and_smart_tags_not_deletions() -> None:
    body = (
        '<w:p><w:r><w:t xml:space="preserve">The fee is </w:t></w:r>'
        '<w:ins w:id="1" w:author="a"><w:r><w:t>payable in 30 days</w:t></w:r></w:ins>'
        '<w:del w:id="2" w:author="a"><w:r><w:delText>waived</w:delText></w:r></w:del>'
        '<w:r><w:t xml:space="preserve">. See </w:t></w:r>'
        '<w:fldSimple w:instr="REF x"><w:r><w:t>Clause 7</w:t></w:r></w:fldSimple>'
        '<w:r><w:t xml:space="preserve"> in </w:t></w:r>'
        '<w:smartTag w:uri="u" w:element="City"><w:r><w:t>Paris</w:t></w:r></w:smartTag></w:p>'
    )
    data = docx_with_body(WORD_BODY.format(body).encode())
    assert extract_docx(data) == "The fee is payable in 30 days. See Clause 7 in Paris"


def test_extract_docx_reads_the_text_of_equations() -> None:
    body = (
        '<w:p><w:r><w:t xml:space="preserve">The annual rate is </w:t></w:r>'
        "<m:oMath><m:r><m:t>r=0.05</m:t></m:r></m:oMath>"
        '<w:r><w:t xml:space="preserve"> for all accounts.</w:t></w:r></w:p>'
        '<w:p><m:oMathPara><m:oMath><m:r><w:rPr><w:rFonts w:ascii="Cambria Math"/></w:rPr>'
        "<m:t>E=m</m:t></m:r><m:sSup><m:e><m:r><m:t>c</m:t></m:r></m:e>"
        "<m:sup><m:r><m:t>2</m:t></m:r></m:sup></m:sSup></m:oMath></m:oMathPara></w:p>"
    )
    data = docx_with_body(WORD_BODY.format(body).encode())
    assert extract_docx(data) == "The annual rate is r=0.05 for all accounts.\n\nE=mc2"


def test_extract_docx_reads_content_controls_in_order() -> None:
    body = (
        word_paragraph("Before.")
        + "<w:sdt><w:sdtPr/><w:sdtContent>"
        + word_paragraph("Inside a content control.")
        + "</w:sdtContent></w:sdt>"
        + '<w:p><w:r><w:t xml:space="preserve">Name: </w:t></w:r>'
        + "<w:sdt><w:sdtContent><w:r><w:t>Ann Lee</w:t></w:r></w:sdtContent></w:sdt></w:p>"
    )
    data = docx_with_body(WORD_BODY.format(body).encode())
    assert extract_docx(data) == "Before.\n\nInside a content control.\n\nName: Ann Lee"


def word_notes(kind: str, *notes: str) -> bytes:
    """A footnotes or endnotes part as Word writes it: two separators, then the notes."""
    w = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    separators = (
        f'<w:{kind} w:type="separator" w:id="-1"><w:p><w:r><w:separator/></w:r></w:p></w:{kind}>'
        f'<w:{kind} w:type="continuationSeparator" w:id="0"><w:p><w:r><w:continuationSeparator/>'
        f"</w:r></w:p></w:{kind}>"
    )
    body = "".join(
        f'<w:{kind} w:id="{number}"><w:p><w:r><w:{kind}Ref/></w:r>'
        f'<w:r><w:t xml:space="preserve"> {text}</w:t></w:r></w:p></w:{kind}>'
        for number, text in enumerate(notes, start=1)
    )
    return f'<w:{kind}s xmlns:w="{w}">{separators}{body}</w:{kind}s>'.encode()


def test_extract_docx_reads_footnotes_and_endnotes_after_the_body() -> None:
    """A note is the document's text (a source, a caveat): it was never read, so a search for
    it found nothing."""
    body = (
        "<w:p><w:r><w:t>Revenue grew 12 %.</w:t></w:r>"
        '<w:r><w:footnoteReference w:id="1"/></w:r></w:p>'
    )
    data = docx_with_notes(
        WORD_BODY.format(body).encode(),
        word_notes("footnote", "Audited figures, see the 2025 annual report."),
        word_notes("endnote", "Figures in euros."),
    )
    assert extract_docx(data) == (
        "Revenue grew 12 %.\n\nAudited figures, see the 2025 annual report.\n\nFigures in euros."
    )


def test_extract_docx_reads_a_text_box_once() -> None:
    box = "<w:txbxContent>" + word_paragraph("Boxed words.") + "</w:txbxContent>"
    body = (
        '<w:p><w:r><w:t xml:space="preserve">Body.</w:t></w:r><w:r><mc:AlternateContent>'
        f"<mc:Choice Requires='wps'><w:drawing>{box}</w:drawing></mc:Choice>"
        f"<mc:Fallback><w:pict>{box}</w:pict></mc:Fallback></mc:AlternateContent></w:r></w:p>"
    )
    data = docx_with_body(WORD_BODY.format(body).encode())
    assert extract_docx(data) == "Body.\nBoxed words."


def test_extract_docx_keeps_a_text_box_apart_from_the_words_after_it() -> None:
    box = "<w:txbxContent>" + word_paragraph("Figure 2: pump layout") + "</w:txbxContent>"
    body = (
        '<w:p><w:r><w:t xml:space="preserve">The pump </w:t></w:r>'
        f"<w:r><w:drawing>{box}</w:drawing></w:r>"
        "<w:r><w:t>draws water from the well.</w:t></w:r></w:p>"
    )
    data = docx_with_body(WORD_BODY.format(body).encode())
    assert extract_docx(data) == "The pump \nFigure 2: pump layout\ndraws water from the well."


def test_extract_docx_keeps_equal_neighbour_cells_and_nested_tables() -> None:
    nested = "<w:tbl><w:tr>" + word_cell("Ten users") + "</w:tr></w:tbl>"
    body = (
        "<w:tbl><w:tblGrid><w:gridCol/><w:gridCol/><w:gridCol/></w:tblGrid>"
        "<w:tr>" + word_cell("Backups") + word_cell("Yes") + word_cell("Yes") + "</w:tr>"
        "<w:tr><w:tc>" + word_paragraph("Limits") + nested + word_paragraph("") + "</w:tc>"
        '<w:tc><w:tcPr><w:gridSpan w:val="2"/></w:tcPr>' + word_paragraph("none") + "</w:tc>"
        "</w:tr></w:tbl>"
    )
    data = docx_with_body(WORD_BODY.format(body).encode())
    assert extract_docx(data) == "Backups | Yes | Yes\nLimits Ten users | none"


def test_extract_docx_reads_table_rows_and_cells_in_content_controls() -> None:
    """Word wraps a repeating section's rows, or a content control put on cells, in w:sdt:
    python-docx's rows and cells skip them, and their text was lost."""
    body = (
        "<w:tbl><w:tblGrid><w:gridCol/><w:gridCol/></w:tblGrid>"
        "<w:tr>" + word_cell("Supplier") + word_cell("Contact") + "</w:tr>"
        "<w:sdt><w:sdtPr/><w:sdtContent>"
        "<w:tr>" + word_cell("Acme Tooling") + word_cell("Jane Roe") + "</w:tr>"
        "<w:tr>"
        + word_cell("Borealis Freight")
        + "<w:sdt><w:sdtPr/><w:sdtContent>"
        + word_cell("Omar Haddad")
        + "</w:sdtContent></w:sdt></w:tr>"
        "</w:sdtContent></w:sdt>"
        '<w:customXml w:element="supplier"><w:tr>'
        + word_cell("Cedar Mills")
        + word_cell("Li Wei")
        + "</w:tr></w:customXml></w:tbl>"
    )
    data = docx_with_body(WORD_BODY.format(body).encode())
    assert extract_docx(data) == (
        "Supplier | Contact\nAcme Tooling | Jane Roe\nBorealis Freight | Omar Haddad\n"
        "Cedar Mills | Li Wei"
    )


def test_extract_docx_repeats_a_cell_merged_down_on_each_row() -> None:
    merged = '<w:tc><w:tcPr><w:vMerge w:val="restart"/></w:tcPr>' + word_paragraph("North")
    body = (
        "<w:tbl><w:tblGrid><w:gridCol/><w:gridCol/></w:tblGrid>"
        "<w:tr>" + merged + "</w:tc>" + word_cell("1200") + "</w:tr>"
        "<w:tr><w:tc><w:tcPr><w:vMerge/></w:tcPr><w:p/></w:tc>" + word_cell("800") + "</w:tr>"
        "</w:tbl>"
    )
    data = docx_with_body(WORD_BODY.format(body).encode())
    assert extract_docx(data) == "North | 1200\nNorth | 800"


def test_extract_docx_leaves_out_hidden_text() -> None:
    """Word neither shows nor prints a run marked hidden (w:vanish): an answer key or a note
    to the author was indexed and found by searches."""
    body = (
        '<w:p><w:r><w:t xml:space="preserve">The deadline is Friday.</w:t></w:r>'
        '<w:r><w:rPr><w:vanish/></w:rPr><w:t xml:space="preserve"> Answer: 42.</w:t></w:r>'
        '<w:r><w:rPr><w:b/><w:vanish w:val="false"/></w:rPr>'
        '<w:t xml:space="preserve"> Bring a pen.</w:t></w:r></w:p>'
        '<w:p><w:r><w:rPr><w:vanish w:val="1"/></w:rPr><w:t>Internal note.</w:t></w:r></w:p>'
    )
    data = docx_with_body(WORD_BODY.format(body).encode())
    assert extract_docx(data) == "The deadline is Friday. Bring a pen."


def test_extract_docx_reads_symbol_font_letters_not_pictures() -> None:
    """Insert Symbol writes a Symbol-font Greek letter as w:sym (F061 is alpha): it was
    dropped, and a search for "alpha = 0.05" in Greek missed its sentence. A Wingdings
    picture is not text."""
    body = (
        '<w:p><w:r><w:t xml:space="preserve">Significance level </w:t></w:r>'
        '<w:r><w:sym w:font="Symbol" w:char="F061"/></w:r>'
        '<w:r><w:t xml:space="preserve"> = 0.05, </w:t></w:r>'
        '<w:r><w:sym w:font="Symbol" w:char="F057"/></w:r>'
        '<w:r><w:sym w:font="Wingdings" w:char="F0FC"/></w:r>'
        '<w:r><w:sym w:font="Symbol" w:char="not hex"/></w:r>'
        '<w:r><w:t xml:space="preserve"> in ohms</w:t></w:r></w:p>'
    )
    data = docx_with_body(WORD_BODY.format(body).encode())
    assert extract_docx(data) == "Significance level α = 0.05, Ω in ohms"  # noqa: RUF001


def test_extract_docx_reads_a_ruby_as_written_without_its_reading() -> None:
    """Japanese text with furigana: the reading set over "漢字" was read before it,
    "漢字かんじ漢字を読む", as an HTML page's ruby is not."""
    body = (
        "<w:p><w:r><w:t>新しい</w:t></w:r><w:r><w:ruby><w:rubyPr/>"
        "<w:rt><w:r><w:t>かんじ</w:t></w:r></w:rt>"
        "<w:rubyBase><w:r><w:t>漢字</w:t></w:r></w:rubyBase></w:ruby></w:r>"
        "<w:r><w:t>を読む</w:t></w:r></w:p>"
    )
    data = docx_with_body(WORD_BODY.format(body).encode())
    assert extract_docx(data) == "新しい漢字を読む"


W_MAIN = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def word_level(ilvl: int, fmt: str, text: str, more: str = "") -> str:
    """A list level as Word writes it in numbering.xml, counting from 1."""
    return (
        f'<w:lvl w:ilvl="{ilvl}"><w:start w:val="1"/><w:numFmt w:val="{fmt}"/>'
        f'<w:lvlText w:val="{text}"/>{more}</w:lvl>'
    )


def word_numbering(abstracts: dict[int, str], nums: dict[int, str]) -> bytes:
    """A numbering part: abstract lists (id: levels) and list instances (id: abstract id and
    overrides)."""
    return (
        f'<w:numbering xmlns:w="{W_MAIN}">'
        + "".join(
            f'<w:abstractNum w:abstractNumId="{key}">{levels}</w:abstractNum>'
            for key, levels in abstracts.items()
        )
        + "".join(f'<w:num w:numId="{key}">{num}</w:num>' for key, num in nums.items())
        + "</w:numbering>"
    ).encode()


def numbered(text: str, num_id: int | str, ilvl: int | str = 0) -> str:
    return (
        f'<w:p><w:pPr><w:numPr><w:ilvl w:val="{ilvl}"/><w:numId w:val="{num_id}"/></w:numPr>'
        f'</w:pPr><w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>'
    )


def styled(text: str, style: str) -> str:
    return (
        f'<w:p><w:pPr><w:pStyle w:val="{style}"/></w:pPr>'
        f'<w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>'
    )


def numbered_docx(body: str, numbering: bytes, styles: bytes | None = None) -> bytes:
    parts = {"word/numbering.xml": numbering}
    if styles is not None:
        parts["word/styles.xml"] = styles
    return docx_with_body(WORD_BODY.format(body).encode(), parts)


LEGAL_LIST = (
    word_level(0, "decimal", "%1.")
    + word_level(1, "decimal", "%1.%2")
    + word_level(2, "decimal", "%1.%2.%3")
)


def test_extract_docx_numbers_a_multi_level_legal_list() -> None:
    """Word's numbers live in the numbering part, not in the text: a search for "clause 4.2"
    missed the clause, and an agent reading the chunk back could not cite it."""
    body = (
        numbered("Definitions", 1)
        + numbered("Agreement means this contract.", 1, 1)
        + numbered("Including its schedules.", 1, 2)
        + numbered("Services means the work.", 1, 1)
        + word_paragraph("An unnumbered note.")
        + numbered("Payment", 1)
        + numbered("Invoices are due in 30 days.", 1, 1)
    )
    data = numbered_docx(body, word_numbering({1: LEGAL_LIST}, {1: '<w:abstractNumId w:val="1"/>'}))
    assert extract_docx(data).split("\n\n") == [
        "1. Definitions",
        "1.1 Agreement means this contract.",
        "1.1.1 Including its schedules.",
        "1.2 Services means the work.",
        "An unnumbered note.",
        "2. Payment",
        "2.1 Invoices are due in 30 days.",
    ]


def test_extract_docx_restarts_a_list_where_word_does() -> None:
    """A list restarted at 1 (a list instance overriding its start) counts on its own; one
    sharing the abstract list without an override continues it, as in Word; an empty item
    is counted, but shows nothing."""
    nums = {
        1: '<w:abstractNumId w:val="1"/>',
        2: '<w:abstractNumId w:val="1"/>'
        '<w:lvlOverride w:ilvl="0"><w:startOverride w:val="1"/></w:lvlOverride>',
        3: '<w:abstractNumId w:val="1"/>',
    }
    body = (
        numbered("Scope", 1)
        + '<w:p><w:pPr><w:numPr><w:ilvl w:val="0"/><w:numId w:val="1"/></w:numPr></w:pPr></w:p>'
        + numbered("Term", 1)
        + numbered("First step", 2)
        + numbered("Second step", 2)
        + numbered("Fees", 3)
    )
    data = numbered_docx(body, word_numbering({1: LEGAL_LIST}, nums))
    assert extract_docx(data).split("\n\n") == [
        "1. Scope",
        "3. Term",
        "1. First step",
        "2. Second step",
        "4. Fees",
    ]


def test_extract_docx_numbers_lettered_and_roman_sub_items() -> None:
    levels = (
        word_level(0, "decimal", "%1.")
        + word_level(1, "lowerLetter", "%2)")
        + word_level(2, "lowerRoman", "(%3)")
        + word_level(3, "upperLetter", "%4.", '<w:suff w:val="nothing"/>')
    )
    body = (
        numbered("Fees", 1)
        + numbered("Monthly", 1, 1)
        + numbered("in advance", 1, 2)
        + numbered("by transfer", 1, 2)
        + numbered("Yearly", 1, 1)
        + numbered("Annex", 1, 3)
        + numbered("Taxes", 1)
        + numbered("VAT", 1, 1)
    )
    data = numbered_docx(body, word_numbering({1: levels}, {1: '<w:abstractNumId w:val="1"/>'}))
    assert extract_docx(data).split("\n\n") == [
        "1. Fees",
        "a) Monthly",
        "(i) in advance",
        "(ii) by transfer",
        "b) Yearly",
        "A.Annex",
        "2. Taxes",
        "a) VAT",
    ]


HEADING_STYLES = (
    f'<w:styles xmlns:w="{W_MAIN}">'
    '<w:style w:type="paragraph" w:default="1" w:styleId="Normal"><w:name w:val="Normal"/>'
    "</w:style>"
    '<w:style w:type="paragraph" w:styleId="Heading1"><w:name w:val="heading 1"/>'
    '<w:basedOn w:val="Normal"/><w:pPr><w:numPr><w:numId w:val="7"/></w:numPr></w:pPr>'
    "</w:style>"
    '<w:style w:type="paragraph" w:styleId="Heading2"><w:name w:val="heading 2"/>'
    '<w:basedOn w:val="Heading1"/><w:pPr><w:numPr><w:ilvl w:val="1"/></w:numPr></w:pPr>'
    "</w:style>"
    '<w:style w:type="paragraph" w:styleId="Heading3"><w:name w:val="heading 3"/>'
    '<w:basedOn w:val="Normal"/><w:pPr><w:numPr><w:numId w:val="7"/></w:numPr></w:pPr>'
    "</w:style></w:styles>"
).encode()


def test_extract_docx_numbers_headings_through_their_style() -> None:
    """Headings numbered by their style (Heading 1..9 linked to a list): "Article II", then
    its sections in legal form ("2.1", not "II.1"); a style naming only its level takes the
    list from the style it is based on, or its level from the list (w:pStyle)."""
    levels = (
        word_level(0, "upperRoman", "Article %1", '<w:pStyle w:val="Heading1"/>')
        + word_level(1, "decimal", "%1.%2", '<w:isLgl/><w:pStyle w:val="Heading2"/>')
        + word_level(2, "decimal", "§ %3", '<w:pStyle w:val="Heading3"/>')
    )
    body = (
        styled("Definitions", "Heading1")
        + word_paragraph("Words have these meanings.")
        + styled("Payment", "Heading1")
        + styled("Invoices", "Heading2")
        + styled("Late payment", "Heading3")
        + styled("Disputes", "Heading2")
    )
    numbering = word_numbering({1: levels}, {7: '<w:abstractNumId w:val="1"/>'})
    assert extract_docx(numbered_docx(body, numbering, HEADING_STYLES)).split("\n\n") == [
        "Article I Definitions",
        "Words have these meanings.",
        "Article II Payment",
        "2.1 Invoices",
        "§ 1 Late payment",
        "2.2 Disputes",
    ]


def test_extract_docx_shows_bullets_as_a_bullet_character() -> None:
    """A bullet drawn from a symbol font's private use area (Word's default) or as a letter
    in Courier New reads as "•"; a plain character, as written."""
    levels = (
        word_level(0, "bullet", "\uf0b7", '<w:rPr><w:rFonts w:ascii="Symbol"/></w:rPr>')
        + word_level(1, "bullet", "o", '<w:rPr><w:rFonts w:ascii="Courier New"/></w:rPr>')
        + word_level(2, "bullet", "\u2013")
        + word_level(3, "bullet", "§", '<w:rPr><w:rFonts w:ascii="Wingdings"/></w:rPr>')
    )
    body = (
        numbered("Apples", 1)
        + numbered("Green", 1, 1)
        + numbered("Granny Smith", 1, 2)
        + numbered("Sour", 1, 3)
    )
    data = numbered_docx(body, word_numbering({1: levels}, {1: '<w:abstractNumId w:val="1"/>'}))
    assert extract_docx(data).split("\n\n") == [
        "• Apples",
        "• Green",
        "\u2013 Granny Smith",
        "• Sour",
    ]


@pytest.mark.parametrize(
    ("numbering", "num_id", "ilvl"),
    [
        (word_numbering({1: LEGAL_LIST}, {1: '<w:abstractNumId w:val="1"/>'}), "99", "0"),
        (word_numbering({1: LEGAL_LIST}, {1: '<w:abstractNumId w:val="5"/>'}), "1", "0"),
        (word_numbering({1: LEGAL_LIST}, {1: '<w:abstractNumId w:val="1"/>'}), "1", "12"),
        (word_numbering({1: LEGAL_LIST}, {1: '<w:abstractNumId w:val="1"/>'}), "1", "-1"),
        (b"<w:numbering><unclosed", "1", "0"),
        (b"", "1", "0"),
    ],
    ids=[
        "unknown-list",
        "unknown-abstract-list",
        "unknown-level",
        "negative-level",
        "damaged",
        "empty",
    ],
)
def test_extract_docx_with_a_broken_numbering_reference_reads_the_text(
    numbering: bytes, num_id: str, ilvl: str
) -> None:
    """A reference to a list or level that is not there, or a damaged numbering part, numbers
    nothing; the document is read (a damaged part failed it as "damaged")."""
    body = numbered("Scope", num_id, ilvl) + word_paragraph("Plain words.")
    data = numbered_docx(body, numbering)
    assert extract_docx(data) == "Scope\n\nPlain words."


def test_extract_docx_without_a_numbering_part_reads_numbered_paragraphs() -> None:
    with zipfile.ZipFile(io.BytesIO(make_docx(["placeholder"]))) as archive:
        relationships = archive.read("word/_rels/document.xml.rels")
    relationships = re.sub(rb"<Relationship [^>]*/numbering\"[^>]*/>", b"", relationships)
    body = numbered("Scope", 1) + word_paragraph("Plain words.")
    data = docx_with_body(
        WORD_BODY.format(body).encode(), {"word/_rels/document.xml.rels": relationships}
    )
    assert extract_docx(data) == "Scope\n\nPlain words."


WEB_ARCHIVE = (
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/related; type="text/html"; boundary="----=mhtDocumentPart"\r\n'
    b"\r\n------=mhtDocumentPart\r\n"
    b'Content-Type: text/html; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"Content-Location: file:///C:/fake/document.html\r\n\r\n"
    b"<html><body><h1>Refund policy</h1><p>Refunds are paid within fourteen da=\r\n"
    b"ys, caf=C3=A9 vouchers excepted.</p></body></html>\r\n"
    b"------=mhtDocumentPart--\r\n"
)
IMPORTED = "Refund policy\n\nRefunds are paid within fourteen days, café vouchers excepted."
WORD_MAIN = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
ALT_CHUNK = (
    '<w:altChunk xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
    ' r:id="rIdChunk1"/>'
)


@pytest.mark.parametrize(
    ("target", "content_type", "content"),
    [
        (
            "chunk.html",
            "text/html",
            "<html><body><h1>Refund policy</h1><p>Refunds are paid within fourteen days, café "
            "vouchers excepted.</p></body></html>".encode(),
        ),
        ("afchunk.mht", "message/rfc822", WEB_ARCHIVE),
        ("chunk.txt", "text/plain", IMPORTED.encode()),
        ("chunk.docx", WORD_MAIN, make_docx(IMPORTED.split("\n\n"))),
    ],
    ids=["html", "web-archive", "text", "word"],
)
def test_extract_docx_reads_an_imported_chunk_where_it_stands(
    target: str, content_type: str, content: bytes
) -> None:
    """Word shows a chunk imported from another file (w:altChunk) in place; its text was
    left out, and a .docx imported by a merge made the whole document "damaged"."""
    body = word_paragraph("Terms of sale.") + ALT_CHUNK + word_paragraph("Signed in Lyon.")
    data = docx_with_imported_chunk(WORD_BODY.format(body).encode(), target, content_type, content)
    assert extract_docx(data) == f"Terms of sale.\n\n{IMPORTED}\n\nSigned in Lyon."


def test_extract_text_docx_made_of_an_imported_web_archive_is_not_empty() -> None:
    """html-docx-js writes a page's whole body as one imported web archive: such a document
    was refused as containing no text."""
    data = docx_with_imported_chunk(
        WORD_BODY.format(ALT_CHUNK).encode(), "afchunk.mht", "message/rfc822", WEB_ARCHIVE
    )
    assert extract_text(data, DocumentFormat.DOCX).text == IMPORTED


def test_extract_docx_reads_an_imported_text_with_page_breaks() -> None:
    """XML cannot hold a text file's form feed, vertical tab or NUL: lxml refused the imported
    text, and the whole document was refused as damaged."""
    content = b"Terms of payment.\fPrices\x0bin euros.\x00"
    body = word_paragraph("Terms of sale.") + ALT_CHUNK
    data = docx_with_imported_chunk(
        WORD_BODY.format(body).encode(), "chunk.txt", "text/plain", content
    )
    assert extract_docx(data) == "Terms of sale.\n\nTerms of payment.\nPrices\nin euros."


@pytest.mark.parametrize("charset", ["base64", "idna", "no-such-charset"])
def test_extract_docx_reads_a_web_archive_whose_charset_decodes_no_text(charset: str) -> None:
    """A charset that is not a text encoding raised at decode, and the document was refused
    as damaged: the page is read as one that names none."""
    archive = WEB_ARCHIVE.replace(b'charset="utf-8"', f'charset="{charset}"'.encode())
    data = docx_with_imported_chunk(
        WORD_BODY.format(ALT_CHUNK).encode(), "afchunk.mht", "message/rfc822", archive
    )
    assert extract_docx(data) == IMPORTED


def test_extract_docx_reads_a_part_imported_many_times_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each document imports the next one 4 times, 8 deep: each import was read again,
    4 ** 8 readings of the innermost (past the reader's time limit)."""
    data = make_docx(["Innermost clause."])
    for _ in range(8):
        body = WORD_BODY.format(ALT_CHUNK * 4).encode()
        data = docx_with_imported_chunk(body, "chunk.docx", WORD_MAIN, data)
    read: list[int] = []
    original = extract_module.extract_docx

    def counted(data: bytes, depth: int = 0) -> str:
        read.append(depth)
        return original(data, depth)

    monkeypatch.setattr(extract_module, "extract_docx", counted)
    text = extract_docx(data)
    assert text.split("\n\n") == ["Innermost clause."] * 4**8
    assert read == [1, 2, 3, 4, 5, 6, 7, 8]


def test_extract_text_docx_importing_documents_nested_too_deep_is_corrupt() -> None:
    data = make_docx(["The innermost document."])
    for _ in range(9):
        data = docx_with_imported_chunk(
            WORD_BODY.format(ALT_CHUNK).encode(), "chunk.docx", WORD_MAIN, data
        )
    error = rejected(data, DocumentFormat.DOCX)
    assert error.error_type == FailureType.CORRUPT_DOCUMENT
    assert error.message == "the Word document imports documents nested more than 8 deep"


def test_extract_text_docx_without_text_is_empty() -> None:
    error = rejected(make_docx([]), DocumentFormat.DOCX)
    assert error.error_type == FailureType.EMPTY_DOCUMENT
    assert error.message == "the document contains no text"


@pytest.mark.parametrize(
    "data",
    [b"this is not a zip archive", make_pdf(["not a docx"]), b""],
    ids=["text", "pdf", "empty"],
)
def test_extract_text_docx_that_is_not_a_zip_is_corrupt(data: bytes) -> None:
    error = rejected(data, DocumentFormat.DOCX)
    assert error.error_type == FailureType.CORRUPT_DOCUMENT
    assert error.message == "the Word document is not a valid ZIP archive"


def test_extract_text_zip_without_word_document_is_corrupt() -> None:
    error = rejected(make_zip({"hello.txt": b"hi"}), DocumentFormat.DOCX)
    assert error.error_type == FailureType.CORRUPT_DOCUMENT
    assert error.message == "the Word document is damaged and cannot be read"


def test_extract_text_docx_with_broken_xml_is_corrupt() -> None:
    original = make_docx(["Hello"])
    with zipfile.ZipFile(io.BytesIO(original)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["word/document.xml"] = b"<w:document><unclosed"
    error = rejected(make_zip(members), DocumentFormat.DOCX)
    assert error.error_type == FailureType.CORRUPT_DOCUMENT


def test_extract_text_docx_that_inflates_too_far_is_too_large(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(extract_module, "MAX_DOCX_UNCOMPRESSED", 1024 * 1024)
    data = make_zip({"word/document.xml": b"<" + b" " * (2 * 1024 * 1024)})
    error = rejected(data, DocumentFormat.DOCX)
    assert error.error_type == FailureType.DOCUMENT_TOO_LARGE
    assert error.message == "the Word document unpacks to 2 MiB, over the 1 MiB limit"


# --- text and encodings -------------------------------------------------------------------

TEXT = "Grüße aus Köln — “quoted” café.\nSecond line."


@pytest.mark.parametrize(
    "data",
    [
        TEXT.encode("utf-8"),
        codecs.BOM_UTF8 + TEXT.encode("utf-8"),
        codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le"),
        codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"),
        TEXT.encode("cp1252"),
    ],
    ids=["utf8", "utf8-bom", "utf16le-bom", "utf16be-bom", "cp1252"],
)
@pytest.mark.parametrize("fmt", [DocumentFormat.TEXT, DocumentFormat.MARKDOWN])
def test_extract_text_decodes_text_encodings(data: bytes, fmt: DocumentFormat) -> None:
    result = extract_text(data, fmt)
    assert result.text == TEXT
    assert result.page_starts is None


def test_extract_text_markdown_is_kept_verbatim() -> None:
    source = "# Title\n\n* item with **bold**\n\n```\ncode\n```\n"
    assert extract_text(source.encode(), DocumentFormat.MARKDOWN).text == source


COLOURED_LOG = (
    "\x1b]0;deploy@prod\x07"
    "12:00:03 \x1b[1;31mERROR\x1b[0m \x1b[36mpayments\x1b(B\x1b[m: timeout charging card\n"
    "See \x1b]8;;https://status.example\x1b\\the status page\x1b]8;;\x1b\\.\n"
)
MAN_PAGE = "N\bNA\bAM\bME\bE\n       ls - list _\bf_\bi_\bl_\be_\bs\n"


@pytest.mark.parametrize("fmt", [DocumentFormat.TEXT, DocumentFormat.MARKDOWN])
def test_extract_text_leaves_out_terminal_escapes_and_overstrikes(fmt: DocumentFormat) -> None:
    """A log captured with colours, or a man page saved as text: "\x1b[31mERROR" was read as
    "[31mERROR" (the pieces "##mer" "##ror"), bold "NAME" as "NNAAMMEE"."""
    assert extract_text(COLOURED_LOG.encode(), fmt).text == (
        "12:00:03 ERROR payments: timeout charging card\nSee the status page.\n"
    )
    assert extract_text(MAN_PAGE.encode(), fmt).text == "NAME\n       ls - list files\n"


def test_extract_text_leaves_out_the_bytes_of_an_inlined_image() -> None:
    """A screenshot pasted into a Markdown file is a data: URI: a 60 KB one made 269 chunks of
    base64 beside the document's one, each embedded and returned by searches."""
    image = base64.b64encode(random.Random(3).randbytes(60_000)).decode()
    source = (
        "# Refunds\n\nRefunds are accepted within 30 days.\n\n"
        f"![The refund form](data:image/png;base64,{image})\n\n"
        f'<img alt="logo" src="data:image/svg+xml;charset=utf-8;base64,{image[:400]}">\n'
    )
    text = extract_text(source.encode(), DocumentFormat.MARKDOWN).text
    assert text == (
        "# Refunds\n\nRefunds are accepted within 30 days.\n\n"
        "![The refund form](data:image/png;base64,)\n\n"
        '<img alt="logo" src="data:image/svg+xml;charset=utf-8;base64,">\n'
    )
    budget = model_token_budget(bundled_model_path())
    assert len(list(chunk_spans(text, 1000, 100, budget))) == 1


def test_extract_text_leaves_out_encoded_bytes() -> None:
    """A certificate pasted between its PEM lines, an e-mail's attachment saved with its text,
    an ssh key: 30 KB of an attachment made 177 chunks of base64, each embedded and returned
    by searches for other things. Text that only looks like it stays: words, hex hashes, a
    path, a short token."""
    noise = random.Random(5)
    certificate = "\n".join(textwrap.wrap(base64.b64encode(noise.randbytes(1400)).decode(), 64))
    attachment = "\n".join(textwrap.wrap(base64.b64encode(noise.randbytes(30_000)).decode(), 76))
    key = base64.b64encode(noise.randbytes(279)).decode()
    source = (
        "Install the chain and restart nginx.\n\n```\n-----BEGIN CERTIFICATE-----\n"
        f"{certificate}\n-----END CERTIFICATE-----\n```\n\n"
        f"    ssh-rsa {key} deploy@ci\n\n"
        "Content-Transfer-Encoding: base64\n\n"
        f"{attachment}\nThanks\n--boundary--\n"
    )
    text = extract_text(source.encode(), DocumentFormat.TEXT).text
    assert text == (
        "Install the chain and restart nginx.\n\n```\n-----BEGIN CERTIFICATE-----\n\n"
        "-----END CERTIFICATE-----\n```\n\n    ssh-rsa  deploy@ci\n\n"
        "Content-Transfer-Encoding: base64\n\n\nThanks\n--boundary--\n"
    )
    budget = model_token_budget(bundled_model_path())
    assert len(list(chunk_spans(source, 1000, 100, budget))) > 180
    assert len(list(chunk_spans(text, 1000, 100, budget))) == 1
    kept = (
        f"Commit {'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' * 5}\n"
        f"/usr/lib/{'Abc1/' * 60}x\n"
        f"token {key[:200]} is short\n"
        f"{'Pneumonoultramicroscopicsilicovolcanoconiosis' * 6} 2024\n"
    )
    assert extract_text(kept.encode(), DocumentFormat.MARKDOWN).text == kept


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        ("The \ufb01nancial \ufb01les, \ufb02agged.".encode(), DocumentFormat.TEXT),
        ("<p>The \ufb01nancial \ufb01les, \ufb02agged.</p>".encode(), DocumentFormat.HTML),
        (make_docx(["The \ufb01nancial \ufb01les, \ufb02agged."]), DocumentFormat.DOCX),
    ],
    ids=["text", "html", "docx"],
)
def test_extract_text_spells_out_ligatures(data: bytes, fmt: DocumentFormat) -> None:
    assert extract_text(data, fmt).text == "The financial files, flagged."


def test_extract_text_removes_nul_characters() -> None:
    assert extract_text(b"abc\x00def\x00", DocumentFormat.TEXT).text == "abcdef"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   \n\t\r\n  ",
        b"  \x00 \n  \x00\t ",
        codecs.BOM_UTF8 + b" \n",
        "\u3000\u00a0".encode(),
        "\u200b\u2060\u00ad\n".encode(),
        "\u200c\u200d\u200e\u200f\u202a\u202e\u2066\u2069".encode(),
        codecs.BOM_UTF8 * 2,
        codecs.BOM_UTF16_LE + " \ufeff".encode("utf-16-le"),
    ],
    ids=[
        "empty",
        "whitespace",
        "nul-and-space",
        "bom-and-space",
        "unicode-spaces",
        "invisible",
        "joiners-and-direction-marks",
        "two-boms",
        "utf-16-boms",
    ],
)
@pytest.mark.parametrize("fmt", [DocumentFormat.TEXT, DocumentFormat.MARKDOWN])
def test_extract_text_whitespace_only_is_empty(data: bytes, fmt: DocumentFormat) -> None:
    error = rejected(data, fmt)
    assert error.error_type == FailureType.EMPTY_DOCUMENT
    assert error.message == "the document contains no text"


# --- HTML ---------------------------------------------------------------------------------


def test_html_to_text_drops_script_style_and_head() -> None:
    html = """<!DOCTYPE html>
<html><head><title>Tab title</title><style>p { color: red }</style>
<script>var secret = "hidden";</script></head>
<body><script type="module">alert("x")</script><noscript>Enable JS</noscript>
<p>Visible text.</p><template><p>Template text</p></template></body></html>"""
    assert html_to_text(html) == "Visible text."


def test_html_to_text_keeps_block_breaks() -> None:
    html = (
        "<h1>Title</h1><p>First <b>bold</b> paragraph.</p><div>Second block</div>"
        "<ul><li>one</li><li>two</li></ul>line<br>break"
    )
    assert html_to_text(html) == (
        "Title\n\nFirst bold paragraph.\n\nSecond block\n\none\n\ntwo\n\nline\nbreak"
    )


def test_html_to_text_collapses_whitespace_and_blank_lines() -> None:
    html = "<p>  lots   of\tspace  </p>\n\n\n\n<p>next</p><div><div><div>deep</div></div></div>"
    assert html_to_text(html) == "lots of space\n\nnext\n\ndeep"


def test_html_to_text_decodes_entities() -> None:
    assert html_to_text("<p>Fish &amp; chips&nbsp;&lt;3 &#8364;5 &eacute;</p>") == (
        "Fish & chips <3 €5 é"
    )


def test_html_to_text_keeps_table_cells_apart() -> None:
    html = "<table><tr><th>Name</th><th>Age</th></tr><tr><td>Ann</td><td>42</td></tr></table>"
    assert html_to_text(html) == "Name Age\n\nAnn 42"


def test_html_to_text_keeps_table_cells_without_end_tags_apart() -> None:
    html = "<table><tr><th>Model<th>Flow rate<tr><td>Aquaflow<td>40 litres a minute</table>"
    assert html_to_text(html) == "Model Flow rate\nAquaflow 40 litres a minute"


def test_html_to_text_keeps_words_of_neighbouring_blocks_apart() -> None:
    html = (
        "<nav>Home</nav><main><dl><dt>Latency</dt><dd>Time to first byte</dd></dl></main>"
        "<aside>Related</aside><figure><figcaption>Figure one</figcaption></figure>"
        "<details><summary>More</summary>Hidden part</details>"
    )
    assert [line for line in html_to_text(html).splitlines() if line] == [
        "Home", "Latency", "Time to first byte", "Related", "Figure one", "More", "Hidden part"
    ]  # fmt: skip


def test_html_to_text_keeps_words_of_controls_and_options_apart() -> None:
    html = (
        "<p>Colour: <select multiple><option>Red</option><option>Blue</option></select>"
        "<button>Save</button><button>Cancel</button></p>"
        "<p><label>Name</label><input name=n><label>Email</label><img src=a.png>Next</p>"
    )
    assert html_to_text(html) == "Colour: Red Blue Save Cancel\n\nName Email Next"


def test_html_to_text_reads_ruby_text_as_written() -> None:
    """The reading over a ruby's text ("かん" over "漢") was read into it: "漢かん字じ", which
    a search for "漢字" did not find."""
    html = (
        "<p><ruby>漢<rp>(</rp><rt>かん</rt><rp>)</rp>字<rp>(</rp><rt>じ</rt><rp>)</rp></ruby>"
        "を読む</p><p><ruby><rb>東<rb>京<rt>とう<rt>きょう</ruby>に行く</p>"
        "<p><ruby>未<rt>み</p><p>The next paragraph.</p>"
    )
    assert html_to_text(html) == "漢字を読む\n\n東京に行く\n\n未\n\nThe next paragraph."


def test_html_to_text_reads_a_self_closing_br_as_br() -> None:
    assert (
        html_to_text("<p>line<br/>break<br />here<hr/>after</p>")
        == (html_to_text("<p>line<br>break<br>here<hr>after</p>"))
        == "line\nbreak\nhere\nafter"
    )


def test_html_to_text_leaves_out_hidden_elements() -> None:
    """A browser does not show an element with the `hidden` attribute (a closed panel, an
    error message not yet shown); "until-found" ones it shows when find-in-page finds them."""
    html = (
        "<p>Shown.</p><div hidden><p>Not shown.</p><div>Nor this.</div></div>"
        '<p class=error hidden>Invalid e-mail.</p><section hidden="until-found">Found.</section>'
        "<p hidden>No end tag<div>Shown after.</div><input hidden>Kept."
    )
    assert html_to_text(html) == "Shown.\n\nFound.\n\nShown after.\nKept."


def test_html_to_text_hides_a_hidden_element_left_open_only_to_the_end_of_its_parent() -> None:
    """A browser's </p> or </td> ends a <span> or <div> left open in it: the page after it
    shows. Left out to its own end tag, which never came, the rest of the page was lost."""
    html = (
        "<p>Price <span hidden>old price</p><p>Second paragraph.</p>"
        "<table><tr><td><div hidden>Tip</td><td>Visible cell</td></tr></table><p>After.</p>"
    )
    assert html_to_text(html) == "Price\n\nSecond paragraph.\n\nVisible cell\n\nAfter."


def test_html_to_text_ends_a_ruby_reading_left_open_with_its_cell() -> None:
    html = "<table><tr><td><ruby>漢<rt>かん</td><td>Next cell</td></tr></table>"
    assert html_to_text(html) == "漢 Next cell"


def test_html_to_text_leaves_out_svg_tooltips_and_sprites() -> None:
    """An inline icon's tooltip (<title>, <desc>) and a sprite's icons (<symbol>, <defs>) are
    not drawn where they stand: they were read, glued to the words beside them
    ("ClickDownload filean arrowhere"); an SVG's drawn text stays, each <text> apart."""
    html = (
        '<svg style="display:none"><defs><symbol id=dl><title>Download icon</title>'
        '<path d="M0 0"/></symbol></defs><symbol id=x><desc>A cross</desc></symbol></svg>'
        '<p>Click<svg><title>Download file</title><desc>an arrow</desc><use href="#dl"/></svg>'
        "here</p><p>Chart<svg><text x=1>Revenue</text><text x=9>2024</text></svg>below</p>"
        "<p>Icon<svg><title>Left open</svg>after</p>"
    )
    assert html_to_text(html) == "Click here\n\nChart Revenue 2024 below\n\nIcon after"


def test_html_to_text_reads_the_child_an_svg_switch_draws() -> None:
    """An SVG <switch> draws its first child a browser can, the others are fallbacks: a
    draw.io diagram's labels were read twice (as HTML, then as SVG text), and its "Text is not
    SVG - cannot display" too."""
    extensibility = 'requiredFeatures="http://www.w3.org/TR/SVG11/feature#Extensibility"'
    html = (
        "<p>Flow:</p><svg><g><switch><foreignObject " + extensibility + "><div>"
        "<div>Upload</div></div></foreignObject><text x=5>Upload</text></switch>"
        "<switch><foreignObject " + extensibility + "><div>Embed</div></foreignObject>"
        "<text>Embed</text></switch></g><switch><g " + extensibility + "/>"
        '<a href="https://www.drawio.com/doc/faq/svg-export-text-problems">'
        "<text>Text is not SVG - cannot display</text></a></switch></svg>"
        "<svg><switch><g><switch><text>Inner</text><text>Inner fallback</text></switch></g>"
        "<text>Outer fallback</text></switch><text>After</text></svg>"
    )
    assert html_to_text(html) == "Flow:\n\nUpload\n\nEmbed\nInner After"


def test_html_to_text_leaves_out_fallback_content_of_embedded_media() -> None:
    """What an <iframe>, <video>, <audio>, <canvas>, <meter> or <progress> holds is shown only
    by a browser that cannot show the element itself: "Your browser does not support the video
    tag." was read into the text, glued to the words beside it."""
    html = (
        "<p>Watch<iframe src=intro.html>Your browser does not support iframes.</iframe>this.</p>"
        "<video controls><source src=a.mp4><track src=a.vtt>Your browser does not support the "
        "video tag.</video><audio src=a.mp3><p>Your browser does not support audio.</p></audio>"
        "<canvas>Enable canvas.</canvas><p>Disk <meter value=2 max=10>2 of 10</meter> full,"
        " upload <progress value=70 max=100>70%</progress> done.</p>"
        "<frameset><noframes>Your browser does not support frames.</noframes></frameset>"
        "<div><video>Left open</div><p>After.</p><p>Load <meter value=5>5 of 10<p>Shown.</p>"
    )
    assert html_to_text(html) == (
        "Watch this.\n\nDisk full, upload done.\n\nAfter.\n\nLoad\nShown."
    )


def test_html_to_text_leaves_out_closed_dialogs_and_datalists() -> None:
    """A <dialog> without `open` (a cookie banner or a form's pop-up, before a script opens
    it) and an input's suggestions (<datalist>) are not shown; an open dialog is."""
    html = (
        "<dialog id=cookies><p>We use cookies.</p><button>Accept all</button></dialog>"
        "<dialog open><p>Saved.</p></dialog><p>Browser: <input list=b>"
        "<datalist id=b><option value=Chrome><option>Firefox</option></datalist></p>"
    )
    assert html_to_text(html) == "Saved.\n\nBrowser:"


def test_html_to_text_reads_a_drop_down_as_the_option_it_shows() -> None:
    """A drop-down shows its selected option, or its first: a shop's page of two sentences
    with a country and a birth-year picker made 3 chunks, 2 of them lists of names and years.
    A list box (`multiple`, `size` over 1) shows its options."""
    countries = "".join(f"<option value={n}>Country {n}</option>" for n in range(250))
    html = (
        f"<p>Country: <select name=c><option value=''>Choose a country</option>{countries}"
        "</select> Post code</p><p>Size: <select><optgroup label=Small><option>S<option>XS"
        "<optgroup label=Large><option selected>L<option>XL</select></p>"
        "<p>Tags: <select multiple><option>red<option>blue</select>"
        " <select size=3><option>a<option>b</select></p>"
        "<p>Open: <select><option>one<option>two</p><p>Next.</p>"
    )
    assert html_to_text(html) == (
        "Country: Choose a country Post code\n\nSize: L\n\nTags: red blue a b\n\n"
        "Open: one two\n\nNext."
    )


def test_html_to_text_leaves_out_a_formulas_annotations() -> None:
    """MathML's <annotation> (the TeX source KaTeX and Wikipedia put beside a formula) is not
    shown: "E=mc2" was read as "E=mc2E=mc^2"."""
    html = (
        "<p>Energy <math><semantics><mrow><mi>E</mi><mo>=</mo><mi>m</mi><msup><mi>c</mi>"
        '<mn>2</mn></msup></mrow><annotation encoding="application/x-tex">E=mc^2</annotation>'
        "<annotation-xml encoding=MathML-Content><apply/></annotation-xml></semantics></math>"
        " is conserved.</p>"
    )
    assert html_to_text(html) == "Energy E=mc2 is conserved."


def test_html_to_text_reads_body_when_head_is_not_closed() -> None:
    html = "<html><head><title>Title</title><body><p>Body text</p></body></html>"
    assert html_to_text(html) == "Body text"


def test_html_to_text_reads_body_when_neither_head_end_nor_body_tag_is_written() -> None:
    html = (
        "<!DOCTYPE html><html><head><meta charset=utf-8><title>Pump guide</title>"
        "<noscript><img src=pump.png></noscript><link rel=stylesheet href=a.css>"
        "<h1>Priming the pump</h1><p>Open the bleed valve before starting.</p></html>"
    )
    assert html_to_text(html) == "Priming the pump\n\nOpen the bleed valve before starting."


def test_html_to_text_survives_unbalanced_tags() -> None:
    text = html_to_text("</script></style><p>Text<p>More</div>")
    assert [line for line in text.splitlines() if line] == ["Text", "More"]


@pytest.mark.parametrize(
    "data",
    [
        b"<html><body><p>Caf\xc3\xa9 &amp; bar</p></body></html>",
        codecs.BOM_UTF16_LE + "<html><body><p>Café &amp; bar</p></body></html>".encode("utf-16-le"),
        b"<html><body><p>Caf\xe9 &amp; bar</p></body></html>",
    ],
    ids=["utf8", "utf16-bom", "cp1252"],
)
def test_extract_text_html_bytes(data: bytes) -> None:
    result = extract_text(data, DocumentFormat.HTML)
    assert result.text == "Café & bar"
    assert result.page_starts is None


@pytest.mark.parametrize(
    ("declaration", "codec", "words"),
    [
        ('<meta charset="windows-1251">', "cp1251", "Привет, мир"),
        (
            '<meta http-equiv="Content-Type" content="text/html; charset=Shift_JIS">',
            "cp932",
            "日本語のテキスト",
        ),
        ('<meta charset="gb2312">', "gb18030", "中文文本"),
        ("<meta charset=iso-8859-1>", "cp1252", "\u201csmart\u201d café"),
    ],
    ids=["cp1251", "shift-jis-http-equiv", "gb2312", "latin1-is-cp1252"],
)
def test_extract_text_html_in_its_declared_charset(
    declaration: str, codec: str, words: str
) -> None:
    page = f"<html><head>{declaration}</head><body><p>{words}</p></body></html>"
    assert extract_text(page.encode(codec), DocumentFormat.HTML).text == words


@pytest.mark.parametrize("label", ["hex", "base64", "rot13", "idna"])
def test_extract_text_html_whose_charset_names_no_text_encoding_reads_as_undeclared(
    label: str,
) -> None:
    """A label Python knows but that decodes no page: the upload failed as an unexpected
    error ("'hex' is not a text encoding")."""
    page = f'<html><head><meta charset="{label}"></head><body><p>Café au lait</p></body></html>'
    assert extract_text(page.encode("cp1252"), DocumentFormat.HTML).text == "Café au lait"


def test_extract_text_html_ignores_a_charset_declared_in_a_comment() -> None:
    page = (
        '<html><head><!-- <meta charset="koi8-r"> --><meta charset="windows-1252"></head>'
        "<body><p>Caf\u00e9 na\u00efve r\u00e9sum\u00e9</p></body></html>"
    )
    text = extract_text(page.encode("cp1252"), DocumentFormat.HTML).text
    assert text == "Caf\u00e9 na\u00efve r\u00e9sum\u00e9"


def test_extract_text_html_in_utf8_wins_over_a_wrong_declaration() -> None:
    page = '<html><head><meta charset="iso-8859-1"></head><body><p>Café 日本</p></body></html>'
    assert extract_text(page.encode(), DocumentFormat.HTML).text == "Café 日本"


def test_extract_text_html_declared_utf8_but_written_in_windows_1252_keeps_its_accents() -> None:
    page = (
        '<html><head><meta charset="utf-8"></head><body><p>Caf\u00e9 cr\u00e8me</p></body></html>'
    )
    assert extract_text(page.encode("cp1252"), DocumentFormat.HTML).text == "Caf\u00e9 cr\u00e8me"


def test_extract_text_html_with_only_scripts_is_empty() -> None:
    data = b"<html><head><script>x()</script></head><body><style>p{}</style></body></html>"
    error = rejected(data, DocumentFormat.HTML)
    assert error.error_type == FailureType.EMPTY_DOCUMENT


# --- Large HTML: the `extract` activity ------------------------------------------------------

PARAGRAPH = "<p>Fish &amp; <b>chips</b></p>"


def html_of(unit: str, mib: int) -> bytes:
    return f"<html><body>{unit * (mib * 1024 * 1024 // len(unit))}</body></html>".encode()


def staged_html(tmp_path: Path, data: bytes) -> tuple[StagingStore, IngestTask]:
    staging = StagingStore(str(tmp_path))
    task = IngestTask(
        task_id="large-html",
        owner_id="owner",
        agent_id="agent",
        filename="large.html",
        format=DocumentFormat.HTML.value,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=200,
        chunk_overlap=20,
        embed_task_queue="unused",
    )
    staging.write_bytes(task.task_id, ORIGINAL, data)
    return staging, task


def test_extract_heartbeats_while_it_parses_a_large_html_file(tmp_path: Path) -> None:
    # 3 MiB of dense markup: seconds of parsing, several of the reader's 0.5 s pulses. Parsed
    # in the activity's thread it sent no heartbeat, and a busy worker's 50 MiB file outlasted
    # the heartbeat timeout: five attempts, then `error` for a worker that was alive.
    data = html_of(PARAGRAPH, 3)
    staging, task = staged_html(tmp_path, data)
    env = ActivityEnvironment()
    heartbeats: list[tuple[object, ...]] = []
    env.on_heartbeat = lambda *details: heartbeats.append(details)

    result = env.run(ExtractActivities(staging).extract, task)

    assert heartbeats
    paragraphs = (len(data) - len("<html><body></body></html>")) // len(PARAGRAPH)
    text = "\n\n".join(["Fish & chips"] * paragraphs)
    # the text that parsing in the activity's thread gives
    assert html_to_text(PARAGRAPH * 3) == "Fish & chips\n\nFish & chips\n\nFish & chips"
    assert staging.read_json(task.task_id, TEXT_JSON) == {"text": text, "page_starts": None}
    assert result.characters == len(text)
    assert result.pages is None


def test_extract_stops_a_large_html_file_at_the_time_limit(tmp_path: Path) -> None:
    # 8 MiB of the densest markup: many seconds of parsing, stopped after one.
    staging, task = staged_html(tmp_path, html_of("<b>a</b>\n", 8))
    activities = ExtractActivities(staging, ReaderLimits(time_s=1))

    with pytest.raises(ApplicationError) as info:
        ActivityEnvironment().run(activities.extract, task)

    assert info.value.type == FailureType.DOCUMENT_TOO_SLOW
    assert info.value.non_retryable
    assert info.value.message == (
        "reading the HTML file took longer than 1 s; it may be damaged or built to be slow to read"
    )
    assert not staging.exists(task.task_id, TEXT_JSON)


def test_extract_stops_a_small_html_file_built_to_parse_slowly_at_the_time_limit(
    tmp_path: Path,
) -> None:
    # 160 KiB of unfinished tags: Python 3.11's HTMLParser takes quadratic time on them (~40 s
    # here). Under a MiB it was parsed in the activity's thread, past any time limit.
    staging, task = staged_html(tmp_path, b"<a" * (80 * 1024))
    activities = ExtractActivities(staging, ReaderLimits(time_s=1))

    with pytest.raises(ApplicationError) as info:
        ActivityEnvironment().run(activities.extract, task)

    assert info.value.type == FailureType.DOCUMENT_TOO_SLOW
    assert info.value.non_retryable
    assert not staging.exists(task.task_id, TEXT_JSON)


def test_extract_in_a_local_step_stops_its_reader_before_the_steps_own_timeout(
    tmp_path: Path,
) -> None:
    # A small HTML file is read in a local step of 5 minutes, as long as the default limit
    # (300 s): the step's timeout came first, and the file was read again, five times; the task
    # ended `error` (Timeout) after 25 minutes instead of `failed` (DocumentTooSlow). Here a step
    # of 21 s: the reader has 11 s of the 300.
    staging, task = staged_html(tmp_path, b"<a" * (80 * 1024))  # ~40 s to parse
    activities = ExtractActivities(staging, ReaderLimits(time_s=300))
    environment = ActivityEnvironment()
    environment.info = dataclasses.replace(
        environment.info, start_to_close_timeout=timedelta(seconds=21), is_local=True
    )

    with pytest.raises(ApplicationError) as info:
        environment.run(activities.extract, task)

    assert info.value.type == FailureType.DOCUMENT_TOO_SLOW
    assert "took longer than 11 s" in info.value.message


def test_extract_of_a_large_html_file_stops_when_cancelled(tmp_path: Path) -> None:
    # As a worker hears of a cancel: in the answer to a heartbeat.
    staging, task = staged_html(tmp_path, html_of(PARAGRAPH, 3))
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *_: env.cancel()

    with pytest.raises(CancelledError):
        env.run(ExtractActivities(staging, ReaderLimits(time_s=600)).extract, task)

    assert not staging.exists(task.task_id, TEXT_JSON)
