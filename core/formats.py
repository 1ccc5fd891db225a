"""Content sniffing and text decoding: what a file really is, whatever its name says."""

from __future__ import annotations

import codecs
import enum
import lzma
import posixpath
import re
import zipfile
import zlib
from pathlib import PurePosixPath
from typing import BinaryIO
from xml.etree import ElementTree

import charset_normalizer

SNIFF_BYTES = 8192
_MARKDOWN_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd"}
_HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
# A backspace overstrikes (`man` prints bold as "N\bN"), an escape starts a terminal colour.
_ALLOWED_CONTROL = {"\t", "\n", "\r", "\f", "\v", "\x1b", "\b"}
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


# A Word package's main part, as python-docx (the worker's reader) accepts it, and the Word
# packages it refuses, named for the client.
_WORD_MAIN = "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"
_WORD_OTHERS = {
    "application/vnd.ms-word.document.macroEnabled.main+xml": (
        "a macro-enabled Word document (.docm)"
    ),
    "application/vnd.openxmlformats-officedocument.wordprocessingml.template.main+xml": (
        "a Word template (.dotx)"
    ),
    "application/vnd.ms-word.template.macroEnabledTemplate.main+xml": (
        "a macro-enabled Word template (.dotm)"
    ),
}
_OFFICE_DOCUMENT = (
    "http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"
)
# Word's "Strict Open XML Document" (ISO 29500 Strict): its own namespaces, which python-docx
# does not read (it failed as "damaged").
_STRICT_OFFICE_DOCUMENT = "http://purl.oclc.org/ooxml/officeDocument/relationships/officeDocument"
# An OLE2 compound file: Word 97-2003 (.doc), Excel (.xls), PowerPoint (.ppt), or an Office
# document saved with a password (Office encrypts the whole .docx package into one).
_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_OPC_PART_LIMIT = 1024 * 1024  # [Content_Types].xml and _rels/.rels are a few KiB


class DocumentFormat(enum.StrEnum):
    PDF = "pdf"
    DOCX = "docx"
    HTML = "html"
    MARKDOWN = "markdown"
    TEXT = "text"

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]


_MEDIA_TYPES = {
    DocumentFormat.PDF: "application/pdf",
    DocumentFormat.DOCX: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    DocumentFormat.HTML: "text/html",
    DocumentFormat.MARKDOWN: "text/markdown",
    DocumentFormat.TEXT: "text/plain",
}


class UnreadableContent(ValueError):
    """The bytes are none of the formats we can extract text from."""


def sniff_format(file: BinaryIO, filename: str) -> DocumentFormat:
    """Decide the format from the content; the extension only tells text flavours apart."""
    head = file.read(SNIFF_BYTES)
    if is_zip(head):
        file.seek(0)
        return _sniff_zip(file)
    return sniff_head(head, filename)


def is_zip(head: bytes) -> bool:
    """A ZIP archive (DOCX or not): only its central directory, at the end, tells which."""
    return head.startswith(b"PK\x03\x04")


def sniff_head(head: bytes, filename: str) -> DocumentFormat:
    """`sniff_format` from the first SNIFF_BYTES alone, for anything but a ZIP archive (see
    `is_zip`): an upload sniffs the head it kept while streaming, without reading the file."""
    if not head:
        raise UnreadableContent("the file is empty")
    if _is_pdf(head):
        return DocumentFormat.PDF
    if is_zip(head):
        raise ValueError("a ZIP archive is sniffed from the whole file: use sniff_format")
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{\\rtf"):
        # Text bytes, but markup: read as text, its chunks would be control words.
        raise UnreadableContent(
            "it is an RTF document; save it as a Word document (.docx), a PDF or plain text"
        )
    if head.startswith(_OLE2):
        raise UnreadableContent(
            "it is a password-protected Office document or an older Office file (.doc, .xls, "
            ".ppt); remove the password, or save it as a Word document (.docx), a PDF or "
            "plain text"
        )
    text = decode_head(head)
    if text is None:
        raise UnreadableContent("the content is binary data of a format we cannot read")
    suffix = PurePosixPath(filename.lower()).suffix
    if suffix in _HTML_SUFFIXES or _looks_like_html(text):
        return DocumentFormat.HTML
    if suffix in _MARKDOWN_SUFFIXES:
        return DocumentFormat.MARKDOWN
    return DocumentFormat.TEXT


def _is_pdf(head: bytes) -> bool:
    """PDF readers accept the header anywhere in the first KiB, after junk bytes; text that
    merely mentions `%PDF-`, even on its first line, stays text."""
    if head.lstrip(b"\x00\t\n\r\xef\xbb\xbf ").startswith(b"%PDF-"):
        return _PDF_OBJECT.search(head) is not None or decode_head(head) is None
    return b"%PDF-" in head[:1024] and decode_head(head) is None


# A PDF's first object ("1 0 obj") follows its header within a few hundred bytes.
_PDF_OBJECT = re.compile(rb"\d+\s+\d+\s+obj\b")


def _sniff_zip(file: BinaryIO) -> DocumentFormat:
    try:
        with zipfile.ZipFile(file) as archive:
            names = set(archive.namelist())
            content_type, strict = _main_part_type(archive, names)
    except RuntimeError as exc:  # zipfile's: an encrypted member, or NotImplementedError
        raise UnreadableContent(
            "the ZIP archive is password-protected or compressed in a way we cannot read; "
            "save it as a Word document (.docx)"
        ) from exc
    except (
        zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error, lzma.LZMAError,
        ElementTree.ParseError,
    ) as exc:  # fmt: skip
        # A damaged member's compressed stream raises its codec's error, not BadZipFile.
        raise UnreadableContent("the file looks like a ZIP archive but is damaged") from exc
    if content_type == _WORD_MAIN and strict:
        raise UnreadableContent(
            "it is a Strict Open XML document; save it as a Word document (.docx)"
        )
    if content_type == _WORD_MAIN or (content_type is None and "word/document.xml" in names):
        return DocumentFormat.DOCX
    if content_type in _WORD_OTHERS:
        raise UnreadableContent(
            f"it is {_WORD_OTHERS[content_type]}; save it as a Word document (.docx)"
        )
    raise UnreadableContent("the ZIP archive is not a Word (.docx) document")


def _main_part_type(archive: zipfile.ZipFile, names: set[str]) -> tuple[str | None, bool]:
    """The content type of the package's main part (the officeDocument relationship's target,
    wherever it lies: Word Online writes word/document2.xml), as python-docx resolves it, and
    whether the package is Strict Open XML; None when the package does not say (the worker's
    reader then judges word/document.xml)."""
    if "_rels/.rels" not in names or "[Content_Types].xml" not in names:
        return None, False
    target, strict = None, False
    for rel in _small_xml(archive, "_rels/.rels"):
        kind = rel.get("Type")
        if (
            kind in (_OFFICE_DOCUMENT, _STRICT_OFFICE_DOCUMENT)
            and rel.get("TargetMode") != "External"
        ):
            target, strict = rel.get("Target"), kind == _STRICT_OFFICE_DOCUMENT
    if not target:
        return None, False
    part = posixpath.normpath("/" + target.lstrip("/"))
    default = None
    for entry in _small_xml(archive, "[Content_Types].xml"):
        tag = str(entry.tag).rsplit("}", 1)[-1]
        if tag == "Override" and (entry.get("PartName") or "").lower() == part.lower():
            return entry.get("ContentType"), strict
        if tag == "Default" and part.lower().endswith("." + (entry.get("Extension") or "").lower()):
            default = entry.get("ContentType")
    return default, strict


def _small_xml(archive: zipfile.ZipFile, name: str) -> list[ElementTree.Element]:
    if archive.getinfo(name).file_size > _OPC_PART_LIMIT:
        raise ValueError(f"{name} is too large")
    # ElementTree fetches no external entity, and expat >= 2.4.1 caps entity expansion.
    return list(ElementTree.fromstring(archive.read(name)))  # noqa: S314


def _looks_like_html(text: str) -> bool:
    start = text.lstrip("\ufeff \t\r\n")[:256].lower()
    return start.startswith(("<!doctype html", "<html")) or (
        start.startswith("<?xml") and "<html" in start
    )


def detect_encoding(data: bytes) -> tuple[str, int]:
    """Return (codec, bytes to skip) for `data`: BOM, then BOM-less UTF-32 or UTF-16 (zero
    bytes), UTF-8, then a legacy encoding (`legacy_encoding`)."""
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return codec, len(bom)
    sample = data[:SNIFF_BYTES]
    wide = _wide_unicode(sample)
    if wide is not None:
        return wide, 0
    # Before UTF-8: BOM-less UTF-16 of ASCII text is valid UTF-8 too (full of NULs).
    if len(sample) >= 2 and sample.count(0) * 3 >= len(sample):
        zeros_even = sample[0::2].count(0)
        zeros_odd = sample[1::2].count(0)
        return ("utf-16-be" if zeros_even > zeros_odd else "utf-16-le"), 0
    if _utf8_prefix_ok(sample):
        return "utf-8", 0
    return legacy_encoding(sample, truncated=len(data) > len(sample)), 0


# The legacy encodings a file that is not UTF-8 is read in, besides cp1252: those of CJK
# scripts and of single-byte non-Latin scripts, as charset_normalizer names them, each mapped
# to the superset that Windows (which wrote most such files) and browsers decode.
_LEGACY_CODECS = {
    "gb18030": "gb18030",
    "gbk": "gb18030",
    "gb2312": "gb18030",
    "big5": "cp950",
    "cp950": "cp950",
    "big5hkscs": "big5hkscs",
    "cp932": "cp932",
    "shift_jis": "cp932",
    "shift_jis_2004": "cp932",
    "shift_jisx0213": "cp932",
    "euc_jp": "euc_jp",
    "euc_jis_2004": "euc_jp",
    "euc_jisx0213": "euc_jp",
    "cp949": "cp949",
    "euc_kr": "cp949",
    "cp1251": "cp1251",
    "mac_cyrillic": "cp1251",
    "koi8_r": "koi8_r",
    "koi8_u": "koi8_u",
    "iso8859_5": "iso8859_5",
    "cp866": "cp866",
    "cp1253": "cp1253",
    "iso8859_7": "iso8859_7",
    "cp1255": "cp1255",
    "iso8859_8": "iso8859_8",
    "cp1256": "cp1256",
    "iso8859_6": "iso8859_6",
    "cp874": "cp874",
    "tis_620": "cp874",
}
_SHIFT_JIS = [name for name, codec in _LEGACY_CODECS.items() if codec == "cp932"]
_CYRILLIC = {"cp1251", "koi8_r", "koi8_u", "iso8859_5", "cp866"}
# How many letters of a non-Latin script, in words of two or more, the guess must read before
# it is believed: "Müller" read as GBK is one ideograph, and a line of symbols (° ± ½) read
# as cp1251 is lone Cyrillic letters.
_LEGACY_MIN_LETTERS = 4
_HIGH_BYTE = re.compile(rb"[\x80-\xff]")


def legacy_encoding(sample: bytes, *, truncated: bool) -> str:
    """The encoding of text that is not UTF-8, guessed from a sample: a CJK or non-Latin
    script's (GBK, Shift-JIS, Big5, EUC-KR, cp1251, ...) when charset_normalizer finds one
    and the sample reads as words of that script, else cp1252, the most common legacy
    encoding of Latin text (Latin-2 and the like are not told apart from it)."""
    if b"\x00" in sample:
        return "cp1252"  # binary: the caller refuses it
    end = sample.rfind(b"\n")
    if truncated and end > 0:
        sample = sample[:end]  # a multi-byte character may span the cut, none a line end
    # Only lines with non-ASCII bytes: a code file's few comments in GBK outweighed by its
    # ASCII were guessed Latin. Split, not matched by a pattern: `[^\n]*[\x80-\xff][^\n]*`
    # scanned a line without such a byte from each of its characters, quadratic in its length
    # (8 KiB of one ASCII line: 0.5 s of the API's event loop, which sniffs uploads there).
    lines = b"\n".join(line for line in sample.split(b"\n") if _HIGH_BYTE.search(line))
    matches = _charset_matches(lines)
    if matches and _LEGACY_CODECS.get(matches[0].encoding) == "cp932":
        decoded = lines.decode("cp932", errors="ignore")
        if sum("\uff61" <= ch <= "\uff9f" for ch in decoded) * 2 > _script_letters(decoded):
            # Half-width katakana, which Japanese prose hardly uses: single-byte text (KOI8-R
            # Russian reads so in Shift-JIS).
            matches = _charset_matches(lines, exclude=_SHIFT_JIS)
    if not matches:
        return "cp1252"
    codec = _LEGACY_CODECS.get(matches[0].encoding)
    if codec in _CYRILLIC:
        # Short Russian text in cp1251 often scores as KOI8-R, which swaps the two cases:
        # of the Cyrillic encodings that read it as cleanly, the one that reads the most
        # lowercase letters is right.
        clean = [
            _LEGACY_CODECS[m.encoding]
            for m in matches
            if _LEGACY_CODECS.get(m.encoding) in _CYRILLIC and m.chaos <= matches[0].chaos
        ]
        codec = max(clean, key=lambda c: sum(ch.islower() for ch in lines.decode(c, "ignore")))
    if codec is None or _script_letters(lines.decode(codec, errors="ignore")) < (
        _LEGACY_MIN_LETTERS
    ):
        return "cp1252"
    return codec


def _charset_matches(
    lines: bytes, exclude: list[str] | None = None
) -> list[charset_normalizer.CharsetMatch]:
    """charset_normalizer's guesses, best first; none when nothing decodes the sample."""
    for cut in range(4):  # a sample with no line end may end inside a character
        matches = list(
            charset_normalizer.from_bytes(lines[: len(lines) - cut], cp_exclusion=exclude)
        )
        if matches:
            return matches
    return []


def _script_letters(text: str) -> int:
    """Letters past Latin (U+024F) that stand in runs of two or more, but none of a word that
    mixes ASCII letters with cased ones of another script: that is a Latin word read in the
    wrong code page ("PÄÄRUOKA" as cp1251: "PДДRUOKA"), not a Cyrillic or Greek one."""
    letters = 0
    for word in _WORD.findall(text):
        if not word.isascii() and _mixes_scripts(word):
            continue
        run = 0
        for ch in word:
            if ord(ch) > 0x24F:
                run += 1
                letters += 2 if run == 2 else 1 if run > 2 else 0
            else:
                run = 0
    return letters


_WORD = re.compile(r"[^\W\d_]+")


def _mixes_scripts(word: str) -> bool:
    return any(ch.isascii() for ch in word) and any(
        ord(ch) > 0x24F and (ch.isupper() or ch.islower()) for ch in word
    )


# charset_normalizer's names of the encodings a text of any script may be in without a BOM
# and with zero bytes, and their codecs.
_WIDE_CODECS = {
    "utf_32_le": "utf-32-le",
    "utf_32_be": "utf-32-be",
    "utf_16_le": "utf-16-le",
    "utf_16_be": "utf-16-be",
}
# Fewer bytes than this are no evidence: "abc\0def\0" reads as UTF-16 too.
_WIDE_MIN_BYTES = 64


def _wide_unicode(sample: bytes) -> str | None:
    """The codec of BOM-less UTF-32 or UTF-16 text, as charset_normalizer finds it in a
    sample with zero bytes; None for any other sample. UTF-16 of Russian or Chinese has
    zero bytes only in its spaces and line ends, too few for the ASCII rule of
    `detect_encoding`, and was refused as binary data; UTF-32 of ASCII text read as UTF-16."""
    if len(sample) < _WIDE_MIN_BYTES or b"\x00" not in sample:
        return None
    whole = len(sample) - len(sample) % 4
    for end in (whole, whole - 2):  # the sample may end inside a UTF-16 surrogate pair
        best = charset_normalizer.from_bytes(sample[:end], cp_isolation=list(_WIDE_CODECS)).best()
        if best is not None:
            return _WIDE_CODECS.get(best.encoding)
    return None


def _utf8_prefix_ok(sample: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return True


def decode_text(data: bytes) -> str:
    """Decode a whole text file; undecodable bytes become U+FFFD rather than failing."""
    codec, skip = detect_encoding(data)
    if codec == "utf-8":
        try:
            return data[skip:].decode("utf-8")
        except UnicodeDecodeError as error:
            text = data[skip:].decode("utf-8", errors="replace")
            if _mostly_utf8(text):  # a UTF-8 file with a damaged byte or two
                return text
            # The first KiBs looked like UTF-8 but later bytes are not: a legacy encoding,
            # guessed from the text where they start.
            start = data.rfind(b"\n", 0, skip + error.start) + 1
            codec = legacy_encoding(
                data[start : start + SNIFF_BYTES], truncated=start + SNIFF_BYTES < len(data)
            )
    return data[skip:].decode(codec, errors="replace")


def _mostly_utf8(text: str) -> bool:
    """Whether more of the non-ASCII characters decoded as UTF-8 than failed to."""
    invalid = text.count("\ufffd")
    non_ascii = len(text) - len(text.encode("ascii", errors="ignore"))
    return non_ascii - invalid > invalid


# Where an HTML page names its encoding: <meta charset>, <meta http-equiv="Content-Type"
# content="...; charset=...">, or an XHTML page's XML declaration. Browsers look in the first KiB.
_HTML_CHARSET = re.compile(
    rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([a-z0-9_.:-]+)"
    rb"|<\?xml[^>]*?encoding\s*=\s*[\"']([a-z0-9_.:-]+)",
    re.IGNORECASE,
)
_HTML_CHARSET_PRESCAN = 1024
# A declaration commented out is none, for browsers too; an unclosed comment runs to the end.
_HTML_COMMENT = re.compile(rb"<!--.*?(?:-->|$)", re.DOTALL)
# Labels that browsers decode as a superset (the WHATWG Encoding Standard): a page labelled
# ISO-8859-1 holds windows-1252's curly quotes, one labelled GB2312 holds GBK's characters.
_CHARSET_SUPERSETS = {
    "ascii": "cp1252",
    "iso8859-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "shift_jis": "cp932",
    "euc_kr": "cp949",
}


def decode_html(data: bytes) -> str:
    """Decode an HTML file: as `decode_text`, except that a page which is not UTF-8 and names
    its encoding (windows-1251, Shift_JIS, ...) is read in that encoding, not guessed."""
    declared = _declared_charset(data[:_HTML_CHARSET_PRESCAN])
    # A page declared UTF-8 that is not is most often windows-1252 (an editor's default):
    # `decode_text`'s fallback reads it, where decoding as declared replaced every accent.
    if declared in (None, "utf-8") or any(data.startswith(bom) for bom, _ in _BOMS):
        return decode_text(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode(declared, errors="replace")
    except (LookupError, UnicodeError):
        # A label that names no text encoding ("hex", "base64", "rot13") or one that cannot
        # decode a page ("idna"): it failed the upload as an unexpected error. Read as though
        # the page named none.
        return decode_text(data)


def _declared_charset(head: bytes) -> str | None:
    match = _HTML_CHARSET.search(_HTML_COMMENT.sub(b"", head))
    if match is None:
        return None
    label = (match.group(1) or match.group(2)).decode("ascii")
    try:
        codec = codecs.lookup(label).name
    except LookupError:
        return None
    if codec.startswith(("utf-16", "utf-32")):  # the bytes matched as ASCII: they are not
        return None
    return _CHARSET_SUPERSETS.get(codec, codec)


def decode_head(head: bytes) -> str | None:
    """Decode the first bytes of a file, or None when they are not text."""
    codec, skip = detect_encoding(head)
    text = codecs.getincrementaldecoder(codec)(errors="replace").decode(head[skip:], final=False)
    return text if is_probably_text(text) else None


def is_probably_text(text: str) -> bool:
    if not text:
        return True
    if "\x00" in text:
        return False
    suspicious = sum(
        1 for ch in text if (ord(ch) < 32 and ch not in _ALLOWED_CONTROL) or ch == "\ufffd"
    )
    return suspicious * 20 <= len(text)
