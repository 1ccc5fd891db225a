"""Content sniffing and text decoding: what a file is, whatever its name says."""

from __future__ import annotations

import codecs
import io
import random
import re
import time
import zipfile

import pytest

from activities.errors import RejectedDocument
from activities.extract import extract_text
from core.formats import (
    SNIFF_BYTES,
    DocumentFormat,
    UnreadableContent,
    decode_head,
    decode_text,
    detect_encoding,
    is_probably_text,
    is_zip,
    sniff_format,
    sniff_head,
)
from tests.documents import (
    make_docx,
    make_docx_with_unreadable_rels,
    make_legacy_doc,
    make_password_protected_docx,
    make_pdf,
    make_strict_docx,
    make_zip,
)

PLAIN = "Quarterly report.\nRevenue grew in every region.\n"
CP1252_TEXT = "Café naïve \u2013 “smart quotes” cost 5 €.\n"


def sniff(data: bytes, filename: str) -> DocumentFormat:
    """sniff_format, checking that sniff_head (what an upload uses) says the same."""
    try:
        found = sniff_format(io.BytesIO(data), filename)
    except UnreadableContent as exc:
        if not is_zip(data):
            with pytest.raises(UnreadableContent, match=re.escape(str(exc))):
                sniff_head(data[:SNIFF_BYTES], filename)
        raise
    if not is_zip(data):
        assert sniff_head(data[:SNIFF_BYTES], filename) is found
    return found


def random_bytes(count: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(count)


# --- sniff_format: binary formats by content ---------------------------------------------


@pytest.mark.parametrize("filename", ["report.pdf", "notes.txt", "README.md", "page.html", "x"])
def test_sniff_format_pdf_by_magic_whatever_the_name(filename: str) -> None:
    assert sniff(make_pdf(["hello"]), filename) is DocumentFormat.PDF


def test_sniff_format_pdf_with_leading_junk_within_first_kilobyte() -> None:
    data = b"\r\n \x00" + b"junk line\n" * 50 + make_pdf(["hello"])
    assert sniff(data, "scan.bin") is DocumentFormat.PDF


def test_sniff_format_docx_zip_is_docx_even_with_wrong_name() -> None:
    assert sniff(make_docx(["Hello"]), "letter.txt") is DocumentFormat.DOCX


def test_sniff_format_docx_reads_archive_from_the_start() -> None:
    file = io.BytesIO(make_docx(["Hello"]))
    assert sniff_format(file, "letter.docx") is DocumentFormat.DOCX


def test_sniff_format_zip_that_is_not_docx_is_unreadable() -> None:
    archive = make_zip({"data.csv": b"a,b\n1,2\n", "readme.txt": b"hello"})
    with pytest.raises(UnreadableContent, match=r"not a Word \(\.docx\) document"):
        sniff(archive, "report.docx")


def test_sniff_format_damaged_zip_is_unreadable() -> None:
    data = b"PK\x03\x04" + random_bytes(500, seed=3)
    with pytest.raises(UnreadableContent, match="ZIP archive but is damaged"):
        sniff(data, "report.docx")


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("encrypted", "password-protected or compressed"),
        ("method", "password-protected or compressed"),
        ("deflate", "ZIP archive but is damaged"),
    ],
)
def test_sniff_format_zip_whose_parts_cannot_be_read_is_unreadable(
    damage: str, reason: str
) -> None:
    """zipfile raises RuntimeError, NotImplementedError or zlib.error for these, not
    BadZipFile: the upload was a 500, and in a batch its other files' tasks ran unanswered."""
    with pytest.raises(UnreadableContent, match=reason):
        sniff(make_docx_with_unreadable_rels(damage), "report.docx")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sniff_format_random_binary_named_pdf_is_unreadable(seed: int) -> None:
    with pytest.raises(UnreadableContent, match="binary data"):
        sniff(random_bytes(4096, seed), "report.pdf")


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00",
        b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 200,
        b"\x00" * 1000,
        b"text with a NUL\x00 in the middle",
    ],
    ids=["png", "elf", "zeros", "nul-in-text"],
)
def test_sniff_format_binary_headers_are_unreadable(data: bytes) -> None:
    with pytest.raises(UnreadableContent):
        sniff(data, "document.txt")


@pytest.mark.parametrize("filename", ["letter.rtf", "letter.txt", "letter.doc"])
def test_sniff_format_rtf_is_unreadable_whatever_the_name(filename: str) -> None:
    data = rb"{\rtf1\ansi\deff0{\fonttbl{\f0 Times New Roman;}}\f0\fs24 Dear Ann,\par}"
    with pytest.raises(UnreadableContent, match=r"RTF document; save it as a Word document"):
        sniff(data, filename)


@pytest.mark.parametrize(
    ("filename", "data"),
    [
        ("locked.docx", make_password_protected_docx()),
        ("minutes.doc", make_legacy_doc()),
        ("minutes.pdf", make_legacy_doc()),
    ],
)
def test_sniff_format_office_compound_file_is_unreadable_naming_what_it_is(
    filename: str, data: bytes
) -> None:
    # Not "binary data of a format we cannot read": the client sent a Word file it can open.
    with pytest.raises(
        UnreadableContent, match=r"password-protected Office document or an older Office file"
    ):
        sniff(data, filename)


def test_sniff_format_empty_file_is_unreadable() -> None:
    with pytest.raises(UnreadableContent, match="empty"):
        sniff(b"", "empty.txt")


# --- sniff_format: text flavours -----------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"<!DOCTYPE html><html><body><p>Hi</p></body></html>",
        b"<!doctype HTML>\n<title>x</title>",
        b"\n\n   <html lang='en'><body>Hi</body></html>",
        b'<?xml version="1.0"?>\n<html xmlns="http://www.w3.org/1999/xhtml"><body/></html>',
        codecs.BOM_UTF8 + b"<html><body>Hi</body></html>",
        codecs.BOM_UTF16_LE + "<!DOCTYPE html><p>Hi</p>".encode("utf-16-le"),
    ],
    ids=["doctype", "doctype-upper", "leading-blank", "xhtml-prolog", "utf8-bom", "utf16-bom"],
)
def test_sniff_format_html_by_content_with_text_name(data: bytes) -> None:
    assert sniff(data, "page.txt") is DocumentFormat.HTML


@pytest.mark.parametrize("filename", ["page.html", "page.htm", "PAGE.HTML", "doc.xhtml"])
def test_sniff_format_html_by_extension(filename: str) -> None:
    assert sniff(b"<p>Just a fragment</p>", filename) is DocumentFormat.HTML


def test_sniff_format_xml_that_is_not_html_is_text() -> None:
    data = b'<?xml version="1.0"?>\n<catalog><book>Dune</book></catalog>'
    assert sniff(data, "catalog.xml") is DocumentFormat.TEXT


def test_sniff_format_html_mentioned_late_is_not_html() -> None:
    assert sniff(b"How to write <html> tags: start with a doctype.", "howto.txt") is (
        DocumentFormat.TEXT
    )


@pytest.mark.parametrize(
    "filename", ["notes.md", "notes.markdown", "NOTES.MD", "a.mdown", "a.mkd", "dir.v2/x.md"]
)
def test_sniff_format_markdown_by_extension(filename: str) -> None:
    assert sniff(b"# Title\n\nSome *text*.\n", filename) is DocumentFormat.MARKDOWN


def test_sniff_format_markdown_content_named_txt_is_text() -> None:
    assert sniff(b"# Title\n\nSome *text*.\n", "notes.txt") is DocumentFormat.TEXT


@pytest.mark.parametrize(
    ("bom", "codec"),
    [(codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")],
    ids=["le", "be"],
)
def test_sniff_format_utf16_with_bom_is_text(bom: bytes, codec: str) -> None:
    assert sniff(bom + PLAIN.encode(codec), "report.txt") is DocumentFormat.TEXT


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_sniff_format_utf16_without_bom_is_text(codec: str) -> None:
    assert sniff(PLAIN.encode(codec), "report.txt") is DocumentFormat.TEXT


@pytest.mark.parametrize("filename", ["notes.txt", "notes", "data.csv", "weird.name.LOG"])
def test_sniff_format_plain_utf8_text(filename: str) -> None:
    data = "Ünïcödé text — with 日本語 and emoji 🎉.\n".encode()
    assert sniff(data, filename) is DocumentFormat.TEXT


def test_sniff_format_terminal_output_is_text() -> None:
    """A man page saved as text prints bold as "N\\bN": one character in ten of `man git` is a
    backspace, and it was refused as binary data (415)."""

    def bold(text: str) -> str:
        return "".join(f"{ch}\b{ch}" for ch in text)

    page = f"{bold('OPTIONS')}\n       {bold('--version')}\n           Prints the version.\n" * 40
    assert page.count("\b") * 10 > len(page)
    assert sniff(page.encode(), "git.txt") is DocumentFormat.TEXT
    log = b"\x1b[1;31mERROR\x1b[0m payments: timeout\n" * 40
    assert sniff(log, "app.log") is DocumentFormat.TEXT


def test_sniff_format_cp1252_text() -> None:
    assert sniff(CP1252_TEXT.encode("cp1252"), "legacy.txt") is DocumentFormat.TEXT


def test_sniff_format_large_text_only_reads_the_head() -> None:
    data = PLAIN.encode() * 10_000 + random_bytes(10_000, seed=9)
    assert sniff(data, "big.txt") is DocumentFormat.TEXT


# --- detect_encoding ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bom", "encode_as", "codec"),
    [
        (codecs.BOM_UTF8, "utf-8", "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le", "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be", "utf-16-be"),
        (codecs.BOM_UTF32_LE, "utf-32-le", "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be", "utf-32-be"),
    ],
    ids=["utf8", "utf16le", "utf16be", "utf32le", "utf32be"],
)
def test_detect_encoding_bom_wins_and_is_skipped(bom: bytes, encode_as: str, codec: str) -> None:
    assert detect_encoding(bom + "héllo".encode(encode_as)) == (codec, len(bom))


@pytest.mark.parametrize(
    "text", ["", "plain ascii", "naïve café ✓ 日本語 🎉"], ids=["empty", "ascii", "multibyte"]
)
def test_detect_encoding_utf8_without_bom(text: str) -> None:
    assert detect_encoding(text.encode()) == ("utf-8", 0)


def test_detect_encoding_utf8_cut_mid_character_at_sniff_limit() -> None:
    data = ("a" * (SNIFF_BYTES - 1) + "é" * 10).encode()
    assert data[SNIFF_BYTES - 1 : SNIFF_BYTES] == b"\xc3"
    assert detect_encoding(data) == ("utf-8", 0)


def test_detect_encoding_cp1252_fallback() -> None:
    assert detect_encoding(CP1252_TEXT.encode("cp1252")) == ("cp1252", 0)


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("text", ["hello world", "héllo wörld"], ids=["ascii", "latin"])
def test_detect_encoding_utf16_without_bom(codec: str, text: str) -> None:
    assert detect_encoding(text.encode(codec)) == (codec, 0)


WIDE_TEXTS = {
    "russian": "Привет! Это отчёт о годовом бюджете всех отделов компании.\n",  # noqa: RUF001
    "chinese": "这是关于公司所有部门年度预算的报告。\n",
    "japanese": "これは会社のすべての部門の年間予算に関する報告書です。\n",
    "ascii": PLAIN,
}


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
@pytest.mark.parametrize("text", WIDE_TEXTS.values(), ids=WIDE_TEXTS.keys())
def test_utf16_and_utf32_without_bom_are_read_in_any_script(codec: str, text: str) -> None:
    """BOM-less UTF-16 of Russian or Chinese has zero bytes only in its spaces and line ends:
    it was refused as binary data (415), and UTF-32 of ASCII text was read as UTF-16."""
    data = (text * 300).encode(codec)
    assert detect_encoding(data) == (codec, 0)
    assert sniff(data, "report.txt") is DocumentFormat.TEXT
    assert decode_text(data) == text * 300
    # A head may end inside a character, or inside a surrogate pair.
    assert sniff_head(data[: SNIFF_BYTES - 1], "report.txt") is DocumentFormat.TEXT
    with_emoji = (("😀 " + text) * 300).encode(codec)
    inside_pair = with_emoji.rfind("😀".encode(codec), 0, SNIFF_BYTES) + 2
    assert sniff_head(with_emoji[:inside_pair], "report.txt") is DocumentFormat.TEXT


# --- decode_text --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        PLAIN.encode(),
        codecs.BOM_UTF8 + PLAIN.encode(),
        codecs.BOM_UTF16_LE + PLAIN.encode("utf-16-le"),
        codecs.BOM_UTF16_BE + PLAIN.encode("utf-16-be"),
        PLAIN.encode("utf-16-le"),
        PLAIN.encode("utf-16-be"),
        codecs.BOM_UTF32_LE + PLAIN.encode("utf-32-le"),
    ],
    ids=["utf8", "utf8-bom", "utf16le-bom", "utf16be-bom", "utf16le", "utf16be", "utf32le-bom"],
)
def test_decode_text_round_trips_without_bom(data: bytes) -> None:
    assert decode_text(data) == PLAIN


def test_decode_text_multibyte_utf8() -> None:
    text = "Grüße, 世界! مرحبا 🎉 e\u0301"
    assert decode_text(text.encode()) == text


def test_decode_text_cp1252_fallback() -> None:
    assert decode_text(CP1252_TEXT.encode("cp1252")) == CP1252_TEXT


def test_decode_text_legacy_bytes_after_the_sniffed_head_fall_back_to_cp1252() -> None:
    data = b"a" * (SNIFF_BYTES + 10) + b"caf\xe9 tail"
    text = decode_text(data)
    assert text == "a" * (SNIFF_BYTES + 10) + "caf\u00e9 tail"


# Text in the legacy encodings Windows still writes for CJK and non-Latin scripts: it was
# read as cp1252 (and Shift-JIS refused as binary), so every chunk was mojibake.
LEGACY_TEXTS = {
    "gbk": ("gb18030", "这是一份关于年度预算的报告。我们需要在下个月之前完成所有部门的审核工作。"),
    "shift-jis": (
        "cp932",
        "これは年次予算に関する報告書です。来月までに全部門の審査を完了する必要があります。",
    ),
    "big5": ("cp950", "這是一份關於年度預算的報告。我們需要在下個月之前完成所有部門的審核工作。"),
    "euc-kr": (
        "cp949",
        "이것은 연간 예산에 관한 보고서입니다. 다음 달까지 모든 부서의 검토를 완료해야 합니다.",
    ),
    "cp1251": ("cp1251", "Это отчёт о годовом бюджете. Нам нужно завершить проверку всех отделов."),  # noqa: RUF001
    "cp1251-short": ("cp1251", "Отчёт за третий квартал"),
    "cp1251-repeated": ("cp1251", "Это тестовый документ на русском языке." * 5),
    "cp1251-markdown": ("cp1251", "# Бюджет\n\nЭто отчёт о годовом бюджете всех отделов."),  # noqa: RUF001
    "koi8-r": ("koi8_r", "Это отчёт о годовом бюджете. Нам нужно завершить проверку всех отделов."),  # noqa: RUF001
    "greek": ("cp1253", "Αυτή είναι μια έκθεση για τον ετήσιο προϋπολογισμό του οργανισμού."),  # noqa: RUF001
    "hebrew": ("cp1255", "זהו דוח על התקציב השנתי. עלינו להשלים את הבדיקה של כל המחלקות."),
    "arabic": ("cp1256", "هذا تقرير عن الميزانية السنوية. يجب أن نكمل مراجعة جميع الأقسام."),
}


@pytest.mark.parametrize(("codec", "text"), LEGACY_TEXTS.values(), ids=LEGACY_TEXTS.keys())
def test_decode_text_reads_legacy_encodings_of_other_scripts(codec: str, text: str) -> None:
    data = text.encode(codec)
    assert sniff(data, "report.txt") is DocumentFormat.TEXT
    assert decode_text(data) == text


@pytest.mark.parametrize(
    "text",
    [
        CP1252_TEXT,
        "He said “hello” – it’s fine.",  # noqa: RUF001
        "°C ± 5 µm ½ ¼ ¾ × ÷ §1 ¶",  # read as cp1251, five lone Cyrillic letters  # noqa: RUF001
        "Müller",  # read as GBK, one ideograph
        "nom;prénom;ville\nDupont;Hélène;Besançon\nMartin;Jérôme;Orléans\n" * 10,
        "Ich möchte über die Brücke gehen. Die Lösung ist einfach: größer, schöner, länger.",
    ],
    ids=["cp1252-text", "quotes", "symbols", "name", "csv", "german"],
)
def test_decode_text_latin_legacy_text_stays_cp1252(text: str) -> None:
    assert decode_text(text.encode("cp1252")) == text


def test_decode_text_finnish_capitals_in_cp1252_stay_cp1252() -> None:
    """A lunch menu in capitals: charset_normalizer guesses cp1251, whose "PДДRUOKA" was
    taken for words of Cyrillic letters; cp1252 read it right before legacy encodings."""
    text = (
        "LOUNAS 11-14\nPÄIVÄN KEITTO 8,50\nKASVISPÄÄRUOKA 10,50\nPÄÄRUOKA 12,90\nJÄLKIRUOKA 4,00\n"
    )
    assert decode_text(text.encode("cp1252")) == text


def test_decode_text_legacy_cjk_in_a_mostly_ascii_file() -> None:
    text = "int main() {\n  // 設定ファイルを読み込む\n  return 0;\n}\n" + "x = 1;\n" * 200
    assert decode_text(text.encode("cp932")) == text


def test_decode_text_legacy_cjk_cut_mid_character_at_the_sniff_limit() -> None:
    text = "这是一份关于年度预算的报告，我们需要完成所有部门的审核工作" * 300  # no line end  # noqa: RUF001
    data = text.encode("gb18030")
    assert data[SNIFF_BYTES - 1] >= 0x80 and data[SNIFF_BYTES] >= 0x40  # a character spans it
    assert decode_text(data) == text


def test_decode_text_legacy_cjk_after_a_utf8_looking_head() -> None:
    head = "Report\n" + "=" * (SNIFF_BYTES + 10) + "\n"
    tail = "これは年次予算に関する報告書です。来月までに審査を完了する必要があります。\n"
    assert decode_text((head + tail).encode("cp932")) == head + tail


def test_sniffing_a_legacy_head_with_a_long_ascii_line_takes_linear_time() -> None:
    """A paragraph per line (as Notepad saves it), then one with an accent in cp1252: the API
    sniffs this head on its event loop, where finding the lines with such bytes took 0.5 s."""
    head = ("word " * 1600 + "\nLe café est fermé.\n").encode("cp1252")[:SNIFF_BYTES]
    sniff_head(b"caf\xe9\n", "warm.txt")  # charset_normalizer's first call loads its tables
    started = time.perf_counter()
    assert sniff_head(head, "notes.txt") is DocumentFormat.TEXT
    assert time.perf_counter() - started < 0.15


def test_decode_text_utf8_with_a_stray_byte_stays_utf8() -> None:
    data = ("Grüße aus Köln. " * 600).encode() + b"\xff Ende."
    assert decode_text(data) == "Grüße aus Köln. " * 600 + "\ufffd Ende."


def test_sniff_text_that_mentions_the_pdf_header_stays_text() -> None:
    data = b"Notes on file formats.\nA PDF starts with %PDF-1.7 and ends with %%EOF.\n"
    assert sniff_format(io.BytesIO(data), "notes.txt") is DocumentFormat.TEXT


def test_sniff_text_that_starts_with_the_pdf_header_stays_text() -> None:
    data = b"%PDF-1.7 opens every PDF file.\nThis note explains the header.\n"
    assert sniff(data, "notes.txt") is DocumentFormat.TEXT


def test_decode_text_empty() -> None:
    assert decode_text(b"") == ""


# --- decode_head --------------------------------------------------------------------------


def test_decode_head_text() -> None:
    assert decode_head(PLAIN.encode()) == PLAIN


def test_decode_head_drops_a_character_cut_at_the_end() -> None:
    head = "abc é".encode()[:-1]
    assert decode_head(head) == "abc "


def test_decode_head_utf16_cut_at_odd_length() -> None:
    head = (codecs.BOM_UTF16_LE + "hello".encode("utf-16-le"))[:-1]
    assert decode_head(head) == "hell"


def test_decode_head_binary_is_none() -> None:
    assert decode_head(random_bytes(2048, seed=5)) is None


def test_decode_head_cp1252() -> None:
    assert decode_head(CP1252_TEXT.encode("cp1252")) == CP1252_TEXT


# --- is_probably_text ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["", "hello", "tabs\tand\nnewlines\r\n\f\v", "\x1b[1mbold\x1b[0m terminal", "日本語 🎉"],
    ids=["empty", "word", "whitespace-controls", "ansi-escape", "unicode"],
)
def test_is_probably_text_accepts_text(text: str) -> None:
    assert is_probably_text(text)


def test_is_probably_text_rejects_any_nul() -> None:
    assert not is_probably_text("a" * 1000 + "\x00")


def test_is_probably_text_tolerates_one_suspicious_character_in_twenty() -> None:
    assert is_probably_text("a" * 19 + "\x01")
    assert is_probably_text("a" * 19 + "\ufffd")
    assert not is_probably_text("a" * 18 + "\x01")
    assert not is_probably_text("a" * 18 + "\ufffd")


def test_is_probably_text_rejects_control_heavy_text() -> None:
    assert not is_probably_text("".join(chr(c) for c in range(1, 32)) * 3)


def _rewritten_docx(rename: dict[str, str], content_type: bytes | None = None) -> bytes:
    with zipfile.ZipFile(io.BytesIO(make_docx(["Hello"]))) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    out = {}
    for name, body in members.items():
        for old, new in rename.items():
            body = body.replace(old.encode(), new.encode())
        if content_type is not None and name == "[Content_Types].xml":
            body = body.replace(WORD_MAIN, content_type)
        out[rename.get(name, name)] = body
    return make_zip(out)


WORD_MAIN = b"application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"


def test_sniff_format_docx_whose_main_part_is_not_word_document_xml_is_docx() -> None:
    # Word Online / SharePoint save the body as word/document2.xml; the worker reads it.
    data = _rewritten_docx({"word/document.xml": "word/document2.xml"})
    assert extract_text(data, DocumentFormat.DOCX).text == "Hello"
    assert sniff(data, "report.docx") is DocumentFormat.DOCX


@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        (b"application/vnd.ms-word.document.macroEnabled.main+xml", ".docm"),
        (
            b"application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml",
            ".dotx",
        ),
        (b"application/vnd.ms-word.template.macroEnabledTemplate.main+xml", ".dotm"),
    ],
)
def test_sniff_format_word_package_the_worker_cannot_open_is_unreadable(
    content_type: bytes, named: str
) -> None:
    # python-docx refuses these ("not a Word file"): accepted, they failed as "damaged".
    data = _rewritten_docx({}, content_type)
    with pytest.raises(UnreadableContent, match=re.escape(named)):
        sniff(data, "macro" + named)


def test_sniff_format_strict_open_xml_word_document_is_unreadable_naming_it() -> None:
    # python-docx finds no main document in it: accepted, it failed as "damaged".
    data = make_strict_docx(["Hello"])
    with pytest.raises(RejectedDocument, match="damaged"):
        extract_text(data, DocumentFormat.DOCX)
    with pytest.raises(UnreadableContent, match=r"Strict Open XML document; save it as a Word"):
        sniff(data, "report.docx")
